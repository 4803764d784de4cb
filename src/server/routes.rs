//! HTTP handlers: `/v1/correct`, `/v1/chat/completions`, `/v1/models`, `/health`, `/metrics`,
//! and the middleware for the API key and per-request metrics.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use aligner::{Generation, GenerationConfig, Template};

use super::api::{self, ApiError, ChatRequest, CorrectRequest, GenerationOptions};
use super::metrics::Metrics;
use super::pool::{Job, JobEvent, Pool};
use super::upstream::Upstream;

pub struct AppState {
    pub pool: Arc<Pool>,
    pub metrics: Metrics,
    pub defaults: GenerationConfig,
    pub model_name: String,
    pub provider: String,
    pub workers: usize,
    pub upstream: Option<Upstream>,
    pub api_key: Option<String>,
    pub next_id: AtomicU64,
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
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "the worker stopped before finishing the request",
    ))
}

/// The job's events as a stream; it ends after `Done`.
fn job_stream(rx: UnboundedReceiver<JobEvent>) -> impl Stream<Item = JobEvent> {
    stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        let event = rx.recv().await?;
        let done = matches!(event, JobEvent::Done(_));
        Some((event, (!done).then_some(rx)))
    })
}

fn sse(events: impl Stream<Item = Value> + Send + 'static) -> Response {
    let frames = events
        .map(|v| Event::default().data(v.to_string()))
        .chain(stream::once(async { Event::default().data("[DONE]") }))
        .map(Ok::<_, Infallible>);
    Sse::new(frames).into_response()
}

fn error_value(e: ApiError) -> Value {
    json!({"error": {"message": e.message, "type": e.kind, "code": e.status.as_u16()}})
}

pub async fn correct(State(s): Shared, body: Bytes) -> Result<Response, ApiError> {
    let req: CorrectRequest = api::parse_body(&body)?;
    let (config, template) = req.options.apply(s.defaults.clone())?;
    let rx = s.submit(req.question, req.answer, template, config)?;
    if !req.options.stream {
        let g = finished(rx).await?;
        s.metrics.add_tokens(g.prompt_tokens, g.tokens.len());
        return Ok(Json(api::correct_response(&g, &s.provider)).into_response());
    }
    let state = Arc::clone(&s);
    Ok(sse(job_stream(rx).map(move |event| match event {
        JobEvent::Text(piece) => json!({"delta": piece}),
        JobEvent::Done(Ok(g)) => {
            state.metrics.add_tokens(g.prompt_tokens, g.tokens.len());
            let mut v = api::correct_response(&g, &state.provider);
            v["done"] = json!(true);
            v
        }
        JobEvent::Done(Err(e)) => error_value(e.into()),
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
    let question = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.text())
        .ok_or_else(|| {
            ApiError::bad_request("messages hold no user message to correct an answer to")
        })?;
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
            (req.options, last.text(), Value::Null, None)
        }
    };
    let (config, template) = options.apply(s.defaults.clone())?;
    let rx = s.submit(question, original.clone(), template, config)?;
    let id = format!(
        "chatcmpl-aligner-{}",
        s.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let model = req.model.clone().unwrap_or_else(|| s.model_name.clone());
    let created = now();
    let extension = move |g: &Generation| {
        json!({
            "original_answer": original,
            "upstream_model": upstream_model,
            "upstream_usage": upstream_usage,
            "correction_usage": api::usage(g),
        })
    };
    if !stream {
        let g = finished(rx).await?;
        s.metrics.add_tokens(g.prompt_tokens, g.tokens.len());
        return Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": g.text}, "finish_reason": api::openai_finish(&g)}],
            "usage": api::usage(&g),
            "aligner": extension(&g),
        }))
        .into_response());
    }
    let chunk = move |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let first = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    let state = Arc::clone(&s);
    let events = job_stream(rx).map(move |event| match event {
        JobEvent::Text(piece) => chunk(json!({"content": piece}), Value::Null),
        JobEvent::Done(Ok(g)) => {
            state.metrics.add_tokens(g.prompt_tokens, g.tokens.len());
            let mut last = chunk(json!({}), json!(api::openai_finish(&g)));
            last["usage"] = api::usage(&g);
            last["aligner"] = extension(&g);
            last
        }
        JobEvent::Done(Err(e)) => error_value(e.into()),
    });
    Ok(sse(stream::once(async move { first }).chain(events)))
}

pub async fn models(State(s): Shared) -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": s.model_name, "object": "model", "created": 0, "owned_by": "aligner"}]}),
    )
}

pub async fn health(State(s): Shared) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "model": s.model_name,
        "provider": s.provider,
        "workers": s.workers,
        "busy": s.pool.busy(),
        "queue_depth": s.pool.depth(),
        "upstream": s.upstream.is_some(),
    }))
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
    ]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Requires `Authorization: Bearer <key>` on `/v1/*` when the server has a key.
pub async fn require_key(State(s): Shared, request: Request, next: Next) -> Response {
    if let Some(key) = &s.api_key {
        if request.uri().path().starts_with("/v1/") {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if given != Some(key.as_str()) {
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
