// What every part of the page shares: the elements it works with, and its state (the conversations, the
// open one, the answer being written). Imports nothing, so every other module can import it first.

export const $ = (id) => document.getElementById(id);
export const el = {
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

export const state = {
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
  /** Files attached to the message being written (attachments.js), kept when switching conversations. */
  pending: [],
  /** A failure shown under the current conversation: {message, retry}. */
  failure: null,
  reconnecting: false,
  /** A message waiting for its attached files to be counted before it goes. */
  sending: false,
};
