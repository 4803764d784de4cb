//! What a previous (possibly killed) run already wrote, so a re-run skips it, and the rules
//! that keep a re-run from ever destroying data.
//!
//! Rows are keyed by input line number and a hash of the line's content: an edited input line
//! is processed again. Only one thing is ever cut from an existing file: a final fragment
//! without a newline that starts like a row (`{`) but is not whole JSON, which is what a kill
//! in the middle of a write leaves. Every complete line must be a row this tool wrote (a JSON
//! object with `meta.line` and `meta.hash`); anything else is an error that names the line and
//! changes nothing, so pointing the output at an unrelated file cannot empty it.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// First 16 hex digits of the line's sha256.
pub fn line_hash(line: &[u8]) -> String {
    hex16(&Sha256::digest(line))
}

pub fn hex16(digest: &[u8]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// `(input line, content hash)` of rows already written.
pub type Keys = HashSet<(usize, String)>;

/// What scanning an existing output found, and what must change before appending.
#[derive(Debug, Default, PartialEq)]
pub struct Scan {
    pub rows: usize,
    pub keys: Keys,
    /// Bytes to keep; anything after is a torn final row.
    pub keep_len: u64,
    /// The final row is whole but lacks its newline (the kill came right before it).
    pub needs_newline: bool,
}

/// The key of a row this tool wrote, or `None`.
fn row_key(line: &[u8]) -> Option<(usize, String)> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let meta = v.get("meta")?;
    Some((
        usize::try_from(meta.get("line")?.as_u64()?).ok()?,
        meta.get("hash")?.as_str()?.to_string(),
    ))
}

/// Scans `reader` (the bytes of an output or rejects file named `name`). Errors name the line
/// and say that nothing was changed.
pub fn scan(reader: impl BufRead, name: &str) -> Result<Scan> {
    let mut reader = reader;
    let mut scan = Scan::default();
    let mut line = Vec::new();
    let mut number = 0usize;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read {name}"))?;
        if n == 0 {
            return Ok(scan);
        }
        number += 1;
        let complete = line.last() == Some(&b'\n');
        let body = if complete { &line[..n - 1] } else { &line[..] };
        match (row_key(body), complete) {
            (Some(key), _) => {
                scan.keys.insert(key);
                scan.rows += 1;
                scan.keep_len += n as u64;
                scan.needs_newline = !complete;
            }
            // A kill mid-write leaves the start of a row and no newline: the only thing cut.
            (None, false) if body.trim_ascii_start().starts_with(b"{") => return Ok(scan),
            (None, _) => return crate::app::errors::usage(format!(
                "{name} line {number} is not a row written by aligner batch (a JSON object with meta.line and meta.hash), so it is not a resumable output; nothing was changed. Pick another output file, or fix or remove that line"
            )),
        }
    }
}

/// Scans the open, locked `file` and applies the result: cuts a torn final row, completes a
/// final row missing its newline. Returns the keys found.
pub fn resume(file: &mut File, path: &Path) -> Result<Scan> {
    let name = path.display().to_string();
    file.seek(SeekFrom::Start(0))?;
    let scan = scan(BufReader::new(&mut *file), &name)?;
    let size = file.metadata()?.len();
    if scan.keep_len < size {
        file.set_len(scan.keep_len)
            .with_context(|| format!("cannot cut the torn last row of {name}"))?;
        eprintln!(
            "aligner: removed a torn last row ({} bytes) from {name}",
            size - scan.keep_len
        );
    }
    if scan.needs_newline {
        file.write_all(b"\n")
            .with_context(|| format!("cannot complete the last row of {name}"))?;
    }
    file.sync_all()?;
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WHOLE: &str = r#"{"meta":{"line":0,"hash":"aa"}}"#;
    const OTHER: &str = r#"{"meta":{"line":3,"hash":"bb"}}"#;

    fn scan_str(s: &str) -> Result<Scan> {
        scan(s.as_bytes(), "out.jsonl")
    }

    #[test]
    fn torn_final_row_is_cut_and_whole_rows_kept() {
        let text = format!("{WHOLE}\n{OTHER}\n{{\"meta\":{{\"li");
        let s = scan_str(&text).unwrap();
        assert_eq!(s.rows, 2);
        assert!(s.keys.contains(&(0, "aa".to_string())) && s.keys.contains(&(3, "bb".to_string())));
        assert_eq!(s.keep_len as usize, WHOLE.len() + OTHER.len() + 2);
        assert!(!s.needs_newline);
    }

    #[test]
    fn whole_final_row_without_newline_is_kept_and_completed() {
        let s = scan_str(&format!("{WHOLE}\n{OTHER}")).unwrap();
        assert_eq!(s.rows, 2);
        assert_eq!(s.keep_len as usize, WHOLE.len() + OTHER.len() + 1);
        assert!(s.needs_newline);
    }

    #[test]
    fn a_foreign_or_damaged_line_is_an_error_naming_it() {
        // Regression: an unrelated JSONL file given as output lost its whole content, and a
        // row without meta in the middle of an output lost every row after it.
        let e = scan_str("{\"precious\": 1}\n{\"data\": 2}\n").unwrap_err();
        assert!(e.to_string().contains("out.jsonl line 1"), "{e}");
        let e = scan_str(&format!("{WHOLE}\n{{\"no\": \"meta\"}}\n{OTHER}\n")).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(e.to_string().contains("nothing was changed"), "{e}");
        // A final fragment that does not even start like a row is not ours to cut.
        assert!(scan_str(&format!("{WHOLE}\nhello")).is_err());
        assert!(scan_str("\n").is_err());
        assert!(scan_str(&format!("{WHOLE}\n\u{0}\u{ff}\n")).is_err());
    }

    #[test]
    fn resume_applies_the_scan_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, format!("{WHOLE}\n{OTHER}")).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        assert_eq!(resume(&mut f, &path).unwrap().rows, 2);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{WHOLE}\n{OTHER}\n")
        );
        std::fs::write(&path, format!("{WHOLE}\n{{\"meta\":")).unwrap();
        assert_eq!(resume(&mut f, &path).unwrap().rows, 1);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{WHOLE}\n")
        );
    }

    #[test]
    fn hashes_depend_on_content() {
        assert_eq!(line_hash(b"x").len(), 16);
        assert_ne!(line_hash(b"a"), line_hash(b"b"));
    }

    fn row(line: usize) -> String {
        format!(r#"{{"correction":"c","meta":{{"line":{line},"hash":"h{line}"}}}}"#)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes never panic the scanner, and it never cuts a complete line: what it
        /// keeps is everything up to the last newline at least.
        #[test]
        fn arbitrary_bytes_never_lose_a_complete_line(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(s) = scan(&bytes[..], "out.jsonl") {
                let last_newline = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                prop_assert!(s.keep_len as usize >= last_newline);
                prop_assert!(s.keep_len as usize <= bytes.len());
            }
        }

        /// Real outputs cut anywhere (a kill mid-write) keep every whole row and lose at most
        /// the torn one.
        #[test]
        fn outputs_cut_anywhere_keep_every_whole_row(rows in 1usize..12, cut in any::<proptest::sample::Index>()) {
            let text: String = (0..rows).map(|i| row(i) + "\n").collect();
            let at = cut.index(text.len() + 1);
            let s = scan(&text.as_bytes()[..at], "out.jsonl").unwrap();
            let whole = text[..at].matches('\n').count();
            prop_assert!(s.rows == whole || s.rows == whole + 1);
            for i in 0..whole {
                let key = (i, format!("h{}", i));
                prop_assert!(s.keys.contains(&key));
            }
        }

        /// Inserting a foreign line anywhere in an output is refused, never cut.
        #[test]
        fn a_foreign_line_anywhere_is_refused(rows in 1usize..8, at in any::<proptest::sample::Index>(), junk in "[a-z ]{1,20}") {
            let mut lines: Vec<String> = (0..rows).map(row).collect();
            lines.insert(at.index(rows + 1), junk);
            let text = lines.join("\n") + "\n";
            prop_assert!(scan(text.as_bytes(), "out.jsonl").is_err());
        }
    }
}
