//! Pictures and sounds in a prompt. The API puts a marker in the text where each one goes and hands them over
//! in order; here the rendered prompt is cut at the markers, the text between is tokenized as usual, and each
//! picture or sound becomes a span of the prompt that the projector decodes (`llama/vision.rs`).
//!
//! In the prompt's token list a span holds stand-in tokens made from the item's hash, never real token ids
//! (they are negative), so a slot's cache comparison works unchanged: the same picture at the same place
//! matches and its decoded embeddings are kept for the next turn; another picture differs from its first
//! stand-in on.

use std::sync::Arc;

use llama_cpp_2::token::LlamaToken;

use super::EngineError;
use crate::llama::vision::{self, MediaChunks, Projector};

/// A picture or a sound, as a request brings it.
#[derive(Debug, Clone, PartialEq)]
pub enum Media {
    Picture(Image),
    Sound(Sound),
}

impl Media {
    fn sha256(&self) -> &str {
        match self {
            Media::Picture(image) => &image.sha256,
            Media::Sound(sound) => &sound.sha256,
        }
    }

    /// "picture" or "sound", for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Media::Picture(_) => "picture",
            Media::Sound(_) => "sound",
        }
    }
}

/// A picture: RGB pixels (3 bytes each, rows top to bottom) and its SHA-256 in hex.
#[derive(Clone, PartialEq)]
pub struct Image {
    pub rgb: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub sha256: String,
}

// Its size and hash, not its pixels.
impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Image({}x{}, sha256 {})", self.width, self.height, self.sha256)
    }
}

/// A sound: the bytes of a WAV, MP3 or FLAC file, which llama.cpp's own decoder (miniaudio, in mtmd's helper)
/// reads and resamples to what the projector hears, and its SHA-256 in hex.
#[derive(Clone, PartialEq)]
pub struct Sound {
    pub file: Vec<u8>,
    pub sha256: String,
}

impl std::fmt::Debug for Sound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sound({} bytes, sha256 {})", self.file.len(), self.sha256)
    }
}

/// A picture's or sound's place in a prepared prompt: tokens `at..at + len` are its stand-ins.
#[derive(Clone)]
pub struct MediaSpan {
    pub at: usize,
    pub len: usize,
    pub chunks: Arc<MediaChunks>,
}

/// Tokenizes `text` (a rendered prompt holding one marker per picture or sound, in order) with `media` in place
/// of the markers. `tokenize(text, first)` tokenizes the text between them (`first`: the prompt's start, which
/// gets the model's special start tokens).
pub fn tokenize_with_media(
    text: &str,
    media: &[Media],
    projector: &Projector,
    tokenize: impl Fn(&str, bool) -> Vec<LlamaToken>,
) -> Result<(Vec<LlamaToken>, Vec<MediaSpan>), EngineError> {
    let pieces: Vec<&str> = text.split(vision::marker()).collect();
    if pieces.len() - 1 != media.len() {
        return Err(EngineError::BadRequest(format!(
            "the conversation holds {} pictures and sounds but its text has {} places for them: the text must \
             not contain \"{}\" itself",
            media.len(),
            pieces.len() - 1,
            vision::marker()
        )));
    }
    // The first answer token comes from the prompt's last token's logits, which a picture has none of; chat
    // templates always end with the assistant's turn.
    if !media.is_empty() && pieces.last().is_some_and(|p| p.is_empty()) {
        return Err(EngineError::BadRequest(
            "the prompt ends with a picture or sound; it needs text after it (the chat template's assistant turn)"
                .into(),
        ));
    }
    let mut tokens = Vec::new();
    let mut spans = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        if !piece.is_empty() || i == 0 {
            tokens.extend(tokenize(piece, i == 0));
        }
        let Some(item) = media.get(i) else { break };
        let chunks = match item {
            Media::Picture(image) => projector.picture(&image.rgb, image.width, image.height, &image.sha256),
            Media::Sound(sound) => projector.sound(&sound.file, &sound.sha256),
        }
        .map_err(|e| EngineError::BadRequest(format!("{} {}: {e}", item.kind(), i + 1)))?;
        let len = chunks.tokens;
        spans.push(MediaSpan { at: tokens.len(), len, chunks: Arc::new(chunks) });
        tokens.extend(stand_ins(item.sha256(), len));
    }
    Ok((tokens, spans))
}

/// `len` stand-in tokens for a picture or sound: negative (no real token is), and different for different items.
fn stand_ins(sha256: &str, len: usize) -> impl Iterator<Item = LlamaToken> {
    let seed = u32::from_str_radix(&sha256[..8.min(sha256.len())], 16).unwrap_or(0) & 0x3fff_ffff;
    (0..len).map(move |i| LlamaToken(-1 - ((seed as i64 + i as i64) % 0x3fff_ffff) as i32))
}
