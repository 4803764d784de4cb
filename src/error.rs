//! The library's one error type. Variants follow the phase that failed so callers (and the
//! CLI's exit message) can tell a bad model folder from a bad request.

use std::path::PathBuf;

/// Every fallible call in the library returns this.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// ONNX Runtime could not be found or loaded.
    #[error("{0}")]
    RuntimeNotFound(String),
    /// The model folder is missing, incomplete or inconsistent.
    #[error("cannot load model from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    /// A requested execution provider could not be registered.
    #[error("execution provider {provider} is unavailable: {reason}")]
    Provider { provider: String, reason: String },
    /// ONNX Runtime failed while running the graph.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The caller stopped the generation (a server's client went away).
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// The tokenizer could not encode or decode.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// The caller asked for something invalid (bad sampling value, unknown template, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The prompt (plus at least one new token) does not fit in the model's context.
    #[error("prompt is {prompt_tokens} tokens but the model's context holds {context_length}; shorten the question or answer")]
    ContextOverflow {
        prompt_tokens: usize,
        context_length: usize,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn load(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Load {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        Error::InvalidRequest(reason.into())
    }
}

// ONNX Runtime's errors have no `From`: each call site says which phase failed, so a
// session that cannot be built is a `Load` error and a failed run an `Inference` one (as
// text-embeddings-inference's ORT backend maps them), never one label for both.
impl Error {
    /// An ONNX Runtime failure while running the graph.
    pub(crate) fn ort_run<R>(e: ort::Error<R>) -> Self {
        Error::Inference(e.message().to_string())
    }

    /// An ONNX Runtime failure while building a session over `path`.
    pub(crate) fn ort_load<R>(path: impl Into<PathBuf>) -> impl FnOnce(ort::Error<R>) -> Self {
        let path = path.into();
        move |e| Error::load(path, format!("ONNX Runtime: {}", e.message()))
    }
}
