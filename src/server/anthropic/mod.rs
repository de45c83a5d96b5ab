//! Anthropic's Messages API, `/v1/messages` and `/v1/messages/count_tokens`, on the same engine and chat
//! layer: a request is converted into OpenAI's chat shape (as llama-server's `server_chat_convert_anthropic_to_oai`
//! does) and checked by the same code; the answer comes back as Anthropic's content blocks (`thinking`, `text`,
//! `tool_use`) or its event stream (`message_start`, `content_block_start/delta/stop`, `message_delta`,
//! `message_stop`). Errors are Anthropic-shaped: `{"type": "error", "error": {"type", "message"}}`.
//!
//! `request.rs` converts the request; this file answers it.
//!
//! The `model` field is not checked: Anthropic's clients send their own model names, and this server has one.

use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

mod request;

use crate::engine::{Event, Finish, FinishReason};
use crate::llama::chat::ParsedMessage;
use crate::server::body::{next_event, Body};
use crate::server::completions::unique_id;
use crate::server::error::{json_response, ApiError};
use crate::server::reply::{Delta, Parts, Reply};
use crate::server::request::{parse_chat_json, read_body};
use crate::server::{off_socket_threads, AppState};
use request::to_openai;

pub async fn messages(state: &AppState, request: Request<Incoming>) -> Response<Body> {
    respond(state, request).await.unwrap_or_else(|error| error_response(&error))
}

pub async fn count_tokens(state: &AppState, request: Request<Incoming>) -> Response<Body> {
    let count = async {
        let body = read_json(request).await?;
        let mut openai = to_openai(&body, false)?;
        openai["max_tokens"] = json!(1);
        let parsed = parse_chat_json(openai, &state.sampling)?;
        let tokens = off_socket_threads(state, move |engine| engine.count_tokens(&parsed.request)).await?;
        Ok::<_, ApiError>(json_response(StatusCode::OK, &json!({ "input_tokens": tokens })))
    };
    count.await.unwrap_or_else(|error| error_response(&error))
}

async fn read_json(request: Request<Incoming>) -> Result<Value, ApiError> {
    let bytes = read_body(request).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}")))
}

async fn respond(state: &AppState, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let body = read_json(request).await?;
    let openai = to_openai(&body, true)?;
    let parsed = parse_chat_json(openai, &state.sampling)?;
    let stream = parsed.stream;
    let stop_sequences = parsed.request.stop.clone();
    let submitted = off_socket_threads(state, move |engine| engine.submit(parsed.request)).await?;
    let reply = submitted.reader.map(Reply::new).expect("a chat request has a reader");
    let message =
        Message { id: format!("msg_{:x}", unique_id()), model: state.engine.info().name.clone(), stop_sequences };
    if stream {
        let (chunks, response) = Body::event_stream();
        tokio::spawn(stream_events(message, submitted.events, reply, chunks));
        return Ok(response);
    }
    let (parsed, finish) = reply.collect(submitted.events).await?;
    let (stop_reason, stop_sequence) = stop_reason(&finish, !parsed.tool_calls.is_empty(), &message.stop_sequences);
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "id": message.id,
            "type": "message",
            "role": "assistant",
            "model": message.model,
            "content": content_blocks(&parsed),
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": usage(&finish),
        }),
    ))
}

/// The fields every event of one answer shares.
struct Message {
    id: String,
    model: String,
    /// The request's `stop_sequences`, to tell them from the template's own stops.
    stop_sequences: Vec<String>,
}

/// Why the answer ended, and the request's stop sequence that ended it (a template's own stop strings, which
/// end a turn, are `end_turn`).
fn stop_reason(finish: &Finish, called: bool, stop_sequences: &[String]) -> (&'static str, Option<String>) {
    let asked = finish.stop_sequence.as_ref().filter(|s| stop_sequences.contains(s));
    match finish.reason {
        FinishReason::Length => ("max_tokens", None),
        FinishReason::Stop if called => ("tool_use", None),
        FinishReason::Stop if asked.is_some() => ("stop_sequence", asked.cloned()),
        FinishReason::Stop => ("end_turn", None),
    }
}

fn usage(finish: &Finish) -> Value {
    json!({
        "input_tokens": finish.prompt_tokens - finish.cached_tokens,
        "cache_read_input_tokens": finish.cached_tokens,
        "output_tokens": finish.completion_tokens,
    })
}

/// A tool call's arguments as the object Anthropic's `input` is (text that is not an object stays text).
fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(object @ Value::Object(_)) => object,
        _ if arguments.trim().is_empty() => json!({}),
        _ => Value::String(arguments.to_string()),
    }
}

fn content_blocks(message: &ParsedMessage) -> Vec<Value> {
    let mut blocks = Vec::new();
    if !message.reasoning_content.is_empty() {
        blocks.push(json!({ "type": "thinking", "thinking": message.reasoning_content, "signature": "" }));
    }
    if !message.content.is_empty() || (message.tool_calls.is_empty() && message.reasoning_content.is_empty()) {
        blocks.push(json!({ "type": "text", "text": message.content }));
    }
    for call in &message.tool_calls {
        blocks.push(
            json!({ "type": "tool_use", "id": call.id, "name": call.name, "input": tool_input(&call.arguments) }),
        );
    }
    blocks
}

/// Anthropic's event stream: blocks open as the answer's kind of content changes, each closes before the next.
async fn stream_events(
    message: Message,
    mut events: mpsc::UnboundedReceiver<Event>,
    mut reply: Reply,
    chunks: mpsc::Sender<Bytes>,
) {
    let event = |name: &str, data: Value| Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
    let start = json!({ "type": "message_start", "message": {
        "id": message.id, "type": "message", "role": "assistant", "model": message.model, "content": [],
        "stop_reason": null, "stop_sequence": null, "usage": { "input_tokens": 0, "output_tokens": 0 } } });
    if chunks.send(event("message_start", start)).await.is_err() {
        return;
    }
    let stop = |index: usize| event("content_block_stop", json!({ "type": "content_block_stop", "index": index }));
    let mut parts = Parts::default();
    let mut out = Vec::new();
    while let Some(item) = next_event(&mut events, &chunks).await {
        let (deltas, finish) = match item {
            Event::Text { text, .. } => (reply.push(&text), None),
            Event::Done(finish) => (reply.finish().1, Some(finish)),
            Event::Failed(error) => {
                let _ = chunks.send(event("error", error_body(&ApiError::from(error)))).await;
                return;
            }
        };
        for delta in deltas {
            let (closed, opened) = parts.enter(delta.part());
            if let Some((_, index)) = closed {
                out.push(stop(index));
            }
            let (block, body) = match delta {
                Delta::Reasoning(text) => (
                    json!({ "type": "thinking", "thinking": "", "signature": "" }),
                    json!({ "type": "thinking_delta", "thinking": text }),
                ),
                Delta::Content(text) => {
                    (json!({ "type": "text", "text": "" }), json!({ "type": "text_delta", "text": text }))
                }
                Delta::ToolCall { id, name, arguments, .. } => (
                    json!({ "type": "tool_use", "id": id, "name": name, "input": {} }),
                    json!({ "type": "input_json_delta", "partial_json": arguments }),
                ),
            };
            let index = parts.current().expect("a block is open").1;
            if opened.is_some() {
                out.push(event(
                    "content_block_start",
                    json!({ "type": "content_block_start", "index": index, "content_block": block }),
                ));
            }
            if body.get("partial_json") != Some(&json!("")) {
                let data = json!({ "type": "content_block_delta", "index": index, "delta": body });
                out.push(event("content_block_delta", data));
            }
        }
        if let Some(finish) = finish {
            if let Some((_, index)) = parts.close() {
                out.push(stop(index));
            }
            let called = reply.tool_calls().next().is_some();
            let (stop_reason, stop_sequence) = stop_reason(&finish, called, &message.stop_sequences);
            out.push(event(
                "message_delta",
                json!({ "type": "message_delta",
                        "delta": { "stop_reason": stop_reason, "stop_sequence": stop_sequence },
                        "usage": usage(&finish) }),
            ));
            out.push(event("message_stop", json!({ "type": "message_stop" })));
        }
        for chunk in out.drain(..) {
            if chunks.send(chunk).await.is_err() {
                return;
            }
        }
    }
}

fn error_body(error: &ApiError) -> Value {
    let kind = match error.status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::FORBIDDEN => "permission_error",
        StatusCode::NOT_FOUND => "not_found_error",
        StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
        status if status.is_server_error() => "api_error",
        _ => "invalid_request_error",
    };
    json!({ "type": "error", "error": { "type": kind, "message": error.message } })
}

/// A refusal from the guard (an OpenAI-shaped error body) in Anthropic's shape, status and headers kept.
pub fn reshape_refusal(mut response: Response<Body>) -> Response<Body> {
    let Body::Full(Some(bytes)) = response.body() else { return response };
    let Ok(body) = serde_json::from_slice::<Value>(bytes) else { return response };
    let Some(message) = body.pointer("/error/message").and_then(Value::as_str) else { return response };
    let error = ApiError::new(response.status(), "invalid_request_error", None, message);
    *response.body_mut() = Body::full(error_body(&error).to_string());
    response
}

fn error_response(error: &ApiError) -> Response<Body> {
    let mut response = error.response();
    *response.body_mut() = Body::full(error_body(error).to_string());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_anthropic_shaped() {
        let error = error_body(&ApiError::invalid("bad"));
        assert_eq!(error, json!({"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}));
    }
}
