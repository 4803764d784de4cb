//! The tokenizer as the runtime reads it (`src/tokenizer/json.rs`, a one-pass reader for BPE
//! files) against `tokenizers`' own reader, on every real folder and fixture: the same ids
//! for the same text, the same text back.

mod common;

use std::path::PathBuf;

use aligner::tokenizer::Tokenizer;
use common::{root, workload_pairs};

fn folders() -> Vec<PathBuf> {
    let models = [
        "models/smollm2-135m-aligner-int8",
        "models/smollm2-135m-instruct-int8",
        "models/tiny-llama-int8",
        "tests/fixtures/genai-builder-tiny",
        "tests/fixtures/hf-mistral",
        "tests/fixtures/hf-qwen2",
    ];
    models
        .iter()
        .map(|m| root().join(m).join("tokenizer.json"))
        .collect()
}

fn texts() -> Vec<String> {
    let agreement =
        std::fs::read_to_string(root().join("tests/fixtures/agreement_texts.txt")).unwrap();
    let mut texts: Vec<String> = agreement.lines().map(String::from).collect();
    texts.push(agreement);
    for (q, a) in workload_pairs() {
        texts.extend([q, a]);
    }
    texts.extend(
        [
            "",
            " ",
            "  leading",
            "ümlaut 日本語 🙂 \u{200b}",
            "<|im_end|><|endoftext|>x",
        ]
        .map(String::from),
    );
    texts
}

#[test]
fn every_folder_tokenizes_as_tokenizers_own_reader_does() {
    let texts = texts();
    for path in folders() {
        assert!(
            path.exists(),
            "{} is missing: run make models fixtures-models",
            path.display()
        );
        let ours = Tokenizer::from_file(&path).unwrap();
        let theirs = tokenizers::Tokenizer::from_file(&path).unwrap();
        let longest = theirs
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap();
        assert_eq!(ours.max_token_bytes(), longest, "{}", path.display());
        for text in &texts {
            let ids = ours.encode(text).unwrap();
            let expected = theirs.encode(text.as_str(), false).unwrap();
            assert_eq!(ids, expected.get_ids(), "{}: {text:?}", path.display());
            for skip in [false, true] {
                assert_eq!(
                    ours.decode(&ids, skip).unwrap(),
                    theirs.decode(&ids, skip).unwrap(),
                    "{}: {text:?}",
                    path.display()
                );
            }
        }
    }
}
