//! The upstream model: any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, llama.cpp
//! server, Ollama, a hosted API). We forward the client's request, take the answer, and
//! correct it. Upstream failures are passed through: unreachable or erroring → 502, timed out
//! → 504, each with its cause.

use std::time::Duration;

use axum::http::StatusCode;
use futures_util::StreamExt;
use serde_json::Value;

use super::api::ApiError;

#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    url: String,
    model: Option<String>,
    key: Option<String>,
}

/// The upstream's answer and the usage it reported (if any).
pub struct UpstreamAnswer {
    pub text: String,
    pub usage: Value,
    pub model: Option<String>,
}

impl Upstream {
    pub fn new(
        base: &str,
        model: Option<String>,
        key: Option<String>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/');
        let url = if base.ends_with("/chat/completions") {
            base.to_string()
        } else if base.ends_with("/v1") {
            format!("{base}/chat/completions")
        } else {
            format!("{base}/v1/chat/completions")
        };
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()?;
        Ok(Upstream {
            client,
            url,
            model,
            key,
        })
    }

    fn failure(&self, e: reqwest::Error) -> ApiError {
        if e.is_timeout() {
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!("upstream {} did not answer in time: {e}", self.url),
            )
        } else {
            let cause = std::error::Error::source(&e)
                .map(|c| c.to_string())
                .unwrap_or_default();
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!("upstream {} is unreachable: {e} {cause}", self.url)
                    .trim_end()
                    .to_string(),
            )
        }
    }

    /// Sends the client's chat request upstream (streaming or not) and collects the answer.
    pub async fn answer(
        &self,
        mut request: Value,
        stream: bool,
    ) -> Result<UpstreamAnswer, ApiError> {
        if let Some(model) = &self.model {
            request["model"] = Value::String(model.clone());
        }
        request["stream"] = Value::Bool(stream);
        if stream {
            request["stream_options"] = serde_json::json!({"include_usage": true});
        }
        let mut call = self.client.post(&self.url).json(&request);
        if let Some(key) = &self.key {
            call = call.bearer_auth(key);
        }
        let response = call.send().await.map_err(|e| self.failure(e))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let excerpt: String = body.chars().take(300).collect();
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!("upstream {} answered {status}: {excerpt}", self.url),
            ));
        }
        if stream {
            self.collect_stream(response).await
        } else {
            let body: Value = response.json().await.map_err(|e| self.failure(e))?;
            let text = body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            Ok(UpstreamAnswer {
                text,
                usage: body.get("usage").cloned().unwrap_or(Value::Null),
                model: body["model"].as_str().map(str::to_string),
            })
        }
    }

    /// Reads an SSE stream of `chat.completion.chunk`s to its end (`[DONE]`).
    async fn collect_stream(
        &self,
        response: reqwest::Response,
    ) -> Result<UpstreamAnswer, ApiError> {
        let mut answer = UpstreamAnswer {
            text: String::new(),
            usage: Value::Null,
            model: None,
        };
        let mut pending = String::new();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.failure(e))?;
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                let Some(data) = line.trim().strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    return Ok(answer);
                }
                let Ok(event) = serde_json::from_str::<Value>(data) else {
                    continue;
                };
                if let Some(piece) = event["choices"][0]["delta"]["content"].as_str() {
                    answer.text.push_str(piece);
                }
                if event.get("usage").is_some_and(|u| !u.is_null()) {
                    answer.usage = event["usage"].clone();
                }
                if answer.model.is_none() {
                    answer.model = event["model"].as_str().map(str::to_string);
                }
            }
        }
        Ok(answer)
    }
}
