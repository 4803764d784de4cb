//! Logits processors and the token sampler.
//!
//! Plain functions over `&mut [f32]`, as in llama2.c, plus a [`Sampler`] that owns every scratch
//! buffer so the per-token path allocates nothing. Randomness comes from ChaCha8 seeded
//! explicitly, so a seed reproduces the same text on every platform.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Temperatures below this sample greedily: dividing logits by 1e-40 overflows to infinities
/// and NaNs, and any temperature this small is greedy in effect anyway.
pub const GREEDY_BELOW_TEMPERATURE: f32 = 1e-4;

/// The settings a [`Sampler`] reads, apart from the rest of a generation's configuration (as
/// candle's `LogitsProcessor` takes a seed, a temperature and a method). Build one from a
/// [`GenerationConfig`](crate::GenerationConfig) with its `sampling()`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct SamplingParams {
    /// 0 (or below [`GREEDY_BELOW_TEMPERATURE`]) is greedy.
    pub temperature: f32,
    /// 0 is no limit.
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    /// 1 is off.
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

/// Divides positive logits and multiplies negative ones by `penalty` for every distinct token in
/// `history` (CTRL / Hugging Face semantics). `seen` is a caller-owned scratch of `logits.len()`
/// flags, all false on entry and on return.
pub fn apply_repetition_penalty(
    logits: &mut [f32],
    history: &[u32],
    penalty: f32,
    seen: &mut [bool],
) {
    if penalty == 1.0 {
        return;
    }
    for &t in history {
        let i = t as usize;
        if i >= logits.len() || seen[i] {
            continue;
        }
        seen[i] = true;
        let l = &mut logits[i];
        *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
    }
    for &t in history {
        if let Some(s) = seen.get_mut(t as usize) {
            *s = false;
        }
    }
}

pub fn apply_temperature(logits: &mut [f32], temperature: f32) {
    if temperature != 1.0 {
        let inv = 1.0 / temperature;
        logits.iter_mut().for_each(|l| *l *= inv);
    }
}

/// Index of the largest logit; the first one on ties, as torch and onnxruntime-genai do.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_val = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_val {
            best_val = v;
            best = i;
        }
    }
    best as u32
}

/// Keeps the `k` best candidates of `candidates` (indices into `logits`), sorted best first.
pub fn top_k(logits: &[f32], candidates: &mut Vec<u32>, k: usize) {
    let by_logit_desc = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
    if k > 0 && k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, by_logit_desc);
        candidates.truncate(k);
    }
    candidates.sort_unstable_by(by_logit_desc);
}

/// Softmax of the (sorted) candidates' logits into `probs`.
pub fn softmax_candidates(logits: &[f32], candidates: &[u32], probs: &mut Vec<f32>) {
    probs.clear();
    let max = candidates.first().map_or(0.0, |&i| logits[i as usize]);
    let mut sum = 0.0f32;
    for &i in candidates {
        let p = (logits[i as usize] - max).exp();
        probs.push(p);
        sum += p;
    }
    probs.iter_mut().for_each(|p| *p /= sum);
}

/// Nucleus filter over probabilities sorted descending: keeps the smallest prefix whose mass
/// reaches `top_p` (always at least one). Returns the kept length.
pub fn top_p_len(probs: &[f32], top_p: f32) -> usize {
    if top_p >= 1.0 {
        return probs.len();
    }
    let mut mass = 0.0;
    for (i, p) in probs.iter().enumerate() {
        mass += p;
        if mass >= top_p {
            return i + 1;
        }
    }
    probs.len()
}

/// Min-p filter: keeps candidates whose probability is at least `min_p` times the best one.
pub fn min_p_len(probs: &[f32], min_p: f32) -> usize {
    if min_p <= 0.0 || probs.is_empty() {
        return probs.len();
    }
    let threshold = probs[0] * min_p;
    probs.iter().take_while(|&&p| p >= threshold).count().max(1)
}

/// Draws an index from unnormalized weights with a uniform `u` in [0, 1).
pub fn sample_index(weights: &[f32], u: f32) -> usize {
    let total: f32 = weights.iter().sum();
    let mut target = u * total;
    for (i, w) in weights.iter().enumerate() {
        if target < *w {
            return i;
        }
        target -= w;
    }
    weights.len() - 1
}

/// Owns the sampling settings, the RNG and all scratch buffers (sized to the vocabulary once).
pub struct Sampler {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
    repetition_penalty: f32,
    rng: ChaCha8Rng,
    seen: Vec<bool>,
    candidates: Vec<u32>,
    probs: Vec<f32>,
}

impl Sampler {
    pub fn new(params: SamplingParams, vocab_size: usize) -> Self {
        Sampler {
            temperature: if params.temperature < GREEDY_BELOW_TEMPERATURE {
                0.0
            } else {
                params.temperature
            },
            top_k: params.top_k,
            top_p: params.top_p,
            min_p: params.min_p,
            repetition_penalty: params.repetition_penalty,
            rng: ChaCha8Rng::seed_from_u64(params.seed),
            seen: vec![false; vocab_size],
            candidates: Vec::with_capacity(vocab_size),
            probs: Vec::with_capacity(vocab_size),
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    /// Picks the next token. `logits` is modified in place; `penalized` holds the tokens the
    /// repetition penalty counts (by default only the generated ones).
    pub fn sample(&mut self, logits: &mut [f32], penalized: &[u32]) -> u32 {
        if self.penalize(logits, penalized) {
            return argmax(logits);
        }
        let keep = self.distribution(logits);
        let u = self.uniform();
        self.candidates[sample_index(&self.probs[..keep], u)]
    }

    /// Speculative verification of a deterministic draft token (a copy draft puts all its
    /// probability on `draft`). Greedy: accepted iff it is the argmax. Sampling: accepted with
    /// the target probability p(draft), else the token is drawn from p with `draft` removed,
    /// which is the standard rule and leaves the output distribution exactly that of
    /// [`sample`](Self::sample). Returns the token and whether it is the draft.
    pub fn verify_draft(
        &mut self,
        logits: &mut [f32],
        penalized: &[u32],
        draft: u32,
    ) -> (u32, bool) {
        if self.penalize(logits, penalized) {
            let best = argmax(logits);
            return (best, best == draft);
        }
        let keep = self.distribution(logits);
        let total: f32 = self.probs[..keep].iter().sum();
        let slot = self.candidates[..keep].iter().position(|&c| c == draft);
        let p_draft = slot.map_or(0.0, |i| self.probs[i] / total);
        if self.uniform() < p_draft {
            return (draft, true);
        }
        if let Some(i) = slot {
            self.probs[i] = 0.0;
        }
        let u = self.uniform();
        (self.candidates[sample_index(&self.probs[..keep], u)], false)
    }

    /// Applies the repetition penalty; returns true when decoding is greedy.
    fn penalize(&mut self, logits: &mut [f32], penalized: &[u32]) -> bool {
        if self.seen.len() < logits.len() {
            self.seen.resize(logits.len(), false);
        }
        apply_repetition_penalty(logits, penalized, self.repetition_penalty, &mut self.seen);
        self.is_greedy()
    }

    /// Temperature, top-k, softmax, top-p and min-p: fills `candidates` (best first) and
    /// `probs`, and returns how many of them may be drawn.
    fn distribution(&mut self, logits: &mut [f32]) -> usize {
        apply_temperature(logits, self.temperature);
        self.candidates.clear();
        self.candidates.extend(0..logits.len() as u32);
        top_k(logits, &mut self.candidates, self.top_k);
        softmax_candidates(logits, &self.candidates, &mut self.probs);
        top_p_len(&self.probs, self.top_p).min(min_p_len(&self.probs, self.min_p))
    }

    fn uniform(&mut self) -> f32 {
        (self.rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GenerationConfig;

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_once() {
        let mut l = vec![2.0, -2.0, 1.0];
        let mut seen = vec![false; 3];
        apply_repetition_penalty(&mut l, &[0, 1, 0, 0], 2.0, &mut seen);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
        assert!(seen.iter().all(|s| !s), "scratch flags must be reset");
    }

    #[test]
    fn temperature_scales_logits() {
        let mut l = vec![1.0, -2.0];
        apply_temperature(&mut l, 0.5);
        assert_eq!(l, vec![2.0, -4.0]);
    }

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, 1.0]), 1);
    }

    #[test]
    fn top_k_keeps_best_sorted() {
        let l = vec![0.1, 0.9, 0.5, 0.7];
        let mut c: Vec<u32> = (0..4).collect();
        top_k(&l, &mut c, 2);
        assert_eq!(c, vec![1, 3]);
        let mut all: Vec<u32> = (0..4).collect();
        top_k(&l, &mut all, 0);
        assert_eq!(all, vec![1, 3, 2, 0]);
    }

    #[test]
    fn softmax_sums_to_one() {
        let l = vec![1.0, 2.0, 3.0];
        let mut p = Vec::new();
        softmax_candidates(&l, &[2, 1, 0], &mut p);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[0] > p[1] && p[1] > p[2]);
    }

    #[test]
    fn top_p_keeps_smallest_prefix_reaching_mass() {
        let p = [0.5, 0.3, 0.15, 0.05];
        assert_eq!(top_p_len(&p, 0.5), 1);
        assert_eq!(top_p_len(&p, 0.7), 2);
        assert_eq!(top_p_len(&p, 0.99), 4);
        assert_eq!(top_p_len(&p, 1.0), 4);
    }

    #[test]
    fn min_p_is_relative_to_best() {
        let p = [0.5, 0.3, 0.15, 0.05];
        assert_eq!(min_p_len(&p, 0.5), 2);
        assert_eq!(min_p_len(&p, 0.0), 4);
        assert_eq!(min_p_len(&p, 1.0), 1);
    }

    #[test]
    fn sample_index_follows_cumulative_weights() {
        let w = [0.25, 0.5, 0.25];
        assert_eq!(sample_index(&w, 0.0), 0);
        assert_eq!(sample_index(&w, 0.3), 1);
        assert_eq!(sample_index(&w, 0.8), 2);
        assert_eq!(sample_index(&w, 0.999_999), 2);
    }

    fn noisy_logits() -> Vec<f32> {
        (0..100).map(|i| ((i * 37 % 17) as f32) * 0.3).collect()
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let cfg = GenerationConfig::default()
            .with_temperature(1.0)
            .with_seed(7);
        let draw = |cfg: &GenerationConfig| {
            let mut s = Sampler::new(cfg.sampling(), 100);
            (0..32)
                .map(|_| s.sample(&mut noisy_logits(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(&cfg), draw(&cfg));
        assert_ne!(draw(&cfg), draw(&cfg.clone().with_seed(8)));
    }

    #[test]
    fn greedy_ignores_rng_and_penalty_can_change_choice() {
        let mut s = Sampler::new(GenerationConfig::default().sampling(), 3);
        assert_eq!(s.sample(&mut [1.0, 3.0, 2.9], &[]), 1);
        let cfg = GenerationConfig::default().with_repetition_penalty(2.0);
        let mut s = Sampler::new(cfg.sampling(), 3);
        assert_eq!(s.sample(&mut [1.0, 3.0, 2.9], &[1]), 2);
    }

    #[test]
    fn vanishing_temperature_is_greedy_not_garbage() {
        // Regression: temperature 1e-40 divided the logits into infinities and sampled noise.
        for t in [1e-40, 1e-30, 1e-6] {
            let cfg = GenerationConfig::default().with_temperature(t).with_seed(3);
            let mut s = Sampler::new(cfg.sampling(), 100);
            assert!(s.is_greedy(), "{t}");
            for _ in 0..10 {
                assert_eq!(s.sample(&mut noisy_logits(), &[]), 11, "{t}");
            }
        }
        let e = GenerationConfig::default()
            .with_temperature(f32::INFINITY)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("finite"), "{e}");
    }

    #[test]
    fn top_k_one_with_temperature_is_greedy() {
        let cfg = GenerationConfig::default()
            .with_temperature(1.5)
            .with_top_k(1);
        let mut s = Sampler::new(cfg.sampling(), 4);
        for _ in 0..10 {
            assert_eq!(s.sample(&mut [0.0, 0.1, 5.0, 0.2], &[]), 2);
        }
    }
}
