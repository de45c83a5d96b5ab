// What of a message's attached files goes into the prompt. Files that fit the room left in the conversation go
// in whole, each delimited with its name. When they do not, they are cut into passages (paragraphs joined up
// to about 300 tokens, never across a PDF's pages) and the passages that best match the question go in instead,
// chosen by BM25 (MiniSearch) and listed with their place so the answer's footer can name them. When stove
// serves an embedding model, the ranking is hybrid: BM25's and the vectors' rankings are fused (reciprocal rank
// fusion), so a passage that says the same thing in other words can still be found. The index is built here,
// in the browser, from the text the conversation keeps, and the passages' vectors are kept with the file in
// the browser's storage; the server only ever sees the prompt and the texts to embed.

import MiniSearch from "../vendor/minisearch/minisearch.js";

/** About 300 tokens of English prose. */
const PASSAGE_CHARS = 1200;
/** More passages than this drown the question in loosely related text. */
const MAX_PASSAGES = 12;
/** A follow-up question adds at most this many new passages, so the conversation does not fill up with them. */
const MAX_FOLLOW_UP_PASSAGES = 4;
/** Tags and separators around each file or passage, in tokens. */
const WRAPPING_TOKENS = 24;
/** Passages sent to /v1/embeddings at once. */
const EMBED_BATCH = 16;
/** Reciprocal rank fusion's constant (the value its authors found best, and most systems use). */
const FUSION_K = 60;

// Words that match nearly every passage and so only blur the ranking.
const STOP_WORDS = new Set(
  (
    "a an and are as at be but by can could did do does for from had has have he her his how i if in into is it " +
    "its me my no not of on or our she so than that the their them then there these they this those to us was " +
    "we were what when where which who whom why will with would you your"
  ).split(" "),
);

/** Attribute values in the prompt's tags: a quote in a file name would end the value early. */
const attribute = (value) => String(value).replace(/"/g, "'");

/** Splits `text` into pieces of at most `limit` characters, at sentence ends where it can, else at spaces. */
function pieces(text, limit) {
  if (text.length <= limit) return [text];
  const out = [];
  let current = "";
  for (const sentence of text.split(/(?<=[.!?])\s+/)) {
    for (let rest = sentence; rest; ) {
      let piece = rest;
      if (piece.length > limit) {
        const cut = piece.lastIndexOf(" ", limit);
        piece = piece.slice(0, cut > limit / 2 ? cut : limit);
      }
      rest = rest.slice(piece.length).trimStart();
      if (current && current.length + 1 + piece.length > limit) {
        out.push(current);
        current = piece;
      } else {
        current = current ? `${current} ${piece}` : piece;
      }
    }
  }
  if (current) out.push(current);
  return out;
}

/** The passages of one attached file: {file, page (PDFs), part, text}, parts numbered from 1 in reading order. */
export function passagesOf(attachment) {
  const sections = attachment.pages
    ? attachment.pages.map((text, i) => ({ page: i + 1, text }))
    : [{ page: null, text: attachment.text }];
  const out = [];
  for (const { page, text } of sections) {
    let current = "";
    const flush = () => {
      if (current.trim()) out.push({ file: attachment.name, page, part: out.length + 1, text: current.trim() });
      current = "";
    };
    for (const paragraph of text.split(/\n\s*\n/)) {
      for (const piece of pieces(paragraph.trim(), PASSAGE_CHARS)) {
        if (current && current.length + 2 + piece.length > PASSAGE_CHARS) flush();
        current = current ? `${current}\n\n${piece}` : piece;
      }
    }
    flush();
  }
  return out;
}

/** Where a passage comes from, as the footer and the prompt name it. */
export function placeOf(source) {
  return source.page ? `${source.file}, page ${source.page}` : `${source.file}, part ${source.part}`;
}

function wholeFile(attachment) {
  const body = attachment.pages
    ? attachment.pages.map((text, i) => `[page ${i + 1}]\n${text}`).join("\n\n")
    : attachment.text;
  return `<document name="${attribute(attachment.name)}">\n${body}\n</document>`;
}

/** A BM25 index over `passages`, searched with the question's words (prefixes and small typos match too). */
export function rank(passages, question) {
  const search = new MiniSearch({
    fields: ["text"],
    processTerm: (term) => {
      const word = term.toLowerCase();
      return STOP_WORDS.has(word) ? null : word;
    },
  });
  search.addAll(passages.map((p, id) => ({ id, text: p.text })));
  return search.search(question, { prefix: true, fuzzy: 0.1 }).map((hit) => passages[hit.id]);
}

/**
 * The vectors of `passages` (one attached file's), computed once with `embedder` and kept on the attachment
 * (so in the conversation's storage) for later questions.
 */
async function passageVectors(attachment, passages, embedder, progress) {
  const kept = attachment.vectors;
  if (kept?.model === embedder.model && kept.values.length === passages.length) return kept.values;
  const values = [];
  for (let i = 0; i < passages.length; i += EMBED_BATCH) {
    progress(attachment.name, i, passages.length);
    values.push(...(await embedder.embed(passages.slice(i, i + EMBED_BATCH).map((p) => p.text))));
  }
  attachment.vectors = { model: embedder.model, values };
  return values;
}

/**
 * BM25's ranking fused with the ranking by similarity to the question's vector: each passage scores
 * 1/(k + rank) in each list it is in, and the sums order them.
 */
async function hybridRank(attachments, byFile, lexical, question, embedder, progress) {
  const [asked] = await embedder.embed([question || " "]);
  const similarity = new Map();
  for (const attachment of attachments) {
    const passages = byFile.get(attachment);
    const vectors = await passageVectors(attachment, passages, embedder, progress);
    passages.forEach((p, i) =>
      similarity.set(
        p,
        vectors[i].reduce((sum, x, j) => sum + x * asked[j], 0),
      ),
    );
  }
  const score = new Map();
  const add = (list) => list.forEach((p, rank) => score.set(p, (score.get(p) || 0) + 1 / (FUSION_K + rank + 1)));
  add(lexical);
  add([...similarity.keys()].sort((a, b) => similarity.get(b) - similarity.get(a)));
  return [...score.keys()].sort((a, b) => score.get(b) - score.get(a));
}

/**
 * The prompt text for the files attached to a message, given the question and the room left (in tokens):
 * {text, sources, tokens}. `sources` is empty when the files went in whole, else the passages used ({file, page,
 * part}); `tokens` is about how many the text takes.
 * Options: `embedder` ({model, embed(texts) → vectors}), when stove has an embedding model, makes the ranking
 * hybrid; `progress(file, done, total)` hears how far embedding a file's passages has come; `sent` ("file NUL
 * part" keys) are passages given for an earlier question, left out now; `followUp` marks a question about files
 * attached earlier: it adds only a few passages, and none when nothing matches (the text is then empty).
 * Throws an Error when not even one passage fits.
 */
export async function documentContext(attachments, question, room, options = {}) {
  const { embedder = null, progress = () => {}, sent = new Set(), followUp = false } = options;
  const whole = attachments.reduce((sum, a) => sum + a.tokens + WRAPPING_TOKENS, 0);
  if (whole <= room && !followUp) return { text: attachments.map(wholeFile).join("\n\n"), sources: [], tokens: whole };

  // Token counts of passages, from each file's own ratio of tokens to characters (counted by the server).
  const estimate = new Map();
  const all = [];
  const byFile = new Map();
  for (const attachment of attachments) {
    const perChar = attachment.tokens / Math.max(attachment.text.length, 1);
    const passages = passagesOf(attachment);
    for (const passage of passages)
      estimate.set(passage, Math.ceil(passage.text.length * perChar * 1.1) + WRAPPING_TOKENS);
    byFile.set(attachment, passages);
    all.push(...passages);
  }
  let ranked = rank(all, question);
  if (embedder) ranked = await hybridRank(attachments, byFile, ranked, question, embedder, progress);
  // A question that shares no word with the files (or none at all) gets their beginnings.
  if (!ranked.length && !followUp) ranked = all;
  ranked = ranked.filter((p) => !sent.has(`${p.file}\u0000${p.part}`));
  if (!ranked.length && followUp) return { text: "", sources: [], tokens: 0 };
  const limit = followUp ? MAX_FOLLOW_UP_PASSAGES : MAX_PASSAGES;
  const chosen = [];
  let used = 60; // the sentence that introduces the passages
  for (const passage of ranked) {
    if (chosen.length === limit) break;
    if (used + estimate.get(passage) > room) continue;
    chosen.push(passage);
    used += estimate.get(passage);
  }
  if (!chosen.length) {
    // A follow-up is answered from what the conversation already holds.
    if (followUp) return { text: "", sources: [], tokens: 0 };
    // Handled as a question too long for the context: it is given back, with its files.
    const error = new Error(
      "The conversation has no room left for passages of the attached files: start a new chat and attach them there.",
    );
    error.code = "context_length_exceeded";
    throw error;
  }
  // In reading order, so passages next to each other read on.
  chosen.sort((a, b) => all.indexOf(a) - all.indexOf(b));
  const names = [...new Set(chosen.map((p) => p.file))].join(", ");
  const blocks = chosen.map((p) => {
    const where = p.page ? `page="${p.page}"` : `part="${p.part}"`;
    return `<passage file="${attribute(p.file)}" ${where}>\n${p.text}\n</passage>`;
  });
  const text = `The attached files (${names}) are too long to include whole; these passages from them best match the question:\n\n${blocks.join("\n\n")}`;
  return { text, sources: chosen.map(({ file, page, part }) => ({ file, page, part })), tokens: used };
}
