//! One copy of the weights per process: `Aligner::share` hands another thread the same ONNX
//! Runtime session. On the real default model: handles that run at the same time produce what
//! one handle produces alone, and a handle costs its KV cache, not another copy of the model.
//!
//! One test in this binary, so that no other test's allocations move the RSS it reads.

mod common;

use aligner::{Aligner, GenerationConfig, LoadOptions};
use common::*;

fn load() -> Aligner {
    let ort = ort_lib();
    let dir = root().join("models/smollm2-135m-aligner-int8");
    assert!(dir.join("model.onnx").is_file(), "run `make model`");
    // One thread per handle, as `serve --workers 2` runs them on two cores.
    Aligner::load(
        dir,
        &LoadOptions::default().with_ort_lib(ort).with_threads(1),
    )
    .unwrap()
}

/// Corrects `pairs` with one handle, greedy, copy drafts on or off by pair (both paths run).
fn correct_all(
    model: &mut Aligner,
    pairs: &[(usize, &(String, String))],
) -> Vec<(usize, Vec<u32>)> {
    pairs
        .iter()
        .map(|&(i, (q, a))| {
            let config = GenerationConfig::default()
                .with_temperature(0.0)
                .with_max_new_tokens(48)
                .with_copy_drafts(i % 2 == 0);
            (
                i,
                model.correct(q, a, &config, &mut |_| true).unwrap().tokens,
            )
        })
        .collect()
}

#[test]
fn shared_handles_run_at_once_like_one_handle_and_hold_one_copy_of_the_weights() {
    let pairs = workload_pairs();
    let indexed: Vec<(usize, &(String, String))> = pairs.iter().enumerate().collect();
    let mut first = load();
    let alone = correct_all(&mut first, &indexed);
    let before = rss_mb(std::process::id());

    let mut second = first.share().unwrap();
    let (evens, odds): (Vec<_>, Vec<_>) = indexed.iter().partition(|(i, _)| i % 4 < 2);
    // Each thread walks its half twice, so the two threads' passes overlap for most of it.
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| {
            let mut out = correct_all(&mut first, &evens);
            out.extend(correct_all(&mut first, &odds));
            out
        });
        let b = scope.spawn(|| {
            let mut out = correct_all(&mut second, &odds);
            out.extend(correct_all(&mut second, &evens));
            out
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    let grown = rss_mb(std::process::id()) - before;

    // One thread each, the same session: the same kernels, so every token must agree.
    for run in [&a, &b] {
        for (i, tokens) in run.iter() {
            assert_eq!(
                tokens, &alone[*i].1,
                "pair {i} differs when run beside another handle"
            );
        }
    }
    assert_eq!(a.len() + b.len(), 2 * pairs.len());
    // The model folder is about 150 MB and a session's prepacked weights take more: a second
    // session grows RSS by well over 100 MB. A shared handle adds its KV cache and logits.
    eprintln!("a shared handle and its concurrent run added {grown:.1} MB");
    assert!(grown < 60.0, "a shared handle added {grown:.1} MB of RSS");
}
