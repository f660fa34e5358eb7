// Traffic: live charts of the last 15 minutes, from aiml's own in-memory history
// (GET /inference/traffic, a point every 5 s); nothing needs Prometheus.
import { get } from "./api.js";
import { html, Notice, usePoll, useEffect, useRef, useState } from "./ui.js";

let uPlotLoading = null;
/** uPlot is only needed here: loaded on first use (a file of the console, CSP 'self'). */
function loadUPlot() {
  uPlotLoading ??= new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = new URL("../vendor/uPlot.iife.min.js", import.meta.url).href;
    script.onload = () => resolve(window.uPlot);
    script.onerror = () => reject(new Error("could not load uPlot"));
    document.head.append(script);
  });
  return uPlotLoading;
}

const COLORS = ["#1f5fbf", "#c2410c", "#15803d", "#7e22ce", "#b91c1c", "#0f766e", "#a16207", "#be185d"];

const number = (v, digits = 2) => (v == null ? "–" : Number(v).toFixed(digits));
const FORMATS = {
  rate: (v) => `${number(v)}/s`,
  ms: (v) => (v == null ? "–" : v >= 1 ? `${v.toFixed(1)} s` : `${(v * 1000).toFixed(v < 0.01 ? 1 : 0)} ms`),
  percent: (v) => (v == null ? "–" : `${(v * 100).toFixed(1)} %`),
  count: (v) => number(v, 0),
};

function lastValue(column) {
  for (let i = column.length - 1; i >= 0; i -= 1) if (column[i] != null) return column[i];
  return null;
}

function peak(column) {
  return column.reduce((max, v) => (v != null && (max == null || v > max) ? v : max), null);
}

function Chart({ id, title, t, columns, format, windowS, empty = "Nothing measured yet." }) {
  const box = useRef(null);
  const plot = useRef(null);
  const labels = Object.keys(columns);
  const shape = labels.join("\u0000");
  const fmt = FORMATS[format];

  useEffect(() => {
    let cancelled = false;
    let observer = null;
    if (!labels.length || !t.length) return undefined;
    loadUPlot().then((uPlot) => {
      if (cancelled || !box.current) return;
      const width = () => Math.max(box.current?.clientWidth ?? 0, 260);
      const options = {
        width: width(),
        height: 180,
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        scales: {
          // The whole window, newest on the right: a quiet start is a short line at the end.
          x: { time: true, range: (u, min, max) => [max - windowS, max] },
          y: { range: (u, min, max) => [0, Math.max(max, format === "count" ? 1 : 1e-3) * 1.1] },
        },
        axes: [
          { stroke: "#333", grid: { stroke: "#e4e4e4" } },
          {
            stroke: "#333", grid: { stroke: "#e4e4e4" }, size: 72, values: (u, ticks) => ticks.map(fmt),
            ...(format === "count" ? { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] } : {}),
          },
        ],
        series: [{}, ...labels.map((label, i) => ({
          label, stroke: COLORS[i % COLORS.length], width: 2,
          // Ratios and quantiles have gaps (nothing to measure): mark each point.
          points: { show: format === "percent" || format === "ms", size: 5 },
        }))],
      };
      plot.current = new uPlot(options, [t, ...labels.map((l) => columns[l])], box.current);
      observer = new ResizeObserver(() => {
        if (box.current) plot.current?.setSize({ width: width(), height: 180 });
      });
      observer.observe(box.current);
    });
    return () => {
      cancelled = true;
      observer?.disconnect();
      plot.current?.destroy();
      plot.current = null;
    };
  }, [shape, t.length === 0]);

  useEffect(() => {
    plot.current?.setData([t, ...labels.map((l) => columns[l])]);
  }, [t, columns]);

  // The recent points as data attributes: what the legend summarises, for tests and tools.
  const recent = -24;
  return html`<figure class="chart" data-chart=${id} data-t=${JSON.stringify(t.slice(recent))}
      aria-labelledby=${`chart-${id}`}>
    <figcaption id=${`chart-${id}`}>${title}</figcaption>
    ${labels.length && t.length
      ? html`<div class="plot" ref=${box} role="img" aria-label=${`${title}: chart of the last ${t.length} points`}></div>`
      : html`<p class="muted">${empty}</p>`}
    <ul class="legend">
      ${labels.map((label, i) => {
        const last = lastValue(columns[label]);
        return html`<li data-label=${label} data-last=${last ?? ""}
            data-values=${JSON.stringify(columns[label].slice(recent))}>
          <span class=${`swatch c${i % COLORS.length}`} aria-hidden="true"></span>
          ${label}: <strong>${fmt(last)}</strong>
          ${format !== "percent" && html` <span class="muted">(max ${fmt(peak(columns[label]))})</span>`}</li>`;
      })}
    </ul>
  </figure>`;
}

function pick(series, group, rename = (l) => l, { nonZero = false } = {}) {
  const out = {};
  for (const [label, column] of Object.entries(series[group] ?? {})) {
    if (nonZero && !column.some((v) => v)) continue; // an engine with nothing to show
    out[rename(label)] = column;
  }
  return out;
}

export function TrafficPage() {
  const [data, setData] = useState(null);
  const [notice, setNotice] = useState(null);
  usePoll(async () => {
    try {
      setData(await get("/inference/traffic"));
      setNotice(null);
    } catch (error) {
      setNotice({ error: true, text: `Reading the traffic failed: ${error.message}` });
    }
  }, 5000);

  if (!data) return html`<${Notice} notice=${notice} /><p class="muted">Reading the traffic…</p>`;
  const s = data.series;
  const registry = s.registry ?? {};
  const charts = [
    ["requests", "Requests per second, by task/engine", pick(s, "requests_per_s"), "rate"],
    ["status", "Requests per second, by HTTP status", pick(s, "status_per_s"), "rate"],
    ["errors", "Error ratio (status ≥ 400), by task/engine", pick(s, "error_ratio"), "percent"],
    ["model-requests", "Requests per second, by model", pick(s, "model_requests_per_s"), "rate"],
    ["model-errors", "Error ratio (status ≥ 400), by model", pick(s, "model_error_ratio"), "percent"],
    ["latency", "Request latency (p50, p99)", pick(s, "latency_s"), "ms"],
    ["ttft", "Time to first token (p50, p99)", pick(s, "ttft_s"), "ms"],
    ["tokens", "Generated tokens per second", pick(s, "tokens_per_s"), "rate"],
    ["queue", "Queued and running requests, per engine", {
      ...pick(s, "queue_depth", (l) => `queued ${l}`, { nonZero: true }),
      ...pick(s, "running", (l) => `running ${l}`, { nonZero: true }),
    }, "count", "No request queued or running in this window."],
    ["rejected", "Refused with 429 per second, per engine",
      pick(s, "rejected_per_s", undefined, { nonZero: true }), "rate", "No 429 in this window."],
    ["lookups", "Registry lookups and cancelled requests per second", {
      ...(registry.lookups_per_s ? { "registry lookups": registry.lookups_per_s } : {}),
      ...(registry.cancelled_per_s ? { cancelled: registry.cancelled_per_s } : {}),
    }, "rate"],
    ["cache", "Resolution cache hit ratio", registry.cache_hit_ratio ? { "hit ratio": registry.cache_hit_ratio } : {}, "percent"],
    ["models", "Requests holding each loaded model", pick(s, "model_in_use"), "count"],
  ];
  const minutes = Math.round(data.window_s / 60);
  return html`
    <${Notice} notice=${notice} />
    <p class="muted">The last ${minutes} minutes, a point every ${data.interval_s} s
      (${data.t.length} points), kept in aiml's memory; refreshed every 5 s.</p>
    <div class="charts">
      ${charts.map(([id, title, columns, format, empty]) =>
        html`<${Chart} key=${id} id=${id} title=${title} t=${data.t} columns=${columns}
          format=${format} windowS=${data.window_s} empty=${empty} />`)}
    </div>`;
}
