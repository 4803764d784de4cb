//! Reading the input: lines of bounded size, any bytes, and rows parsed from them.
//!
//! A line is read as bytes, so one invalid UTF-8 byte rejects that row (with its line number)
//! instead of ending the run. A line longer than the row limit is hashed as it streams past and
//! never held whole: a 50 MB row once took 6.7 GB on its way to the tokenizer.

use std::io::BufRead;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::resume::{hex16, line_hash};

/// One input line: its content (empty when over the limit), length and hash.
pub struct Line {
    pub bytes: Vec<u8>,
    pub len: usize,
    pub hash: String,
    pub too_long: bool,
}

/// Reads the next line (without its `\n` or `\r\n`), keeping at most `limit` bytes of it.
pub fn next_line(reader: &mut impl BufRead, limit: usize) -> std::io::Result<Option<Line>> {
    let mut bytes = Vec::new();
    let mut overflow: Option<Sha256> = None;
    let mut len = 0usize;
    let mut any = false;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        any = true;
        let (part, ends) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        len += part.len();
        match &mut overflow {
            Some(h) => h.update(part),
            // One byte over the limit is kept: it may be the `\r` of a `\r\n`.
            None if bytes.len() + part.len() > limit + 1 => {
                let mut h = Sha256::new();
                h.update(&bytes);
                h.update(part);
                bytes = Vec::new();
                overflow = Some(h);
            }
            None => bytes.extend_from_slice(part),
        }
        let used = part.len() + usize::from(ends);
        reader.consume(used);
        if ends {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    Ok(Some(match overflow {
        Some(h) => Line {
            bytes: Vec::new(),
            len,
            hash: hex16(&h.finalize()),
            too_long: true,
        },
        None => {
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
                len -= 1;
            }
            let hash = line_hash(&bytes);
            let too_long = bytes.len() > limit;
            if too_long {
                bytes = Vec::new();
            }
            Line {
                bytes,
                len,
                hash,
                too_long,
            }
        }
    }))
}

/// The question and answer of a row, or why it has none.
pub fn parse_row(
    number: usize,
    line: &Line,
    question_field: &str,
    answer_field: Option<&str>,
    limit: usize,
) -> Result<(String, String), String> {
    if line.too_long {
        return Err(format!(
            "the row is {} bytes, over --max-row-bytes {limit}",
            line.len
        ));
    }
    let text = std::str::from_utf8(&line.bytes).map_err(|e| {
        format!(
            "the row is not valid UTF-8 (bad byte at offset {}); re-encode the file as UTF-8",
            e.valid_up_to()
        )
    })?;
    // A byte-order mark is how some editors start a UTF-8 file.
    let text = if number == 0 {
        text.strip_prefix('\u{feff}').unwrap_or(text)
    } else {
        text
    };
    if text.trim().is_empty() {
        return Err("empty line".into());
    }
    let v: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let field = |name: &str| match v.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("field '{name}' is not a string")),
        None => Err(format!("missing field '{name}'")),
    };
    let answer = match answer_field {
        Some(name) => field(name)?,
        None => String::new(),
    };
    Ok((field(question_field)?, answer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lines(input: &[u8], limit: usize) -> Vec<Line> {
        let mut r = input;
        std::iter::from_fn(|| next_line(&mut r, limit).unwrap()).collect()
    }

    #[test]
    fn lines_split_like_str_lines_and_hash_the_same() {
        let text = "a\r\nbb\n\nccc";
        let got = lines(text.as_bytes(), 100);
        let want: Vec<&str> = text.lines().collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.bytes, w.as_bytes());
            assert_eq!(g.hash, line_hash(w.as_bytes()));
        }
    }

    #[test]
    fn over_long_lines_are_not_kept_but_the_next_line_is_whole() {
        let text = format!("{}\nnext\n", "x".repeat(10_000));
        let got = lines(text.as_bytes(), 100);
        assert!(got[0].too_long && got[0].bytes.is_empty() && got[0].len == 10_000);
        assert_eq!(got[1].bytes, b"next");
        let e = parse_row(0, &got[0], "q", Some("a"), 100).unwrap_err();
        assert!(e.contains("10000 bytes"), "{e}");
    }

    #[test]
    fn invalid_utf8_and_bom() {
        let bad = Line {
            bytes: b"{\"question\": \"\xff\"}".to_vec(),
            len: 17,
            hash: String::new(),
            too_long: false,
        };
        let e = parse_row(3, &bad, "question", Some("answer"), 1000).unwrap_err();
        assert!(
            e.contains("not valid UTF-8") && e.contains("offset 14"),
            "{e}"
        );
        let bom = "\u{feff}{\"question\": \"q\", \"answer\": \"a\"}";
        let line = lines(bom.as_bytes(), 1000).remove(0);
        assert_eq!(
            parse_row(0, &line, "question", Some("answer"), 1000).unwrap(),
            ("q".into(), "a".into())
        );
        // Only the first line may carry one.
        assert!(parse_row(1, &line, "question", Some("answer"), 1000).is_err());
    }

    #[test]
    fn answer_rows_need_only_the_question() {
        let line = lines(br#"{"question": "q"}"#, 1000).remove(0);
        assert_eq!(
            parse_row(0, &line, "question", None, 1000).unwrap(),
            ("q".into(), String::new())
        );
        let e = parse_row(0, &line, "question", Some("answer"), 1000).unwrap_err();
        assert!(e.contains("missing field 'answer'"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes, any limit: every line comes back once, in order, and parsing never panics.
        #[test]
        fn any_bytes_read_back_line_for_line(input in proptest::collection::vec(any::<u8>(), 0..300), limit in 1usize..64) {
            let got = lines(&input, limit);
            let want: Vec<&[u8]> = if input.is_empty() {
                Vec::new()
            } else {
                let body = input.strip_suffix(b"\n").unwrap_or(&input);
                body.split(|&b| b == b'\n').collect()
            };
            prop_assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let w = w.strip_suffix(b"\r").unwrap_or(w);
                if w.len() <= limit {
                    prop_assert_eq!(&g.bytes[..], w);
                    prop_assert_eq!(&g.hash, &line_hash(w));
                } else {
                    prop_assert!(g.too_long);
                }
                let _ = parse_row(i, g, "question", Some("answer"), limit);
            }
        }

        /// Rows of arbitrary JSON-ish text parse or are refused with a reason, never panic.
        #[test]
        fn row_parser_never_panics(text in "\\PC{0,80}", q in "\\PC{0,10}") {
            let line = Line { len: text.len(), hash: String::new(), too_long: false, bytes: text.into_bytes() };
            let _ = parse_row(0, &line, &q, Some("answer"), 1 << 20);
        }
    }
}
