//! A drafted verification pass has ONNX Runtime write its logits (one row per drafted token,
//! 49 152 floats each on the default model) straight into the decoder's own buffer, so the
//! CPU arena holds no second copy of them. Alone in its test binary: it measures this
//! process's memory.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

mod common;

use aligner::{Aligner, GenerationConfig, LoadOptions};
use common::*;

#[test]
fn a_verification_pass_keeps_one_copy_of_its_logits() {
    // Freed blocks leave the process, as the binary arranges (see tests/memory.rs).
    // SAFETY: mallopt only sets glibc's allocation policy.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
    let options = LoadOptions::default()
        .with_ort_lib(ort_lib())
        .with_threads(2);
    let mut aligner = Aligner::load(default_model(), &options).unwrap();
    // great-wall: the default model copies the answer, so its drafts are long.
    let (question, answer) = &workload_pairs()[0];
    let base = GenerationConfig::default().with_reuse_prefix(false);
    // Sizes the KV cache and the arena's regions for this prompt's single-token passes.
    aligner
        .correct(
            question,
            answer,
            &base.clone().with_copy_drafts(false),
            &mut |_| true,
        )
        .unwrap();
    let pid = std::process::id();
    let before = rss_kb(pid);
    // Writing 5 resets the process's peak resident size (VmHWM) to its current one.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let drafted = aligner
        .correct(question, answer, &base, &mut |_| true)
        .unwrap();
    let grew = peak_rss_kb(pid).saturating_sub(before);
    let stats = drafted.drafts.expect("drafts ran");
    // The widest pass's logits: its drafted tokens plus the one chosen after them, a row each.
    let vocab = aligner.folder().genai.model.vocab_size;
    let one_copy_kb = ((stats.longest_draft + 1) * vocab * 4 / 1024) as u64;
    eprintln!(
        "peak growth {grew} kB; the widest pass verified {} drafted tokens: {one_copy_kb} kB of logits",
        stats.longest_draft
    );
    assert!(
        one_copy_kb > 4 * 1024,
        "the drafts were too short to tell: {stats:?}"
    );
    assert!(
        grew < one_copy_kb + one_copy_kb / 2,
        "grew {grew} kB: more than one copy ({one_copy_kb} kB) of the widest pass's logits"
    );
}
