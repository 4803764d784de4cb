//! [`Batch`]: continuous batching on a loaded [`Aligner`], for callers that have many
//! corrections at once (a batch file, a busy server). The scheduling is [`crate::batching`]'s;
//! this adds templates, the tokenizer and the cancel handle.
//!
//! ```no_run
//! use aligner::{Aligner, LoadOptions};
//!
//! let mut model = Aligner::load("models/smollm2-135m-instruct-int8", &LoadOptions::default())?;
//! let config = model.generation_defaults().with_max_new_tokens(64);
//! let pairs = [("Where is Paris?", "In Germany."), ("2 + 2?", "5")];
//! let mut batch = model.batch(8)?;
//! let mut pending = pairs.iter().enumerate();
//! loop {
//!     while batch.free() > 0 {
//!         let Some((i, (q, a))) = pending.next() else { break };
//!         if let Some((i, out)) = batch.admit_correction(None, q, a, &config, Box::new(|_| true), i) {
//!             println!("{i}: {:?}", out.map(|g| g.text));
//!         }
//!     }
//!     if batch.running() == 0 {
//!         break;
//!     }
//!     for (i, out) in batch.step() {
//!         println!("{i}: {:?}", out.map(|g| g.text));
//!     }
//! }
//! # Ok::<(), aligner::Error>(())
//! ```

use crate::batching::{Batcher, Finished, OnText};
use crate::config::GenerationConfig;
use crate::error::Result;
use crate::model::BatchModel;
use crate::template::Template;
use crate::{with_template_stops, Aligner};

/// Up to `slots` corrections decoding together on one [`Aligner`] (see [`Aligner::batch`]).
/// Each sequence keeps its own sampling settings, seed, stop strings and streaming callback;
/// greedy output equals the same request run alone, up to near-ties in the kernels' numerics.
/// Greedy corrections draft from their answer (see [`crate::batching`]); other sequences
/// decode plainly.
pub struct Batch<'a, T> {
    aligner: &'a mut Aligner,
    batcher: Batcher<'a, T>,
}

impl Aligner {
    /// A batch of `slots` slots on this model (1 to [`crate::batching::MAX_SLOTS`]). Errors
    /// when the model cannot batch: a GPU provider, or a folder without a shared-buffer cache.
    pub fn batch<T>(&mut self, slots: usize) -> Result<Batch<'_, T>> {
        let batcher = Batcher::new(slots, &self.eos_ids, std::mem::take(&mut self.kv_tokens))?;
        // Fails early, before any sequence is admitted, when the engine cannot batch.
        self.engine.reserve_batch(slots, 1)?;
        Ok(Batch {
            aligner: self,
            batcher,
        })
    }
}

impl<'a, T> Batch<'a, T> {
    /// Slots with no sequence.
    pub fn free(&self) -> usize {
        self.batcher.free()
    }

    /// Sequences decoding.
    pub fn running(&self) -> usize {
        self.batcher.running()
    }

    /// Renders the correction prompt (the model's template unless `template` names one), runs
    /// it and puts the sequence in a free slot. Returns its result at once when it ended
    /// already (an error, a cancel, a one-token answer), `None` when it runs.
    pub fn admit_correction(
        &mut self,
        template: Option<Template>,
        question: &str,
        answer: &str,
        config: &GenerationConfig,
        on_text: OnText<'a>,
        tag: T,
    ) -> Option<Finished<T>> {
        // The answer's tokens are the copy drafts, then recent outputs, as for a correction
        // alone.
        let prepared = template
            .map_or_else(|| self.aligner.template(), Ok)
            .and_then(|t| {
                let (ids, answer_ids) = self.aligner.correction_ids(t, question, answer)?;
                let source = self.aligner.draft_history.source(&answer_ids);
                Ok((ids, Some(source), with_template_stops(t, config)))
            });
        self.admit_prepared(prepared, on_text, tag)
    }

    /// Like [`admit_correction`](Self::admit_correction) for an ordinary chat turn (see
    /// [`Aligner::answer`]).
    pub fn admit_answer(
        &mut self,
        system: Option<&str>,
        question: &str,
        config: &GenerationConfig,
        on_text: OnText<'a>,
        tag: T,
    ) -> Option<Finished<T>> {
        let prepared = self.aligner.template().and_then(|t| {
            let ids = self.aligner.encode_prompt(&t.chat(system, question))?;
            Ok((ids, None, with_template_stops(t, config)))
        });
        self.admit_prepared(prepared, on_text, tag)
    }

    /// Admits a rendered prompt and its config, or hands back the error that rendering met.
    fn admit_prepared(
        &mut self,
        prepared: Result<(Vec<u32>, Option<Vec<u32>>, GenerationConfig)>,
        on_text: OnText<'a>,
        tag: T,
    ) -> Option<Finished<T>> {
        match prepared {
            Ok((ids, source, config)) => {
                self.admit_drafted(&ids, source.as_deref(), &config, on_text, tag)
            }
            Err(e) => Some((tag, Err(e))),
        }
    }

    /// Admits raw prompt token ids (no template).
    pub fn admit_ids(
        &mut self,
        prompt: &[u32],
        config: &GenerationConfig,
        on_text: OnText<'a>,
        tag: T,
    ) -> Option<Finished<T>> {
        self.admit_drafted(prompt, None, config, on_text, tag)
    }

    /// Admits prompt ids, with the tokens that copy drafts come from when there are any.
    fn admit_drafted(
        &mut self,
        prompt: &[u32],
        draft_source: Option<&[u32]>,
        config: &GenerationConfig,
        mut on_text: OnText<'a>,
        tag: T,
    ) -> Option<Finished<T>> {
        if let Err(e) = self.aligner.check_ids(prompt) {
            return Some((tag, Err(e)));
        }
        let cancel = self.aligner.cancel.clone();
        let watched: OnText<'a> = Box::new(move |piece| !cancel.is_cancelled() && on_text(piece));
        let Aligner {
            engine, tokenizer, ..
        } = &mut *self.aligner;
        let done = self.batcher.admit(
            engine,
            &**tokenizer,
            prompt,
            draft_source,
            config,
            watched,
            tag,
        );
        if let Some((_, Ok(g))) = &done {
            self.aligner.draft_history.push(&g.tokens);
        }
        done
    }

    /// One batched pass: each running sequence gets its next token (and streams it). Returns
    /// the sequences that ended. A stop asked through [`Aligner::cancel_handle`] ends every
    /// running sequence at its next token, and is cleared once none runs.
    pub fn step(&mut self) -> Vec<Finished<T>> {
        let Aligner {
            engine,
            tokenizer,
            cancel,
            ..
        } = &mut *self.aligner;
        let done = self.batcher.step(engine, &**tokenizer);
        if self.batcher.running() == 0 {
            cancel.clear();
        }
        for (_, g) in &done {
            if let Ok(g) = g {
                self.aligner.draft_history.push(&g.tokens);
            }
        }
        done
    }
}

impl<T> Drop for Batch<'_, T> {
    fn drop(&mut self) {
        // What the single-sequence cache holds, for the next call's prefix reuse.
        self.aligner.kv_tokens = std::mem::take(&mut self.batcher.cached);
        self.aligner.cancel.clear();
    }
}
