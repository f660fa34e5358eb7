// Keys (admin keys only): every key aiml knows, the database's and the environment's; a
// form that makes one, its secret shown once with a copy button; rotate and revoke, each
// confirmed first. Through the admin API (/admin/keys, /admin/teams).
import { call, enc, get, post } from "./api.js";
import { Confirm, html, mark, Notice, usePoll, useRef, useState } from "./ui.js";

const LIMITS = [
  ["rpm", "Requests per minute", 1, "1"],
  ["tpm", "Tokens per minute", 1, "1"],
  ["concurrent", "Requests at once", 1, "1"],
  ["daily_tokens", "Tokens per day", 0, "1"],
  ["monthly_tokens", "Tokens per month", 0, "1"],
  ["daily_cost", "Cost per day", 0, "any"],
  ["monthly_cost", "Cost per month", 0, "any"],
];
const SHORT = { rpm: "rpm", tpm: "tpm", concurrent: "at once", daily_tokens: "tokens/day",
  monthly_tokens: "tokens/month", daily_cost: "cost/day", monthly_cost: "cost/month" };

/** What a user key sees on an admin page. */
export function AdminOnly({ page }) {
  return html`<p class="notice" data-admin-only>The ${page} page needs an admin key: this is a
    user key. An admin can make keys and read the usage (Forget key, then give an admin key).</p>`;
}

const when = (s) => (s == null ? "–" : new Date(s * 1000).toLocaleString());
const list = (text) => text.split(",").map((p) => p.trim()).filter(Boolean);

function limitsText(limits) {
  const set = Object.entries(limits ?? {}).filter(([, v]) => v != null);
  return set.length ? set.map(([k, v]) => `${SHORT[k] ?? k} ${v}`).join(", ") : "none";
}

function rulesText(rules) {
  const parts = [rules.models.length ? rules.models.join(", ") : "every model"];
  if (rules.tasks.length) parts.push(`tasks: ${rules.tasks.join(", ")}`);
  if (rules.surfaces.length) parts.push(`surfaces: ${rules.surfaces.join(", ")}`);
  return parts.join("; ");
}

/** A secret, shown this once: copy it, then it is gone from the page. */
function Secret({ shown, onDone }) {
  const code = useRef(null);
  const [copied, setCopied] = useState(null);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(shown.key);
      setCopied({ text: "Copied to the clipboard." });
    } catch {
      getSelection().selectAllChildren(code.current); // the clipboard refused: select it
      setCopied({ error: true, text: "The browser refused the clipboard: the secret is selected, copy it with Ctrl+C." });
    }
  };
  return html`<section class="secret" aria-labelledby="secret-title" data-secret-of=${shown.name}>
    <h2 id="secret-title">The secret of ${shown.name}${shown.rotated ? " (rotated)" : ""}</h2>
    <p><strong>Shown this once:</strong> aiml keeps only its digest. Copy it now and keep it
      somewhere safe; a lost secret is replaced by rotating the key.</p>
    <p><code ref=${code} data-secret>${shown.key}</code></p>
    <div class="actions">
      <button type="button" class="primary" onClick=${copy}>Copy secret</button>
      <button type="button" onClick=${onDone}>Done, hide it</button>
    </div>
    <${Notice} notice=${copied} />
  </section>`;
}

function number(value) {
  return value.trim() === "" ? null : Number(value);
}

function CreateKey({ teams, open, onMade }) {
  const empty = { name: "", role: "user", team: "", owner: "", models: "", tasks: "", surfaces: [], days: "" };
  const [form, setForm] = useState(empty);
  const [limits, setLimits] = useState({});
  const [notice, setNotice] = useState(null);
  const [busy, setBusy] = useState(false);
  const field = (name) => (e) => setForm({ ...form, [name]: e.currentTarget.value });
  const surface = (name) => (e) => setForm({ ...form, surfaces: e.currentTarget.checked
    ? [...form.surfaces, name] : form.surfaces.filter((s) => s !== name) });
  const submit = async (event) => {
    event.preventDefault();
    setBusy(true);
    const body = { name: form.name.trim(), role: form.role, models: list(form.models), tasks: list(form.tasks),
      surfaces: form.surfaces, limits: Object.fromEntries(LIMITS.map(([k]) => [k, number(limits[k] ?? "")])) };
    if (form.team) body.team = form.team;
    if (form.owner.trim()) body.owner = form.owner.trim();
    if (form.days.trim()) body.expires_in_s = Number(form.days) * 86400;
    try {
      const made = await post("/admin/keys", body);
      setNotice({ text: `Key ${made.name} made.` });
      setForm(empty);
      setLimits({});
      onMade({ name: made.name, key: made.key });
    } catch (error) {
      setNotice({ error: true, text: `The key was not made: ${error.message}` });
    } finally {
      setBusy(false);
    }
  };
  return html`<form class="create-key" aria-labelledby="create-title" onSubmit=${submit}>
    <h2 id="create-title">Make a key</h2>
    ${open && html`<p class="notice">No key is configured yet, so everything is open. Once a key
      exists every route needs one, this console too: make an admin key first and keep its secret.</p>`}
    <div class="fields">
      <div><label for="key-name">Name</label>
        <input id="key-name" required maxlength="128" pattern="[A-Za-z0-9._@\\-]+" value=${form.name}
          onInput=${field("name")} aria-describedby="key-name-help" />
        <span id="key-name-help" class="muted hint">Letters, digits, . _ @ -</span></div>
      <div><label for="key-role">Role</label>
        <select id="key-role" value=${form.role} onChange=${field("role")}>
          <option value="user">user: the serving routes</option>
          <option value="admin">admin: everything</option>
        </select></div>
      <div><label for="key-team">Team</label>
        <select id="key-team" value=${form.team} onChange=${field("team")}>
          <option value="">(none)</option>
          ${teams.map((t) => html`<option value=${t.name}>${t.name}</option>`)}
        </select></div>
      <div><label for="key-owner">Owner</label>
        <input id="key-owner" maxlength="256" value=${form.owner} onInput=${field("owner")} /></div>
      <div><label for="key-days">Expires in (days)</label>
        <input id="key-days" type="number" min="0.01" step="any" placeholder="never" value=${form.days}
          onInput=${field("days")} /></div>
    </div>
    <label for="key-models">Models it may use</label>
    <input id="key-models" class="wide" placeholder="chat-*@production, embed@3 (empty: every model)"
      value=${form.models} onInput=${field("models")} aria-describedby="key-models-help" />
    <span id="key-models-help" class="muted hint">Registry names, exact or globs, each optionally
      @alias or @version; separated by commas.</span>
    <label for="key-tasks">Tasks it may use</label>
    <input id="key-tasks" class="wide" placeholder="chat, embeddings (empty: every task)"
      value=${form.tasks} onInput=${field("tasks")} />
    <fieldset class="surfaces"><legend>Surfaces (none ticked: all)</legend>
      ${["inference", "openai", "ollama"].map((s) => html`<label key=${s} class="check">
        <input type="checkbox" checked=${form.surfaces.includes(s)} onChange=${surface(s)} /> ${s}</label>`)}
    </fieldset>
    <fieldset><legend>Limits and budgets (empty: none; days and months in UTC)</legend>
      <div class="fields">${LIMITS.map(([k, label, min, step]) => html`<div key=${k}>
        <label for=${`limit-${k}`}>${label}</label>
        <input id=${`limit-${k}`} type="number" min=${min} step=${step} value=${limits[k] ?? ""}
          onInput=${(e) => setLimits({ ...limits, [k]: e.currentTarget.value })} /></div>`)}</div>
    </fieldset>
    <div class="actions"><button type="submit" class="primary" disabled=${busy}>Make key</button></div>
    <${Notice} notice=${notice} />
  </form>`;
}

function KeyRows({ keys, act }) {
  return html`<div class="scroll"><table class="keys">
    <caption>Every key: the database's, and the environment's (AIML_API_KEYS, AIML_ADMIN_KEYS)</caption>
    <thead><tr>
      <th scope="col">Name</th><th scope="col">Prefix</th><th scope="col">Role</th><th scope="col">Team</th>
      <th scope="col">May use</th><th scope="col">Limits</th><th scope="col">Status</th>
      <th scope="col">Expires</th><th scope="col"><span class="sr-only">Actions</span></th>
    </tr></thead>
    <tbody>${keys.map((k) => html`<tr key=${k.name} data-key=${k.name} data-status=${k.status}>
      <th scope="row">${k.name}</th>
      <td><code>${k.prefix ? `${k.prefix}…` : "–"}</code></td>
      <td>${k.role}</td><td>${k.team ?? "–"}</td><td>${rulesText(k.rules)}</td>
      <td>${limitsText(k.limits)}</td>
      <td class="status">${k.source === "environment" ? "active (environment)" : k.status}</td>
      <td>${when(k.expires_at)}</td>
      <td>${k.source === "database" && k.status !== "revoked" && html`<div class="row-actions">
        <button type="button" onClick=${() => act("rotate", k.name)} aria-label=${`Rotate ${k.name}`}>Rotate…</button>
        <button type="button" onClick=${() => act("revoke", k.name)} aria-label=${`Revoke ${k.name}`}>Revoke…</button>
      </div>`}</td>
    </tr>`)}</tbody>
  </table></div>`;
}

export function KeysPage({ admin, access }) {
  const [keys, setKeys] = useState(null);
  const [teams, setTeams] = useState([]);
  const [notice, setNotice] = useState(null);
  const [shown, setShown] = useState(null); // {name, key, rotated}: the secret, this once
  const [dialog, setDialog] = useState(null); // {kind: "rotate" | "revoke", name}
  const [grace, setGrace] = useState("0");
  const [generation, setGeneration] = useState(0);
  const refresh = () => setGeneration((n) => n + 1);
  usePoll(async () => {
    if (!admin) return;
    try {
      const [listed, teamList] = await Promise.all([get("/admin/keys"), get("/admin/teams")]);
      setKeys(listed.keys);
      setTeams(teamList.teams);
      mark("console:keys-listed");
    } catch (error) {
      setNotice({ error: true, text: `Reading the keys failed: ${error.message}` });
    }
  }, 0, [generation, admin]);
  if (!admin) return html`<${AdminOnly} page="Keys" />`;

  const confirmed = async () => {
    const { kind, name } = dialog;
    setDialog(null);
    try {
      if (kind === "rotate") {
        const answer = await post(`/admin/keys/${enc(name)}/rotate`, { grace_s: Number(grace || 0) * 3600 });
        setShown({ name, key: answer.key, rotated: true });
        setNotice({ text: `Key ${name} rotated: ${Number(grace) > 0 ? `its old secret works ${grace} h more` : "its old secret stopped"}.` });
      } else {
        await call("DELETE", `/admin/keys/${enc(name)}`);
        setNotice({ text: `Key ${name} revoked: every front refuses it within seconds.` });
      }
    } catch (error) {
      setNotice({ error: true, text: `${kind === "rotate" ? "Rotating" : "Revoking"} ${name} failed: ${error.message}` });
    }
    refresh();
  };
  return html`
    <div class="toolbar"><button type="button" onClick=${refresh}>Refresh</button></div>
    <${Notice} notice=${notice} />
    ${shown && html`<${Secret} shown=${shown} onDone=${() => setShown(null)} />`}
    ${keys === null ? html`<p class="muted">Reading the keys…</p>`
      : keys.length === 0 ? html`<p>No key yet.</p>`
        : html`<${KeyRows} keys=${keys} act=${(kind, name) => { setGrace("0"); setDialog({ kind, name }); }} />`}
    <${CreateKey} teams=${teams} open=${access === "open"} onMade=${(made) => { setShown(made); refresh(); }} />
    ${dialog?.kind === "rotate" && html`<${Confirm} title=${`Rotate ${dialog.name}?`} confirmLabel="Rotate"
        onConfirm=${confirmed} onCancel=${() => setDialog(null)}>
      <p>The key gets a new secret, shown once. Its old secret stops at once, or after:</p>
      <label for="rotate-grace">Old secret still works for (hours)</label>
      <input id="rotate-grace" type="number" min="0" max="720" step="any" value=${grace}
        onInput=${(e) => setGrace(e.currentTarget.value)} />
    <//>`}
    ${dialog?.kind === "revoke" && html`<${Confirm} title=${`Revoke ${dialog.name}?`} confirmLabel="Revoke"
        onConfirm=${confirmed} onCancel=${() => setDialog(null)}>
      <p>Every front refuses <code>${dialog.name}</code> within seconds. This cannot be undone; its
        record and its usage stay.</p>
    <//>`}`;
}
