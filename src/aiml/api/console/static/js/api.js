// Every call the console makes goes through aiml's public API, with the key from this
// tab's session storage in the Authorization header (never a cookie: no request forgery).

const KEY = "aiml.console.key";

export const base = document.querySelector('meta[name="aiml-base"]')?.content ?? "";

export function getKey() {
  try {
    return sessionStorage.getItem(KEY) || "";
  } catch {
    return "";
  }
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

export function headers(extra = {}) {
  const key = getKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

/** A JSON call; throws ApiError with aiml's error message on a non-2xx answer. */
export async function call(method, path, body, { signal } = {}) {
  const init = { method, headers: headers(), signal, credentials: "omit" };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(base + path, init);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!response.ok) throw new ApiError(response.status, errorMessage(response.status, data), data);
  return data;
}

export const get = (path, options) => call("GET", path, undefined, options);
export const post = (path, body, options) => call("POST", path, body, options);
export const put = (path, body, options) => call("PUT", path, body, options);

export function errorMessage(status, data) {
  const error = data && typeof data === "object" ? data.error ?? data.detail : null;
  if (error && typeof error === "object" && error.message) return `${status}: ${error.message}`;
  if (typeof error === "string") return `${status}: ${error}`;
  return `${status}: ${typeof data === "string" && data ? data.slice(0, 200) : "request failed"}`;
}

/** Parse server-sent events from a fetch response, yielding each event's data string. */
export async function* sseData(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
        const data = event
          .split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (data) yield data;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/** Every registered model (following next_page_token). */
export async function registeredModels() {
  const models = [];
  let token = null;
  do {
    const query = new URLSearchParams({ max_results: "1000" });
    if (token) query.set("page_token", token);
    const page = await get(`/models/registered_in_mlflow?${query}`);
    models.push(...page.models);
    token = page.next_page_token;
  } while (token);
  return models;
}

export const enc = encodeURIComponent;
