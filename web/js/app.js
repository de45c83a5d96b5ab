// The chat page: conversations in the sidebar, the open one in the middle, the model and this conversation's
// settings in the side panel. Answers stream from stove's OpenAI-compatible API; nothing else is contacted.

import * as api from "./api.js";
import * as store from "./store.js";
import * as conv from "./conversation.js";
import { MarkdownView, renderInto } from "./markdown.js";
import { thinkingView, toolCallsView, updateThinking } from "./parts.js";

const $ = (id) => document.getElementById(id);
const el = {
  app: $("app"),
  conversations: $("conversations"),
  noConversations: $("no-conversations"),
  title: $("title"),
  status: $("status"),
  meter: $("context-meter"),
  banner: $("banner"),
  messages: $("messages"),
  welcome: $("welcome"),
  composer: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
  panel: $("panel"),
  settings: $("settings"),
  toast: $("toast"),
};

const state = {
  /** /stove/info once the model is ready. */
  info: null,
  /** What a conversation's empty settings fall back to. */
  defaults: {},
  ready: false,
  conversations: [],
  /** The conversation on screen. */
  current: null,
  /**
   * The answer being written: {conversation, controller, text, reasoning, started, firstTokenAt, pieces, view,
   * markdown}.
   */
  generation: null,
  /** A failure shown under the current conversation: {message, retry}. */
  failure: null,
  reconnecting: false,
};

// ---- Small helpers -------------------------------------------------------------------------------------

function make(tag, attributes = {}, ...children) {
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

function setStatus(text, isError = false) {
  el.status.textContent = text;
  el.status.classList.toggle("error", isError);
}

let toastTimer = null;
/** A short note at the bottom of the page, optionally with one action (an Undo). */
function toast(text, action = null, isError = false) {
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

async function copyText(text) {
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

function formatNumber(n, digits = 0) {
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

// ---- Theme ---------------------------------------------------------------------------------------------

function applyTheme(theme) {
  if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
  $("theme").value = theme;
}

$("theme").addEventListener("change", (event) => {
  localStorage.setItem("stove.theme", event.target.value);
  applyTheme(event.target.value);
});

// ---- Connection to stove -------------------------------------------------------------------------------

/** Waits for the model, showing load progress, then loads what the page shows about it. */
async function connect() {
  for (;;) {
    const health = await api.health();
    if (health?.ready) break;
    if (health?.error) {
      setStatus(health.error, true);
      return;
    }
    setStatus(health ? `loading ${Math.round(health.progress * 100)}%` : "cannot reach stove; retrying…", !health);
    await new Promise((resolve) => setTimeout(resolve, health ? 300 : 1000));
  }
  try {
    state.info = await api.info();
  } catch (error) {
    setStatus(error.message, true);
    return;
  }
  state.defaults = state.info.defaults || {};
  state.ready = true;
  showModel();
  renderSettings();
  updateComposer();
  el.prompt.focus();
}

/** After a lost connection: says so, retries until stove answers again, then carries on. */
async function reconnect() {
  if (state.reconnecting) return;
  state.reconnecting = true;
  state.ready = false;
  updateComposer();
  el.banner.textContent = "Lost the connection to stove. Trying again…";
  el.banner.hidden = false;
  setStatus("disconnected", true);
  for (let wait = 500; ; wait = Math.min(wait * 2, 4000)) {
    await new Promise((resolve) => setTimeout(resolve, wait));
    const health = await api.health();
    if (health) break;
  }
  el.banner.hidden = true;
  state.reconnecting = false;
  await connect();
  toast("Connected to stove again.");
}

// Notices a stopped stove while the page sits idle, so the person learns before typing.
setInterval(async () => {
  if (state.ready && !state.generation && !state.reconnecting && !(await api.health())) reconnect();
}, 5000);

function showModel() {
  const { model, runtime } = state.info;
  const name = model.name;
  document.title = `${name} · stove`;
  $("welcome-model").textContent = name;
  const r = runtime;
  const gpu = r.gpus.length
    ? `${r.gpus.map((g) => g.description || g.name).join(", ")} · ${r.gpu_layers} of ${r.layers} layers`
    : `none (all ${r.layers} layers on the CPU)`;
  const facts = [
    ["Name", name],
    ["Architecture", model.architecture],
    ["Parameters", `${formatNumber(model.parameters / 1e6, 1)} M`],
    ["Quantization", model.quantization],
    ["Size", `${formatNumber(model.size / 2 ** 20, 1)} MiB`],
    [
      "Context",
      `${formatNumber(r.context_size)} tokens per conversation${model.trained_context ? ` (trained ${formatNumber(model.trained_context)})` : ""}`,
    ],
    ["At once", `${r.parallel} conversation${r.parallel === 1 ? "" : "s"}`],
    [
      "CPU",
      `${r.cpu_variant ? `${r.cpu_variant} · ` : ""}${r.threads} thread${r.threads === 1 ? "" : "s"} · ${
        r.cpu_features.join(" ") || "baseline"
      }`,
    ],
    ["GPU", gpu],
    ["Loaded in", `${formatNumber(r.load_seconds, 1)} s${r.mmap ? ", mapped from the file" : ""}`],
    ["Sandbox", state.info.sandbox ? state.info.sandbox.summary : "unknown"],
    ["stove", `${state.info.stove_version} (${state.info.stove_commit})`],
  ];
  $("model-facts").replaceChildren(
    ...facts.flatMap(([term, value]) => [make("dt", { text: term }), make("dd", { text: value })]),
  );
  setStatus(`ready · ${model.quantization} · ${r.parallel} at once`);
}

// ---- Conversations in the sidebar ----------------------------------------------------------------------

function renderSidebar() {
  // A new chat joins the list with its first message.
  const listed = state.conversations.filter((c) => c.messages.length);
  el.conversations.replaceChildren(
    ...listed.map((c) => {
      const title = conv.titleOf(c);
      const current = c === state.current;
      const item = make("li", { class: current ? "current" : "" });
      const open = make("button", { type: "button", class: "open", text: title, title, onclick: () => select(c) });
      if (current) open.setAttribute("aria-current", "page");
      item.append(
        open,
        make("button", {
          type: "button",
          class: "icon small",
          "aria-label": `Rename ${title}`,
          text: "✎",
          onclick: () => rename(c, item),
        }),
        make("button", {
          type: "button",
          class: "icon small",
          "aria-label": `Delete ${title}`,
          text: "✕",
          onclick: () => remove(c),
        }),
      );
      return item;
    }),
  );
  el.noConversations.hidden = listed.length > 0;
}

/** Puts `conversation` first in the sidebar and stores it. */
async function touch(conversation) {
  conversation.updated = Date.now();
  state.conversations = [conversation, ...state.conversations.filter((c) => c !== conversation)];
  renderSidebar();
  try {
    // IndexedDB stores a structured clone taken now, so later changes to the object are not half-saved.
    await store.save(conversation);
  } catch (error) {
    toast(`Could not keep this conversation in the browser: ${error.message}`, null, true);
  }
}

function select(conversation) {
  // An untouched new chat left behind is dropped (and forgotten, if its settings had been stored).
  for (const left of state.conversations.filter((c) => c !== conversation && !c.messages.length)) {
    state.conversations = state.conversations.filter((c) => c !== left);
    store.remove(left.id);
  }
  state.current = conversation;
  state.failure = null;
  document.body.classList.remove("sidebar-open");
  renderSidebar();
  renderConversation();
  renderSettings();
  el.prompt.focus();
}

function newChat() {
  // An untouched new chat is reused rather than piling up empty ones.
  const empty = state.conversations.find((c) => !c.messages.length);
  if (empty) return select(empty);
  const conversation = conv.create(state.info?.model.name || "");
  state.conversations.unshift(conversation);
  select(conversation);
}

function rename(conversation, item) {
  const input = make("input", { type: "text", class: "rename", "aria-label": "New name" });
  input.value = conv.titleOf(conversation);
  let done = false;
  const finish = async (keep) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (keep && title && title !== conv.titleOf(conversation)) {
      conversation.title = title;
      await touch(conversation);
      if (conversation === state.current) el.title.textContent = title;
    } else {
      renderSidebar();
    }
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") finish(true);
    if (event.key === "Escape") {
      event.stopPropagation();
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
  item.replaceChildren(input);
  input.focus();
  input.select();
}

async function remove(conversation) {
  if (state.generation?.conversation === conversation) state.generation.controller.abort();
  state.conversations = state.conversations.filter((c) => c !== conversation);
  await store.remove(conversation.id);
  if (conversation === state.current) {
    if (state.conversations.length) select(state.conversations[0]);
    else newChat();
  } else {
    renderSidebar();
  }
  toast(`Deleted “${conv.titleOf(conversation)}”.`, {
    label: "Undo",
    run: async () => {
      state.conversations.push(conversation);
      await touch(conversation);
      select(conversation);
    },
  });
}

// ---- Messages ------------------------------------------------------------------------------------------

function metaText(meta) {
  if (!meta) return "";
  const parts = [];
  if (meta.completion_tokens !== undefined) parts.push(`${formatNumber(meta.completion_tokens)} tokens`);
  if (meta.tokens_per_second) parts.push(`${formatNumber(meta.tokens_per_second, 1)} tokens/s`);
  if (meta.first_token_ms !== undefined && meta.first_token_ms !== null) {
    parts.push(`first token ${formatNumber(meta.first_token_ms)} ms`);
  }
  const endings = { stopped: "stopped", length: "cut off: max tokens or context reached", interrupted: "interrupted" };
  if (endings[meta.ending]) parts.push(endings[meta.ending]);
  return parts.join(" · ");
}

function messageView(message, index) {
  const view = make("article", { class: `message ${message.role}`, "data-index": String(index) });
  const content = make("div", { class: message.role === "assistant" ? "content markdown" : "content" });
  if (message.role === "assistant") renderInto(content, message.content);
  else content.textContent = message.content;
  if (message.reasoning) view.append(thinkingView(message.reasoning));
  const label = message.role === "user" ? "You" : "Assistant";
  view.setAttribute("aria-label", label);
  const actions = make("div", { class: "actions" });
  actions.append(
    make("button", {
      type: "button",
      class: "copy-message",
      text: "Copy",
      "aria-label": `Copy this message`,
      onclick: () => copyText(message.content).then(() => toast("Copied.")),
    }),
  );
  if (message.role === "user") {
    actions.append(
      make("button", {
        type: "button",
        class: "edit",
        text: "Edit",
        "aria-label": "Edit this message and answer again",
        onclick: () => edit(index),
      }),
    );
  } else if (index === state.current.messages.length - 1) {
    actions.append(
      make("button", {
        type: "button",
        class: "regenerate",
        text: "Regenerate",
        "aria-label": "Write this answer again",
        onclick: regenerate,
      }),
    );
  }
  const foot = make(
    "div",
    { class: "message-foot" },
    make("span", { class: "meta", text: metaText(message.meta) }),
    actions,
  );
  view.append(content);
  if (message.tool_calls?.length) view.append(toolCallsView(message.tool_calls));
  view.append(foot);
  return view;
}

function renderConversation() {
  const c = state.current;
  el.title.textContent = conv.titleOf(c);
  const views = c.messages.map(messageView);
  el.welcome.hidden = views.length > 0 || state.generation?.conversation === c;
  el.messages.replaceChildren(el.welcome, ...views);
  if (state.generation?.conversation === c) {
    el.messages.append(state.generation.view);
    scheduleRender();
  }
  if (state.failure) el.messages.append(failureView(state.failure));
  el.messages.scrollTop = el.messages.scrollHeight;
  updateContext();
  updateComposer();
}

/** Context used by the conversation so far, from its last answer's usage. */
function updateContext() {
  const last = [...state.current.messages].reverse().find((m) => m.meta?.prompt_tokens !== undefined);
  const size = state.info?.runtime.context_size;
  const used = last ? last.meta.prompt_tokens + last.meta.completion_tokens : 0;
  el.meter.value = size ? Math.min(used / size, 1) : 0;
  const text =
    size && last ? `${formatNumber(used)} of ${formatNumber(size)} tokens (${Math.round((used / size) * 100)}%)` : "–";
  $("context-used").textContent = text;
  el.meter.title = `Context used: ${text}`;
  $("last-speed").textContent = last?.meta.tokens_per_second
    ? `${formatNumber(last.meta.tokens_per_second, 1)} tokens/s`
    : "–";
  $("last-first-token").textContent =
    last?.meta.first_token_ms != null ? `${formatNumber(last.meta.first_token_ms)} ms` : "–";
}

function updateComposer() {
  const busy = !!state.generation;
  // Typing goes on while stove is away; sending waits for it.
  el.prompt.disabled = !state.info;
  el.send.disabled = !state.ready || busy;
  el.send.hidden = busy;
  el.stop.hidden = !busy;
}

const nearBottom = () => el.messages.scrollHeight - el.messages.scrollTop - el.messages.clientHeight < 80;

// Streaming re-renders the answer at most once a frame, however fast tokens come.
let renderPending = false;
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => {
    renderPending = false;
    const g = state.generation;
    if (!g || g.conversation !== state.current) return;
    const follow = nearBottom();
    updateThinking(g.view.querySelector(".thinking"), g.reasoning, !g.text);
    g.markdown.update(g.text);
    const seconds = g.firstTokenAt ? (performance.now() - g.firstTokenAt) / 1000 : 0;
    const live = seconds > 0.2 ? ` · ${formatNumber(g.pieces / seconds, 1)} tokens/s` : "";
    const first = g.firstTokenAt
      ? `first token ${formatNumber(g.firstTokenAt - g.started)} ms${live}`
      : "waiting for the first token…";
    g.view.querySelector(".meta").textContent = first;
    if (follow) el.messages.scrollTop = el.messages.scrollHeight;
  });
}

function failureView(failure) {
  const view = make("div", { class: "message error", role: "alert" }, make("p", { text: failure.message }));
  if (failure.retry)
    view.append(make("button", { type: "button", class: "retry", text: "Retry", onclick: failure.retry }));
  return view;
}

function showFailure(conversation, failure) {
  if (conversation !== state.current) return toast(failure.message, null, true);
  state.failure = failure;
  renderConversation();
}

/** Writes the next assistant message of `conversation`, streaming it onto the page. */
async function generate(conversation) {
  state.failure = null;
  const view = make(
    "article",
    { class: "message assistant streaming", "aria-label": "Assistant", "aria-busy": "true" },
    thinkingView("", { live: true }),
    make("div", { class: "content markdown" }),
    make("div", { class: "message-foot" }, make("span", { class: "meta", text: "waiting for the first token…" })),
  );
  const g = {
    conversation,
    controller: new AbortController(),
    text: "",
    reasoning: "",
    started: performance.now(),
    firstTokenAt: null,
    pieces: 0,
    view,
    markdown: new MarkdownView(view.querySelector(".content")),
  };
  state.generation = g;
  if (conversation === state.current) renderConversation();
  let result = null;
  let failure = null;
  try {
    result = await api.streamChat(conv.requestBody(conversation), {
      signal: g.controller.signal,
      onText: (text) => {
        g.firstTokenAt ??= performance.now();
        g.text += text;
        g.pieces++;
        scheduleRender();
      },
      onReasoning: (text) => {
        g.firstTokenAt ??= performance.now();
        g.reasoning += text;
        g.pieces++;
        scheduleRender();
      },
    });
  } catch (error) {
    if (error.name !== "AbortError") failure = error;
  }
  state.generation = null;
  const stopped = g.controller.signal.aborted;
  // Deleted while it was being answered: nothing to keep.
  if (!state.conversations.includes(conversation)) return updateComposer();
  if (g.text || g.reasoning || (result && !failure)) {
    const meta = { first_token_ms: g.firstTokenAt ? Math.round(g.firstTokenAt - g.started) : null };
    if (result?.usage) {
      meta.prompt_tokens = result.usage.prompt_tokens;
      meta.completion_tokens = result.usage.completion_tokens;
    } else {
      meta.completion_tokens = g.pieces;
    }
    if (result?.timings) meta.tokens_per_second = Math.round(result.timings.predicted_per_second * 10) / 10;
    if (stopped) meta.ending = "stopped";
    else if (failure) meta.ending = "interrupted";
    else if (result.finishReason === "length") meta.ending = "length";
    const message = { role: "assistant", content: g.text, meta };
    if (g.reasoning) message.reasoning = g.reasoning;
    if (result?.toolCalls.length) message.tool_calls = result.toolCalls;
    conversation.messages.push(message);
  }
  if (conversation.messages.length) await touch(conversation);
  if (failure) handleFailure(conversation, failure);
  else if (conversation === state.current) renderConversation();
  updateComposer();
}

/** A server's message as a sentence that another can follow. */
const sentence = (text) => (/[.!?]$/.test(text) ? text : `${text}.`);

function handleFailure(conversation, error) {
  const retry = () => regenerate();
  if (error.code === "context_length_exceeded") {
    // The last question cannot be answered at all: give it back to be shortened or asked in a new chat.
    const last = conversation.messages.at(-1);
    if (last?.role === "user") {
      conversation.messages.pop();
      touch(conversation);
      if (conversation === state.current && !el.prompt.value) el.prompt.value = last.content;
    }
    return showFailure(conversation, {
      message: `Too long for the model's context: ${sentence(error.message)} Your message is back in the box below: shorten it, edit an earlier message, or start a new chat.`,
    });
  }
  if (error.lostConnection) {
    reconnect();
    return showFailure(conversation, {
      message: `${error.message} The page will reconnect by itself; then retry.`,
      retry,
    });
  }
  if (error.status === 503) {
    const wait = error.retryAfter ? ` Try again in ${error.retryAfter} s.` : "";
    return showFailure(conversation, { message: `stove is busy: ${sentence(error.message)}${wait}`, retry });
  }
  showFailure(conversation, { message: sentence(error.message), retry });
}

async function send(text) {
  if (!state.current) newChat();
  const conversation = state.current;
  if (!conversation.model && state.info) conversation.model = state.info.model.name;
  conversation.messages.push({ role: "user", content: text });
  // Saved while the answer starts: the Stop button appears with the keypress that sent the question.
  touch(conversation);
  await generate(conversation);
}

/** Writes the last answer again (or answers the last question, when the answer failed). */
async function regenerate() {
  if (state.generation || !state.ready) return;
  const conversation = state.current;
  if (conversation.messages.at(-1)?.role === "assistant") conversation.messages.pop();
  if (!conversation.messages.length) return;
  await generate(conversation);
}

/** Edits an earlier question in place; saving drops everything after it and answers again. */
function edit(index) {
  if (state.generation) return;
  const conversation = state.current;
  const view = el.messages.querySelector(`.message[data-index="${index}"]`);
  const area = make("textarea", { class: "edit-box", "aria-label": "Edit message", rows: "3" });
  area.value = conversation.messages[index].content;
  const save = async () => {
    const text = area.value.trim();
    if (!text || state.generation) return;
    conversation.messages.splice(index);
    conversation.messages.push({ role: "user", content: text });
    touch(conversation);
    await generate(conversation);
  };
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      save();
    } else if (event.key === "Escape") {
      event.stopPropagation();
      renderConversation();
    }
  });
  const buttons = make(
    "div",
    { class: "actions" },
    make("button", { type: "button", class: "primary save-edit", text: "Save and send", onclick: save }),
    make("button", { type: "button", text: "Cancel", onclick: renderConversation }),
  );
  view.replaceChildren(area, buttons);
  view.classList.add("editing");
  area.focus();
}

function stop() {
  state.generation?.controller.abort();
}

// ---- Settings ------------------------------------------------------------------------------------------

function renderSettings() {
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

// ---- Layout and keyboard -------------------------------------------------------------------------------

function togglePanel(open = el.panel.hidden) {
  el.panel.hidden = !open;
  $("toggle-panel").setAttribute("aria-expanded", String(open));
}

function toggleSidebar(open) {
  document.body.classList.toggle("sidebar-open", open);
  $("open-sidebar").setAttribute("aria-expanded", String(open));
}

$("toggle-panel").addEventListener("click", () => togglePanel());
$("close-panel").addEventListener("click", () => togglePanel(false));
$("open-sidebar").addEventListener("click", () => toggleSidebar(true));
$("close-sidebar").addEventListener("click", () => toggleSidebar(false));
$("new-chat").addEventListener("click", newChat);
el.stop.addEventListener("click", stop);

el.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = el.prompt.value.trim();
  if (!text || state.generation) return;
  if (!state.ready) return toast("stove is not answering yet; your message stays here until it is back.");
  el.prompt.value = "";
  autosize();
  send(text);
});

const PROMPT_MAX_HEIGHT = 240;
function autosize() {
  el.prompt.style.height = "auto";
  el.prompt.style.height = `${Math.min(el.prompt.scrollHeight, PROMPT_MAX_HEIGHT)}px`;
  el.prompt.style.overflowY = el.prompt.scrollHeight > PROMPT_MAX_HEIGHT ? "auto" : "hidden";
}
el.prompt.addEventListener("input", autosize);
el.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    el.composer.requestSubmit();
  }
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    if (state.generation) stop();
    else if (!el.panel.hidden) togglePanel(false);
    else toggleSidebar(false);
  } else if ((event.ctrlKey || event.metaKey) && event.shiftKey && event.key.toLowerCase() === "o") {
    event.preventDefault();
    newChat();
  }
});

// Copy buttons of code blocks, which arrive inside rendered Markdown.
el.messages.addEventListener("click", (event) => {
  const button = event.target.closest(".copy-code");
  if (!button) return;
  copyText(button.closest(".code-block").querySelector("code").textContent).then(() => {
    button.textContent = "Copied";
    setTimeout(() => (button.textContent = "Copy"), 1500);
  });
});

// ---- Start ---------------------------------------------------------------------------------------------

async function start() {
  applyTheme(localStorage.getItem("stove.theme") || "system");
  // The keyboard hint does not fit a phone's message box (and phones have no Shift+Enter).
  if (matchMedia("(max-width: 800px)").matches) el.prompt.placeholder = "Message";
  if (!(await store.open())) {
    toast("This browser keeps no data for this page: conversations last until it is closed.", null, true);
  }
  state.conversations = await store.all();
  if (state.conversations.length) select(state.conversations[0]);
  else newChat();
  await connect();
}

start();
