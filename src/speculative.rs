//! Copy-draft speculative decoding: draft the next tokens from the answer being corrected,
//! run them through the model in one pass, keep the prefix the model agrees with, and roll the
//! KV cache back past the rest (each pass is [`crate::verify`]'s).
//!
//! Verification uses the same [`Chooser`](crate::sequence::Chooser) and
//! [`TokenSink`](crate::sequence::TokenSink) as plain decoding, position by position with the
//! history up to that position. Greedy output is token-for-token the plain greedy output. With
//! sampling, a draft token is accepted with its target probability and a rejection is
//! resampled from the target with the draft removed (the standard speculative rule for a
//! deterministic draft), so the output distribution is exactly plain sampling's.

use std::time::Instant;

use crate::config::GenerationConfig;
use crate::error::Result;
use crate::generate::{Generator, Start, Started};
use crate::model::DecoderModel;
use crate::output::Generation;
use crate::stop::FinishReason;
use crate::tokenizer::Decode;
use crate::verify::{Drafting, Pass};

impl<M: DecoderModel> Generator<'_, M> {
    /// Like [`generate`](Self::generate), drafting from `draft_source` (the tokenized answer)
    /// when decoding is greedy and the model can roll its cache back. The draft statistics
    /// are in [`Generation::drafts`] when drafting ran. With
    /// [`GenerationConfig::draft_with_prompt`] the first draft is verified in the prompt's own
    /// pass.
    pub fn generate_with_copy_drafts(
        &mut self,
        decoder: &impl Decode,
        prompt: &[u32],
        draft_source: &[u32],
        config: &GenerationConfig,
        eos_ids: &[u32],
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        if !config.copy_drafts || !self.model.can_rollback() {
            return self.generate(decoder, prompt, config, eos_ids, on_text);
        }
        let mut drafting = Drafting::new(draft_source, config.max_draft_tokens);
        let started = self.start(
            decoder,
            prompt,
            config,
            eos_ids,
            Box::new(on_text),
            Some(&mut drafting),
        )?;
        let s = match started {
            Start::Running(s) => s,
            Start::Done(mut g) => {
                g.drafts = Some(drafting.stats);
                return Ok(g);
            }
        };
        let Started {
            mut chooser,
            mut sink,
            first,
            start,
            prefill_ms,
        } = *s;
        let decode_start = Instant::now();
        let mut token = first;

        let finish_reason = loop {
            if let Some(reason) = sink.accept(decoder, token)? {
                break reason;
            }
            let remaining = self.cursor.remaining();
            if remaining == 0 {
                break FinishReason::ContextFull;
            }
            // Drafts beyond the context or the token budget could never be kept.
            let limit = (remaining - 1).min(sink.budget_left() - 1);
            let pass = drafting.pass(
                &mut *self.model,
                &mut self.cursor,
                decoder,
                &mut chooser,
                &mut sink,
                &[token],
                limit,
            )?;
            match pass {
                Pass::Ended(reason) => break reason,
                Pass::Next(next) => token = next,
            }
        };
        let mut generation = self.finish(sink, finish_reason, start, prefill_ms, decode_start);
        generation.drafts = Some(drafting.stats);
        Ok(generation)
    }
}

#[cfg(test)]
#[path = "speculative_tests.rs"]
mod tests;
