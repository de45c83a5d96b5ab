// The chat page: conversations in the sidebar (sidebar.js), the open one in the middle (messages.js), the model
// and this conversation's settings in the side panel (connection.js, settings.js). Answers stream from stove's
// OpenAI-compatible API (api.js); nothing else is contacted. This module wires the layout and the keyboard,
// applies the theme and starts the page.

import * as store from "./store.js";
import { $, el, state } from "./page.js";
import { toast, copyText } from "./ui.js";
import { connect } from "./connection.js";
import { select, newChat } from "./sidebar.js";
import { send, stop } from "./messages.js";
import { hasPending, takePending } from "./attachments.js";

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

el.composer.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = el.prompt.value.trim();
  if ((!text && !hasPending()) || state.generation || state.sending) return;
  if (!state.ready) return toast("stove is not answering yet; your message stays here until it is back.");
  // Attached files may still be counted; the message waits for them (and stays put if one fails).
  state.sending = true;
  const attachments = await takePending().finally(() => (state.sending = false));
  // What was typed while the files were counted belongs to the message too.
  const question = el.prompt.value.trim();
  // Files still being read stay in the box; with nothing else, there is nothing to send yet.
  if (!attachments || (!question && !attachments.length)) return;
  el.prompt.value = "";
  autosize();
  send(question, attachments);
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
