//! `/v1/chat/completions` and `/v1/completions`: a checked request (see `request.rs`) goes to the engine, and
//! its events come back whole or as server-sent events. Both endpoints share one path; they differ only in
//! the prompt they take and the shape of their choices.
//!
//! Once a stream has started, an error goes out as a `data: {"error": …}` event; never as text inside an
//! answer.

use std::time::{SystemTime, UNIX_EPOCH};

use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::body::{next_event, Body};
use super::error::{json_response, ApiError};
use super::reply::{Delta, Reply};
use super::request::{check_model, parse_chat, parse_completion, read_body, Kind};
use super::{off_socket_threads, AppState};
use crate::engine::{self, EngineError, Event, Finish, TokenLogprob};
use crate::llama::chat::ParsedMessage;

pub async fn chat_completions(state: &AppState, request: Request<Incoming>) -> Response<Body> {
    respond(state, request, Kind::Chat).await.unwrap_or_else(|error| error.response())
}

pub async fn completions(state: &AppState, request: Request<Incoming>) -> Response<Body> {
    respond(state, request, Kind::Text).await.unwrap_or_else(|error| error.response())
}

/// `/tokenize` (llama-server's route): `{"content", "add_special", "with_pieces"}` → the token ids, or
/// `{"id", "piece"}` objects with `with_pieces`. Scripts and the page count tokens with it.
pub async fn tokenize(state: &AppState, request: Request<Incoming>) -> Response<Body> {
    #[derive(serde::Deserialize)]
    struct Tokenize {
        content: String,
        #[serde(default)]
        add_special: bool,
        #[serde(default)]
        with_pieces: bool,
    }
    let count = async {
        let bytes = read_body(request).await?;
        let asked: Tokenize = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::invalid(format!("the request body is not a valid tokenize request ({{\"content\": …}}): {e}"))
        })?;
        let with_pieces = asked.with_pieces;
        let tokens =
            off_socket_threads(state, move |engine| engine.tokenize(&asked.content, asked.add_special)).await?;
        let tokens: Vec<Value> = tokens
            .into_iter()
            .map(|(id, piece)| if with_pieces { json!({ "id": id, "piece": piece }) } else { json!(id) })
            .collect();
        Ok::<_, ApiError>(json_response(StatusCode::OK, &json!({ "tokens": tokens })))
    };
    count.await.unwrap_or_else(|error| error.response())
}

/// `/apply-template` (llama-server's route): the prompt a chat request renders to, without generating.
pub async fn apply_template(state: &AppState, request: Request<Incoming>) -> Response<Body> {
    let render = async {
        let bytes = read_body(request).await?;
        let parsed = parse_chat(&bytes, &state.sampling)?;
        let prompt = off_socket_threads(state, move |engine| engine.apply_template(&parsed.request)).await?;
        Ok::<_, ApiError>(json_response(StatusCode::OK, &json!({ "prompt": prompt })))
    };
    render.await.unwrap_or_else(|error| error.response())
}

async fn respond(state: &AppState, request: Request<Incoming>, kind: Kind) -> Result<Response<Body>, ApiError> {
    let bytes = read_body(request).await?;
    let parsed = match kind {
        Kind::Chat => parse_chat(&bytes, &state.sampling)?,
        Kind::Text => parse_completion(&bytes, &state.sampling)?,
    };
    check_model(state, parsed.model.as_deref())?;
    let submitted = off_socket_threads(state, move |engine| engine.submit(parsed.request)).await?;
    let template_ms = submitted.template_ms;
    let (events, reply) = (submitted.events, submitted.reader.map(Reply::new));
    let answer = Answer {
        kind,
        id: format!("{}-{:x}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }, unique_id()),
        created: unix_time(),
        model: state.engine.info().name.clone(),
    };
    if parsed.stream {
        let (chunks, response) = Body::event_stream();
        tokio::spawn(stream(answer, events, reply, chunks, parsed.include_usage, parsed.echo, template_ms));
        return Ok(response);
    }
    whole(answer, events, reply, parsed.echo, template_ms).await
}

/// The fields every response object and stream chunk of one answer shares, and the shape of its choices.
struct Answer {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
}

impl Answer {
    fn object(&self, stream: bool) -> Value {
        let object = match (self.kind, stream) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        };
        json!({ "id": self.id, "object": object, "created": self.created, "model": self.model })
    }

    /// A chat stream chunk whose choice carries `delta`.
    fn chat_chunk(&self, delta: Value, logprobs: &[TokenLogprob]) -> Value {
        let mut chunk = self.with_choice(true, None, logprobs, 0, !logprobs.is_empty(), None);
        chunk["choices"][0]["delta"] = delta;
        chunk
    }

    /// A response or chunk with one choice holding `text`.
    fn with_choice(
        &self,
        stream: bool,
        text: Option<&str>,
        logprobs: &[TokenLogprob],
        text_offset: usize,
        want_logprobs: bool,
        finish: Option<engine::FinishReason>,
    ) -> Value {
        let mut choice = Map::new();
        choice.insert("index".into(), json!(0));
        match (self.kind, stream) {
            (Kind::Chat, false) => {
                choice.insert("message".into(), json!({ "role": "assistant", "content": text.unwrap_or_default() }));
            }
            (Kind::Chat, true) => {
                choice.insert("delta".into(), text.map_or(json!({}), |t| json!({ "content": t })));
            }
            (Kind::Text, _) => {
                choice.insert("text".into(), json!(text.unwrap_or_default()));
            }
        }
        let logprobs = match (self.kind, want_logprobs) {
            (_, false) => Value::Null,
            (Kind::Chat, true) => chat_logprobs(logprobs),
            (Kind::Text, true) => text_logprobs(logprobs, text_offset),
        };
        choice.insert("logprobs".into(), logprobs);
        choice.insert("finish_reason".into(), json!(finish));
        let mut value = self.object(stream);
        value["choices"] = json!([choice]);
        value
    }
}

/// Collects the whole answer, then responds once.
async fn whole(
    answer: Answer,
    mut events: mpsc::UnboundedReceiver<Event>,
    reply: Option<Reply>,
    echo: Option<String>,
    template_ms: f64,
) -> Result<Response<Body>, ApiError> {
    let mut text = echo.unwrap_or_default();
    // Offsets of `/v1/completions` logprobs count from the start of the returned text, echo included.
    let text_offset = text.len();
    let mut logprobs = Vec::new();
    let mut want_logprobs = false;
    while let Some(event) = events.recv().await {
        match event {
            Event::Text { text: piece, logprobs: pieces } => {
                text.push_str(&piece);
                want_logprobs |= !pieces.is_empty();
                logprobs.extend(pieces);
            }
            Event::Done(finish) => {
                let mut body =
                    answer.with_choice(false, Some(&text), &logprobs, text_offset, want_logprobs, Some(finish.reason));
                body["usage"] = usage(&finish);
                body["timings"] = timings(&finish);
                if let Some(mut reply) = reply {
                    reply.push(&text);
                    let (message, _) = reply.finish();
                    body["choices"][0]["message"] = chat_message(&message);
                    body["choices"][0]["finish_reason"] = finish_reason(finish.reason, !message.tool_calls.is_empty());
                    chat_timings(&mut body["timings"], template_ms, &reply);
                }
                return Ok(json_response(StatusCode::OK, &body));
            }
            Event::Failed(error) => return Err(error.into()),
        }
    }
    Err(EngineError::Inference("the engine stopped in the middle of the answer".into()).into())
}

/// Turns engine events into server-sent events until the answer ends or the client leaves.
async fn stream(
    answer: Answer,
    mut events: mpsc::UnboundedReceiver<Event>,
    mut reply: Option<Reply>,
    chunks: mpsc::Sender<Bytes>,
    include_usage: bool,
    echo: Option<String>,
    template_ms: f64,
) {
    let sse = |value: &Value| Bytes::from(format!("data: {value}\n\n"));
    // A failed send means the client has gone: returning drops `events`, which frees the slot.
    let mut text_offset = echo.as_ref().map_or(0, String::len);
    let first = match (answer.kind, echo) {
        (Kind::Chat, _) => {
            let mut chunk = answer.with_choice(true, None, &[], 0, false, None);
            chunk["choices"][0]["delta"] = json!({ "role": "assistant", "content": "" });
            Some(chunk)
        }
        (Kind::Text, Some(prompt)) => Some(answer.with_choice(true, Some(&prompt), &[], 0, false, None)),
        (Kind::Text, None) => None,
    };
    if let Some(chunk) = first {
        if chunks.send(sse(&chunk)).await.is_err() {
            return;
        }
    }
    // Log-probabilities of text whose reading has not produced a delta yet (a tool call's start).
    let mut held = Vec::new();
    // A piece that adds nothing yet (part of a tool call's marker) sends nothing; `next_event` notices a client
    // that left all the same.
    while let Some(event) = next_event(&mut events, &chunks).await {
        let chunk = match event {
            Event::Text { text, logprobs } if reply.is_some() => {
                held.extend(logprobs);
                let deltas = reply.as_mut().expect("a chat reply").push(&text);
                for delta in deltas {
                    let chunk = answer.chat_chunk(openai_delta(&delta), &std::mem::take(&mut held));
                    if chunks.send(sse(&chunk)).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            Event::Text { text, logprobs } => {
                let chunk = answer.with_choice(true, Some(&text), &logprobs, text_offset, !logprobs.is_empty(), None);
                text_offset += text.len();
                chunk
            }
            Event::Done(finish) => {
                let mut called = false;
                if let Some(reply) = &mut reply {
                    let (message, deltas) = reply.finish();
                    called = !message.tool_calls.is_empty();
                    for delta in deltas {
                        let chunk = answer.chat_chunk(openai_delta(&delta), &std::mem::take(&mut held));
                        if chunks.send(sse(&chunk)).await.is_err() {
                            return;
                        }
                    }
                }
                let mut last = answer.with_choice(true, None, &[], 0, false, Some(finish.reason));
                if answer.kind == Kind::Chat {
                    last["choices"][0]["finish_reason"] = finish_reason(finish.reason, called);
                }
                if answer.kind == Kind::Text {
                    last["choices"][0]["text"] = json!("");
                }
                last["timings"] = timings(&finish);
                if let Some(reply) = &reply {
                    chat_timings(&mut last["timings"], template_ms, reply);
                }
                if chunks.send(sse(&last)).await.is_err() {
                    return;
                }
                if include_usage {
                    let mut usage_chunk = answer.object(true);
                    usage_chunk["choices"] = json!([]);
                    usage_chunk["usage"] = usage(&finish);
                    if chunks.send(sse(&usage_chunk)).await.is_err() {
                        return;
                    }
                }
                let _ = chunks.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
                return;
            }
            Event::Failed(error) => ApiError::from(error).body(),
        };
        if chunks.send(sse(&chunk)).await.is_err() {
            return;
        }
    }
}

/// The assistant message of a whole answer: content (null when the answer is only tool calls), the thinking
/// in `reasoning_content` (llama-server's field) and the tool calls.
fn chat_message(message: &ParsedMessage) -> Value {
    let mut out = json!({ "role": "assistant", "content": message.content });
    if !message.reasoning_content.is_empty() {
        out["reasoning_content"] = json!(message.reasoning_content);
    }
    if !message.tool_calls.is_empty() {
        if message.content.is_empty() {
            out["content"] = Value::Null;
        }
        out["tool_calls"] = message
            .tool_calls
            .iter()
            .map(|call| {
                json!({ "id": call.id, "type": "function",
                        "function": { "name": call.name, "arguments": call.arguments } })
            })
            .collect();
    }
    out
}

/// One change of a streamed answer as the `delta` of an OpenAI chunk; a tool call's first delta carries its
/// id, type and name, later ones only argument text, as the official SDKs accumulate them.
fn openai_delta(delta: &Delta) -> Value {
    match delta {
        Delta::Content(text) => json!({ "content": text }),
        Delta::Reasoning(text) => json!({ "reasoning_content": text }),
        Delta::ToolCall { index, id, name, arguments } if !name.is_empty() => json!({ "tool_calls": [{
            "index": index, "id": id, "type": "function", "function": { "name": name, "arguments": arguments } }] }),
        Delta::ToolCall { index, arguments, .. } => {
            json!({ "tool_calls": [{ "index": index, "function": { "arguments": arguments } }] })
        }
    }
}

/// `tool_calls` when the answer ended by calling tools, as OpenAI says it.
fn finish_reason(reason: engine::FinishReason, called: bool) -> Value {
    match reason {
        engine::FinishReason::Stop if called => json!("tool_calls"),
        reason => json!(reason),
    }
}

/// OpenAI's chat shape: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
fn chat_logprobs(logprobs: &[TokenLogprob]) -> Value {
    let entry = |choice: &engine::TokenChoice| json!({ "token": choice.text, "logprob": choice.logprob, "bytes": choice.bytes });
    let content: Vec<Value> = logprobs
        .iter()
        .map(|lp| {
            let mut value = entry(&lp.chosen);
            value["top_logprobs"] = lp.top.iter().map(entry).collect();
            value
        })
        .collect();
    json!({ "content": content })
}

/// OpenAI's legacy completion shape: parallel lists of tokens, log-probabilities, alternatives and offsets.
fn text_logprobs(logprobs: &[TokenLogprob], start: usize) -> Value {
    let mut offset = start;
    let mut offsets = Vec::with_capacity(logprobs.len());
    for lp in logprobs {
        offsets.push(offset);
        offset += lp.chosen.text.len();
    }
    json!({
        "tokens": logprobs.iter().map(|lp| &lp.chosen.text).collect::<Vec<_>>(),
        "token_logprobs": logprobs.iter().map(|lp| lp.chosen.logprob).collect::<Vec<_>>(),
        "top_logprobs": logprobs
            .iter()
            .map(|lp| lp.top.iter().map(|c| (c.text.clone(), json!(c.logprob))).collect::<Map<_, _>>())
            .collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

pub(super) fn usage(finish: &Finish) -> Value {
    json!({
        "prompt_tokens": finish.prompt_tokens,
        "completion_tokens": finish.completion_tokens,
        "total_tokens": finish.prompt_tokens + finish.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": finish.cached_tokens },
    })
}

/// Timings in llama-server's shape; `prompt_n` counts only the prompt tokens that were processed, `draft_n` the
/// tokens speculation guessed and `draft_n_accepted` those the model kept.
fn timings(finish: &Finish) -> Value {
    let per_second = |n: u32, ms: f64| if ms > 0.0 { f64::from(n) * 1000.0 / ms } else { 0.0 };
    let processed = finish.prompt_tokens - finish.cached_tokens;
    json!({
        "cache_n": finish.cached_tokens,
        "prompt_n": processed,
        "prompt_ms": finish.prompt_ms,
        "prompt_per_second": per_second(processed, finish.prompt_ms),
        "predicted_n": finish.completion_tokens,
        "predicted_ms": finish.generation_ms,
        "predicted_per_second": per_second(finish.completion_tokens, finish.generation_ms),
        "draft_n": finish.drafted_tokens,
        "draft_n_accepted": finish.accepted_tokens,
    })
}

/// What the chat layer cost this answer: rendering the template and reading the answer back (stove's
/// additions to llama-server's timings).
fn chat_timings(timings: &mut Value, template_ms: f64, reply: &Reply) {
    timings["template_ms"] = json!(template_ms);
    timings["parse_ms"] = json!(reply.parse_ms());
}

pub fn unix_time() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(super) fn unique_id() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (nanos << 16) ^ u128::from(COUNTER.fetch_add(1, Ordering::Relaxed))
}
