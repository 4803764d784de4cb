//! What a generation returns: its text and tokens, why it ended, how long it took and how the
//! copy drafts fared. Both loops ([`crate::generate`], [`crate::speculative`]) build these.

use std::time::Instant;

use serde::Serialize;

use crate::stop::FinishReason;

/// Wall-clock split of one generation, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Time to first token: the prompt passes and the first token's sampling.
    pub prefill_ms: f64,
    /// Everything after the first token.
    pub decode_ms: f64,
    pub total_ms: f64,
    /// Tokens that arrived with the first: 1, or more when the first copy draft was verified
    /// in the prompt's pass ([`GenerationConfig::draft_with_prompt`](crate::GenerationConfig)).
    pub first_pass_tokens: usize,
}

impl Timings {
    pub fn prefill_tok_s(&self, prompt_tokens: usize) -> f64 {
        rate(prompt_tokens, self.prefill_ms)
    }
    /// Tokens decoded after the first pass, per second of `decode_ms`.
    pub fn decode_tok_s(&self, new_tokens: usize) -> f64 {
        let first = self.first_pass_tokens.max(1);
        rate(new_tokens.saturating_sub(first), self.decode_ms)
    }
}

fn rate(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

/// How the copy drafts fared in one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DraftStats {
    /// Drafted forward passes (plain decoding needs one per token); a prompt pass that
    /// verified the first draft counts as one.
    pub passes: usize,
    pub proposed: usize,
    pub accepted: usize,
    /// The most drafted tokens one pass verified: its logits were that many rows plus one,
    /// which is what a pass's memory grows with.
    pub longest_draft: usize,
}

/// The result of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the previous generation (not run again).
    pub reused_prompt_tokens: usize,
    pub finish_reason: FinishReason,
    pub timings: Timings,
    /// Copy-draft statistics, when speculative decoding ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drafts: Option<DraftStats>,
}

pub(crate) fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
