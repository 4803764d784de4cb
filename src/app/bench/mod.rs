//! `aligner bench`: prefill and decode speed, repeated, as median with min and max.
//!
//! EOS is ignored so every run generates exactly `--new-tokens`, and the prompt is cut to
//! exactly `--prompt-tokens`, so runs (and other runtimes fed the same ids) are comparable.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::{json, Map, Value};

use aligner::GenerationConfig;

mod corrections;
mod stats;

use super::args::ModelArgs;
use super::workers;
use stats::{folder_size_mb, peak_rss_mb, put, stats, MIB};

const FILLER: &str = "An Aligner reads a question and an answer written by another model and rewrites the answer so that it is more helpful, more honest and less harmful, while keeping everything that was already right. ";

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value_t = 122)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Correction workload: JSON lines with "question" and "answer" (default: the built-in
    /// benches/workloads/corrections.jsonl).
    #[arg(long, value_name = "PATH")]
    workload: Option<PathBuf>,
    /// Token budget of each correction (greedy; the model may stop earlier at EOS).
    #[arg(long, default_value_t = 160)]
    correction_tokens: usize,
    /// Measured runs over the correction workload (each run corrects every pair twice).
    #[arg(long, default_value_t = 3)]
    correction_runs: usize,
    /// Skip the correction workload (prefill/decode figures only).
    #[arg(long)]
    no_corrections: bool,
    /// Print the token ids of the prompt used (for feeding other runtimes) and exit.
    #[arg(long)]
    print_prompt_ids: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.runs == 0 || args.new_tokens < 2 || args.prompt_tokens == 0 {
        bail!("--runs must be >= 1, --new-tokens >= 2 and --prompt-tokens >= 1");
    }
    let dir = args.model.model_dir()?;
    let t0 = Instant::now();
    let mut aligner = workers::load(&args.model, &dir)?;
    let session_start_ms = t0.elapsed().as_secs_f64() * 1000.0;

    let mut ids = Vec::new();
    while ids.len() < args.prompt_tokens {
        ids.extend(aligner.tokenizer().encode(FILLER)?);
    }
    ids.truncate(args.prompt_tokens);
    if args.print_prompt_ids {
        let text: Vec<String> = ids.iter().map(u32::to_string).collect();
        println!("{}", text.join(","));
        return Ok(());
    }
    // Every run prefills the whole prompt: the same prompt again would otherwise come from
    // the cache (prefix reuse), and prefill speed is what this measures.
    let config = GenerationConfig::default()
        .with_max_new_tokens(args.new_tokens)
        .with_suppress_eos(true)
        .with_reuse_prefix(false);

    let mut out = synthetic(&mut aligner, &ids, &config, &args)?;
    let mut max_positions = args.prompt_tokens + args.new_tokens;
    if !args.no_corrections {
        let longest = add_corrections(&mut aligner, &args, &mut out)?;
        max_positions = max_positions.max(longest);
    }
    let folder_mb = folder_size_mb(&dir);
    let kv_mb = aligner.kv_cache_bytes(max_positions) as f64 / MIB;
    out.insert("model_folder_mb".into(), json!(folder_mb));
    out.insert("kv_cache_mb".into(), json!(kv_mb));
    let rss = peak_rss_mb();
    out.insert(
        "rss_over_folder_plus_kv".into(),
        json!(rss / (folder_mb + kv_mb)),
    );
    put(&mut out, "peak_rss_mb", (rss, rss, rss));
    put(
        &mut out,
        "session_start_ms",
        (session_start_ms, session_start_ms, session_start_ms),
    );
    out.insert("prompt_tokens".into(), json!(args.prompt_tokens));
    out.insert("new_tokens".into(), json!(args.new_tokens));
    out.insert("runs".into(), json!(args.runs));
    out.insert("threads".into(), json!(args.model.threads));
    out.insert("model".into(), json!(dir.display().to_string()));
    if args.json {
        println!("{}", Value::Object(out));
    } else {
        print_table(&out);
        print_summary(&out);
    }
    Ok(())
}

/// Prefill and decode over the fixed prompt `ids`: warm-up runs, then medians of the rest.
fn synthetic(
    aligner: &mut aligner::Aligner,
    ids: &[u32],
    config: &GenerationConfig,
    args: &BenchArgs,
) -> Result<Map<String, Value>> {
    let mut series: [(&str, Vec<f64>); 4] = [
        ("prefill_tok_s", vec![]),
        ("decode_tok_s", vec![]),
        ("ttft_ms", vec![]),
        ("generation_ms", vec![]),
    ];
    let mut reused = 0;
    for run in 0..args.warmup + args.runs {
        let g = aligner.generate_ids(ids, config, &mut |_| true)?;
        reused += g.reused_prompt_tokens;
        if run < args.warmup {
            continue;
        }
        let t = &g.timings;
        series[0].1.push(t.prefill_tok_s(g.prompt_tokens));
        series[1].1.push(t.decode_tok_s(g.tokens.len()));
        series[2].1.push(t.prefill_ms);
        series[3].1.push(t.total_ms);
    }
    let mut out = Map::new();
    for (key, values) in series.iter_mut() {
        put(&mut out, key, stats(values));
    }
    // Must be 0: a prompt taken from the cache would inflate the prefill figures.
    out.insert("prefill_reused_tokens".into(), json!(reused));
    Ok(out)
}

/// The correction workload, drafted and plain, into `out`; returns the most positions a
/// correction held (for the KV cache size).
fn add_corrections(
    aligner: &mut aligner::Aligner,
    args: &BenchArgs,
    out: &mut Map<String, Value>,
) -> Result<usize> {
    let items = corrections::load_workload(args.workload.as_deref())?;
    let mut report = corrections::run(
        aligner,
        &items,
        args.correction_tokens,
        args.warmup,
        args.correction_runs.max(1),
    )?;
    put(out, "correction_ms", stats(&mut report.draft_total_ms));
    put(
        out,
        "correction_plain_ms",
        stats(&mut report.plain_total_ms),
    );
    let (heavy_ratio, heavy_pairs) =
        corrections::ratio_at_least(&report.items, corrections::COPY_HEAVY)
            .map_or((Value::Null, 0), |(r, n)| (json!(r), n));
    out.insert("copy_heavy_draft_over_plain".into(), heavy_ratio);
    out.insert("copy_heavy_pairs".into(), json!(heavy_pairs));
    out.insert(
        "drafts_lossless".into(),
        json!(report.items.iter().all(|i| i.identical)),
    );
    let sum = |f: fn(&corrections::ItemReport) -> f64| report.items.iter().map(f).sum::<f64>();
    out.insert(
        "ttft_reuse_over_full".into(),
        json!(sum(|i| i.ttft_reuse_ms) / sum(|i| i.ttft_full_ms)),
    );
    out.insert(
        "prefix_reuse_identical_pairs".into(),
        json!(report.items.iter().filter(|i| i.reuse_identical).count()),
    );
    out.insert(
        "reuse_outputs_identical_pairs".into(),
        json!(report
            .items
            .iter()
            .filter(|i| i.reuse_outputs_identical)
            .count()),
    );
    let longest = report
        .items
        .iter()
        .map(|i| i.prompt_tokens + args.correction_tokens)
        .max()
        .unwrap_or(0);
    out.insert("workload".into(), serde_json::to_value(&report.items)?);
    Ok(longest)
}

/// Median, min and max of each figure.
fn print_table(out: &Map<String, Value>) {
    println!(
        "{:<20} {:>10} {:>10} {:>10}",
        "metric", "median", "min", "max"
    );
    for key in [
        "prefill_tok_s",
        "decode_tok_s",
        "ttft_ms",
        "generation_ms",
        "correction_ms",
        "correction_plain_ms",
        "peak_rss_mb",
        "session_start_ms",
    ] {
        if !out.contains_key(key) {
            continue;
        }
        println!(
            "{key:<20} {:>10.1} {:>10.1} {:>10.1}",
            out[key].as_f64().unwrap_or(0.0),
            out[&format!("{key}_min")].as_f64().unwrap_or(0.0),
            out[&format!("{key}_max")].as_f64().unwrap_or(0.0)
        );
    }
}

/// The lines under the table: memory against its bound, and each workload pair.
fn print_summary(out: &Map<String, Value>) {
    let num = |k: &str| out.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    println!(
        "peak RSS {:.1} MB = {:.2}x (model folder {:.1} MB + KV cache {:.1} MB)",
        num("peak_rss_mb"),
        num("rss_over_folder_plus_kv"),
        num("model_folder_mb"),
        num("kv_cache_mb")
    );
    let Some(Value::Array(items)) = out.get("workload") else {
        return;
    };
    println!(
        "\n{:<18} {:>7} {:>6} {:>6} {:>9} {:>9} {:>6} {:>9} {:>5}",
        "workload", "kind", "tokens", "copy", "plain ms", "draft ms", "ratio", "accepted", "same"
    );
    for item in items {
        let f = |k: &str| item[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<18} {:>7} {:>6} {:>5.0}% {:>9.1} {:>9.1} {:>5.2}x {:>4}/{:<4} {:>5}",
            item["id"].as_str().unwrap_or(""),
            item["kind"].as_str().unwrap_or(""),
            f("output_tokens"),
            f("copy_fraction") * 100.0,
            f("plain_ms"),
            f("draft_ms"),
            f("ratio"),
            f("accepted"),
            f("proposed"),
            // Drafted equal to plain in every run; else the longest drafted output's length.
            match item["identical"].as_bool() {
                Some(true) => "yes".to_string(),
                _ => format!("{}t", f("draft_tokens_max")),
            },
        );
    }
    match out
        .get("copy_heavy_draft_over_plain")
        .and_then(Value::as_f64)
    {
        Some(r) => println!(
            "copy-heavy pairs (copy >= {:.0}%): {} of {}, drafted time / plain time = {r:.2}x",
            corrections::COPY_HEAVY * 100.0,
            num("copy_heavy_pairs"),
            items.len()
        ),
        None => println!("no pair reached a copy fraction of 70% with this model"),
    }
    println!(
        "prefix reuse: time to first token {:.2}x of a full prompt pass; first {} tokens identical on {} of {} pairs",
        num("ttft_reuse_over_full"),
        corrections::TTFT_TOKENS,
        num("prefix_reuse_identical_pairs"),
        items.len()
    );
    let total = |k: &str| items.iter().filter_map(|i| i[k].as_f64()).sum::<f64>();
    println!(
        "with prefix reuse, as serve and batch run: plain {:.0} ms, drafted {:.0} ms for the set (without: {:.0} and {:.0}); outputs identical on {} of {} pairs",
        total("plain_reuse_ms"),
        total("draft_reuse_ms"),
        total("plain_ms"),
        total("draft_ms"),
        num("reuse_outputs_identical_pairs"),
        items.len()
    );
}
