//! A one-pass reader of `tokenizer.json` for BPE models (every folder the exporter writes).
//!
//! `tokenizers::Tokenizer::from_file` reads the model through untagged serde enums: the whole
//! vocabulary and merge list are buffered as `serde::Content`, then rebuilt as a
//! `serde_json::Value` (a `BTreeMap` insert per vocabulary entry), then read again. On the
//! default model that was about 100 ms of a start, on a core that ONNX Runtime's session build
//! also wants. Here the vocabulary and merges deserialize straight into their final types and
//! the rest (normalizer, pre-tokenizer, decoder, added tokens...) through `tokenizers`' own
//! types, in the order its reader applies them. Anything this reader does not know (another
//! model type, an unknown field, an old layout) returns `None`, and the caller falls back to
//! `tokenizers`' reader, whose errors and behaviour then apply unchanged.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PaddingParams, PostProcessorWrapper,
    PreTokenizerWrapper, TruncationParams,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: Option<String>,
    truncation: Option<TruncationParams>,
    padding: Option<PaddingParams>,
    #[serde(default)]
    added_tokens: Vec<Added>,
    normalizer: Option<NormalizerWrapper>,
    pre_tokenizer: Option<PreTokenizerWrapper>,
    post_processor: Option<PostProcessorWrapper>,
    decoder: Option<DecoderWrapper>,
    model: Model,
}

/// An `added_tokens` entry. Its `id` is not read: `tokenizers` assigns ids from the model's
/// vocabulary as it adds the token, and so does this reader.
#[derive(Deserialize)]
struct Added {
    #[serde(rename = "id")]
    _id: u32,
    #[serde(flatten)]
    token: AddedToken,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Model {
    #[serde(rename = "type")]
    kind: String,
    dropout: Option<f32>,
    unk_token: Option<String>,
    continuing_subword_prefix: Option<String>,
    end_of_word_suffix: Option<String>,
    #[serde(default)]
    fuse_unk: bool,
    #[serde(default)]
    byte_fallback: bool,
    #[serde(default)]
    ignore_merges: bool,
    vocab: Vocab,
    merges: MergeList,
}

/// Merges as pairs (`[["Ġ", "t"], ...]`) or as the older `"Ġ t"` strings.
struct MergeList(Merges);

impl<'de> Deserialize<'de> for MergeList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct List;
        impl<'de> Visitor<'de> for List {
            type Value = MergeList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of merges")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MergeList, A::Error> {
                let mut merges = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(Merge(m)) = seq.next_element()? {
                    merges.extend(m);
                }
                Ok(MergeList(merges))
            }
        }
        d.deserialize_seq(List)
    }
}

/// One merge; `None` for a `#version` line of the older layout, which `tokenizers` skips.
struct Merge(Option<(String, String)>);

impl<'de> Deserialize<'de> for Merge {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct One;
        impl<'de> Visitor<'de> for One {
            type Value = Merge;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a merge: two strings, or one with a space between them")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Merge, A::Error> {
                let a: String = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let b: String = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                Ok(Merge(Some((a, b))))
            }
            fn visit_str<E: de::Error>(self, line: &str) -> Result<Merge, E> {
                if line.starts_with("#version") {
                    return Ok(Merge(None));
                }
                let mut parts = line.split(' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(a), Some(b), None) => Ok(Merge(Some((a.into(), b.into())))),
                    _ => Err(de::Error::invalid_value(de::Unexpected::Str(line), &self)),
                }
            }
        }
        d.deserialize_any(One)
    }
}

/// The tokenizer `json` describes, when it is a BPE model this reader fully understands.
pub(super) fn read_bpe(json: &str) -> Option<tokenizers::Tokenizer> {
    let file: File = serde_json::from_str(json).ok()?;
    if file.version.as_deref().is_some_and(|v| v != "1.0") || file.model.kind != "BPE" {
        return None;
    }
    let m = file.model;
    let mut bpe = BPE::builder()
        .vocab_and_merges(m.vocab, m.merges.0)
        .fuse_unk(m.fuse_unk)
        .byte_fallback(m.byte_fallback)
        .ignore_merges(m.ignore_merges);
    if let Some(p) = m.dropout {
        bpe = bpe.dropout(p);
    }
    if let Some(unk) = m.unk_token {
        bpe = bpe.unk_token(unk);
    }
    if let Some(prefix) = m.continuing_subword_prefix {
        bpe = bpe.continuing_subword_prefix(prefix);
    }
    if let Some(suffix) = m.end_of_word_suffix {
        bpe = bpe.end_of_word_suffix(suffix);
    }
    let mut tokenizer = tokenizers::Tokenizer::new(bpe.build().ok()?);
    // The components come first: adding a token normalizes it with the normalizer in place.
    tokenizer
        .with_normalizer(file.normalizer)
        .with_pre_tokenizer(file.pre_tokenizer)
        .with_post_processor(file.post_processor)
        .with_decoder(file.decoder)
        .with_truncation(file.truncation)
        .ok()?
        .with_padding(file.padding);
    let added: Vec<AddedToken> = file.added_tokens.into_iter().map(|a| a.token).collect();
    tokenizer.add_tokens(&added);
    Some(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: [&str; 3] = ["genai-builder-tiny", "hf-mistral", "hf-qwen2"];
    const TEXT: &str = "Hello, wörld! 12345 <|im_start|>user\n  tabs\tand 日本語 🙂</s> <s>";

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/tests/fixtures/{name}/tokenizer.json",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(path).unwrap()
    }

    fn slow(json: &str) -> tokenizers::Tokenizer {
        json.parse().unwrap()
    }

    /// Everything `tokenizers` would write back (vocabulary, merges, added tokens with their
    /// ids, every component) and what it encodes are the same as through its own reader.
    fn assert_same(json: &str, label: &str) {
        let fast = read_bpe(json).unwrap_or_else(|| panic!("{label}: not read"));
        let slow = slow(json);
        assert_eq!(
            fast.to_string(false).unwrap(),
            slow.to_string(false).unwrap(),
            "{label}"
        );
        let (f, s) = (
            fast.encode(TEXT, false).unwrap(),
            slow.encode(TEXT, false).unwrap(),
        );
        assert_eq!(f.get_ids(), s.get_ids(), "{label}");
        assert_eq!(
            fast.decode(f.get_ids(), false).unwrap(),
            slow.decode(s.get_ids(), false).unwrap()
        );
    }

    #[test]
    fn every_bpe_fixture_reads_as_tokenizers_reads_it() {
        for name in FIXTURES {
            assert_same(&fixture(name), name);
        }
    }

    #[test]
    fn merges_written_as_strings_read_the_same() {
        for name in FIXTURES {
            let mut v: serde_json::Value = serde_json::from_str(&fixture(name)).unwrap();
            let merges = v["model"]["merges"].as_array_mut().unwrap();
            let lines: Vec<serde_json::Value> = merges
                .iter()
                .map(|m| format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap()).into())
                .collect();
            *merges = std::iter::once("#version: 0.2".into())
                .chain(lines)
                .collect();
            assert_same(&v.to_string(), name);
        }
    }

    #[test]
    fn anything_unknown_is_left_to_tokenizers() {
        let base: serde_json::Value = serde_json::from_str(&fixture("hf-qwen2")).unwrap();
        type Edit = fn(&mut serde_json::Value);
        let edits: [(&str, Edit); 4] = [
            ("unknown top-level field", |v| v["extra"] = 1.into()),
            ("unknown model field", |v| v["model"]["extra"] = 1.into()),
            ("another version", |v| v["version"] = "2.0".into()),
            ("another model type", |v| {
                v["model"]["type"] = "WordPiece".into()
            }),
        ];
        for (label, edit) in edits {
            let mut v = base.clone();
            edit(&mut v);
            assert!(read_bpe(&v.to_string()).is_none(), "{label}");
        }
        let unigram = r#"{"version":"1.0","added_tokens":[],"normalizer":null,"pre_tokenizer":null,
            "post_processor":null,"decoder":null,
            "model":{"type":"Unigram","unk_id":0,"vocab":[["<unk>",0.0],["a",-1.0]]}}"#;
        assert!(read_bpe(unigram).is_none());
        slow(unigram); // and tokenizers' own reader takes it
    }
}
