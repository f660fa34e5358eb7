// A registry version's recent traces (GET /v1/traces), as MLflow recorded them, each with
// its feedback and a link into MLflow's UI; and the thumbs up/down the playground puts
// under an answer (POST /v1/feedback on the answer's x-aiml-trace-id).
import { ApiError, enc, get, post } from "./api.js";
import { html, Notice, seconds, usePoll, useState } from "./ui.js";

const OFF_TEXT = "Tracing is off here (AIML_TRACE_SAMPLE is 0, or MLFLOW_TRACKING_URI is "
  + "not an MLflow server), so no request is recorded.";

/** True when aiml answered that it records no traces (404 on the traces routes). */
export function tracingOff(error) {
  return error instanceof ApiError && error.status === 404 && /tracing is off/.test(error.message);
}

function when(ms) {
  return ms == null ? "–" : new Date(ms).toLocaleString();
}

function preview(text) {
  if (!text) return html`<span class="muted">not kept</span>`;
  return text.length > 160 ? `${text.slice(0, 159)}…` : text;
}

// Words beside the emoji: they read the same where no emoji font is installed.
function thumb(value) {
  if (value === true) return "👍 up";
  if (value === false) return "👎 down";
  return JSON.stringify(value);
}

function FeedbackList({ feedback }) {
  if (!feedback.length) return html`<span class="muted">none</span>`;
  return html`<ul class="feedback">${feedback.map((f) => html`<li key=${f.assessment_id}
      data-value=${String(f.value)} title=${`${f.name} from ${f.source_id ?? "?"}`}>
    <span>${thumb(f.value)}</span>${f.rationale ? html` <q>${f.rationale}</q>` : ""}
    <span class="muted"> · ${f.source_id ?? f.source_type ?? ""}</span></li>`)}</ul>`;
}

function TraceRows({ traces }) {
  return html`<div class="scroll"><table class="traces">
    <thead><tr>
      <th scope="col">Time</th><th scope="col">Status</th><th scope="col">Duration</th>
      <th scope="col">Input</th><th scope="col">Output</th><th scope="col">Tokens in/out</th>
      <th scope="col">Key</th><th scope="col">Arm</th><th scope="col">Feedback</th>
      <th scope="col"><span class="sr-only">In MLflow</span></th>
    </tr></thead>
    <tbody>${traces.map((t) => html`<tr key=${t.trace_id} data-trace=${t.trace_id} data-state=${t.state}>
      <td>${when(t.timestamp_ms)}</td>
      <td>${t.state}${t.status_code != null ? ` (${t.status_code})` : ""}</td>
      <td>${t.execution_ms == null ? "–" : seconds(t.execution_ms / 1000)}</td>
      <td class="preview">${preview(t.request_preview)}</td>
      <td class="preview">${preview(t.response_preview)}</td>
      <td>${t.input_tokens ?? "–"} / ${t.output_tokens ?? "–"}</td>
      <td><code>${t.key_name ?? "–"}</code></td>
      <td>${t.alias ? `@${t.alias}${t.arm ? `, ${t.arm}` : ""}` : "–"}</td>
      <td><${FeedbackList} feedback=${t.feedback} /></td>
      <td><a href=${t.ui_url} target="_blank" rel="noopener noreferrer"
        aria-label=${`Trace ${t.trace_id} in MLflow`}>In MLflow</a></td>
    </tr>`)}</tbody>
  </table></div>`;
}

/** The newest traces of ``version`` (``name/3``), read again on Refresh. */
export function VersionTraces({ version, onClose }) {
  const [answer, setAnswer] = useState(null);
  const [problem, setProblem] = useState(null);
  const [generation, setGeneration] = useState(0);
  usePoll(async () => {
    try {
      setAnswer(await get(`/v1/traces?model_version=${enc(version)}&max_results=20`));
      setProblem(null);
    } catch (error) {
      setProblem(tracingOff(error) ? { off: true } : { error: true, text: `Reading traces failed: ${error.message}` });
    }
  }, 0, [version, generation]);
  const id = `traces-${version.replace(/[^A-Za-z0-9_-]/g, "-")}`;
  let body;
  if (problem?.off) body = html`<p class="notice" data-tracing="off">${OFF_TEXT}</p>`;
  else if (problem) body = html`<${Notice} notice=${problem} />`;
  else if (!answer) body = html`<p class="muted">Reading traces…</p>`;
  else if (!answer.traces.length) {
    body = html`<p>${answer.experiment_id === null
      ? "No request has been traced yet."
      : `No traced request of ${version} yet${answer.scope === "own" ? " from this key" : ""}.`}</p>`;
  } else body = html`<${TraceRows} traces=${answer.traces} />`;
  return html`<section class="version-traces" aria-labelledby=${id} data-traces=${version}>
    <h3 id=${id}>Recent traces of ${version}</h3>
    <div class="toolbar">
      <button type="button" onClick=${() => setGeneration((n) => n + 1)}>Refresh traces</button>
      <button type="button" onClick=${onClose}>Close traces</button>
      ${answer?.experiment_url && html`<a href=${answer.experiment_url} target="_blank"
        rel="noopener noreferrer">All traces in MLflow</a>`}
    </div>
    ${answer?.scope === "own" && html`<p class="muted">Only this key's requests are shown.</p>`}
    ${body}
  </section>`;
}

/** Thumbs up/down and a comment on one answer, recorded on its trace. */
export function AnswerFeedback({ traceId }) {
  const [comment, setComment] = useState("");
  const [sent, setSent] = useState(null); // { value, notice }
  const [busy, setBusy] = useState(false);
  if (!traceId) {
    return html`<p class="muted answer-feedback" data-feedback="untraced">Not traced: no
      feedback can be given on this answer (tracing is off or this request was not sampled).</p>`;
  }
  const give = async (value) => {
    setBusy(true);
    try {
      const body = { trace_id: traceId, value, ...(comment.trim() ? { comment: comment.trim() } : {}) };
      await post("/v1/feedback", body);
      setSent({ value, notice: { text: `Feedback recorded on trace ${traceId}.` } });
    } catch (error) {
      const text = tracingOff(error) ? OFF_TEXT : `Feedback was not recorded: ${error.message}`;
      setSent({ value: null, notice: { error: true, text } });
    } finally {
      setBusy(false);
    }
  };
  const id = `feedback-${traceId}`;
  return html`<div class="answer-feedback" data-trace=${traceId}>
    <button type="button" aria-pressed=${sent?.value === true ? "true" : "false"} disabled=${busy}
      onClick=${() => give(true)} aria-label="Thumbs up">👍</button>
    <button type="button" aria-pressed=${sent?.value === false ? "true" : "false"} disabled=${busy}
      onClick=${() => give(false)} aria-label="Thumbs down">👎</button>
    <label for=${id} class="sr-only">Comment on this answer</label>
    <input id=${id} type="text" maxlength="2000" placeholder="Comment (optional)" value=${comment}
      onInput=${(e) => setComment(e.currentTarget.value)} />
    <${Notice} notice=${sent?.notice} />
  </div>`;
}
