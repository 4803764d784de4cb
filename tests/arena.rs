//! The library hands back the regions of ONNX Runtime's CPU arena that a pass grew, against
//! the same pass with the arena kept. Alone in its test binary: it measures this process's
//! memory.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

mod common;

use aligner::{Aligner, GenerationConfig, LoadOptions};
use common::*;

/// Anonymous memory the process gained over one long prompt's pass on a model loaded with
/// `options` (the model's start is not counted).
fn growth_over_a_long_pass_kb(options: &LoadOptions) -> u64 {
    let mut aligner = Aligner::load(default_model(), options).unwrap();
    let prompt: Vec<u32> = (0..700).map(|i| 1000 + (i * 37) % 20000).collect();
    let config = GenerationConfig::default()
        .with_max_new_tokens(1)
        .with_suppress_eos(true);
    let before = anonymous_kb(std::process::id());
    aligner
        .generate_ids(&prompt, &config, &mut |_| true)
        .unwrap();
    anonymous_kb(std::process::id()).saturating_sub(before)
}

/// One long prompt grows the arena of activations by doubling regions; by default they go
/// back when the pass ends. Freed blocks must leave the process for that to show, as the
/// binary arranges (see tests/memory.rs), so this process sets the same policy.
#[test]
fn a_long_pass_hands_back_the_arena_regions_it_grew() {
    // SAFETY: mallopt only sets glibc's allocation policy.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
    let options = LoadOptions::default()
        .with_ort_lib(ort_lib())
        .with_threads(2);
    let kept = growth_over_a_long_pass_kb(&options.clone().with_keep_arena(true));
    let shrunk = growth_over_a_long_pass_kb(&options);
    eprintln!("anonymous growth: {shrunk} kB, {kept} kB keeping the arena");
    assert!(
        shrunk + 6 * 1024 < kept,
        "grew {shrunk} kB against {kept} kB"
    );
}
