// A rollout's evaluation, beside its canary controls: the newest finished `aiml evaluate`
// run of the canary's version against the alias's version (GET /v1/evaluations), both
// sides' metrics with the change, the scorers' means and a link to the run in MLflow's UI;
// or, where there is none, the command that makes one. Without a canary: the newest
// evaluation of any candidate against the alias's version. A run replayed recorded inputs on
// both versions, or compared a shadow's recorded pairs (`aiml evaluate --shadow`).
import { get } from "./api.js";
import { html, usePoll, useState } from "./ui.js";

const EVERY_MS = 15000;

const time = (s) => (s >= 1 ? `${s.toFixed(2)} s` : `${(s * 1000).toFixed(s < 0.01 ? 1 : 0)} ms`);
const plain = (v) => String(Number(v.toFixed(2)));
const MEASURES = [ // evaluation_runs.py's per-side metrics
  ["latency_p50_s", "Latency p50", time],
  ["latency_max_s", "Latency max", time],
  ["completion_tokens_mean", "Completion tokens (mean)", plain],
  ["failed", "Failed requests", plain],
];
const SCORES = {
  exact_match: ["Exact match with the baseline", (v) => `${(v * 100).toFixed(1)} %`],
  json_valid: ["Valid JSON (where asked for)", (v) => `${(v * 100).toFixed(1)} %`],
  similarity_to_baseline: ["Similarity to the baseline (cosine)", (v) => v.toFixed(3)],
};

function change(value, show) {
  if (value == null) return "–";
  if (value === 0) return "no change";
  return `${value > 0 ? "+" : "−"}${show(Math.abs(value))}`;
}

function Run({ run }) {
  const { sides, delta, scores } = run;
  const when = new Date(run.start_time_ms).toLocaleString();
  const shown = (side, key, show) => (sides[side]?.[key] == null ? "–" : show(sides[side][key]));
  const inputs = run.kind === "shadow" ? "of the shadow's copies (both answers as served)"
    : "recorded inputs (replayed on both)";
  return html`<p data-kind=${run.kind}>Version ${run.candidate_version} against version ${run.baseline_version} on
      ${" "}${run.recorded_inputs ?? "?"} ${inputs}, ${when}${run.status !== "FINISHED" ? ` (${run.status})` : ""}.</p>
    <div class="scroll"><table class="health evaluation-table">
      <caption>Evaluation run ${run.run_name ?? run.run_id}: each version's answers to the same recorded inputs</caption>
      <thead><tr><th scope="col">Measure</th>
        <th scope="col" data-side="baseline">Baseline: version ${run.baseline_version}</th>
        <th scope="col" data-side="candidate">Candidate: version ${run.candidate_version}</th>
        <th scope="col" data-side="delta">Change</th></tr></thead>
      <tbody>${MEASURES.map(([key, label, show]) => html`<tr key=${key}><th scope="row">${label}</th>
        <td data-side="baseline" data-measure=${key}>${shown("baseline", key, show)}</td>
        <td data-side="candidate" data-measure=${key}>${shown("candidate", key, show)}</td>
        <td data-side="delta" data-measure=${key}>${change(delta[key], show)}</td></tr>`)}
      ${Object.entries(scores).map(([key, value]) => {
        const [label, show] = SCORES[key] ?? [key, (v) => plain(v)];
        return html`<tr key=${key}><th scope="row">${label}</th>
          <td data-side="baseline">–</td><td data-side="candidate" data-score=${key}>${show(value)}</td><td>–</td></tr>`;
      })}</tbody>
    </table></div>
    ${run.run_url
      ? html`<p><a href=${run.run_url} target="_blank" rel="noopener noreferrer" data-run-url>The run in MLflow</a></p>`
      : html`<p class="muted">Run ${run.run_id} (the tracking URI is no MLflow server: no page to link to).</p>`}`;
}

/** The evaluation of ``candidate`` (or of any version, with no canary) against ``stable``. */
export function Evaluation({ name, alias, stable, candidate, versions, generation }) {
  const [state, setState] = useState({ loaded: false });
  usePoll(async () => {
    const query = new URLSearchParams({ model: name, baseline: String(stable), max_results: "20" });
    if (candidate != null) query.set("candidate", String(candidate));
    try {
      const answer = await get(`/v1/evaluations?${query}`);
      setState({ loaded: true, run: answer.evaluations.find((e) => e.status === "FINISHED") ?? null });
    } catch (error) {
      setState({ loaded: true, error: error.message });
    }
  }, EVERY_MS, [name, stable, candidate, generation]);
  const suggested = candidate ?? versions.find((v) => v.version !== stable)?.version ?? "V";
  const command = `aiml evaluate ${name} --candidate ${suggested} --baseline @${alias}`;
  const key = (state.run && state.run.run_id) || "none";
  return html`<div class="evaluation" data-evaluation=${state.loaded ? key : "loading"}
      data-candidate=${candidate ?? ""} data-baseline=${stable}>
    ${!state.loaded ? html`<p class="muted">Reading the evaluations…</p>`
      : state.error ? html`<p class="muted">Evaluations not read: ${state.error}</p>`
      : state.run ? html`<${Run} run=${state.run} />`
      : html`<p data-not-evaluated>Not evaluated: ${candidate != null
          ? `version ${candidate} has no evaluation against version ${stable}.`
          : `no version has an evaluation against version ${stable}.`}
        ${" "}To evaluate it on recorded traffic: <code>${command}</code></p>`}
  </div>`;
}
