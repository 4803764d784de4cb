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
use crate::verify::{Drafting, Pass};

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
        let s = match self.start(decoder, prompt, config, eos_ids, Box::new(on_text), None)? {
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
    /// first token. With `drafting` and [`GenerationConfig::draft_with_prompt`], the prompt's
    /// last pass also verifies the first copy draft, so the sequence may start with several
    /// tokens accepted, or even end.
    pub(crate) fn start<'c>(
        &mut self,
        decoder: &impl Decode,
        prompt: &[u32],
        config: &GenerationConfig,
        eos_ids: &[u32],
        on_text: OnText<'c>,
        drafting: Option<&mut Drafting>,
    ) -> Result<Start<'c>> {
        let start = Instant::now();
        let mut sink = self.begin(prompt, config, eos_ids, on_text)?;
        let mut chooser = Chooser::new(config, eos_ids, self.model.vocab_size(), prompt.len());
        let reused = self.reused;
        let Some(last) = self.prefill_leading(&prompt[reused..], &mut sink)? else {
            let now = Instant::now();
            let g = sink.finish(FinishReason::Cancelled, start, ms_since(start), now);
            return Ok(Start::Done(g));
        };
        // As in the drafted loop: drafts past the context or the budget could never be kept.
        let limit = (self.cursor.remaining().saturating_sub(last.len()))
            .min(sink.budget_left())
            .saturating_sub(1);
        let generated = sink.generated();
        let drafting = drafting
            .filter(|_| config.draft_with_prompt)
            .and_then(|d| (d.proposal_len(generated, limit) > 0).then_some(d));
        let first = match drafting {
            Some(d) => {
                let model = &mut *self.model;
                let pass = d.pass(
                    model,
                    &mut self.cursor,
                    decoder,
                    &mut chooser,
                    &mut sink,
                    last,
                    limit,
                )?;
                let accepted = sink.generated().len();
                match pass {
                    Pass::Next(next) => {
                        sink.set_first_pass_tokens(accepted + 1);
                        next
                    }
                    Pass::Ended(reason) => {
                        sink.set_first_pass_tokens(accepted);
                        let (prefill_ms, now) = (ms_since(start), Instant::now());
                        let g = self.finish(sink, reason, start, prefill_ms, now);
                        return Ok(Start::Done(g));
                    }
                }
            }
            None => {
                let plan = self.cursor.plan(last.len())?;
                let logits = self.model.forward(last, plan)?;
                self.cursor.commit(plan);
                chooser.choose(logits, &sink.history)
            }
        };
        Ok(Start::Running(Box::new(Started {
            chooser,
            sink,
            first,
            start,
            prefill_ms: ms_since(start),
        })))
    }

    /// Runs the prompt (the part not reused from the cache) in chunks of [`PREFILL_CHUNK`]
    /// tokens, all but the last, and returns the last for the caller's pass; `None` when the
    /// caller cancelled between chunks.
    fn prefill_leading<'p>(
        &mut self,
        prompt: &'p [u32],
        sink: &mut TokenSink<'_>,
    ) -> Result<Option<&'p [u32]>> {
        let mut chunks = prompt.chunks(PREFILL_CHUNK);
        let Some(mut chunk) = chunks.next() else {
            return Err(Error::invalid("the prompt encodes to zero tokens"));
        };
        for next in chunks {
            let plan = self.cursor.plan(chunk.len())?;
            self.model.forward(chunk, plan)?;
            self.cursor.commit(plan);
            if !sink.still_wanted() {
                return Ok(None);
            }
            chunk = next;
        }
        Ok(Some(chunk))
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
#[path = "generate_tests.rs"]
mod tests;
