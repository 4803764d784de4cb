//! What a previous (possibly killed) run already wrote, so a re-run skips it.
//!
//! Rows are keyed by input line number and a hash of the line's content: an edited input line
//! is processed again. A row cut short by a kill (no final newline, or not valid JSON) is
//! truncated away before appending, so every kept row is whole.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// First 16 hex digits of the line's sha256.
pub fn line_hash(line: &str) -> String {
    let digest = Sha256::digest(line.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads `path` (if present), truncates a torn last row, and adds the keys of its rows.
pub fn collect_done(path: &Path, done: &mut HashSet<(usize, String)>) -> Result<usize> {
    if !path.exists() {
        return Ok(0);
    }
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut good_len: u64 = 0;
    let mut rows = 0;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        let complete = line.ends_with('\n');
        let parsed: Option<Value> = serde_json::from_str(line.trim_end()).ok();
        let key = parsed.as_ref().and_then(|v| {
            let meta = &v["meta"];
            Some((
                meta["line"].as_u64()? as usize,
                meta["hash"].as_str()?.to_string(),
            ))
        });
        match (complete, key) {
            (true, Some(key)) => {
                done.insert(key);
                rows += 1;
                good_len += n as u64;
            }
            // A torn row can only be the last one; anything after it is not ours to keep.
            _ => break,
        }
    }
    let size = std::fs::metadata(path)?.len();
    if good_len < size {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(good_len)
            .with_context(|| format!("cannot truncate the torn last row of {}", path.display()))?;
        f.sync_all()?;
        eprintln!(
            "aligner: removed a torn last row ({} bytes) from {}",
            size - good_len,
            path.display()
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_rows_are_cut_and_whole_rows_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let whole = r#"{"meta":{"line":0,"hash":"aa"}}"#;
        let other = r#"{"meta":{"line":3,"hash":"bb"}}"#;
        std::fs::write(&path, format!("{whole}\n{other}\n{{\"meta\":{{\"li")).unwrap();
        let mut done = HashSet::new();
        assert_eq!(collect_done(&path, &mut done).unwrap(), 2);
        assert!(done.contains(&(0, "aa".to_string())) && done.contains(&(3, "bb".to_string())));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{whole}\n{other}\n")
        );
    }

    #[test]
    fn hashes_depend_on_content() {
        assert_eq!(line_hash("x").len(), 16);
        assert_ne!(line_hash("a"), line_hash("b"));
    }
}
