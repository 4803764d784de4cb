//! What the commands write about a generation, as typed wire structs: the `--json` report of
//! `correct` and `generate`, token usage, timings, and the OpenAI-shaped error body. The
//! server and batch build their bodies from these, so one generation reads alike everywhere.

use std::io::{IsTerminal, Write};

use anyhow::Result;
use serde::Serialize;

use aligner::{DraftStats, Generation};

/// Token counts, in OpenAI's shape.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl From<&Generation> for Usage {
    fn from(g: &Generation) -> Self {
        Usage {
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.tokens.len(),
            total_tokens: g.prompt_tokens + g.tokens.len(),
        }
    }
}

/// A generation's timings with its rates.
#[derive(Debug, Clone, Serialize)]
pub struct TimingReport {
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub total_ms: f64,
    /// Tokens that arrived with the first (more than 1 with `--draft-with-prompt`).
    pub first_pass_tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_tok_s: Option<f64>,
    /// Tokens after the first pass's, per second of `decode_ms`.
    pub decode_tok_s: f64,
}

impl TimingReport {
    /// With the prompt rate (the command line reports it; the server does not).
    pub fn full(g: &Generation) -> Self {
        TimingReport {
            prefill_tok_s: Some(g.timings.prefill_tok_s(g.prompt_tokens)),
            ..Self::brief(g)
        }
    }

    pub fn brief(g: &Generation) -> Self {
        let t = &g.timings;
        TimingReport {
            prefill_ms: t.prefill_ms,
            decode_ms: t.decode_ms,
            total_ms: t.total_ms,
            first_pass_tokens: t.first_pass_tokens,
            prefill_tok_s: None,
            decode_tok_s: t.decode_tok_s(g.tokens.len()),
        }
    }
}

/// Where a generation ran: the model folder, the provider, and for corrections the template.
#[derive(Debug, Clone, Serialize)]
pub struct Origin {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<&'static str>,
    pub model: String,
    pub provider: String,
}

/// `aligner correct --json` and `aligner generate --json`: one object per run.
#[derive(Debug, Serialize)]
pub struct GenerationReport<'a> {
    pub correction: &'a str,
    pub finish_reason: &'static str,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub tokens: &'a [u32],
    pub timings: TimingReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drafts: Option<DraftStats>,
    #[serde(flatten)]
    pub origin: Origin,
}

impl<'a> GenerationReport<'a> {
    pub fn new(g: &'a Generation, origin: Origin) -> Self {
        GenerationReport {
            correction: &g.text,
            finish_reason: g.finish_reason.as_str(),
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.tokens.len(),
            tokens: &g.tokens,
            timings: TimingReport::full(g),
            drafts: g.drafts,
            origin,
        }
    }
}

/// OpenAI's error body: `{"error": {"message", "type", "code"}}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub code: u16,
}

impl<'a> ErrorBody<'a> {
    pub fn new(message: &'a str, kind: &'a str, code: u16) -> Self {
        ErrorBody {
            error: ErrorDetail {
                message,
                kind,
                code,
            },
        }
    }
}

/// Runs `generate`, streaming to a terminal as tokens arrive (otherwise printing once at the
/// end), or printing one [`GenerationReport`] with `--json`.
pub fn run_and_print(
    json: bool,
    origin: Origin,
    mut generate: impl FnMut(&mut dyn FnMut(&str) -> bool) -> aligner::Result<Generation>,
) -> Result<()> {
    let stream = !json && std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let g = generate(&mut |piece| {
        if stream {
            // A closed stdout stops generation instead of failing later.
            out.write_all(piece.as_bytes())
                .and_then(|_| out.flush())
                .is_ok()
        } else {
            true
        }
    })?;
    if json {
        let report = serde_json::to_string(&GenerationReport::new(&g, origin))?;
        writeln!(out, "{report}")?;
    } else if stream {
        writeln!(out)?;
    } else {
        writeln!(out, "{}", g.text)?;
    }
    Ok(())
}
