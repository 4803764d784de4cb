//! Execution providers: which one runs the graph, its options, and the fallback policy.
//!
//! A user who asks for a GPU and silently gets the CPU is the classic complaint against
//! runtimes built on ONNX Runtime (`with_execution_providers` falls back quietly). Here an
//! explicit `cuda` or `tensorrt` that cannot register is an [`Error::Provider`] naming the
//! cause; the CPU is used instead only with `allow_cpu_fallback`, and then the fallback is
//! reported. `auto` tries TensorRT, then CUDA, then the CPU and reports what it chose and why.
//!
//! Which nodes each provider actually took is read from ONNX Runtime's own placement log
//! (captured by the environment's logger in [`crate::runtime`]), so "TensorRT took 300 of 340
//! nodes, CUDA the rest" is a measured statement, not a guess.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

mod register;

use crate::error::{Error, Result};
use crate::folder::ModelFolder;

pub(crate) use register::register;
pub use register::{explain_failure, trt_profiles};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProviderChoice {
    #[default]
    Cpu,
    Cuda,
    TensorRt,
    /// TensorRT, then CUDA, then the CPU: the first that registers.
    Auto,
}

impl FromStr for ProviderChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            "tensorrt" | "trt" => Ok(Self::TensorRt),
            "auto" => Ok(Self::Auto),
            other => Err(Error::invalid(format!(
                "unknown execution provider '{other}'; choose cpu, cuda, tensorrt or auto"
            ))),
        }
    }
}

/// A provider that can actually run the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Cpu,
    Cuda,
    TensorRt,
}

impl Provider {
    /// The short name used on the command line, in `aligner.json` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::TensorRt => "tensorrt",
        }
    }

    /// ONNX Runtime's name for it.
    pub fn ort_name(self) -> &'static str {
        match self {
            Provider::Cpu => "CPUExecutionProvider",
            Provider::Cuda => "CUDAExecutionProvider",
            Provider::TensorRt => "TensorrtExecutionProvider",
        }
    }

    pub fn is_gpu(self) -> bool {
        self != Provider::Cpu
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the CUDA memory arena grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArenaExtend {
    #[default]
    NextPowerOfTwo,
    SameAsRequested,
}

/// Provider selection and options. `Default` is the CPU with no fallback questions to ask.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProviderConfig {
    pub choice: ProviderChoice,
    /// Run on the CPU (and say so) when an explicitly requested GPU provider cannot register.
    pub allow_cpu_fallback: bool,
    /// CUDA device ordinal for CUDA and TensorRT.
    pub device_id: i32,
    /// Upper bound of the CUDA memory arena in bytes (`None`: ONNX Runtime's default).
    pub gpu_mem_limit: Option<usize>,
    pub arena_extend: ArenaExtend,
    /// CUDA graph capture (ONNX Runtime needs fixed shapes and device-bound inputs for it).
    pub cuda_graph: bool,
    /// TensorRT engine and timing caches (`None`: the user cache folder, per model).
    pub trt_cache_dir: Option<PathBuf>,
    /// Let TensorRT build fp16 kernels.
    pub trt_fp16: bool,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            choice: ProviderChoice::Cpu,
            allow_cpu_fallback: false,
            device_id: 0,
            gpu_mem_limit: None,
            arena_extend: ArenaExtend::NextPowerOfTwo,
            cuda_graph: false,
            trt_cache_dir: None,
            trt_fp16: true,
        }
    }
}

impl ProviderConfig {
    pub fn with_choice(mut self, choice: ProviderChoice) -> Self {
        self.choice = choice;
        self
    }
    pub fn with_allow_cpu_fallback(mut self, allow: bool) -> Self {
        self.allow_cpu_fallback = allow;
        self
    }
    pub fn with_device_id(mut self, id: i32) -> Self {
        self.device_id = id;
        self
    }
    pub fn with_gpu_mem_limit(mut self, bytes: usize) -> Self {
        self.gpu_mem_limit = Some(bytes);
        self
    }
    pub fn with_arena_extend(mut self, strategy: ArenaExtend) -> Self {
        self.arena_extend = strategy;
        self
    }
    pub fn with_cuda_graph(mut self, enable: bool) -> Self {
        self.cuda_graph = enable;
        self
    }
    pub fn with_trt_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.trt_cache_dir = Some(dir.into());
        self
    }
    pub fn with_trt_fp16(mut self, enable: bool) -> Self {
        self.trt_fp16 = enable;
        self
    }

    /// Checks the options before anything is loaded, so a typo fails fast and clearly.
    pub fn validate(&self) -> Result<()> {
        if self.device_id < 0 {
            return Err(Error::invalid(format!(
                "device id {} is negative; pass a CUDA device ordinal such as 0",
                self.device_id
            )));
        }
        if self.gpu_mem_limit == Some(0) {
            return Err(Error::invalid(
                "GPU memory limit 0 leaves no room for the model; pass a size in bytes or leave it unset",
            ));
        }
        if let Some(dir) = &self.trt_cache_dir {
            check_creatable_dir(dir)?;
        }
        Ok(())
    }

    /// The TensorRT cache folder for `folder`: the configured one, or the user cache folder.
    pub fn trt_cache_for(&self, folder: &ModelFolder) -> PathBuf {
        if let Some(dir) = &self.trt_cache_dir {
            return dir.clone();
        }
        let name = folder
            .dir
            .canonicalize()
            .unwrap_or_else(|_| folder.dir.clone());
        let name = name.file_name().map(|n| n.to_string_lossy().into_owned());
        user_cache_dir()
            .join("tensorrt")
            .join(name.unwrap_or_else(|| "model".into()))
    }
}

/// `$XDG_CACHE_HOME/aligner`, else `~/.cache/aligner`, else the temporary folder.
pub fn user_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("aligner")
}

/// The path is a directory, or could become one: its nearest existing ancestor is a directory.
fn check_creatable_dir(dir: &Path) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::invalid(format!(
            "TensorRT cache path {} {why}; pass a writable directory with --trt-cache-dir",
            dir.display()
        )))
    };
    if dir.as_os_str().is_empty() {
        return bad("is empty");
    }
    for ancestor in dir.ancestors().filter(|a| !a.as_os_str().is_empty()) {
        if ancestor.exists() {
            if !ancestor.is_dir() {
                return if ancestor == dir {
                    bad("is a file, not a directory")
                } else {
                    bad(&format!("is under {}, which is a file", ancestor.display()))
                };
            }
            return Ok(());
        }
    }
    Ok(())
}

/// The provider in use after session creation, and how it came to be chosen.
#[derive(Debug, Clone)]
pub struct ProviderReport {
    pub provider: Provider,
    pub device_id: Option<i32>,
    /// Why other providers were passed over (auto, or an allowed CPU fallback).
    pub notes: Vec<String>,
    /// Nodes per ONNX Runtime provider, from its placement log.
    pub placements: Vec<(String, usize)>,
}

impl ProviderReport {
    /// "cpu", "cuda:0" or "tensorrt:0".
    pub fn label(&self) -> String {
        match self.device_id {
            Some(id) => format!("{}:{id}", self.provider),
            None => self.provider.to_string(),
        }
    }

    /// "12 nodes on TensorrtExecutionProvider, 30 nodes on CUDAExecutionProvider".
    pub fn placement_summary(&self) -> String {
        if self.placements.is_empty() {
            return "placement not reported".into();
        }
        let parts: Vec<String> = self
            .placements
            .iter()
            .map(|(ep, n)| format!("{n} nodes on {ep}"))
            .collect();
        parts.join(", ")
    }

    /// Nodes that did not land on the chosen provider (TensorRT -> CUDA, GPU -> CPU).
    pub fn nodes_elsewhere(&self) -> usize {
        self.placements
            .iter()
            .filter(|(ep, _)| ep != self.provider.ort_name())
            .map(|(_, n)| n)
            .sum()
    }
}

/// Parses ONNX Runtime's "All nodes placed on [X]. Number of nodes: N" and
/// "Node(s) placed on [X]. Number of nodes: N" lines.
pub fn parse_placements(lines: &[String]) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for line in lines {
        let Some(start) = line.find("placed on [") else {
            continue;
        };
        let rest = &line[start + "placed on [".len()..];
        let Some(end) = rest.find(']') else { continue };
        let ep = rest[..end].to_string();
        let count = rest
            .rsplit("Number of nodes:")
            .next()
            .and_then(|n| n.trim().trim_end_matches('.').parse().ok());
        if let Some(count) = count {
            match out.iter_mut().find(|(e, _)| *e == ep) {
                Some(entry) => entry.1 = count,
                None => out.push((ep, count)),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn choices_parse_and_unknown_ones_are_named() {
        assert_eq!(
            "CUDA".parse::<ProviderChoice>().unwrap(),
            ProviderChoice::Cuda
        );
        assert_eq!(
            "trt".parse::<ProviderChoice>().unwrap(),
            ProviderChoice::TensorRt
        );
        assert_eq!(
            "auto".parse::<ProviderChoice>().unwrap(),
            ProviderChoice::Auto
        );
        let e = "rocm".parse::<ProviderChoice>().unwrap_err().to_string();
        assert!(
            e.contains("'rocm'") && e.contains("cpu, cuda, tensorrt or auto"),
            "{e}"
        );
    }

    #[test]
    fn validation_rejects_bad_device_ids_limits_and_cache_paths() {
        let ok = ProviderConfig::default().with_device_id(1);
        assert!(ok.validate().is_ok());
        let e = ProviderConfig::default().with_device_id(-1).validate();
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("device id -1 is negative"));
        let e = ProviderConfig::default().with_gpu_mem_limit(0).validate();
        assert!(e.unwrap_err().to_string().contains("memory limit 0"));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = ProviderConfig::default()
            .with_trt_cache_dir(&file)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a file, not a directory"), "{e}");
        let e = ProviderConfig::default()
            .with_trt_cache_dir(file.join("sub/deeper"))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("which is a file"), "{e}");
        let fresh = dir.path().join("new/cache");
        assert!(ProviderConfig::default()
            .with_trt_cache_dir(&fresh)
            .validate()
            .is_ok());
        assert!(!fresh.exists(), "validation must not create folders");
    }

    #[test]
    fn placement_lines_parse() {
        let lines = vec![
            " All nodes placed on [CPUExecutionProvider]. Number of nodes: 40".to_string(),
            "unrelated".to_string(),
        ];
        assert_eq!(
            parse_placements(&lines),
            vec![("CPUExecutionProvider".to_string(), 40)]
        );
        let mixed = vec![
            " Node(s) placed on [TensorrtExecutionProvider]. Number of nodes: 12".to_string(),
            " Node(s) placed on [CUDAExecutionProvider]. Number of nodes: 30".to_string(),
        ];
        let report = ProviderReport {
            provider: Provider::TensorRt,
            device_id: Some(0),
            notes: vec![],
            placements: parse_placements(&mixed),
        };
        assert_eq!(report.nodes_elsewhere(), 30);
        assert_eq!(report.label(), "tensorrt:0");
    }
}
