//! On-disk cache of the optimized CPU graph, so that the second start of a model is fast.
//!
//! The first start asks ONNX Runtime to write the optimized graph, with its prepacked weights,
//! to a cache folder; later starts load that with optimization off and map the prepacked
//! weights instead of computing them (see `startup` for why, and for the check an entry
//! passes before it is published). The key covers everything the result depends on: the
//! model files (size and mtime), the ONNX Runtime version and the CPU's feature flags
//! (prepacked layouts are CPU-specific). A cache entry that fails to load is deleted and the
//! model loads from its folder.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

const MODEL_FILE: &str = "model.onnx";
const DATA_FILE: &str = "model.onnx.data";

/// Entries kept per cache folder, most recently used first. An entry is about twice the
/// model (326 MB for the default one: its weights and their prepacked copy), and every
/// re-exported folder gets a new key, so without a limit the cache grew by one model per
/// rebuild (1.6 GB on the development VM).
const KEEP_ENTRIES: usize = 4;

/// A staging folder older than this was left by a process that died while writing it.
const STALE_STAGING: Duration = Duration::from_secs(3600);

/// Where one model's optimized graph lives, keyed by what it depends on.
#[derive(Debug, Clone)]
pub struct GraphCache {
    entry: PathBuf,
}

impl GraphCache {
    pub fn new(root: &Path, model_path: &Path, ort_version: &str) -> GraphCache {
        let mut key = Sha256::new();
        key.update(env!("CARGO_PKG_VERSION"));
        // Bumped when what is stored changes (2: the graph only; 3: prepacked weights too,
        // once checked).
        key.update(b"format 3");
        key.update(ort_version);
        key.update(cpu_flags());
        let canonical = model_path
            .canonicalize()
            .unwrap_or_else(|_| model_path.to_path_buf());
        key.update(canonical.to_string_lossy().as_bytes());
        let data = PathBuf::from(format!("{}.data", canonical.display()));
        for file in [canonical.as_path(), data.as_path()] {
            if let Ok(meta) = std::fs::metadata(file) {
                key.update(meta.len().to_le_bytes());
                if let Ok(modified) = meta.modified() {
                    key.update(format!("{modified:?}"));
                }
            }
        }
        let hex: String = key.finalize()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        GraphCache {
            entry: root.join(hex),
        }
    }

    /// The cached optimized graph, when a complete entry exists.
    pub fn cached_model(&self) -> Option<PathBuf> {
        let model = self.entry.join(MODEL_FILE);
        model.is_file().then_some(model)
    }

    /// A fresh folder for ONNX Runtime to write into; [`commit`](Self::commit) publishes it.
    pub fn staging(&self) -> std::io::Result<PathBuf> {
        let staging = self
            .entry
            .with_extension(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)?;
        Ok(staging.join(MODEL_FILE))
    }

    /// Moves a written staging folder into place (a rename, so readers never see half of it),
    /// then drops the least recently used entries beyond [`KEEP_ENTRIES`].
    pub fn commit(&self, staged_model: &Path) {
        if let Some(staging) = staged_model.parent() {
            if staged_model.is_file() && std::fs::rename(staging, &self.entry).is_err() {
                // Another process won the race; its entry is as good as ours.
                let _ = std::fs::remove_dir_all(staging);
            }
        }
        self.prune(KEEP_ENTRIES);
    }

    /// Marks the entry as just used (its model file's mtime), so pruning keeps it.
    pub fn touch(&self) {
        let model = self.entry.join(MODEL_FILE);
        if let Ok(file) = std::fs::File::options().write(true).open(model) {
            let _ = file.set_modified(SystemTime::now());
        }
    }

    /// Keeps this entry and the `keep - 1` other most recently used ones; removes the rest,
    /// and staging folders that a dead process left. A process still loading a removed entry
    /// keeps its open files (Linux unlinks lazily) or, failing to open it, rebuilds it.
    fn prune(&self, keep: usize) {
        let Some(root) = self.entry.parent() else {
            return;
        };
        let Ok(dirs) = std::fs::read_dir(root) else {
            return;
        };
        let now = SystemTime::now();
        let mut entries = Vec::new();
        for dir in dirs.flatten().map(|d| d.path()) {
            if dir == self.entry {
                continue;
            }
            if dir.extension().is_some() {
                // `<key>.tmp-<pid>`: remove once it is clearly abandoned.
                let age = modified(&dir).and_then(|t| now.duration_since(t).ok());
                if age.is_some_and(|a| a > STALE_STAGING) {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                continue;
            }
            let used = modified(&dir.join(MODEL_FILE)).unwrap_or(SystemTime::UNIX_EPOCH);
            entries.push((used, dir));
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.0));
        for (_, dir) in entries.into_iter().skip(keep.saturating_sub(1)) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    pub fn discard_staging(&self, staged_model: &Path) {
        if let Some(staging) = staged_model.parent() {
            let _ = std::fs::remove_dir_all(staging);
        }
    }

    /// Drops an entry that ONNX Runtime could not load.
    pub fn invalidate(&self) {
        let _ = std::fs::remove_dir_all(&self.entry);
    }

    pub fn data_file_name() -> &'static str {
        DATA_FILE
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The CPU's feature flags (x86 `flags`, ARM `Features`), part of the cache key.
fn cpu_flags() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("flags") || l.starts_with("Features"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_changes_with_the_model_file_and_the_runtime_version() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.onnx");
        std::fs::write(&model, b"one").unwrap();
        let root = dir.path().join("cache");
        let a = GraphCache::new(&root, &model, "1.31.1");
        assert_eq!(a.entry, GraphCache::new(&root, &model, "1.31.1").entry);
        assert_ne!(a.entry, GraphCache::new(&root, &model, "1.32.0").entry);
        std::fs::write(&model, b"longer").unwrap();
        assert_ne!(a.entry, GraphCache::new(&root, &model, "1.31.1").entry);
    }

    #[test]
    fn only_a_committed_entry_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.onnx");
        std::fs::write(&model, b"m").unwrap();
        let cache = GraphCache::new(&dir.path().join("cache"), &model, "1.31.1");
        assert!(cache.cached_model().is_none());
        let staged = cache.staging().unwrap();
        assert!(cache.cached_model().is_none(), "staging is not an entry");
        std::fs::write(&staged, b"optimized").unwrap();
        cache.commit(&staged);
        assert_eq!(
            std::fs::read(cache.cached_model().unwrap()).unwrap(),
            b"optimized"
        );
        cache.invalidate();
        assert!(cache.cached_model().is_none());
    }

    /// An entry for a model file called `name`, last used `age_s` seconds ago; committed (so
    /// pruning the others) when `age_s` is 0, else written in place.
    fn entry(dir: &Path, name: &str, age_s: u64) -> GraphCache {
        let model = dir.join(name);
        std::fs::write(&model, name).unwrap();
        let cache = GraphCache::new(&dir.join("cache"), &model, "1.31.1");
        if age_s == 0 {
            let staged = cache.staging().unwrap();
            std::fs::write(&staged, b"optimized").unwrap();
            cache.commit(&staged);
            return cache;
        }
        std::fs::create_dir_all(&cache.entry).unwrap();
        std::fs::write(cache.entry.join(MODEL_FILE), b"optimized").unwrap();
        let used = SystemTime::now() - Duration::from_secs(age_s);
        let file = std::fs::File::options()
            .write(true)
            .open(cache.cached_model().unwrap())
            .unwrap();
        file.set_modified(used).unwrap();
        cache
    }

    #[test]
    fn a_new_entry_keeps_only_the_most_recently_used_others() {
        let dir = tempfile::tempdir().unwrap();
        // Six older entries, the oldest first; the fourth oldest is then used again.
        let old: Vec<GraphCache> = (0..6)
            .map(|i| entry(dir.path(), &format!("m{i}.onnx"), 1000 - 100 * i))
            .collect();
        old[0].touch();
        // A staging folder left by a dead process two hours ago, and a live one.
        let dead = dir.path().join("cache/abc.tmp-1");
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::File::open(&dead)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
        let live = dir.path().join("cache/def.tmp-2");
        std::fs::create_dir_all(&live).unwrap();

        let new = entry(dir.path(), "new.onnx", 0);
        let kept: Vec<bool> = old.iter().map(|c| c.cached_model().is_some()).collect();
        // Kept: the new one, the touched m0, and the two most recent of the rest (m5, m4).
        assert_eq!(kept, [true, false, false, false, true, true]);
        assert!(new.cached_model().is_some());
        assert!(!dead.exists(), "an abandoned staging folder is removed");
        assert!(
            live.exists(),
            "a staging folder being written is left alone"
        );
    }
}
