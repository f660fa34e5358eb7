// "Show as curl / Python": the playground's current request, for a terminal or a script.
// The key is never written into a snippet: it reads $AIML_API_KEY.
import { base, getKey } from "./api.js";
import { html } from "./ui.js";

const shellQuote = (text) => `'${String(text).replaceAll("'", "'\\''")}'`;

/** A Python literal for a JSON value (JSON strings are valid Python strings). */
export function py(value, indent = "") {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number" || typeof value === "string") return JSON.stringify(value);
  const inner = `${indent}    `;
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((v) => inner + py(v, inner)).join(",\n")},\n${indent}]`;
  }
  const entries = Object.entries(value);
  if (!entries.length) return "{}";
  return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${py(v, inner)}`).join(",\n")},\n${indent}}`;
}

function kwargs(body, skip = []) {
  return Object.entries(body)
    .filter(([k, v]) => !skip.includes(k) && v !== undefined)
    .map(([k, v]) => `    ${k}=${py(v, "    ")},`)
    .join("\n");
}

function openaiClient(url, keyed) {
  return `from openai import OpenAI\n${keyed ? "import os\n" : ""}\nclient = OpenAI(base_url=${JSON.stringify(`${url}/v1`)}, api_key=${keyed ? 'os.environ["AIML_API_KEY"]' : '"unused"'})\n`;
}

/** {curl, python} for a request: {kind: chat|embeddings|asr|infer, body, fileName}. */
export function snippets(request, url = location.origin + base, keyed = Boolean(getKey())) {
  const auth = keyed ? ` \\\n  -H "Authorization: Bearer $AIML_API_KEY"` : "";
  const { kind, body } = request;
  if (kind === "asr") {
    const file = request.fileName || "speech.wav";
    return {
      curl: `curl -s ${url}/v1/audio/transcriptions${auth} \\\n  -F model=${shellQuote(body.model)} \\\n  -F file=@${shellQuote(file)}`,
      python: `${openaiClient(url, keyed)}with open(${JSON.stringify(file)}, "rb") as audio:\n    print(client.audio.transcriptions.create(model=${py(body.model)}, file=audio).text)`,
    };
  }
  const path = { chat: "/v1/chat/completions", embeddings: "/v1/embeddings", infer: "/inference/infer" }[kind];
  const json = JSON.stringify(body, null, 2);
  const curl = `curl -s${body.stream ? "N" : ""} ${url}${path}${auth} \\\n  -H 'Content-Type: application/json' \\\n  -d ${shellQuote(json)}`;
  let python;
  if (kind === "chat") {
    const head = `${openaiClient(url, keyed)}stream = client.chat.completions.create(\n${kwargs(body, ["stream", "stream_options"])}\n    stream=True,\n)\n`;
    python = `${head}for chunk in stream:\n    if chunk.choices:\n        print(chunk.choices[0].delta.content or "", end="", flush=True)\nprint()`;
  } else if (kind === "embeddings") {
    python = `${openaiClient(url, keyed)}result = client.embeddings.create(\n${kwargs(body)}\n)\nvectors = [item.embedding for item in result.data]`;
  } else {
    const headers = keyed ? `, headers={"Authorization": f"Bearer {os.environ['AIML_API_KEY']}"}` : "";
    python = `import httpx\n${keyed ? "import os\n" : ""}\n# aiml's own API (no official client): any HTTP client will do\nanswer = httpx.post(\n    ${JSON.stringify(url + path)},\n    json=${py(body, "    ")}${headers},\n    timeout=120,\n)\nprint(answer.json()["result"])`;
  }
  return { curl, python };
}

export function Snippets({ request }) {
  if (!request) return null;
  const { curl, python } = snippets(request);
  const copy = (text) => navigator.clipboard?.writeText(text);
  return html`<div class="snippets">
    <details>
      <summary>Show as curl</summary>
      <pre><code>${curl}</code></pre>
      <button type="button" onClick=${() => copy(curl)}>Copy curl</button>
    </details>
    <details>
      <summary>Show as Python (${request.kind === "infer" ? "httpx" : "official openai client"})</summary>
      <pre><code>${python}</code></pre>
      <button type="button" onClick=${() => copy(python)}>Copy Python</button>
    </details>
  </div>`;
}
