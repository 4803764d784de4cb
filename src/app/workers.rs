//! Loading models for a command: one ([`load`]) or a pool of workers splitting the cores
//! ([`load_workers`]), with the provider notes on stderr. The server and batch share this.

use std::path::{Path, PathBuf};

use anyhow::Result;

use aligner::{Aligner, GenerationConfig};

use super::args::{cores, GenArgs, ModelArgs};
use super::errors::usage;

/// Models loaded for `n` workers, with what they need to run and to be reloaded.
pub struct Workers {
    pub models: Vec<Aligner>,
    /// The flags' generation settings over the folder's defaults, validated.
    pub config: GenerationConfig,
    pub dir: PathBuf,
    /// The model flags with the per-worker thread count filled in: loads one more worker.
    pub model_args: ModelArgs,
}

/// How many workers to load.
#[derive(Debug, Clone, Copy)]
pub enum WorkerCount {
    /// The flag's number, on any provider.
    Exactly(usize),
    /// One per core on the CPU; `gpu` when the model landed on a GPU, where each worker is a
    /// session with its own weights in device memory and all of them share one device.
    PerCoreOrGpu { gpu: usize },
}

impl WorkerCount {
    /// The count once the provider is known.
    fn resolve(self, on_gpu: bool, cores: usize) -> usize {
        match self {
            WorkerCount::Exactly(n) => n,
            WorkerCount::PerCoreOrGpu { gpu } if on_gpu => gpu,
            WorkerCount::PerCoreOrGpu { .. } => cores,
        }
        .max(1)
    }
}

/// Loads the model that `model` names for `count` workers. Without `--threads`, the cores are
/// split between the workers planned for the CPU: decoding is memory-bound, and oversubscribed
/// ONNX Runtime threads only wait on each other. On the CPU the workers share one session, so
/// one copy of the weights (see [`another`]).
pub fn load_workers(model: &ModelArgs, gen: &GenArgs, count: WorkerCount) -> Result<Workers> {
    let planned = count.resolve(false, cores());
    let dir = model.model_dir()?;
    let mut model_args = model.clone();
    model_args.threads = Some(model.threads()?.unwrap_or((cores() / planned).max(1)));
    // A server or a batch runs pass after pass: handing back the arena a prompt grew only
    // for the next prompt to map it again cost `serve --workers 1` 5-20% of its requests/s
    // (benches/serve_load.py), while a one-off correction keeps the lower peak.
    model_args.keep_arena = true;
    let mut models = vec![load(&model_args, &dir)?];
    let n = count.resolve(models[0].provider().provider.is_gpu(), cores());
    for _ in 1..n {
        models.push(another(&models[0], &model_args, &dir)?);
    }
    let config = gen.apply(models[0].generation_defaults());
    config.validate()?;
    Ok(Workers {
        models,
        config,
        dir,
        model_args,
    })
}

/// One more worker's model: a handle on `first`'s session where it can be shared (the CPU:
/// one copy of the weights, and runs that overlap were measured faster than two sessions'),
/// else a second load (a GPU session is not shared between threads).
pub fn another(first: &Aligner, args: &ModelArgs, dir: &Path) -> Result<Aligner> {
    match first.share() {
        Ok(model) => Ok(model),
        Err(_) => load(args, dir),
    }
}

/// Loads the model and says on stderr how the execution provider was chosen, whenever that is
/// not simply the CPU the user asked for.
pub fn load(args: &ModelArgs, dir: &Path) -> Result<Aligner> {
    let aligner = Aligner::load(dir, &args.load_options()?)?;
    let report = aligner.provider();
    for note in &report.notes {
        eprintln!("aligner: {note}");
    }
    if !report.notes.is_empty() || args.ep.eq_ignore_ascii_case("auto") {
        eprintln!("aligner: execution provider: {}", report.label());
    }
    if report.provider.is_gpu() && report.nodes_elsewhere() > 0 {
        eprintln!(
            "aligner: {} nodes are not on {}: {}",
            report.nodes_elsewhere(),
            report.provider,
            report.placement_summary()
        );
    }
    if let Some(warning) = aligner.provider_mismatch() {
        eprintln!("aligner: warning: {warning}");
    }
    Ok(aligner)
}

/// The batch size to run: the flag's (in range: see [`check_batch_size`]), checked against
/// what the model can do, or `default` on the CPU and 1 on a GPU (where batched decoding does
/// not run yet).
pub fn batch_size(model: &mut Aligner, flag: Option<usize>, default: usize) -> Result<usize> {
    let slots = match flag {
        Some(n) => n,
        None if model.provider().provider.is_gpu() => 1,
        None => default,
    };
    if slots > 1 {
        if let Err(e) = model.batch::<()>(slots) {
            return usage(format!("--batch-size {slots}: {e}"));
        }
    }
    Ok(slots)
}

/// Refuses a `--batch-size` out of range, before anything is loaded.
pub fn check_batch_size(flag: Option<usize>) -> Result<()> {
    let max = aligner::batching::MAX_SLOTS;
    match flag {
        Some(n) if n == 0 || n > max => usage(format!(
            "--batch-size {n} is out of range; use 1 (no batching) to {max}"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::WorkerCount;

    #[test]
    fn the_default_count_is_per_core_on_the_cpu_and_small_on_a_gpu() {
        let default = WorkerCount::PerCoreOrGpu { gpu: 2 };
        assert_eq!(default.resolve(false, 16), 16);
        assert_eq!(default.resolve(true, 16), 2);
        assert_eq!(WorkerCount::Exactly(5).resolve(true, 16), 5);
        assert_eq!(WorkerCount::Exactly(0).resolve(false, 16), 1);
    }
}
