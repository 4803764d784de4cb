//! Prompt templates. The Aligner strings are exactly those the released weights were trained
//! with; a single character of difference measurably changes their corrections.

use crate::error::{Error, Result};

/// A named way of turning (question, answer) into the prompt text the model expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// aligner-7b-v1.0.
    AlignerV1,
    /// Current upstream training code.
    AlignerV2,
    /// Aligner-2B / AlpacaEval format.
    Aligner2b,
    /// ChatML instruct models asked to correct an answer (the embedded default model).
    ChatmlCorrection,
}

// Worded so that a small general instruct model copies the answer and edits it in place, as an
// Aligner does (benches/README.md measures the copy fraction this gives SmolLM2-135M).
const CHATML_SYSTEM: &str = "Repeat the answer exactly, but fix any mistake in it and make it helpful, honest and harmless.";

impl Template {
    pub const ALL: [Template; 4] = [
        Template::AlignerV1,
        Template::AlignerV2,
        Template::Aligner2b,
        Template::ChatmlCorrection,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Template::AlignerV1 => "aligner-v1",
            Template::AlignerV2 => "aligner-v2",
            Template::Aligner2b => "aligner-2b",
            Template::ChatmlCorrection => "chatml-correction",
        }
    }

    pub fn from_name(name: &str) -> Result<Template> {
        Template::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| {
                let names: Vec<_> = Template::ALL.iter().map(|t| t.name()).collect();
                Error::invalid(format!(
                    "unknown template '{name}'; choose one of: {}",
                    names.join(", ")
                ))
            })
    }

    /// Stop strings implied by the template, beyond the model's EOS ids.
    pub fn stop_strings(self) -> &'static [&'static str] {
        match self {
            Template::ChatmlCorrection => &["<|im_end|>"],
            _ => &[],
        }
    }

    /// The prompt that asks the model to *answer* a question as an ordinary chat turn (the
    /// upstream side of an evaluation or of a bootstrap round), in the chat format this
    /// template's family was trained on: ChatML for `chatml-correction`, the
    /// `BEGINNING OF CONVERSATION` format for the Aligner ones.
    pub fn chat(self, system: Option<&str>, question: &str) -> String {
        match self {
            Template::ChatmlCorrection => match system {
                Some(system) => format!(
                    "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
                ),
                None => format!(
                    "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
                ),
            },
            _ => match system {
                Some(system) => {
                    format!("BEGINNING OF CONVERSATION: {system} USER: {question} ASSISTANT:")
                }
                None => format!("BEGINNING OF CONVERSATION: USER: {question} ASSISTANT:"),
            },
        }
    }

    pub fn render(self, question: &str, answer: &str) -> String {
        match self {
            Template::AlignerV1 => format!(
                "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and harmless: {question} | {answer} ASSISTANT:"
            ),
            Template::AlignerV2 => format!(
                "BEGINNING OF CONVERSATION: USER: ##Question: {question}\n##Answer: {answer}\n##Correction:  ASSISTANT:"
            ),
            Template::Aligner2b => format!(
                "BEGINNING OF CONVERSATION: USER: ##Question: {question} ##Answer: {answer} ##Revision:  ASSISTANT:"
            ),
            Template::ChatmlCorrection => format!(
                "<|im_start|>system\n{CHATML_SYSTEM}<|im_end|>\n<|im_start|>user\nQuestion: {question}\nAnswer: {answer}<|im_end|>\n<|im_start|>assistant\n"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_turns_use_the_family_format() {
        assert_eq!(
            Template::ChatmlCorrection.chat(Some("Be brief."), "Q?"),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            Template::ChatmlCorrection.chat(None, "Q?"),
            "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
        );
        for t in [
            Template::AlignerV1,
            Template::AlignerV2,
            Template::Aligner2b,
        ] {
            assert_eq!(
                t.chat(None, "Q?"),
                "BEGINNING OF CONVERSATION: USER: Q? ASSISTANT:"
            );
        }
    }

    #[test]
    fn v1_is_exact() {
        assert_eq!(
            Template::AlignerV1.render("Q?", "A."),
            "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and harmless: Q? | A. ASSISTANT:"
        );
    }

    #[test]
    fn v2_has_newlines_and_two_spaces_before_assistant() {
        let p = Template::AlignerV2.render("Q?", "A.");
        assert_eq!(
            p,
            "BEGINNING OF CONVERSATION: USER: ##Question: Q?\n##Answer: A.\n##Correction:  ASSISTANT:"
        );
        assert!(p.ends_with("##Correction:  ASSISTANT:"));
    }

    #[test]
    fn two_b_is_single_line_revision() {
        assert_eq!(
            Template::Aligner2b.render("Q?", "A."),
            "BEGINNING OF CONVERSATION: USER: ##Question: Q? ##Answer: A. ##Revision:  ASSISTANT:"
        );
    }

    #[test]
    fn chatml_wraps_question_and_answer_and_opens_assistant_turn() {
        let p = Template::ChatmlCorrection.render("Why?", "");
        assert!(p.starts_with("<|im_start|>system\n"));
        assert!(p.contains("Question: Why?\nAnswer: <|im_end|>"));
        assert!(p.ends_with("<|im_start|>assistant\n"));
    }

    #[test]
    fn names_round_trip_and_unknown_is_an_error() {
        for t in Template::ALL {
            assert_eq!(Template::from_name(t.name()).unwrap(), t);
        }
        let err = Template::from_name("v3").unwrap_err().to_string();
        assert!(err.contains("unknown template 'v3'") && err.contains("aligner-v2"));
    }
}
