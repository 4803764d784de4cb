//! `aligner bench`: prefill and decode speed, repeated, as median with min and max.
//!
//! EOS is ignored so every run generates exactly `--new-tokens`, and the prompt is cut to
//! exactly `--prompt-tokens`, so runs (and other runtimes fed the same ids) are comparable.

use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::{json, Map, Value};

use aligner::GenerationConfig;

use super::ModelArgs;

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
    /// Print the token ids of the prompt used (for feeding other runtimes) and exit.
    #[arg(long)]
    print_prompt_ids: bool,
    #[arg(long)]
    json: bool,
}

fn stats(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (median, values[0], values[n - 1])
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub fn bench(args: BenchArgs) -> Result<()> {
    if args.runs == 0 || args.new_tokens < 2 || args.prompt_tokens == 0 {
        bail!("--runs must be >= 1, --new-tokens >= 2 and --prompt-tokens >= 1");
    }
    let dir = args.model.model_dir()?;
    let t0 = Instant::now();
    let mut aligner = args.model.load(&dir)?;
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
    let config = GenerationConfig::default()
        .with_max_new_tokens(args.new_tokens)
        .with_suppress_eos(true);

    let mut series: [(&str, Vec<f64>); 4] = [
        ("prefill_tok_s", vec![]),
        ("decode_tok_s", vec![]),
        ("ttft_ms", vec![]),
        ("correction_ms", vec![]),
    ];
    for run in 0..args.warmup + args.runs {
        let g = aligner.generate_ids(&ids, &config, &mut |_| true)?;
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
    let mut put = |key: &str, (median, min, max): (f64, f64, f64)| {
        out.insert(key.into(), json!(median));
        out.insert(format!("{key}_min"), json!(min));
        out.insert(format!("{key}_max"), json!(max));
    };
    for (key, values) in series.iter_mut() {
        put(key, stats(values));
    }
    let rss = peak_rss_mb();
    put("peak_rss_mb", (rss, rss, rss));
    put(
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
        println!(
            "{:<18} {:>10} {:>10} {:>10}",
            "metric", "median", "min", "max"
        );
        for key in [
            "prefill_tok_s",
            "decode_tok_s",
            "ttft_ms",
            "correction_ms",
            "peak_rss_mb",
            "session_start_ms",
        ] {
            println!(
                "{key:<18} {:>10.1} {:>10.1} {:>10.1}",
                out[key].as_f64().unwrap_or(0.0),
                out[&format!("{key}_min")].as_f64().unwrap_or(0.0),
                out[&format!("{key}_max")].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_median_min_max() {
        assert_eq!(stats(&mut [3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(stats(&mut [4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }
}
