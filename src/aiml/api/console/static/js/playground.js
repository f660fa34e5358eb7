// Playground: chat with streaming (Stop cancels the generation: aborting the fetch closes
// the connection, and aiml stops the engine), embeddings with a similarity matrix, speech
// to text, and aiml's other tasks; each shows its request as curl and Python. Under each
// chat answer, thumbs up/down and a comment, recorded on its trace (traces.js).
import { ApiError, base, errorMessage, get, headers, post, sseData } from "./api.js";
import { Snippets } from "./snippets.js";
import { AnswerFeedback } from "./traces.js";
import { html, Notice, useEffect, useRef, useState } from "./ui.js";

// aiml's own tasks whose input is a file, and the field of ``data`` it goes in.
const FILE_FIELD = { asr: "audio", vad: "audio", ocr: "image", "image-captioning": "image", vlm: "image", "document-analysis": "document" };
const FILE_ACCEPT = { audio: "audio/*", image: "image/*", document: "application/pdf" };
const TEXT_FIELD = { "text-generation": "inputs", "text-classification": "inputs", vlm: "prompt", "image-captioning": "prompt" };

function ModelPicker({ id, models, value, onChange }) {
  return html`<label for=${id}>Model</label>
    <select id=${id} value=${value} onChange=${(e) => onChange(e.currentTarget.value)}>
      ${models.map((m) => html`<option value=${m}>${m}</option>`)}
    </select>`;
}

function Chat({ models }) {
  const [model, setModel] = useState(models[0] ?? "");
  const [system, setSystem] = useState("");
  const [text, setText] = useState("");
  const [temperature, setTemperature] = useState("0.7");
  const [maxTokens, setMaxTokens] = useState("256");
  const [messages, setMessages] = useState([]);
  const [busy, setBusy] = useState(false);
  const [info, setInfo] = useState(null);
  const [notice, setNotice] = useState(null);
  const abort = useRef(null);
  useEffect(() => () => abort.current?.abort(), []);

  const history = (extra = []) => [
    ...(system.trim() ? [{ role: "system", content: system }] : []),
    ...messages.map(({ role, content }) => ({ role, content })),
    ...extra,
  ];
  const body = (extra) => ({
    model,
    messages: history(extra),
    temperature: Number(temperature),
    max_tokens: Number(maxTokens),
    stream: true,
    stream_options: { include_usage: true },
  });

  const send = async (event) => {
    event.preventDefault();
    if (!text.trim() || busy) return;
    const user = { role: "user", content: text };
    const request = body([user]);
    setMessages((ms) => [...ms, user, { role: "assistant", content: "", streaming: true }]);
    setText("");
    setBusy(true);
    setNotice(null);
    const controller = new AbortController();
    abort.current = controller;
    const started = performance.now();
    let first = null;
    let pieces = 0;
    const update = (change) =>
      setMessages((ms) => [...ms.slice(0, -1), { ...ms[ms.length - 1], ...change(ms[ms.length - 1]) }]);
    try {
      const response = await fetch(`${base}/v1/chat/completions`, {
        method: "POST",
        headers: headers({ "Content-Type": "application/json" }),
        body: JSON.stringify(request),
        signal: controller.signal,
        credentials: "omit",
      });
      if (!response.ok) {
        const data = await response.json().catch(() => null);
        throw new ApiError(response.status, errorMessage(response.status, data), data);
      }
      const served = {
        requestId: response.headers.get("x-request-id"),
        replica: response.headers.get("x-aiml-replica"),
        modelReplica: response.headers.get("x-aiml-model-replica"),
      };
      // The answer's trace (only when it is traced), for the feedback under it.
      const traceId = response.headers.get("x-aiml-trace-id");
      update(() => ({ traceId }));
      setInfo({ ...served, state: "streaming" });
      let usage = null;
      for await (const data of sseData(response)) {
        if (data === "[DONE]") break;
        const event = JSON.parse(data);
        if (event.error) throw new Error(event.error.message ?? "the stream failed");
        if (event.usage) usage = event.usage;
        const delta = event.choices?.[0]?.delta?.content;
        if (delta) {
          first ??= performance.now();
          pieces += 1;
          update((last) => ({ content: last.content + delta }));
        }
      }
      const seconds = (performance.now() - (first ?? started)) / 1000;
      const tokens = usage?.completion_tokens ?? pieces;
      setInfo({ ...served, state: "done", ttft: first && (first - started) / 1000,
        tokens, rate: seconds > 0 ? tokens / seconds : null });
    } catch (error) {
      if (error.name === "AbortError") {
        update(() => ({ stopped: true }));
        setInfo((i) => ({ ...(i ?? {}), state: "stopped" }));
      } else {
        update(() => ({ failed: true }));
        setNotice({ error: true, text: error.message });
        setInfo((i) => (i ? { ...i, state: "failed" } : null));
      }
    } finally {
      update(() => ({ streaming: false }));
      abort.current = null;
      setBusy(false);
    }
  };

  return html`<form class="chat" onSubmit=${send}>
    <div class="fields">
      <div><${ModelPicker} id="chat-model" models=${models} value=${model} onChange=${setModel} /></div>
      <div><label for="chat-temperature">Temperature</label>
        <input id="chat-temperature" type="number" min="0" max="2" step="0.1" value=${temperature}
          onInput=${(e) => setTemperature(e.currentTarget.value)} /></div>
      <div><label for="chat-max-tokens">Max tokens</label>
        <input id="chat-max-tokens" type="number" min="1" max="32768" value=${maxTokens}
          onInput=${(e) => setMaxTokens(e.currentTarget.value)} /></div>
    </div>
    <label for="chat-system">System prompt (optional)</label>
    <textarea id="chat-system" rows="2" value=${system} onInput=${(e) => setSystem(e.currentTarget.value)}></textarea>
    <ol class="transcript" aria-label="Conversation" aria-live="polite" aria-busy=${busy ? "true" : "false"}>
      ${messages.map((m, i) => html`<li key=${i} class=${`msg ${m.role}`} data-role=${m.role}
          data-state=${m.streaming ? "streaming" : m.stopped ? "stopped" : m.failed ? "failed" : "done"}>
        <span class="role">${m.role}${m.stopped ? " (stopped)" : ""}</span>
        <div class="content">${m.content}</div>
        ${m.role === "assistant" && !m.streaming && !m.failed
          && html`<${AnswerFeedback} key=${m.traceId ?? "untraced"} traceId=${m.traceId} />`}</li>`)}
    </ol>
    <label for="chat-message">Message</label>
    <textarea id="chat-message" rows="3" value=${text} onInput=${(e) => setText(e.currentTarget.value)}
      onKeyDown=${(e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(e); }}></textarea>
    <div class="actions">
      <button type="submit" class="primary" disabled=${busy || !model}>Send</button>
      <button type="button" disabled=${!busy} onClick=${() => abort.current?.abort()}>Stop</button>
      <button type="button" disabled=${busy || !messages.length} onClick=${() => { setMessages([]); setInfo(null); }}>Clear</button>
    </div>
    <${Notice} notice=${notice} />
    ${info && html`<p class="muted stream-info" role="status" data-state=${info.state}>
      ${info.state}${info.ttft != null ? `, first token after ${Math.round(info.ttft * 1000)} ms` : ""}
      ${info.tokens != null ? `, ${info.tokens} tokens` : ""}${info.rate ? ` at ${info.rate.toFixed(1)}/s` : ""}
      ${info.modelReplica ? `, model replica ${info.modelReplica}` : ""}${info.replica ? `, front ${info.replica}` : ""}</p>`}
    <${Snippets} request=${model && { kind: "chat", body: body(text ? [{ role: "user", content: text }] : []) }} />
  </form>`;
}

function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i += 1) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return na && nb ? dot / Math.sqrt(na * nb) : 0;
}

function Embeddings({ models }) {
  const [model, setModel] = useState(models[0] ?? "");
  const [text, setText] = useState("cat\nkitten\nstock market");
  const [result, setResult] = useState(null);
  const [notice, setNotice] = useState(null);
  const inputs = text.split("\n").map((t) => t.trim()).filter(Boolean);
  const run = async (event) => {
    event.preventDefault();
    setNotice({ text: "Embedding…" });
    try {
      const answer = await post("/v1/embeddings", { model, input: inputs });
      const vectors = answer.data.map((d) => d.embedding);
      setResult({ inputs, vectors, dims: vectors[0]?.length ?? 0 });
      setNotice(null);
    } catch (error) {
      setNotice({ error: true, text: error.message });
    }
  };
  const short = (t) => (t.length > 24 ? `${t.slice(0, 23)}…` : t);
  return html`<form onSubmit=${run}>
    <${ModelPicker} id="embed-model" models=${models} value=${model} onChange=${setModel} />
    <label for="embed-texts">Texts, one per line</label>
    <textarea id="embed-texts" rows="4" value=${text} onInput=${(e) => setText(e.currentTarget.value)}></textarea>
    <div class="actions"><button type="submit" class="primary" disabled=${!inputs.length || !model}>Embed</button></div>
    <${Notice} notice=${notice} />
    ${result && html`<div class="scroll"><table class="similarity">
      <caption>Cosine similarity of ${result.inputs.length} texts (${result.dims} dimensions)</caption>
      <thead><tr><td></td>${result.inputs.map((t) => html`<th scope="col" title=${t}>${short(t)}</th>`)}</tr></thead>
      <tbody>${result.vectors.map((a, i) => html`<tr>
        <th scope="row" title=${result.inputs[i]}>${short(result.inputs[i])}</th>
        ${result.vectors.map((b) => {
          const sim = cosine(a, b);
          return html`<td class=${`sim s${Math.max(0, Math.min(5, Math.floor(sim * 6)))}`}>${sim.toFixed(2)}</td>`;
        })}</tr>`)}</tbody>
    </table></div>`}
    <${Snippets} request=${model && { kind: "embeddings", body: { model, input: inputs } }} />
  </form>`;
}

function fileBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ""));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function Transcribe({ models }) {
  const [model, setModel] = useState(models[0] ?? "");
  const [file, setFile] = useState(null);
  const [text, setText] = useState(null);
  const [notice, setNotice] = useState(null);
  const run = async (event) => {
    event.preventDefault();
    const form = new FormData();
    form.append("model", model);
    form.append("file", file);
    setNotice({ text: "Transcribing…" });
    try {
      setText((await post("/v1/audio/transcriptions", form)).text);
      setNotice(null);
    } catch (error) {
      setNotice({ error: true, text: error.message });
    }
  };
  return html`<form onSubmit=${run}>
    <${ModelPicker} id="asr-model" models=${models} value=${model} onChange=${setModel} />
    <label for="asr-file">Audio file (WAV, MP3, FLAC, OGG…)</label>
    <input id="asr-file" type="file" accept="audio/*" onChange=${(e) => setFile(e.currentTarget.files[0] ?? null)} />
    <div class="actions"><button type="submit" class="primary" disabled=${!file || !model}>Transcribe</button></div>
    <${Notice} notice=${notice} />
    ${text != null && html`<blockquote class="result">${text}</blockquote>`}
    <${Snippets} request=${model && { kind: "asr", body: { model }, fileName: file?.name }} />
  </form>`;
}

function OtherTask({ tasks, models }) {
  const names = Object.keys(tasks).filter((t) => !["chat", "embeddings"].includes(t)).sort();
  const [task, setTask] = useState(names[0] ?? "");
  const [engine, setEngine] = useState("");
  const [model, setModel] = useState(models[0] ?? "");
  const [text, setText] = useState("");
  const [file, setFile] = useState(null);
  const [result, setResult] = useState(null);
  const [notice, setNotice] = useState(null);
  const engines = tasks[task] ?? [];
  const chosen = engines.includes(engine) ? engine : engines[0] ?? "";
  const fileField = FILE_FIELD[task];
  const textField = TEXT_FIELD[task];
  const body = (encoded) => ({
    task, engine: chosen, model_name: model,
    data: {
      ...(textField && text ? { [textField]: text } : {}),
      ...(fileField ? { [fileField]: encoded ?? `<base64 of ${file?.name ?? "the file"}>` } : {}),
    },
  });
  const run = async (event) => {
    event.preventDefault();
    setNotice({ text: "Running…" });
    try {
      const answer = await post("/inference/infer", body(file ? await fileBase64(file) : undefined));
      setResult(answer.result);
      setNotice(null);
    } catch (error) {
      setNotice({ error: true, text: error.message });
    }
  };
  if (!names.length) return html`<p>This aiml serves no other task.</p>`;
  return html`<form onSubmit=${run}>
    <div class="fields">
      <div><label for="task-name">Task</label>
        <select id="task-name" value=${task} onChange=${(e) => { setTask(e.currentTarget.value); setFile(null); setResult(null); }}>
          ${names.map((t) => html`<option value=${t}>${t}</option>`)}</select></div>
      <div><label for="task-engine">Engine</label>
        <select id="task-engine" value=${chosen} onChange=${(e) => setEngine(e.currentTarget.value)}>
          ${engines.map((e) => html`<option value=${e}>${e}</option>`)}</select></div>
      <div><label for="task-model">Model</label>
        <input id="task-model" list="task-models" value=${model} onInput=${(e) => setModel(e.currentTarget.value)} />
        <datalist id="task-models">${models.map((m) => html`<option value=${m} />`)}</datalist></div>
    </div>
    ${textField && html`<label for="task-text">${textField === "prompt" ? "Prompt" : "Text"}</label>
      <textarea id="task-text" rows="3" value=${text} onInput=${(e) => setText(e.currentTarget.value)}></textarea>`}
    ${fileField && html`<label for="task-file">${fileField === "audio" ? "Audio file" : fileField === "image" ? "Image" : "PDF document"}</label>
      <input id="task-file" type="file" accept=${FILE_ACCEPT[fileField]} onChange=${(e) => setFile(e.currentTarget.files[0] ?? null)} />`}
    <div class="actions"><button type="submit" class="primary" disabled=${!model || (fileField && !file)}>Run</button></div>
    <${Notice} notice=${notice} />
    ${result && html`<pre class="result">${JSON.stringify(result, null, 2)}</pre>`}
    <${Snippets} request=${model && { kind: "infer", body: body() }} />
  </form>`;
}

export function PlaygroundPage() {
  const [tasks, setTasks] = useState(null);
  const [models, setModels] = useState([]);
  const [tab, setTab] = useState("chat");
  const [notice, setNotice] = useState(null);
  useEffect(() => {
    Promise.all([get("/inference/supported-tasks"), get("/v1/models")])
      .then(([t, m]) => { setTasks(t.tasks); setModels(m.data.map((d) => d.id)); })
      .catch((error) => setNotice({ error: true, text: error.message }));
  }, []);
  if (!tasks) return html`<${Notice} notice=${notice} /><p class="muted">Reading the tasks…</p>`;
  const tabs = [
    ["chat", "Chat", tasks.chat],
    ["embeddings", "Embeddings", tasks.embeddings],
    ["asr", "Speech to text", tasks.asr],
    ["other", "Other tasks", true],
  ].filter(([, , shown]) => shown);
  const Panel = { chat: Chat, embeddings: Embeddings, asr: Transcribe, other: OtherTask }[tab];
  return html`
    <div class="tabs" role="group" aria-label="Playground task">
      ${tabs.map(([id, label]) => html`<button type="button" aria-pressed=${tab === id ? "true" : "false"}
        onClick=${() => setTab(id)}>${label}</button>`)}
    </div>
    <section class="panel" aria-label=${tabs.find(([id]) => id === tab)?.[1]}>
      <${Panel} key=${tab} models=${models} tasks=${tasks} />
    </section>`;
}
