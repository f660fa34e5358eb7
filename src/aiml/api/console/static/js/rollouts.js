// Rollouts: for each alias of each registered model, its version, its canary (candidate and
// weight) and shadow; each version's health side by side (stable and candidate), charted
// over this tab's readings of /inference/stats; a sample of shadow pairs; guard events and
// a staged canary's steps; the canary's evaluation (evaluation.js); and, for admin keys, the
// canary's actions (start or reweigh, with a plan or not; promote; stop).
import { call, enc, get, put, registeredModels } from "./api.js";
import { Evaluation } from "./evaluation.js";
import { Confirm, html, mark, Notice, usePoll, useEffect, useRef, useState } from "./ui.js";

const STATS_EVERY_MS = 5000;
const REGISTRY_EVERY_MS = 15000;
const KEEP_S = 900;
const PAIRS_SHOWN = 5;
const NAME_TAGS = ["ollama_model_name", "openai_model_name", "gguf_file", "onnx_file"];

// /inference/stats has no history per version: the page keeps its own readings (a point
// every 5 s while it is open, the last 15 minutes), in this tab's memory only, so they
// survive moving between the console's pages.
const readings = { t: [], versions: {} };

function remember(byVersion) {
  const now = Date.now() / 1000;
  const before = readings.t.length;
  readings.t.push(now);
  for (const key of new Set([...Object.keys(readings.versions), ...Object.keys(byVersion)])) {
    const column = (readings.versions[key] ??= { error: Array(before).fill(null), p99: Array(before).fill(null) });
    const s = byVersion[key];
    column.error.push(s?.requests ? s.error_ratio : null); // no request: nothing measured
    column.p99.push(s?.latency_s?.p99 ?? null);
  }
  let old = 0;
  while (readings.t[old] < now - KEEP_S) old += 1;
  if (old) {
    readings.t.splice(0, old);
    for (const column of Object.values(readings.versions)) {
      column.error.splice(0, old);
      column.p99.splice(0, old);
    }
  }
}

let uPlotLoading = null;
function loadUPlot() {
  if (window.uPlot) return Promise.resolve(window.uPlot); // the traffic page loaded it
  uPlotLoading ??= new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = new URL("../vendor/uPlot.iife.min.js", import.meta.url).href;
    script.onload = () => resolve(window.uPlot);
    script.onerror = () => reject(new Error("could not load uPlot"));
    document.head.append(script);
  });
  return uPlotLoading;
}

const percent = (v) => (v == null ? "–" : `${(v * 100).toFixed(1)} %`);
const duration = (v) => (v == null ? "–" : v >= 1 ? `${v.toFixed(2)} s` : `${(v * 1000).toFixed(v < 0.01 ? 1 : 0)} ms`);
const weight = (w) => `${Number(Number(w).toFixed(2))} %`;
const COLORS = ["#1f5fbf", "#c2410c"];

function last(values) {
  for (let i = values.length - 1; i >= 0; i -= 1) if (values[i] != null) return values[i];
  return null;
}

/** A small chart of one measure for the stable version and its candidate. */
function Chart({ id, title, series, format }) {
  const box = useRef(null);
  const plot = useRef(null);
  const t = readings.t.slice();
  const shape = series.map((s) => s.key).join("\u0000");
  const fmt = format === "percent" ? percent : duration;
  const data = () => [t, ...series.map((s) => (readings.versions[s.key]?.[s.measure] ?? []).slice())];

  useEffect(() => {
    let cancelled = false;
    let observer = null;
    if (t.length < 2) return undefined; // uPlot spreads one point's time axis over years
    loadUPlot().then((uPlot) => {
      if (cancelled || !box.current) return;
      const width = () => Math.max(box.current?.clientWidth ?? 0, 240);
      const options = {
        width: width(),
        height: 140,
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        scales: {
          x: { time: true, range: (u, min, max) => [Math.min(min, max - 60), max] },
          y: { range: (u, min, max) => [0, Math.max(max ?? 0, format === "percent" ? 0.01 : 1e-3) * 1.1] },
        },
        axes: [
          { stroke: "#333", grid: { stroke: "#e4e4e4" } },
          { stroke: "#333", grid: { stroke: "#e4e4e4" }, size: 64, values: (u, ticks) => ticks.map(fmt) },
        ],
        series: [{}, ...series.map((s, i) => ({
          label: s.label, stroke: COLORS[i % COLORS.length], width: 2, points: { show: true, size: 5 },
        }))],
      };
      plot.current = new uPlot(options, data(), box.current);
      observer = new ResizeObserver(() => {
        if (box.current) plot.current?.setSize({ width: width(), height: 140 });
      });
      observer.observe(box.current);
    });
    return () => {
      cancelled = true;
      observer?.disconnect();
      plot.current?.destroy();
      plot.current = null;
    };
  }, [shape, t.length < 2]);
  useEffect(() => {
    plot.current?.setData(data());
  });

  return html`<figure class="chart small" data-chart=${id} aria-labelledby=${`chart-${id}`}>
    <figcaption id=${`chart-${id}`}>${title}</figcaption>
    ${t.length >= 2
      ? html`<div class="plot" ref=${box} role="img" aria-label=${`${title}: chart of this page's last ${t.length} readings`}></div>`
      : html`<p class="muted">The chart starts at this page's second reading (5 s).</p>`}
    <ul class="legend">${series.map((s, i) => {
      const value = last(readings.versions[s.key]?.[s.measure] ?? []);
      return html`<li data-version=${s.key} data-last=${value ?? ""}>
        <span class=${`swatch c${i}`} aria-hidden="true"></span>${s.label}: <strong>${fmt(value)}</strong></li>`;
    })}</ul>
  </figure>`;
}

const MEASURES = [
  ["requests", "Requests", (s) => s.requests],
  ["error_ratio", "Error ratio (5xx)", (s) => percent(s.error_ratio)],
  ["latency_p50", "Latency p50", (s) => duration(s.latency_s?.p50)],
  ["latency_p99", "Latency p99", (s) => duration(s.latency_s?.p99)],
  ["ttft_p50", "Time to first token p50", (s) => duration(s.time_to_first_token_s?.p50)],
  ["ttft_p99", "Time to first token p99", (s) => duration(s.time_to_first_token_s?.p99)],
  ["tokens_per_s", "Tokens per second (p50)", (s) => (s.tokens_per_s?.p50 == null ? "–" : s.tokens_per_s.p50.toFixed(1))],
  ["statuses", "By status", (s) => Object.entries(s.by_status ?? {}).map(([k, n]) => `${k}: ${n}`).join(", ") || "–"],
];

function Health({ columns, byVersion }) {
  const span = Object.values(byVersion)[0]?.window_s ?? 300;
  return html`<div class="scroll"><table class="health">
    <caption>Health per version, the last ${Math.round(span / 60)} minutes on this aiml</caption>
    <thead><tr><th scope="col">Measure</th>
      ${columns.map((c) => html`<th scope="col" data-version=${c.key}>${c.label}</th>`)}</tr></thead>
    <tbody>${MEASURES.map(([id, label, show]) => html`<tr key=${id}>
      <th scope="row">${label}</th>
      ${columns.map((c) => {
        const s = byVersion[c.key] ?? { requests: 0 };
        return html`<td data-version=${c.key} data-measure=${id}>${id === "requests" || s.requests ? show(s) : "–"}</td>`;
      })}</tr>`)}</tbody>
  </table></div>`;
}

const clip = (text) => (text.length > 240 ? `${text.slice(0, 240)}…` : text);

function Shadow({ declared, reports, alias }) {
  if (!declared && !reports.length) {
    return html`<p class="muted">No shadow: none declared (version tag <code>aiml.shadow.${alias}</code>).</p>`;
  }
  return html`${declared && html`<p data-shadow=${declared.version}>Version ${declared.version} gets a copy of
      ${" "}${weight(declared.weight)} of the requests, off the request path.</p>`}
    ${reports.map(([candidate, r]) => html`<div key=${candidate} class="shadow-report" data-candidate=${candidate}>
      <p>Against version ${candidate}: ${r.compared} compared, ${r.matched} matched exactly
        ${r.exact_match_ratio != null ? ` (${percent(r.exact_match_ratio)})` : ""}, ${r.failed} failed,
        ${" "}${r.dropped} dropped.</p>
      ${r.pairs.length > 0 && html`<div class="scroll"><table class="pairs">
        <caption>The last ${Math.min(PAIRS_SHOWN, r.pairs.length)} paired answers, newest first</caption>
        <thead><tr><th scope="col">Primary answer</th><th scope="col">Candidate's answer</th>
          <th scope="col">Latencies</th><th scope="col">Match</th></tr></thead>
        <tbody>${r.pairs.slice(-PAIRS_SHOWN).reverse().map((p, i) => html`<tr key=${i} class="pair">
          <td class="answer">${clip(p.primary)}</td><td class="answer">${clip(p.candidate)}</td>
          <td>${duration(p.primary_s)} / ${duration(p.candidate_s)}</td>
          <td data-match=${String(p.exact_match)}>${p.exact_match ? "exact" : "differs"}
            ${p.cosine != null ? `, cosine ${p.cosine.toFixed(3)}` : ""}</td></tr>`)}</tbody>
      </table></div>`}
    </div>`)}`;
}

function Guard({ events, tagged, steps, alias }) {
  if (!events.length && !tagged.length && !steps.length) return html`<p class="muted">No guard event.</p>`;
  return html`<ul class="guard">
    ${steps.map((e, i) => html`<li key=${`s${i}`} class="plan-step" data-candidate=${e.candidate} data-to=${e.to ?? "promoted"}>
      ${e.promoted ? `Version ${e.candidate} promoted: the alias points to it (the plan's last step held)`
        : `Version ${e.candidate} stepped from ${weight(e.from)} to ${weight(e.to)} (the guard held)`}</li>`)}
    ${events.map((e, i) => html`<li key=${`e${i}`} data-candidate=${e.candidate}>
      Version ${e.candidate} taken out (weight 0), version ${e.stable} serves: ${e.reason}</li>`)}
    ${tagged.map(([v, reason]) => html`<li key=${`t${v}`} data-candidate=${v}>
      Version ${v}, in the registry (<code>aiml.guard.${alias}</code>): ${reason}</li>`)}
  </ul>`;
}

/** Start or reweigh a canary; promote it; stop it. A refused candidate (409) lists what it
 * lacks, and the admin may go on anyway (the same call with force). */
function Actions({ entry, versions, id, refresh, notice, setNotice }) {
  const { name, alias, version, canary } = entry;
  const others = versions.filter((v) => v.version !== version);
  const [candidate, setCandidate] = useState(String(canary?.version ?? others[0]?.version ?? ""));
  const [share, setShare] = useState(String(canary?.weight ?? 5));
  const [plan, setPlan] = useState(""); // "5, 25, 100": staged; empty: a fixed weight
  const [dwell, setDwell] = useState("600");
  useEffect(() => { // the registry's state, as read again after each change
    setCandidate(String(canary?.version ?? others[0]?.version ?? ""));
    setShare(String(canary?.weight ?? 5));
  }, [version, canary?.version, canary?.weight]);
  const [dialog, setDialog] = useState(null); // {kind: "promote" | "refused", what, missing}
  const path = `/models/registered_in_mlflow/${enc(name)}/aliases/${enc(alias)}/canary`;
  const attempt = async (what, force) => {
    setDialog(null);
    const query = force ? "?force=true" : "";
    try {
      if (what === "start") {
        const steps = plan.split(",").map((p) => p.trim()).filter(Boolean).map(Number);
        const body = steps.length ? { version: Number(candidate), plan: steps, dwell_s: Number(dwell) }
          : { version: Number(candidate), weight: Number(share) };
        const answer = await put(path + query, body);
        setNotice({ text: `Version ${answer.canary.version} gets ${weight(answer.canary.weight)} of ${name}@${alias}'s callers`
          + (answer.canary.plan ? `, then ${answer.canary.plan.steps.slice(1).map(weight).join(", ")} and promotion.` : ".") });
      } else if (what === "promote") {
        const answer = await call("POST", `${path}/promote${query}`);
        setNotice({ text: `${name}@${alias} now points at version ${answer.version}; the canary ended.` });
      } else {
        const answer = await call("DELETE", path);
        setNotice({ text: answer.stopped == null ? "No canary was running."
          : `Canary stopped: every caller on version ${version} again.` });
      }
      refresh();
    } catch (error) {
      const body = error.body?.error;
      if (error.status === 409 && body?.code === "unsafe_alias_move") {
        setDialog({ kind: "refused", what, missing: body.missing ?? [] });
        setNotice({ error: true, text: `409: nothing changed on ${name}@${alias}.` });
      } else {
        setNotice({ error: true, text: error.message });
      }
    }
  };
  const target = dialog?.what === "promote" ? canary?.version : candidate;
  return html`<div class="rollout-actions">
    ${others.length > 0 && html`<form class="canary-form" onSubmit=${(e) => { e.preventDefault(); attempt("start", false); }}>
      <label for=${`${id}-candidate`}>Candidate version</label>
      <select id=${`${id}-candidate`} value=${candidate} onChange=${(e) => setCandidate(e.currentTarget.value)}>
        ${others.map((v) => html`<option value=${String(v.version)}>${v.version}</option>`)}
      </select>
      <label for=${`${id}-weight`}>Weight (%)</label>
      <input id=${`${id}-weight`} type="number" min="0" max="100" step="any" required=${!plan.trim()}
        disabled=${Boolean(plan.trim())} value=${share} onInput=${(e) => setShare(e.currentTarget.value)} />
      <label for=${`${id}-plan`}>Or a plan (%, rising)</label>
      <input id=${`${id}-plan`} type="text" inputmode="decimal" placeholder="5, 25, 100" pattern="[0-9., ]*"
        value=${plan} onInput=${(e) => setPlan(e.currentTarget.value)} />
      <label for=${`${id}-dwell`}>Dwell per step (s)</label>
      <input id=${`${id}-dwell`} type="number" min="1" step="any" value=${dwell} disabled=${!plan.trim()}
        onInput=${(e) => setDwell(e.currentTarget.value)} />
      <button type="submit">${canary ? "Update canary" : "Start canary"}</button>
    </form>`}
    ${canary && html`<div class="actions">
      <button type="button" class="primary" onClick=${() => setDialog({ kind: "promote", what: "promote" })}>
        Promote version ${canary.version}…</button>
      <button type="button" onClick=${() => attempt("stop", false)}>Stop canary</button>
    </div>`}
    <${Notice} notice=${notice} />
    ${dialog?.kind === "promote" && canary && html`<${Confirm} title="Promote the canary" confirmLabel="Promote"
        onConfirm=${() => attempt("promote", false)} onCancel=${() => setDialog(null)}>
      <p class="change"><code>${name}@${alias}</code>:${" "}
        <span class="old">version ${version}</span> → <span class="new">version ${canary.version}</span></p>
      <p>Every caller of <code>${name}@${alias}</code> is served by version ${canary.version} from now on,
        and the canary ends.</p>
    <//>`}
    ${dialog?.kind === "refused" && html`<${Confirm}
        title=${dialog.what === "promote" ? "Promote anyway?" : "Start the canary anyway?"}
        confirmLabel=${dialog.what === "promote" ? "Promote anyway" : "Start anyway"}
        onConfirm=${() => attempt(dialog.what, true)} onCancel=${() => setDialog(null)}>
      <p>Version ${target} cannot serve all that <code>${name}@${alias}</code> serves now:</p>
      <ul class="missing">${dialog.missing.map((m) => html`<li data-kind=${m.kind}>${m.reason}</li>`)}</ul>
      <p>The requests that need these fail on version ${target}.</p>
    <//>`}
  </div>`;
}

function planText(canary) {
  const { steps, dwell_s: dwell, step_since: since } = canary.plan;
  const left = Math.max(0, Math.round(since + dwell - Date.now() / 1000));
  const next = steps.find((step) => step > canary.weight);
  return `plan ${steps.map(weight).join(" → ")}, ${dwell} s a step: ${next == null ? "promotion" : weight(next)}`
    + ` ${left ? `in ${left} s at the earliest` : "once the guard has seen enough traffic"}`;
}

function engineName(v) {
  for (const tag of NAME_TAGS) if (v?.tags[tag]) return v.tags[tag];
  return null;
}

function declaredShadow(tags, alias) {
  const match = /^(\d+):(\d+(?:\.\d+)?)$/.exec(tags?.[`aiml.shadow.${alias}`]?.trim() ?? "");
  return match && Number(match[2]) > 0 ? { version: Number(match[1]), weight: Number(match[2]) } : null;
}

function Rollout({ entry, versions, stats, admin, index, refresh, generation }) {
  const { name, alias, version, canary } = entry;
  const id = `rollout-${index}`;
  const [notice, setNotice] = useState(null); // kept here: the actions re-read the registry
  const byNumber = Object.fromEntries(versions.map((v) => [v.version, v]));
  const stable = byNumber[version];
  const split = [{ v: version, share: 100 - (canary?.weight ?? 0), role: "stable" }];
  if (canary) split.push({ v: canary.version, share: canary.weight, role: "candidate" });
  const byVersion = stats?.by_version ?? {};
  const columns = split.map((s) => ({ key: `${name}/${s.v}`, label: `${s.role === "stable" ? "Stable" : "Candidate"}: version ${s.v}` }));
  const shadow = declaredShadow(stable?.tags, alias);
  const prefix = `${name}@${alias} -> `;
  const reports = Object.entries(stats?.shadow ?? {})
    .filter(([key]) => key.startsWith(prefix)).map(([key, r]) => [key.slice(prefix.length), r]);
  const guard = stats?.guard;
  const events = (Array.isArray(guard) ? guard : []).filter((e) => e?.name === name && e?.alias === alias);
  const tagged = versions.filter((v) => v.tags[`aiml.guard.${alias}`]).map((v) => [v.version, v.tags[`aiml.guard.${alias}`]]);
  const steps = (stats?.rollout_steps ?? []).filter((e) => e?.name === name && e?.alias === alias);
  const tripped = canary?.weight === 0 && tagged.some(([v]) => v === canary.version);
  const chartSeries = (measure) => columns.map((c, i) => ({ key: c.key, measure, label: `v${split[i].v}` }));
  return html`<section class="rollout" data-rollout=${`${name}@${alias}`} aria-labelledby=${`${id}-title`}>
    <h2 id=${`${id}-title`}>${name}@${alias}</h2>
    <ul class="split">${split.map((s) => html`<li key=${s.v} data-version=${s.v} data-weight=${s.share}>
      <strong>version ${s.v}</strong>${engineName(byNumber[s.v]) && html` (<code>${engineName(byNumber[s.v])}</code>)`}:
      ${" "}${weight(s.share)} of the callers${s.role === "candidate" ? ", the canary's candidate" : ""}</li>`)}</ul>
    <p>Canary: <span data-canary>${canary ? `version ${canary.version} at ${weight(canary.weight)}` : "none"}</span>
      ${canary?.plan && canary.weight > 0 && html` <span data-plan>${planText(canary)}</span>`}
      ${tripped && html` <strong class="tripped">(taken out by the guard)</strong>`}
      ${entry.unread && html` <span class="muted">(not read: ${entry.unread})</span>`}</p>
    <h3>Health</h3>
    <${Health} columns=${columns} byVersion=${byVersion} />
    <div class="charts rollout-charts">
      <${Chart} id=${`${id}-errors`} title="Error ratio (5xx)" series=${chartSeries("error")} format="percent" />
      <${Chart} id=${`${id}-p99`} title="Latency p99" series=${chartSeries("p99")} format="ms" />
    </div>
    <h3>Shadow</h3>
    <${Shadow} declared=${shadow} reports=${reports} alias=${alias} />
    <h3>Guard</h3>
    <${Guard} events=${events} tagged=${tagged} steps=${steps} alias=${alias} />
    <h3>Evaluation</h3>
    <${Evaluation} name=${name} alias=${alias} stable=${version} candidate=${canary?.version ?? null}
      versions=${versions} generation=${generation} />
    ${admin && html`<h3>Actions</h3>
      <${Actions} entry=${entry} versions=${versions} id=${id} refresh=${refresh} notice=${notice} setNotice=${setNotice} />`}
  </section>`;
}

export function RolloutsPage({ admin }) {
  const [entries, setEntries] = useState(null); // [{name, alias, version, canary}]
  const [details, setDetails] = useState({});
  const [stats, setStats] = useState(null);
  const [notice, setNotice] = useState(null);
  const [generation, setGeneration] = useState(0);
  const refresh = () => setGeneration((n) => n + 1);

  usePoll(async () => {
    try {
      const models = await registeredModels();
      const withAliases = models.filter((m) => Object.keys(m.aliases).length);
      const pairs = await Promise.all(withAliases.map(async (m) => [m.name, await get(`/models/registered_in_mlflow/${enc(m.name)}`)]));
      const canaries = await Promise.all(withAliases.flatMap((m) => Object.keys(m.aliases).sort().map((alias) =>
        get(`/models/registered_in_mlflow/${enc(m.name)}/aliases/${enc(alias)}/canary`).catch((error) =>
          // One alias unreadable (moved or deleted meanwhile) leaves the others shown.
          ({ name: m.name, alias, version: Number(m.aliases[alias]), canary: null, unread: error.message })))));
      setDetails(Object.fromEntries(pairs));
      setEntries(canaries);
      setNotice(null);
      mark("console:rollouts-listed");
    } catch (error) {
      setNotice({ error: true, text: `Reading the registry failed: ${error.message}` });
    }
  }, REGISTRY_EVERY_MS, [generation]);
  usePoll(async () => {
    try {
      const answer = (await get("/inference/stats")).stats;
      remember(answer.by_version ?? {});
      setStats(answer);
    } catch (error) {
      setNotice({ error: true, text: `Reading the stats failed: ${error.message}` });
    }
  }, STATS_EVERY_MS, [generation]);

  return html`
    <div class="toolbar"><button type="button" onClick=${refresh}>Refresh</button></div>
    <${Notice} notice=${notice} />
    <p class="muted">Each alias with its canary (<code>${"aiml.canary.<alias>"}</code>) and shadow
      (<code>${"aiml.shadow.<alias>"}</code>); the charts draw this page's readings, one every 5 s
      while it is open (the last 15 minutes, in this tab only).</p>
    ${entries === null
      ? html`<p class="muted">Reading the registry…</p>`
      : entries.length === 0
        ? html`<p>No registered model has an alias yet: a rollout starts from one (see Models).</p>`
        : entries.map((e, i) => html`<${Rollout} key=${`${e.name}@${e.alias}`} entry=${e} index=${i}
            versions=${details[e.name]?.versions ?? []} stats=${stats} admin=${admin} refresh=${refresh}
            generation=${generation} />`)}`;
}
