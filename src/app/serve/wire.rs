//! Response bodies, as typed structs: `/v1/correct`, OpenAI chat completions and their
//! stream chunks, `/v1/models` and `/health`. Requests and errors are in [`super::api`].

use serde::Serialize;
use serde_json::Value;

use aligner::Generation;

use crate::app::report::{TimingReport, Usage};

/// Serializes a body. These types hold only strings, numbers and JSON values, which always
/// serialize; should one ever fail, the client still gets an error in OpenAI's shape.
pub fn to_json<T: Serialize>(body: &T) -> String {
    serde_json::to_string(body).unwrap_or_else(|e| {
        let message = format!("cannot encode the response: {e}");
        serde_json::json!({"error": {"message": message, "type": "server_error", "code": 500}})
            .to_string()
    })
}

/// `/v1/correct`, and the last event of its stream (with `done`).
#[derive(Serialize)]
pub struct CorrectResponse<'a> {
    pub correction: &'a str,
    pub finish_reason: &'static str,
    pub usage: Usage,
    pub timings: TimingReport,
    pub provider: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub done: bool,
}

impl<'a> CorrectResponse<'a> {
    pub fn new(g: &'a Generation, provider: &'a str) -> Self {
        CorrectResponse {
            correction: &g.text,
            finish_reason: g.finish_reason.as_str(),
            usage: Usage::from(g),
            timings: TimingReport::brief(g),
            provider,
            done: false,
        }
    }
}

/// A streamed piece of a `/v1/correct` correction.
#[derive(Serialize)]
pub struct CorrectDelta<'a> {
    pub delta: &'a str,
}

/// What a chat completion adds under `aligner`: the answer it corrected and both usages.
#[derive(Serialize, Clone)]
pub struct AlignerExtension {
    pub original_answer: String,
    pub upstream_model: Option<String>,
    pub upstream_usage: Value,
    pub correction_usage: Usage,
}

/// The fields every chat completion object and chunk share.
#[derive(Serialize, Clone)]
pub struct ChatHead {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
}

#[derive(Serialize)]
pub struct ChatCompletion<'a> {
    #[serde(flatten)]
    pub head: ChatHead,
    pub choices: [ChatChoice<'a>; 1],
    pub usage: Usage,
    pub aligner: AlignerExtension,
}

#[derive(Serialize)]
pub struct ChatChoice<'a> {
    pub index: u32,
    pub message: ChatMessageOut<'a>,
    pub finish_reason: &'static str,
}

#[derive(Serialize)]
pub struct ChatMessageOut<'a> {
    pub role: &'static str,
    pub content: &'a str,
}

#[derive(Serialize)]
pub struct ChatChunk<'a> {
    #[serde(flatten)]
    pub head: ChatHead,
    pub choices: [ChunkChoice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aligner: Option<AlignerExtension>,
}

#[derive(Serialize)]
pub struct ChunkChoice<'a> {
    pub index: u32,
    pub delta: ChunkDelta<'a>,
    /// `null` until the last chunk, as OpenAI sends it.
    pub finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
pub struct ChunkDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
}

impl<'a> ChatChunk<'a> {
    pub fn new(head: &ChatHead, delta: ChunkDelta<'a>, finish: Option<&'static str>) -> Self {
        ChatChunk {
            head: head.clone(),
            choices: [ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish,
            }],
            usage: None,
            aligner: None,
        }
    }
}

#[derive(Serialize)]
pub struct ModelList<'a> {
    pub object: &'static str,
    pub data: [ModelEntry<'a>; 1],
}

#[derive(Serialize)]
pub struct ModelEntry<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

#[derive(Serialize)]
pub struct Health<'a> {
    pub status: &'static str,
    pub model: &'a str,
    pub provider: &'a str,
    pub workers: usize,
    pub workers_alive: usize,
    pub worker_restarts: usize,
    pub busy: usize,
    pub queue_depth: usize,
    pub upstream: bool,
}
