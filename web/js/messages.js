// The open conversation: its messages, the answer being written (streamed, re-rendered at most once a frame),
// failures with a retry, sending, regenerating, editing and stopping.

import * as api from "./api.js";
import * as conv from "./conversation.js";
import { MarkdownView, renderInto } from "./markdown.js";
import { thinkingView, toolCallsView, updateThinking } from "./parts.js";
import { chip, restore } from "./attachments.js";
import { documentContext, placeOf } from "./retrieval.js";
import { $, el, state } from "./page.js";
import { make, toast, copyText, formatNumber } from "./ui.js";
import { touch, newChat } from "./sidebar.js";
import { reconnect } from "./connection.js";

function metaText(meta) {
  if (!meta) return "";
  const parts = [];
  if (meta.completion_tokens !== undefined) parts.push(`${formatNumber(meta.completion_tokens)} tokens`);
  if (meta.tokens_per_second) parts.push(`${formatNumber(meta.tokens_per_second, 1)} tokens/s`);
  // Speculation: guessed tokens the model agreed with came without a decode of their own.
  if (meta.drafted) parts.push(`${formatNumber(meta.accepted)} of ${formatNumber(meta.drafted)} guessed tokens kept`);
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
  if (message.attachments?.length) {
    view.append(
      make("ul", { class: "chips sent", "aria-label": "Attached files" }, ...message.attachments.map((a) => chip(a))),
    );
  }
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
  if (message.role === "user" && !message.content && message.attachments?.length) content.hidden = true;
  view.append(content);
  if (message.tool_calls?.length) view.append(toolCallsView(message.tool_calls));
  if (message.meta?.sources?.length) {
    // Which passages of the attached files the answer was given (files too long to go in whole).
    const places = message.meta.sources.map(placeOf).join(" · ");
    view.append(make("p", { class: "sources", text: `Passages used: ${places}` }));
  }
  view.append(foot);
  return view;
}

export function renderConversation() {
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

export function updateComposer() {
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

/** Shows `message` under the open conversation (a file that could not be attached, say); nothing is lost. */
export function notify(message) {
  showFailure(state.current, { message });
}

function showFailure(conversation, failure) {
  if (conversation !== state.current) return toast(failure.message, null, true);
  state.failure = failure;
  renderConversation();
}

/**
 * Tokens the conversation holds before its last message: the last answer's usage, plus a count of whatever
 * came after it or was never counted (an imported conversation).
 */
async function tokensBefore(conversation) {
  const history = conversation.messages.slice(0, -1);
  const lastCounted = history.findLastIndex((m) => m.meta?.prompt_tokens !== undefined);
  const meta = history[lastCounted]?.meta;
  const uncounted = history.slice(lastCounted + 1).map((m) => `${m.context || ""}${m.content}`);
  if (!meta && conversation.settings.system_prompt) uncounted.push(conversation.settings.system_prompt);
  const text = uncounted.join("\n");
  // Each message also costs its template's few tokens (role markers).
  const framing = 8 * conversation.messages.length;
  return (meta ? meta.prompt_tokens + meta.completion_tokens : 0) + (text ? await api.countTokens(text) : 0) + framing;
}

/**
 * Decides what of the files goes into the prompt for the last question, from the room the context has left:
 * its own attached files (whole, or the passages that best answer it), and new passages of earlier files that
 * were too long to go in whole, so a follow-up question about another part of them finds it. What was decided
 * is kept with the message, so later turns send the same text (and reuse stove's prompt cache).
 */
async function placeDocuments(conversation, progress) {
  const message = conversation.messages.at(-1);
  if (message?.role !== "user" || message.context !== undefined) return;
  // Pictures and sounds go to the projector as they are; only documents are placed.
  const own = (message.attachments || []).filter((a) => !conv.isMedia(a));
  // Files of earlier questions that went in as passages (their names are in the sources): a follow-up may be
  // about another part of them. Passages already sent are not sent again.
  const history = conversation.messages.slice(0, -1).filter((m) => m.role === "user");
  const searchedNames = new Set(history.flatMap((m) => (m.sources || []).map((s) => s.file)));
  const searched = history
    .flatMap((m) => m.attachments || [])
    .filter((a) => !conv.isMedia(a) && searchedNames.has(a.name));
  if (!own.length && !searched.length) return;
  const sent = new Set(history.flatMap((m) => (m.sources || []).map((s) => `${s.file}\u0000${s.part}`)));

  const size = state.info.runtime.context_size;
  const maxTokens = conversation.settings.max_tokens ?? state.defaults.max_tokens;
  // Room kept for the answer: the conversation's max tokens, or an eighth of the context.
  const answer =
    Number.isFinite(maxTokens) && maxTokens > 0 ? Math.min(maxTokens, size / 2) : Math.max(256, Math.floor(size / 8));
  const question = await api.countTokens(message.content || " ");
  let room = size - (await tokensBefore(conversation)) - question - answer;
  // With an embedding model, passages are also ranked by meaning; their vectors are kept with the files.
  const model = state.info.runtime.embedding_model?.name;
  const embedder = model ? { model, embed: api.embed } : null;

  const texts = [];
  const sources = [];
  for (const [files, followUp] of [
    [own, false],
    [searched, true],
  ]) {
    if (!files.length) continue;
    const placed = await documentContext(files, message.content, room, { embedder, progress, sent, followUp });
    if (!placed.text) continue;
    texts.push(placed.text);
    sources.push(...placed.sources);
    room -= placed.tokens;
  }
  // Nothing new for a follow-up whose best passages were all sent before.
  if (!texts.length) return;
  message.context = texts.join("\n\n");
  message.sources = sources;
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
    // Choosing what of the attached files goes in may take a while (embedding a long file's passages): the
    // answer's place already shows, with Stop.
    await placeDocuments(conversation, (file, done, total) => {
      view.querySelector(".meta").textContent = `reading ${file} for the question: ${done} of ${total} passages…`;
    });
    if (g.controller.signal.aborted) throw new DOMException("Stopped before the answer began.", "AbortError");
    g.started = performance.now();
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
    if (result?.timings) {
      meta.tokens_per_second = Math.round(result.timings.predicted_per_second * 10) / 10;
      if (result.timings.draft_n) {
        meta.drafted = result.timings.draft_n;
        meta.accepted = result.timings.draft_n_accepted;
      }
    }
    if (stopped) meta.ending = "stopped";
    else if (failure) meta.ending = "interrupted";
    else if (result.finishReason === "length") meta.ending = "length";
    const asked = conversation.messages.at(-1);
    if (asked?.sources?.length) meta.sources = asked.sources;
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
      if (conversation === state.current && last.attachments?.length) {
        restore(last.attachments);
      }
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

/** Sends a question, with the files attached to it (see attachments.js), and writes the answer. */
export async function send(text, attachments = []) {
  if (!state.current) newChat();
  const conversation = state.current;
  if (!conversation.model && state.info) conversation.model = state.info.model.name;
  const message = { role: "user", content: text };
  if (attachments.length) message.attachments = attachments;
  conversation.messages.push(message);
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
    const { attachments } = conversation.messages[index];
    if ((!text && !attachments?.length) || state.generation) return;
    conversation.messages.splice(index);
    // The files stay with the edited question; what of them goes in is decided again for it.
    const message = { role: "user", content: text };
    if (attachments?.length) message.attachments = attachments;
    conversation.messages.push(message);
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

export function stop() {
  state.generation?.controller.abort();
}
