//! `/v1/embeddings`: texts in, one vector per text out.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::Body;
use super::error::{json_response, ApiError};
use super::request::{check_model, read_body, PromptIn};
use super::AppState;
use crate::engine::EngineError;

#[derive(Debug, Deserialize)]
struct EmbeddingRequest {
    input: PromptIn,
    model: Option<String>,
    encoding_format: Option<String>,
}

/// Most texts in one embeddings request, as OpenAI allows.
const MAX_EMBEDDING_INPUTS: usize = 2048;

/// `/v1/embeddings`: one L2-normalized vector per input text, as floats or as base64 of little-endian f32s
/// (what OpenAI's Python client asks for by default).
pub async fn embeddings(state: &AppState, request: Request<Incoming>) -> Response<Body> {
    embed(state, request).await.unwrap_or_else(|error| error.response())
}

async fn embed(state: &AppState, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    use base64::Engine as _;
    let bytes = read_body(request).await?;
    let raw: EmbeddingRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(format!("the request body is not a valid embeddings request: {e}")))?;
    check_model(state, raw.model.as_deref())?;
    let texts = match raw.input {
        PromptIn::One(text) => vec![text],
        PromptIn::Many(list) => list
            .into_iter()
            .map(|v| match v {
                Value::String(text) => Ok(text),
                _ => Err(ApiError::invalid("`input` must be a string or a list of strings")),
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    if texts.is_empty() || texts.len() > MAX_EMBEDDING_INPUTS {
        return Err(ApiError::invalid(format!(
            "`input` has {} texts; send between 1 and {MAX_EMBEDDING_INPUTS}",
            texts.len()
        )));
    }
    let base64 = match raw.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!("`encoding_format` is \"{other}\"; use \"float\" or \"base64\"")))
        }
    };
    let engine = state.engine.clone();
    let reply = tokio::task::spawn_blocking(move || engine.embed(&texts))
        .await
        .map_err(|e| EngineError::Inference(format!("the request could not be prepared: {e}")))??;
    let embeddings = reply
        .await
        .map_err(|_| EngineError::Inference("the engine stopped before the embeddings were made".into()))??;
    let data: Vec<Value> = embeddings
        .vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "model": state.engine.info().name,
            "usage": { "prompt_tokens": embeddings.prompt_tokens, "total_tokens": embeddings.prompt_tokens },
        }),
    ))
}
