//! `/v1/chat/completions` and `/v1/completions`: parsing and checking a request, then answering it whole or
//! as server-sent events. Both share one path; they differ only in the prompt they take and the shape of
//! their choices. `/v1/embeddings` is here too: it reads the same kind of prompt.
//!
//! Once a stream has started, an error goes out as a `data: {"error": …}` event; never as text inside an
//! answer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::body::Body;
use super::error::{json_response, ApiError};
use super::AppState;
use crate::engine::{self, ChatMessage, EngineError, Event, Finish, Prompt, SamplingParams, TokenLogprob};

/// Largest request body accepted.
const MAX_BODY: usize = 4 << 20;
/// Most messages in one chat request.
const MAX_MESSAGES: usize = 4096;
/// How long a client may take to send its request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// `max_tokens` when a `/v1/completions` request gives none (OpenAI's default there).
const DEFAULT_COMPLETION_TOKENS: u32 = 16;

/// Which endpoint: they share everything but the prompt and the shape of a choice.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

/// Settings both endpoints take.
#[derive(Debug, Deserialize)]
struct CommonFields {
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i32>,
    min_p: Option<f32>,
    seed: Option<i64>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    stop: Option<Stop>,
    n: Option<i64>,
    response_format: Option<ResponseFormat>,
    /// llama-server's extension: a GBNF grammar the answer must follow.
    grammar: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatCompletionRequest {
    messages: Vec<InMessage>,
    #[serde(default)]
    logprobs: bool,
    top_logprobs: Option<i64>,
    #[serde(flatten)]
    common: CommonFields,
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    prompt: PromptIn,
    logprobs: Option<i64>,
    #[serde(default)]
    echo: bool,
    suffix: Option<String>,
    #[serde(flatten)]
    common: CommonFields,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PromptIn {
    One(String),
    Many(Vec<Value>),
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormat {
    Text,
    /// Any JSON object; llama-server also takes a `schema` here.
    JsonObject {
        schema: Option<Value>,
    },
    JsonSchema {
        json_schema: JsonSchemaFormat,
    },
}

#[derive(Debug, Deserialize)]
struct JsonSchemaFormat {
    schema: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// A message's content: a string, or OpenAI's list of parts (only text parts are understood).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// A checked request, ready for the engine.
struct Parsed {
    request: engine::Request,
    stream: bool,
    include_usage: bool,
    /// `/v1/completions`' `echo`: the prompt goes before the answer.
    echo: Option<String>,
    /// The model the client asked for.
    model: Option<String>,
}

pub async fn chat_completions(state: &AppState, request: Request<Incoming>) -> Response<Body> {
    respond(state, request, Kind::Chat).await.unwrap_or_else(|error| error.response())
}

pub async fn completions(state: &AppState, request: Request<Incoming>) -> Response<Body> {
    respond(state, request, Kind::Text).await.unwrap_or_else(|error| error.response())
}

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

async fn respond(state: &AppState, request: Request<Incoming>, kind: Kind) -> Result<Response<Body>, ApiError> {
    let bytes = read_body(request).await?;
    let parsed = match kind {
        Kind::Chat => parse_chat(&bytes, &state.sampling)?,
        Kind::Text => parse_completion(&bytes, &state.sampling)?,
    };
    check_model(state, parsed.model.as_deref())?;
    // Rendering and tokenizing a long conversation takes a while; keep it off the threads that serve sockets.
    let engine = state.engine.clone();
    let events = tokio::task::spawn_blocking(move || engine.submit(parsed.request))
        .await
        .map_err(|e| EngineError::Inference(format!("the request could not be prepared: {e}")))??;
    let answer = Answer {
        kind,
        id: format!("{}-{:x}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }, unique_id()),
        created: unix_time(),
        model: state.engine.info().name.clone(),
    };
    if parsed.stream {
        let (chunks, receiver) = mpsc::channel(16);
        tokio::spawn(stream(answer, events, chunks, parsed.include_usage, parsed.echo));
        return Ok(Response::builder()
            .header(CONTENT_TYPE, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache")
            .body(Body::Stream(receiver))
            .expect("valid response"));
    }
    whole(answer, events, parsed.echo).await
}

/// Checks the `model` field against the one model served: a client asking for another should know.
fn check_model(state: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    let name = &state.engine.info().name;
    match model {
        Some(asked) if !asked.is_empty() && !asked.eq_ignore_ascii_case(name) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            format!("the model \"{asked}\" is not served here; this server serves \"{name}\" (see /v1/models)"),
        )),
        _ => Ok(()),
    }
}

fn parse_chat(bytes: &[u8], defaults: &SamplingParams) -> Result<Parsed, ApiError> {
    let raw: ChatCompletionRequest = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("the request body is not a valid chat completion request: {e}")))?;
    if raw.messages.is_empty() {
        return Err(ApiError::invalid("`messages` is empty; send at least one message"));
    }
    if raw.messages.len() > MAX_MESSAGES {
        return Err(ApiError::invalid(format!(
            "`messages` has {} messages; at most {MAX_MESSAGES} are accepted",
            raw.messages.len()
        )));
    }
    let messages = raw.messages.into_iter().enumerate().map(chat_message).collect::<Result<Vec<_>, _>>()?;
    let logprobs = match (raw.logprobs, raw.top_logprobs) {
        (false, None | Some(0)) => None,
        (false, Some(_)) => return Err(ApiError::invalid("`top_logprobs` needs `logprobs: true`")),
        (true, top) => Some(top_logprobs("top_logprobs", top.unwrap_or(0))?),
    };
    let mut parsed = common(raw.common, Kind::Chat, Prompt::Chat(messages), defaults)?;
    parsed.request.logprobs = logprobs;
    Ok(parsed)
}

fn parse_completion(bytes: &[u8], defaults: &SamplingParams) -> Result<Parsed, ApiError> {
    let raw: CompletionRequest = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("the request body is not a valid completion request: {e}")))?;
    let prompt = match raw.prompt {
        PromptIn::One(text) => text,
        PromptIn::Many(list) => match <[Value; 1]>::try_from(list) {
            Ok([Value::String(text)]) => text,
            _ => {
                return Err(ApiError::invalid(
                    "`prompt` must be one string (or a list of one string); send one request per prompt",
                ))
            }
        },
    };
    if raw.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("`suffix` (fill-in-the-middle) is not supported; leave it out"));
    }
    let logprobs = match raw.logprobs {
        None => None,
        Some(n) => Some(top_logprobs("logprobs", n)?),
    };
    let echo = raw.echo.then(|| prompt.clone());
    let mut parsed = common(raw.common, Kind::Text, Prompt::Text(prompt), defaults)?;
    parsed.request.logprobs = logprobs;
    parsed.echo = echo;
    Ok(parsed)
}

fn top_logprobs(field: &str, n: i64) -> Result<u8, ApiError> {
    u8::try_from(n).ok().filter(|&n| n <= engine::MAX_TOP_LOGPROBS).ok_or_else(|| {
        ApiError::invalid(format!("`{field}` is {n}; it must be between 0 and {}", engine::MAX_TOP_LOGPROBS))
    })
}

fn chat_message((i, message): (usize, InMessage)) -> Result<ChatMessage, ApiError> {
    let role = match message.role.as_str() {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        other => {
            return Err(ApiError::invalid(format!(
                "messages[{i}].role is \"{other}\"; use \"system\", \"user\" or \"assistant\""
            )))
        }
    };
    let content = match message.content {
        None => String::new(),
        Some(Content::Text(text)) => text,
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    (kind, _) => {
                        return Err(ApiError::invalid(format!(
                            "messages[{i}] has a \"{kind}\" part; this model only reads text"
                        )))
                    }
                }
            }
            text
        }
    };
    Ok(ChatMessage { role: role.to_string(), content })
}

/// The settings both endpoints share: sampling, limits, stop strings, output format.
fn common(raw: CommonFields, kind: Kind, prompt: Prompt, defaults: &SamplingParams) -> Result<Parsed, ApiError> {
    let max_tokens = match raw.max_completion_tokens.or(raw.max_tokens) {
        None if kind == Kind::Text => Some(DEFAULT_COMPLETION_TOKENS),
        None => None,
        // Past the context the engine stops with "length" anyway.
        Some(n) if n >= 1 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
        Some(n) => return Err(ApiError::invalid(format!("`max_tokens` is {n}; it must be at least 1"))),
    };
    if let Some(n) = raw.n.filter(|&n| n != 1) {
        return Err(ApiError::invalid(format!("`n` is {n}; stove gives one choice per request, so leave `n` at 1")));
    }
    let mut sampling = defaults.clone();
    if let Some(t) = raw.temperature {
        if !(0.0..=100.0).contains(&t) {
            return Err(ApiError::invalid(format!("`temperature` is {t}; it must be 0 or more")));
        }
        sampling.temperature = t;
    }
    if let Some(p) = raw.top_p {
        if !(0.0..=1.0).contains(&p) {
            return Err(ApiError::invalid(format!("`top_p` is {p}; it must be between 0 and 1")));
        }
        sampling.top_p = p;
    }
    if let Some(p) = raw.min_p {
        if !(0.0..=1.0).contains(&p) {
            return Err(ApiError::invalid(format!("`min_p` is {p}; it must be between 0 and 1")));
        }
        sampling.min_p = p;
    }
    if let Some(k) = raw.top_k {
        sampling.top_k = k.max(0);
    }
    if let Some(seed) = raw.seed {
        // OpenAI seeds are 64-bit; llama.cpp's are 32-bit.
        sampling.seed = Some(seed as u32);
    }
    let stop = match raw.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(list)) => list,
    };
    let grammar = match (raw.response_format, raw.grammar) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("give either `response_format` or `grammar`, not both")),
        (None | Some(ResponseFormat::Text), grammar) => grammar,
        (Some(ResponseFormat::JsonObject { schema }), None) => {
            Some(schema_grammar(&schema.unwrap_or_else(|| json!({ "type": "object" })))?)
        }
        (Some(ResponseFormat::JsonSchema { json_schema }), None) => {
            let schema = json_schema.schema.ok_or_else(|| {
                ApiError::invalid("`response_format.json_schema.schema` is missing; give the JSON schema there")
            })?;
            Some(schema_grammar(&schema)?)
        }
    };
    Ok(Parsed {
        request: engine::Request { prompt, sampling, max_tokens, stop, grammar, logprobs: None },
        stream: raw.stream,
        include_usage: raw.stream_options.is_some_and(|o| o.include_usage),
        echo: None,
        model: raw.model,
    })
}

/// llama.cpp's JSON-schema-to-grammar conversion: the answer can then only be JSON matching the schema.
fn schema_grammar(schema: &Value) -> Result<String, ApiError> {
    llama_cpp_2::json_schema_to_grammar(&schema.to_string()).map_err(|e| {
        ApiError::invalid(format!("the JSON schema in `response_format` cannot be turned into a grammar: {e}"))
    })
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    let collect = Limited::new(request.into_body(), MAX_BODY).collect();
    match tokio::time::timeout(BODY_TIMEOUT, collect).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            None,
            format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            None,
            format!("the request body is larger than {} MiB", MAX_BODY >> 20),
        )),
        Ok(Err(e)) => Err(ApiError::invalid(format!("cannot read the request body: {e}"))),
    }
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
    echo: Option<String>,
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
    chunks: mpsc::Sender<Bytes>,
    include_usage: bool,
    echo: Option<String>,
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
    while let Some(event) = events.recv().await {
        let chunk = match event {
            Event::Text { text, logprobs } => {
                let chunk = answer.with_choice(true, Some(&text), &logprobs, text_offset, !logprobs.is_empty(), None);
                text_offset += text.len();
                chunk
            }
            Event::Done(finish) => {
                let mut last = answer.with_choice(true, None, &[], 0, false, Some(finish.reason));
                if answer.kind == Kind::Text {
                    last["choices"][0]["text"] = json!("");
                }
                last["timings"] = timings(&finish);
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

fn usage(finish: &Finish) -> Value {
    json!({
        "prompt_tokens": finish.prompt_tokens,
        "completion_tokens": finish.completion_tokens,
        "total_tokens": finish.prompt_tokens + finish.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": finish.cached_tokens },
    })
}

/// Timings in llama-server's shape; `prompt_n` counts only the prompt tokens that were processed.
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
    })
}

pub fn unix_time() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn unique_id() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (nanos << 16) ^ u128::from(COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<Parsed, ApiError> {
        parse_chat(body.as_bytes(), &SamplingParams::default())
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let many = format!(r#"{{"messages": [{}]}}"#, vec![r#"{"role":"user","content":"hi"}"#; 5000].join(","));
        let cases = [
            ("{", "not a valid chat completion request"),
            ("{}", "missing field `messages`"),
            (r#"{"messages": []}"#, "`messages` is empty"),
            (r#"{"messages": "hi"}"#, "invalid type"),
            (r#"{"messages": [{"role": "wizard", "content": "hi"}]}"#, "messages[0].role"),
            (r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}"#, "`max_tokens` is -1"),
            (r#"{"messages": [{"role": "user", "content": "hi"}], "top_p": 7}"#, "`top_p` is 7"),
            (r#"{"messages": [{"role": "user", "content": "hi"}], "n": 3}"#, "`n` is 3"),
            (r#"{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}"#, "needs `logprobs: true`"),
            (
                r#"{"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 99}"#,
                "between 0 and 20",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_schema", "json_schema": {}}}"#,
                "json_schema.schema` is missing",
            ),
            (&many, "at most 4096"),
        ];
        for (body, expected) in cases {
            let error = chat(body).err().unwrap_or_else(|| panic!("{body} was accepted"));
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(error.message.contains(expected), "{body}: {}", error.message);
        }
    }

    #[test]
    fn a_good_request_keeps_its_settings() {
        let parsed = chat(
            r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                "stream": true, "temperature": 0, "seed": 7, "max_tokens": 5, "stop": "\n",
                "logprobs": true, "top_logprobs": 2}"#,
        )
        .unwrap();
        assert!(parsed.stream);
        let request = parsed.request;
        assert_eq!(request.max_tokens, Some(5));
        assert_eq!(request.stop, vec!["\n"]);
        assert_eq!(request.sampling.temperature, 0.0);
        assert_eq!(request.sampling.seed, Some(7));
        assert_eq!(request.logprobs, Some(2));
        assert_eq!(request.prompt, Prompt::Chat(vec![ChatMessage { role: "user".into(), content: "hi".into() }]));
    }

    #[test]
    fn json_formats_become_grammars() {
        let parsed = chat(
            r#"{"messages": [{"role": "user", "content": "hi"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema":
                    {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}}}}"#,
        )
        .unwrap();
        let grammar = parsed.request.grammar.unwrap();
        assert!(grammar.contains("root ::="), "{grammar}");
        assert!(grammar.contains("age"), "{grammar}");
        let object =
            chat(r#"{"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}}"#);
        assert!(object.unwrap().request.grammar.is_some());
    }

    #[test]
    fn completions_take_one_prompt() {
        let parse = |body: &str| parse_completion(body.as_bytes(), &SamplingParams::default());
        let parsed = parse(r#"{"prompt": "Once upon", "echo": true, "logprobs": 1}"#).unwrap();
        assert_eq!(parsed.request.prompt, Prompt::Text("Once upon".into()));
        assert_eq!(parsed.request.max_tokens, Some(DEFAULT_COMPLETION_TOKENS));
        assert_eq!(parsed.echo.as_deref(), Some("Once upon"));
        assert_eq!(parsed.request.logprobs, Some(1));
        assert!(parse(r#"{"prompt": ["a"]}"#).is_ok());
        assert!(parse(r#"{"prompt": ["a", "b"]}"#).err().unwrap().message.contains("one request per prompt"));
        assert!(parse(r#"{"prompt": "a", "suffix": "b"}"#).err().unwrap().message.contains("suffix"));
    }
}
