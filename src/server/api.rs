//! The small routes: `/health`, `/v1/models`, `/stove/info` for the page, and `/metrics` for Prometheus.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde_json::json;

use super::body::Body;
use super::completions::unix_time;
use super::error::{json_response, ApiError};
use super::AppState;
use crate::engine::{EngineError, LoadState, Metrics};

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
        LoadState::Unusable(message) => {
            let mut body = ApiError::from(EngineError::Unusable(message)).body();
            body["status"] = json!("unusable");
            body["workers"] = json!(crate::rpc::remote::status());
            json_response(StatusCode::SERVICE_UNAVAILABLE, &body)
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
            "workers": crate::rpc::remote::status(),
            "chat_template": state.engine.template().map(|t| json!({
                "origin": t.origin,
                "supports_thinking": t.info.supports_thinking,
                "caps": t.info.caps,
            })),
            // What a request that sets nothing gets: the page starts each conversation's settings from these.
            "defaults": {
                "system_prompt": state.engine.system_prompt(),
                "temperature": decimal(state.sampling.temperature),
                "top_k": state.sampling.top_k,
                "top_p": decimal(state.sampling.top_p),
                "min_p": decimal(state.sampling.min_p),
                "seed": state.sampling.seed,
            },
            "sandbox": state.sandbox.report(),
            "stove_version": env!("CARGO_PKG_VERSION"),
            "stove_commit": env!("STOVE_COMMIT"),
        }),
    )
}

/// An `f32` as the decimal people typed (0.8), not its nearest double (0.800000011920929).
fn decimal(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

/// HTTP responses by status class (1xx to 5xx), for `/metrics`.
#[derive(Debug, Default)]
pub struct HttpCounters {
    by_class: [AtomicU64; 5],
}

impl HttpCounters {
    pub fn record(&self, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Relaxed);
    }
}

/// Prometheus' text format. A handful of counters do not need a metrics library: each is one line.
pub fn metrics(state: &AppState) -> Response<Body> {
    let m = state.engine.metrics();
    let get = Metrics::get;
    let seconds = |micros: &AtomicU64| get(micros) as f64 / 1e6;
    let slots = match state.engine.state() {
        LoadState::Ready(runtime) => runtime.parallel,
        _ => 0,
    };
    let decode_seconds = seconds(&m.decode_micros);
    let throughput = if decode_seconds > 0.0 { get(&m.decode_tokens) as f64 / decode_seconds } else { 0.0 };
    let table: [(&str, &str, &str, f64); 23] = [
        ("slots", "gauge", "Conversations the engine decodes at once.", f64::from(slots)),
        ("slots_busy", "gauge", "Slots generating now.", get(&m.busy_slots) as f64),
        ("requests_waiting", "gauge", "Requests queued for a free slot.", get(&m.waiting) as f64),
        ("requests_finished_total", "counter", "Generations that ran to their end.", get(&m.finished) as f64),
        (
            "requests_cancelled_total",
            "counter",
            "Generations stopped because the client left.",
            get(&m.cancelled) as f64,
        ),
        ("prompt_tokens_total", "counter", "Prompt tokens of finished requests.", get(&m.prompt_tokens) as f64),
        (
            "prompt_tokens_cached_total",
            "counter",
            "Prompt tokens found in a slot's cache and not processed again.",
            get(&m.cached_prompt_tokens) as f64,
        ),
        (
            "completion_tokens_total",
            "counter",
            "Tokens generated by finished requests.",
            get(&m.completion_tokens) as f64,
        ),
        (
            "prompt_seconds_total",
            "counter",
            "Time finished requests spent on their prompts.",
            seconds(&m.prompt_micros),
        ),
        (
            "generation_seconds_total",
            "counter",
            "Time finished requests spent generating.",
            seconds(&m.generation_micros),
        ),
        (
            "draft_tokens_total",
            "counter",
            "Tokens speculation guessed and decoded for finished requests.",
            get(&m.drafted_tokens) as f64,
        ),
        (
            "draft_tokens_accepted_total",
            "counter",
            "Guessed tokens the model agreed with: each saved a decode.",
            get(&m.accepted_tokens) as f64,
        ),
        (
            "decode_calls_total",
            "counter",
            "llama.cpp decode calls (one serves every busy slot).",
            get(&m.decode_calls) as f64,
        ),
        ("decode_tokens_total", "counter", "Tokens passed to llama.cpp decode.", get(&m.decode_tokens) as f64),
        ("decode_seconds_total", "counter", "Time spent in llama.cpp decode.", decode_seconds),
        ("decode_tokens_per_second", "gauge", "Tokens decoded per second of decoding, over the uptime.", throughput),
        ("embedded_inputs_total", "counter", "Texts embedded.", get(&m.embedded_inputs) as f64),
        ("embedded_tokens_total", "counter", "Tokens decoded for embeddings.", get(&m.embedded_tokens) as f64),
        (
            "embeddings_cancelled_total",
            "counter",
            "Embedding requests dropped because the client left.",
            get(&m.embeddings_cancelled) as f64,
        ),
        ("uptime_seconds", "gauge", "Seconds since the server started.", state.started.elapsed().as_secs_f64()),
        ("connections_open", "gauge", "HTTP connections open now.", state.connections.count() as f64),
        (
            "connections_closed_silent_total",
            "counter",
            "Connections closed because they sent nothing, to make room or after 10 s.",
            get(&state.connections.closed_silent) as f64,
        ),
        (
            "connections_refused_total",
            "counter",
            "Connections closed at once because every place was busy with a request.",
            get(&state.connections.refused) as f64,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in table {
        let _ = writeln!(out, "# HELP stove_{name} {help}\n# TYPE stove_{name} {kind}\nstove_{name} {value}");
    }
    let _ = writeln!(out, "# HELP stove_http_responses_total HTTP responses by status class.");
    let _ = writeln!(out, "# TYPE stove_http_responses_total counter");
    for (i, counter) in state.http.by_class.iter().enumerate() {
        let _ = writeln!(out, "stove_http_responses_total{{class=\"{}xx\"}} {}", i + 1, counter.load(Relaxed));
    }
    let workers = crate::rpc::remote::status();
    type Value = fn(&crate::rpc::remote::WorkerStatus) -> u64;
    let worker_table: [(&str, &str, &str, Value); 3] = [
        ("worker_up", "gauge", "1 while a --worker's link is up, 0 once it is lost.", |w| u64::from(w.error.is_none())),
        ("worker_sent_bytes_total", "counter", "ggml's bytes sent to a worker over the link.", |w| w.bytes_sent),
        ("worker_received_bytes_total", "counter", "ggml's bytes received from a worker.", |w| w.bytes_received),
    ];
    for (name, kind, help, value) in worker_table.iter().filter(|_| !workers.is_empty()) {
        let _ = writeln!(out, "# HELP stove_{name} {help}\n# TYPE stove_{name} {kind}");
        for worker in &workers {
            let _ = writeln!(out, "stove_{name}{{worker=\"{}\"}} {}", worker.address, value(worker));
        }
    }
    Response::builder()
        .header(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
        .header(CACHE_CONTROL, "no-store")
        .body(Body::full(out))
        .expect("valid response")
}
