// Talking to stove: the API key when the server asks for one, readiness, and streamed chat completions.

const KEY = "stove.apiKey";

/** An answer the server refused or broke off, with what the page should tell the person. */
export class ServerError extends Error {
  constructor(message, { status = 0, code = null, retryAfter = null, lostConnection = false } = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    this.lostConnection = lostConnection;
  }
}

/**
 * Calls the API with the key this browser was given, if the server asks for one (stove --api-key). On a 401
 * it asks for the key once, keeps it in this browser only, and retries. A network failure becomes a
 * ServerError with `lostConnection` set.
 */
export async function api(path, options = {}) {
  for (let attempt = 0; ; attempt++) {
    const key = localStorage.getItem(KEY);
    const headers = { ...(options.headers || {}), ...(key ? { Authorization: `Bearer ${key}` } : {}) };
    let response;
    try {
      response = await fetch(path, { ...options, headers });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ServerError("Lost the connection to stove.", { lostConnection: true });
    }
    if (response.status !== 401 || attempt > 0) return response;
    const entered = window.prompt(key ? "That API key was refused. API key:" : "This stove server needs its API key:");
    if (!entered) return response;
    localStorage.setItem(KEY, entered.trim());
  }
}

/** `/health`: {ready, progress, error}, or null when stove cannot be reached. */
export async function health() {
  try {
    const response = await fetch("health", { cache: "no-store" });
    const body = await response.json();
    if (response.ok) return { ready: true };
    if (body.status === "failed") return { ready: false, error: body.error?.message || "the model failed to load" };
    // A --worker holding part of the model was lost: stove is up, but cannot answer until restarted.
    if (body.status === "unusable") return { ready: false, error: body.error?.message || "the model cannot be used" };
    return { ready: false, progress: body.progress || 0 };
  } catch {
    return null;
  }
}

export async function info() {
  const response = await api("stove/info");
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/** Characters per /tokenize request: well under stove's 4 MiB request limit, even with JSON's escapes. */
const TOKENIZE_CHARS = 512 * 1024;

/**
 * The number of tokens `text` is to the model, counted by stove (`/tokenize`). Long texts go in pieces cut at
 * line ends, so the count may differ from one whole by a token or so per piece.
 */
export async function countTokens(text) {
  let total = 0;
  for (let start = 0; start < text.length; ) {
    let end = Math.min(start + TOKENIZE_CHARS, text.length);
    if (end < text.length) {
      const line = text.lastIndexOf("\n", end);
      if (line > start) end = line + 1;
    }
    const response = await api("tokenize", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ content: text.slice(start, end) }),
    });
    if (!response.ok) throw await errorOf(response);
    total += (await response.json()).tokens.length;
    start = end;
  }
  return total;
}

/** L2-normalized vectors of `texts` from stove's embedding model (`/v1/embeddings`), as Float32Arrays. */
export async function embed(texts) {
  const response = await api("v1/embeddings", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ input: texts }),
  });
  if (!response.ok) throw await errorOf(response);
  const body = await response.json();
  return body.data.sort((a, b) => a.index - b.index).map((d) => Float32Array.from(d.embedding));
}

async function errorOf(response) {
  const body = await response.json().catch(() => ({}));
  const retryAfter = Number(response.headers.get("Retry-After")) || null;
  return new ServerError(body.error?.message || `stove answered ${response.status} ${response.statusText}`, {
    status: response.status,
    code: body.error?.code || null,
    retryAfter,
  });
}

/**
 * Streams a chat completion. `onText(delta)` gets each piece of the answer and `onReasoning(delta)` each piece
 * of a reasoning model's thinking; resolves to the last chunk's {usage, timings, finishReason} and the tool
 * calls the answer made ({id, name, arguments}, accumulated as the SDKs do). Throws a ServerError (or the
 * AbortError of `signal`).
 */
export async function streamChat(body, { signal, onText, onReasoning = () => {} }) {
  const response = await api("v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const result = { usage: null, timings: null, finishReason: null, toolCalls: [] };
  let buffer = "";
  let done = false;
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (error) {
      if (error.name === "AbortError" || signal?.aborted) throw error;
      throw new ServerError("The connection to stove broke off in the middle of the answer.", {
        lostConnection: true,
      });
    }
    if (chunk.done) break;
    buffer += chunk.value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!event.startsWith("data: ")) continue;
      if (event === "data: [DONE]") {
        done = true;
        continue;
      }
      const data = JSON.parse(event.slice(6));
      if (data.error) throw new ServerError(data.error.message, { code: data.error.code });
      const choice = data.choices?.[0];
      if (choice?.delta?.reasoning_content) onReasoning(choice.delta.reasoning_content);
      if (choice?.delta?.content) onText(choice.delta.content);
      for (const piece of choice?.delta?.tool_calls || []) {
        const call = (result.toolCalls[piece.index] ??= { id: "", name: "", arguments: "" });
        if (piece.id) call.id = piece.id;
        if (piece.function?.name) call.name += piece.function.name;
        if (piece.function?.arguments) call.arguments += piece.function.arguments;
      }
      if (choice?.finish_reason) result.finishReason = choice.finish_reason;
      if (data.usage) result.usage = data.usage;
      if (data.timings) result.timings = data.timings;
    }
  }
  if (!done) {
    throw new ServerError("The connection to stove broke off in the middle of the answer.", { lostConnection: true });
  }
  return result;
}
