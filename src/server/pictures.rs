//! Pictures in requests: OpenAI's `image_url` parts (and Anthropic's `image` blocks) carry them as `data:` URIs
//! (base64), which are decoded here into RGB pixels for the projector: PNG, JPEG, WebP and GIF (its first
//! frame). stove never fetches anything, so an `http(s)` URL is refused with what to do instead.

use std::io::Cursor;

use base64::Engine as _;
use image::{ImageFormat, ImageReader, Limits};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::engine::Image;

/// Largest picture accepted, in pixels a side: projectors scale pictures down to a few hundred pixels anyway.
pub const MAX_SIDE: u32 = 8192;
/// Memory a picture may take while it is decoded.
const MAX_DECODE_BYTES: u64 = 512 << 20;
/// Pictures larger than this a side are scaled down here, on the request's thread: no projector reads more
/// (Gemma 3 takes 896, Pixtral 1024, SmolVLM 1536), and the projector's own resize runs under the lock the
/// engine thread decodes with, so it should start from a small picture.
const SCALED_SIDE: u32 = 2048;

/// The picture a `data:` URL holds; `field` names the part in errors (`messages[0].content[1]`).
pub fn from_url(field: &str, url: &str) -> Result<Image, ApiError> {
    let bad = |what: String| ApiError::invalid(format!("{field}: {what}"));
    if url.starts_with("http://") || url.starts_with("https://") {
        return Err(bad(
            "the picture is a web address, and stove makes no connection to anywhere: send the picture itself, \
             as a data: URL (data:image/png;base64,…)"
                .into(),
        ));
    }
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(bad("the picture must be a data: URL (data:image/png;base64,…)".into()));
    };
    let Some((header, payload)) = rest.split_once(',') else {
        return Err(bad("the data: URL has no comma before its data".into()));
    };
    if !header.ends_with(";base64") {
        return Err(bad("the data: URL must be base64 (data:image/png;base64,…)".into()));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|e| bad(format!("the picture's base64 is not valid ({e})")))?;
    decode(field, &bytes)
}

/// Decodes a picture's file bytes (its format told by its first bytes, not by what the request claims).
pub fn decode(field: &str, bytes: &[u8]) -> Result<Image, ApiError> {
    let bad = |what: String| ApiError::invalid(format!("{field}: {what}"));
    let format = image::guess_format(bytes).map_err(|_| {
        bad("the picture is not one stove reads (PNG, JPEG, WebP or GIF); convert it to PNG or JPEG".into())
    })?;
    if !matches!(format, ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif) {
        return Err(bad(format!("the picture is {format:?}; send PNG, JPEG, WebP or GIF")));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    // A GIF decodes to its first frame.
    let picture = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => {
            bad(format!("the picture is larger than {MAX_SIDE}×{MAX_SIDE} pixels; scale it down and send it again"))
        }
        e => bad(format!("the picture could not be decoded ({e})")),
    })?;
    let picture = if picture.width().max(picture.height()) > SCALED_SIDE {
        picture.resize(SCALED_SIDE, SCALED_SIDE, image::imageops::FilterType::Triangle)
    } else {
        picture
    };
    let rgb = picture.to_rgb8();
    let (width, height) = rgb.dimensions();
    Ok(Image { rgb: rgb.into_raw(), width, height, sha256: crate::pack::hex(&Sha256::digest(bytes)) })
}
