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
//! A pass computes only the running sequences, which fill slots `0..n`: it binds views of the
//! first `n` slots of each buffer (`[n, kv_heads, positions, head]`, the same memory and
//! strides), one binding per `n`, made on first use. Padding the pass to the cache's width
//! instead cost a batch whose copy-heavy rows had left for their drafts as much as a full one.
//!
//! CPU only for now: the copy reads and writes host memory.

use std::ffi::CString;
use std::ptr::{self, NonNull};

use ort::session::IoBinding;
use ort::sys::OrtValue;
use ort::value::{DynTensor, TensorElementType};
use ort::AsPointer;

use super::{shared, KvStorage, OnnxDecoder};
use crate::error::{Error, Result};
use crate::model::BatchModel;

/// The batch cache and its bindings.
pub(super) struct BatchKv {
    /// Index `n - 1`: the binding for a pass over the first `n` slots, once one ran. Declared
    /// before the buffers, so that the views over them drop first (fields drop in order).
    bindings: Vec<Option<RowsBinding>>,
    buffers: Vec<DynTensor>,
    slots: usize,
    positions: usize,
}

/// A binding of views of the first rows of every batch buffer, as past input and present
/// output (GroupQueryAttention writes in place), and the views it binds.
struct RowsBinding {
    binding: Box<IoBinding>,
    /// Dropped after the binding (fields drop in order).
    _views: Vec<View>,
}

/// An ONNX Runtime tensor over memory a batch buffer owns: released on drop, never freed.
struct View(NonNull<OrtValue>);

// SAFETY: a view is only used through its decoder's binding, by whichever one thread holds
// the decoder; ONNX Runtime values carry no thread affinity.
unsafe impl Send for View {}

impl Drop for View {
    fn drop(&mut self) {
        // SAFETY: the value was created by CreateTensorWithDataAsOrtValue and is released once.
        unsafe { (ort::api().ReleaseValue)(self.0.as_ptr()) }
    }
}

/// A `[rows, kv_heads, positions, head]` view of the start of `buffer` (whose shape is
/// `[slots, kv_heads, positions, head]` with `rows <= slots`).
fn view(buffer: &mut DynTensor, dtype: TensorElementType, shape: [usize; 4]) -> Result<View> {
    let element = match dtype {
        TensorElementType::Float16 => 2,
        _ => 4,
    };
    let bytes = shape.iter().product::<usize>() * element;
    let dims = shape.map(|d| d as i64);
    let mut value: *mut OrtValue = ptr::null_mut();
    // SAFETY: the memory is the first `bytes` bytes of `buffer`, which outlives the view (both
    // live in the same BatchKv, the view dropping first); ONNX Runtime reads the shape now.
    shared::check(unsafe {
        (ort::api().CreateTensorWithDataAsOrtValue)(
            buffer.memory_info().ptr(),
            buffer.data_ptr_mut(),
            bytes,
            dims.as_ptr(),
            dims.len(),
            dtype.into(),
            &mut value,
        )
    })?;
    NonNull::new(value)
        .map(View)
        .ok_or_else(|| Error::Inference("ONNX Runtime returned no view".into()))
}

/// Binds `value` as the input or output `name` of `binding`.
fn bind(binding: &mut IoBinding, name: &str, value: &View, output: bool) -> Result<()> {
    let api = ort::api();
    let name = CString::new(name).map_err(|e| Error::Inference(e.to_string()))?;
    let bind = if output {
        api.BindOutput
    } else {
        api.BindInput
    };
    // SAFETY: the binding and the value are live; ONNX Runtime copies the name.
    shared::check(unsafe { bind(binding.ptr_mut(), name.as_ptr(), value.0.as_ptr()) })
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

pub(super) fn copy_kv(
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

impl OnnxDecoder {
    /// A binding whose past inputs and present outputs are views of the first `rows` slots.
    fn bind_rows(&mut self, rows: usize) -> Result<RowsBinding> {
        let mut binding = self.session.create_binding().map_err(Error::ort_run)?;
        let (h, d, dtype) = (self.kv_heads, self.head_size, self.kv_dtype);
        let pasts: Vec<String> = (0..self.present_names.len())
            .map(|layer| self.past_input_name(layer).to_string())
            .collect();
        let batch = self
            .batch
            .as_mut()
            .ok_or_else(|| Error::invalid("a batched pass before reserve_batch"))?;
        let positions = batch.positions;
        let mut views = Vec::with_capacity(batch.buffers.len());
        for ((buffer, past), present) in batch
            .buffers
            .iter_mut()
            .zip(&pasts)
            .zip(&self.present_names)
        {
            let v = view(buffer, dtype, [rows, h, positions, d])?;
            bind(&mut binding, past, &v, false)?;
            bind(&mut binding, present, &v, true)?;
            views.push(v);
        }
        Ok(RowsBinding {
            binding: Box::new(binding),
            _views: views,
        })
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
        self.batch = Some(BatchKv {
            bindings: (0..slots).map(|_| None).collect(),
            buffers,
            slots,
            positions,
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
        let rows = tokens.len();
        if rows == 0 || rows > batch.slots || past.len() != rows {
            return Err(Error::invalid(format!(
                "a batched pass takes one token for each of 1 to {} slots, not {rows} tokens and {} positions",
                batch.slots,
                past.len()
            )));
        }
        let width = past.iter().max().copied().unwrap_or(0) + 1;
        if width > batch.positions {
            return Err(Error::ContextOverflow {
                prompt_tokens: width,
                context_length: batch.positions,
            });
        }
        let values = self.step_inputs(tokens, past, 1)?;
        if self
            .batch
            .as_ref()
            .is_some_and(|b| b.bindings[rows - 1].is_none())
        {
            let made = self.bind_rows(rows)?;
            self.batch.as_mut().expect("checked above").bindings[rows - 1] = Some(made);
        }
        let batch = self.batch.as_mut().expect("checked above");
        let rows_binding = batch.bindings[rows - 1].as_mut().expect("made above");
        let step = shared::Step {
            names: &self.input_names,
            values: &values,
            tokens: 1, // a decode step for each row: never followed by a shrink
        };
        let logits = shared::run_bound(
            &self.session,
            &mut rows_binding.binding,
            step,
            &self.logits_name,
            &self.cpu_output,
        )?;
        self.logit_rows = rows;
        self.copy_last_logits(&logits)?;
        Ok(&mut self.logits[..rows * self.vocab_size])
    }
}
