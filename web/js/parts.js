// The parts of an answer besides its text: a reasoning model's thinking, shown as a collapsed "Thinking" block
// above the answer (open while it streams), and the tool calls an answer made, as compact cards.

/** A collapsed "Thinking" block holding `text`; `live` marks one still being written. */
export function thinkingView(text, { live = false } = {}) {
  const block = document.createElement("details");
  block.className = "thinking";
  const summary = document.createElement("summary");
  summary.textContent = live ? "Thinking…" : "Thinking";
  const body = document.createElement("div");
  body.className = "thinking-text";
  body.textContent = text;
  block.append(summary, body);
  block.hidden = !text;
  return block;
}

/** Updates a block made by thinkingView while its text streams in. */
export function updateThinking(block, text, live) {
  block.hidden = !text;
  block.querySelector("summary").textContent = live ? "Thinking…" : "Thinking";
  const body = block.querySelector(".thinking-text");
  if (body.textContent !== text) body.textContent = text;
}

/** One card per tool call: the function's name and its arguments (pretty-printed when they are JSON). */
export function toolCallsView(calls) {
  const list = document.createElement("div");
  list.className = "tool-calls";
  for (const call of calls) {
    const card = document.createElement("div");
    card.className = "tool-call";
    const name = document.createElement("span");
    name.className = "tool-name";
    name.textContent = `${call.name}()`;
    const args = document.createElement("pre");
    args.className = "tool-arguments";
    try {
      args.textContent = JSON.stringify(JSON.parse(call.arguments), null, 2);
    } catch {
      args.textContent = call.arguments;
    }
    card.append(name, args);
    list.append(card);
  }
  return list;
}
