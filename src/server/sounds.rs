//! Sounds in requests: OpenAI's `input_audio` parts (`{"input_audio": {"data": base64, "format": "wav"}}`)
//! carry a whole sound file, handed to the engine as it is: llama.cpp's own decoder reads it for the projector
//! (`llama/vision.rs`). Here the base64 is decoded and the file is checked to be the format it claims.

use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::engine::Sound;

/// The sound an `input_audio` part holds; `field` names the part in errors (`messages[0].content[1]`).
pub fn from_part(field: &str, part: &Value) -> Result<Sound, ApiError> {
    let bad = |what: &str| ApiError::invalid(format!("{field}: {what}"));
    let audio = part.get("input_audio");
    let Some(data) = audio.and_then(|a| a.get("data")).and_then(Value::as_str) else {
        return Err(bad(
            "input_audio.data is missing; it holds the sound file in base64 ({\"data\": \"…\", \"format\": \"wav\"})",
        ));
    };
    let claimed = audio.and_then(|a| a.get("format")).and_then(Value::as_str);
    let file = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| bad(&format!("the sound's base64 is not valid ({e})")))?;
    let Some(format) = crate::llama::vision::sound_format(&file) else {
        return Err(bad("the sound is not one stove reads (WAV, MP3 or FLAC); convert it to WAV"));
    };
    if let Some(claimed) = claimed.filter(|c| !c.eq_ignore_ascii_case(format)) {
        return Err(bad(&format!("input_audio.format says \"{claimed}\" but the file is {format}; say \"{format}\"")));
    }
    Ok(Sound { sha256: crate::pack::hex(&Sha256::digest(&file)), file })
}
