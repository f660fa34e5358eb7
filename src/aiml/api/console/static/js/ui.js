// Preact + htm (tagged templates, no build step, no eval) and a few shared pieces.
// Preact escapes every text and attribute value it renders; the console never sets HTML.
import { h, render } from "../vendor/preact.mjs";
import htm from "../vendor/htm.mjs";
import { useEffect, useRef, useState } from "../vendor/hooks.mjs";

export { render, useEffect, useRef, useState };
export { useCallback, useMemo } from "../vendor/hooks.mjs";
export const html = htm.bind(h);

/** A performance mark, once per page load (the load test reads them). */
export function mark(name) {
  if (!performance.getEntriesByName(name).length) performance.mark(name);
}

export function bytes(n) {
  if (n == null) return "–";
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

export function seconds(s) {
  if (s == null || Number.isNaN(s)) return "–";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 90) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

/** Re-run ``load`` every ``everyMs`` while mounted (and when ``deps`` change). */
export function usePoll(load, everyMs, deps = []) {
  useEffect(() => {
    let stopped = false;
    let timer = null;
    const tick = async () => {
      try {
        await load();
      } finally {
        if (!stopped && everyMs) timer = setTimeout(tick, everyMs);
      }
    };
    tick();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, deps);
}

export function Notice({ notice }) {
  if (!notice) return null;
  const role = notice.error ? "alert" : "status";
  return html`<p class=${notice.error ? "notice error" : "notice"} role=${role}>${notice.text}</p>`;
}

/** A modal confirmation (the native <dialog>: focus trapped, Escape cancels). */
export function Confirm({ title, children, confirmLabel, onConfirm, onCancel }) {
  const ref = useRef(null);
  useEffect(() => {
    const dialog = ref.current;
    if (dialog && !dialog.open) dialog.showModal();
    const cancel = (event) => {
      event.preventDefault();
      onCancel();
    };
    dialog.addEventListener("cancel", cancel);
    return () => dialog.removeEventListener("cancel", cancel);
  }, []);
  return html`<dialog ref=${ref} aria-labelledby="confirm-title" class="confirm">
    <h2 id="confirm-title">${title}</h2>
    ${children}
    <div class="actions">
      <button type="button" onClick=${onCancel}>Cancel</button>
      <button type="button" class="primary" onClick=${onConfirm}>${confirmLabel}</button>
    </div>
  </dialog>`;
}
