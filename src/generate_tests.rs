//! Tests of the generation loop against the scripted model (see `generate.rs`).

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
