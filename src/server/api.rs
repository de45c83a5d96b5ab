//! The OpenAI-compatible API (`/v1/chat/completions`, `/v1/models`), `/health`, and `/stove/info` for the page.
//!
//! Errors go out as an HTTP status with an OpenAI-style body, `{"error": {"message", "type", "code"}}`, or,
//! once a stream has started, as a `data: {"error": …}` event; never as text inside an answer.

use std::time::{SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::body::Body;
use super::AppState;
use crate::engine::{self, ChatMessage, EngineError, Event, Finish, LoadState, SamplingParams};

/// Largest request body accepted.
const MAX_BODY: usize = 4 << 20;

/// An error answered with a status and an OpenAI-style error body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    message: String,
}

impl ApiError {
    fn invalid(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, kind: "invalid_request_error", code: None, message: message.into() }
    }

    fn body(&self) -> Value {
        json!({ "error": { "message": self.message, "type": self.kind, "code": self.code } })
    }

    fn response(&self) -> Response<Body> {
        let mut response = json_response(self.status, &self.body());
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        let (status, kind, code) = match &error {
            EngineError::Loading { .. } | EngineError::Busy => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", None)
            }
            EngineError::PromptTooLong { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", Some("context_length_exceeded"))
            }
            EngineError::Template(_) => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
            EngineError::LoadFailed(_) | EngineError::Inference(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None)
            }
        };
        Self { status, kind, code, message: error.to_string() }
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .header(CACHE_CONTROL, "no-store")
        .body(Body::full(value.to_string()))
        .expect("valid response")
}

pub fn not_found(path: &str) -> Response<Body> {
    let mut error = ApiError::invalid(format!("there is no API route {path}"));
    error.status = StatusCode::NOT_FOUND;
    error.response()
}

pub fn method_not_allowed(allowed: &'static str) -> Response<Body> {
    let mut error = ApiError::invalid(format!("this route only answers {allowed}"));
    error.status = StatusCode::METHOD_NOT_ALLOWED;
    let mut response = error.response();
    response.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static(allowed));
    response
}

/// 200 when the model is ready, 503 with the loading progress while it loads.
pub fn health(state: &AppState) -> Response<Body> {
    match state.engine.state() {
        LoadState::Ready(_) => json_response(StatusCode::OK, &json!({ "status": "ok" })),
        LoadState::Loading { permille } => {
            let error = ApiError::from(EngineError::Loading { permille });
            let mut body = error.body();
            body["status"] = json!("loading");
            body["progress"] = json!(f64::from(permille) / 1000.0);
            let mut response = json_response(StatusCode::SERVICE_UNAVAILABLE, &body);
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
        LoadState::Failed(message) => {
            let mut body = ApiError::from(EngineError::LoadFailed(message)).body();
            body["status"] = json!("failed");
            json_response(StatusCode::INTERNAL_SERVER_ERROR, &body)
        }
    }
}

pub fn models(state: &AppState) -> Response<Body> {
    let info = state.engine.info();
    json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": [{
                "id": info.name,
                "object": "model",
                "created": unix_time(),
                "owned_by": "stove",
                "meta": {
                    "architecture": info.architecture,
                    "parameters": info.parameters,
                    "quantization": info.quantization,
                    "trained_context": info.trained_context,
                    "size": info.size,
                },
            }],
        }),
    )
}

/// The model, the runtime and the hardware, for the page's header.
pub fn info(state: &AppState) -> Response<Body> {
    let runtime = match state.engine.state() {
        LoadState::Ready(runtime) => Some(runtime),
        _ => None,
    };
    json_response(
        StatusCode::OK,
        &json!({
            "model": state.engine.info(),
            "runtime": runtime,
            "stove_version": env!("CARGO_PKG_VERSION"),
            "stove_commit": env!("STOVE_COMMIT"),
        }),
    )
}

#[derive(Debug, Deserialize)]
struct ChatCompletionRequest {
    messages: Vec<InMessage>,
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
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
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

/// A validated chat request.
struct ChatRequest {
    request: engine::Request,
    stream: bool,
    include_usage: bool,
}

fn parse_chat_request(bytes: &[u8], defaults: &SamplingParams) -> Result<ChatRequest, ApiError> {
    let raw: ChatCompletionRequest = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("the request body is not a valid chat completion request: {e}")))?;
    if raw.messages.is_empty() {
        return Err(ApiError::invalid("`messages` is empty; send at least one message"));
    }
    let messages = raw
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::invalid(format!(
                        "messages[{i}].role is \"{other}\"; use \"system\", \"user\" or \"assistant\""
                    )))
                }
            };
            let content = match m.content {
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
        })
        .collect::<Result<Vec<_>, _>>()?;

    let max_tokens = match raw.max_completion_tokens.or(raw.max_tokens) {
        None => None,
        Some(n) if n >= 1 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
        Some(n) => return Err(ApiError::invalid(format!("`max_tokens` is {n}; it must be at least 1"))),
    };
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
    Ok(ChatRequest {
        request: engine::Request { messages, sampling, max_tokens, stop },
        stream: raw.stream,
        include_usage: raw.stream_options.is_some_and(|o| o.include_usage),
    })
}

pub async fn chat_completions(state: &AppState, request: Request<Incoming>) -> Response<Body> {
    match chat_completions_inner(state, request).await {
        Ok(response) => response,
        Err(error) => error.response(),
    }
}

async fn chat_completions_inner(state: &AppState, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let bytes = read_body(request).await?;
    let chat = parse_chat_request(&bytes, &state.sampling)?;
    let mut events = state.engine.submit(chat.request)?;
    // The first event says whether the prompt fits; errors before it are answered with a status.
    match events.recv().await {
        Some(Event::Started) => {}
        Some(Event::Failed(error)) => return Err(error.into()),
        _ => return Err(EngineError::Inference("the engine ended the request without an answer".into()).into()),
    }
    let completion = Completion {
        id: format!("chatcmpl-{:x}", unique_id()),
        created: unix_time(),
        model: state.engine.info().name.clone(),
    };
    if chat.stream {
        let (chunks, receiver) = mpsc::channel(16);
        tokio::spawn(stream_chunks(completion, events, chunks, chat.include_usage));
        return Ok(Response::builder()
            .header(CONTENT_TYPE, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache")
            .body(Body::Stream(receiver))
            .expect("valid response"));
    }
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(piece) => text.push_str(&piece),
            Event::Done(finish) => {
                let mut body = completion.object("chat.completion");
                body["choices"] = json!([{
                    "index": 0,
                    "message": { "role": "assistant", "content": text },
                    "finish_reason": finish.reason,
                }]);
                body["usage"] = usage(&finish);
                body["timings"] = timings(&finish);
                return Ok(json_response(StatusCode::OK, &body));
            }
            Event::Failed(error) => return Err(error.into()),
            Event::Started => {}
        }
    }
    Err(EngineError::Inference("the engine stopped in the middle of the answer".into()).into())
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "invalid_request_error",
            code: None,
            message: format!("the request body is larger than {} MiB", MAX_BODY >> 20),
        }),
        Err(e) => Err(ApiError::invalid(format!("cannot read the request body: {e}"))),
    }
}

/// The fields every response object and stream chunk of one completion shares.
struct Completion {
    id: String,
    created: u64,
    model: String,
}

impl Completion {
    fn object(&self, object: &str) -> Value {
        json!({ "id": self.id, "object": object, "created": self.created, "model": self.model })
    }

    fn chunk(&self, delta: Value, finish_reason: Option<engine::FinishReason>) -> Value {
        let mut chunk = self.object("chat.completion.chunk");
        chunk["choices"] = json!([{ "index": 0, "delta": delta, "finish_reason": finish_reason }]);
        chunk
    }
}

/// Turns engine events into server-sent events until the answer ends or the client leaves.
async fn stream_chunks(
    completion: Completion,
    mut events: mpsc::Receiver<Event>,
    chunks: mpsc::Sender<Bytes>,
    include_usage: bool,
) {
    let sse = |value: &Value| Bytes::from(format!("data: {value}\n\n"));
    if chunks.send(sse(&completion.chunk(json!({ "role": "assistant", "content": "" }), None))).await.is_err() {
        return;
    }
    while let Some(event) = events.recv().await {
        let chunk = match event {
            Event::Text(text) => completion.chunk(json!({ "content": text }), None),
            Event::Done(finish) => {
                let mut last = completion.chunk(json!({}), Some(finish.reason));
                last["timings"] = timings(&finish);
                if chunks.send(sse(&last)).await.is_err() {
                    return;
                }
                if include_usage {
                    let mut usage_chunk = completion.object("chat.completion.chunk");
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
            Event::Started => continue,
        };
        // A failed send means the client has gone: returning drops `events`, which stops the generation.
        if chunks.send(sse(&chunk)).await.is_err() {
            return;
        }
    }
}

fn usage(finish: &Finish) -> Value {
    json!({
        "prompt_tokens": finish.prompt_tokens,
        "completion_tokens": finish.completion_tokens,
        "total_tokens": finish.prompt_tokens + finish.completion_tokens,
    })
}

/// Timings in llama-server's shape.
fn timings(finish: &Finish) -> Value {
    let per_second = |n: u32, ms: f64| if ms > 0.0 { f64::from(n) * 1000.0 / ms } else { 0.0 };
    json!({
        "prompt_n": finish.prompt_tokens,
        "prompt_ms": finish.prompt_ms,
        "prompt_per_second": per_second(finish.prompt_tokens, finish.prompt_ms),
        "predicted_n": finish.completion_tokens,
        "predicted_ms": finish.generation_ms,
        "predicted_per_second": per_second(finish.completion_tokens, finish.generation_ms),
    })
}

fn unix_time() -> u64 {
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

    fn parse(body: &str) -> Result<ChatRequest, ApiError> {
        parse_chat_request(body.as_bytes(), &SamplingParams::default())
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let cases = [
            ("{", "not a valid chat completion request"),
            ("{}", "missing field `messages`"),
            (r#"{"messages": []}"#, "`messages` is empty"),
            (r#"{"messages": "hi"}"#, "invalid type"),
            (r#"{"messages": [{"role": "wizard", "content": "hi"}]}"#, "messages[0].role"),
            (r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}"#, "`max_tokens` is -1"),
            (r#"{"messages": [{"role": "user", "content": "hi"}], "top_p": 7}"#, "`top_p` is 7"),
        ];
        for (body, expected) in cases {
            let error = parse(body).err().unwrap_or_else(|| panic!("{body} was accepted"));
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(error.message.contains(expected), "{body}: {}", error.message);
        }
    }

    #[test]
    fn a_good_request_keeps_its_settings() {
        let chat = parse(
            r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                "stream": true, "temperature": 0, "seed": 7, "max_tokens": 5, "stop": "\n"}"#,
        )
        .unwrap();
        assert!(chat.stream);
        assert_eq!(chat.request.max_tokens, Some(5));
        assert_eq!(chat.request.stop, vec!["\n"]);
        assert_eq!(chat.request.sampling.temperature, 0.0);
        assert_eq!(chat.request.sampling.seed, Some(7));
        assert_eq!(chat.request.messages, vec![ChatMessage { role: "user".into(), content: "hi".into() }]);
    }
}
