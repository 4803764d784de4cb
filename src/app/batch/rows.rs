//! The lines batch writes, as typed structs: a row in one of the output formats, or a reject.
//! Every line carries `meta` with the input line and its hash, which is how a re-run resumes.

use serde::Serialize;

use aligner::Generation;

use crate::app::args::{Format, Task};

/// `meta` of a finished row.
#[derive(Serialize)]
pub struct Meta<'a> {
    pub line: usize,
    pub hash: &'a str,
    pub finish_reason: &'static str,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub latency_ms: f64,
    pub template: &'static str,
    pub model: &'a str,
    /// Present for `--task answer` only.
    #[serde(flatten)]
    pub answer: Option<AnswerMeta<'a>>,
}

#[derive(Serialize)]
pub struct AnswerMeta<'a> {
    pub task: &'static str,
    /// The system prompt used, `null` for the model's own.
    pub system: Option<&'a str>,
}

/// One ShareGPT turn.
#[derive(Serialize)]
pub struct Turn<'a> {
    pub from: &'static str,
    pub value: &'a str,
}

/// An output row, in the shape `--format` (and `--task`) asks for.
#[derive(Serialize)]
#[serde(untagged)]
pub enum OutputRow<'a> {
    /// `--task answer`: the generation is the answer.
    Answer {
        question: &'a str,
        answer: &'a str,
        meta: Meta<'a>,
    },
    Aligner {
        question: &'a str,
        answer: &'a str,
        correction: &'a str,
        meta: Meta<'a>,
    },
    Dpo {
        prompt: &'a str,
        chosen: &'a str,
        rejected: &'a str,
        meta: Meta<'a>,
    },
    Sharegpt {
        conversations: [Turn<'a>; 1],
        chosen: Turn<'a>,
        rejected: Turn<'a>,
        meta: Meta<'a>,
    },
}

impl<'a> OutputRow<'a> {
    pub fn new(
        format: Format,
        task: Task,
        question: &'a str,
        answer: &'a str,
        g: &'a Generation,
        meta: Meta<'a>,
    ) -> Self {
        let text = g.text.as_str();
        match (task, format) {
            (Task::Answer, _) => OutputRow::Answer {
                question,
                answer: text,
                meta,
            },
            (Task::Correct, Format::Aligner) => OutputRow::Aligner {
                question,
                answer,
                correction: text,
                meta,
            },
            (Task::Correct, Format::Dpo) => OutputRow::Dpo {
                prompt: question,
                chosen: text,
                rejected: answer,
                meta,
            },
            (Task::Correct, Format::Sharegpt) => OutputRow::Sharegpt {
                conversations: [Turn {
                    from: "human",
                    value: question,
                }],
                chosen: Turn {
                    from: "gpt",
                    value: text,
                },
                rejected: Turn {
                    from: "gpt",
                    value: answer,
                },
                meta,
            },
        }
    }
}

/// A row that could not be run, in the rejects file.
#[derive(Serialize)]
pub struct Reject<'a> {
    pub reason: &'a str,
    /// The start of the offending line (or question), lossily decoded.
    pub raw: String,
    pub meta: RejectMeta<'a>,
}

#[derive(Serialize)]
pub struct RejectMeta<'a> {
    pub line: usize,
    pub hash: &'a str,
}

/// One JSON line (no newline). These types always serialize; a failure would be a bug, and
/// the writer reports it instead of writing a broken line.
pub fn line<T: Serialize>(row: &T) -> Result<String, String> {
    serde_json::to_string(row).map_err(|e| format!("cannot encode a row: {e}"))
}
