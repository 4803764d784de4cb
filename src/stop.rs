//! Stop conditions: token budget, EOS ids, stop strings and the context limit.

use serde::Serialize;

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// `max_new_tokens` reached.
    Length,
    /// An EOS token was produced.
    Eos,
    /// A stop string appeared in the text.
    Stop,
    /// The KV cache reached the model's context length.
    ContextFull,
    /// The caller's callback asked to stop.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Eos => "eos",
            FinishReason::Stop => "stop",
            FinishReason::ContextFull => "context_full",
            FinishReason::Cancelled => "cancelled",
        }
    }

    /// The OpenAI `finish_reason`: "stop" for EOS and stop strings, "length" for the token
    /// budget and the context, and "cancelled" (not OpenAI's) when the caller stopped it.
    pub fn openai_name(self) -> &'static str {
        match self {
            FinishReason::Eos | FinishReason::Stop => "stop",
            FinishReason::Length | FinishReason::ContextFull => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// Finds stop strings in streamed text without ever emitting part of one.
///
/// Text is pushed as it is decoded; [`push`](Self::push) returns what is safe to show now. A
/// tail that could still grow into a stop string is held back until it cannot.
#[derive(Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    text: String,
    emitted: usize,
}

impl StopStrings {
    pub fn new(stops: Vec<String>) -> Self {
        StopStrings {
            stops,
            text: String::new(),
            emitted: 0,
        }
    }

    /// Appends `piece`; returns the text now safe to emit and whether a stop string was hit
    /// (in which case the returned text ends right before it).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        let search_from = self.emitted.saturating_sub(self.max_stop_len());
        let search_from = floor_char_boundary(&self.text, search_from);
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| {
                self.text[search_from..]
                    .find(s.as_str())
                    .map(|p| p + search_from)
            })
            .min()
        {
            let out = self.text[self.emitted.min(pos)..pos].to_string();
            self.emitted = pos;
            self.text.truncate(pos);
            return (out, true);
        }
        let safe = self.safe_len();
        let out = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        (out, false)
    }

    /// Whatever is still held back, once generation has ended without a stop string.
    pub fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }

    /// The full text emitted or pending (excluding any stop string).
    pub fn text(&self) -> &str {
        &self.text
    }

    fn max_stop_len(&self) -> usize {
        self.stops.iter().map(String::len).max().unwrap_or(0)
    }

    /// Length of text that cannot be the start of a stop string.
    fn safe_len(&self) -> usize {
        let mut safe = self.text.len();
        for stop in &self.stops {
            for k in (1..stop.len()).rev() {
                // Both boundary checks come before any slicing: a stop string such as "é"
                // has no boundary inside it, and slicing there panics.
                if self.text.len() >= k
                    && stop.is_char_boundary(k)
                    && self.text.is_char_boundary(self.text.len() - k)
                    && self.text.ends_with(&stop[..k])
                {
                    safe = safe.min(self.text.len() - k);
                    break;
                }
            }
        }
        safe.max(self.emitted)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reasons_have_their_openai_names() {
        let names: Vec<_> = [
            FinishReason::Length,
            FinishReason::Eos,
            FinishReason::Stop,
            FinishReason::ContextFull,
            FinishReason::Cancelled,
        ]
        .iter()
        .map(|r| r.openai_name())
        .collect();
        assert_eq!(names, ["length", "stop", "stop", "length", "cancelled"]);
    }

    #[test]
    fn stop_string_split_across_pieces_is_never_emitted() {
        let mut s = StopStrings::new(vec!["<|im_end|>".into()]);
        let mut out = String::new();
        let mut stopped = false;
        for piece in ["Hello", " world", "<|im", "_en", "d|>", "junk"] {
            let (text, hit) = s.push(piece);
            out.push_str(&text);
            if hit {
                stopped = true;
                break;
            }
        }
        assert!(stopped);
        assert_eq!(out, "Hello world");
        assert_eq!(s.text(), "Hello world");
    }

    #[test]
    fn held_back_prefix_is_released_when_it_diverges() {
        let mut s = StopStrings::new(vec!["STOP".into()]);
        assert_eq!(s.push("abST"), ("ab".to_string(), false));
        assert_eq!(s.push("x"), ("STx".to_string(), false));
        assert_eq!(s.flush(), "");
    }

    #[test]
    fn flush_returns_pending_tail_at_end() {
        let mut s = StopStrings::new(vec!["STOP".into()]);
        assert_eq!(s.push("abS"), ("ab".to_string(), false));
        assert_eq!(s.flush(), "S");
    }

    #[test]
    fn without_stops_everything_passes() {
        let mut s = StopStrings::new(vec![]);
        assert_eq!(s.push("é"), ("é".to_string(), false));
    }

    #[test]
    fn multibyte_stop_strings_never_slice_inside_a_character() {
        // Regression: `"stop": ["é"]` panicked a server worker ("byte index 1 is not a char
        // boundary") on the first piece.
        let mut s = StopStrings::new(vec!["é".into(), "日本".into()]);
        assert_eq!(s.push("caf"), ("caf".to_string(), false));
        assert_eq!(s.push("日"), (String::new(), false));
        assert_eq!(s.push("x"), ("日x".to_string(), false));
        assert_eq!(s.push("aé"), ("a".to_string(), true));
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Any UTF-8 text split anywhere, any stop strings (multibyte ones included): no panic,
        /// the shown text is a prefix of the text, never holds a whole stop string, and is all
        /// of the text unless a stop string ended it right there.
        #[test]
        fn stop_matching_over_arbitrary_utf8(
            pieces in proptest::collection::vec("\\PC{0,6}|[éa日]{0,4}", 0..12),
            stops in proptest::collection::vec("\\PC{1,4}|[éa日]{1,3}", 0..4),
        ) {
            let full: String = pieces.concat();
            let mut s = StopStrings::new(stops.clone());
            let mut shown = String::new();
            let mut stopped = false;
            for piece in &pieces {
                let (out, hit) = s.push(piece);
                shown.push_str(&out);
                if hit {
                    stopped = true;
                    break;
                }
            }
            if !stopped {
                shown.push_str(&s.flush());
                prop_assert_eq!(&shown, &full);
            } else {
                prop_assert!(stops.iter().any(|st| full[shown.len()..].starts_with(st.as_str())));
            }
            prop_assert!(full.starts_with(&shown));
            prop_assert_eq!(s.text(), shown.as_str());
            for st in &stops {
                prop_assert!(!shown.contains(st.as_str()), "{:?} holds {:?}", shown, st);
            }
        }
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut s = StopStrings::new(vec!["B".into(), "A".into()]);
        assert_eq!(s.push("xxAyyB"), ("xx".to_string(), true));
    }
}
