// Files attached to the message being written: the paperclip button, dropping files on the chat and pasting
// them into the message box. Each file is read in the browser (extract.js), its tokens are counted by stove
// (/tokenize), and it waits as a chip (name, size, tokens; removable) until the message is sent, when it
// becomes part of that message and is kept with the conversation. A file that cannot be used is refused with
// the reason shown in the conversation; the message being written is left as it was.

import * as api from "./api.js";
import { extract, AttachmentError } from "./extract.js";
import { isMedia } from "./conversation.js";
import { isPicture, isSound, readPicture, readSound } from "./media.js";
import { $, el, state } from "./page.js";
import { make, formatNumber, formatBytes } from "./ui.js";
import { notify } from "./messages.js";

/** A conversation keeps at most this many bytes of attached files (their text lives in this browser). */
export const MAX_CONVERSATION_BYTES = 200 * 1024 * 1024;

const list = $("attachments");
const input = $("attach-file");

/** Bytes of files the open conversation already holds, plus those waiting to be sent. */
function bytesHeld() {
  const sent = (state.current?.messages || []).flatMap((m) => m.attachments || []);
  return [...sent, ...state.pending].reduce((sum, a) => sum + a.size, 0);
}

/** Reads and adds `files` to the message being written, one by one, refusing those that cannot be used. */
export async function attach(files) {
  for (const file of files) {
    if (bytesHeld() + file.size > MAX_CONVERSATION_BYTES) {
      notify(
        `${file.name} was not attached: a conversation holds up to ${formatBytes(MAX_CONVERSATION_BYTES)} of files. Start a new chat for more.`,
      );
      continue;
    }
    const reading = { name: file.name, size: file.size, reading: true };
    state.pending.push(reading);
    render();
    let document;
    try {
      document = isPicture(file)
        ? await readPicture(file)
        : isSound(file)
          ? await readSound(file)
          : await extract(file);
    } catch (error) {
      state.pending = state.pending.filter((a) => a !== reading);
      render();
      const reason =
        error instanceof AttachmentError
          ? error.message
          : `${file.name} could not be read (${error?.message || error}).`;
      notify(reason);
      continue;
    }
    // Removed while it was being read: drop it.
    if (!state.pending.includes(reading)) continue;
    const item = { ...document, tokens: null };
    state.pending[state.pending.indexOf(reading)] = item;
    // A picture's or sound's tokens are the projector's to count, when it is sent (they show in the answer's usage).
    item.counting = isMedia(item)
      ? Promise.resolve()
      : api.countTokens(item.text).then(
          (tokens) => (item.tokens = tokens),
          (error) => (item.failed = error.message),
        );
    render();
    item.counting.then(render);
  }
}

/**
 * The attachments of the message about to be sent, with their token counts, and the chips cleared; null (with
 * the reason shown) when one could not be counted.
 */
export async function takePending() {
  const pending = state.pending.filter((a) => !a.reading);
  await Promise.all(pending.map((a) => a.counting));
  const failed = pending.find((a) => a.failed);
  if (failed) {
    notify(`stove could not count the tokens of ${failed.name}: ${failed.failed} Remove it or try again.`);
    return null;
  }
  state.pending = state.pending.filter((a) => a.reading);
  render();
  return pending.map(kept);
}

/** An attachment without what only the message box needs (its counting, a failure, reading). */
const kept = ({ counting: _counting, failed: _failed, reading: _reading, ...attachment }) => attachment;

/** Puts attachments back into the message box (a message that could not be sent keeps its files). */
export function restore(attachments) {
  state.pending.push(...attachments.map((a) => ({ ...a, counting: Promise.resolve() })));
  render();
}

export function hasPending() {
  return state.pending.length > 0;
}

/** What a chip says about a file: its size and tokens. */
export function factsOf(attachment) {
  const parts = [formatBytes(attachment.size)];
  if (attachment.pages) parts.push(`${attachment.pages.length} page${attachment.pages.length === 1 ? "" : "s"}`);
  if (attachment.kind === "image") return [...parts, `${attachment.width}×${attachment.height}`].join(" · ");
  if (attachment.kind === "audio") return [...parts, duration(attachment.seconds)].join(" · ");
  if (attachment.reading) parts.push("reading…");
  else if (attachment.failed) parts.push("not counted");
  else if (attachment.tokens == null) parts.push("counting…");
  else parts.push(`${formatNumber(attachment.tokens)} tokens`);
  return parts.join(" · ");
}

/** A sound's length as m:ss ("length unknown" when the browser could not tell). */
function duration(seconds) {
  if (!Number.isFinite(seconds)) return "length unknown";
  const whole = Math.round(seconds);
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
}

/** A chip for one file; `onRemove` adds a remove button. */
export function chip(attachment, onRemove = null) {
  const item = make(
    "li",
    { class: "chip", title: attachment.name },
    make("span", { class: "chip-name", text: attachment.name }),
    make("span", { class: "chip-facts", text: factsOf(attachment) }),
  );
  // A picture shows itself and a sound plays (data: URLs, which the page's policy allows for images and media).
  if (attachment.kind === "image") item.prepend(make("img", { class: "chip-thumb", src: attachment.url, alt: "" }));
  if (attachment.kind === "audio") {
    item.append(make("audio", { class: "chip-sound", src: attachment.url, controls: "", preload: "metadata" }));
  }
  if (onRemove) {
    item.append(
      make("button", {
        type: "button",
        class: "remove",
        text: "✕",
        "aria-label": `Remove ${attachment.name}`,
        onclick: onRemove,
      }),
    );
  }
  return item;
}

function render() {
  list.replaceChildren(
    ...state.pending.map((a) =>
      chip(a, () => {
        state.pending = state.pending.filter((p) => p !== a);
        render();
        el.prompt.focus();
      }),
    ),
  );
  list.hidden = state.pending.length === 0;
}

// ---- Ways in: the button, dropping, pasting --------------------------------------------------------------

$("attach").addEventListener("click", () => input.click());
input.addEventListener("change", () => {
  const files = [...input.files];
  input.value = "";
  attach(files);
});

const chat = $("chat");
const carriesFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
chat.addEventListener("dragover", (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault();
  event.dataTransfer.dropEffect = "copy";
  chat.classList.add("dropping");
});
chat.addEventListener("dragleave", (event) => {
  if (!chat.contains(event.relatedTarget)) chat.classList.remove("dropping");
});
chat.addEventListener("drop", (event) => {
  chat.classList.remove("dropping");
  if (!carriesFiles(event)) return;
  event.preventDefault();
  attach([...event.dataTransfer.files]);
});

// Pasting a copied file attaches it; pasted text stays text.
el.prompt.addEventListener("paste", (event) => {
  const files = [...(event.clipboardData?.files || [])];
  if (!files.length) return;
  event.preventDefault();
  attach(files);
});
