// Pictures attached for a model that sees (stove started with --mmproj): read in the browser as a data: URL,
// checked to be a format stove decodes and small enough for one request, and sent as OpenAI image_url parts.
// A model without a projector is not offered them: the refusal says so.

import { AttachmentError } from "./extract.js";
import { state } from "./page.js";

/** Formats stove decodes (server/pictures.rs). */
const TYPES = ["image/png", "image/jpeg", "image/webp", "image/gif"];
/** A picture's file, so that it fits stove's 4 MiB request once in base64 (a third larger). */
export const MAX_PICTURE_BYTES = 3 * 1024 * 1024;

/** Whether `file` is a picture (by its type or name). */
export function isPicture(file) {
  return (file.type || "").startsWith("image/") || /\.(png|jpe?g|webp|gif)$/i.test(file.name || "");
}

/** Whether the loaded model can be shown pictures. */
export function canSee() {
  return !!state.info?.runtime.projector?.vision;
}

/** Reads a picture into an attachment: {name, size, kind: "image", url, width, height}. */
export async function readPicture(file) {
  const name = file.name || "pasted picture";
  if (!canSee()) {
    throw new AttachmentError(
      `${name} is a picture, and this model cannot see: it was started without a projector (--mmproj).`,
    );
  }
  const extension = name.split(".").pop().toLowerCase();
  if (!TYPES.includes(file.type) && !["png", "jpg", "jpeg", "webp", "gif"].includes(extension)) {
    throw new AttachmentError(`${name} is a picture stove does not read; use PNG, JPEG, WebP or GIF.`);
  }
  if (file.size > MAX_PICTURE_BYTES) {
    throw new AttachmentError(
      `${name} is ${(file.size / 1024 / 1024).toFixed(1)} MB; pictures up to 3 MB can be sent. Scale it down first.`,
    );
  }
  const url = await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
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
