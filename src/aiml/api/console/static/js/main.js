// The console's shell: asks for a key when aiml needs one, then the pages.
import { ApiError, get, getKey, setKey } from "./api.js";
import { KeysPage } from "./keys.js";
import { ModelsPage } from "./models.js";
import { PlaygroundPage } from "./playground.js";
import { RolloutsPage } from "./rollouts.js";
import { TrafficPage } from "./traffic.js";
import { UsagePage } from "./usage.js";
import { html, mark, Notice, render, useEffect, useState } from "./ui.js";

const PAGES = {
  models: { title: "Models", component: ModelsPage },
  traffic: { title: "Traffic", component: TrafficPage },
  rollouts: { title: "Rollouts", component: RolloutsPage },
  playground: { title: "Playground", component: PlaygroundPage },
  keys: { title: "Keys", component: KeysPage },
  usage: { title: "Usage", component: UsagePage },
};

function currentPage() {
  const name = location.hash.replace(/^#\/?/, "");
  return PAGES[name] ? name : "models";
}

const ACCESS_TEXT = {
  open: "No keys configured: everything is open",
  user: "User key",
  admin: "Admin key",
};

function KeyForm({ onKey, problem }) {
  const [value, setValue] = useState("");
  const submit = (event) => {
    event.preventDefault();
    if (value.trim()) onKey(value.trim());
  };
  return html`<main id="main" class="key-form">
    <h1>aiml console</h1>
    <form onSubmit=${submit}>
      <p>This aiml needs an API key. It is kept only in this tab's session storage.</p>
      <label for="api-key">API key</label>
      <input id="api-key" type="password" autocomplete="off" required value=${value}
        onInput=${(e) => setValue(e.currentTarget.value)} />
      <button type="submit" class="primary">Use key</button>
      <${Notice} notice=${problem && { error: true, text: problem }} />
    </form>
  </main>`;
}

function App() {
  const [page, setPage] = useState(currentPage());
  const [access, setAccess] = useState(null); // null: checking; "none": needs a key
  const [problem, setProblem] = useState(null);

  const check = async () => {
    try {
      const me = await get("/auth/whoami");
      setAccess(me.access);
      setProblem(null);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        setProblem(getKey() ? "That key is not valid." : null);
        setKey("");
        setAccess("none");
      } else {
        setProblem(`aiml did not answer: ${error.message}`);
        setAccess("none");
      }
    }
  };

  useEffect(() => {
    check();
    const onHash = () => setPage(currentPage());
    addEventListener("hashchange", onHash);
    return () => removeEventListener("hashchange", onHash);
  }, []);

  useEffect(() => {
    document.title = `${PAGES[page].title} · aiml console`;
  }, [page]);
  useEffect(() => {
    if (access && access !== "none") mark("console:interactive"); // the shell is up, usable
  }, [access]);

  if (access === null) return html`<p class="loading">Checking access…</p>`;
  if (access === "none") {
    return html`<${KeyForm} problem=${problem} onKey=${(key) => { setKey(key); check(); }} />`;
  }
  const Page = PAGES[page].component;
  const admin = access === "admin" || access === "open";
  const forget = () => {
    setKey("");
    setAccess("none");
  };
  return html`
    <a class="skip" href="#main" onClick=${(e) => { e.preventDefault(); document.getElementById("main")?.focus(); }}>Skip to content</a>
    <header class="top">
      <span class="brand">aiml</span>
      <nav aria-label="Console pages">
        ${Object.entries(PAGES).map(([name, p]) => html`
          <a href=${`#/${name}`} aria-current=${name === page ? "page" : undefined}>${p.title}</a>`)}
      </nav>
      <span class="access" data-access=${access}>${ACCESS_TEXT[access]}</span>
      ${access !== "open" && html`<button type="button" onClick=${forget}>Forget key</button>`}
    </header>
    <main id="main" tabindex="-1">
      <h1>${PAGES[page].title}</h1>
      <${Page} admin=${admin} access=${access} />
    </main>`;
}

render(html`<${App} />`, document.getElementById("app"));
