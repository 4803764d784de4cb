//! Tests of copy-draft decoding against the scripted model (see `speculative.rs`).

use super::*;
use crate::output::DraftStats;
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
    // The widest pass's rows are its drafted tokens plus the one chosen after them.
    let widest = m.calls.iter().map(|&(_, n)| n).max().unwrap();
    assert_eq!(stats.longest_draft + 1, widest, "{stats:?} {:?}", m.calls);
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
    // The first, widest draft was cut short; later passes drafted less.
    let widest = m.calls.iter().map(|&(_, n)| n).max().unwrap();
    assert_eq!(stats.longest_draft + 1, widest, "{stats:?} {:?}", m.calls);
    assert!(m.calls.last().unwrap().1 < widest, "{:?}", m.calls);
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
            .generate_with_copy_drafts(&Letters, &[0], &[1, 2, 0, 1, 2, 0], &cfg, &[], &mut |_| {
                true
            })
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
        // Both ways of starting: the first draft in a pass of its own, or with the prompt.
        for with_prompt in [false, true] {
            let cfg = cfg.clone().with_draft_with_prompt(with_prompt);
            let (d, stats, m, streamed) = drafted(&script, ctx, &prompt, &source, &cfg, &eos);
            assert_eq!(
                (d.tokens.clone(), d.finish_reason, &d.text, &streamed),
                (p.tokens.clone(), p.finish_reason, &p.text, &p.text),
                "case {case}, draft with prompt {with_prompt}"
            );
            assert!(stats.accepted <= stats.proposed);
            assert_cache_never_holds_rejected_tokens(&m, &prompt, &d.tokens);
        }
    }
}

#[test]
fn the_first_draft_rides_on_the_prompt_pass() {
    let script = chain(40);
    let prompt = [0, 1, 2];
    let cfg = GenerationConfig::default()
        .with_max_new_tokens(24)
        .with_max_draft_tokens(8);
    let source: Vec<u32> = (3..=26).collect(); // exactly what the model writes
    let (alone, alone_stats, alone_model, _) = drafted(&script, 64, &prompt, &source, &cfg, &[]);
    let cfg = cfg.with_draft_with_prompt(true);
    let (merged, stats, m, streamed) = drafted(&script, 64, &prompt, &source, &cfg, &[]);
    assert_eq!(merged.tokens, alone.tokens);
    assert_eq!(streamed, alone.text);
    // The prompt pass fed the prompt and an 8-token draft; one pass fewer in all.
    assert_eq!(m.calls[0], (0, prompt.len() + 8));
    assert_eq!(m.calls.len() + 1, alone_model.calls.len());
    assert_eq!(stats.passes, alone_stats.passes);
    assert_eq!(stats.accepted, stats.proposed);
    assert_cache_never_holds_rejected_tokens(&m, &prompt, &merged.tokens);
}

#[test]
fn a_sequence_can_end_inside_its_prompt_pass() {
    let script = chain(40);
    let cfg = GenerationConfig::default()
        .with_max_new_tokens(5)
        .with_draft_with_prompt(true);
    let source: Vec<u32> = (1..=20).collect();
    let (p, _) = plain(&script, 64, &[0], &cfg, &[]);
    let (d, stats, m, streamed) = drafted(&script, 64, &[0], &source, &cfg, &[]);
    assert_eq!(d.tokens, p.tokens);
    assert_eq!(streamed, p.text);
    assert_eq!(d.finish_reason, FinishReason::Length);
    // Drafts are capped by the budget less the token chosen after them.
    assert_eq!(m.calls, vec![(0, 1 + 4)]);
    assert_eq!(
        (
            stats.passes,
            stats.proposed,
            stats.accepted,
            stats.longest_draft
        ),
        (1, 4, 4, 4)
    );
    // EOS inside the first draft ends it too.
    let cfg = cfg.with_max_new_tokens(20);
    let (p, _) = plain(&script, 64, &[0], &cfg, &[3]);
    let (d, _, _, _) = drafted(&script, 64, &[0], &source, &cfg, &[3]);
    assert_eq!((d.tokens, d.finish_reason), (p.tokens, FinishReason::Eos));
}

#[test]
fn a_long_prompt_takes_its_draft_with_its_last_chunk() {
    use crate::generate::PREFILL_CHUNK;
    let script = chain(40);
    let prompt: Vec<u32> = (0..PREFILL_CHUNK as u32 + 30).map(|i| i % 40).collect();
    let ctx = prompt.len() + 64;
    let cfg = GenerationConfig::default()
        .with_max_new_tokens(16)
        .with_draft_with_prompt(true);
    let last = *prompt.last().unwrap();
    let source: Vec<u32> = (1..=16).map(|i| (last + i) % 40).collect();
    let (p, _) = plain(&script, ctx, &prompt, &cfg, &[]);
    let (d, _, m, _) = drafted(&script, ctx, &prompt, &source, &cfg, &[]);
    assert_eq!(d.tokens, p.tokens);
    assert_eq!(m.calls[0], (0, PREFILL_CHUNK));
    assert_eq!(m.calls[1], (PREFILL_CHUNK, 30 + 15));
}

#[test]
fn no_draft_in_the_prompt_pass_unless_asked_or_proposed() {
    let script = chain(40);
    let cfg = GenerationConfig::default().with_max_new_tokens(8);
    let source: Vec<u32> = (1..=20).collect();
    let (_, _, m, _) = drafted(&script, 64, &[0], &source, &cfg, &[]);
    assert_eq!(
        m.calls[0],
        (0, 1),
        "off by default: the first token comes first"
    );
    // Asked, but the answer has nothing to draft: a plain prompt pass.
    let cfg = cfg.with_draft_with_prompt(true);
    let (_, stats, m, _) = drafted(&script, 64, &[0], &[], &cfg, &[]);
    assert_eq!(m.calls[0], (0, 1));
    assert_eq!(stats.proposed, 0);
}
