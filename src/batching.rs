//! Continuous batching: up to `slots` sequences decode together, one forward pass per step.
//!
//! A sequence is admitted when a slot is free: its prompt runs alone through the ordinary
//! [`Generator`] (so it reuses the cached template prefix, chunks long prompts and can be
//! cancelled like any other), then the model copies its cache into the slot
//! ([`BatchModel::load_slot`]). Each [`step`](Batcher::step) feeds every running sequence its
//! latest token in one [`BatchModel::forward_batch`] pass, and each sequence chooses its next
//! token with its own [`Chooser`] (its own sampling settings and seed) and ends through its own
//! [`TokenSink`] (EOS, stop strings, budget, cancellation), exactly as it would alone. A
//! finished sequence frees its slot at once for the next one.
//!
//! Batched sequences decode plainly: copy drafts need per-sequence verification passes of
//! different lengths, which one batched pass cannot give.

use std::time::Instant;

use crate::config::GenerationConfig;
use crate::error::{Error, Result};
use crate::generate::{Generator, Start};
use crate::model::BatchModel;
use crate::output::Generation;
pub use crate::sequence::OnText;
use crate::sequence::{Chooser, TokenSink};
use crate::stop::FinishReason;
use crate::tokenizer::Decode;

/// The most slots a batch may have.
pub const MAX_SLOTS: usize = 64;

/// Batch caches grow in steps of this many positions per slot.
const POSITION_STEP: usize = 128;

/// A finished sequence: the tag it was admitted with and how it ended.
pub type Finished<T> = (T, Result<Generation>);

struct Running<'c, T> {
    tag: T,
    chooser: Chooser,
    sink: TokenSink<'c>,
    /// Chosen, not yet accepted (its KV is not cached yet).
    next: u32,
    start: Instant,
    prefill_ms: f64,
    decode_start: Instant,
    reused: usize,
}

/// Schedules sequences onto the slots of a [`BatchModel`]. `T` tags each sequence (a request,
/// an input row) and comes back with its result. Every call takes the same model: the batcher
/// holds the bookkeeping, the model holds the caches.
pub struct Batcher<'c, T> {
    eos_ids: Vec<u32>,
    slots: Vec<Option<Running<'c, T>>>,
    /// Positions per slot the batch cache holds now.
    positions: usize,
    /// The tokens whose KV the single-sequence cache holds (see [`Generator::resume`]).
    pub(crate) cached: Vec<u32>,
    tokens: Vec<u32>,
    past: Vec<usize>,
}

impl<'c, T> Batcher<'c, T> {
    /// A batcher with `slots` slots, for a model whose single-sequence cache holds `cached`.
    pub fn new(slots: usize, eos_ids: &[u32], cached: Vec<u32>) -> Result<Self> {
        if slots == 0 || slots > MAX_SLOTS {
            return Err(Error::invalid(format!(
                "a batch has 1 to {MAX_SLOTS} slots, not {slots}"
            )));
        }
        Ok(Batcher {
            eos_ids: eos_ids.to_vec(),
            slots: (0..slots).map(|_| None).collect(),
            positions: 0,
            cached,
            tokens: vec![0; slots],
            past: vec![0; slots],
        })
    }

    /// Slots with no sequence.
    pub fn free(&self) -> usize {
        self.slots.iter().filter(|s| s.is_none()).count()
    }

    /// Sequences running.
    pub fn running(&self) -> usize {
        self.slots.len() - self.free()
    }

    /// The tokens whose KV the single-sequence cache holds, for the next
    /// [`Generator::resume`] on this model.
    pub fn into_cached(self) -> Vec<u32> {
        self.cached
    }

    /// Runs `prompt` alone and puts the sequence in a free slot. Returns the sequence's result
    /// when it ended already (an error, a cancel, or a first token that ends it), `None` when it
    /// now runs. With no free slot the tag comes back with an error.
    pub fn admit(
        &mut self,
        model: &mut impl BatchModel,
        decoder: &impl Decode,
        prompt: &[u32],
        config: &GenerationConfig,
        on_text: OnText<'c>,
        tag: T,
    ) -> Option<Finished<T>> {
        let Some(slot) = self.slots.iter().position(|s| s.is_none()) else {
            return Some((tag, Err(Error::invalid("every batch slot is taken"))));
        };
        let mut generator = Generator::resume(&mut *model, std::mem::take(&mut self.cached));
        let started = match generator.start(prompt, config, &self.eos_ids, on_text) {
            Ok(Start::Running(s)) => s,
            Ok(Start::Done(g)) => return Some((tag, Ok(g))), // cancelled during the prompt
            Err(e) => return Some((tag, Err(e))),            // the cache is unknown: forget it
        };
        let reused = generator.hand_off(prompt);
        let cached_len = generator.cursor.len();
        self.cached = generator.into_cached();
        let s = *started;
        let needed = prompt
            .len()
            .saturating_add(s.sink.budget_left())
            .min(model.context_length());
        let loaded = self
            .grow(model, needed)
            .and_then(|()| model.load_slot(slot, cached_len));
        if let Err(e) = loaded {
            return Some((tag, Err(e)));
        }
        let mut row = Running {
            tag,
            chooser: s.chooser,
            sink: s.sink,
            next: s.first,
            start: s.start,
            prefill_ms: s.prefill_ms,
            decode_start: Instant::now(),
            reused,
        };
        match row.sink.accept(decoder, row.next) {
            Ok(None) => {
                self.slots[slot] = Some(row);
                None
            }
            Ok(Some(reason)) => Some(row.finish(reason)),
            Err(e) => Some((row.tag, Err(e))),
        }
    }

    /// Makes every slot hold at least `needed` positions (the model's context at most).
    fn grow(&mut self, model: &mut impl BatchModel, needed: usize) -> Result<()> {
        if needed <= self.positions {
            return Ok(());
        }
        let positions = needed
            .div_ceil(POSITION_STEP)
            .saturating_mul(POSITION_STEP)
            .min(model.context_length())
            .max(needed);
        model.reserve_batch(self.slots.len(), positions)?;
        self.positions = positions;
        Ok(())
    }

    /// One batched pass: every running sequence gets its next token. Returns the sequences
    /// that ended. A failed pass ends every running sequence with its error.
    pub fn step(&mut self, model: &mut impl BatchModel, decoder: &impl Decode) -> Vec<Finished<T>> {
        let mut done = Vec::new();
        if self.running() == 0 {
            return done;
        }
        for (s, slot) in self.slots.iter_mut().enumerate() {
            match slot {
                Some(row) => {
                    self.tokens[s] = row.next;
                    self.past[s] = row.sink.history.len() - 1;
                }
                None => (self.tokens[s], self.past[s]) = (0, 0),
            }
        }
        let logits = match model.forward_batch(&self.tokens, &self.past) {
            Ok(l) => l,
            Err(e) => {
                let message = e.to_string();
                for slot in &mut self.slots {
                    if let Some(row) = slot.take() {
                        done.push((row.tag, Err(Error::Inference(message.clone()))));
                    }
                }
                return done;
            }
        };
        let vocab = logits.len() / self.slots.len();
        for (s, slot) in self.slots.iter_mut().enumerate() {
            let Some(row) = slot else { continue };
            let row_logits = &mut logits[s * vocab..(s + 1) * vocab];
            row.next = row.chooser.choose(row_logits, &row.sink.history);
            let ended = match row.sink.accept(decoder, row.next) {
                Ok(None) if row.sink.history.len() > self.positions => {
                    Ok(Some(FinishReason::ContextFull))
                }
                Ok(None) if !row.sink.still_wanted() => Ok(Some(FinishReason::Cancelled)),
                other => other,
            };
            match ended {
                Ok(None) => {}
                Ok(Some(reason)) => done.extend(slot.take().map(|r| r.finish(reason))),
                Err(e) => done.extend(slot.take().map(|r| (r.tag, Err(e)))),
            }
        }
        done
    }
}

impl<T> Running<'_, T> {
    fn finish(self, reason: FinishReason) -> Finished<T> {
        let mut g = self
            .sink
            .finish(reason, self.start, self.prefill_ms, self.decode_start);
        g.reused_prompt_tokens = self.reused;
        (self.tag, Ok(g))
    }
}

#[cfg(test)]
#[path = "batching_tests.rs"]
mod tests;
