// The text of a file a person attaches, read in this browser: plain text, Markdown, source code, CSV/TSV and
// JSON as they are; HTML as the text a browser shows; PDF through Mozilla's pdf.js (page by page, in its own
// worker); Word documents (.docx) through mammoth. Nothing is sent anywhere to be read. A file that holds no
// readable text is refused with an AttachmentError saying why and what to do instead.

/** Files larger than this are refused before being read (the page keeps their text in the browser). */
export const MAX_FILE_BYTES = 50 * 1024 * 1024;

/** A file the page cannot use, with a sentence for the person. */
export class AttachmentError extends Error {}

const megabytes = (bytes) => `${Math.round(bytes / 1024 / 1024)} MB`;

// Formats that look like documents but keep no text the page can read, with what to do instead.
const UNREADABLE = {
  doc: "is an old Word document (.doc); save it as .docx or PDF and attach that",
  xls: "is a spreadsheet; save it as CSV and attach that",
  xlsx: "is a spreadsheet; save it as CSV and attach that",
  ods: "is a spreadsheet; save it as CSV and attach that",
  ppt: "is a presentation; save it as PDF and attach that",
  pptx: "is a presentation; save it as PDF and attach that",
  odt: "is an OpenDocument text; save it as .docx or PDF and attach that",
  rtf: "is Rich Text; save it as .docx or plain text and attach that",
  zip: "is an archive; unpack it and attach the files inside",
};

const extension = (name) => (name.includes(".") ? name.split(".").pop().toLowerCase() : "");

/**
 * Reads `file` into {name, size, kind, text, pages}: `pages` is a list of page texts for a PDF (page numbers
 * start at 1), null otherwise. Throws an AttachmentError when the file cannot be used.
 */
export async function extract(file) {
  const name = file.name || "pasted file";
  if (file.size > MAX_FILE_BYTES) {
    throw new AttachmentError(
      `${name} is ${megabytes(file.size)}; files up to ${megabytes(MAX_FILE_BYTES)} can be attached. Attach the part you need.`,
    );
  }
  const ext = extension(name);
  const type = file.type || "";
  let kind;
  let text;
  let pages = null;
  if (ext === "pdf" || type === "application/pdf") {
    kind = "pdf";
    pages = await pdfPages(name, await file.arrayBuffer());
    text = pages.join("\n\n");
  } else if (ext === "docx" || type.includes("wordprocessingml")) {
    kind = "docx";
    text = await docxText(name, await file.arrayBuffer());
  } else if (UNREADABLE[ext]) {
    throw new AttachmentError(`${name} ${UNREADABLE[ext]}.`);
  } else if (type.startsWith("image/") || type.startsWith("audio/") || type.startsWith("video/")) {
    throw new AttachmentError(`${name} is a picture or recording; this page reads text from documents only.`);
  } else {
    const raw = decodeText(name, new Uint8Array(await file.arrayBuffer()));
    if (ext === "html" || ext === "htm" || type === "text/html") {
      kind = "html";
      text = htmlText(raw);
    } else {
      kind = "text";
      text = raw;
    }
  }
  text = text.replace(/\r\n?/g, "\n").trim();
  if (!text) throw new AttachmentError(`${name} holds no text.`);
  return { name, size: file.size, kind, text, pages };
}

/**
 * Text from bytes: UTF-8 (with or without a byte-order mark), or Windows-1252 for older files that are not
 * UTF-8. Bytes that are no text at all (NULs, many control characters) are refused.
 */
function decodeText(name, bytes) {
  const sample = bytes.subarray(0, 64 * 1024);
  let control = 0;
  for (const byte of sample) {
    if (byte === 0)
      control += sample.length; // a NUL: no text file has one
    else if (byte < 32 && byte !== 9 && byte !== 10 && byte !== 12 && byte !== 13) control++;
  }
  if (control > sample.length / 20) {
    throw new AttachmentError(
      `${name} is not a text file (it holds binary data). Attach text, Markdown, code, CSV, JSON, HTML, PDF or .docx files.`,
    );
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return new TextDecoder("windows-1252").decode(bytes);
  }
}

/** The text a browser would show for an HTML document; parsing it runs none of its scripts. */
function htmlText(html) {
  const doc = new DOMParser().parseFromString(html, "text/html");
  for (const hidden of doc.querySelectorAll("script, style, noscript, template")) hidden.remove();
  // Block elements end lines, so paragraphs stay apart in the text.
  for (const block of doc.querySelectorAll("p, div, br, li, tr, h1, h2, h3, h4, h5, h6, pre, blockquote, section")) {
    block.append("\n");
  }
  return (doc.body?.textContent || "").replace(/[ \t]+\n/g, "\n").replace(/\n{3,}/g, "\n\n");
}

let pdfjs = null;
/** pdf.js, loaded the first time a PDF is attached; its worker is a file of the page too. */
async function loadPdfjs() {
  if (!pdfjs) {
    pdfjs = await import("../vendor/pdfjs/pdf.min.mjs");
    pdfjs.GlobalWorkerOptions.workerSrc = new URL("../vendor/pdfjs/pdf.worker.min.mjs", import.meta.url).href;
  }
  return pdfjs;
}

/** The text layer of each page of a PDF. */
async function pdfPages(name, data) {
  const lib = await loadPdfjs();
  const task = lib.getDocument({
    data,
    cMapUrl: new URL("../vendor/pdfjs/cmaps/", import.meta.url).href,
    cMapPacked: true,
    // The page's security policy allows no eval, and the page draws nothing, so fonts stay unloaded.
    isEvalSupported: false,
    disableFontFace: true,
    useSystemFonts: false,
  });
  // With no onPassword callback, a PDF locked with a password rejects with a PasswordException.
  let pdf;
  try {
    pdf = await task.promise;
  } catch (error) {
    if (error?.name === "PasswordException") {
      throw new AttachmentError(
        `${name} is locked with a password. Open it, save or print it as a PDF without a password, and attach that.`,
      );
    }
    throw new AttachmentError(`${name} is not a PDF that can be read (${error?.message || error}).`);
  }
  try {
    const pages = [];
    for (let number = 1; number <= pdf.numPages; number++) {
      const page = await pdf.getPage(number);
      const content = await page.getTextContent();
      let text = "";
      for (const item of content.items) {
        if (typeof item.str !== "string") continue;
        text += item.str + (item.hasEOL ? "\n" : item.str && !item.str.endsWith(" ") ? " " : "");
      }
      pages.push(text.replace(/[ \t]+\n/g, "\n").trim());
      page.cleanup();
    }
    if (!pages.some((p) => p)) {
      throw new AttachmentError(
        `${name} has no text layer: its pages are pictures (a scan?). Run it through text recognition (OCR) first, or attach a copy with text.`,
      );
    }
    return pages;
  } finally {
    task.destroy();
  }
}

let mammothLoading = null;
/** mammoth, loaded the first time a Word document is attached. */
function loadMammoth() {
  mammothLoading ??= new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = new URL("../vendor/mammoth/mammoth.browser.min.js", import.meta.url).href;
    script.onload = () => resolve(window.mammoth);
    script.onerror = () => reject(new Error("the Word reader did not load"));
    document.head.append(script);
  });
  return mammothLoading;
}

async function docxText(name, data) {
  const mammoth = await loadMammoth();
  try {
    const result = await mammoth.extractRawText({ arrayBuffer: data });
    return result.value;
  } catch (error) {
    throw new AttachmentError(`${name} is not a Word document that can be read (${error?.message || error}).`);
  }
}
