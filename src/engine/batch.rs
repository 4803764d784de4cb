//! Batched decoding on the engine: a second set of shared KV buffers, `[slots, kv_heads,
//! positions, head]` per layer, bound as both past input and present output like the
//! single-sequence ones.
//!
//! Rows are ragged and right-padded, the layout onnxruntime-genai's GroupQueryAttention
//! models use: slot `s` holds its sequence at positions `0..past[s]`, its attention-mask row
//! has `past[s] + 1` ones then zeros, so the graph's `seqlens_k` (mask sum minus one) tells
//! GroupQueryAttention where the new token goes and what it attends to, per row, and the rotary
//! position is the row's own. A slot's prompt is run alone in the single-sequence buffers and
//! copied into its slot (`load_slot`): a memcpy per layer and head. A sequence with a copy
//! draft goes the other way for its drafted pass (`unload_slot`), then back.
//!
//! CPU only for now: the copy reads and writes host memory.

use ort::value::{DynTensor, TensorElementType};

use super::{run_bound, KvStorage, OnnxDecoder};
use crate::error::{Error, Result};
use crate::model::BatchModel;

/// The batch cache and its binding.
pub(super) struct BatchKv {
    buffers: Vec<DynTensor>,
    slots: usize,
    positions: usize,
    binding: Box<ort::session::IoBinding>,
}

/// Copies `rows` runs of `run` elements from `src` (row stride `src_stride`) to `dst` (row
/// stride `dst_stride`), both as `T`.
fn copy_runs<T: ort::value::PrimitiveTensorElementType + Copy>(
    src: &DynTensor,
    dst: &mut DynTensor,
    runs: impl Iterator<Item = (usize, usize)>,
    run: usize,
) -> Result<()> {
    let (_, from) = src.try_extract_tensor::<T>().map_err(Error::ort_run)?;
    let (_, to) = dst.try_extract_tensor_mut::<T>().map_err(Error::ort_run)?;
    for (s, d) in runs {
        to[d..d + run].copy_from_slice(&from[s..s + run]);
    }
    Ok(())
}

/// Like [`copy_runs`] within one tensor.
fn move_runs<T: ort::value::PrimitiveTensorElementType + Copy>(
    t: &mut DynTensor,
    runs: impl Iterator<Item = (usize, usize)>,
    run: usize,
) -> Result<()> {
    let (_, data) = t.try_extract_tensor_mut::<T>().map_err(Error::ort_run)?;
    for (s, d) in runs {
        data.copy_within(s..s + run, d);
    }
    Ok(())
}

fn copy_kv(
    dtype: TensorElementType,
    src: &DynTensor,
    dst: &mut DynTensor,
    runs: impl Iterator<Item = (usize, usize)>,
    run: usize,
) -> Result<()> {
    match dtype {
        TensorElementType::Float16 => copy_runs::<half::f16>(src, dst, runs, run),
        _ => copy_runs::<f32>(src, dst, runs, run),
    }
}

/// Which way [`OnnxDecoder::copy_slot`] copies.
enum Direction {
    /// Single-sequence cache to the slot (a prompt joins the batch).
    IntoSlot,
    /// The slot to the single-sequence cache (a sequence leaves for a drafted pass).
    OutOfSlot,
}

impl OnnxDecoder {
    /// Copies the first `len` positions of every layer and head between the single-sequence
    /// cache (stride `capacity`) and `slot` of the batch cache (stride `positions`).
    fn copy_slot(&mut self, slot: usize, len: usize, direction: Direction) -> Result<()> {
        let KvStorage::Shared {
            _buffers: single,
            capacity,
            ..
        } = &mut self.kv
        else {
            return Err(Error::invalid(
                "batched decoding needs a shared-buffer model",
            ));
        };
        let Some(batch) = self.batch.as_mut() else {
            return Err(Error::invalid("a slot copy before reserve_batch"));
        };
        if slot >= batch.slots || len > batch.positions || len > *capacity {
            return Err(Error::invalid(format!(
                "slot {slot} of {} cannot take {len} positions ({} per slot, {} single)",
                batch.slots, batch.positions, capacity
            )));
        }
        let (h, d, cap, p) = (self.kv_heads, self.head_size, *capacity, batch.positions);
        let single_at = |head: usize| head * cap * d;
        let slot_at = |head: usize| (slot * h + head) * p * d;
        for (one, many) in single.iter_mut().zip(batch.buffers.iter_mut()) {
            match direction {
                Direction::IntoSlot => {
                    let runs = (0..h).map(|head| (single_at(head), slot_at(head)));
                    copy_kv(self.kv_dtype, one, many, runs, len * d)?;
                }
                Direction::OutOfSlot => {
                    let runs = (0..h).map(|head| (slot_at(head), single_at(head)));
                    copy_kv(self.kv_dtype, many, one, runs, len * d)?;
                }
            }
        }
        Ok(())
    }
}

impl BatchModel for OnnxDecoder {
    fn reserve_batch(&mut self, slots: usize, positions: usize) -> Result<()> {
        self.require_cpu_shared("batched decoding", "use a batch size of 1")?;
        if let Some(b) = &self.batch {
            if b.slots == slots && b.positions >= positions {
                return Ok(());
            }
        }
        let positions = positions.min(self.context_length).max(1);
        let mut buffers = self.kv_tensors(slots, positions)?;
        // Keep what the slots hold: each (slot, head) run of positions moves to its new stride.
        if let Some(old) = self.batch.take() {
            let (h, d) = (self.kv_heads, self.head_size);
            let keep = old.slots.min(slots);
            let run = old.positions.min(positions) * d;
            for (src, dst) in old.buffers.iter().zip(buffers.iter_mut()) {
                let runs = (0..keep * h).map(|sh| (sh * old.positions * d, sh * positions * d));
                copy_kv(self.kv_dtype, src, dst, runs, run)?;
            }
        }
        let binding = self.bind_kv(&mut buffers)?;
        self.batch = Some(BatchKv {
            buffers,
            slots,
            positions,
            binding: Box::new(binding),
        });
        Ok(())
    }

    fn load_slot(&mut self, slot: usize, len: usize) -> Result<()> {
        self.copy_slot(slot, len, Direction::IntoSlot)
    }

    fn unload_slot(&mut self, slot: usize, len: usize) -> Result<()> {
        self.copy_slot(slot, len, Direction::OutOfSlot)
    }

    fn move_slot(&mut self, from: usize, to: usize, len: usize) -> Result<()> {
        let Some(batch) = self.batch.as_mut() else {
            return Err(Error::invalid("move_slot before reserve_batch"));
        };
        if from.max(to) >= batch.slots || len > batch.positions {
            return Err(Error::invalid(format!(
                "cannot move {len} positions from slot {from} to {to} of {}",
                batch.slots
            )));
        }
        let (h, d, p) = (self.kv_heads, self.head_size, batch.positions);
        for buffer in &mut batch.buffers {
            let runs = (0..h).map(|head| ((from * h + head) * p * d, (to * h + head) * p * d));
            match self.kv_dtype {
                TensorElementType::Float16 => move_runs::<half::f16>(buffer, runs, len * d)?,
                _ => move_runs::<f32>(buffer, runs, len * d)?,
            }
        }
        Ok(())
    }

    fn forward_batch(&mut self, tokens: &[u32], past: &[usize]) -> Result<&mut [f32]> {
        let Some(batch) = self.batch.as_ref() else {
            return Err(Error::invalid("forward_batch before reserve_batch"));
        };
        let slots = batch.slots;
        if tokens.len() != slots || past.len() != slots {
            return Err(Error::invalid(format!(
                "a batched pass takes one token per slot ({slots})"
            )));
        }
        let width = past.iter().max().copied().unwrap_or(0) + 1;
        if width > batch.positions {
            return Err(Error::ContextOverflow {
                prompt_tokens: width,
                context_length: batch.positions,
            });
        }
        let step = self.step_inputs(tokens, past, 1)?;
        let batch = self.batch.as_mut().expect("checked above");
        let logits = run_bound(
            &self.session,
            &mut batch.binding,
            &self.input_names,
            &step,
            &self.logits_name,
            &self.cpu_output,
        )?;
        self.logit_rows = slots;
        self.copy_last_logits(&logits)?;
        Ok(&mut self.logits[..slots * self.vocab_size])
    }
}
