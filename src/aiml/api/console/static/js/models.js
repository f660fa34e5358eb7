// Models: every registered model, its versions, aliases and tags, what is loaded; admin
// actions through aiml's admin API (aliases, load, unload, clear the resolution cache);
// per version, its recent traces and their feedback (traces.js).
import { enc, get, post, put, registeredModels } from "./api.js";
import { VersionTraces } from "./traces.js";
import { bytes, Confirm, html, mark, Notice, seconds, usePoll, useState } from "./ui.js";

// The version tags that hold an engine's own name for the model (engines/table.py).
const NAME_TAGS = ["ollama_model_name", "openai_model_name", "gguf_file", "onnx_file"];
const MAIN_TAGS = new Set(["inference_engine", "inference_task", ...NAME_TAGS]);

function engineName(version) {
  for (const tag of NAME_TAGS) if (version.tags[tag]) return version.tags[tag];
  return version.source ? `files: ${version.source.split("/").pop()}` : "–";
}

function LoadedTable({ loaded, admin, act }) {
  if (!loaded) return html`<p class="muted">Reading what is loaded…</p>`;
  const { models, budget } = loaded;
  const ttl = budget.idle_ttl_s;
  return html`<section aria-labelledby="loaded-title">
    <h2 id="loaded-title">Loaded now</h2>
    <p class="muted">
      ${bytes(budget.used_bytes)} of ${bytes(budget.max_bytes)} used, ${models.length} of
      ${" "}${budget.max_models} models;
      ${" "}${ttl > 0 ? `idle models are unloaded after ${seconds(ttl)}.` : "idle models stay loaded."}
    </p>
    ${loaded.replicas !== undefined && html`<${ReplicaTable} replicas=${loaded.replicas} />`}
    ${models.length === 0
      ? html`<p>No model is loaded in this process.</p>`
      : html`<div class="scroll"><table class="loaded">
        <thead><tr>
          <th scope="col">Model</th><th scope="col">Engine</th><th scope="col">Memory</th>
          <th scope="col">In flight</th><th scope="col">Idle</th><th scope="col">Expires in</th>
          ${admin && html`<th scope="col"><span class="sr-only">Actions</span></th>`}
        </tr></thead>
        <tbody>${models.map((m) => {
          const ref = `${m.registry_name}/${m.registry_version}`;
          const idle = m.in_use ? 0 : m.last_used_s_ago;
          const expires = m.in_use ? "in use" : ttl > 0 ? seconds(Math.max(0, ttl - idle)) : "never";
          return html`<tr key=${`${m.engine}:${ref}`} data-model=${ref}>
            <th scope="row">${ref}</th><td>${m.engine}</td><td>${bytes(m.size_bytes)}</td>
            <td class="in-use">${m.in_use}</td><td>${m.in_use ? "busy" : seconds(idle)}</td>
            <td>${expires}</td>
            ${admin && html`<td><button type="button" onClick=${() => act("unload", m.engine, ref)}
              aria-label=${`Unload ${ref}`}>Unload</button></td>`}
          </tr>`;
        })}</tbody>
      </table></div>`}
  </section>`;
}

/** On a cluster: which model replicas hold each version (their own reports, renewed). */
function ReplicaTable({ replicas }) {
  if (replicas === null) return html`<p class="muted">The model replicas' holdings are unknown right now.</p>`;
  const held = Object.entries(replicas);
  return held.length === 0
    ? html`<p>No model replica holds a model.</p>`
    : html`<div class="scroll"><table class="replicas">
      <caption>On the model replicas</caption>
      <thead><tr><th scope="col">Model</th><th scope="col">Replicas</th></tr></thead>
      <tbody>${held.map(([ref, names]) => html`<tr key=${ref} data-model=${ref}>
        <th scope="row">${ref}</th><td>${names.join(", ")}</td></tr>`)}</tbody>
    </table></div>`;
}

function AliasForm({ model, versions, onDone }) {
  const [alias, setAlias] = useState(Object.keys(model.aliases)[0] ?? "");
  const [version, setVersion] = useState(String(versions[0]?.version ?? ""));
  const [confirm, setConfirm] = useState(false);
  const [notice, setNotice] = useState(null);
  // What the version lacks, when aiml refused the move (409 unsafe_alias_move): the admin
  // may still force it, having read the list.
  const [refused, setRefused] = useState(null);
  const id = `alias-${model.name}`;
  const current = model.aliases[alias];
  const move = async (force) => {
    setConfirm(false);
    setRefused(null);
    const path = `/models/registered_in_mlflow/${enc(model.name)}/aliases/${enc(alias)}`;
    try {
      await put(force ? `${path}?force=true` : path, { version: Number(version) });
      setNotice({ text: `${model.name}@${alias} now points at version ${version}.` });
      onDone();
    } catch (error) {
      const body = error.body?.error;
      if (error.status === 409 && body?.code === "unsafe_alias_move") {
        setRefused(body.missing ?? []);
        setNotice({ error: true, text: `409: ${model.name}@${alias} was not moved.` });
      } else {
        setNotice({ error: true, text: error.message });
      }
    }
  };
  return html`<form class="alias-form" onSubmit=${(e) => { e.preventDefault(); if (alias) setConfirm(true); }}>
    <label for=${`${id}-name`}>Alias</label>
    <input id=${`${id}-name`} list=${`${id}-list`} value=${alias} required maxlength="256"
      onInput=${(e) => setAlias(e.currentTarget.value.trim())} />
    <datalist id=${`${id}-list`}>${Object.keys(model.aliases).map((a) => html`<option value=${a} />`)}</datalist>
    <label for=${`${id}-version`}>Version</label>
    <select id=${`${id}-version`} value=${version} onChange=${(e) => setVersion(e.currentTarget.value)}>
      ${versions.map((v) => html`<option value=${String(v.version)}>${v.version}</option>`)}
    </select>
    <button type="submit">Point alias…</button>
    <${Notice} notice=${notice} />
    ${confirm && html`<${Confirm} title="Move an alias" confirmLabel="Move alias"
        onConfirm=${() => move(false)} onCancel=${() => setConfirm(false)}>
      <p class="change">
        <code>${model.name}@${alias}</code>:${" "}
        <span class="old">${current ? `version ${current}` : "(new alias)"}</span> →${" "}
        <span class="new">version ${version}</span>
      </p>
      <p>Requests for <code>${model.name}@${alias}</code> are served by version ${version}${" "}
        from now on (aiml drops its cached resolution of ${model.name} at once).</p>
    <//>`}
    ${refused && html`<${Confirm} title="Move the alias anyway?" confirmLabel="Move anyway"
        onConfirm=${() => move(true)} onCancel=${() => setRefused(null)}>
      <p>Version ${version} cannot serve all that <code>${model.name}@${alias}</code> serves now:</p>
      <ul class="missing">${refused.map((m) => html`<li data-kind=${m.kind}>${m.reason}</li>`)}</ul>
      <p>Once moved, the requests that need these fail.</p>
    <//>`}
  </form>`;
}

// An alias moved in MLflow to a version that cannot serve is held at its last good one
// (/inference/stats' held_aliases): said beside the alias, with what the version lacks.
function HeldNotes({ model, held }) {
  const mine = Object.entries(held ?? {}).filter(([key]) => key.startsWith(`${model.name}@`));
  return mine.map(([key, hold]) => html`<p class="notice error held" role="status" data-held=${key}>
    <strong>@${key.slice(model.name.length + 1)} is held at v${hold.serving}:</strong>${" "}
    the registry names v${hold.refused}, which ${hold.checked ? "cannot serve what it serves"
      : "could not be checked"}: ${hold.missing.map((m) => m.reason).join("; ")}.
    It serves again as soon as the alias names a version that can.</p>`);
}

function ModelCard({ model, detail, caps, loaded, held, admin, act, refresh }) {
  const [traced, setTraced] = useState(null); // the version whose traces are shown
  const versions = detail?.versions ?? [];
  const loadedOf = (v) =>
    loaded?.models.find((m) => m.registry_name === model.name && String(m.registry_version) === String(v));
  return html`<section class="model" aria-labelledby=${`model-${model.name}`}>
    <h2 id=${`model-${model.name}`}>${model.name}</h2>
    ${model.description && html`<p>${model.description}</p>`}
    <p class="aliases">Aliases:${" "}
      ${Object.keys(model.aliases).length === 0 ? html`<span class="muted">none</span>` : ""}
      ${Object.entries(model.aliases).map(([alias, v]) =>
        html`<span class="chip alias" data-alias=${alias}>@${alias} → v${v}</span>${" "}`)}
    </p>
    <${HeldNotes} model=${model} held=${held} />
    ${!detail
      ? html`<p class="muted">Reading versions…</p>`
      : html`<div class="scroll"><table class="versions">
        <thead><tr>
          <th scope="col">Version</th><th scope="col">Task</th><th scope="col">Engine</th>
          <th scope="col">The engine's name</th><th scope="col">Capabilities</th>
          <th scope="col">Other tags</th><th scope="col">Loaded</th>
          <th scope="col">Traces</th>
          ${admin && html`<th scope="col"><span class="sr-only">Actions</span></th>`}
        </tr></thead>
        <tbody>${versions.map((v) => {
          const here = loadedOf(v.version);
          const engine = v.tags.inference_engine;
          const ref = `${model.name}/${v.version}`;
          const other = Object.entries(v.tags).filter(([k]) => !MAIN_TAGS.has(k) && !k.startsWith("aiml."));
          return html`<tr key=${v.version} data-version=${v.version}>
            <th scope="row">${v.version}${v.aliases.map((a) => html` <span class="chip alias">@${a}</span>`)}</th>
            <td>${v.tags.inference_task ?? "–"}</td>
            <td>${engine ?? "–"}</td>
            <td><code>${engineName(v)}</code></td>
            <td>${(caps[ref] ?? []).join(", ") || html`<span class="muted">read on first use</span>`}</td>
            <td>${other.map(([k, val]) => html`<span class="chip">${k}=${val}</span> `)}</td>
            <td>${here ? `${bytes(here.size_bytes)}, ${here.in_use} in flight`
              : loaded?.replicas?.[ref] ? `on ${loaded.replicas[ref].join(", ")}` : "no"}</td>
            <td><button type="button" aria-expanded=${traced === ref ? "true" : "false"}
              aria-label=${`Traces of ${ref}`} onClick=${() => setTraced(traced === ref ? null : ref)}>Traces</button></td>
            ${admin && html`<td class="row-actions">${engine && (here
              ? html`<button type="button" onClick=${() => act("unload", engine, ref)} aria-label=${`Unload ${ref}`}>Unload</button>`
              : html`<button type="button" onClick=${() => act("load", engine, ref)} aria-label=${`Load ${ref}`}>Load</button>`)}</td>`}
          </tr>`;
        })}</tbody>
      </table></div>`}
    ${traced && html`<${VersionTraces} key=${traced} version=${traced} onClose=${() => setTraced(null)} />`}
    ${admin && detail && versions.length > 0 && html`<${AliasForm} model=${model} versions=${versions} onDone=${refresh} />`}
  </section>`;
}

export function ModelsPage({ admin }) {
  const [models, setModels] = useState(null);
  const [details, setDetails] = useState({});
  const [caps, setCaps] = useState({});
  const [loaded, setLoaded] = useState(null);
  const [held, setHeld] = useState({});
  const [notice, setNotice] = useState(null);
  const [generation, setGeneration] = useState(0);

  const refresh = () => setGeneration((n) => n + 1);
  usePoll(async () => {
    try {
      // Capabilities aiml has read so far (/v1/models answers without touching a model).
      const capabilities = get("/v1/models");
      const list = await registeredModels();
      const pairs = await Promise.all(list.map(async (m) =>
        [m.name, await get(`/models/registered_in_mlflow/${enc(m.name)}`)]));
      const v1 = await capabilities;
      const known = {};
      const byName = Object.fromEntries(list.map((m) => [m.name, m]));
      for (const entry of v1.data) {
        if (!entry.capabilities) continue;
        const [name, alias] = entry.id.split("@");
        const m = byName[name];
        if (!m) continue;
        const version = alias ? m.aliases[alias] : m.latest_version;
        known[`${name}/${version}`] = entry.capabilities;
      }
      setModels(list);
      setDetails(Object.fromEntries(pairs));
      setCaps(known);
      mark("console:models-listed");
    } catch (error) {
      setNotice({ error: true, text: `Reading the registry failed: ${error.message}` });
    }
  }, 0, [generation]);
  usePoll(async () => {
    try {
      const stats = get("/inference/stats");
      setLoaded(await get("/inference/loaded"));
      setHeld((await stats).stats?.held_aliases ?? {});
    } catch (error) {
      setNotice({ error: true, text: `Reading loaded models failed: ${error.message}` });
    }
  }, 5000, [generation]);

  const act = async (what, engine, ref) => {
    setNotice({ text: `${what === "load" ? "Loading" : "Unloading"} ${ref}…` });
    try {
      const answer = await post(`/admin/models/${what}`, { engine, model_name: ref });
      const text = what === "load" ? `Loaded ${ref}.`
        : answer.unloaded ? `Unloaded ${ref}.` : `${ref} was not loaded.`;
      setNotice({ text });
      refresh();
    } catch (error) {
      setNotice({ error: true, text: error.message });
    }
  };
  const clearCache = async () => {
    try {
      const answer = await post("/inference/clear-cache");
      const parts = Object.entries(answer.cleared ?? {}).map(([k, v]) => `${v} ${k}`);
      setNotice({ text: `Resolution cache cleared (${parts.join(", ") || "nothing cached"}).` });
    } catch (error) {
      setNotice({ error: true, text: error.message });
    }
  };

  return html`
    <div class="toolbar">
      <button type="button" onClick=${refresh}>Refresh</button>
      ${admin && html`<button type="button" onClick=${clearCache}>Clear resolution cache</button>`}
    </div>
    <${Notice} notice=${notice} />
    <${LoadedTable} loaded=${loaded} admin=${admin} act=${act} />
    ${models === null
      ? html`<p class="muted">Reading the registry…</p>`
      : models.length === 0
        ? html`<p>No model is registered yet.</p>`
        : models.map((m) => html`<${ModelCard} key=${m.name} model=${m} detail=${details[m.name]}
            caps=${caps} loaded=${loaded} held=${held} admin=${admin} act=${act} refresh=${refresh} />`)}`;
}
