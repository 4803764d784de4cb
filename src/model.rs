//! The seam between the generation loop and ONNX Runtime.
//!
//! The loop only needs "append these tokens to the cache and give me the last logits"; the
//! ONNX engine and the scripted fake model used in tests both implement it.

use crate::error::Result;
use crate::kv_cache::StepPlan;

pub trait DecoderModel {
    fn vocab_size(&self) -> usize;

    /// Positions the KV cache can hold.
    fn context_length(&self) -> usize;

    /// Runs `tokens` at positions `plan.positions()` on top of `plan.past_len` cached positions
    /// and returns the logits of the last new position (`vocab_size` values, writable so the
    /// sampler can process them in place).
    fn forward(&mut self, tokens: &[u32], plan: StepPlan) -> Result<&mut [f32]>;

    /// Like [`forward`](Self::forward) but returns the logits of the last `rows` new positions
    /// (`1 <= rows <= tokens.len()`), `rows * vocab_size` values row by row: speculative
    /// verification needs every drafted position, and a prompt verified with its first draft
    /// in the same pass needs its last position and the draft's.
    fn forward_last(&mut self, tokens: &[u32], plan: StepPlan, rows: usize) -> Result<&mut [f32]>;

    /// Whether [`truncate_cache`](Self::truncate_cache) accepts a non-zero length, which
    /// rejecting a draft needs.
    fn can_rollback(&self) -> bool {
        false
    }

    /// Called before a sequence starts with the most positions it can reach, so an engine
    /// can size its cache once instead of growing it per token. Returns whether the positions
    /// already cached survived (false when the cache was reallocated), which reusing a cached
    /// prompt prefix needs.
    fn reserve(&mut self, _max_total_len: usize) -> Result<bool> {
        Ok(true)
    }

    /// Drops cached positions at and after `len`; `0` starts a new sequence.
    fn truncate_cache(&mut self, len: usize) -> Result<()>;
}

/// A model that decodes several sequences in one forward pass (continuous batching, see
/// [`crate::batching`]). Each sequence owns a slot of a batch cache. Its prompt runs alone
/// through [`DecoderModel::forward`] (prefill is compute-bound, so batching it gains little)
/// and its cache is then copied into a slot; decoding is memory-bound, so one pass over many
/// slots costs little more than over one.
pub trait BatchModel: DecoderModel {
    /// Sizes the batch cache for `slots` sequences of up to `positions` positions each,
    /// keeping what the slots already hold. Errors when this model cannot batch.
    fn reserve_batch(&mut self, slots: usize, positions: usize) -> Result<()>;

    /// Copies the first `len` positions of the single-sequence cache into `slot`.
    fn load_slot(&mut self, slot: usize, len: usize) -> Result<()>;

    /// Copies the first `len` positions of `slot` into the single-sequence cache, which must
    /// hold at least `len` positions (see [`DecoderModel::reserve`]): a sequence leaves its
    /// slot for a drafted pass of its own, then [`load_slot`](Self::load_slot) puts it back.
    fn unload_slot(&mut self, slot: usize, len: usize) -> Result<()>;

    /// Copies the first `len` positions of slot `from` into slot `to` (a finished sequence's
    /// slot takes the last running one, so running slots stay `0..n`).
    fn move_slot(&mut self, from: usize, to: usize, len: usize) -> Result<()>;

    /// One token for each of the first `tokens.len()` slots (at most the reserved slots):
    /// `tokens[s]` goes to position `past[s]` of slot `s` and attends to that slot's first
    /// `past[s]` positions. Returns `tokens.len() * vocab_size` logits, slot by slot. Slots past
    /// those are not computed.
    fn forward_batch(&mut self, tokens: &[u32], past: &[usize]) -> Result<&mut [f32]>;
}
