//! One drafted pass: feed the tokens the cache lacks and a copy draft after them, verify the
//! draft position by position, and roll the cache back past what the model rejected.
//!
//! Verification uses the same [`Chooser`] and [`TokenSink`] as plain decoding, with the history
//! up to each position, so greedy verification chooses what a plain step would. The solo loop
//! ([`crate::speculative`]), batched decoding ([`crate::batching`]) and a prompt verified with
//! its first draft ([`crate::generate`]) all pass through [`Drafting::pass`], so they verify in
//! exactly one way.

use crate::draft::CopyDrafter;
use crate::error::Result;
use crate::kv_cache::KvCursor;
use crate::model::DecoderModel;
use crate::output::DraftStats;
use crate::sequence::{Chooser, TokenSink};
use crate::stop::FinishReason;
use crate::tokenizer::Decode;

/// What one drafted pass led to.
pub(crate) enum Pass {
    /// The sequence ended inside the pass (EOS, a stop string, the budget, a cancel).
    Ended(FinishReason),
    /// The token after the accepted drafts: chosen, not yet accepted or cached.
    Next(u32),
}

/// One sequence's copy drafting: the drafter, its statistics and the pass's input buffer.
pub(crate) struct Drafting {
    drafter: CopyDrafter,
    pub(crate) stats: DraftStats,
    feed: Vec<u32>,
}

impl Drafting {
    pub(crate) fn new(source: &[u32], max_draft: usize) -> Self {
        Drafting {
            drafter: CopyDrafter::new(source.to_vec(), max_draft),
            stats: DraftStats::default(),
            feed: Vec::with_capacity(max_draft + 1),
        }
    }

    /// How many tokens the next pass would draft after `generated`, at most `limit`.
    pub(crate) fn proposal_len(&mut self, generated: &[u32], limit: usize) -> usize {
        self.drafter.propose(generated, limit).len()
    }

    /// Tells the drafter how a plain step went: `chosen` followed `generated`. A step that
    /// chose the token the drafter would have drafted counts as a 1-token draft accepted, so
    /// the draft length grows again after an edit, as it would in drafted passes.
    pub(crate) fn observe(&mut self, generated: &[u32], chosen: u32) {
        let Some(&expected) = self.drafter.propose(generated, 1).first() else {
            return;
        };
        self.drafter.feedback(1, usize::from(expected == chosen));
    }

    /// One pass over `model`'s single-sequence cache, which holds `cursor.len()` positions:
    /// feeds `lead` (tokens in the history, not yet cached: the last accepted token, or the
    /// rest of a prompt) and up to `limit` drafted tokens, accepts the drafts the model agrees
    /// with (through the same [`Chooser`] and [`TokenSink`] as plain decoding) and rolls the
    /// cache back past the rest. Only the logits of `lead`'s last position and the draft's are
    /// computed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pass<M: DecoderModel>(
        &mut self,
        model: &mut M,
        cursor: &mut KvCursor,
        decoder: &impl Decode,
        chooser: &mut Chooser,
        sink: &mut TokenSink<'_>,
        lead: &[u32],
        limit: usize,
    ) -> Result<Pass> {
        let vocab = model.vocab_size();
        self.feed.clear();
        self.feed.extend_from_slice(lead);
        self.feed
            .extend_from_slice(self.drafter.propose(sink.generated(), limit));
        let drafted = self.feed.len() - lead.len();

        let plan = cursor.plan(self.feed.len())?;
        let rows = model.forward_last(&self.feed, plan, drafted + 1)?;
        self.stats.passes += 1;
        self.stats.proposed += drafted;
        self.stats.longest_draft = self.stats.longest_draft.max(drafted);
        let mut accepted = 0;
        let mut next = 0;
        for (i, row) in rows.chunks_exact_mut(vocab).enumerate() {
            let (choice, is_draft) = if i < drafted {
                chooser.verify(row, &sink.history, self.feed[lead.len() + i])
            } else {
                (chooser.choose(row, &sink.history), false)
            };
            if !is_draft {
                next = choice;
                break;
            }
            accepted += 1;
            if let Some(reason) = sink.accept(decoder, choice)? {
                self.stats.accepted += accepted;
                return Ok(Pass::Ended(reason));
            }
        }
        self.stats.accepted += accepted;
        self.drafter.feedback(drafted, accepted);
        // Keep the lead and the accepted drafts; forget the rejected ones.
        let keep = plan.past_len + lead.len() + accepted;
        cursor.commit(plan);
        cursor.truncate(keep);
        model.truncate_cache(keep)?;
        Ok(Pass::Next(next))
    }
}
