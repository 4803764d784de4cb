//! On-disk cache of the optimized CPU graph, so that the second start of a model is fast.
//!
//! Most of a CPU session's start is spent optimizing the graph. The first start asks ONNX
//! Runtime to write the optimized graph to a cache folder; later starts load that with
//! optimization off (and prepack the weights again, which is quick). The key covers everything the result depends on: the model files (size and mtime),
//! the ONNX Runtime version and the CPU's feature flags (prepacked layouts are CPU-specific).
//! A cache entry that fails to load is deleted and the model loads from its folder.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const MODEL_FILE: &str = "model.onnx";
const DATA_FILE: &str = "model.onnx.data";

/// Where one model's optimized graph lives, keyed by what it depends on.
#[derive(Debug, Clone)]
pub struct GraphCache {
    entry: PathBuf,
}

impl GraphCache {
    pub fn new(root: &Path, model_path: &Path, ort_version: &str) -> GraphCache {
        let mut key = Sha256::new();
        key.update(env!("CARGO_PKG_VERSION"));
        // Bumped when what is stored changes (2: the graph only, no prepacked weights).
        key.update(b"format 2");
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

    /// Moves a written staging folder into place (a rename, so readers never see half of it).
    pub fn commit(&self, staged_model: &Path) {
        if let Some(staging) = staged_model.parent() {
            if staged_model.is_file() && std::fs::rename(staging, &self.entry).is_err() {
                // Another process won the race; its entry is as good as ours.
                let _ = std::fs::remove_dir_all(staging);
            }
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
}
