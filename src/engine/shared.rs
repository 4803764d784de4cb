//! A bound pass run with `&Session`, so that decoders on several threads can share one
//! session: one copy of the (prepacked) weights per process instead of one per worker.
//!
//! ONNX Runtime documents `Run` as safe to call from several threads on one session, each
//! with its own IoBinding. `ort`'s `run_binding` still takes `&mut Session`, as a blanket
//! precaution for execution providers whose allocators are not thread-safe (see its
//! `Session` docs). So this calls the same C functions `ort` calls, and sessions are shared
//! only on the CPU ([`super::OnnxDecoder::share`]); a GPU decoder keeps its own session,
//! and for it this is exactly `ort`'s call.

use std::ffi::c_char;
use std::ptr::{self, NonNull};

use ort::memory::{Allocator, MemoryInfo};
use ort::session::{IoBinding, RunOptions, Session};
use ort::sys::{OrtStatusPtr, OrtValue};
use ort::value::{DynValue, TensorRefMut};
use ort::AsPointer;

use super::session::MappedSession;
use crate::error::{Error, Result};

/// One pass's inputs: the session's input names, this step's values by input index, and how
/// many positions the pass runs (which picks its run options).
pub(super) struct Step<'a> {
    pub names: &'a [String],
    pub values: &'a [(usize, DynValue)],
    pub tokens: usize,
}

impl Step<'_> {
    /// Binds these inputs next to the KV buffers already in `binding`.
    fn bind(&self, binding: &mut IoBinding) -> Result<()> {
        for (index, value) in self.values {
            binding
                .bind_input(self.names[*index].as_str(), value)
                .map_err(Error::ort_run)?;
        }
        Ok(())
    }
}

/// Binds `step`, runs it and returns the logits, which ONNX Runtime allocates each run (in
/// `cpu_output`): for passes whose logits shape is not known ahead, or that leave the CPU
/// (see [`run_bound_into`] for the rest).
pub(super) fn run_bound(
    session: &MappedSession,
    binding: &mut IoBinding,
    step: Step<'_>,
    logits_name: &str,
    cpu_output: &MemoryInfo<'static>,
) -> Result<DynValue> {
    step.bind(binding)?;
    binding
        .bind_output_to_device(logits_name, cpu_output)
        .map_err(Error::ort_run)?;
    run_binding(
        session,
        session.run_options(step.tokens),
        binding,
        logits_name,
    )
}

/// Binds `step` and runs it with its logits written straight into `out` (`rows` rows of the
/// vocabulary, the shape `logits_to_keep` asks for). A verification pass of a 48-token draft
/// returns 9.6 MB of logits on the default model: bound here they take no arena buffer and no
/// copy. Afterwards the output is bound to `cpu_output` again, so the binding never keeps a
/// pointer into `out`.
pub(super) fn run_bound_into(
    session: &MappedSession,
    binding: &mut IoBinding,
    step: Step<'_>,
    logits_name: &str,
    (out, rows): (&mut [f32], usize),
    cpu_output: &MemoryInfo<'static>,
) -> Result<()> {
    step.bind(binding)?;
    let shape = [1, rows, out.len() / rows.max(1)];
    let view = TensorRefMut::from_array_view_mut((shape, out)).map_err(Error::ort_run)?;
    bind_output_view(binding, logits_name, &view)?;
    let ran = run(session, session.run_options(step.tokens), binding);
    drop(view);
    binding
        .bind_output_to_device(logits_name, cpu_output)
        .map_err(Error::ort_run)?;
    ran
}

/// Runs `binding` on `session` and returns the bound output called `output` (allocated by
/// ONNX Runtime because it was bound to a device, not to a tensor).
fn run_binding(
    session: &Session,
    options: Option<&RunOptions>,
    binding: &IoBinding,
    output: &str,
) -> Result<DynValue> {
    let api = ort::api();
    run(session, options, binding)?;
    let allocator = session.allocator();
    let index = bound_output_index(binding, allocator, output)?;
    let mut values: *mut *mut OrtValue = ptr::null_mut();
    let mut count = 0usize;
    // SAFETY: ONNX Runtime fills `values` with `count` new values, allocated with `allocator`.
    check(unsafe {
        (api.GetBoundOutputValues)(
            binding.ptr(),
            allocator.ptr().cast_mut(),
            &mut values,
            &mut count,
        )
    })?;
    if values.is_null() {
        return Err(no_output(output));
    }
    // SAFETY: `values` holds `count` pointers; each becomes an owned value (released on drop,
    // so the ones not wanted are freed here) and the array itself goes back to its allocator.
    let mut wanted = None;
    unsafe {
        for (i, &value) in std::slice::from_raw_parts(values, count).iter().enumerate() {
            if let Some(value) = NonNull::new(value) {
                let value = DynValue::from_ptr(value, Some(allocator));
                if i == index {
                    wanted = Some(value);
                }
            }
        }
        allocator.free(values);
    }
    wanted.ok_or_else(|| no_output(output))
}

/// Runs `binding` on `session`, its outputs written where they are bound.
fn run(session: &Session, options: Option<&RunOptions>, binding: &IoBinding) -> Result<()> {
    let options = options.map_or(ptr::null(), |o| o.ptr());
    // SAFETY: the pointers come from live wrappers borrowed for the whole call (or null
    // options: the defaults); ONNX Runtime reads the binding and the options and writes only
    // into the buffers bound to it, which the caller owns.
    check(unsafe { (ort::api().RunWithBinding)(session.ptr().cast_mut(), options, binding.ptr()) })
}

/// Binds `output` to `value`, a tensor over memory the caller owns (`ort`'s `bind_output`
/// takes only tensors it allocated). ONNX Runtime keeps its own reference to the tensor, not
/// to the memory: the caller must bind the output elsewhere before that memory goes.
fn bind_output_view(
    binding: &mut IoBinding,
    output: &str,
    value: &TensorRefMut<'_, f32>,
) -> Result<()> {
    let name = std::ffi::CString::new(output)
        .map_err(|_| Error::Inference(format!("output name '{output}' holds a NUL byte")))?;
    // SAFETY: both pointers are live for the call; ONNX Runtime copies the OrtValue handle.
    check(unsafe { (ort::api().BindOutput)(binding.ptr().cast_mut(), name.as_ptr(), value.ptr()) })
}

/// Where `output` is among the binding's outputs (ONNX Runtime keeps them in bind order).
fn bound_output_index(binding: &IoBinding, allocator: &Allocator, output: &str) -> Result<usize> {
    let api = ort::api();
    let mut names: *mut c_char = ptr::null_mut();
    let mut lengths: *mut usize = ptr::null_mut();
    let mut count = 0usize;
    // SAFETY: ONNX Runtime fills one buffer of concatenated names and an array of `count`
    // lengths, both allocated with `allocator`, or leaves them null when nothing is bound.
    check(unsafe {
        (api.GetBoundOutputNames)(
            binding.ptr(),
            allocator.ptr().cast_mut(),
            &mut names,
            &mut lengths,
            &mut count,
        )
    })?;
    if names.is_null() || lengths.is_null() {
        return Err(no_output(output));
    }
    // SAFETY: as above; both buffers are read, then freed once.
    let found = unsafe {
        let lengths_slice = std::slice::from_raw_parts(lengths, count);
        let total = lengths_slice.iter().sum();
        let bytes = std::slice::from_raw_parts(names.cast::<u8>(), total);
        let mut start = 0;
        let mut found = None;
        for (i, &len) in lengths_slice.iter().enumerate() {
            if &bytes[start..start + len] == output.as_bytes() {
                found = Some(i);
            }
            start += len;
        }
        allocator.free(names);
        allocator.free(lengths);
        found
    };
    found.ok_or_else(|| no_output(output))
}

fn no_output(output: &str) -> Error {
    Error::Inference(format!("the model produced no '{output}'"))
}

/// Turns an ONNX Runtime status into a result, releasing it.
pub(super) fn check(status: OrtStatusPtr) -> Result<()> {
    let OrtStatusPtr(status) = status;
    if status.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status carries a message that lives until it is released.
    let message = unsafe {
        let text = std::ffi::CStr::from_ptr((api.GetErrorMessage)(status))
            .to_string_lossy()
            .into_owned();
        (api.ReleaseStatus)(status);
        text
    };
    Err(Error::Inference(message))
}
