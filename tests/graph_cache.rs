//! The optimized-graph cache (`--graph-cache`): written once, checked, reused with the same
//! output, rebuilt when damaged, and mapped rather than copied into memory.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::http::*;
use common::*;
use serde_json::json;

/// The one entry under `cache`.
fn the_entry(cache: &Path) -> PathBuf {
    let entries: Vec<_> = std::fs::read_dir(cache).unwrap().flatten().collect();
    assert_eq!(entries.len(), 1, "one entry, no staging left behind");
    entries[0].path()
}

/// Size of the data file of the one entry under `cache`.
fn entry_data_bytes(cache: &Path) -> u64 {
    the_entry(cache)
        .join("model.onnx.data")
        .metadata()
        .unwrap()
        .len()
}

/// Greedy tokens of `aligner generate --model MODEL PROMPT... --graph-cache CACHE`.
fn generated_tokens(model: &Path, prompt: &[&str], cache_arg: &str) -> serde_json::Value {
    let m = model.to_str().unwrap();
    let head = ["generate", "--model", m, "--max-new-tokens", "12", "--json"];
    let tail = ["--graph-cache", cache_arg];
    json_of(&[&head[..], prompt, &tail[..]].concat())["tokens"].clone()
}

fn data_bytes(model: &Path) -> u64 {
    model.join("model.onnx.data").metadata().unwrap().len()
}

#[test]
fn graph_cache_is_written_once_then_reused_with_identical_output() {
    let model = default_model();
    let cache = tempfile::tempdir().unwrap();
    let args = |cache_arg: &str| {
        generated_tokens(&model, &["--prompt", "The capital of France is"], cache_arg)
    };
    let dir = cache.path().to_str().unwrap();
    let first = args(dir);
    let entry_dir = the_entry(cache.path());
    assert!(entry_dir.join("model.onnx").is_file());
    // The default model's prepacked weights pass the check: the entry holds them too.
    let (entry, folder) = (entry_data_bytes(cache.path()), data_bytes(&model));
    assert!(
        entry > folder + folder / 2,
        "{entry} bytes against the folder's {folder}"
    );
    assert_eq!(args(dir), first, "the cached graph gives the same tokens");
    assert_eq!(args("off"), first);
    // A damaged entry is dropped and rebuilt, not fatal.
    std::fs::write(entry_dir.join("model.onnx"), b"not a model").unwrap();
    assert_eq!(args(dir), first);
    assert!(entry_dir.join("model.onnx").metadata().unwrap().len() > 100);
}

/// The tiny int8 model once decoded to all token 0 from its cached graph: ONNX Runtime 1.31
/// writes prepacked MatMulNBits weights that read back wrong for its shapes. The start that
/// writes an entry checks it against the original graph, and for this model keeps the
/// optimized graph alone.
#[test]
fn the_tiny_int8_model_decodes_the_same_from_its_cached_graph() {
    let model = root().join("models/tiny-llama-int8");
    let cache = tempfile::tempdir().unwrap();
    let prompt = ["--prompt-ids", "1,2,3,4", "--suppress-eos"];
    let tokens = |cache_arg: &str| generated_tokens(&model, &prompt, cache_arg);
    let dir = cache.path().to_str().unwrap();
    let uncached = tokens("off");
    assert_eq!(tokens(dir), uncached, "the start that writes the cache");
    assert_eq!(tokens(dir), uncached, "the start that reads it");
    assert!(uncached.as_array().unwrap().iter().any(|t| t != 0));
    // Prepacked weights would about double the data file (250 kB instead of 132 kB).
    let (entry, folder) = (entry_data_bytes(cache.path()), data_bytes(&model));
    assert!(
        entry < folder + folder / 4,
        "the entry holds the rejected prepacked weights: {entry} bytes against the folder's {folder}"
    );
}

/// Without --graph-cache the cache is on, under the user cache dir.
#[test]
fn the_graph_cache_is_on_by_default_under_the_user_cache_dir() {
    let home = tempfile::tempdir().unwrap();
    let o = aligner()
        .env_remove("ALIGNER_GRAPH_CACHE")
        .env("XDG_CACHE_HOME", home.path())
        .args([
            "generate",
            "--model",
            tiny_model().to_str().unwrap(),
            "--prompt-ids",
            "1,2",
            "--max-new-tokens",
            "2",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let entries: Vec<_> = std::fs::read_dir(home.path().join("aligner/graphs"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(entries.len(), 1);
    assert!(entries[0].path().join("model.onnx").is_file());
}

/// A start from a cache entry maps the prepacked weights from the entry's file instead of
/// computing them into heap memory of its own: the server's anonymous memory falls by about
/// their size (160 MB on the default model), and several processes share the file's pages.
/// The start that writes the entry ends as a cached start does: it gives its first session's
/// heap and the second build's transient buffers back to the system, and so does every start.
/// (It failed in a fresh-clone CI run, and in 7 of 40 starts under load, while that first
/// session prepacked on the intra-op threads, whose malloc arenas keep their top: see
/// `commit_with_cache`.)
#[test]
fn a_cached_start_maps_its_prepacked_weights_instead_of_holding_them_on_the_heap() {
    let model = default_model();
    let cache = tempfile::tempdir().unwrap();
    let anonymous_mb = |cache_arg: &str| {
        let mut server = Server::start(&[
            "--model",
            model.to_str().unwrap(),
            "--workers",
            "1",
            "--graph-cache",
            cache_arg,
        ]);
        let body = json!({"question": "What is 2+2?", "answer": "5", "max_tokens": 8});
        assert_eq!(post(&server, "/v1/correct", &body).status(), 200);
        let mb = anonymous_kb(server.pid()) / 1024;
        server.terminate(Duration::from_secs(10));
        mb
    };
    let uncached = anonymous_mb("off");
    let dir = cache.path().to_str().unwrap();
    let writing = anonymous_mb(dir);
    let cached = anonymous_mb(dir);
    eprintln!("anonymous memory: no cache {uncached} MB, writing start {writing} MB, cached start {cached} MB");
    for (start, mb) in [
        ("the start that writes the entry", writing),
        ("a cached start", cached),
    ] {
        assert!(
            mb + 100 < uncached,
            "{start} holds {mb} MB of anonymous memory, against {uncached} MB without the cache"
        );
    }
    // Both end trimmed, so they agree to a few MB (untrimmed they differed by 15 to 60 MB).
    assert!(
        writing.abs_diff(cached) <= 10,
        "the start that wrote the entry holds {writing} MB of anonymous memory, against {cached} MB for a start from it"
    );
}

/// Resident and mapped bytes of this process's mappings of files under `dir`.
fn mapped_under(dir: &Path) -> (u64, u64) {
    let dir = dir.canonicalize().unwrap();
    let (mut resident, mut mapped, mut ours) = (0, 0, false);
    for line in std::fs::read_to_string("/proc/self/smaps").unwrap().lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some(kb) = line.strip_prefix("Rss:") {
            if ours {
                resident += kb.trim().trim_end_matches(" kB").parse::<u64>().unwrap() * 1024;
            }
        } else if !first.ends_with(':') {
            let (start, end) = first.split_once('-').unwrap();
            let span =
                u64::from_str_radix(end, 16).unwrap() - u64::from_str_radix(start, 16).unwrap();
            ours = fields
                .nth(4)
                .is_some_and(|p| Path::new(p).starts_with(&dir));
            mapped += if ours { span } else { 0 };
        }
    }
    (resident, mapped)
}

/// A start reads every int8 scale and zero point and the tied embedding whole, but runs read
/// the prepacked weights and a few embedding rows: it hands back the pages it read (47 MB on
/// the default model), and a run maps what it needs again from the file, unchanged.
#[test]
fn a_start_hands_back_the_weight_pages_it_read_and_runs_read_them_back_intact() {
    use aligner::{Aligner, GenerationConfig, LoadOptions};
    let ort = ort_lib();
    let cache = tempfile::tempdir().unwrap();
    let options = LoadOptions::default().with_ort_lib(ort).with_threads(2);
    let cached = options.clone().with_graph_cache(cache.path());
    let config = GenerationConfig::default()
        .with_temperature(0.0)
        .with_max_new_tokens(24);
    let correct = |model: &mut Aligner| {
        let generation = model.correct(
            "What is 2+2?",
            "It is 5, as everyone knows.",
            &config,
            &mut |_| true,
        );
        generation.unwrap().tokens
    };
    let expected = correct(&mut Aligner::load(default_model(), &options).unwrap());
    // The first start writes and checks the entry; the second maps it.
    let writing = correct(&mut Aligner::load(default_model(), &cached).unwrap());
    let mut model = Aligner::load(default_model(), &cached).unwrap();
    let (resident, mapped) = mapped_under(cache.path());
    eprintln!("after a cached start: {resident} of {mapped} mapped bytes of the entry resident");
    assert!(
        mapped > 150 << 20,
        "the entry's weights are mapped ({mapped} bytes)"
    );
    // Without the release, 47 MB of it stay resident.
    assert!(
        resident < 4 << 20,
        "{resident} bytes of the entry stay resident after the start"
    );
    assert_eq!(
        correct(&mut model),
        expected,
        "a cached start after the release"
    );
    assert_eq!(writing, expected, "the start that wrote the entry");
    let (resident, _) = mapped_under(cache.path());
    assert!(
        resident > 100 << 20,
        "a run maps the prepacked weights back ({resident} bytes)"
    );
}

/// Runs read the prepacked weights whole but only a few rows of the tied embedding. On a
/// kernel that maps a file's whole folio (up to 2 MB) per fault, those rows mapped all of
/// the embedding and its scales back (31 MB on the default model); a start now makes them
/// map single pages. Measured against the entry's own layout: what it holds beyond the
/// folder's weights is ONNX Runtime's prepacked copies.
#[test]
fn a_run_maps_back_the_prepacked_weights_and_only_the_embedding_rows_it_reads() {
    use aligner::{Aligner, GenerationConfig, LoadOptions};
    let cache = tempfile::tempdir().unwrap();
    let options = LoadOptions::default()
        .with_ort_lib(ort_lib())
        .with_threads(2)
        .with_graph_cache(cache.path());
    let config = GenerationConfig::default()
        .with_temperature(0.0)
        .with_max_new_tokens(24);
    drop(Aligner::load(default_model(), &options).unwrap()); // writes the entry
    let mut model = Aligner::load(default_model(), &options).unwrap();
    let question = "How do I bake a simple loaf of bread at home, and why does it rise?";
    let answer = "Mix flour, water, yeast and salt; knead it for ten minutes, let it rise \
                  for an hour, shape it, then bake it at 230 C for about thirty minutes.";
    let generation = model.correct(question, answer, &config, &mut |_| true);
    assert!(!generation.unwrap().tokens.is_empty());
    let (resident, _) = mapped_under(cache.path());
    let prepacked = entry_data_bytes(cache.path()) - data_bytes(&default_model());
    eprintln!("after a correction: {resident} bytes of the entry resident; {prepacked} bytes of it are prepacked copies");
    assert!(
        resident < prepacked + (8 << 20),
        "{resident} bytes of the entry are resident after one correction, against {prepacked} bytes of prepacked weights"
    );
}
