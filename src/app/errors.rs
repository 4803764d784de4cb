//! How the binary fails: a usage error (exit 2) for input the user must change, one line for
//! everything, and a caught panic turned into a message.

use anyhow::Result;

/// A flag or argument the user must change: exit code 2, like the library's invalid requests.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// `Err(UsageError)` as an `anyhow::Error`, for `?` in the subcommands.
pub fn usage<T>(message: impl Into<String>) -> Result<T> {
    Err(UsageError(message.into()).into())
}

/// The message of a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// 2 for problems with the user's input, 1 for everything else.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<UsageError>().is_some() {
        return 2;
    }
    match e.downcast_ref::<aligner::Error>() {
        Some(aligner::Error::InvalidRequest(_)) | Some(aligner::Error::ContextOverflow { .. }) => 2,
        _ => 1,
    }
}
