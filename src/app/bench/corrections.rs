//! The correction half of `aligner bench`: every workload pair is corrected with copy drafts
//! and without, alternating run by run so that machine noise hits both alike. For each pair it
//! reports the copy fraction of the model's own correction (how much of it lies in spans copied
//! from the answer), which bounds what drafting can save.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use aligner::draft::copy_fraction;
use aligner::{Aligner, GenerationConfig};

/// The committed workload set (benches/workloads/corrections.jsonl), built into the binary so
/// `aligner bench` measures corrections anywhere.
const DEFAULT_WORKLOAD: &str = include_str!("../../../benches/workloads/corrections.jsonl");

/// Corrections whose copy fraction reaches this count as copy-heavy in the summary.
pub const COPY_HEAVY: f64 = 0.7;

#[derive(Debug, Deserialize)]
pub struct WorkloadItem {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub question: String,
    pub answer: String,
}

pub fn load_workload(path: Option<&Path>) -> Result<Vec<WorkloadItem>> {
    let (text, origin) = match path {
        Some(p) => (
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read workload file {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (DEFAULT_WORKLOAD.to_string(), "the built-in workload".into()),
    };
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: WorkloadItem = serde_json::from_str(line).map_err(|e| {
            anyhow::anyhow!(
                "{origin} line {}: {e}; each line must be a JSON object with \"question\" and \"answer\" strings",
                n + 1
            )
        })?;
        items.push(item);
    }
    if items.is_empty() {
        bail!("{origin} holds no question/answer pairs; add JSON lines with \"question\" and \"answer\"");
    }
    Ok(items)
}

/// One pair's figures. Times are medians over the measured runs.
#[derive(Debug, Serialize)]
pub struct ItemReport {
    pub id: String,
    pub kind: String,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub copy_fraction: f64,
    pub plain_ms: f64,
    pub draft_ms: f64,
    /// draft_ms / plain_ms.
    pub ratio: f64,
    /// The drafts of the measured run whose drafted time is the median (the lower middle for
    /// an even count), so they describe the run `draft_ms` reports rather than the first.
    pub passes: usize,
    pub proposed: usize,
    pub accepted: usize,
    /// Drafted output equaled plain greedy output token for token in every run, warm-up
    /// included. A later run can differ where the first matched: drafts also come from recent
    /// outputs, so they (and the verification passes' shapes, hence kernel near-ties) change
    /// run by run.
    pub identical: bool,
    /// The longest drafted output over the runs: above `output_tokens` where a flipped
    /// near-tie led into longer text, which `draft_ms` then includes.
    pub draft_tokens_max: usize,
    /// For feeding other runtimes the same work (benches/compare.py).
    pub prompt_ids: Vec<u32>,
    /// Time to first token with the KV cache of the prefix this prompt shares with the
    /// previous pair's (the template's fixed part), and with the whole prompt run.
    pub ttft_reuse_ms: f64,
    pub ttft_full_ms: f64,
    /// Prompt tokens taken from the cache in the reuse run.
    pub reused_prompt_tokens: usize,
    /// The reuse run's first tokens equal the full run's.
    pub reuse_identical: bool,
    /// Whole corrections, plain and drafted, as `serve` and `batch` run them: prefix reuse on,
    /// the cache holding the previous pair's prompt (so only the template's fixed part is
    /// reused). `plain_ms` and `draft_ms` run every prompt whole, as a fresh process does.
    pub plain_reuse_ms: f64,
    pub draft_reuse_ms: f64,
    /// Each reuse run wrote the tokens of the same decoding without reuse.
    pub reuse_outputs_identical: bool,
}

/// Per-run totals over the whole set, and the per-pair reports.
pub struct CorrectionReport {
    pub draft_total_ms: Vec<f64>,
    pub plain_total_ms: Vec<f64>,
    pub items: Vec<ItemReport>,
}

/// One pair, corrected without streaming.
fn correct_pair(
    aligner: &mut Aligner,
    template: aligner::Template,
    item: &WorkloadItem,
    config: &GenerationConfig,
) -> aligner::Result<aligner::Generation> {
    aligner.correct_with_template(template, &item.question, &item.answer, config, &mut |_| {
        true
    })
}

/// Tokens generated in each time-to-first-token run: enough to compare outputs, few enough
/// that prefill dominates.
pub const TTFT_TOKENS: usize = 8;

/// Per pair, the median time to first token with prefix reuse (the cache holding the previous
/// pair's prompt, as in a batch or a server) and without, alternating which runs first, and
/// whether the two give the same first tokens.
fn time_to_first_token(
    aligner: &mut Aligner,
    template: aligner::Template,
    items: &[WorkloadItem],
    runs: usize,
) -> Result<Vec<(f64, f64, usize, bool)>> {
    let reuse = GenerationConfig::default()
        .with_max_new_tokens(TTFT_TOKENS)
        .with_copy_drafts(false);
    let full = reuse.clone().with_reuse_prefix(false);
    let mut times = vec![(Vec::new(), Vec::new(), 0, true); items.len()];
    for run in 0..runs {
        for (i, item) in items.iter().enumerate() {
            // The cache must hold another pair's prompt before the reuse run, as in a batch.
            let other = &items[(i + items.len() - 1) % items.len()];
            let mut correct = |item: &WorkloadItem, config: &GenerationConfig| {
                correct_pair(aligner, template, item, config)
            };
            correct(other, &full)?;
            let (with, without) = if run % 2 == 0 {
                let w = correct(item, &reuse)?;
                correct(other, &full)?;
                (w, correct(item, &full)?)
            } else {
                let f = correct(item, &full)?;
                correct(other, &full)?;
                (correct(item, &reuse)?, f)
            };
            let t = &mut times[i];
            t.0.push(with.timings.prefill_ms);
            t.1.push(without.timings.prefill_ms);
            t.2 = with.reused_prompt_tokens;
            t.3 &= with.tokens == without.tokens;
        }
    }
    Ok(times
        .into_iter()
        .map(|(w, f, n, same)| (median(w), median(f), n, same))
        .collect())
}

/// Per pair, the median whole-correction time under `config` (prefix reuse on), each pair
/// right after the previous one so that the cache holds another pair's prompt, and whether
/// every run wrote `expected`'s tokens.
fn time_with_reuse(
    aligner: &mut Aligner,
    template: aligner::Template,
    items: &[WorkloadItem],
    config: &GenerationConfig,
    runs: usize,
    expected: &[Vec<u32>],
) -> Result<Vec<(f64, bool)>> {
    let mut times = vec![(Vec::new(), true); items.len()];
    for _ in 0..runs {
        for ((item, t), expected) in items.iter().zip(&mut times).zip(expected) {
            let g = correct_pair(aligner, template, item, config)?;
            t.0.push(g.timings.total_ms);
            t.1 &= &g.tokens == expected;
        }
    }
    Ok(times
        .into_iter()
        .map(|(t, same)| (median(t), same))
        .collect())
}

pub fn run(
    aligner: &mut Aligner,
    items: &[WorkloadItem],
    max_new_tokens: usize,
    warmup: usize,
    runs: usize,
) -> Result<CorrectionReport> {
    let template = aligner.template()?;
    // Whole prompts every time: the same pair twice in a row would otherwise reuse its whole
    // prompt the second time. Prefix reuse is measured on its own below.
    let base = GenerationConfig::default()
        .with_max_new_tokens(max_new_tokens)
        .with_reuse_prefix(false);
    let plain_config = base.clone().with_copy_drafts(false);
    // Per pair and measured run: plain time, drafted time, and the drafts' stats.
    let mut times = vec![(Vec::new(), Vec::new(), Vec::new()); items.len()];
    let mut report = CorrectionReport {
        draft_total_ms: Vec::new(),
        plain_total_ms: Vec::new(),
        items: Vec::new(),
    };
    let mut outputs = Vec::new();
    // Per pair, over every run: drafted equal to plain, and the longest drafted output.
    let mut agree = vec![(true, 0); items.len()];
    for run in 0..warmup + runs {
        let (mut draft_total, mut plain_total) = (0.0, 0.0);
        for (i, item) in items.iter().enumerate() {
            let mut correct =
                |config: &GenerationConfig| correct_pair(aligner, template, item, config);
            // Alternate which goes first so neither always runs on a warmer cache.
            let (plain, drafted) = if run % 2 == 0 {
                let p = correct(&plain_config)?;
                (p, correct(&base)?)
            } else {
                let d = correct(&base)?;
                (correct(&plain_config)?, d)
            };
            agree[i].0 &= plain.tokens == drafted.tokens;
            agree[i].1 = agree[i].1.max(drafted.tokens.len());
            if run >= warmup {
                times[i].0.push(plain.timings.total_ms);
                times[i].1.push(drafted.timings.total_ms);
                times[i].2.push(drafted.drafts.unwrap_or_default());
                plain_total += plain.timings.total_ms;
                draft_total += drafted.timings.total_ms;
            }
            if run == 0 {
                outputs.push((plain, drafted));
            }
        }
        if run >= warmup {
            report.plain_total_ms.push(plain_total);
            report.draft_total_ms.push(draft_total);
        }
    }
    let ttft = time_to_first_token(aligner, template, items, runs)?;
    let reuse = |config: &GenerationConfig| config.clone().with_reuse_prefix(true);
    let drafted: Vec<Vec<u32>> = outputs.iter().map(|(_, d)| d.tokens.clone()).collect();
    let draft_reuse = time_with_reuse(aligner, template, items, &reuse(&base), runs, &drafted)?;
    let plain: Vec<Vec<u32>> = outputs.iter().map(|(p, _)| p.tokens.clone()).collect();
    let plain_reuse = time_with_reuse(
        aligner,
        template,
        items,
        &reuse(&plain_config),
        runs,
        &plain,
    )?;
    for ((((item, (plain, _)), (plain_ms, draft_ms, drafts)), (ttft, (pr, dr))), agree) in items
        .iter()
        .zip(outputs)
        .zip(times)
        .zip(
            ttft.into_iter()
                .zip(plain_reuse.into_iter().zip(draft_reuse)),
        )
        .zip(agree)
    {
        let (prompt_ids, answer_ids) =
            aligner.correction_ids(template, &item.question, &item.answer)?;
        let stats = drafts
            .get(median_index(&draft_ms))
            .copied()
            .unwrap_or_default();
        let (plain_ms, draft_ms) = (median(plain_ms), median(draft_ms));
        report.items.push(ItemReport {
            id: item.id.clone().unwrap_or_default(),
            kind: item.kind.clone().unwrap_or_default(),
            prompt_tokens: prompt_ids.len(),
            output_tokens: plain.tokens.len(),
            copy_fraction: copy_fraction(&plain.tokens, &answer_ids),
            plain_ms,
            draft_ms,
            ratio: draft_ms / plain_ms,
            passes: stats.passes,
            proposed: stats.proposed,
            accepted: stats.accepted,
            identical: agree.0,
            draft_tokens_max: agree.1,
            prompt_ids,
            ttft_reuse_ms: ttft.0,
            ttft_full_ms: ttft.1,
            reused_prompt_tokens: ttft.2,
            reuse_identical: ttft.3,
            plain_reuse_ms: pr.0,
            draft_reuse_ms: dr.0,
            reuse_outputs_identical: pr.1 && dr.1,
        });
    }
    Ok(report)
}

fn median(mut values: Vec<f64>) -> f64 {
    super::stats::stats(&mut values).0
}

/// The index of the median value (the lower middle for an even count; 0 when empty).
fn median_index(values: &[f64]) -> usize {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    order
        .get(values.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0)
}

/// Summed draft time over summed plain time for the pairs at or above `min_copy`, with how
/// many pairs that is (0 pairs gives `None`).
pub fn ratio_at_least(items: &[ItemReport], min_copy: f64) -> Option<(f64, usize)> {
    let chosen: Vec<&ItemReport> = items
        .iter()
        .filter(|i| i.copy_fraction >= min_copy)
        .collect();
    let plain: f64 = chosen.iter().map(|i| i.plain_ms).sum();
    let draft: f64 = chosen.iter().map(|i| i.draft_ms).sum();
    (!chosen.is_empty()).then(|| (draft / plain, chosen.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_workload_parses_and_has_both_kinds() {
        let items = load_workload(None).unwrap();
        assert!(items.len() >= 12);
        assert!(items.iter().any(|i| i.kind.as_deref() == Some("copy")));
        assert!(items.iter().any(|i| i.kind.as_deref() == Some("rewrite")));
    }

    #[test]
    fn bad_workload_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.jsonl");
        std::fs::write(
            &path,
            "{\"question\": \"q\", \"answer\": \"a\"}\n{\"question\": 1}\n",
        )
        .unwrap();
        let err = load_workload(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    fn item(copy: f64, plain: f64, draft: f64) -> ItemReport {
        ItemReport {
            id: String::new(),
            kind: String::new(),
            prompt_tokens: 0,
            output_tokens: 0,
            copy_fraction: copy,
            plain_ms: plain,
            draft_ms: draft,
            ratio: draft / plain,
            passes: 0,
            proposed: 0,
            accepted: 0,
            identical: true,
            draft_tokens_max: 0,
            prompt_ids: vec![],
            ttft_reuse_ms: 0.0,
            ttft_full_ms: 0.0,
            reused_prompt_tokens: 0,
            reuse_identical: true,
            plain_reuse_ms: 0.0,
            draft_reuse_ms: 0.0,
            reuse_outputs_identical: true,
        }
    }

    #[test]
    fn median_index_points_at_the_middle_run() {
        assert_eq!(median_index(&[30.0, 10.0, 20.0]), 2);
        assert_eq!(median_index(&[40.0, 10.0, 30.0, 20.0]), 3);
        assert_eq!(median_index(&[5.0]), 0);
    }

    #[test]
    fn copy_heavy_ratio_sums_only_the_chosen_pairs() {
        let items = [
            item(0.9, 100.0, 40.0),
            item(0.2, 100.0, 100.0),
            item(0.7, 300.0, 120.0),
        ];
        assert_eq!(ratio_at_least(&items, 0.7), Some((160.0 / 400.0, 2)));
        assert_eq!(ratio_at_least(&items, 0.95), None);
    }
}
