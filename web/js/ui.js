// Small pieces of the page's interface that every part uses: making elements, the status line, the toast at
// the bottom, copying, numbers as people read them.

import { el } from "./page.js";

export function make(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

export function setStatus(text, isError = false) {
  el.status.textContent = text;
  el.status.classList.toggle("error", isError);
}

let toastTimer = null;
/** A short note at the bottom of the page, optionally with one action (an Undo). */
export function toast(text, action = null, isError = false) {
  clearTimeout(toastTimer);
  el.toast.replaceChildren(make("span", { text }));
  el.toast.setAttribute("role", isError ? "alert" : "status");
  el.toast.classList.toggle("error", isError);
  if (action) {
    el.toast.append(
      make("button", { type: "button", text: action.label, onclick: () => ((el.toast.hidden = true), action.run()) }),
    );
  }
  el.toast.hidden = false;
  toastTimer = setTimeout(() => (el.toast.hidden = true), action ? 8000 : 5000);
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // The clipboard API needs a secure context; a page opened by LAN address is not one.
    const area = make("textarea", { class: "offscreen" });
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
}

export function formatNumber(n, digits = 0) {
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

/** A file size as people read it: 812 bytes, 14 KB, 3.2 MB. */
export function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} bytes`;
  if (bytes < 1024 * 1024) return `${formatNumber(bytes / 1024)} KB`;
  return `${formatNumber(bytes / 1024 / 1024, bytes < 10 * 1024 * 1024 ? 1 : 0)} MB`;
}
