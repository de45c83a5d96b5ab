// The conversations in the sidebar: listing, opening, new, rename, delete with undo; `touch` stores a
// conversation and puts it first.

import * as store from "./store.js";
import * as conv from "./conversation.js";
import { el, state } from "./page.js";
import { make, toast } from "./ui.js";
import { renderConversation } from "./messages.js";
import { renderSettings } from "./settings.js";

export function renderSidebar() {
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
export async function touch(conversation) {
  conversation.updated = Date.now();
  state.conversations = [conversation, ...state.conversations.filter((c) => c !== conversation)];
  renderSidebar();
  try {
    // IndexedDB stores a structured clone taken now, so later changes to the object are not half-saved.
    await store.save(conversation);
  } catch (error) {
    // Attached files make conversations large; a full store keeps this one for the visit only.
    const full = error?.name === "QuotaExceededError";
    const reason = full
      ? "this browser's storage for the page is full. Delete old conversations (those with large files first) to make room; until then this one lasts until the page is closed."
      : error.message;
    toast(`Could not keep this conversation in the browser: ${reason}`, null, true);
  }
}

export function select(conversation) {
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

export function newChat() {
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
