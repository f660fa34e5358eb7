// Usage (admin keys only): what each key and each team used over a chosen period, from
// GET /admin/usage (rows per UTC day, key, model and version), totalled here: per key and
// per team, with their rows per model and version; and the same rows as a CSV download.
import { base, get, headers } from "./api.js";
import { AdminOnly } from "./keys.js";
import { html, mark, Notice, usePoll, useState } from "./ui.js";

const EVERY_MS = 15000;
const COUNTS = ["requests", "errors", "input_tokens", "output_tokens", "cost"];
const PERIODS = [
  ["today", "Today (UTC)"],
  ["7", "The last 7 days"],
  ["30", "The last 30 days"],
  ["month", "This month (UTC)"],
  ["all", "Everything counted"],
];

const day = (date) => date.toISOString().slice(0, 10);

/** The first UTC day of a period (``null``: no bound). */
function since(period, now = new Date()) {
  if (period === "all") return null;
  if (period === "today") return day(now);
  if (period === "month") return `${day(now).slice(0, 8)}01`;
  return day(new Date(now.getTime() - (Number(period) - 1) * 86400000));
}

function add(into, row) {
  for (const c of COUNTS) into[c] = (into[c] ?? 0) + row[c];
  return into;
}

/** Rows grouped by ``column`` (key or team): each with its totals and, per model and
 * version, its counts summed over the days; the largest first. */
function grouped(rows, column) {
  const groups = new Map();
  for (const row of rows) {
    const name = row[column] || "";
    if (!groups.has(name)) groups.set(name, { name, total: {}, byModel: new Map() });
    const group = groups.get(name);
    add(group.total, row);
    const slot = `${row.model}\u0000${row.version}`;
    if (!group.byModel.has(slot)) group.byModel.set(slot, { model: row.model, version: row.version });
    add(group.byModel.get(slot), row);
  }
  const byModel = (a, b) => b.requests - a.requests || `${a.model}/${a.version}`.localeCompare(`${b.model}/${b.version}`);
  return [...groups.values()]
    .map((g) => ({ name: g.name, total: g.total, models: [...g.byModel.values()].sort(byModel) }))
    .sort((a, b) => b.total.requests - a.total.requests || a.name.localeCompare(b.name));
}

const count = (n) => (n ?? 0).toLocaleString();
const money = (n) => (n ? Number(n.toPrecision(6)).toString() : "0");

function Counts({ of }) {
  return html`<td class="n" data-count="requests">${count(of.requests)}</td>
    <td class="n" data-count="errors">${count(of.errors)}</td>
    <td class="n" data-count="input_tokens">${count(of.input_tokens)}</td>
    <td class="n" data-count="output_tokens">${count(of.output_tokens)}</td>
    <td class="n" data-count="cost">${money(of.cost)}</td>`;
}

function Groups({ id, title, column, groups, unnamed }) {
  const label = column === "key" ? "Key" : "Team";
  return html`<section class="usage-groups" aria-labelledby=${id}>
    <h2 id=${id}>${title}</h2>
    ${groups.length === 0 ? html`<p class="muted">Nothing counted in this period.</p>`
      : html`<div class="scroll"><table class="usage" data-by=${column}>
        <thead><tr><th scope="col">${label}</th><th scope="col">Model</th><th scope="col">Version</th>
          <th scope="col" class="n">Requests</th><th scope="col" class="n">Errors</th>
          <th scope="col" class="n">Input tokens</th><th scope="col" class="n">Output tokens</th>
          <th scope="col" class="n">Cost</th></tr></thead>
        ${groups.map((g) => {
          const name = g.name || unnamed;
          return html`<tbody key=${g.name} data-group=${g.name}>
            <tr class="total" data-row="total">
              <th scope="row">${name}</th><td>all models</td><td>–</td><${Counts} of=${g.total} /></tr>
            ${g.models.map((m) => html`<tr key=${`${m.model}/${m.version}`} data-model=${m.model} data-version=${m.version}>
              <th scope="row"><span class="sr-only">${name}</span></th>
              <td>${m.model || html`<span class="muted">no model</span>`}</td><td>${m.version || "–"}</td>
              <${Counts} of=${m} /></tr>`)}
          </tbody>`;
        })}
      </table></div>`}
  </section>`;
}

/** Fetch the CSV with this tab's key (a plain link would carry none) and save it. */
async function download(query, setNotice) {
  try {
    const response = await fetch(`${base}/admin/usage?${query}`, { headers: headers(), credentials: "omit" });
    if (!response.ok) throw new Error(`${response.status}`);
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = `aiml-usage${query.includes("since") ? `-from-${new URLSearchParams(query).get("since")}` : ""}.csv`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000); // after the browser has read it
  } catch (error) {
    setNotice({ error: true, text: `The CSV download failed: ${error.message}` });
  }
}

export function UsagePage({ admin }) {
  const [period, setPeriod] = useState("7");
  const [key, setKey] = useState("");
  const [rows, setRows] = useState(null);
  const [notice, setNotice] = useState(null);
  const [generation, setGeneration] = useState(0);
  const from = since(period);
  const query = new URLSearchParams(from ? { since: from } : {});
  usePoll(async () => {
    if (!admin) return;
    try {
      setRows((await get(`/admin/usage?${query}`)).usage);
      setNotice(null);
      mark("console:usage-listed");
    } catch (error) {
      setNotice({ error: true, text: `Reading the usage failed: ${error.message}` });
    }
  }, EVERY_MS, [period, generation, admin]);
  if (!admin) return html`<${AdminOnly} page="Usage" />`;

  const keys = rows ? [...new Set(rows.map((r) => r.key))].sort() : [];
  const shown = rows ? rows.filter((r) => !key || r.key === key) : [];
  const csv = new URLSearchParams({ ...Object.fromEntries(query), ...(key ? { key } : {}), format: "csv" });
  return html`
    <p class="muted">Requests, errors, tokens and cost per key and per team, counted on every front
      (each front writes its counts every AIML_USAGE_FLUSH_S; this page asks every 15 s).</p>
    <div class="toolbar usage-filters">
      <label for="usage-period">Period</label>
      <select id="usage-period" value=${period} onChange=${(e) => setPeriod(e.currentTarget.value)}>
        ${PERIODS.map(([value, label]) => html`<option value=${value}>${label}</option>`)}
      </select>
      <label for="usage-key">Key</label>
      <select id="usage-key" value=${key} onChange=${(e) => setKey(e.currentTarget.value)}>
        <option value="">every key</option>
        ${keys.map((k) => html`<option value=${k}>${k}</option>`)}
      </select>
      <button type="button" onClick=${() => setGeneration((n) => n + 1)}>Refresh</button>
      <button type="button" onClick=${() => download(csv.toString(), setNotice)}>Download CSV</button>
    </div>
    <${Notice} notice=${notice} />
    ${rows === null ? html`<p class="muted">Reading the usage…</p>` : html`
      <p data-period=${from ?? "all"}>${from ? `From ${from} (UTC) to now` : "Everything counted"}:
        ${" "}${count(shown.reduce((n, r) => n + r.requests, 0))} requests.</p>
      <${Groups} id="usage-by-key" title="Per key" column="key" groups=${grouped(shown, "key")} unnamed="(no key)" />
      <${Groups} id="usage-by-team" title="Per team" column="team" groups=${grouped(shown, "team")} unnamed="(no team)" />`}`;
}
