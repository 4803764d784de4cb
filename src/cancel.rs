//! Stopping a generation from another thread: a desktop app's "Stop" button, or a C caller
//! whose streaming callback is not the place to decide.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A cloneable, `Send + Sync` handle that stops the generation in progress on its
/// [`Aligner`](crate::Aligner) (see [`Aligner::cancel_handle`](crate::Aligner::cancel_handle)).
///
/// [`cancel`](Self::cancel) asks the running generation to stop at its next token, or between
/// the chunks of a long prompt; the call then returns normally with
/// [`FinishReason::Cancelled`](crate::FinishReason::Cancelled) and the text so far. The
/// request is cleared when that generation ends. A request made while nothing runs stops the
/// next generation at its first token.
#[derive(Debug, Clone, Default)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests a stop; see the type's documentation.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether a stop was requested and not yet honoured.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Forgets a stop request (the generations it was for have ended).
    pub(crate) fn clear(&self) {
        self.0.store(false, Ordering::Release);
    }

    /// Runs `generate` with `on_text` wrapped so that a requested stop cancels it, then clears
    /// the request.
    pub(crate) fn watch<T>(
        &self,
        on_text: &mut dyn FnMut(&str) -> bool,
        generate: impl FnOnce(&mut dyn FnMut(&str) -> bool) -> T,
    ) -> T {
        let mut watched = |piece: &str| !self.is_cancelled() && on_text(piece);
        let out = generate(&mut watched);
        self.0.store(false, Ordering::Release);
        out
    }
}
