//! Reading a completion request: the body (size and time limits), the JSON shapes OpenAI clients send, and
//! the checks that turn them into an `engine::Request` or a 4xx naming what was wrong.

use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::conversation::ChatFields;
use super::error::ApiError;
use super::AppState;
use crate::engine::{self, Prompt, SamplingParams};

/// Largest request body accepted.
const MAX_BODY: usize = 4 << 20;
/// How long a client may take to send its request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// `max_tokens` when a `/v1/completions` request gives none (OpenAI's default there).
const DEFAULT_COMPLETION_TOKENS: u32 = 16;
/// Most stop strings, and their bytes in all (OpenAI takes 4 strings; llama-server any number).
const MAX_STOPS: usize = 16;
const MAX_STOP_BYTES: usize = 4096;
/// Most tokens a request may bias (OpenAI allows 300).
const MAX_LOGIT_BIAS: usize = 1024;

/// Which endpoint: they share everything but the prompt and the shape of a choice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Kind {
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
    /// Token id (as text) → bias from -100 to 100, added to that token's logit.
    logit_bias: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
struct ChatCompletionRequest {
    #[serde(flatten)]
    chat: ChatFields,
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
pub(super) enum PromptIn {
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
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// A checked request, ready for the engine.
pub(super) struct Parsed {
    pub(super) request: engine::Request,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    /// `/v1/completions`' `echo`: the prompt goes before the answer.
    pub(super) echo: Option<String>,
    /// The model the client asked for.
    pub(super) model: Option<String>,
}

/// Checks the `model` field against the one model served: a client asking for another should know.
pub(super) fn check_model(state: &AppState, model: Option<&str>) -> Result<(), ApiError> {
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

pub(super) fn parse_chat(bytes: &[u8], defaults: &SamplingParams) -> Result<Parsed, ApiError> {
    let raw: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("the request body is not a valid chat completion request: {e}")))?;
    parse_chat_json(raw, defaults)
}

/// A chat completion request already read as JSON (the Anthropic and Responses routes convert theirs into one).
pub(super) fn parse_chat_json(body: Value, defaults: &SamplingParams) -> Result<Parsed, ApiError> {
    let raw: ChatCompletionRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::invalid(format!("the request body is not a valid chat completion request: {e}")))?;
    let chat = raw.chat.into_prompt()?;
    let logprobs = match (raw.logprobs, raw.top_logprobs) {
        (false, None | Some(0)) => None,
        (false, Some(_)) => return Err(ApiError::invalid("`top_logprobs` needs `logprobs: true`")),
        (true, top) => Some(top_logprobs("top_logprobs", top.unwrap_or(0))?),
    };
    let mut parsed = common(raw.common, Kind::Chat, Prompt::Chat(chat), defaults)?;
    parsed.request.logprobs = logprobs;
    Ok(parsed)
}

pub(super) fn parse_completion(bytes: &[u8], defaults: &SamplingParams) -> Result<Parsed, ApiError> {
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
    // Every generated token is checked against every stop string on the engine's shared thread.
    let stop_bytes: usize = stop.iter().map(String::len).sum();
    if stop.len() > MAX_STOPS || stop_bytes > MAX_STOP_BYTES {
        return Err(ApiError::invalid(format!(
            "`stop` has {} strings of {stop_bytes} bytes; at most {MAX_STOPS} strings of {MAX_STOP_BYTES} bytes in all \
             are accepted",
            stop.len()
        )));
    }
    for (token, bias) in raw.logit_bias.unwrap_or_default() {
        let id = token.parse::<i32>().ok().filter(|id| *id >= 0).ok_or_else(|| {
            ApiError::invalid(format!("`logit_bias` has the key \"{token}\"; keys are token ids (0, 1, 2, …)"))
        })?;
        let bias = bias.as_f64().filter(|b| (-100.0..=100.0).contains(b)).ok_or_else(|| {
            ApiError::invalid(format!(
                "`logit_bias` gives token {token} the bias {bias}; use a number from -100 to 100"
            ))
        })?;
        sampling.logit_bias.push((id, bias as f32));
    }
    if sampling.logit_bias.len() > MAX_LOGIT_BIAS {
        return Err(ApiError::invalid(format!("`logit_bias` has more than {MAX_LOGIT_BIAS} tokens")));
    }
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

/// Largest oversized body read (and dropped) so that its sender gets the 413; larger ones are cut off.
const MAX_DRAINED: u64 = 64 << 20;

pub(super) async fn read_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            None,
            format!("the request body is larger than {} MiB", MAX_BODY >> 20),
        )
    };
    // A Content-Length over the limit is refused without keeping any of it. Up to MAX_DRAINED, the body is
    // still read and dropped first: a client that sends it all before reading (most do) then gets this
    // answer, where closing early would show it only a broken pipe.
    let declared = request.body().size_hint().lower();
    if declared > MAX_BODY as u64 {
        if declared <= MAX_DRAINED {
            let mut body = request.into_body();
            let drain = async { while let Some(Ok(_)) = body.frame().await {} };
            let _ = tokio::time::timeout(BODY_TIMEOUT, drain).await;
        }
        return Err(too_large());
    }
    let collect = Limited::new(request.into_body(), MAX_BODY).collect();
    match tokio::time::timeout(BODY_TIMEOUT, collect).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            None,
            format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::invalid(format!("cannot read the request body: {e}"))),
    }
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
        let Prompt::Chat(chat) = request.prompt else { panic!("a chat") };
        assert_eq!(chat.messages, vec![json!({ "role": "user", "content": "hi" })]);
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
