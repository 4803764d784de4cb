//! The C ABI of `libaligner.so`; `include/aligner.h` is generated from this module by cbindgen
//! (`make header`) and checked in, so that a change to it shows in review.
//!
//! Conventions, as the header documents them:
//! - every function returns an [`AlignerStatus`]; on failure, [`aligner_last_error`] gives the
//!   same one-line message the command line prints, for the calling thread;
//! - strings in are UTF-8 with an explicit length, or NUL-terminated when the length is
//!   [`ALIGNER_NUL_TERMINATED`]; invalid UTF-8 is an `ALIGNER_STATUS_INVALID_ARGUMENT`;
//! - strings out are UTF-8 and NUL-terminated, and owned by the object they come from;
//! - nothing panics across the boundary: a panic is caught and becomes
//!   `ALIGNER_STATUS_INTERNAL`.

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Serialize;

use crate::{Aligner, CancelHandle, Error, LoadOptions, ProviderConfig};

mod result;
pub use result::*;

/// Pass as a length to mean "the string is NUL-terminated".
pub const ALIGNER_NUL_TERMINATED: usize = usize::MAX;

/// What a call did. Anything but `ALIGNER_STATUS_OK` sets the thread's last error.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlignerStatus {
    Ok = 0,
    /// A NULL where an object is needed, invalid UTF-8, or a setting out of range.
    InvalidArgument = 1,
    /// ONNX Runtime could not be found or loaded.
    RuntimeNotFound = 2,
    /// The model folder is missing, incomplete or inconsistent.
    LoadFailed = 3,
    /// The requested execution provider could not be used.
    ProviderUnavailable = 4,
    /// ONNX Runtime failed while running the model.
    InferenceFailed = 5,
    TokenizerFailed = 6,
    /// The prompt does not fit the model's context.
    ContextOverflow = 7,
    Cancelled = 8,
    /// A bug in aligner (a caught panic); the message says where.
    Internal = 9,
}

/// How to load a model; start from `aligner_load_options_default()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AlignerLoadOptions {
    /// Intra-op threads; 0 lets ONNX Runtime choose.
    pub threads: u32,
    /// NUL-terminated `cpu`, `cuda`, `tensorrt` or `auto`; NULL is `cpu`.
    pub provider: *const c_char,
    /// CUDA device ordinal for `cuda` and `tensorrt`.
    pub device_id: i32,
    /// NUL-terminated template name; NULL uses the folder's manifest.
    pub template_name: *const c_char,
    /// NUL-terminated path of `libonnxruntime.so`; NULL searches (ORT_DYLIB_PATH, next to
    /// `libaligner.so` and in `../lib` from it, next to the executable, the Python
    /// environment, the system path).
    pub ort_lib: *const c_char,
}

/// Generation settings; start from `aligner_gen_options_default()`, whose values keep the
/// model folder's defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AlignerGenOptions {
    /// 0 keeps the folder's default.
    pub max_new_tokens: u32,
    /// Negative keeps the default; 0 is greedy.
    pub temperature: f32,
    /// Negative keeps the default; 0 is no limit.
    pub top_k: i32,
    /// 0 or negative keeps the default.
    pub top_p: f32,
    /// Negative keeps the default.
    pub min_p: f32,
    /// 0 or negative keeps the default; 1 is off.
    pub repetition_penalty: f32,
    /// Used when `use_seed` is true.
    pub seed: u64,
    pub use_seed: bool,
    /// Turns copy-draft speculation off (the output is the same either way).
    pub disable_copy_drafts: bool,
}

/// Receives each piece of text as it is generated: `len` bytes of UTF-8 at `piece`, followed by
/// a NUL, valid only during the call. Return false to cancel the generation.
pub type AlignerPieceFn =
    Option<unsafe extern "C" fn(piece: *const c_char, len: usize, user_data: *mut c_void) -> bool>;

/// A loaded model. It may be shared between threads: calls on one model are serialized by its
/// lock (a second `aligner_correct` waits for the first), except `aligner_model_cancel`, which
/// never waits.
pub struct AlignerModel {
    inner: Mutex<Aligner>,
    cancel: CancelHandle,
    dir: PathBuf,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(message: &str) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = text);
}

fn status_of(e: &Error) -> AlignerStatus {
    match e {
        Error::RuntimeNotFound(_) => AlignerStatus::RuntimeNotFound,
        Error::Load { .. } => AlignerStatus::LoadFailed,
        Error::Provider { .. } => AlignerStatus::ProviderUnavailable,
        Error::Inference(_) => AlignerStatus::InferenceFailed,
        Error::Tokenizer(_) => AlignerStatus::TokenizerFailed,
        Error::InvalidRequest(_) => AlignerStatus::InvalidArgument,
        Error::ContextOverflow { .. } => AlignerStatus::ContextOverflow,
        Error::Cancelled(_) => AlignerStatus::Cancelled,
    }
}

/// Runs `body`, turning errors and panics into a status and the thread's last error.
fn guard(body: impl FnOnce() -> Result<(), Error>) -> AlignerStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => AlignerStatus::Ok,
        Ok(Err(e)) => {
            set_error(&e.to_string());
            status_of(&e)
        }
        Err(panic) => {
            let cause = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_error(&format!(
                "internal error ({cause}); please report this with the call you made"
            ));
            AlignerStatus::Internal
        }
    }
}

fn invalid(what: impl Into<String>) -> Error {
    Error::InvalidRequest(what.into())
}

/// Reads a string argument: `len` bytes at `ptr`, or up to its NUL for
/// [`ALIGNER_NUL_TERMINATED`]. NULL is the empty string when `len` is 0.
///
/// # Safety
/// `ptr` must point at `len` readable bytes, or at a NUL-terminated string.
unsafe fn text_arg<'a>(ptr: *const c_char, len: usize, name: &str) -> Result<&'a str, Error> {
    let bytes: &[u8] = if ptr.is_null() {
        if len != 0 {
            return Err(invalid(format!("{name} is NULL; pass a string")));
        }
        &[]
    } else if len == ALIGNER_NUL_TERMINATED {
        CStr::from_ptr(ptr).to_bytes()
    } else {
        std::slice::from_raw_parts(ptr.cast::<u8>(), len)
    };
    std::str::from_utf8(bytes)
        .map_err(|e| invalid(format!("{name} is not UTF-8 ({e}); convert it to UTF-8")))
}

/// # Safety
/// `ptr` must be NULL or NUL-terminated.
unsafe fn optional_c_str<'a>(ptr: *const c_char, name: &str) -> Result<Option<&'a str>, Error> {
    if ptr.is_null() {
        return Ok(None);
    }
    text_arg(ptr, ALIGNER_NUL_TERMINATED, name).map(Some)
}

/// The thread's last error message: one line, naming the problem and the fix; empty when no
/// call on this thread has failed. Valid until the next failing call on this thread.
#[no_mangle]
pub extern "C" fn aligner_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The library's version, e.g. "0.1.0" (static).
#[no_mangle]
pub extern "C" fn aligner_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[no_mangle]
pub extern "C" fn aligner_load_options_default() -> AlignerLoadOptions {
    AlignerLoadOptions {
        threads: 0,
        provider: std::ptr::null(),
        device_id: 0,
        template_name: std::ptr::null(),
        ort_lib: std::ptr::null(),
    }
}

#[no_mangle]
pub extern "C" fn aligner_gen_options_default() -> AlignerGenOptions {
    AlignerGenOptions {
        max_new_tokens: 0,
        temperature: -1.0,
        top_k: -1,
        top_p: 0.0,
        min_p: -1.0,
        repetition_penalty: 0.0,
        seed: 0,
        use_seed: false,
        disable_copy_drafts: false,
    }
}

/// Loads the model folder `dir` (NUL-terminated) into `*out`; free it with
/// `aligner_model_free`. `options` may be NULL for the defaults.
///
/// # Safety
/// `dir` must be NUL-terminated, `options` NULL or valid, `out` a valid place for a pointer.
#[no_mangle]
pub unsafe extern "C" fn aligner_model_load(
    dir: *const c_char,
    options: *const AlignerLoadOptions,
    out: *mut *mut AlignerModel,
) -> AlignerStatus {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out is NULL; pass the address of an AlignerModel*"));
        }
        *out = std::ptr::null_mut();
        let Some(dir) = optional_c_str(dir, "dir")? else {
            return Err(invalid("dir is NULL; pass the model folder"));
        };
        let o = if options.is_null() {
            aligner_load_options_default()
        } else {
            *options
        };
        let mut load = LoadOptions::default();
        if o.threads > 0 {
            load = load.with_threads(o.threads as usize);
        }
        let provider = optional_c_str(o.provider, "provider")?.unwrap_or("cpu");
        let provider = ProviderConfig::default()
            .with_choice(provider.parse()?)
            .with_device_id(o.device_id);
        provider.validate()?;
        load = load.with_provider(provider);
        if let Some(t) = optional_c_str(o.template_name, "template_name")? {
            load = load.with_template(t);
        }
        if let Some(p) = optional_c_str(o.ort_lib, "ort_lib")? {
            load = load.with_ort_lib(p);
        }
        let aligner = Aligner::load(dir, &load)?;
        let model = AlignerModel {
            cancel: aligner.cancel_handle(),
            inner: Mutex::new(aligner),
            dir: PathBuf::from(dir),
        };
        *out = Box::into_raw(Box::new(model));
        Ok(())
    })
}

/// Frees a model (NULL is ignored).
///
/// # Safety
/// `model` must come from `aligner_model_load`, be freed once, and not be in use.
#[no_mangle]
pub unsafe extern "C" fn aligner_model_free(model: *mut AlignerModel) {
    if !model.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(model))));
    }
}

/// Stops the generation running on `model`, from any thread, without waiting for it: that
/// `aligner_correct` returns `ALIGNER_STATUS_OK` with finish reason "cancelled" and the text so
/// far. A request made while nothing runs stops the next generation at its first token.
///
/// # Safety
/// `model` must be a live model from `aligner_model_load`.
#[no_mangle]
pub unsafe extern "C" fn aligner_model_cancel(model: *const AlignerModel) -> AlignerStatus {
    guard(|| {
        let model = model
            .as_ref()
            .ok_or_else(|| invalid("model is NULL; pass a loaded model"))?;
        model.cancel.cancel();
        Ok(())
    })
}

/// The options as the library's [`SamplingOverrides`](crate::SamplingOverrides) over `c`, the
/// folder's defaults: a negative or zero value (as documented per field) keeps the default.
fn apply(o: &AlignerGenOptions, c: crate::GenerationConfig) -> crate::GenerationConfig {
    let overrides = crate::SamplingOverrides {
        max_new_tokens: (o.max_new_tokens > 0).then_some(o.max_new_tokens as usize),
        temperature: (o.temperature >= 0.0).then_some(o.temperature),
        top_k: (o.top_k >= 0).then_some(o.top_k as usize),
        top_p: (o.top_p > 0.0).then_some(o.top_p),
        min_p: (o.min_p >= 0.0).then_some(o.min_p),
        repetition_penalty: (o.repetition_penalty > 0.0).then_some(o.repetition_penalty),
        seed: o.use_seed.then_some(o.seed),
    };
    let c = overrides.apply(c);
    if o.disable_copy_drafts {
        c.with_copy_drafts(false)
    } else {
        c
    }
}

/// Corrects `answer` to `question` (UTF-8, with lengths or `ALIGNER_NUL_TERMINATED`) into
/// `*out`, streaming pieces to `on_piece` (may be NULL) with `user_data`. `options` may be
/// NULL for the folder's defaults. Free the result with `aligner_result_free`.
///
/// # Safety
/// Pointers must be valid as described; `on_piece` must be safe to call from this thread.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn aligner_correct(
    model: *const AlignerModel,
    question: *const c_char,
    question_len: usize,
    answer: *const c_char,
    answer_len: usize,
    options: *const AlignerGenOptions,
    on_piece: AlignerPieceFn,
    user_data: *mut c_void,
    out: *mut *mut AlignerResult,
) -> AlignerStatus {
    guard(|| {
        if out.is_null() {
            return Err(invalid(
                "out is NULL; pass the address of an AlignerResult*",
            ));
        }
        *out = std::ptr::null_mut();
        let model = model
            .as_ref()
            .ok_or_else(|| invalid("model is NULL; pass a loaded model"))?;
        let question = text_arg(question, question_len, "question")?;
        let answer = text_arg(answer, answer_len, "answer")?;
        let o = if options.is_null() {
            aligner_gen_options_default()
        } else {
            *options
        };
        // A panic elsewhere only interrupted a generation; the model is reset by the next one.
        let mut aligner = model
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let config = apply(&o, aligner.generation_defaults());
        config.validate()?;
        let mut buf: Vec<u8> = Vec::new();
        let mut on_text = |piece: &str| match on_piece {
            None => true,
            // An empty piece is the loop asking between prompt chunks; C sees text only.
            Some(_) if piece.is_empty() => true,
            Some(f) => {
                buf.clear();
                buf.extend_from_slice(piece.as_bytes());
                buf.push(0);
                f(buf.as_ptr().cast(), piece.len(), user_data)
            }
        };
        let g = aligner.correct(question, answer, &config, &mut on_text)?;
        *out = Box::into_raw(Box::new(result::result_of(&g)));
        Ok(())
    })
}

#[derive(Serialize)]
struct Info<'a> {
    model: String,
    provider: String,
    onnxruntime: crate::RuntimeInfo,
    template: Option<&'static str>,
    context_length: usize,
    manifest: Option<&'a crate::folder::AlignerManifest>,
}

/// A JSON object describing `model` into `*out`: `model` (the folder), `provider` (in use),
/// `onnxruntime` (`version`, `path`), `template`, `context_length` and `manifest`. Free it with
/// `aligner_string_free`.
///
/// # Safety
/// `model` must be a live model; `out` a valid place for a pointer.
#[no_mangle]
pub unsafe extern "C" fn aligner_model_info(
    model: *const AlignerModel,
    out: *mut *mut c_char,
) -> AlignerStatus {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out is NULL; pass the address of a char*"));
        }
        *out = std::ptr::null_mut();
        let model = model
            .as_ref()
            .ok_or_else(|| invalid("model is NULL; pass a loaded model"))?;
        let aligner = model
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let info = Info {
            model: model.dir.display().to_string(),
            provider: aligner.provider().label(),
            onnxruntime: aligner.runtime_info(),
            template: aligner.template().ok().map(|t| t.name()),
            context_length: aligner.folder().genai.model.context_length,
            manifest: aligner.folder().manifest.as_ref(),
        };
        let json = serde_json::to_string(&info).map_err(|e| invalid(e.to_string()))?;
        *out = CString::new(json).unwrap_or_default().into_raw();
        Ok(())
    })
}

/// Frees a string returned by the library (NULL is ignored).
///
/// # Safety
/// `s` must come from this library and be freed once.
#[no_mangle]
pub unsafe extern "C" fn aligner_string_free(s: *mut c_char) {
    if !s.is_null() {
        drop(CString::from_raw(s));
    }
}
