//! Anthropic's Messages API, `/v1/messages` and `/v1/messages/count_tokens`, on the same engine and chat
//! layer: a request is converted into OpenAI's chat shape (as llama-server's `server_chat_convert_anthropic_to_oai`
//! does) and checked by the same code; the answer comes back as Anthropic's content blocks (`thinking`, `text`,
//! `tool_use`) or its event stream (`message_start`, `content_block_start/delta/stop`, `message_delta`,
//! `message_stop`). Errors are Anthropic-shaped: `{"type": "error", "error": {"type", "message"}}`.
//!
//! The `model` field is not checked: Anthropic's clients send their own model names, and this server has one.

use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::body::{next_event, Body};
use super::completions::unique_id;
use super::error::{json_response, ApiError};
use super::reply::{Delta, Parts, Reply};
use super::request::{parse_chat_json, read_body};
use super::{off_socket_threads, AppState};
use crate::engine::{Event, Finish, FinishReason};
use crate::llama::chat::ParsedMessage;

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

/// Anthropic's request as an OpenAI chat completion request.
fn to_openai(body: &Value, needs_max_tokens: bool) -> Result<Value, ApiError> {
    let Value::Object(body) = body else {
        return Err(ApiError::invalid("the request body must be a JSON object"));
    };
    let mut messages = Vec::new();
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(json!({ "role": "system", "content": text })),
        Some(Value::Array(blocks)) => {
            let text: String = blocks.iter().filter_map(|b| b.get("text").and_then(Value::as_str)).collect();
            messages.push(json!({ "role": "system", "content": text }));
        }
        Some(_) => return Err(ApiError::invalid("`system` must be text or a list of text blocks")),
    }
    let Some(Value::Array(turns)) = body.get("messages") else {
        return Err(ApiError::invalid("`messages` is missing; send a list of {\"role\", \"content\"}"));
    };
    for (i, turn) in turns.iter().enumerate() {
        messages.extend(turn_to_openai(i, turn)?);
    }
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(messages));
    match body.get("max_tokens") {
        Some(n) => {
            out.insert("max_tokens".into(), n.clone());
        }
        None if needs_max_tokens => {
            return Err(ApiError::invalid("`max_tokens` is missing; the Messages API needs the most tokens to write"))
        }
        None => {}
    }
    // `grammar` and `reasoning_format` are llama-server's extensions, taken here too.
    for field in ["temperature", "top_p", "top_k", "stream", "grammar", "reasoning_format"] {
        if let Some(value) = body.get(field) {
            out.insert(field.into(), value.clone());
        }
    }
    if let Some(stops) = body.get("stop_sequences") {
        out.insert("stop".into(), stops.clone());
    }
    if let Some(Value::Array(tools)) = body.get("tools") {
        let tools = tools.iter().enumerate().map(|(i, tool)| tool_to_openai(i, tool)).collect::<Result<Vec<_>, _>>()?;
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = body.get("tool_choice") {
        let openai_choice = match choice.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => json!({ "type": "function", "function": { "name": choice.get("name") } }),
            _ => return Err(ApiError::invalid("`tool_choice.type` must be \"auto\", \"any\", \"tool\" or \"none\"")),
        };
        out.insert("tool_choice".into(), openai_choice);
        if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            out.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    match body.get("thinking").and_then(|t| t.get("type")).and_then(Value::as_str) {
        Some("enabled") => {
            out.insert("chat_template_kwargs".into(), json!({ "enable_thinking": true }));
        }
        Some("disabled") => {
            out.insert("chat_template_kwargs".into(), json!({ "enable_thinking": false }));
        }
        _ => {}
    }
    Ok(Value::Object(out))
}

/// One Anthropic turn as OpenAI messages: tool results become `tool` messages (before the turn's text, so
/// each follows the call it answers), `tool_use` blocks an assistant's `tool_calls`, `thinking` its
/// `reasoning_content`.
fn turn_to_openai(i: usize, turn: &Value) -> Result<Vec<Value>, ApiError> {
    let role = turn.get("role").cloned().unwrap_or(Value::Null);
    let blocks = match turn.get("content") {
        Some(Value::Array(blocks)) => blocks,
        _ => return Ok(vec![turn.clone()]),
    };
    let mut out = Vec::new();
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    let mut thinking = String::new();
    for (j, block) in blocks.iter().enumerate() {
        match block.get("type").and_then(Value::as_str).unwrap_or("") {
            "text" => parts.push(json!({ "type": "text", "text": block.get("text") })),
            "thinking" => thinking.push_str(block.get("thinking").and_then(Value::as_str).unwrap_or("")),
            "redacted_thinking" => {}
            "tool_use" => calls.push(json!({
                "id": block.get("id"),
                "type": "function",
                "function": {
                    "name": block.get("name"),
                    "arguments": block.get("input").unwrap_or(&json!({})).to_string(),
                },
            })),
            "tool_result" => {
                let content = match block.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(text)) => text.clone(),
                    Some(Value::Array(items)) => {
                        let mut text = String::new();
                        for item in items {
                            match item.get("type").and_then(Value::as_str) {
                                Some("text") => text.push_str(item.get("text").and_then(Value::as_str).unwrap_or("")),
                                kind => {
                                    return Err(ApiError::invalid(format!(
                                        "messages[{i}].content[{j}] holds a {} block; this model only reads text",
                                        kind.unwrap_or("untyped")
                                    )))
                                }
                            }
                        }
                        text
                    }
                    Some(_) => {
                        return Err(ApiError::invalid(format!(
                            "messages[{i}].content[{j}].content must be text or a list of text blocks"
                        )))
                    }
                };
                out.push(json!({ "role": "tool", "tool_call_id": block.get("tool_use_id"), "content": content }));
            }
            // Images and documents are named in the error the shared check gives for a part it cannot read.
            other => parts.push(json!({ "type": other })),
        }
    }
    if !parts.is_empty() || !calls.is_empty() || !thinking.is_empty() {
        let mut message = json!({ "role": role, "content": parts });
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        if !thinking.is_empty() {
            message["reasoning_content"] = json!(thinking);
        }
        out.push(message);
    }
    Ok(out)
}

/// `{"name", "description", "input_schema"}` as an OpenAI function tool.
fn tool_to_openai(i: usize, tool: &Value) -> Result<Value, ApiError> {
    if let Some(kind) = tool.get("type").and_then(Value::as_str).filter(|k| *k != "custom") {
        return Err(ApiError::invalid(format!(
            "tools[{i}] is Anthropic's server tool \"{kind}\", which runs only at Anthropic; give custom tools \
             (name, description, input_schema)"
        )));
    }
    let mut function = json!({ "name": tool.get("name") });
    if let Some(description) = tool.get("description") {
        function["description"] = description.clone();
    }
    function["parameters"] = tool.get("input_schema").cloned().unwrap_or(json!({ "type": "object" }));
    Ok(json!({ "type": "function", "function": function }))
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
    fn a_tool_loop_becomes_openai_messages() {
        let body = json!({
            "max_tokens": 64, "system": [{"type": "text", "text": "Be brief."}], "stop_sequences": ["END"],
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true},
            "thinking": {"type": "disabled"},
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "Use the tool."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {"type": "text", "text": "Thanks"}]},
            ],
        });
        let openai = to_openai(&body, true).unwrap();
        let messages = openai["messages"].as_array().unwrap();
        assert_eq!(messages[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(messages[2]["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(messages[2]["reasoning_content"], "Use the tool.");
        assert_eq!(messages[3], json!({"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}));
        assert_eq!(messages[4]["content"][0]["text"], "Thanks");
        assert_eq!(openai["stop"], json!(["END"]));
        assert_eq!(openai["tool_choice"]["function"]["name"], "get_weather");
        assert_eq!(openai["parallel_tool_calls"], false);
        assert_eq!(openai["chat_template_kwargs"]["enable_thinking"], false);
        assert_eq!(openai["tools"][0]["function"]["parameters"], json!({"type": "object"}));
    }

    #[test]
    fn anthropic_requests_are_checked() {
        let no_max = json!({"messages": [{"role": "user", "content": "hi"}]});
        assert!(to_openai(&no_max, true).unwrap_err().message.contains("`max_tokens` is missing"));
        assert!(to_openai(&no_max, false).is_ok(), "count_tokens takes no max_tokens");
        let server_tool =
            json!({"max_tokens": 5, "messages": [], "tools": [{"type": "web_search_20250305", "name": "w"}]});
        assert!(to_openai(&server_tool, true).unwrap_err().message.contains("server tool"));
        let error = error_body(&ApiError::invalid("bad"));
        assert_eq!(error, json!({"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}));
    }
}
