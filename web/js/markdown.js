// Turns a model's Markdown into safe HTML: marked parses it, highlight.js colours code, DOMPurify removes
// anything that could run script. A model's text is untrusted (a prompt can make it write anything), so raw
// HTML is shown as text and images become links: nothing it writes can load from another host.

/* global marked, hljs, DOMPurify */

const escapes = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => escapes[c]);

// While an answer streams, the page re-renders it every frame; finished code blocks come from here.
const highlighted = new Map();
const HIGHLIGHT_CACHE = 200;

function highlight(code, language) {
  if (!language || !hljs.getLanguage(language)) return escapeHtml(code);
  const key = `${language}\u0000${code}`;
  let html = highlighted.get(key);
  if (html === undefined) {
    html = hljs.highlight(code, { language, ignoreIllegals: true }).value;
    if (highlighted.size >= HIGHLIGHT_CACHE) highlighted.delete(highlighted.keys().next().value);
    highlighted.set(key, html);
  }
  return html;
}

const parser = new marked.Marked({
  gfm: true,
  renderer: {
    code({ text, lang }) {
      const language = (lang || "").trim().split(/\s+/)[0].toLowerCase();
      const label = escapeHtml(language || "text");
      return (
        `<div class="code-block"><div class="code-head"><span>${label}</span>` +
        `<button type="button" class="copy-code" aria-label="Copy ${label} code">Copy</button></div>` +
        `<pre><code class="hljs${language ? ` language-${escapeHtml(language)}` : ""}">` +
        `${highlight(text, language)}</code></pre></div>`
      );
    },
    html({ text }) {
      return escapeHtml(text);
    },
    image({ href, text }) {
      return `<a href="${escapeHtml(href)}" class="image-link">${escapeHtml(text || href)}</a>`;
    },
  },
});

// Links open in a new tab and tell the other site nothing about this page.
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

const PURIFY = {
  FORBID_TAGS: ["img", "style", "form", "input", "textarea", "select", "iframe", "video", "audio", "source"],
  FORBID_ATTR: ["style", "srcset"],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#)/i,
};

/** Shows finished Markdown in `element`, in one pass. */
export function renderInto(element, markdown) {
  element.replaceChildren(DOMPurify.sanitize(parser.parse(markdown), { ...PURIFY, RETURN_DOM_FRAGMENT: true }));
}

/**
 * Shows Markdown in an element and keeps it current as the text grows. Each top-level block (a paragraph, a
 * list, a code block) is rendered once: an update re-renders only the blocks whose source changed, which
 * while an answer streams is the last one. A whole re-render and re-layout of a long answer each frame would
 * not keep up.
 */
export class MarkdownView {
  constructor(element) {
    this.element = element;
    /** The rendered blocks, in order: their Markdown source and the nodes made from it. */
    this.blocks = [];
  }

  update(markdown) {
    const tokens = parser.lexer(markdown);
    let same = 0;
    while (same < this.blocks.length && same < tokens.length && this.blocks[same].raw === tokens[same].raw) same++;
    for (const block of this.blocks.splice(same)) for (const node of block.nodes) node.remove();
    for (const token of tokens.slice(same)) {
      if (token.type === "space") {
        this.blocks.push({ raw: token.raw, nodes: [] });
        continue;
      }
      const fragment = DOMPurify.sanitize(parser.parser([token]), { ...PURIFY, RETURN_DOM_FRAGMENT: true });
      const nodes = [...fragment.childNodes];
      this.element.append(fragment);
      this.blocks.push({ raw: token.raw, nodes });
    }
  }
}
