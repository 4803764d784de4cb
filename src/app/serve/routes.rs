//! HTTP handlers: `/v1/correct`, `/v1/chat/completions`, `/v1/models`, `/health`, `/metrics`,
//! and the middleware for the API key and per-request metrics.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use aligner::{Generation, GenerationConfig, Template};

use super::api::{self, ApiError, ChatRequest, CorrectRequest, GenerationOptions};
use super::listen::InFlight;
use super::metrics::Metrics;
use super::pool::{Job, JobEvent, Pool};
use super::upstream::Upstream;
use super::wire::{
    to_json, AlignerExtension, ChatChoice, ChatChunk, ChatCompletion, ChatHead, ChatMessageOut,
    ChunkDelta, CorrectDelta, CorrectResponse, Health, ModelEntry, ModelList,
};
use crate::app::report::{ErrorBody, Usage};

pub struct AppState {
    pub pool: Arc<Pool>,
    pub metrics: Metrics,
    pub defaults: GenerationConfig,
    pub model_name: String,
    pub provider: String,
    pub workers: usize,
    pub upstream: Option<Upstream>,
    /// sha256 of the API key: compared in constant time, whatever the given key's length.
    pub api_key: Option<[u8; 32]>,
    pub next_id: AtomicU64,
    pub in_flight: Arc<InFlight>,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
}

pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

type Shared = State<Arc<AppState>>;

impl AppState {
    fn submit(
        &self,
        question: String,
        answer: String,
        template: Option<Template>,
        config: GenerationConfig,
    ) -> Result<UnboundedReceiver<JobEvent>, ApiError> {
        let (events, rx) = unbounded_channel();
        let job = Job {
            question,
            answer,
            template,
            config,
            events,
        };
        self.pool.submit(job).map_err(|_| ApiError::busy(1))?;
        Ok(rx)
    }
}

/// Waits for the end of a job, ignoring its streamed text.
async fn finished(mut rx: UnboundedReceiver<JobEvent>) -> Result<Generation, ApiError> {
    while let Some(event) = rx.recv().await {
        if let JobEvent::Done(result) = event {
            return result.map_err(ApiError::from);
        }
    }
    Err(worker_stopped())
}

/// The job's events as a stream; it ends after `Done`. The first event is awaited before the
/// stream is returned, so a request that fails at once (a prompt too long for the context, a
/// crashed worker) is answered with its own status code rather than inside a 200 stream.
async fn job_stream(
    mut rx: UnboundedReceiver<JobEvent>,
) -> Result<impl Stream<Item = JobEvent>, ApiError> {
    let first = match rx.recv().await {
        Some(JobEvent::Done(Err(e))) => return Err(e.into()),
        Some(event) => event,
        None => return Err(worker_stopped()),
    };
    let done = matches!(first, JobEvent::Done(_));
    let rest = stream::unfold((!done).then_some(rx), |rx| async move {
        let mut rx = rx?;
        let event = rx.recv().await?;
        let done = matches!(event, JobEvent::Done(_));
        Some((event, (!done).then_some(rx)))
    });
    Ok(stream::once(async move { first }).chain(rest))
}

fn worker_stopped() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "the worker stopped before finishing the request",
    )
}

/// Server-sent events, one JSON body per event, then OpenAI's `[DONE]`.
fn sse(events: impl Stream<Item = String> + Send + 'static) -> Response {
    let frames = events
        .map(|text| Event::default().data(text))
        .chain(stream::once(async { Event::default().data("[DONE]") }))
        .map(Ok::<_, Infallible>);
    Sse::new(frames).into_response()
}

fn error_text(e: ApiError) -> String {
    to_json(&ErrorBody::new(&e.message, e.kind, e.status.as_u16()))
}

pub async fn correct(State(s): Shared, body: Bytes) -> Result<Response, ApiError> {
    let req: CorrectRequest = api::parse_body(&body)?;
    let (config, template) = req.options.apply(s.defaults.clone())?;
    let rx = s.submit(req.question, req.answer, template, config)?;
    if !req.options.stream {
        let g = finished(rx).await?;
        s.metrics.add_tokens(g.prompt_tokens, g.tokens.len());
        return Ok(Json(CorrectResponse::new(&g, &s.provider)).into_response());
    }
    let state = Arc::clone(&s);
    Ok(sse(job_stream(rx).await?.map(move |event| match event {
        JobEvent::Text(piece) => to_json(&CorrectDelta { delta: &piece }),
        JobEvent::Done(Ok(g)) => {
            state.metrics.add_tokens(g.prompt_tokens, g.tokens.len());
            to_json(&CorrectResponse {
                done: true,
                ..CorrectResponse::new(&g, &state.provider)
            })
        }
        JobEvent::Done(Err(e)) => error_text(e.into()),
    })))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub async fn chat(State(s): Shared, body: Bytes) -> Result<Response, ApiError> {
    let raw: Value = api::parse_body(&body)?;
    let req: ChatRequest = serde_json::from_value(raw.clone())
        .map_err(|e| ApiError::bad_request(format!("not a chat completion request: {e}")))?;
    req.check_supported()?;
    let question = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .ok_or_else(|| {
            ApiError::bad_request("messages hold no user message to correct an answer to")
        })?
        .text()?;
    let stream = req.options.stream;
    // With an upstream, the request's own options are for the upstream; the correction uses the
    // server's defaults, overridable through an `aligner` object. Without one, they are ours.
    let (options, original, upstream_usage, upstream_model) = match &s.upstream {
        Some(upstream) => {
            let mut forward = raw.clone();
            let ours = forward
                .as_object_mut()
                .and_then(|o| o.remove("aligner"))
                .unwrap_or(Value::Null);
            let options: GenerationOptions = if ours.is_null() {
                GenerationOptions::default()
            } else {
                serde_json::from_value(ours)
                    .map_err(|e| ApiError::bad_request(format!("invalid 'aligner' options: {e}")))?
            };
            let answer = upstream.answer(forward, stream).await?;
            (options, answer.text, answer.usage, answer.model)
        }
        None => {
            let last = req.messages.last().filter(|m| m.role == "assistant").ok_or_else(|| {
                ApiError::bad_request("without --upstream the last message must be the assistant answer to correct")
            })?;
            (req.options, last.text()?, Value::Null, None)
        }
    };
    let (config, template) = options.apply(s.defaults.clone())?;
    let rx = s.submit(question, original.clone(), template, config)?;
    let head = ChatHead {
        id: format!(
            "chatcmpl-aligner-{}",
            s.next_id.fetch_add(1, Ordering::Relaxed)
        ),
        object: "chat.completion",
        created: now(),
        model: req.model.clone().unwrap_or_else(|| s.model_name.clone()),
    };
    let extension = move |g: &Generation| AlignerExtension {
        original_answer: original.clone(),
        upstream_model: upstream_model.clone(),
        upstream_usage: upstream_usage.clone(),
        correction_usage: Usage::from(g),
    };
    if !stream {
        let g = finished(rx).await?;
        s.metrics.add_tokens(g.prompt_tokens, g.tokens.len());
        let body = ChatCompletion {
            head,
            choices: [ChatChoice {
                index: 0,
                message: ChatMessageOut {
                    role: "assistant",
                    content: &g.text,
                },
                finish_reason: g.finish_reason.openai_name(),
            }],
            usage: Usage::from(&g),
            aligner: extension(&g),
        };
        return Ok(Json(body).into_response());
    }
    let head = ChatHead {
        object: "chat.completion.chunk",
        ..head
    };
    let first = to_json(&ChatChunk::new(
        &head,
        ChunkDelta {
            role: Some("assistant"),
            content: Some(""),
        },
        None,
    ));
    let state = Arc::clone(&s);
    let events = job_stream(rx).await?.map(move |event| match event {
        JobEvent::Text(piece) => to_json(&ChatChunk::new(
            &head,
            ChunkDelta {
                role: None,
                content: Some(&piece),
            },
            None,
        )),
        JobEvent::Done(Ok(g)) => {
            state.metrics.add_tokens(g.prompt_tokens, g.tokens.len());
            let finish = g.finish_reason.openai_name();
            to_json(&ChatChunk {
                usage: Some(Usage::from(&g)),
                aligner: Some(extension(&g)),
                ..ChatChunk::new(&head, ChunkDelta::default(), Some(finish))
            })
        }
        JobEvent::Done(Err(e)) => error_text(e.into()),
    });
    Ok(sse(stream::once(async move { first }).chain(events)))
}

pub async fn models(State(s): Shared) -> Response {
    Json(ModelList {
        object: "list",
        data: [ModelEntry {
            id: &s.model_name,
            object: "model",
            created: 0,
            owned_by: "aligner",
        }],
    })
    .into_response()
}

/// The pool as it is: `ok`, `degraded` when a crashed worker could not be restarted, `down`
/// (with 503) when none is left.
pub async fn health(State(s): Shared) -> Response {
    let alive = s.pool.alive();
    let (status, code) = match alive {
        0 => ("down", StatusCode::SERVICE_UNAVAILABLE),
        n if n < s.workers => ("degraded", StatusCode::OK),
        _ => ("ok", StatusCode::OK),
    };
    let body = Health {
        status,
        model: &s.model_name,
        provider: &s.provider,
        workers: s.workers,
        workers_alive: alive,
        worker_restarts: s.pool.restarts(),
        busy: s.pool.busy(),
        queue_depth: s.pool.depth(),
        upstream: s.upstream.is_some(),
    };
    (code, Json(body)).into_response()
}

pub async fn metrics(State(s): Shared) -> impl IntoResponse {
    let text = s.metrics.render(&[
        (
            "aligner_queue_depth",
            "Requests waiting for a worker.",
            s.pool.depth() as f64,
        ),
        (
            "aligner_busy_workers",
            "Workers generating now.",
            s.pool.busy() as f64,
        ),
        (
            "aligner_workers",
            "Model sessions in the pool.",
            s.workers as f64,
        ),
        (
            "aligner_cancelled_total",
            "Generations stopped because the client left.",
            s.pool.cancelled() as f64,
        ),
        (
            "aligner_workers_alive",
            "Workers running (a crashed worker that could not be reloaded is gone).",
            s.pool.alive() as f64,
        ),
        (
            "aligner_worker_restarts_total",
            "Workers replaced after a crash.",
            s.pool.restarts() as f64,
        ),
    ]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is case-insensitive
/// (RFC 7235).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Requires `Authorization: Bearer <key>` on `/v1/*` when the server has a key.
pub async fn require_key(State(s): Shared, request: Request, next: Next) -> Response {
    if let Some(key) = &s.api_key {
        if request.uri().path().starts_with("/v1/") {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_token)
                .map(key_digest);
            let matches = given.is_some_and(|g| bool::from(g.ct_eq(key)));
            if !matches {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    "missing or wrong API key; send Authorization: Bearer <key>",
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

/// Reads the whole body within `--body-timeout` and `--max-body-bytes` before any handler
/// runs, answering 408 and 413 in OpenAI's error shape.
pub async fn read_body(State(s): Shared, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.max_body_bytes as u64) {
        return closing(too_large(s.max_body_bytes));
    }
    let read =
        tokio::time::timeout(s.body_timeout, axum::body::to_bytes(body, s.max_body_bytes)).await;
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            let over = std::error::Error::source(&e)
                .is_some_and(|c| c.is::<http_body_util::LengthLimitError>());
            return closing(if over {
                too_large(s.max_body_bytes)
            } else {
                ApiError::bad_request(format!("cannot read the request body: {e}"))
            });
        }
        Err(_) => {
            return closing(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                format!(
                    "the request body did not arrive within {} s; send it at once, or raise --body-timeout",
                    s.body_timeout.as_secs_f64()
                ),
            ))
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// An error answered before the body was read whole: the connection cannot carry another
/// request, and the client must be told so instead of reusing it.
fn closing(e: ApiError) -> Response {
    let mut response = e.into_response();
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        format!(
            "the request body is larger than {limit} bytes; send less, or raise --max-body-bytes"
        ),
    )
}

pub async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!(
            "no endpoint {}; use /v1/correct, /v1/chat/completions, /v1/models, /health or /metrics",
            request.uri().path()
        ),
    )
}

pub async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!(
            "{} is not allowed on {}; the /v1 endpoints take POST (GET for /v1/models)",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Counts the request as in flight until its response has been sent, streamed bodies included,
/// so that shutdown waits for it and for nothing else.
pub async fn track(State(s): Shared, request: Request, next: Next) -> Response {
    let guard = s.in_flight.enter();
    let response = next.run(request).await;
    let streamed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !streamed {
        return response;
    }
    response.map(|body| {
        Body::from_stream(body.into_data_stream().map(move |chunk| {
            let _held = &guard;
            chunk
        }))
    })
}

/// Counts every request by endpoint and status, with its latency (to the response head).
pub async fn record(State(s): Shared, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let endpoint = match path.as_str() {
        "/v1/correct" | "/v1/chat/completions" | "/v1/models" | "/health" | "/metrics" => path,
        _ => "other".to_string(),
    };
    let start = Instant::now();
    let response = next.run(request).await;
    s.metrics.record(
        &endpoint,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_keys_compare_by_digest() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("  BEARER   abc  "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("abc"), None);
        let key = key_digest("abc");
        assert!(bool::from(key_digest("abc").ct_eq(&key)));
        assert!(!bool::from(key_digest("abd").ct_eq(&key)));
        assert!(!bool::from(key_digest("abcd").ct_eq(&key)));
    }
}
