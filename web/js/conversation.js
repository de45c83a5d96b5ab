// A conversation as the page keeps it, and its two export formats (JSON and Markdown), both of which import
// back. Settings hold only what the person changed; the rest comes from the model's defaults at send time.
// A question may carry attached files ({name, size, kind, text, pages, tokens}) and, once sent, the `context`
// they became in the prompt (whole, or chosen passages listed in `sources`); the JSON export keeps all of it,
// the Markdown export names the files only.

export const SETTINGS = ["system_prompt", "temperature", "top_p", "top_k", "min_p", "max_tokens", "seed"];
const ROLES = ["user", "assistant"];
const FORMAT = "stove.conversation";

/** Whether an attachment is a picture or a sound (sent as it is, not placed as text). */
export function isMedia(attachment) {
  return attachment.kind === "image" || attachment.kind === "audio";
}

/** The OpenAI content part that sends a picture (image_url) or sound (input_audio) attachment. */
function partOf(attachment) {
  if (attachment.kind === "audio") {
    const data = attachment.url.slice(attachment.url.indexOf(",") + 1);
    return { type: "input_audio", input_audio: { data, format: attachment.format } };
  }
  return { type: "image_url", image_url: { url: attachment.url } };
}

export function create(model) {
  const now = Date.now();
  // randomUUID exists only in secure contexts; a page opened by LAN address (stove --host) is not one.
  const id = crypto.randomUUID?.() ?? `${now.toString(36)}-${Math.random().toString(36).slice(2)}`;
  return { id, title: "", model, created: now, updated: now, settings: {}, messages: [] };
}

/** The sidebar's name for a conversation: its own title, or the start of its first question. */
export function titleOf(conversation) {
  if (conversation.title) return conversation.title;
  const question = conversation.messages.find((m) => m.role === "user");
  const first = question?.content.trim() || question?.attachments?.[0]?.name;
  if (!first) return "New chat";
  const line = first.split("\n")[0];
  return line.length > 60 ? `${line.slice(0, 57)}…` : line;
}

/**
 * The body of a chat completion request continuing `conversation`: its messages, its system prompt, and the
 * settings it changed. Everything else is left to stove, whose defaults (the bundle's) the page shows.
 */
export function requestBody(conversation) {
  const own = conversation.settings;
  // Attached files go before the question, as the text chosen for them when it was first sent; pictures and
  // sounds follow it as image_url and input_audio parts.
  const messages = conversation.messages.map(({ role, content, context, attachments }) => {
    const text = context ? `${context}\n\n${content}` : content;
    const media = (attachments || []).filter(isMedia);
    if (!media.length) return { role, content: text };
    return { role, content: [{ type: "text", text }, ...media.map(partOf)] };
  });
  if (own.system_prompt) messages.unshift({ role: "system", content: own.system_prompt });
  const body = { messages };
  for (const name of SETTINGS.filter((n) => n !== "system_prompt")) {
    if (typeof own[name] === "number" && Number.isFinite(own[name])) body[name] = own[name];
  }
  return body;
}

export function toJson(conversation) {
  const { model, created, updated, settings, messages } = conversation;
  const out = { format: FORMAT, version: 1, title: titleOf(conversation), model, created, updated, settings };
  out.messages = messages.map(({ role, content, meta, reasoning, tool_calls, attachments, context, sources }) => ({
    role,
    content,
    // The files as they were read; the vectors kept for retrieval are made again where they are needed.
    ...(attachments ? { attachments: attachments.map(attachmentOf) } : {}),
    ...(context !== undefined ? { context, sources } : {}),
    ...(reasoning ? { reasoning } : {}),
    ...(tool_calls ? { tool_calls } : {}),
    ...(meta ? { meta } : {}),
  }));
  return JSON.stringify(out, null, 2);
}

// Markdown sections start with an HTML comment (invisible when rendered) so that a heading inside an answer
// never splits it on import.
const MARKER = /^<!-- stove:(user|assistant) -->$/;
const HEADINGS = { user: "## You", assistant: "## Assistant" };
const ATTACHED = /^\*Attached: .*\*$/;

export function toMarkdown(conversation) {
  const parts = [`# ${titleOf(conversation)}`, ""];
  if (conversation.model) parts.push(`*Model: ${conversation.model}*`, "");
  const system = conversation.settings.system_prompt;
  if (system) parts.push("<!-- stove:system -->", "> **System prompt:** " + system.replace(/\n/g, "\n> "), "");
  for (const message of conversation.messages) {
    parts.push(`<!-- stove:${message.role} -->`, HEADINGS[message.role], "");
    if (message.attachments?.length) parts.push(`*Attached: ${message.attachments.map((a) => a.name).join(", ")}*`, "");
    parts.push(message.content, "");
  }
  return parts.join("\n");
}

/** A tool call as the page keeps it, from its own export or from OpenAI's `{id, function: {name, arguments}}`. */
function toolCall(call) {
  const name = call?.name ?? call?.function?.name ?? "";
  const args = call?.arguments ?? call?.function?.arguments ?? "";
  return {
    id: String(call?.id ?? ""),
    name: String(name),
    arguments: typeof args === "string" ? args : JSON.stringify(args),
  };
}

/** An attached file from an exported conversation, or null when it is not one. */
function attachmentOf(a) {
  if (a?.kind === "image") {
    if (typeof a.name !== "string" || typeof a.url !== "string" || !a.url.startsWith("data:image/")) return null;
    const { name, url } = a;
    return { name, size: Number.isFinite(a.size) ? a.size : 0, kind: "image", url, width: a.width, height: a.height };
  }
  if (a?.kind === "audio") {
    if (typeof a.name !== "string" || typeof a.url !== "string" || !a.url.startsWith("data:")) return null;
    if (!["wav", "mp3", "flac"].includes(a.format)) return null;
    const { name, url, format } = a;
    const seconds = Number.isFinite(a.seconds) ? a.seconds : null;
    return { name, size: Number.isFinite(a.size) ? a.size : 0, kind: "audio", url, format, seconds };
  }
  const pages = Array.isArray(a?.pages) && a.pages.every((p) => typeof p === "string") ? a.pages : null;
  if (typeof a?.name !== "string" || typeof a.text !== "string") return null;
  return {
    name: a.name,
    size: Number.isFinite(a.size) ? a.size : a.text.length,
    kind: typeof a.kind === "string" ? a.kind : "text",
    text: a.text,
    pages,
    tokens: Number.isFinite(a.tokens) ? a.tokens : 0,
  };
}

/** A conversation from the text of an exported file; throws an Error naming what is wrong. */
export function parse(text, fileName, model) {
  const conversation = create(model);
  const trimmed = text.trimStart();
  if (trimmed.startsWith("{") || trimmed.startsWith("[")) {
    let data;
    try {
      data = JSON.parse(text);
    } catch (error) {
      throw new Error(`${fileName} is not valid JSON (${error.message}).`);
    }
    // Also takes a bare OpenAI message list, or a request body with `messages`.
    const messages = Array.isArray(data) ? data : data.messages;
    if (!Array.isArray(messages)) throw new Error(`${fileName} has no "messages" list, so it is not a conversation.`);
    for (const [i, m] of messages.entries()) {
      if (m?.role === "system" && typeof m.content === "string") {
        conversation.settings.system_prompt = m.content;
        continue;
      }
      // An assistant message that only calls tools has no text (OpenAI sends `content: null`).
      const callsOnly = m?.role === "assistant" && m.content == null && Array.isArray(m.tool_calls);
      if (callsOnly) m.content = "";
      if (!ROLES.includes(m?.role) || typeof m.content !== "string") {
        throw new Error(`Message ${i + 1} of ${fileName} needs a role of "user" or "assistant" and text content.`);
      }
      const message = { role: m.role, content: m.content };
      if (m.role === "user" && Array.isArray(m.attachments) && m.attachments.length) {
        message.attachments = m.attachments.map(attachmentOf);
        if (message.attachments.includes(null)) {
          throw new Error(`Message ${i + 1} of ${fileName} has an attached file without a name or text.`);
        }
        if (typeof m.context === "string") {
          message.context = m.context;
          message.sources = Array.isArray(m.sources) ? m.sources : [];
        }
      }
      if (m.meta) message.meta = m.meta;
      if (typeof m.reasoning === "string" && m.reasoning) message.reasoning = m.reasoning;
      if (Array.isArray(m.tool_calls) && m.tool_calls.length) message.tool_calls = m.tool_calls.map(toolCall);
      conversation.messages.push(message);
    }
    if (typeof data.title === "string") conversation.title = data.title;
    if (typeof data.model === "string") conversation.model = data.model;
    if (data.settings && typeof data.settings === "object") {
      for (const name of SETTINGS) if (name in data.settings) conversation.settings[name] = data.settings[name];
    }
  } else {
    let role = null;
    let lines = [];
    const flush = () => {
      if (role === "system") {
        const body = lines
          .join("\n")
          .replace(/^> ?/gm, "")
          .replace(/^\*\*System prompt:\*\* ?/, "");
        conversation.settings.system_prompt = body.trim();
      } else if (role) {
        if (lines[0] === HEADINGS[role]) lines = lines.slice(1);
        // The names of attached files (their text travels only in the JSON export).
        if (role === "user" && ATTACHED.test(lines.find((l) => l.trim()) || "")) {
          lines = lines.slice(lines.findIndex((l) => l.trim()) + 1);
        }
        conversation.messages.push({ role, content: lines.join("\n").trim() });
      }
      lines = [];
    };
    for (const line of text.split(/\r?\n/)) {
      const system = line === "<!-- stove:system -->";
      const marker = line.match(MARKER);
      if (marker || system) {
        flush();
        role = system ? "system" : marker[1];
      } else if (role) {
        lines.push(line);
      } else if (line.startsWith("# ") && !conversation.title) {
        conversation.title = line.slice(2).trim();
      }
    }
    flush();
    if (!conversation.messages.length) {
      throw new Error(`${fileName} holds no stove conversation: its sections start with <!-- stove:user --> lines.`);
    }
  }
  if (!conversation.messages.length) throw new Error(`${fileName} holds no messages.`);
  return conversation;
}
