//! OpenAI's Responses API, `/v1/responses`, on the same engine and chat layer: the input (text, or a list of
//! messages, function calls and their outputs) and `instructions` are converted into a chat completion request
//! and checked by the same code; the answer comes back as output items (`reasoning`, `message`,
//! `function_call`) or as the Responses event stream (`response.created` … `response.completed`), in the shapes
//! llama-server uses for the same route.
//!
//! Nothing is stored between requests, so `previous_response_id` is refused: send the whole conversation.

use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::body::{next_event, Body};
use super::completions::{unique_id, unix_time};
use super::error::{json_response, ApiError};
use super::reply::{Delta, Part, Parts, Reply};
use super::request::{check_model, parse_chat_json, read_body};
use super::{off_socket_threads, AppState};
use crate::engine::{Event, Finish, FinishReason};
use crate::llama::chat::ParsedMessage;

mod request;
use request::to_chat;

pub async fn responses(state: &AppState, request: Request<Incoming>) -> Response<Body> {
    respond(state, request).await.unwrap_or_else(|error| error.response())
}

async fn respond(state: &AppState, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let bytes = read_body(request).await?;
    let body: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}")))?;
    let parsed = parse_chat_json(to_chat(&body)?, &state.sampling)?;
    check_model(state, parsed.model.as_deref())?;
    let stream = parsed.stream;
    let submitted = off_socket_threads(state, move |engine| engine.submit(parsed.request)).await?;
    let reply = submitted.reader.map(Reply::new).expect("a chat request has a reader");
    let ids = Ids::new(state.engine.info().name.clone());
    if stream {
        let (chunks, response) = Body::event_stream();
        tokio::spawn(stream_events(ids, submitted.events, reply, chunks));
        return Ok(response);
    }
    let (message, finish) = reply.collect(submitted.events).await?;
    Ok(json_response(StatusCode::OK, &ids.response(Some(&finish), output_items(&ids, &message))))
}

/// The ids of one response and its items.
struct Ids {
    response: String,
    message: String,
    reasoning: String,
    model: String,
    created: u64,
}

impl Ids {
    fn new(model: String) -> Self {
        let id = unique_id();
        Ids {
            response: format!("resp_{id:x}"),
            message: format!("msg_{id:x}"),
            reasoning: format!("rs_{id:x}"),
            model,
            created: unix_time(),
        }
    }

    /// The response object: in progress without `finish`, else completed (or incomplete at the token limit).
    fn response(&self, finish: Option<&Finish>, output: Vec<Value>) -> Value {
        let mut response = json!({
            "id": self.response, "object": "response", "created_at": self.created, "model": self.model,
            "status": "in_progress", "output": output, "error": null, "incomplete_details": null,
        });
        if let Some(finish) = finish {
            response["status"] = json!("completed");
            if finish.reason == FinishReason::Length {
                response["status"] = json!("incomplete");
                response["incomplete_details"] = json!({ "reason": "max_output_tokens" });
            }
            response["usage"] = json!({
                "input_tokens": finish.prompt_tokens,
                "input_tokens_details": { "cached_tokens": finish.cached_tokens },
                "output_tokens": finish.completion_tokens,
                "output_tokens_details": { "reasoning_tokens": 0 },
                "total_tokens": finish.prompt_tokens + finish.completion_tokens,
            });
        }
        response
    }

    fn reasoning_item(&self, text: &str, status: &str) -> Value {
        let content = if text.is_empty() { json!([]) } else { json!([{ "type": "reasoning_text", "text": text }]) };
        json!({ "type": "reasoning", "id": self.reasoning, "summary": [], "content": content, "status": status })
    }

    fn message_item(&self, text: &str, status: &str) -> Value {
        let content = if status == "in_progress" { json!([]) } else { json!([output_text(text)]) };
        json!({ "type": "message", "id": self.message, "role": "assistant", "status": status, "content": content })
    }
}

fn output_text(text: &str) -> Value {
    json!({ "type": "output_text", "text": text, "annotations": [], "logprobs": [] })
}

fn call_item(id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({ "type": "function_call", "id": format!("fc_{id}"), "call_id": id, "name": name,
            "arguments": arguments, "status": status })
}

fn output_items(ids: &Ids, message: &ParsedMessage) -> Vec<Value> {
    let mut output = Vec::new();
    if !message.reasoning_content.is_empty() {
        output.push(ids.reasoning_item(&message.reasoning_content, "completed"));
    }
    if !message.content.is_empty() || message.tool_calls.is_empty() {
        output.push(ids.message_item(&message.content, "completed"));
    }
    for call in &message.tool_calls {
        output.push(call_item(&call.id, &call.name, &call.arguments, "completed"));
    }
    output
}

/// The Responses event stream. Each output item is added, filled with deltas, and done before the next.
async fn stream_events(
    ids: Ids,
    mut events: mpsc::UnboundedReceiver<Event>,
    mut reply: Reply,
    chunks: mpsc::Sender<Bytes>,
) {
    let mut sequence = 0u64;
    let mut event = |mut data: Value| {
        data["sequence_number"] = json!(sequence);
        sequence += 1;
        Bytes::from(format!("event: {}\ndata: {data}\n\n", data["type"].as_str().unwrap_or("")))
    };
    let mut out = vec![
        event(json!({ "type": "response.created", "response": ids.response(None, Vec::new()) })),
        event(json!({ "type": "response.in_progress", "response": ids.response(None, Vec::new()) })),
    ];
    let mut parts = Parts::default();
    // What the open item holds so far (its text, or a tool call's id, name and arguments).
    let mut text = String::new();
    let mut call = (String::new(), String::new());
    let mut done_items = Vec::new();
    while let Some(item) = next_event(&mut events, &chunks).await {
        let (deltas, finish) = match item {
            Event::Text { text, .. } => (reply.push(&text), None),
            Event::Done(finish) => (reply.finish().1, Some(finish)),
            Event::Failed(error) => {
                let error = ApiError::from(error);
                out.push(event(json!({ "type": "error", "code": error.kind, "message": error.message })));
                for chunk in out.drain(..) {
                    let _ = chunks.send(chunk).await;
                }
                return;
            }
        };
        for delta in deltas {
            let (closed, opened) = parts.enter(delta.part());
            if let Some((part, index)) = closed {
                let item =
                    close_item(&ids, part, index, &std::mem::take(&mut text), &call, &mut |e| out.push(event(e)));
                done_items.push(item);
            }
            let index = parts.current().expect("a part is open").1;
            match delta {
                Delta::Reasoning(piece) => {
                    if opened.is_some() {
                        let item = ids.reasoning_item("", "in_progress");
                        out.push(event(
                            json!({ "type": "response.output_item.added", "output_index": index, "item": item }),
                        ));
                    }
                    out.push(event(json!({ "type": "response.reasoning_text.delta", "item_id": ids.reasoning,
                        "output_index": index, "content_index": 0, "delta": piece })));
                    text.push_str(&piece);
                }
                Delta::Content(piece) => {
                    if opened.is_some() {
                        let item = ids.message_item("", "in_progress");
                        out.push(event(
                            json!({ "type": "response.output_item.added", "output_index": index, "item": item }),
                        ));
                        out.push(event(json!({ "type": "response.content_part.added", "item_id": ids.message,
                            "output_index": index, "content_index": 0, "part": output_text("") })));
                    }
                    out.push(event(json!({ "type": "response.output_text.delta", "item_id": ids.message,
                        "output_index": index, "content_index": 0, "delta": piece, "logprobs": [] })));
                    text.push_str(&piece);
                }
                Delta::ToolCall { id, name, arguments, .. } => {
                    if opened.is_some() {
                        call = (id.clone(), name.clone());
                        let item = call_item(&id, &name, "", "in_progress");
                        out.push(event(
                            json!({ "type": "response.output_item.added", "output_index": index, "item": item }),
                        ));
                    }
                    if !arguments.is_empty() {
                        out.push(event(json!({ "type": "response.function_call_arguments.delta",
                            "item_id": format!("fc_{}", call.0), "output_index": index, "delta": arguments })));
                        text.push_str(&arguments);
                    }
                }
            }
        }
        if let Some(finish) = finish {
            if let Some((part, index)) = parts.close() {
                let item =
                    close_item(&ids, part, index, &std::mem::take(&mut text), &call, &mut |e| out.push(event(e)));
                done_items.push(item);
            }
            let response = ids.response(Some(&finish), std::mem::take(&mut done_items));
            out.push(event(json!({ "type": "response.completed", "response": response })));
        }
        for chunk in out.drain(..) {
            if chunks.send(chunk).await.is_err() {
                return;
            }
        }
    }
}

/// The events that finish an output item, and the item as it ends.
fn close_item(
    ids: &Ids,
    part: Part,
    index: usize,
    text: &str,
    call: &(String, String),
    emit: &mut dyn FnMut(Value),
) -> Value {
    let item = match part {
        Part::Reasoning => {
            emit(json!({ "type": "response.reasoning_text.done", "item_id": ids.reasoning, "output_index": index,
                "content_index": 0, "text": text }));
            ids.reasoning_item(text, "completed")
        }
        Part::Content => {
            emit(json!({ "type": "response.output_text.done", "item_id": ids.message, "output_index": index,
                "content_index": 0, "text": text, "logprobs": [] }));
            emit(json!({ "type": "response.content_part.done", "item_id": ids.message, "output_index": index,
                "content_index": 0, "part": output_text(text) }));
            ids.message_item(text, "completed")
        }
        Part::ToolCall(_) => {
            emit(json!({ "type": "response.function_call_arguments.done", "item_id": format!("fc_{}", call.0),
                "output_index": index, "name": call.1, "arguments": text }));
            call_item(&call.0, &call.1, text, "completed")
        }
    };
    emit(json!({ "type": "response.output_item.done", "output_index": index, "item": item }));
    item
}
