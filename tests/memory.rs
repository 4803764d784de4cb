//! Memory the binary hands back to the kernel under its allocator policy, against the same
//! start without it. Alone in its test binary: a child's peak includes what its process held
//! when it was forked from this one (tests/arena.rs loads models in its process).
#![cfg(all(target_os = "linux", target_env = "gnu"))]

mod common;

use std::process::Stdio;

use common::*;

/// Peak resident memory of `aligner ARGS`, in kB, from the kernel's accounting of the child.
fn peak_kb(args: &[&str], mmap_threshold: Option<&str>) -> u64 {
    let mut cmd = aligner();
    cmd.args(args)
        .env_remove("MALLOC_MMAP_THRESHOLD_")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(t) = mmap_threshold {
        cmd.env("MALLOC_MMAP_THRESHOLD_", t);
    }
    let pid = cmd.spawn().expect("binary runs").id() as libc::pid_t;
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: waits for (and reaps) this test's own child; both out-pointers are locals.
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    usage.ru_maxrss as u64
}

/// A start from a graph-cache entry packs every weight again into a temporary buffer. Under
/// glibc's adaptive threshold (its ceiling, 32 MiB, set by the user here, which the binary
/// keeps) those buffers stay in the heap when freed, and in the start's peak.
#[test]
fn a_start_hands_back_the_buffers_it_packs_weights_into() {
    let model = default_model();
    let cache = tempfile::tempdir().unwrap();
    let (m, dir) = (model.to_str().unwrap(), cache.path().to_str().unwrap());
    let args = [
        "generate",
        "--model",
        m,
        "--graph-cache",
        dir,
        "--max-new-tokens",
        "1",
        "--prompt",
        "Hello",
    ];
    // The first start writes the entry; the starts measured below read it.
    peak_kb(&args, None);
    let adaptive = peak_kb(&args, Some("33554432"));
    let ours = peak_kb(&args, None);
    eprintln!("peak: {ours} kB, {adaptive} kB under the adaptive threshold's ceiling");
    assert!(
        ours + 12 * 1024 < adaptive,
        "peak {ours} kB against {adaptive} kB"
    );
}
