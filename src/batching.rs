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
//! Greedy corrections admitted with their answer as a draft source also draft. Verifying a
//! draft in the batch would feed a row several tokens after its own past, which ONNX Runtime
//! 1.31's CPU GroupQueryAttention refuses ("batch_size must be 1 when sequence_length > 1 and
//! past context is given"). So before each batched pass, a sequence whose next copy draft is
//! at least [`MIN_DRAFT_ALONE`] tokens long leaves its slot for one drafted pass of its own on
//! the single-sequence cache ([`BatchModel::unload_slot`]), exactly as a correction alone
//! runs it, and comes back. Between such passes it decodes in the batch, and each batched
//! token it chooses tells its drafter whether the copy goes on, so that after an edit the
//! draft grows back (1, 2, 4, 8 tokens) before the sequence leaves the batch again.

use std::time::Instant;

use crate::config::{GenerationConfig, GREEDY_BELOW_TEMPERATURE};
use crate::error::{Error, Result};
use crate::generate::{Generator, Start};
use crate::kv_cache::KvCursor;
use crate::model::BatchModel;
use crate::output::Generation;
pub use crate::sequence::OnText;
use crate::sequence::{Chooser, TokenSink};
use crate::stop::FinishReason;
use crate::tokenizer::Decode;
use crate::verify::{Drafting, Pass};

/// The most slots a batch may have.
pub const MAX_SLOTS: usize = 64;

/// The shortest copy draft a sequence leaves the batch for. A drafted pass of its own costs
/// about as much as one single-token step plus a little per drafted token, and two cache
/// copies; a batched step costs each of its sequences a fraction of a single-token step. So a
/// short draft is cheaper to decode in the batch, token by token.
pub const MIN_DRAFT_ALONE: usize = 8;

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
    /// Copy drafting from the answer, for a greedy correction.
    drafting: Option<Drafting>,
}

/// Schedules sequences onto the slots of a [`BatchModel`]. `T` tags each sequence (a request,
/// an input row) and comes back with its result. Every call takes the same model: the batcher
/// holds the bookkeeping, the model holds the caches.
///
/// Running sequences always fill slots `0..running`: a finished one's slot takes the last
/// sequence ([`BatchModel::move_slot`]). A pass runs exactly the running sequences; the
/// model's batch cache (memory) is a power of two of slots of at least the running count.
pub struct Batcher<'c, T> {
    eos_ids: Vec<u32>,
    rows: Vec<Running<'c, T>>,
    max_slots: usize,
    /// Slots of the model's batch cache now (0 before the first admission).
    width: usize,
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
            rows: Vec::with_capacity(slots),
            max_slots: slots,
            width: 0,
            positions: 0,
            cached,
            tokens: Vec::with_capacity(slots),
            past: Vec::with_capacity(slots),
        })
    }

    /// Slots with no sequence.
    pub fn free(&self) -> usize {
        self.max_slots - self.rows.len()
    }

    /// Sequences running.
    pub fn running(&self) -> usize {
        self.rows.len()
    }

    /// The tokens whose KV the single-sequence cache holds, for the next
    /// [`Generator::resume`] on this model.
    pub fn into_cached(self) -> Vec<u32> {
        self.cached
    }

    /// Runs `prompt` alone and puts the sequence in a free slot. Returns the sequence's result
    /// when it ended already (an error, a cancel, or a first token that ends it), `None` when it
    /// now runs. With no free slot the tag comes back with an error. A `draft_source` (the
    /// answer a correction copies) turns on copy drafts when decoding is greedy and
    /// `config.copy_drafts` is on.
    #[allow(clippy::too_many_arguments)]
    pub fn admit(
        &mut self,
        model: &mut impl BatchModel,
        decoder: &impl Decode,
        prompt: &[u32],
        draft_source: Option<&[u32]>,
        config: &GenerationConfig,
        on_text: OnText<'c>,
        tag: T,
    ) -> Option<Finished<T>> {
        if self.free() == 0 {
            return Some((tag, Err(Error::invalid("every batch slot is taken"))));
        }
        let mut drafting = draft_source
            .filter(|_| config.copy_drafts && config.temperature < GREEDY_BELOW_TEMPERATURE)
            .filter(|_| model.can_rollback())
            .map(|source| Drafting::new(source, config.max_draft_tokens));
        let mut generator = Generator::resume(&mut *model, std::mem::take(&mut self.cached));
        let started = generator.start(
            decoder,
            prompt,
            config,
            &self.eos_ids,
            on_text,
            drafting.as_mut(),
        );
        let started = match started {
            Ok(Start::Running(s)) => s,
            // Cancelled during the prompt, or ended within a first draft verified with it.
            Ok(Start::Done(mut g)) => {
                g.drafts = drafting.map(|d| d.stats);
                self.cached = generator.into_cached();
                return Some((tag, Ok(g)));
            }
            Err(e) => return Some((tag, Err(e))), // the cache is unknown: forget it
        };
        let reused = generator.hand_off(prompt);
        let cached_len = generator.cursor.len();
        self.cached = generator.into_cached();
        let s = *started;
        let mut row = Running {
            tag,
            chooser: s.chooser,
            sink: s.sink,
            next: s.first,
            start: s.start,
            prefill_ms: s.prefill_ms,
            decode_start: Instant::now(),
            reused,
            drafting,
        };
        match row.sink.accept(decoder, row.next) {
            Ok(None) => {}
            Ok(Some(reason)) => return Some(row.finish(reason)),
            Err(e) => return Some((row.tag, Err(e))),
        }
        // The history holds the prompt, any drafts accepted with it and `next`.
        let needed = row
            .sink
            .history
            .len()
            .saturating_add(row.sink.budget_left())
            .min(model.context_length());
        let slot = self.rows.len();
        let loaded = self
            .fit(model, slot + 1, needed)
            .and_then(|()| model.load_slot(slot, cached_len));
        match loaded {
            Ok(()) => {
                self.rows.push(row);
                None
            }
            Err(e) => Some((row.tag, Err(e))),
        }
    }

    /// Resizes the model's batch cache for `running` sequences of up to `needed` positions:
    /// wider at once when needed, narrower only when at most a quarter of it is used (or one
    /// sequence is left), so a count that wavers does not copy the cache back and forth.
    fn fit(&mut self, model: &mut impl BatchModel, running: usize, needed: usize) -> Result<()> {
        let target = running.max(1).next_power_of_two().min(self.max_slots);
        let width = if target > self.width || target * 4 <= self.width || running <= 1 {
            target
        } else {
            self.width
        };
        let positions = if needed > self.positions {
            needed
                .div_ceil(POSITION_STEP)
                .saturating_mul(POSITION_STEP)
                .min(model.context_length())
                .max(needed)
        } else {
            self.positions
        };
        if (width, positions) != (self.width, self.positions) {
            model.reserve_batch(width, positions)?;
            (self.width, self.positions) = (width, positions);
        }
        Ok(())
    }

    /// One batched pass: every running sequence gets its next token. Returns the sequences
    /// that ended. A failed pass ends every running sequence with its error.
    pub fn step(&mut self, model: &mut impl BatchModel, decoder: &impl Decode) -> Vec<Finished<T>> {
        let mut done = Vec::new();
        self.run_drafts(model, decoder, &mut done);
        if self.rows.is_empty() {
            return done;
        }
        self.tokens.clear();
        self.past.clear();
        for row in &self.rows {
            self.tokens.push(row.next);
            self.past.push(row.sink.history.len() - 1);
        }
        let logits = match model.forward_batch(&self.tokens, &self.past) {
            Ok(l) => l,
            Err(e) => {
                self.fail_all(&e, &mut done);
                return done;
            }
        };
        let vocab = logits.len() / self.rows.len();
        let mut ended = Vec::new();
        for (s, row) in self.rows.iter_mut().enumerate() {
            let row_logits = &mut logits[s * vocab..(s + 1) * vocab];
            row.next = row.chooser.choose(row_logits, &row.sink.history);
            if let Some(drafting) = row.drafting.as_mut() {
                drafting.observe(row.sink.generated(), row.next);
            }
            let end = match row.sink.accept(decoder, row.next) {
                Ok(None) if row.sink.history.len() > self.positions => {
                    Ok(Some(FinishReason::ContextFull))
                }
                Ok(None) if !row.sink.still_wanted() => Ok(Some(FinishReason::Cancelled)),
                other => other,
            };
            match end {
                Ok(None) => {}
                Ok(Some(reason)) => ended.push((s, Ok(reason))),
                Err(e) => ended.push((s, Err(e))),
            }
        }
        // Highest slot first, so that each move takes a sequence that is still running.
        for (s, end) in ended.into_iter().rev() {
            if let Err(e) = self.retire(model, s, end, &mut done) {
                self.fail_all(&e, &mut done);
                return done;
            }
        }
        if let Err(e) = self.fit(model, self.rows.len(), self.positions) {
            self.fail_all(&e, &mut done);
        }
        done
    }

    /// Ends the sequence in slot `s` with `end`, and moves the last running sequence into its
    /// slot so that running slots stay `0..n`.
    fn retire(
        &mut self,
        model: &mut impl BatchModel,
        s: usize,
        end: Result<FinishReason>,
        done: &mut Vec<Finished<T>>,
    ) -> Result<()> {
        let row = self.rows.swap_remove(s);
        done.push(match end {
            Ok(reason) => row.finish(reason),
            Err(e) => (row.tag, Err(e)),
        });
        if s < self.rows.len() {
            let len = self.rows[s].sink.history.len() - 1;
            model.move_slot(self.rows.len(), s, len)?;
        }
        Ok(())
    }

    /// Gives each sequence whose copy draft is long enough its drafted pass alone (see the
    /// module docs). A sequence that ends in its pass leaves the batch.
    fn run_drafts(
        &mut self,
        model: &mut impl BatchModel,
        decoder: &impl Decode,
        done: &mut Vec<Finished<T>>,
    ) {
        let mut s = 0;
        while s < self.rows.len() {
            let Some(end) = self.draft_alone(model, decoder, s).transpose() else {
                s += 1;
                continue;
            };
            // The slot now holds the last sequence, which has not had its turn yet.
            if let Err(e) = self.retire(model, s, end, done) {
                self.fail_all(&e, done);
                return;
            }
        }
    }

    /// The drafted pass of the sequence in slot `s`, when its draft is long enough: its cache
    /// goes to the single-sequence cache, one pass verifies the draft there, and what the
    /// model accepted comes back to the slot. Returns why the sequence ended, if it did.
    fn draft_alone(
        &mut self,
        model: &mut impl BatchModel,
        decoder: &impl Decode,
        s: usize,
    ) -> Result<Option<FinishReason>> {
        let row = &mut self.rows[s];
        let Some(drafting) = row.drafting.as_mut() else {
            return Ok(None);
        };
        // Positions the slot holds; the pass feeds `next` and the draft after them, and the
        // token after the pass must still fit the slot.
        let len = row.sink.history.len() - 1;
        let room = self.positions.saturating_sub(len + 2);
        let limit = room.min(row.sink.budget_left().saturating_sub(1));
        if drafting.proposal_len(row.sink.generated(), limit) < MIN_DRAFT_ALONE {
            return Ok(None);
        }
        // The single-sequence cache gives up what it held (a prompt prefix to reuse).
        self.cached.clear();
        model.reserve(len + 1 + limit)?;
        model.unload_slot(s, len)?;
        let mut cursor = KvCursor::holding(model.context_length(), len);
        let pass = drafting.pass(
            model,
            &mut cursor,
            decoder,
            &mut row.chooser,
            &mut row.sink,
            &[row.next],
            limit,
        )?;
        // Whether or not the sequence ended, the cursor counts only positions that hold its
        // tokens: the next prompt may reuse them.
        self.cached = row.sink.prefix(cursor.len()).to_vec();
        let next = match pass {
            Pass::Ended(reason) => return Ok(Some(reason)),
            Pass::Next(next) => next,
        };
        row.next = next;
        if let Some(reason) = row.sink.accept(decoder, next)? {
            return Ok(Some(reason));
        }
        model.load_slot(s, cursor.len())?;
        Ok(None)
    }

    /// Ends every running sequence with `error` (the batch cache's state is unknown).
    fn fail_all(&mut self, error: &Error, done: &mut Vec<Finished<T>>) {
        let message = error.to_string();
        for row in self.rows.drain(..) {
            done.push((row.tag, Err(Error::Inference(message.clone()))));
        }
    }
}

impl<T> Running<'_, T> {
    fn finish(self, reason: FinishReason) -> Finished<T> {
        let mut g = self
            .sink
            .finish(reason, self.start, self.prefill_ms, self.decode_start);
        g.reused_prompt_tokens = self.reused;
        g.drafts = self.drafting.map(|d| d.stats);
        (self.tag, Ok(g))
    }
}

#[cfg(test)]
#[path = "batching_tests.rs"]
mod tests;
