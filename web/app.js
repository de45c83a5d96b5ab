// The chat page: waits for the model, streams answers from /v1/chat/completions, keeps the conversation
// while the page is open. No libraries and no requests anywhere but this server.
"use strict";

const $ = (id) => document.getElementById(id);
const messagesEl = $("messages"), promptEl = $("prompt"), sendEl = $("send"), stopEl = $("stop"), statusEl = $("status");
const history = [];
let controller = null;

function setStatus(text, isError = false) {
  statusEl.textContent = text;
  statusEl.classList.toggle("error", isError);
}

function addMessage(role, text) {
  $("empty")?.remove();
  const el = document.createElement("div");
  el.className = `message ${role}`;
  el.textContent = text;
  messagesEl.append(el);
  messagesEl.scrollTop = messagesEl.scrollHeight;
  return el;
}

// Calls the API with the key this browser was given, if the server asks for one (stove --api-key). On a
// 401 it asks for the key once, keeps it in this browser only, and retries.
async function api(path, options = {}) {
  for (let attempt = 0; ; attempt++) {
    const key = localStorage.getItem("stove.apiKey");
    const headers = { ...(options.headers || {}), ...(key ? { Authorization: `Bearer ${key}` } : {}) };
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401 || attempt > 0) return response;
    const entered = window.prompt(key ? "That API key was refused. API key:" : "This stove server needs its API key:");
    if (!entered) return response;
    localStorage.setItem("stove.apiKey", entered.trim());
  }
}

// Polls /health until the model is ready, showing load progress; retries while the server is unreachable.
async function waitForModel() {
  for (;;) {
    try {
      const response = await fetch("health", { cache: "no-store" });
      const body = await response.json();
      if (response.ok) break;
      if (body.status === "failed") { setStatus(body.error.message, true); return; }
      setStatus(`loading ${Math.round((body.progress || 0) * 100)}%`);
    } catch {
      setStatus("cannot reach stove; retrying…", true);
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
  try {
    const info = await (await api("stove/info")).json();
    $("model-name").textContent = info.model.name;
    document.title = `${info.model.name} · stove`;
    const r = info.runtime;
    setStatus(`ready · ${info.model.quantization} · context ${r.context_size} · ${r.threads} threads · ${r.parallel} at once`);
  } catch {
    setStatus("ready");
  }
  promptEl.disabled = sendEl.disabled = false;
  promptEl.focus();
}

async function send(text) {
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const answerEl = addMessage("assistant streaming", "");
  let answer = "";
  controller = new AbortController();
  sendEl.hidden = true; stopEl.hidden = false; promptEl.disabled = true;
  const started = performance.now();
  let firstTokenAt = null;
  let failed = false;
  try {
    const response = await api("v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ messages: history, stream: true }),
      signal: controller.signal,
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error?.message || `the server answered ${response.status}`);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
        const chunk = JSON.parse(event.slice(6));
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = chunk.choices?.[0]?.delta?.content;
        if (delta) {
          firstTokenAt ??= performance.now();
          answer += delta;
          answerEl.textContent = answer;
          messagesEl.scrollTop = messagesEl.scrollHeight;
        }
        if (chunk.timings) showSpeed(answerEl, chunk.timings, firstTokenAt - started);
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") {
      failed = true;
      addMessage("error", error.message);
    }
  } finally {
    answerEl.classList.remove("streaming");
    if (controller.signal.aborted) answerEl.append(meta("stopped"));
    if (failed) {
      // The question stays on screen but leaves the conversation, so the next one is not refused again.
      history.pop();
      if (!answer) answerEl.remove();
    } else {
      history.push({ role: "assistant", content: answer });
    }
    controller = null;
    sendEl.hidden = false; stopEl.hidden = true; promptEl.disabled = false;
    promptEl.focus();
  }
}

function meta(text) {
  const el = document.createElement("span");
  el.className = "meta";
  el.textContent = text;
  return el;
}

function showSpeed(answerEl, timings, firstTokenMs) {
  const speed = timings.predicted_per_second.toFixed(1);
  answerEl.append(meta(`${timings.predicted_n} tokens · ${speed} tokens/s · first token ${Math.round(firstTokenMs || 0)} ms`));
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = promptEl.value.trim();
  if (!text || controller) return;
  promptEl.value = "";
  send(text);
});
promptEl.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && controller) controller.abort();
});
stopEl.addEventListener("click", () => controller?.abort());
$("clear").addEventListener("click", () => {
  controller?.abort();
  history.length = 0;
  messagesEl.replaceChildren();
});

waitForModel();
