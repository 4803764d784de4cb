//! HTTP handlers: `/v1/correct`, `/v1/chat/completions`, `/v1/models`, `/health`, `/metrics`,
//! and the middleware for the API key and per-request metrics.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::Value;
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

/// A chat request resolved: the question, the answer to correct (the upstream's, or the
/// last assistant message), and the options of the correction.
struct ChatTurn {
    question: String,
    original: String,
    options: GenerationOptions,
    stream: bool,
    model: Option<String>,
    upstream_usage: Value,
    upstream_model: Option<String>,
}

/// Parses a chat request and, with `--upstream`, asks the upstream for the answer. With an
/// upstream, the request's own options are for the upstream; the correction uses the server's
/// defaults, overridable through an `aligner` object. Without one, they are ours.
async fn chat_turn(s: &AppState, body: &[u8]) -> Result<ChatTurn, ApiError> {
    let raw: Value = api::parse_body(body)?;
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
    let mut turn = ChatTurn {
        question,
        original: String::new(),
        options: GenerationOptions::default(),
        stream,
        model: req.model.clone(),
        upstream_usage: Value::Null,
        upstream_model: None,
    };
    match &s.upstream {
        Some(upstream) => {
            let mut forward = raw;
            let ours = forward
                .as_object_mut()
                .and_then(|o| o.remove("aligner"))
                .unwrap_or(Value::Null);
            if !ours.is_null() {
                turn.options = serde_json::from_value(ours).map_err(|e| {
                    ApiError::bad_request(format!("invalid 'aligner' options: {e}"))
                })?;
            }
            let answer = upstream.answer(forward, stream).await?;
            turn.original = answer.text;
            turn.upstream_usage = answer.usage;
            turn.upstream_model = answer.model;
        }
        None => {
            let last = req.messages.last().filter(|m| m.role == "assistant").ok_or_else(|| {
                ApiError::bad_request("without --upstream the last message must be the assistant answer to correct")
            })?;
            turn.original = last.text()?;
            turn.options = req.options;
        }
    }
    Ok(turn)
}

pub async fn chat(State(s): Shared, body: Bytes) -> Result<Response, ApiError> {
    let ChatTurn {
        question,
        original,
        options,
        stream,
        model,
        upstream_usage,
        upstream_model,
    } = chat_turn(&s, &body).await?;
    let (config, template) = options.apply(s.defaults.clone())?;
    let rx = s.submit(question, original.clone(), template, config)?;
    let head = ChatHead {
        id: format!(
            "chatcmpl-aligner-{}",
            s.next_id.fetch_add(1, Ordering::Relaxed)
        ),
        object: "chat.completion",
        created: now(),
        model: model.unwrap_or_else(|| s.model_name.clone()),
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
            "Requests generating now (one per worker, or up to --batch-size per worker).",
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
