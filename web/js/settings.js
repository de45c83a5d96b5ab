// The side panel's settings for the open conversation (only what the person changed is stored; empty fields
// show the bundle's defaults), and export and import of conversations.

import * as conv from "./conversation.js";
import { $, el, state } from "./page.js";
import { make, toast } from "./ui.js";
import { touch, select } from "./sidebar.js";

export function renderSettings() {
  if (!state.current) return;
  const own = state.current.settings;
  for (const name of conv.SETTINGS) {
    const input = el.settings.elements[name];
    input.value = own[name] ?? "";
    const fallback = state.defaults[name];
    if (name === "system_prompt") input.placeholder = fallback || "none (the model's own)";
    else if (name === "max_tokens") input.placeholder = "no limit";
    else if (name === "seed") input.placeholder = fallback ?? "random";
    else if (fallback !== undefined) input.placeholder = String(fallback);
  }
}

el.settings.addEventListener("input", (event) => {
  const { name, value, type } = event.target;
  if (!conv.SETTINGS.includes(name) || !state.current) return;
  if (value === "") delete state.current.settings[name];
  else state.current.settings[name] = type === "number" ? Number(value) : value;
  touch(state.current);
});
el.settings.addEventListener("submit", (event) => event.preventDefault());
$("reset-settings").addEventListener("click", () => {
  state.current.settings = {};
  renderSettings();
  touch(state.current);
});

// ---- Export and import ---------------------------------------------------------------------------------

function download(text, extension, type) {
  const name =
    conv
      .titleOf(state.current)
      .replace(/[^\p{L}\p{N}]+/gu, "-")
      .replace(/^-|-$/g, "")
      .slice(0, 60) || "conversation";
  const link = make("a", { href: URL.createObjectURL(new Blob([text], { type })), download: `${name}.${extension}` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

$("export-markdown").addEventListener("click", () => download(conv.toMarkdown(state.current), "md", "text/markdown"));
$("export-json").addEventListener("click", () => download(conv.toJson(state.current), "json", "application/json"));

$("import-file").addEventListener("change", async (event) => {
  for (const file of event.target.files) {
    try {
      const conversation = conv.parse(await file.text(), file.name, state.info?.model.name || "");
      state.conversations.unshift(conversation);
      await touch(conversation);
      select(conversation);
      toast(`Imported “${conv.titleOf(conversation)}”.`);
    } catch (error) {
      toast(`Could not import: ${error.message}`, null, true);
    }
  }
  event.target.value = "";
});
