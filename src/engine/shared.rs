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

use ort::memory::Allocator;
use ort::session::{IoBinding, RunOptions, Session};
use ort::sys::{OrtStatusPtr, OrtValue};
use ort::value::DynValue;
use ort::AsPointer;

use crate::error::{Error, Result};

/// Runs `binding` on `session` and returns the bound output called `output` (allocated by
/// ONNX Runtime because it was bound to a device, not to a tensor).
pub(super) fn run_binding(
    session: &Session,
    options: Option<&RunOptions>,
    binding: &IoBinding,
    output: &str,
) -> Result<DynValue> {
    let api = ort::api();
    let options = options.map_or(ptr::null(), |o| o.ptr());
    // SAFETY: the pointers come from live wrappers borrowed for the whole call (or null
    // options: the defaults); ONNX Runtime reads the binding and the options and writes only
    // into the buffers bound to it, which the caller owns.
    check(unsafe { (api.RunWithBinding)(session.ptr().cast_mut(), options, binding.ptr()) })?;
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
