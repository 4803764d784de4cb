//! The result of `aligner_correct` and its accessors.

use std::ffi::{c_char, CStr};

use crate::Generation;

/// The result of one correction.
pub struct AlignerResult {
    /// The text and a trailing NUL.
    text: Vec<u8>,
    finish_reason: &'static CStr,
    prompt_tokens: usize,
    completion_tokens: usize,
}

pub(super) fn result_of(g: &Generation) -> AlignerResult {
    let mut text = g.text.as_bytes().to_vec();
    text.push(0);
    let finish_reason = match g.finish_reason {
        crate::FinishReason::Length => c"length",
        crate::FinishReason::Eos => c"eos",
        crate::FinishReason::Stop => c"stop",
        crate::FinishReason::ContextFull => c"context_full",
        crate::FinishReason::Cancelled => c"cancelled",
    };
    AlignerResult {
        text,
        finish_reason,
        prompt_tokens: g.prompt_tokens,
        completion_tokens: g.tokens.len(),
    }
}

/// The corrected text, NUL-terminated; its length in bytes goes to `*len` when `len` is not
/// NULL. Owned by the result. NULL for a NULL result.
///
/// # Safety
/// `result` must be NULL or a live result; `len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn aligner_result_text(
    result: *const AlignerResult,
    len: *mut usize,
) -> *const c_char {
    let Some(r) = result.as_ref() else {
        return std::ptr::null();
    };
    if let Some(len) = len.as_mut() {
        *len = r.text.len() - 1;
    }
    r.text.as_ptr().cast()
}

/// Why generation ended: "eos", "length", "stop", "context_full" or "cancelled" (static).
///
/// # Safety
/// `result` must be NULL or a live result.
#[no_mangle]
pub unsafe extern "C" fn aligner_result_finish_reason(
    result: *const AlignerResult,
) -> *const c_char {
    result
        .as_ref()
        .map_or(std::ptr::null(), |r| r.finish_reason.as_ptr())
}

/// Tokens in the rendered prompt.
///
/// # Safety
/// `result` must be NULL or a live result.
#[no_mangle]
pub unsafe extern "C" fn aligner_result_prompt_tokens(result: *const AlignerResult) -> usize {
    result.as_ref().map_or(0, |r| r.prompt_tokens)
}

/// Tokens generated (EOS not counted).
///
/// # Safety
/// `result` must be NULL or a live result.
#[no_mangle]
pub unsafe extern "C" fn aligner_result_completion_tokens(result: *const AlignerResult) -> usize {
    result.as_ref().map_or(0, |r| r.completion_tokens)
}

/// Frees a result (NULL is ignored).
///
/// # Safety
/// `result` must come from `aligner_correct` and be freed once.
#[no_mangle]
pub unsafe extern "C" fn aligner_result_free(result: *mut AlignerResult) {
    if !result.is_null() {
        drop(Box::from_raw(result));
    }
}
