use std::collections::VecDeque;

use super::*;
use crate::testing::{Letters, ScriptedModel};

const VOCAB: usize = 40;
const EOS: [u32; 1] = [39];

/// A model whose next token hashes the whole cached sequence, so any cache mix-up shows.
fn model(context: usize) -> ScriptedModel {
    let mut m = ScriptedModel::new((0..VOCAB as u32).collect(), context);
    m.whole_history = true;
    m
}

fn alone(context: usize, prompt: &[u32], cfg: &GenerationConfig) -> Generation {
    let mut m = model(context);
    Generator::new(&mut m)
        .generate(&Letters, prompt, cfg, &EOS, &mut |_| true)
        .unwrap()
}

/// Runs every job through a batcher of `slots` slots, admitting the next job whenever a slot
/// is free; returns the results in job order and the number of batched passes.
fn batched(
    m: &mut ScriptedModel,
    slots: usize,
    jobs: &[(Vec<u32>, GenerationConfig)],
) -> (Vec<Result<Generation>>, usize) {
    batched_drafting(m, slots, jobs, &vec![None; jobs.len()])
}

/// Like [`batched`], job `i` drafting from `sources[i]` when there is one.
fn batched_drafting(
    m: &mut ScriptedModel,
    slots: usize,
    jobs: &[(Vec<u32>, GenerationConfig)],
    sources: &[Option<Vec<u32>>],
) -> (Vec<Result<Generation>>, usize) {
    let mut out: Vec<Option<Result<Generation>>> = jobs.iter().map(|_| None).collect();
    let mut queue: VecDeque<usize> = (0..jobs.len()).collect();
    let mut b = Batcher::new(slots, &EOS, Vec::new()).unwrap();
    let mut passes = 0;
    loop {
        while b.free() > 0 {
            let Some(i) = queue.pop_front() else { break };
            let (prompt, cfg) = &jobs[i];
            let source = sources[i].as_deref();
            if let Some((tag, r)) = b.admit(m, &Letters, prompt, source, cfg, Box::new(|_| true), i)
            {
                out[tag] = Some(r);
            }
        }
        if b.running() == 0 {
            break;
        }
        passes += 1;
        for (tag, r) in b.step(m, &Letters) {
            out[tag] = Some(r);
        }
    }
    (out.into_iter().map(Option::unwrap).collect(), passes)
}

fn jobs() -> Vec<(Vec<u32>, GenerationConfig)> {
    (0..9u32)
        .map(|i| {
            let prompt: Vec<u32> = (0..3 + 2 * i).map(|k| (k * 7 + i) % 30).collect();
            let cfg = GenerationConfig::default().with_max_new_tokens(4 + (i as usize * 5) % 13);
            (prompt, cfg)
        })
        .collect()
}

#[test]
fn every_sequence_in_a_batch_equals_the_sequence_alone() {
    let jobs = jobs();
    let mut m = model(128);
    let (results, passes) = batched(&mut m, 3, &jobs);
    let mut alone_passes = 0;
    for ((prompt, cfg), got) in jobs.iter().zip(results) {
        let want = alone(128, prompt, cfg);
        let got = got.unwrap();
        assert_eq!(got.tokens, want.tokens, "prompt {prompt:?}");
        assert_eq!(got.text, want.text);
        assert_eq!(got.finish_reason, want.finish_reason);
        alone_passes += want.tokens.len().saturating_sub(1);
    }
    // Sequences shared passes: fewer than one pass per token.
    assert!(
        passes < alone_passes,
        "{passes} passes against {alone_passes}"
    );
    // The batch is as wide as the running sequences need, never wider than its slots.
    assert!(m.batch_calls.iter().all(|&s| s <= 3));
    assert!(m.batch_calls.contains(&3), "{:?}", m.batch_calls);
}

#[test]
fn a_lone_sequence_runs_in_a_batch_of_one() {
    let jobs = &jobs()[..1];
    let mut m = model(128);
    let (results, passes) = batched(&mut m, 8, jobs);
    assert_eq!(
        results[0].as_ref().unwrap().tokens,
        alone(128, &jobs[0].0, &jobs[0].1).tokens
    );
    assert_eq!(m.batch_calls, vec![1; passes]);
}

#[test]
fn eos_stop_strings_and_the_context_end_a_sequence_as_they_do_alone() {
    // A small context: long budgets end by ContextFull, some by EOS or a stop string.
    let mut jobs = jobs();
    for (i, (_, cfg)) in jobs.iter_mut().enumerate() {
        *cfg = cfg.clone().with_max_new_tokens(100);
        if i % 3 == 0 {
            cfg.stop = vec!["k".into()];
        }
    }
    let mut m = model(24);
    let (results, _) = batched(&mut m, 4, &jobs);
    let mut reasons = std::collections::HashSet::new();
    for ((prompt, cfg), got) in jobs.iter().zip(results) {
        let want = alone(24, prompt, cfg);
        let got = got.unwrap();
        assert_eq!(
            (&got.tokens, got.finish_reason),
            (&want.tokens, want.finish_reason)
        );
        reasons.insert(format!("{:?}", got.finish_reason));
    }
    assert!(reasons.contains("ContextFull"), "{reasons:?}");
}

#[test]
fn each_sequence_samples_with_its_own_settings_and_seed() {
    // Soft logits: the draw depends on the seed.
    let table: Vec<Vec<f32>> = (0..VOCAB)
        .map(|t| {
            (0..VOCAB)
                .map(|k| ((t * 13 + k * 7) % 11) as f32 * 0.3)
                .collect()
        })
        .collect();
    let jobs: Vec<(Vec<u32>, GenerationConfig)> = (0..6u64)
        .map(|seed| {
            let cfg = GenerationConfig::default()
                .with_max_new_tokens(12)
                .with_temperature(if seed == 2 { 0.0 } else { 1.0 })
                .with_seed(seed);
            (vec![1, 2, 3 + seed as u32], cfg)
        })
        .collect();
    let mut m = ScriptedModel::with_table(table.clone(), 64);
    let (results, _) = batched(&mut m, 4, &jobs);
    for ((prompt, cfg), got) in jobs.iter().zip(results) {
        let mut single = ScriptedModel::with_table(table.clone(), 64);
        let want = Generator::new(&mut single)
            .generate(&Letters, prompt, cfg, &EOS, &mut |_| true)
            .unwrap();
        assert_eq!(got.unwrap().tokens, want.tokens, "seed {:?}", cfg.seed);
    }
}

#[test]
fn a_cancelled_sequence_frees_its_slot_and_the_others_go_on() {
    let jobs = jobs();
    let mut m = model(128);
    let mut b = Batcher::new(2, &EOS, Vec::new()).unwrap();
    let cfg = GenerationConfig::default().with_max_new_tokens(30);
    let mut pieces = 0;
    let quitter: OnText<'_> = Box::new(move |piece: &str| {
        pieces += usize::from(!piece.is_empty());
        pieces < 3
    });
    assert!(b
        .admit(&mut m, &Letters, &jobs[0].0, None, &cfg, quitter, 0)
        .is_none());
    assert!(b
        .admit(
            &mut m,
            &Letters,
            &jobs[1].0,
            None,
            &cfg,
            Box::new(|_| true),
            1
        )
        .is_none());
    // No third slot.
    let (tag, full) = b
        .admit(
            &mut m,
            &Letters,
            &jobs[2].0,
            None,
            &cfg,
            Box::new(|_| true),
            2,
        )
        .unwrap();
    assert_eq!(tag, 2);
    assert!(full.unwrap_err().to_string().contains("slot"));
    let mut ended = Vec::new();
    while b.running() > 0 {
        ended.extend(b.step(&mut m, &Letters));
        if ended.len() == 1 {
            assert_eq!(b.free(), 1, "the cancelled sequence still holds its slot");
        }
    }
    let (first, cancelled) = &ended[0];
    let cancelled = cancelled.as_ref().unwrap();
    assert_eq!(
        (*first, cancelled.finish_reason),
        (0, FinishReason::Cancelled)
    );
    // Alone, the same callback stops the sequence at the same token.
    let mut single = model(128);
    let mut pieces = 0;
    let want = Generator::new(&mut single)
        .generate(&Letters, &jobs[0].0, &cfg, &EOS, &mut |piece: &str| {
            pieces += usize::from(!piece.is_empty());
            pieces < 3
        })
        .unwrap();
    assert_eq!(
        (&cancelled.text, &cancelled.tokens),
        (&want.text, &want.tokens)
    );
    assert!(cancelled.tokens.len() < 10);
    let (second, rest) = &ended[1];
    let want = alone(128, &jobs[1].0, &cfg);
    assert_eq!((*second, &rest.as_ref().unwrap().tokens), (1, &want.tokens));
}

#[test]
fn a_shared_prompt_prefix_runs_once_across_admissions() {
    let base: Vec<u32> = (0..12).map(|k| (k * 5) % 30).collect();
    let jobs: Vec<(Vec<u32>, GenerationConfig)> = (0..3u32)
        .map(|i| {
            let mut p = base.clone();
            p.extend([i, i + 1]);
            (p, GenerationConfig::default().with_max_new_tokens(6))
        })
        .collect();
    let mut m = model(128);
    let (results, _) = batched(&mut m, 3, &jobs);
    let reused: Vec<usize> = results
        .iter()
        .map(|r| r.as_ref().unwrap().reused_prompt_tokens)
        .collect();
    assert_eq!(reused, vec![0, 12, 12]);
    // Prefill passes: the whole first prompt, then only the two new tokens of the others.
    let prefills: Vec<(usize, usize)> = m.calls.clone();
    assert_eq!(prefills, vec![(0, 14), (12, 2), (12, 2)]);
    for ((prompt, cfg), got) in jobs.iter().zip(results) {
        assert_eq!(got.unwrap().tokens, alone(128, prompt, cfg).tokens);
    }
}

#[test]
fn bad_requests_come_back_with_their_tag() {
    let mut m = model(16);
    assert!(Batcher::<()>::new(0, &EOS, Vec::new()).is_err());
    let mut b = Batcher::new(2, &EOS, Vec::new()).unwrap();
    let cfg = GenerationConfig::default();
    let too_long: Vec<u32> = vec![1; 20];
    let (tag, r) = b
        .admit(
            &mut m,
            &Letters,
            &too_long,
            None,
            &cfg,
            Box::new(|_| true),
            7,
        )
        .unwrap();
    assert_eq!(tag, 7);
    assert!(matches!(r, Err(Error::ContextOverflow { .. })));
    assert_eq!(b.free(), 2);
    // A huge budget is bounded by the context, not allocated.
    let cfg = cfg.with_max_new_tokens(usize::MAX / 2);
    assert!(b
        .admit(&mut m, &Letters, &[1, 2], None, &cfg, Box::new(|_| true), 8)
        .is_none());
    assert_eq!(b.positions, 16);
}

type Job = (Vec<u32>, GenerationConfig);

/// Job `i`'s result in a batch against the job run alone. The model's next token hashes the
/// whole cache: a slot or cache mix-up shows here.
fn assert_equals_alone(i: usize, (prompt, cfg): &Job, got: &Generation) {
    let want = alone(128, prompt, cfg);
    assert_eq!(
        (&got.tokens, &got.text, got.finish_reason),
        (&want.tokens, &want.text, want.finish_reason),
        "job {i}"
    );
}

/// Jobs with long budgets, and as draft sources each one's own output alone: exact (job 0, 3,
/// ...), with an edit of three tokens after the third (1, 4, ...), or none (2, 5, ...). After
/// the edit the draft length falls to 4, under [`MIN_DRAFT_ALONE`]: only batched steps that
/// agree with the draft grow it back.
fn drafting_jobs() -> (Vec<Job>, Vec<Option<Vec<u32>>>) {
    let jobs: Vec<_> = jobs()
        .into_iter()
        .map(|(prompt, cfg)| (prompt, cfg.with_max_new_tokens(40).with_suppress_eos(true)))
        .collect();
    let sources = jobs
        .iter()
        .enumerate()
        .map(|(i, (prompt, cfg))| {
            let mut source = alone(128, prompt, cfg).tokens;
            match i % 3 {
                0 => Some(source),
                1 => {
                    for t in &mut source[3..6] {
                        *t = (*t + 1) % 30;
                    }
                    Some(source)
                }
                _ => None,
            }
        })
        .collect();
    (jobs, sources)
}

#[test]
fn drafting_sequences_equal_the_sequence_alone_and_save_batched_passes() {
    let (jobs, sources) = drafting_jobs();
    let mut m = model(128);
    let (results, passes) = batched_drafting(&mut m, 3, &jobs, &sources);
    let mut plain = model(128);
    let (_, plain_passes) = batched(&mut plain, 3, &jobs);
    for (i, (job, got)) in jobs.iter().zip(results).enumerate() {
        let got = got.unwrap();
        assert_equals_alone(i, job, &got);
        match (i % 3, got.drafts) {
            // An exact source is copied in drafted passes alone: at least 8 tokens each.
            (0, Some(d)) => assert!(d.passes >= 1 && d.accepted >= 32, "job {i}: {d:?}"),
            // After the edit the draft shrinks, grows back in the batch and drafts again.
            (1, Some(d)) => {
                assert!(d.passes >= 2 && d.accepted < d.proposed, "job {i}: {d:?}")
            }
            (2, None) => {}
            (_, d) => panic!("job {i}: drafts {d:?}"),
        }
    }
    assert!(
        passes < plain_passes,
        "{passes} batched passes with drafts against {plain_passes}"
    );
}

#[test]
fn sampled_and_short_drafts_stay_in_the_batch() {
    let (jobs, sources) = drafting_jobs();
    // Sampled: no drafting at all.
    let sampled: Vec<_> = jobs
        .iter()
        .map(|(p, c)| (p.clone(), c.clone().with_temperature(0.8).with_seed(3)))
        .collect();
    let mut m = model(128);
    let (results, _) = batched_drafting(&mut m, 3, &sampled, &sources);
    assert!(results.iter().all(|r| r.as_ref().unwrap().drafts.is_none()));
    // Drafts shorter than MIN_DRAFT_ALONE never take a pass of their own. A cap of c drafts
    // at most c + c/2 tokens (a short tail joins a draft), so the cap is under two thirds.
    let cap = MIN_DRAFT_ALONE * 2 / 3;
    assert!(cap + cap / 2 < MIN_DRAFT_ALONE);
    let short: Vec<_> = jobs
        .iter()
        .map(|(p, c)| (p.clone(), c.clone().with_max_draft_tokens(cap)))
        .collect();
    let mut m = model(128);
    let (results, _) = batched_drafting(&mut m, 3, &short, &sources);
    for (i, r) in results.iter().enumerate() {
        let r = r.as_ref().unwrap();
        assert_eq!(r.tokens, alone(128, &short[i].0, &short[i].1).tokens);
        assert_eq!(r.drafts.map_or(0, |d| d.passes), 0, "job {i}");
    }
}

#[test]
fn a_pass_runs_only_the_running_sequences() {
    // Five sequences in a batch of 8: the cache is 8 wide, each pass 5 rows, then fewer as
    // they end (padding the passes to the cache's width gave 8).
    let jobs = &jobs()[..5];
    let mut m = model(128);
    let (results, _) = batched(&mut m, 8, jobs);
    for ((prompt, cfg), got) in jobs.iter().zip(results) {
        assert_eq!(got.unwrap().tokens, alone(128, prompt, cfg).tokens);
    }
    assert_eq!(m.batch_calls[0], 5, "{:?}", m.batch_calls);
    assert!(
        m.batch_calls.windows(2).all(|w| w[1] <= w[0]),
        "{:?}",
        m.batch_calls
    );
}

#[test]
fn a_first_draft_verified_with_the_prompt_can_end_a_row_at_admission() {
    let (jobs, sources) = drafting_jobs();
    let with_prompt = |budget: usize| -> Vec<Job> {
        jobs.iter()
            .map(|(p, c)| {
                let c = c.clone().with_max_new_tokens(budget);
                (p.clone(), c.with_draft_with_prompt(true))
            })
            .collect()
    };
    let check = |jobs: &[Job], results: Vec<Result<Generation>>| {
        for (i, (job, got)) in jobs.iter().zip(results).enumerate() {
            assert_equals_alone(i, job, &got.unwrap());
        }
    };
    let long = with_prompt(40);
    let (results, _) = batched_drafting(&mut model(128), 3, &long, &sources);
    check(&long, results);

    // 33 tokens: an exact source's 32-token first draft and the token after it fill the
    // budget in the prompt pass, so those rows never take a batched pass.
    let exact: Vec<usize> = (0..jobs.len()).filter(|i| i % 3 == 0).collect();
    let short: Vec<Job> = exact.iter().map(|&i| with_prompt(33)[i].clone()).collect();
    let short_sources: Vec<_> = exact.iter().map(|&i| sources[i].clone()).collect();
    let mut m = model(128);
    let (results, passes) = batched_drafting(&mut m, 3, &short, &short_sources);
    let drafts: Vec<_> = results
        .iter()
        .map(|r| r.as_ref().unwrap().drafts.unwrap())
        .collect();
    check(&short, results);
    assert_eq!(passes, 0);
    assert!(m.batch_calls.is_empty());
    for d in drafts {
        assert_eq!((d.passes, d.proposed, d.accepted), (1, 32, 32), "{d:?}");
    }
}
