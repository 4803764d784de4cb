//! The library as an embedder uses it: no binary, real ONNX Runtime, the tiny model.

mod common;

use aligner::{Aligner, Error, LoadOptions, ProviderChoice, ProviderConfig};
use common::*;

fn options() -> LoadOptions {
    LoadOptions::default()
        .with_ort_lib(ort_lib())
        .with_threads(1)
}

fn tiny_int8() -> std::path::PathBuf {
    let p = root().join("models/tiny-llama-int8");
    assert!(p.join("model.onnx").is_file(), "run `make test`");
    p
}

/// Each session's node placement comes from its own build: two models loaded at the same
/// time on two threads both report every node (a process-wide log once let one load drain
/// the other's lines).
#[test]
fn models_loaded_at_once_each_report_their_own_placement() {
    let lone = Aligner::load(tiny_int8(), &options()).unwrap();
    let nodes = |a: &Aligner| {
        a.provider()
            .placements
            .iter()
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    let expected = nodes(&lone);
    assert!(expected > 0, "{:?}", lone.provider());
    for _ in 0..3 {
        let barrier = std::sync::Barrier::new(2);
        let counts: Vec<usize> = std::thread::scope(|s| {
            let loads: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        nodes(&Aligner::load(tiny_int8(), &options()).unwrap())
                    })
                })
                .collect();
            loads.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(counts, vec![expected, expected]);
    }
}

#[test]
fn runtime_info_names_the_library_and_provider() {
    let a = Aligner::load(tiny_int8(), &options()).unwrap();
    let info = a.runtime_info();
    assert_eq!(info.version, "1.31.1");
    assert_eq!(info.path, ort_lib());
    assert_eq!(info.provider, "cpu");
}

/// ONNX Runtime failures carry the phase that failed: a graph that cannot be built is a
/// load error, a provider that cannot register a provider error.
#[test]
fn ort_failures_are_labelled_by_phase() {
    let broken = broken_copy(|d| {
        let onnx = d.join("model.onnx");
        let bytes = std::fs::read(&onnx).unwrap();
        std::fs::write(&onnx, &bytes[..bytes.len() / 3]).unwrap();
    });
    match Aligner::load(broken.path(), &options()) {
        Err(Error::Load { reason, .. }) => assert!(reason.contains("re-export"), "{reason}"),
        other => panic!("expected a load error, got {:?}", other.err()),
    }
    let cuda = ProviderConfig::default().with_choice(ProviderChoice::Cuda);
    match Aligner::load(tiny_int8(), &options().with_provider(cuda)) {
        Err(Error::Provider { provider, .. }) => assert_eq!(provider, "cuda"),
        other => panic!("expected a provider error, got {:?}", other.err()),
    }
}

/// A `CancelHandle` used from another thread stops the generation in progress; a request made
/// while idle stops the next one at once, and is then cleared.
#[test]
fn a_cancel_handle_stops_a_generation_from_another_thread() {
    let mut a = Aligner::load(tiny_int8(), &options()).unwrap();
    let config = aligner::GenerationConfig::default()
        .with_max_new_tokens(200)
        .with_suppress_eos(true);
    let handle = a.cancel_handle();
    let probe = a.cancel_handle();
    let (started, wait) = std::sync::mpsc::channel();
    let canceller = std::thread::spawn(move || {
        wait.recv().unwrap();
        handle.cancel();
    });
    let mut pieces = 0;
    let g = a
        .generate_ids(&[1, 2, 3], &config, &mut |piece| {
            if !piece.is_empty() {
                pieces += 1;
                if pieces == 1 {
                    started.send(()).unwrap();
                    // Wait for the other thread's cancel to land before the next token.
                    while !probe.is_cancelled() {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
            }
            true
        })
        .unwrap();
    canceller.join().unwrap();
    assert_eq!(g.finish_reason, aligner::FinishReason::Cancelled);
    assert!(g.tokens.len() < 200, "{}", g.tokens.len());

    a.cancel_handle().cancel();
    let g = a.generate_ids(&[1, 2, 3], &config, &mut |_| true).unwrap();
    assert_eq!(g.finish_reason, aligner::FinishReason::Cancelled);
    let g = a.generate_ids(&[1, 2, 3], &config, &mut |_| true).unwrap();
    assert_eq!(g.finish_reason, aligner::FinishReason::Length);
    assert_eq!(g.tokens.len(), 200);
}

/// Prefix reuse on the real model: each correction starts from the KV cache of the prefix it
/// shares with the previous one (the template's system prompt), and gives the same tokens as
/// running its whole prompt.
#[test]
fn prefix_reuse_gives_the_same_corrections_as_whole_prompts() {
    let model = root().join("models/smollm2-135m-aligner-int8");
    assert!(model.join("model.onnx").is_file(), "run `make model`");
    let pairs: Vec<serde_json::Value> =
        std::fs::read_to_string(root().join("benches/workloads/corrections.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let mut reusing = Aligner::load(&model, &options().with_threads(2)).unwrap();
    let mut whole = Aligner::load(&model, &options().with_threads(2)).unwrap();
    let config = aligner::GenerationConfig::default().with_max_new_tokens(48);
    let no_reuse = config.clone().with_reuse_prefix(false);
    let (mut identical, mut reused) = (0, Vec::new());
    for pair in &pairs {
        let (q, a) = (
            pair["question"].as_str().unwrap(),
            pair["answer"].as_str().unwrap(),
        );
        let r = reusing.correct(q, a, &config, &mut |_| true).unwrap();
        let w = whole.correct(q, a, &no_reuse, &mut |_| true).unwrap();
        identical += usize::from(r.tokens == w.tokens);
        reused.push(r.reused_prompt_tokens);
        assert_eq!(w.reused_prompt_tokens, 0);
    }
    assert_eq!(identical, pairs.len(), "identical corrections");
    assert_eq!(reused[0], 0, "nothing is cached before the first");
    assert!(
        reused[1..].iter().all(|&n| n >= 20),
        "the system prompt is reused: {reused:?}"
    );
}

/// A correction longer than the KV buffers grows them. On the CPU the cached positions move
/// into the new buffers, so it still starts from the cached template prefix (a growth used to
/// drop it), and it gives the same tokens as running its whole prompt.
#[test]
fn a_kv_cache_that_grows_keeps_the_cached_prefix() {
    let model = default_model();
    let mut reusing = Aligner::load(&model, &options().with_threads(2)).unwrap();
    let mut whole = Aligner::load(&model, &options().with_threads(2)).unwrap();
    let config = aligner::GenerationConfig::default().with_max_new_tokens(16);
    let no_reuse = config.clone().with_reuse_prefix(false);
    let q = "How should I store fresh basil?";
    let first = reusing
        .correct(q, "In the fridge.", &config, &mut |_| true)
        .unwrap();
    assert!(first.prompt_tokens + 16 <= 256, "{}", first.prompt_tokens);
    let long = "Keep the stems in a glass of water on the counter, out of direct sun. ".repeat(20);
    let r = reusing.correct(q, &long, &config, &mut |_| true).unwrap();
    let w = whole.correct(q, &long, &no_reuse, &mut |_| true).unwrap();
    assert!(
        r.prompt_tokens > 256,
        "the buffers grew: {}",
        r.prompt_tokens
    );
    assert!(
        r.reused_prompt_tokens >= 20,
        "the prefix survived the growth: {} reused",
        r.reused_prompt_tokens
    );
    assert_eq!(r.tokens, w.tokens);
}

/// Our exporter's graphs take `logits_to_keep` with a default, which ONNX Runtime lists among
/// the overridable initializers, not the inputs. The engine must still bind it, on the
/// original graph and on a graph-cache entry (written, then loaded), or every prompt pass
/// projects every position onto the vocabulary.
#[test]
fn our_graphs_project_only_the_last_prompt_position() {
    let cache = tempfile::tempdir().unwrap();
    let cached = || options().with_graph_cache(cache.path());
    for (model, opts) in [
        (tiny_int8(), options()),
        (tiny_int8(), cached()),
        (tiny_int8(), cached()),
        (default_model(), options()),
    ] {
        let a = Aligner::load(&model, &opts).unwrap();
        assert!(a.keeps_only_needed_logits(), "{}", model.display());
    }
}

/// The default model refuses harmful answers in a few fixed sentences, which the answer
/// offers nothing to copy from: a refusal that repeats an earlier output drafts from it,
/// alone and in a batch, and starts with the same tokens as without that history.
#[test]
fn a_rewrite_that_repeats_an_earlier_output_drafts_from_it() {
    let model = root().join("models/smollm2-135m-aligner-int8");
    assert!(model.join("model.onnx").is_file(), "run `make model`");
    let pairs = workload_pairs();
    let pair = |start: &str| {
        pairs
            .iter()
            .find(|(_, a)| a.starts_with(start))
            .cloned()
            .unwrap()
    };
    let (first, second) = (pair("Wait until it is dark"), pair("Seriously?"));
    let config = aligner::GenerationConfig::default().with_max_new_tokens(48);
    let accepted = |g: &aligner::Generation| g.drafts.unwrap().accepted;

    let mut fresh = Aligner::load(&model, &options().with_threads(2)).unwrap();
    let alone = fresh
        .correct(&second.0, &second.1, &config, &mut |_| true)
        .unwrap();
    assert!(accepted(&alone) < 3, "the answer is not copied: {alone:?}");

    let mut warm = Aligner::load(&model, &options().with_threads(2)).unwrap();
    let earlier = warm
        .correct(&first.0, &first.1, &config, &mut |_| true)
        .unwrap();
    let again = warm
        .correct(&second.0, &second.1, &config, &mut |_| true)
        .unwrap();
    assert!(earlier.tokens.len() > 10 && again.tokens.len() > 10);
    assert_eq!(again.tokens[..8], alone.tokens[..8]);
    assert!(
        accepted(&again) >= 10,
        "{:?} after {:?}",
        again.text,
        earlier.text
    );

    // In a batch: the first row's output is the second's draft source.
    let mut batched = Vec::new();
    let mut model = Aligner::load(&model, &options().with_threads(2)).unwrap();
    let mut batch = model.batch(2).unwrap();
    for (i, (q, a)) in [first, second].iter().enumerate() {
        if let Some((_, r)) = batch.admit_correction(None, q, a, &config, Box::new(|_| true), i) {
            batched.push(r.unwrap());
        }
        while batch.running() > 0 {
            batched.extend(batch.step().into_iter().map(|(_, r)| r.unwrap()));
        }
    }
    assert_eq!(batched[1].tokens[..8], alone.tokens[..8]);
    assert!(accepted(&batched[1]) >= 10, "{:?}", batched[1].text);
}
