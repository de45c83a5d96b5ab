// Pictures and sounds attached for a model that sees or hears (stove started with --mmproj, or a file packed
// with a projector): read in the browser as a data: URL, checked to be a format stove reads and small enough for
// one request, and sent as OpenAI image_url and input_audio parts. A model without a projector for them is not
// offered them: the refusal says so.

import { AttachmentError } from "./extract.js";
import { state } from "./page.js";

/** Formats stove decodes (server/pictures.rs), and sound files llama.cpp's decoder reads (server/sounds.rs). */
const PICTURE_TYPES = { png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", webp: "image/webp", gif: "image/gif" };
const SOUND_TYPES = { wav: "wav", mp3: "mp3", flac: "flac" };
/** A file, so that it fits stove's 4 MiB request once in base64 (a third larger). */
export const MAX_MEDIA_BYTES = 3 * 1024 * 1024;

const extensionOf = (file) => (file.name || "").split(".").pop().toLowerCase();

/** Whether `file` is a picture (by its type or name). */
export function isPicture(file) {
  return (file.type || "").startsWith("image/") || extensionOf(file) in PICTURE_TYPES;
}

/** Whether `file` is a sound (by its type or name). */
export function isSound(file) {
  return (file.type || "").startsWith("audio/") || extensionOf(file) in SOUND_TYPES;
}

/** Whether the loaded model can be shown pictures. */
export function canSee() {
  return !!state.info?.runtime.projector?.vision;
}

/** Whether the loaded model can hear sound. */
export function canHear() {
  return !!state.info?.runtime.projector?.audio;
}

/** The file as a data: URL. */
function dataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function checkSize(file, name, what) {
  if (file.size > MAX_MEDIA_BYTES) {
    throw new AttachmentError(
      `${name} is ${(file.size / 1024 / 1024).toFixed(1)} MB; ${what} up to 3 MB can be sent. Make it smaller first.`,
    );
  }
}

/** Reads a picture into an attachment: {name, size, kind: "image", url, width, height}. */
export async function readPicture(file) {
  const name = file.name || "pasted picture";
  if (!canSee()) {
    throw new AttachmentError(
      `${name} is a picture, and this model cannot see: it was started without a projector (--mmproj) that sees.`,
    );
  }
  if (!Object.values(PICTURE_TYPES).includes(file.type) && !(extensionOf(file) in PICTURE_TYPES)) {
    throw new AttachmentError(`${name} is a picture stove does not read; use PNG, JPEG, WebP or GIF.`);
  }
  checkSize(file, name, "pictures");
  const url = await dataUrl(file);
  // Decoding it here proves it is a picture and gives its size for the chip.
  const image = new Image();
  image.src = url;
  try {
    await image.decode();
  } catch {
    throw new AttachmentError(`${name} could not be read as a picture; it may be damaged.`);
  }
  return { name, size: file.size, kind: "image", url, width: image.naturalWidth, height: image.naturalHeight };
}

/** Reads a sound into an attachment: {name, size, kind: "audio", url, format, seconds}. */
export async function readSound(file) {
  const name = file.name || "pasted sound";
  if (!canHear()) {
    throw new AttachmentError(
      `${name} is a sound, and this model cannot hear: it was started without a projector (--mmproj) that hears.`,
    );
  }
  const format =
    SOUND_TYPES[extensionOf(file)] ||
    { "audio/wav": "wav", "audio/x-wav": "wav", "audio/mpeg": "mp3", "audio/flac": "flac" }[file.type];
  if (!format) throw new AttachmentError(`${name} is a sound stove does not read; use WAV, MP3 or FLAC.`);
  checkSize(file, name, "sounds");
  const url = await dataUrl(file);
  // Loading it here proves the browser can play it back, and gives its length for the chip.
  const seconds = await new Promise((resolve) => {
    const audio = new Audio();
    audio.onloadedmetadata = () => resolve(Number.isFinite(audio.duration) ? audio.duration : null);
    audio.onerror = () => resolve(null);
    audio.src = url;
  });
  return { name, size: file.size, kind: "audio", url, format, seconds };
}
