//! Tokenizer (Hugging Face `tokenizers`) and a UTF-8-safe incremental detokenizer.

use std::path::Path;

use crate::error::{Error, Result};

mod json;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    max_token_bytes: usize,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let unreadable = |e: &dyn std::fmt::Display| {
            Error::load(
                path,
                format!("tokenizer.json cannot be parsed ({e}); re-export the folder"),
            )
        };
        let text = std::fs::read_to_string(path).map_err(|e| unreadable(&e))?;
        let inner = match json::read_bpe(&text) {
            Some(inner) => inner,
            None => text.parse().map_err(|e| unreadable(&e))?,
        };
        // A vocabulary entry is spelled with at least as many bytes as the text it stands for
        // (byte-level BPE spells one byte as one or two; SentencePiece spells a space as "▁"
        // and a fallback byte as "<0x41>"), so the longest entry bounds bytes per token.
        let max_token_bytes = inner
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(1);
        Ok(Tokenizer {
            inner,
            max_token_bytes,
        })
    }

    /// The most bytes of text one token can stand for (an upper bound).
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    /// Encodes `text` as-is: templates already spell out any special tokens they need.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

/// Source of token text for [`DecodeStream`]; lets the stream be tested without a tokenizer file.
pub trait Decode {
    fn decode_ids(&self, ids: &[u32]) -> Result<String>;
}

impl Decode for Tokenizer {
    fn decode_ids(&self, ids: &[u32]) -> Result<String> {
        self.decode(ids, true)
    }
}

/// Turns a growing token sequence into text increments.
///
/// Byte-level BPE can split one character over several tokens; decoding such a prefix yields
/// U+FFFD. We only emit text once the pending tokens decode without a trailing replacement
/// character, and decode a short window (from `prefix_offset`) so that tokenizers that strip or
/// add leading spaces per call still produce the right increments.
#[derive(Debug, Default)]
pub struct DecodeStream {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl DecodeStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one token; returns the newly completed text, if any.
    pub fn step(&mut self, decoder: &impl Decode, token: u32) -> Result<Option<String>> {
        self.ids.push(token);
        let prefix = decoder.decode_ids(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = decoder.decode_ids(&self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(&prefix) {
            let new_text = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(Some(new_text))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each token is one byte; decoding is lossy UTF-8, as byte-level BPE behaves.
    struct ByteDecoder;
    impl Decode for ByteDecoder {
        fn decode_ids(&self, ids: &[u32]) -> Result<String> {
            let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
    }

    fn stream_all(text: &str) -> Vec<String> {
        let mut s = DecodeStream::new();
        text.bytes()
            .filter_map(|b| s.step(&ByteDecoder, b as u32).unwrap())
            .collect()
    }

    #[test]
    fn multibyte_characters_split_over_tokens_are_never_broken() {
        let text = "héllo 日本 🙂!";
        let pieces = stream_all(text);
        assert_eq!(pieces.concat(), text);
        for p in &pieces {
            assert!(!p.contains('\u{FFFD}'), "piece {p:?} is broken");
        }
        // The 4-byte emoji arrives as one increment, after its last byte.
        assert!(pieces.contains(&"🙂".to_string()));
    }

    #[test]
    fn ascii_streams_one_piece_per_token() {
        assert_eq!(stream_all("abc"), vec!["a", "b", "c"]);
    }
}
