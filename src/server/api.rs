//! Wire types: the `/v1/correct` request, OpenAI chat requests and responses, and errors in
//! OpenAI's shape (`{"error": {"message", "type", "code"}}`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use aligner::{Generation, GenerationConfig, SamplingOverrides, Template};

/// An error answered to the client; the message names the problem and the fix.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
    pub fn busy(retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "all workers are busy and the queue is full; retry after the Retry-After delay",
            )
        }
    }
}

impl From<aligner::Error> for ApiError {
    fn from(e: aligner::Error) -> Self {
        match e {
            aligner::Error::InvalidRequest(_) | aligner::Error::ContextOverflow { .. } => {
                ApiError::bad_request(e.to_string())
            }
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                other.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind, "code": self.status.as_u16()}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

/// Parses a JSON body into `T`, answering malformed input with a 400 that says what is wrong.
pub fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "request body is not valid JSON for this endpoint: {e}"
        ))
    })
}

/// Generation options a request may set; unset ones keep the server's defaults.
#[derive(Debug, Default, Deserialize)]
pub struct GenerationOptions {
    #[serde(flatten)]
    pub sampling: SamplingOverrides,
    #[serde(default, deserialize_with = "one_or_many")]
    pub stop: Vec<String>,
    pub template: Option<String>,
    /// Never end on EOS (fixed-length runs, as vLLM's `ignore_eos`).
    #[serde(alias = "ignore_eos")]
    pub suppress_eos: Option<bool>,
    #[serde(default)]
    pub stream: bool,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
        Null,
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
        _ => Vec::new(),
    })
}

impl GenerationOptions {
    pub fn apply(
        &self,
        c: GenerationConfig,
    ) -> Result<(GenerationConfig, Option<Template>), ApiError> {
        let mut c = self.sampling.apply(c);
        if let Some(v) = self.suppress_eos {
            c = c.with_suppress_eos(v);
        }
        c = c.with_stop(self.stop.iter().cloned());
        c.validate()?;
        let template = self
            .template
            .as_deref()
            .map(Template::from_name)
            .transpose()?;
        Ok((c, template))
    }
}

#[derive(Debug, Deserialize)]
pub struct CorrectRequest {
    pub question: String,
    pub answer: String,
    #[serde(flatten)]
    pub options: GenerationOptions,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Value>,
}

impl ChatMessage {
    /// Text content, whether given as a string or as OpenAI's list of content parts.
    pub fn text(&self) -> String {
        match &self.content {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
            _ => String::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub model: Option<String>,
    #[serde(flatten)]
    pub options: GenerationOptions,
}

pub fn usage(g: &Generation) -> Value {
    json!({
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.tokens.len(),
        "total_tokens": g.prompt_tokens + g.tokens.len(),
    })
}

/// OpenAI's finish reasons: "stop" for EOS and stop strings, "length" for limits.
pub fn openai_finish(g: &Generation) -> &'static str {
    match g.finish_reason.as_str() {
        "eos" | "stop" => "stop",
        "cancelled" => "cancelled",
        _ => "length",
    }
}

pub fn correct_response(g: &Generation, provider: &str) -> Value {
    json!({
        "correction": g.text,
        "finish_reason": g.finish_reason.as_str(),
        "usage": usage(g),
        "timings": {
            "prefill_ms": g.timings.prefill_ms,
            "decode_ms": g.timings.decode_ms,
            "total_ms": g.timings.total_ms,
            "decode_tok_s": g.timings.decode_tok_s(g.tokens.len()),
        },
        "provider": provider,
    })
}
