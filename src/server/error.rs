//! Errors answered as an HTTP status with an OpenAI-style body, `{"error": {"message", "type", "code"}}`.

use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::body::Body;
use crate::engine::EngineError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, code: Option<&'static str>, message: impl Into<String>) -> Self {
        Self { status, kind, code, message: message.into() }
    }

    /// 400: the request itself is wrong.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", None, message)
    }

    pub fn body(&self) -> Value {
        json!({ "error": { "message": self.message, "type": self.kind, "code": self.code } })
    }

    pub fn response(&self) -> Response<Body> {
        let mut response = json_response(self.status, &self.body());
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        let (status, kind, code) = match &error {
            EngineError::Loading { .. } | EngineError::Busy { .. } | EngineError::Unusable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", None)
            }
            EngineError::PromptTooLong { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", Some("context_length_exceeded"))
            }
            EngineError::Template(_)
            | EngineError::Grammar(_)
            | EngineError::BadRequest(_)
            | EngineError::TooMuchToEmbed { .. } => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
            EngineError::LoadFailed(_) | EngineError::Inference(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None)
            }
        };
        Self { status, kind, code, message: error.to_string() }
    }
}

pub fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .header(CACHE_CONTROL, "no-store")
        .body(Body::full(value.to_string()))
        .expect("valid response")
}

pub fn not_found(path: &str) -> Response<Body> {
    ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", None, format!("there is no API route {path}"))
        .response()
}

pub fn method_not_allowed(allowed: &'static str) -> Response<Body> {
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        None,
        format!("this route only answers {allowed}"),
    )
    .response();
    response.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static(allowed));
    response
}
