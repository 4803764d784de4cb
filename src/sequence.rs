//! One sequence's state while it generates: the [`Chooser`] that turns logits into tokens and
//! the [`TokenSink`] that every accepted token goes through. The plain and the speculative
//! loops share both, so they choose and end in exactly the same way.

use std::time::Instant;

use crate::config::GenerationConfig;
use crate::error::Result;
use crate::output::{ms_since, Generation, Timings};
use crate::sampler::Sampler;
use crate::stop::{FinishReason, StopStrings};
use crate::tokenizer::{Decode, DecodeStream};

/// Turns logits into the next token: EOS suppression, then the configured sampler.
pub(crate) struct Chooser {
    sampler: Sampler,
    suppress: Vec<u32>,
    penalize_from: usize,
}

impl Chooser {
    pub(crate) fn new(
        config: &GenerationConfig,
        eos_ids: &[u32],
        vocab: usize,
        prompt_len: usize,
    ) -> Self {
        Chooser {
            sampler: Sampler::new(config.sampling(), vocab),
            suppress: if config.suppress_eos {
                eos_ids.to_vec()
            } else {
                Vec::new()
            },
            penalize_from: if config.penalize_prompt {
                0
            } else {
                prompt_len
            },
        }
    }

    /// `history` is the prompt followed by every token accepted so far.
    pub(crate) fn choose(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.suppress_eos(logits);
        self.sampler.sample(logits, &history[self.penalize_from..])
    }

    /// Verifies one draft token against these logits; see [`Sampler::verify_draft`].
    pub(crate) fn verify(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
        draft: u32,
    ) -> (u32, bool) {
        self.suppress_eos(logits);
        self.sampler
            .verify_draft(logits, &history[self.penalize_from..], draft)
    }

    fn suppress_eos(&self, logits: &mut [f32]) {
        for &eos in &self.suppress {
            if let Some(l) = logits.get_mut(eos as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// Where a sequence's text goes; returns `false` to cancel. Owned, so that a batch can hold
/// many running sequences (a plain call boxes its `&mut` callback).
pub type OnText<'c> = Box<dyn FnMut(&str) -> bool + 'c>;

/// Everything that happens to an accepted token: EOS, streaming, stop strings, the budget.
/// Shared by the plain and the speculative loops so both end in exactly the same way.
pub(crate) struct TokenSink<'c> {
    pub(crate) history: Vec<u32>,
    prompt_len: usize,
    max_new_tokens: usize,
    eos_ids: Vec<u32>,
    stream: DecodeStream,
    stops: StopStrings,
    on_text: OnText<'c>,
    /// Tokens the first pass produced (see [`Timings::first_pass_tokens`]).
    first_pass_tokens: usize,
}

impl<'c> TokenSink<'c> {
    pub(crate) fn new(
        prompt: &[u32],
        config: &GenerationConfig,
        budget: usize,
        eos_ids: &[u32],
        on_text: OnText<'c>,
    ) -> Self {
        let mut history = Vec::with_capacity(prompt.len() + budget);
        history.extend_from_slice(prompt);
        TokenSink {
            history,
            prompt_len: prompt.len(),
            max_new_tokens: config.max_new_tokens,
            eos_ids: eos_ids.to_vec(),
            stream: DecodeStream::new(),
            stops: StopStrings::new(config.stop.clone()),
            on_text,
            first_pass_tokens: 1,
        }
    }

    /// Records that the first pass produced `n` tokens (a first draft verified with the
    /// prompt), so that the decode rate counts only the tokens decoded after it.
    pub(crate) fn set_first_pass_tokens(&mut self, n: usize) {
        self.first_pass_tokens = n;
    }

    /// Asks the caller whether to go on, with an empty piece (see
    /// [`Generator::generate`](crate::generate::Generator::generate)).
    pub(crate) fn still_wanted(&mut self) -> bool {
        (self.on_text)("")
    }

    /// The first `len` tokens of the sequence (what a cache of `len` positions holds).
    pub(crate) fn prefix(&self, len: usize) -> &[u32] {
        &self.history[..len.min(self.history.len())]
    }

    pub(crate) fn generated(&self) -> &[u32] {
        &self.history[self.prompt_len..]
    }

    pub(crate) fn budget_left(&self) -> usize {
        self.max_new_tokens - self.generated().len()
    }

    /// Records `token`; returns why generation ends, if it does.
    pub(crate) fn accept(
        &mut self,
        decoder: &impl Decode,
        token: u32,
    ) -> Result<Option<FinishReason>> {
        self.history.push(token);
        if self.eos_ids.contains(&token) {
            return Ok(Some(FinishReason::Eos));
        }
        if let Some(piece) = self.stream.step(decoder, token)? {
            let (safe, hit_stop) = self.stops.push(&piece);
            if !safe.is_empty() && !(self.on_text)(&safe) {
                return Ok(Some(FinishReason::Cancelled));
            }
            if hit_stop {
                return Ok(Some(FinishReason::Stop));
            }
        }
        if self.generated().len() >= self.max_new_tokens {
            return Ok(Some(FinishReason::Length));
        }
        Ok(None)
    }

    pub(crate) fn finish(
        mut self,
        finish_reason: FinishReason,
        start: Instant,
        prefill_ms: f64,
        decode_start: Instant,
    ) -> Generation {
        if finish_reason != FinishReason::Stop {
            let tail = self.stops.flush();
            if !tail.is_empty() {
                (self.on_text)(&tail);
            }
        }
        let timings = Timings {
            prefill_ms,
            decode_ms: ms_since(decode_start),
            total_ms: ms_since(start),
            first_pass_tokens: self.first_pass_tokens,
        };
        let mut tokens = self.history.split_off(self.prompt_len);
        if finish_reason == FinishReason::Eos {
            tokens.pop();
        }
        Generation {
            text: self.stops.text().to_string(),
            tokens,
            prompt_tokens: self.prompt_len,
            reused_prompt_tokens: 0,
            finish_reason,
            timings,
            drafts: None,
        }
    }
}
