//! The batched worker: one session decodes up to `--batch-size` rows together, and a row that
//! finishes frees its slot for the next input row at once (continuous batching).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Mutex;
use std::time::Instant;

use super::{outcome, Outcome, Row, WorkSettings};
use crate::app::args::Task;
use crate::app::errors::panic_message;

/// A row in flight, by its tag.
type InFlight = HashMap<usize, (Row, Instant)>;

/// Takes rows until the queue closes and no row is left running; sends each outcome to the
/// writer.
pub fn work(
    model: &mut aligner::Aligner,
    slots: usize,
    rows_in: &Mutex<Receiver<Row>>,
    out: &Sender<Outcome>,
    s: &WorkSettings<'_>,
) {
    let mut in_flight = InFlight::new();
    let mut next_tag = 0usize;
    let mut closed = false;
    while !(closed && in_flight.is_empty()) {
        let mut batch = match model.batch::<usize>(slots) {
            Ok(b) => b,
            Err(e) => {
                // Checked at start; should it fail now, no row may be lost: reject them all.
                let reason = format!("cannot start a batch: {e}");
                for (row, started) in in_flight.into_values().chain(drain(rows_in)) {
                    let _ = out.send(outcome(
                        &row,
                        Ok(Err(aligner::Error::Inference(reason.clone()))),
                        started,
                        s,
                    ));
                }
                return;
            }
        };
        let ran = catch_unwind(AssertUnwindSafe(|| loop {
            while batch.free() > 0 && !closed {
                let Some(row) = take_row(rows_in, batch.running() == 0, &mut closed) else {
                    break;
                };
                let (tag, started) = (next_tag, Instant::now());
                next_tag += 1;
                let admitted = match s.task {
                    Task::Answer => batch.admit_answer(
                        s.system,
                        &row.question,
                        &s.config,
                        Box::new(|_| true),
                        tag,
                    ),
                    Task::Correct => batch.admit_correction(
                        None,
                        &row.question,
                        &row.answer,
                        &s.config,
                        Box::new(|_| true),
                        tag,
                    ),
                };
                in_flight.insert(tag, (row, started));
                if let Some((tag, result)) = admitted {
                    if !send(out, &mut in_flight, tag, Ok(result), s) {
                        return false;
                    }
                }
            }
            if batch.running() == 0 {
                return true;
            }
            for (tag, result) in batch.step() {
                if !send(out, &mut in_flight, tag, Ok(result), s) {
                    return false;
                }
            }
        }));
        drop(batch);
        match ran {
            Ok(true) => {}
            Ok(false) => return, // the writer stopped; its error is reported there
            Err(panic) => {
                // The batch's state is unknown: every row in it gets the error, and a fresh
                // batch takes the next rows.
                let cause = panic_message(panic.as_ref());
                let tags: Vec<usize> = in_flight.keys().copied().collect();
                for tag in tags {
                    if !send(out, &mut in_flight, tag, Err(cause.clone()), s) {
                        return;
                    }
                }
            }
        }
    }
}

/// The next row: waits for one when `wait` (nothing is running), else only takes one that is
/// ready. Sets `closed` when the input is done.
fn take_row(rows_in: &Mutex<Receiver<Row>>, wait: bool, closed: &mut bool) -> Option<Row> {
    let Ok(rx) = rows_in.lock() else {
        *closed = true;
        return None;
    };
    let got = if wait {
        rx.recv().map_err(|_| TryRecvError::Disconnected)
    } else {
        rx.try_recv()
    };
    match got {
        Ok(row) => Some(row),
        Err(TryRecvError::Empty) => None,
        Err(TryRecvError::Disconnected) => {
            *closed = true;
            None
        }
    }
}

/// Whatever is still queued, once the batch cannot run.
fn drain(rows_in: &Mutex<Receiver<Row>>) -> Vec<(Row, Instant)> {
    let Ok(rx) = rows_in.lock() else {
        return Vec::new();
    };
    rx.iter().map(|row| (row, Instant::now())).collect()
}

/// Sends the finished row `tag`; false when the writer is gone.
fn send(
    out: &Sender<Outcome>,
    in_flight: &mut InFlight,
    tag: usize,
    result: std::result::Result<aligner::Result<aligner::Generation>, String>,
    s: &WorkSettings<'_>,
) -> bool {
    match in_flight.remove(&tag) {
        Some((row, started)) => out.send(outcome(&row, result, started, s)).is_ok(),
        None => true,
    }
}
