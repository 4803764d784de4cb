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
use crate::sequence::{Chooser, OnText, TokenSink};
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
    /// The tokens whose KV the model's cache holds, from position 0: what the previous
    /// generation left ([`resume`](Self::resume)), then what this one leaves.
    cached: Vec<u32>,
    /// Prompt tokens of the current sequence taken from `cached` instead of run again.
    reused: usize,
    /// Whether to reuse at all: only a generator made with [`resume`](Self::resume) does.
    reuse: bool,
}

/// A sequence after its prompt pass: the first token is chosen, not yet accepted.
pub(crate) struct Started<'c> {
    pub(crate) chooser: Chooser,
    pub(crate) sink: TokenSink<'c>,
    pub(crate) first: u32,
    pub(crate) start: Instant,
    pub(crate) prefill_ms: f64,
}

/// What [`Generator::start`] leads to: a running sequence, or a finished one (cancelled
/// between prompt chunks).
pub(crate) enum Start<'c> {
    Running(Box<Started<'c>>),
    Done(Generation),
}

impl<'m, M: DecoderModel> Generator<'m, M> {
    /// A generator that runs every prompt from its first token.
    pub fn new(model: &'m mut M) -> Self {
        Generator {
            reuse: false,
            ..Self::resume(model, Vec::new())
        }
    }

    /// A generator over a model whose cache holds the KV of `cached` (what
    /// [`into_cached`](Self::into_cached) returned after the previous generation on it). A
    /// prompt that starts with some of those tokens skips running them again, when
    /// `reuse_prefix` is on and the model can keep part of its cache.
    pub fn resume(model: &'m mut M, cached: Vec<u32>) -> Self {
        let capacity = model.context_length();
        Generator {
            model,
            cursor: KvCursor::new(capacity),
            cached,
            reused: 0,
            reuse: true,
        }
    }

    /// The tokens whose KV the model's cache holds after the last generation (empty when it
    /// did not end normally), for [`resume`](Self::resume).
    pub fn into_cached(self) -> Vec<u32> {
        self.cached
    }

    /// For a sequence whose decoding goes on elsewhere (a batch slot) right after
    /// [`start`](Self::start): records that the cache holds `prompt`, for the next prompt to
    /// reuse, and returns how many of its tokens were reused.
    pub(crate) fn hand_off(&mut self, prompt: &[u32]) -> usize {
        self.cached = prompt[..self.cursor.len().min(prompt.len())].to_vec();
        self.reused
    }

    /// Records what the cache holds, and how much of the prompt was reused, as a sequence ends.
    pub(crate) fn finish(
        &mut self,
        sink: TokenSink<'_>,
        reason: FinishReason,
        start: Instant,
        prefill_ms: f64,
        decode_start: Instant,
    ) -> Generation {
        self.cached = sink.prefix(self.cursor.len()).to_vec();
        let mut g = sink.finish(reason, start, prefill_ms, decode_start);
        g.reused_prompt_tokens = self.reused;
        g
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
        Ok(self.finish(sink, finish_reason, start, prefill_ms, decode_start))
    }

    /// Validates, sizes the cache, runs the prompt and chooses the first token: the part both
    /// loops share, so their timings and their ends agree. `prefill_ms` is the time to that
    /// first token.
    pub(crate) fn start<'c>(
        &mut self,
        prompt: &[u32],
        config: &GenerationConfig,
        eos_ids: &[u32],
        on_text: OnText<'c>,
    ) -> Result<Start<'c>> {
        let start = Instant::now();
        let mut sink = self.begin(prompt, config, eos_ids, on_text)?;
        let mut chooser = Chooser::new(config, eos_ids, self.model.vocab_size(), prompt.len());
        let reused = self.reused;
        let Some(logits) = self.prefill(&prompt[reused..], &mut sink)? else {
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

    /// Runs the prompt (the part not reused from the cache) in chunks of [`PREFILL_CHUNK`]
    /// tokens and returns the logits of its last position, or `None` when the caller cancelled
    /// between chunks.
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
        eos_ids: &[u32],
        on_text: OnText<'c>,
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
        // Everything sized per sequence is sized by what the context can hold, never by the
        // requested budget alone: `max_tokens: 1e12` must not allocate a terabyte.
        let budget = config
            .max_new_tokens
            .min(self.cursor.capacity() - prompt.len());
        // The cache may keep the longest prefix this prompt shares with what it holds, less
        // the prompt's last token, whose logits the first step needs.
        let cached = std::mem::take(&mut self.cached);
        let shared = if self.reuse && config.reuse_prefix && self.model.can_rollback() {
            common_prefix(&cached, prompt).min(prompt.len() - 1)
        } else {
            0
        };
        let kept = self.model.reserve(prompt.len() + budget)?;
        self.reused = if kept { shared } else { 0 };
        self.model.truncate_cache(self.reused)?;
        self.cursor = KvCursor::holding(self.cursor.capacity(), self.reused);
        Ok(TokenSink::new(prompt, config, budget, eos_ids, on_text))
    }
}

/// How many leading tokens `a` and `b` share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
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
    fn a_shared_prompt_prefix_is_not_run_again_and_gives_the_same_tokens() {
        let script: Vec<u32> = (0..20).map(|t| (t * 7 + 3) % 20).collect();
        let cfg = GenerationConfig::default().with_max_new_tokens(5);
        let first = [1, 2, 3, 4, 5, 6];
        let second = [1, 2, 3, 4, 9, 8, 7];
        let mut m = ScriptedModel::new(script.clone(), 64);
        let mut g = Generator::resume(&mut m, Vec::new());
        g.generate(&Letters, &first, &cfg, &[], &mut |_| true)
            .unwrap();
        let cached = g.into_cached();
        // The cache holds the prompt and every generated token but the last (never fed).
        assert_eq!(cached.len(), first.len() + 5 - 1);
        assert_eq!(&cached[..first.len()], &first);
        let mut g = Generator::resume(&mut m, cached);
        let reused = g
            .generate(&Letters, &second, &cfg, &[], &mut |_| true)
            .unwrap();
        // The second prompt's first pass starts after the 4 shared tokens.
        assert_eq!(m.calls[m.calls.len() - 5], (4, 3));
        assert_eq!(reused.reused_prompt_tokens, 4);
        let mut fresh_model = ScriptedModel::new(script, 64);
        let fresh = Generator::new(&mut fresh_model)
            .generate(&Letters, &second, &cfg, &[], &mut |_| true)
            .unwrap();
        assert_eq!(reused.tokens, fresh.tokens);
        assert_eq!(fresh.reused_prompt_tokens, 0);
    }

    #[test]
    fn an_identical_prompt_still_runs_its_last_token_and_reuse_can_be_refused() {
        let script: Vec<u32> = (0..20).map(|t| (t + 1) % 20).collect();
        let cfg = GenerationConfig::default().with_max_new_tokens(3);
        let prompt = [1, 2, 3];
        let mut m = ScriptedModel::new(script, 64);
        let mut g = Generator::new(&mut m);
        g.generate(&Letters, &prompt, &cfg, &[], &mut |_| true)
            .unwrap();
        let cached = g.into_cached();
        let again = Generator::resume(&mut m, cached.clone())
            .generate(&Letters, &prompt, &cfg, &[], &mut |_| true)
            .unwrap();
        assert_eq!(again.reused_prompt_tokens, 2);
        assert_eq!(again.tokens, vec![4, 5, 6]);
        let off = cfg.clone().with_reuse_prefix(false);
        let plain = Generator::resume(&mut m, cached.clone())
            .generate(&Letters, &prompt, &off, &[], &mut |_| true)
            .unwrap();
        assert_eq!(plain.reused_prompt_tokens, 0);
        // An engine that reallocates its cache on reserve cannot reuse anything.
        m.reallocate_on_reserve = true;
        let moved = Generator::resume(&mut m, cached)
            .generate(&Letters, &prompt, &cfg, &[], &mut |_| true)
            .unwrap();
        assert_eq!(moved.reused_prompt_tokens, 0);
        assert_eq!(moved.tokens, vec![4, 5, 6]);
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
