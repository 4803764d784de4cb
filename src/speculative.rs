//! Copy-draft speculative decoding: draft the next tokens from the answer being corrected,
//! run them through the model in one pass, keep the prefix the model agrees with, and roll the
//! KV cache back past the rest.
//!
//! Verification uses the same [`Chooser`] and [`TokenSink`] as plain decoding, position by
//! position with the history up to that position. Greedy output is token-for-token the plain
//! greedy output. With sampling, a draft token is accepted with its target probability and a
//! rejection is resampled from the target with the draft removed (the standard speculative
//! rule for a deterministic draft), so the output distribution is exactly plain sampling's.

use std::time::Instant;

use crate::config::GenerationConfig;
use crate::draft::CopyDrafter;
use crate::error::Result;
use crate::generate::{Generator, Start, Started};
use crate::kv_cache::KvCursor;
use crate::model::DecoderModel;
use crate::output::{DraftStats, Generation};
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
/// The solo loop below and batched decoding ([`crate::batching`]) both run their drafted
/// passes through [`pass`](Self::pass), so they verify in exactly one way.
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
    /// feeds `token` (accepted, not yet cached) and up to `limit` drafted tokens, accepts the
    /// drafts the model agrees with (through the same [`Chooser`] and [`TokenSink`] as plain
    /// decoding) and rolls the cache back past the rest.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pass<M: DecoderModel>(
        &mut self,
        model: &mut M,
        cursor: &mut KvCursor,
        decoder: &impl Decode,
        chooser: &mut Chooser,
        sink: &mut TokenSink<'_>,
        token: u32,
        limit: usize,
    ) -> Result<Pass> {
        let vocab = model.vocab_size();
        self.feed.clear();
        self.feed.push(token);
        self.feed
            .extend_from_slice(self.drafter.propose(sink.generated(), limit));
        let drafted = self.feed.len() - 1;

        let plan = cursor.plan(self.feed.len())?;
        let rows = model.forward_all(&self.feed, plan)?;
        self.stats.passes += 1;
        self.stats.proposed += drafted;
        let mut accepted = 0;
        let mut next = token;
        for (i, row) in rows.chunks_exact_mut(vocab).enumerate() {
            let (choice, is_draft) = if i < drafted {
                chooser.verify(row, &sink.history, self.feed[i + 1])
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
        // Keep the fed token and the accepted drafts; forget the rejected ones.
        let keep = plan.past_len + 1 + accepted;
        cursor.commit(plan);
        cursor.truncate(keep);
        model.truncate_cache(keep)?;
        Ok(Pass::Next(next))
    }
}

impl<M: DecoderModel> Generator<'_, M> {
    /// Like [`generate`](Self::generate), drafting from `draft_source` (the tokenized answer)
    /// when decoding is greedy and the model can roll its cache back. The draft statistics
    /// are in [`Generation::drafts`] when drafting ran.
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
        let s = match self.start(prompt, config, eos_ids, Box::new(on_text))? {
            Start::Running(s) => s,
            Start::Done(g) => return Ok(g),
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

        let mut drafting = Drafting::new(draft_source, config.max_draft_tokens);
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
                token,
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
mod tests {
    use super::*;
    use crate::testing::{Letters, ScriptedModel};
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    fn plain(
        script: &[u32],
        ctx: usize,
        prompt: &[u32],
        cfg: &GenerationConfig,
        eos: &[u32],
    ) -> (Generation, ScriptedModel) {
        let mut m = ScriptedModel::new(script.to_vec(), ctx);
        let g = Generator::new(&mut m)
            .generate(&Letters, prompt, cfg, eos, &mut |_| true)
            .unwrap();
        (g, m)
    }

    fn drafted(
        script: &[u32],
        ctx: usize,
        prompt: &[u32],
        source: &[u32],
        cfg: &GenerationConfig,
        eos: &[u32],
    ) -> (Generation, DraftStats, ScriptedModel, String) {
        let mut m = ScriptedModel::new(script.to_vec(), ctx);
        let mut streamed = String::new();
        let g = Generator::new(&mut m)
            .generate_with_copy_drafts(&Letters, prompt, source, cfg, eos, &mut |t| {
                streamed.push_str(t);
                true
            })
            .unwrap();
        let stats = g.drafts.expect("drafting was used");
        (g, stats, m, streamed)
    }

    /// Every pass after a rollback must start from a cache that holds only the prompt and
    /// accepted output: exactly what a run that never drafted would hold.
    fn assert_cache_never_holds_rejected_tokens(m: &ScriptedModel, prompt: &[u32], output: &[u32]) {
        let truth: Vec<u32> = prompt.iter().chain(output).copied().collect();
        for state in &m.states {
            assert!(
                truth.starts_with(state),
                "cache {state:?} is not a prefix of {truth:?}"
            );
        }
    }

    fn chain(len: u32) -> Vec<u32> {
        (0..len).map(|t| (t + 1) % len).collect()
    }

    #[test]
    fn accept_all_when_the_answer_is_the_output() {
        let script = chain(30); // 0 -> 1 -> 2 -> ...
        let cfg = GenerationConfig::default().with_max_new_tokens(20);
        let (p, _) = plain(&script, 64, &[0], &cfg, &[]);
        let source: Vec<u32> = (1..=20).collect();
        let (d, stats, m, streamed) = drafted(&script, 64, &[0], &source, &cfg, &[]);
        assert_eq!(d.tokens, p.tokens);
        assert_eq!(streamed, p.text);
        assert!(stats.passes < 8, "{stats:?}");
        assert_eq!(stats.accepted, stats.proposed);
        assert_cache_never_holds_rejected_tokens(&m, &[0], &d.tokens);
    }

    #[test]
    fn rollback_leaves_the_cache_a_run_without_drafts_had() {
        // Drafts that diverge mid-way: accepted prefixes, then rejected tails rolled back.
        let script = chain(30);
        let cfg = GenerationConfig::default().with_max_new_tokens(16);
        let (p, plain_model) = plain(&script, 64, &[0], &cfg, &[]);
        let source = vec![1, 2, 3, 9, 9, 6, 7, 8, 9, 10, 4, 4, 13, 14, 15, 16];
        let (d, stats, m, _) = drafted(&script, 64, &[0], &source, &cfg, &[]);
        assert_eq!(d.tokens, p.tokens);
        assert!(
            stats.accepted > 0 && stats.accepted < stats.proposed,
            "{stats:?}"
        );
        // Every cache a drafted pass started from is, token for token, the cache the plain
        // run had at that length.
        for state in &m.states {
            let same_len = plain_model.states.iter().find(|s| s.len() == state.len());
            assert_eq!(Some(state), same_len, "no plain state matches {state:?}");
        }
    }

    #[test]
    fn reject_all_still_gives_plain_output() {
        let script = chain(30);
        let cfg = GenerationConfig::default().with_max_new_tokens(12);
        let (p, _) = plain(&script, 64, &[0], &cfg, &[]);
        let source = vec![20, 25, 22, 27, 21]; // never what the model wants next
        let (d, stats, m, _) = drafted(&script, 64, &[0], &source, &cfg, &[]);
        assert_eq!(d.tokens, p.tokens);
        assert_eq!(stats.accepted, 0);
        assert_cache_never_holds_rejected_tokens(&m, &[0], &d.tokens);
    }

    #[test]
    fn partial_accept_after_an_edit_realigns() {
        let script = chain(30);
        let cfg = GenerationConfig::default().with_max_new_tokens(15);
        let (p, _) = plain(&script, 64, &[0], &cfg, &[]);
        // The answer has a wrong token (29 instead of 4); the model corrects it and copies on.
        let source = vec![1, 2, 3, 29, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
        let (d, stats, m, _) = drafted(&script, 64, &[0], &source, &cfg, &[]);
        assert_eq!(d.tokens, p.tokens);
        assert!(
            stats.accepted > 0 && stats.accepted < stats.proposed,
            "{stats:?}"
        );
        assert_cache_never_holds_rejected_tokens(&m, &[0], &d.tokens);
    }

    #[test]
    fn eos_inside_a_draft_ends_like_plain() {
        let script = chain(30);
        let cfg = GenerationConfig::default().with_max_new_tokens(30);
        let eos = [6];
        let (p, _) = plain(&script, 64, &[0], &cfg, &eos);
        let source: Vec<u32> = (1..=12).collect();
        let (d, _, _, _) = drafted(&script, 64, &[0], &source, &cfg, &eos);
        assert_eq!(d.tokens, p.tokens);
        assert_eq!(d.finish_reason, FinishReason::Eos);
        assert_eq!(d.tokens, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn context_limit_and_budget_cap_drafts() {
        let script = chain(40);
        let source: Vec<u32> = (1..=39).collect();
        for (ctx, max_new) in [(10, 100), (64, 7), (9, 3)] {
            let cfg = GenerationConfig::default().with_max_new_tokens(max_new);
            let (p, _) = plain(&script, ctx, &[0, 0], &cfg, &[]);
            let (d, _, _, _) = drafted(&script, ctx, &[0, 0], &source, &cfg, &[]);
            assert_eq!(
                (d.tokens.clone(), d.finish_reason),
                (p.tokens.clone(), p.finish_reason),
                "ctx {ctx} max {max_new}"
            );
        }
    }

    /// Frequencies of whole outputs over many seeds.
    fn output_distribution(
        table: &[Vec<f32>],
        cfg: &GenerationConfig,
        source: Option<&[u32]>,
        runs: u64,
    ) -> (std::collections::HashMap<Vec<u32>, f64>, usize) {
        let mut counts = std::collections::HashMap::new();
        let mut accepted = 0;
        for seed in 0..runs {
            let cfg = cfg.clone().with_seed(seed);
            let mut m = ScriptedModel::with_table(table.to_vec(), 64);
            let mut gen = Generator::new(&mut m);
            let g = match source {
                None => gen
                    .generate(&Letters, &[0], &cfg, &[], &mut |_| true)
                    .unwrap(),
                Some(src) => {
                    let g = gen
                        .generate_with_copy_drafts(&Letters, &[0], src, &cfg, &[], &mut |_| true)
                        .unwrap();
                    accepted += g.drafts.unwrap().accepted;
                    g
                }
            };
            *counts.entry(g.tokens).or_insert(0.0) += 1.0 / runs as f64;
        }
        (counts, accepted)
    }

    #[test]
    fn sampled_drafts_keep_the_plain_sampling_distribution() {
        // Soft next-token distributions over 4 tokens; the draft source follows one likely path.
        let table = vec![
            vec![0.1, 1.2, 0.3, 0.0],
            vec![0.0, 0.2, 1.5, 0.4],
            vec![0.6, 0.0, 0.3, 1.1],
            vec![0.2, 1.0, 0.0, 0.5],
        ];
        let source = [1, 2, 3, 1, 2, 3];
        for cfg in [
            GenerationConfig::default().with_temperature(1.0),
            GenerationConfig::default()
                .with_temperature(0.7)
                .with_top_k(3)
                .with_top_p(0.9),
        ] {
            let cfg = cfg.with_max_new_tokens(4);
            let runs = 20_000;
            let (plain, _) = output_distribution(&table, &cfg, None, runs);
            let (spec, accepted) = output_distribution(&table, &cfg, Some(&source), runs);
            assert!(
                accepted > runs as usize / 10,
                "drafts were rarely accepted: {accepted}"
            );
            let keys: std::collections::HashSet<_> = plain.keys().chain(spec.keys()).collect();
            let tv: f64 = keys
                .iter()
                .map(|k| (plain.get(*k).unwrap_or(&0.0) - spec.get(*k).unwrap_or(&0.0)).abs())
                .sum::<f64>()
                / 2.0;
            // Sampling noise alone gives about 0.02 here; a biased rule gives far more.
            assert!(tv < 0.05, "total variation {tv}");
        }
    }

    #[test]
    fn sampled_drafts_are_reproducible_per_seed() {
        let table = vec![
            vec![0.5, 1.0, 0.2],
            vec![0.1, 0.3, 1.2],
            vec![1.1, 0.4, 0.0],
        ];
        let cfg = GenerationConfig::default()
            .with_temperature(1.0)
            .with_seed(9)
            .with_max_new_tokens(12);
        let run = || {
            let mut m = ScriptedModel::with_table(table.clone(), 64);
            Generator::new(&mut m)
                .generate_with_copy_drafts(
                    &Letters,
                    &[0],
                    &[1, 2, 0, 1, 2, 0],
                    &cfg,
                    &[],
                    &mut |_| true,
                )
                .unwrap()
                .tokens
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn randomized_scripts_match_plain_greedy() {
        let mut rng = ChaCha8Rng::seed_from_u64(2024);
        for case in 0..300 {
            let vocab = 8 + (rng.next_u32() % 40);
            let script: Vec<u32> = (0..vocab).map(|_| rng.next_u32() % vocab).collect();
            let prompt: Vec<u32> = (0..1 + rng.next_u32() % 5)
                .map(|_| rng.next_u32() % vocab)
                .collect();
            let max_new = 1 + (rng.next_u32() % 40) as usize;
            let ctx = prompt.len() + 1 + (rng.next_u32() % 50) as usize;
            let cfg = GenerationConfig::default()
                .with_max_new_tokens(max_new)
                .with_max_draft_tokens(1 + (rng.next_u32() % 12) as usize)
                .with_repetition_penalty(if case % 3 == 0 { 1.3 } else { 1.0 });
            let eos: Vec<u32> = if case % 2 == 0 {
                vec![rng.next_u32() % vocab]
            } else {
                vec![]
            };
            // A source that shares pieces with the true trajectory, with noise.
            let (p, _) = plain(&script, ctx, &prompt, &cfg, &eos);
            let mut source = p.tokens.clone();
            for t in source.iter_mut() {
                if rng.next_u32() % 4 == 0 {
                    *t = rng.next_u32() % vocab;
                }
            }
            let (d, stats, m, _) = drafted(&script, ctx, &prompt, &source, &cfg, &eos);
            assert_eq!(
                (d.tokens.clone(), d.finish_reason, d.text.clone()),
                (p.tokens.clone(), p.finish_reason, p.text),
                "case {case}"
            );
            assert!(stats.accepted <= stats.proposed);
            assert_cache_never_holds_rejected_tokens(&m, &prompt, &d.tokens);
        }
    }
}
