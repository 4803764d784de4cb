//! The generation loop: one prefill pass over the prompt, then one pass per new token over the
//! KV cache, with sampling, stop conditions and streamed text. [`Generator::start`] (validate,
//! prefill, first token) is shared with the speculative loop in [`crate::speculative`].

use std::time::Instant;

use crate::config::GenerationConfig;
use crate::error::{Error, Result};
use crate::kv_cache::KvCursor;
use crate::model::DecoderModel;
use crate::output::ms_since;
pub use crate::output::{DraftStats, Generation, Timings};
use crate::sequence::{Chooser, TokenSink};
use crate::stop::FinishReason;
use crate::tokenizer::Decode;

/// Prompt tokens per forward pass. A long prompt runs in chunks so its activation memory stays
/// bounded (a 4,000-token pass once grew the process by a gigabyte for good) and a caller can
/// cancel between chunks; prompts up to this length still run in one pass.
pub const PREFILL_CHUNK: usize = 512;

/// Drives a [`DecoderModel`]; owns the cache cursor so every pass is planned in one place.
pub struct Generator<'m, M: DecoderModel> {
    pub(crate) model: &'m mut M,
    pub(crate) cursor: KvCursor,
}

/// A sequence after its prompt pass: the first token is chosen, not yet accepted.
pub(crate) struct Started<'e, 'c> {
    pub(crate) chooser: Chooser<'e>,
    pub(crate) sink: TokenSink<'c>,
    pub(crate) first: u32,
    pub(crate) start: Instant,
    pub(crate) prefill_ms: f64,
}

/// What [`Generator::start`] leads to: a running sequence, or a finished one (cancelled
/// between prompt chunks).
pub(crate) enum Start<'e, 'c> {
    Running(Box<Started<'e, 'c>>),
    Done(Generation),
}

impl<'m, M: DecoderModel> Generator<'m, M> {
    pub fn new(model: &'m mut M) -> Self {
        let capacity = model.context_length();
        Generator {
            model,
            cursor: KvCursor::new(capacity),
        }
    }

    /// Generates from `prompt`. `on_text` receives each safe text increment and returns `false`
    /// to cancel; between the chunks of a long prompt it is called with an empty piece, so a
    /// caller can cancel before the first token too.
    pub fn generate(
        &mut self,
        decoder: &impl Decode,
        prompt: &[u32],
        config: &GenerationConfig,
        eos_ids: &[u32],
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let s = match self.start(prompt, config, eos_ids, on_text)? {
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
        let finish_reason = loop {
            if let Some(reason) = sink.accept(decoder, token)? {
                break reason;
            }
            if self.cursor.remaining() == 0 {
                break FinishReason::ContextFull;
            }
            let plan = self.cursor.plan(1)?;
            let logits = self.model.forward(&[token], plan)?;
            self.cursor.commit(plan);
            token = chooser.choose(logits, &sink.history);
        };
        Ok(sink.finish(finish_reason, start, prefill_ms, decode_start))
    }

    /// Validates, sizes the cache, runs the prompt and chooses the first token: the part both
    /// loops share, so their timings and their ends agree. `prefill_ms` is the time to that
    /// first token.
    pub(crate) fn start<'e, 'c>(
        &mut self,
        prompt: &[u32],
        config: &GenerationConfig,
        eos_ids: &'e [u32],
        on_text: &'c mut dyn FnMut(&str) -> bool,
    ) -> Result<Start<'e, 'c>>
    where
        'e: 'c,
    {
        let start = Instant::now();
        let mut sink = self.begin(prompt, config, eos_ids, on_text)?;
        let mut chooser = Chooser::new(config, eos_ids, self.model.vocab_size(), prompt.len());
        let Some(logits) = self.prefill(prompt, &mut sink)? else {
            let now = Instant::now();
            let g = sink.finish(FinishReason::Cancelled, start, ms_since(start), now);
            return Ok(Start::Done(g));
        };
        let first = chooser.choose(logits, &sink.history);
        Ok(Start::Running(Box::new(Started {
            chooser,
            sink,
            first,
            start,
            prefill_ms: ms_since(start),
        })))
    }

    /// Runs the prompt in chunks of [`PREFILL_CHUNK`] tokens and returns the logits of its last
    /// position, or `None` when the caller cancelled between chunks.
    fn prefill(&mut self, prompt: &[u32], sink: &mut TokenSink<'_>) -> Result<Option<&mut [f32]>> {
        let last = prompt.len().saturating_sub(1) / PREFILL_CHUNK;
        for (i, chunk) in prompt.chunks(PREFILL_CHUNK).enumerate() {
            let plan = self.cursor.plan(chunk.len())?;
            if i == last {
                let logits = self.model.forward(chunk, plan)?;
                self.cursor.commit(plan);
                return Ok(Some(logits));
            }
            self.model.forward(chunk, plan)?;
            self.cursor.commit(plan);
            if !sink.still_wanted() {
                return Ok(None);
            }
        }
        Err(Error::invalid("the prompt encodes to zero tokens"))
    }

    /// Validates, resets the cache and sizes it for this sequence.
    fn begin<'c>(
        &mut self,
        prompt: &[u32],
        config: &GenerationConfig,
        eos_ids: &'c [u32],
        on_text: &'c mut dyn FnMut(&str) -> bool,
    ) -> Result<TokenSink<'c>> {
        config.validate()?;
        if prompt.is_empty() {
            return Err(Error::invalid("the prompt encodes to zero tokens"));
        }
        // The prompt plus the first generated token must fit; nothing is truncated silently.
        if prompt.len() >= self.cursor.capacity() {
            return Err(Error::ContextOverflow {
                prompt_tokens: prompt.len(),
                context_length: self.cursor.capacity(),
            });
        }
        if let Some(limit) = config.max_prompt_tokens.filter(|&l| prompt.len() > l) {
            return Err(Error::invalid(format!(
                "the prompt is {} tokens, over this server's limit of {limit} (max_prompt_tokens); shorten the question or answer",
                prompt.len()
            )));
        }
        self.model.truncate_cache(0)?;
        self.cursor.truncate(0);
        // Everything sized per sequence is sized by what the context can hold, never by the
        // requested budget alone: `max_tokens: 1e12` must not allocate a terabyte.
        let budget = config
            .max_new_tokens
            .min(self.cursor.capacity() - prompt.len());
        self.model.reserve(prompt.len() + budget)?;
        Ok(TokenSink::new(prompt, config, budget, eos_ids, on_text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::{Letters, ScriptedModel};

    fn run(
        model: &mut ScriptedModel,
        prompt: &[u32],
        cfg: &GenerationConfig,
        eos: &[u32],
    ) -> (Result<Generation>, String) {
        let mut streamed = String::new();
        let r = Generator::new(model).generate(&Letters, prompt, cfg, eos, &mut |t| {
            streamed.push_str(t);
            true
        });
        (r, streamed)
    }

    #[test]
    fn prefill_once_then_one_token_per_step() {
        // 0 -> 1 -> 2 -> 3 -> 4 -> 5 ...
        let mut m = ScriptedModel::new(vec![1, 2, 3, 4, 5, 6, 7, 0], 64);
        let cfg = GenerationConfig::default().with_max_new_tokens(4);
        let (g, streamed) = run(&mut m, &[0, 0, 0], &cfg, &[]);
        let g = g.unwrap();
        assert_eq!(g.tokens, vec![1, 2, 3, 4]);
        assert_eq!(g.finish_reason, FinishReason::Length);
        assert_eq!(streamed, "bcde");
        assert_eq!(g.text, "bcde");
        // One prefill of 3, then single tokens at past 3, 4, 5; the 4th token needs no pass.
        assert_eq!(m.calls, vec![(0, 3), (3, 1), (4, 1), (5, 1)]);
        // The cache was sized once, for prompt plus budget.
        assert_eq!(m.reserved, vec![7]);
    }

    #[test]
    fn eos_stops_and_is_not_returned_unless_suppressed() {
        let mut m = ScriptedModel::new(vec![1, 2, 3, 0], 64);
        let cfg = GenerationConfig::default().with_max_new_tokens(10);
        let g = run(&mut m, &[0], &cfg, &[3]).0.unwrap();
        assert_eq!(g.tokens, vec![1, 2]);
        assert_eq!(g.finish_reason, FinishReason::Eos);
        // Suppressed, the scripted EOS (logit 10, all others 0) loses to token 0, the first of
        // the remaining ties, and generation runs to the length limit.
        let cfg = cfg.with_suppress_eos(true).with_max_new_tokens(5);
        let g = run(&mut m, &[0], &cfg, &[3]).0.unwrap();
        assert_eq!(g.tokens, vec![1, 2, 0, 1, 2]);
        assert_eq!(g.finish_reason, FinishReason::Length);
    }

    #[test]
    fn stop_string_ends_generation_and_is_not_streamed() {
        let mut m = ScriptedModel::new(vec![1, 2, 3, 4, 5, 0], 64);
        let cfg = GenerationConfig::default()
            .with_max_new_tokens(10)
            .with_stop(["de".to_string()]);
        let (g, streamed) = run(&mut m, &[0], &cfg, &[]);
        let g = g.unwrap();
        assert_eq!(g.finish_reason, FinishReason::Stop);
        assert_eq!(g.text, "bc");
        assert_eq!(streamed, "bc");
    }

    #[test]
    fn context_limit_ends_generation_without_overflowing() {
        let mut m = ScriptedModel::new(vec![1, 2, 3, 4, 5, 6, 7, 0], 6);
        let cfg = GenerationConfig::default().with_max_new_tokens(100);
        let g = run(&mut m, &[0, 0, 0], &cfg, &[]).0.unwrap();
        assert_eq!(g.finish_reason, FinishReason::ContextFull);
        // 6 cached positions: 3 prompt + 3 fed tokens; the 4th sampled token is never fed.
        assert_eq!(m.cached.len(), 6);
        assert_eq!(g.tokens.len(), 4);
        assert_eq!(
            m.reserved,
            vec![6],
            "reservation is capped at the context length"
        );
    }

    #[test]
    fn prompt_that_cannot_fit_is_an_error_not_a_truncation() {
        let mut m = ScriptedModel::new(vec![0; 4], 4);
        let (r, _) = run(&mut m, &[0, 1, 2, 3], &GenerationConfig::default(), &[]);
        match r {
            Err(Error::ContextOverflow {
                prompt_tokens: 4,
                context_length: 4,
            }) => {}
            other => panic!("expected overflow, got {other:?}"),
        }
        assert!(m.calls.is_empty(), "nothing may run");
    }

    #[test]
    fn cache_is_reset_between_generations() {
        let mut m = ScriptedModel::new(vec![1, 2, 3, 0], 64);
        let cfg = GenerationConfig::default().with_max_new_tokens(2);
        let mut gen = Generator::new(&mut m);
        for _ in 0..2 {
            gen.generate(&Letters, &[0, 1], &cfg, &[], &mut |_| true)
                .unwrap();
        }
        assert_eq!(m.calls, vec![(0, 2), (2, 1), (0, 2), (2, 1)]);
    }

    #[test]
    fn callback_can_cancel() {
        let mut m = ScriptedModel::new(vec![1, 2, 3, 0], 64);
        let cfg = GenerationConfig::default().with_max_new_tokens(10);
        let g = Generator::new(&mut m)
            .generate(&Letters, &[0], &cfg, &[], &mut |_| false)
            .unwrap();
        assert_eq!(g.finish_reason, FinishReason::Cancelled);
        assert_eq!(g.tokens.len(), 1);
    }

    #[test]
    fn a_huge_budget_is_sized_by_the_context_not_allocated() {
        // Regression: `max_tokens: 1000000000000` aborted the server ("memory allocation of
        // 4000000000164 bytes failed"), and 2^62 panicked with "capacity overflow".
        for budget in [1_000_000_000_000usize, 1 << 62, usize::MAX] {
            let mut m = ScriptedModel::new(vec![1, 2, 3, 4, 5, 6, 7, 0], 8);
            let cfg = GenerationConfig::default().with_max_new_tokens(budget);
            let g = run(&mut m, &[0, 0], &cfg, &[]).0.unwrap();
            assert_eq!(g.finish_reason, FinishReason::ContextFull);
            assert_eq!(m.reserved, vec![8]);
        }
    }

    #[test]
    fn long_prompts_run_in_chunks_and_can_be_cancelled_between_them() {
        let n = 2 * PREFILL_CHUNK + 10;
        let prompt = vec![0u32; n];
        let mut m = ScriptedModel::new(vec![1, 2, 3, 0], 4096);
        let cfg = GenerationConfig::default().with_max_new_tokens(2);
        run(&mut m, &prompt, &cfg, &[]).0.unwrap();
        let c = PREFILL_CHUNK;
        assert_eq!(m.calls[..3], [(0, c), (c, c), (2 * c, 10)]);

        // A caller that leaves during the prompt stops it at the next chunk boundary.
        let mut m = ScriptedModel::new(vec![1, 2, 3, 0], 4096);
        let mut probes = 0;
        let g = Generator::new(&mut m)
            .generate(&Letters, &prompt, &cfg, &[], &mut |piece| {
                assert!(piece.is_empty());
                probes += 1;
                false
            })
            .unwrap();
        assert_eq!(g.finish_reason, FinishReason::Cancelled);
        assert!(g.tokens.is_empty());
        assert_eq!(probes, 1);
        assert_eq!(m.calls, vec![(0, c)]);
    }

    #[test]
    fn prompt_token_limit_is_enforced() {
        let mut m = ScriptedModel::new(vec![0; 4], 64);
        let cfg = GenerationConfig::default().with_max_prompt_tokens(3);
        let e = run(&mut m, &[0, 1, 2, 3], &cfg, &[]).0.unwrap_err();
        assert!(e.to_string().contains("max_prompt_tokens"), "{e}");
        assert!(m.calls.is_empty());
    }

    #[test]
    fn invalid_config_is_rejected_before_running() {
        let mut m = ScriptedModel::new(vec![0; 4], 16);
        let cfg = GenerationConfig::default().with_top_p(1.5);
        assert!(matches!(
            run(&mut m, &[0], &cfg, &[]).0,
            Err(Error::InvalidRequest(_))
        ));
        assert!(m.calls.is_empty());
    }
}
