//! The files a batch run writes: the output and its rejects, opened under a lock, checked
//! not to be the input, resumed (a torn last row cut), and planned against the input.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::BufReader;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{input, resume};
use crate::app::args::BatchArgs;
use crate::app::errors::usage;

/// `out.jsonl` -> `out.rejects.jsonl`, next to it.
pub fn rejects_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".jsonl").unwrap_or(&name);
    output.with_file_name(format!("{stem}.rejects.jsonl"))
}

/// Opens `path` for appending under an exclusive lock, held until the run ends, so that two
/// runs on one output cannot both append (they once duplicated every row).
fn open_locked(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .with_context(|| {
            format!(
                "cannot open {} for appending; check that its folder exists and is writable",
                path.display()
            )
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another aligner batch is writing {} (it holds the file's lock); wait for it to finish, or pick another output",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Refuses an output or rejects file that is the input itself (same file by inode, whatever
/// the path says): appending would first truncate a torn "row", i.e. the input.
fn check_not_input(input: &File, files: &[(&File, &Path)], input_path: &Path) -> Result<()> {
    let id = |f: &File| f.metadata().map(|m| (m.dev(), m.ino()));
    let input_id = id(input)?;
    for (file, path) in files {
        if id(file)? == input_id {
            return usage(format!(
                "{} is the input file {}; writing there would destroy the input. Pick another output",
                path.display(),
                input_path.display()
            ));
        }
    }
    Ok(())
}

/// Line numbers and hashes of this run's input, and how many rows it still has to do.
struct InputPlan {
    pending: u64,
    current: HashSet<(usize, String)>,
}

fn plan_input(args: &BatchArgs, shard: (usize, usize), done: &resume::Keys) -> Result<InputPlan> {
    let file = File::open(&args.input)
        .with_context(|| format!("cannot read input {}", args.input.display()))?;
    let mut reader = BufReader::new(file);
    let mut plan = InputPlan {
        pending: 0,
        current: HashSet::new(),
    };
    let mut number = 0;
    while let Some(line) = input::next_line(&mut reader, args.max_row_bytes)
        .with_context(|| format!("cannot read input {}", args.input.display()))?
    {
        let key = (number, line.hash);
        if number % shard.1 == shard.0 && !done.contains(&key) {
            plan.pending += 1;
        }
        plan.current.insert(key);
        number += 1;
    }
    Ok(plan)
}

/// The locked output and rejects files, resumed, with the keys of the rows they hold.
pub struct Outputs {
    pub out_file: File,
    pub rej_file: File,
    pub rejects: PathBuf,
    pub done: resume::Keys,
    /// Rows of this shard still to run.
    pub pending: u64,
}

/// Opens and locks both outputs, refuses one that is the input, cuts a torn last row, and
/// counts (or, with `--strict-resume`, refuses) rows whose input line has changed.
pub fn open_outputs(args: &BatchArgs, shard: (usize, usize)) -> Result<Outputs> {
    let input = File::open(&args.input)
        .with_context(|| format!("cannot read input {}", args.input.display()))?;
    let rejects = rejects_path(&args.output);
    let mut out_file = open_locked(&args.output)?;
    let mut rej_file = open_locked(&rejects)?;
    check_not_input(
        &input,
        &[(&out_file, &args.output), (&rej_file, &rejects)],
        &args.input,
    )?;
    drop(input);
    let mut done = resume::resume(&mut out_file, &args.output)?.keys;
    let rejected_before = resume::resume(&mut rej_file, &rejects)?.keys;
    done.extend(rejected_before);
    let plan = plan_input(args, shard, &done)?;
    let stale = done.iter().filter(|k| !plan.current.contains(k)).count();
    if stale > 0 {
        let what = format!(
            "{stale} row(s) in {} and its rejects come from input lines that have changed or gone since they were written",
            args.output.display()
        );
        if args.strict_resume {
            return usage(format!("{what}; nothing was done (--strict-resume). Use a new output, or drop --strict-resume to keep them and run the changed lines again"));
        }
        eprintln!("aligner: warning: {what}; they stay, and the changed lines are run again (--strict-resume stops instead)");
    }

    Ok(Outputs {
        out_file,
        rej_file,
        rejects,
        done,
        pending: plan.pending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_file_sits_next_to_the_output() {
        assert_eq!(
            rejects_path(Path::new("/d/out.jsonl")),
            PathBuf::from("/d/out.rejects.jsonl")
        );
        assert_eq!(
            rejects_path(Path::new("/d/out")),
            PathBuf::from("/d/out.rejects.jsonl")
        );
    }
}
