//! Continuous batching on the real default model and real ONNX Runtime: every correction of
//! the benchmark workload, run in a batch of slots of different lengths, against the same
//! correction run alone with plain greedy decoding.

mod common;

use aligner::{Aligner, GenerationConfig, LoadOptions};
use common::*;

fn trained_model() -> std::path::PathBuf {
    let p = root().join("models/smollm2-135m-aligner-int8");
    assert!(p.join("model.onnx").is_file(), "run `make model`");
    p
}

fn load() -> Aligner {
    let ort = ort_lib();
    Aligner::load(
        trained_model(),
        &LoadOptions::default().with_ort_lib(ort).with_threads(2),
    )
    .unwrap()
}

/// Runs every pair through a batch of `slots`, admitting the next pair as a slot frees.
fn batched(
    model: &mut Aligner,
    slots: usize,
    pairs: &[(String, String)],
    configs: &[GenerationConfig],
) -> Vec<aligner::Generation> {
    let mut out: Vec<Option<aligner::Generation>> = pairs.iter().map(|_| None).collect();
    let mut batch = model.batch(slots).unwrap();
    let mut next = 0;
    let mut peak = 0;
    loop {
        while batch.free() > 0 && next < pairs.len() {
            let (q, a) = &pairs[next];
            let admitted =
                batch.admit_correction(None, q, a, &configs[next], Box::new(|_| true), next);
            if let Some((i, r)) = admitted {
                out[i] = Some(r.unwrap());
            }
            next += 1;
        }
        peak = peak.max(batch.running());
        if batch.running() == 0 {
            break;
        }
        for (i, r) in batch.step() {
            out[i] = Some(r.unwrap());
        }
    }
    assert_eq!(peak, slots, "the batch never filled");
    out.into_iter().map(Option::unwrap).collect()
}

/// Greedy configs, with copy drafts or without. Budgets differ per row so that rows end at
/// different steps and free slots are refilled.
fn greedy_configs(model: &Aligner, n: usize, drafts: bool) -> Vec<GenerationConfig> {
    (0..n)
        .map(|i| {
            model
                .generation_defaults()
                .with_temperature(0.0)
                .with_copy_drafts(drafts)
                .with_max_new_tokens(24 + (i * 11) % 40)
        })
        .collect()
}

/// Each pair corrected alone, as `aligner correct` runs it.
fn alone(
    model: &mut Aligner,
    pairs: &[(String, String)],
    configs: &[GenerationConfig],
) -> Vec<aligner::Generation> {
    pairs
        .iter()
        .zip(configs)
        .map(|((q, a), c)| model.correct(q, a, c, &mut |_| true).unwrap())
        .collect()
}

/// Rows whose tokens and text equal the same row alone.
fn exact(alone: &[aligner::Generation], in_batch: &[aligner::Generation]) -> usize {
    alone
        .iter()
        .zip(in_batch)
        .filter(|(a, b)| a.tokens == b.tokens && a.text == b.text)
        .count()
}

#[test]
fn greedy_rows_in_a_batch_equal_the_rows_alone() {
    let mut model = load();
    let pairs = workload_pairs();
    let configs = greedy_configs(&model, pairs.len(), false);
    let alone = alone(&mut model, &pairs, &configs);
    for slots in [4, 7] {
        let in_batch = batched(&mut model, slots, &pairs, &configs);
        let exact = exact(&alone, &in_batch);
        eprintln!(
            "batch of {slots}: {exact}/{} rows token-for-token equal to the row alone",
            pairs.len()
        );
        for (a, b) in alone.iter().zip(&in_batch) {
            // A near-tie in the kernels may flip a late token; the start of every row agrees.
            let same = a
                .tokens
                .iter()
                .zip(&b.tokens)
                .take_while(|(x, y)| x == y)
                .count();
            assert!(same >= 8.min(a.tokens.len()), "{:?} / {:?}", a.text, b.text);
            assert_eq!(b.prompt_tokens, a.prompt_tokens);
        }
        assert!(
            exact + 1 >= pairs.len(),
            "only {exact}/{} rows equal",
            pairs.len()
        );
    }
}

#[test]
fn greedy_corrections_draft_in_a_batch_and_equal_the_rows_alone() {
    let mut model = load();
    let pairs = workload_pairs();
    let configs = greedy_configs(&model, pairs.len(), true);
    let alone = alone(&mut model, &pairs, &configs);
    let in_batch = batched(&mut model, 4, &pairs, &configs);
    let exact = exact(&alone, &in_batch);
    let drafted = in_batch
        .iter()
        .filter(|g| g.drafts.is_some_and(|d| d.passes > 0 && d.accepted >= 8))
        .count();
    let copied: usize = in_batch
        .iter()
        .filter_map(|g| g.drafts)
        .map(|d| d.accepted)
        .sum();
    let tokens: usize = in_batch.iter().map(|g| g.tokens.len()).sum();
    eprintln!(
        "drafts in a batch of 4: {exact}/{} rows equal to the row alone; {drafted} rows drafted, {copied} of {tokens} tokens accepted from drafts",
        pairs.len()
    );
    assert!(
        exact + 1 >= pairs.len(),
        "only {exact}/{} rows equal",
        pairs.len()
    );
    // The workload's copy pairs (12 of 16) are copied in drafted passes.
    assert!(drafted >= 10, "only {drafted} rows drafted");
    assert!(
        copied * 2 > tokens,
        "{copied} of {tokens} tokens from drafts"
    );
}

#[test]
fn a_first_draft_verified_with_the_prompt_ends_copy_rows_at_admission() {
    let mut model = load();
    let pairs = workload_pairs();
    // 32 tokens: the prompt pass can verify a 31-token first draft and choose the token after.
    let configs: Vec<_> = greedy_configs(&model, pairs.len(), true)
        .into_iter()
        .map(|c| c.with_max_new_tokens(32))
        .collect();
    let alone = alone(&mut model, &pairs, &configs);
    let mut batch = model.batch(4).unwrap();
    let mut ended_at_admission = 0;
    let mut exact = 0;
    for (i, ((q, a), c)) in pairs.iter().zip(&configs).enumerate() {
        let c = c.clone().with_draft_with_prompt(true);
        let mut got = match batch.admit_correction(None, q, a, &c, Box::new(|_| true), i) {
            Some((_, r)) => {
                ended_at_admission += 1;
                vec![r.unwrap()]
            }
            None => Vec::new(),
        };
        while batch.running() > 0 {
            got.extend(batch.step().into_iter().map(|(_, r)| r.unwrap()));
        }
        let got = got.pop().unwrap();
        exact += usize::from(got.tokens == alone[i].tokens && got.text == alone[i].text);
    }
    eprintln!(
        "first draft with the prompt: {ended_at_admission}/{} rows ended in their prompt pass, {exact} equal to the row alone",
        pairs.len()
    );
    assert!(
        exact + 1 >= pairs.len(),
        "only {exact}/{} rows equal",
        pairs.len()
    );
    // Most of the workload's corrections copy at least their answer's first 32 tokens.
    assert!(
        ended_at_admission >= 8,
        "{ended_at_admission} rows ended at admission"
    );
}
