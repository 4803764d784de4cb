//! The generation loop: one prefill pass over the prompt, then one pass per new token over the
//! KV cache, with sampling, stop conditions and streamed text.

use std::time::Instant;

use serde::Serialize;

use crate::config::GenerationConfig;
use crate::error::{Error, Result};
use crate::kv_cache::KvCursor;
use crate::model::DecoderModel;
use crate::sampler::Sampler;
use crate::stop::{FinishReason, StopStrings};
use crate::tokenizer::{Decode, DecodeStream};

/// Prompt tokens per forward pass. A long prompt runs in chunks so its activation memory stays
/// bounded (a 4,000-token pass once grew the process by a gigabyte for good) and a caller can
/// cancel between chunks; prompts up to this length still run in one pass.
pub const PREFILL_CHUNK: usize = 512;

/// Wall-clock split of one generation, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Prompt forward pass (time to first token, less sampling).
    pub prefill_ms: f64,
    /// All per-token passes after the first token.
    pub decode_ms: f64,
    pub total_ms: f64,
}

impl Timings {
    pub fn prefill_tok_s(&self, prompt_tokens: usize) -> f64 {
        rate(prompt_tokens, self.prefill_ms)
    }
    pub fn decode_tok_s(&self, new_tokens: usize) -> f64 {
        rate(new_tokens.saturating_sub(1), self.decode_ms)
    }
}

fn rate(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

/// The result of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub finish_reason: FinishReason,
    pub timings: Timings,
    /// Copy-draft statistics, when speculative decoding ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drafts: Option<crate::speculative::DraftStats>,
}

/// Drives a [`DecoderModel`]; owns the cache cursor so every pass is planned in one place.
pub struct Generator<'m, M: DecoderModel> {
    model: &'m mut M,
    cursor: KvCursor,
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
        let start = Instant::now();
        let mut sink = self.begin(prompt, config, eos_ids, on_text)?;
        let mut chooser = Chooser::new(config, eos_ids, self.model.vocab_size(), prompt.len());
        let Some(mut logits) = self.prefill(prompt, &mut sink)? else {
            let now = Instant::now();
            return Ok(sink.finish(FinishReason::Cancelled, start, ms_since(start), now));
        };
        let prefill_ms = ms_since(start);
        let decode_start = Instant::now();

        let finish_reason = loop {
            let token = chooser.choose(logits, &sink.history);
            if let Some(reason) = sink.accept(decoder, token)? {
                break reason;
            }
            if self.cursor.remaining() == 0 {
                break FinishReason::ContextFull;
            }
            let plan = self.cursor.plan(1)?;
            logits = self.model.forward(&[token], plan)?;
            self.cursor.commit(plan);
        };
        Ok(sink.finish(finish_reason, start, prefill_ms, decode_start))
    }

    /// Runs the prompt in chunks of [`PREFILL_CHUNK`] tokens and returns the logits of its last
    /// position, or `None` when the caller cancelled between chunks. Both loops start here.
    pub(crate) fn prefill(
        &mut self,
        prompt: &[u32],
        sink: &mut TokenSink<'_>,
    ) -> Result<Option<&mut [f32]>> {
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
    pub(crate) fn begin<'c>(
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

    pub(crate) fn model(&mut self) -> &mut M {
        self.model
    }

    pub(crate) fn cursor(&mut self) -> &mut KvCursor {
        &mut self.cursor
    }
}

/// Turns logits into the next token: EOS suppression, then the configured sampler.
pub(crate) struct Chooser<'e> {
    sampler: Sampler,
    suppress: &'e [u32],
    penalize_from: usize,
}

impl<'e> Chooser<'e> {
    pub(crate) fn new(
        config: &GenerationConfig,
        eos_ids: &'e [u32],
        vocab: usize,
        prompt_len: usize,
    ) -> Self {
        Chooser {
            sampler: Sampler::new(config, vocab),
            suppress: if config.suppress_eos { eos_ids } else { &[] },
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
        for &eos in self.suppress {
            if let Some(l) = logits.get_mut(eos as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// Everything that happens to an accepted token: EOS, streaming, stop strings, the budget.
/// Shared by the plain and the speculative loops so both end in exactly the same way.
pub(crate) struct TokenSink<'c> {
    pub(crate) history: Vec<u32>,
    prompt_len: usize,
    max_new_tokens: usize,
    eos_ids: &'c [u32],
    stream: DecodeStream,
    stops: StopStrings,
    on_text: &'c mut dyn FnMut(&str) -> bool,
}

impl<'c> TokenSink<'c> {
    fn new(
        prompt: &[u32],
        config: &GenerationConfig,
        budget: usize,
        eos_ids: &'c [u32],
        on_text: &'c mut dyn FnMut(&str) -> bool,
    ) -> Self {
        let mut history = Vec::with_capacity(prompt.len() + budget);
        history.extend_from_slice(prompt);
        TokenSink {
            history,
            prompt_len: prompt.len(),
            max_new_tokens: config.max_new_tokens,
            eos_ids,
            stream: DecodeStream::new(),
            stops: StopStrings::new(config.stop.clone()),
            on_text,
        }
    }

    /// Asks the caller whether to go on, with an empty piece (see [`Generator::generate`]).
    fn still_wanted(&mut self) -> bool {
        (self.on_text)("")
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
        };
        let mut tokens = self.history.split_off(self.prompt_len);
        if finish_reason == FinishReason::Eos {
            tokens.pop();
        }
        Generation {
            text: self.stops.text().to_string(),
            tokens,
            prompt_tokens: self.prompt_len,
            finish_reason,
            timings,
            drafts: None,
        }
    }
}

pub(crate) fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
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
