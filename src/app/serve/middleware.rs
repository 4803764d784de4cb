//! Middleware: the API key, reading the body within its limits (408, 413), counting requests
//! in flight for shutdown, and per-request metrics.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::stream::StreamExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::api::ApiError;
use super::routes::AppState;

type Shared = State<Arc<AppState>>;

/// sha256 of an API key: keys are compared by digest, in constant time, whatever their length.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
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
