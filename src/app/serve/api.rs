//! Wire types: the `/v1/correct` request, OpenAI chat requests and responses, and errors in
//! OpenAI's shape (`{"error": {"message", "type", "code"}}`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use aligner::{GenerationConfig, SamplingOverrides, Template};

use crate::app::report::ErrorBody;

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
        let body = ErrorBody::new(&self.message, self.kind, self.status.as_u16());
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
    /// Text content, whether given as a string or as OpenAI's list of text parts. Anything else
    /// (images, audio, a number) is refused: an Aligner reads text only, and dropping the rest
    /// silently would correct an answer to a question it never saw.
    pub fn text(&self) -> Result<String, ApiError> {
        match &self.content {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.get("type").and_then(Value::as_str), part.get("text")) {
                        (Some("text") | None, Some(Value::String(t))) => text.push_str(t),
                        (kind, _) => {
                            return Err(ApiError::bad_request(format!(
                                "a {} message has a content part of type {}; only text parts are supported",
                                self.role,
                                kind.unwrap_or("(none)")
                            )))
                        }
                    }
                }
                Ok(text)
            }
            Some(other) => Err(ApiError::bad_request(format!(
                "a {} message's content is a {}; send a string or a list of text parts",
                self.role,
                json_kind(other)
            ))),
        }
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub model: Option<String>,
    #[serde(flatten)]
    pub options: GenerationOptions,
    /// OpenAI options this server cannot honour; refused rather than silently ignored.
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(default)]
    pub tools: Option<Value>,
    #[serde(default)]
    pub functions: Option<Value>,
    #[serde(default)]
    pub response_format: Option<Value>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u64>,
}

impl ChatRequest {
    /// A 400 naming the first option set to something only other servers can do.
    pub fn check_supported(&self) -> Result<(), ApiError> {
        let empty = |v: &Option<Value>| match v {
            None | Some(Value::Null) => true,
            Some(Value::Array(a)) => a.is_empty(),
            _ => false,
        };
        let plain_text = match &self.response_format {
            None | Some(Value::Null) => true,
            Some(v) => v.get("type").and_then(Value::as_str) == Some("text"),
        };
        let refusal = if self.n.is_some_and(|n| n != 1) {
            Some("n > 1 (one correction per request)")
        } else if !empty(&self.tools) || !empty(&self.functions) {
            Some("tools and functions")
        } else if !plain_text {
            Some("response_format other than text")
        } else if self.logprobs == Some(true) || self.top_logprobs.is_some_and(|n| n > 0) {
            Some("logprobs")
        } else {
            None
        };
        match refusal {
            Some(what) => Err(ApiError::bad_request(format!(
                "{what} is not supported by aligner serve; remove it from the request"
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// JSON values of any shape, with the numbers and strings that trip parsers: huge and
    /// negative numbers, floats where counts belong, multibyte and empty strings.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            "\\PC{0,8}".prop_map(Value::from),
            Just(Value::from("é")),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("\\PC{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    const KEYS: &[&str] = &[
        "question",
        "answer",
        "max_tokens",
        "max_new_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repetition_penalty",
        "seed",
        "stop",
        "template",
        "suppress_eos",
        "ignore_eos",
        "stream",
        "messages",
        "model",
        "n",
        "tools",
        "functions",
        "response_format",
        "logprobs",
        "top_logprobs",
        "role",
        "content",
        "type",
        "text",
        "aligner",
    ];

    /// Objects over the keys the parsers read, each with any value.
    fn request_like() -> impl Strategy<Value = Value> {
        let message =
            proptest::collection::btree_map(proptest::sample::select(KEYS), any_json(), 0..4)
                .prop_map(|m| {
                    Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                });
        proptest::collection::btree_map(
            proptest::sample::select(KEYS),
            prop_oneof![
                any_json(),
                proptest::collection::vec(message, 0..3).prop_map(Value::from)
            ],
            0..8,
        )
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
    }

    /// What the handlers do with a body before it reaches a worker.
    fn handle(body: &[u8]) {
        if let Ok(req) = parse_body::<CorrectRequest>(body) {
            if let Ok((config, _)) = req.options.apply(GenerationConfig::default()) {
                assert!(config.validate().is_ok());
            }
        }
        if let Ok(req) = parse_body::<ChatRequest>(body) {
            let _ = req.check_supported();
            for m in &req.messages {
                let _ = m.text();
            }
            let _ = req.options.apply(GenerationConfig::default());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn request_parsers_never_panic_on_any_bytes(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            handle(&body);
        }

        #[test]
        fn request_parsers_never_panic_on_request_shaped_json(v in request_like()) {
            handle(v.to_string().as_bytes());
        }
    }

    #[test]
    fn options_that_cannot_be_honoured_are_named() {
        let req: ChatRequest = serde_json::from_str(r#"{"messages": [], "n": 3}"#).unwrap();
        assert!(req.check_supported().unwrap_err().message.contains("n > 1"));
        let req: ChatRequest = serde_json::from_str(
            r#"{"messages": [], "n": 1, "tools": [], "response_format": {"type": "text"}, "logprobs": false}"#,
        )
        .unwrap();
        assert!(req.check_supported().is_ok());
        let req: CorrectRequest =
            serde_json::from_str(r#"{"question": "q", "answer": "a", "max_completion_tokens": 7}"#)
                .unwrap();
        assert_eq!(req.options.sampling.max_new_tokens, Some(7));
    }
}
