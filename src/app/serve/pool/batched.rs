//! The batched worker: up to `slots` jobs decode together on one model, and a queued job takes
//! a slot as soon as one frees (continuous batching). A new job's prompt runs between two
//! batched steps, so running streams pause for one prompt pass, not for whole requests.

use std::panic::{catch_unwind, AssertUnwindSafe};

use aligner::{Aligner, Generation};
use tokio::sync::mpsc::UnboundedSender;

use super::{crashed, gone_before_its_turn, Job, JobEvent, Pool};

/// Where a job's result goes: its event channel.
pub type Reply = UnboundedSender<JobEvent>;

/// A finished job.
pub type Done = (Reply, Result<Generation, aligner::Error>);

/// Jobs decoding together on one worker (see [`super::Corrector::batch`]).
pub trait JobBatch {
    fn free(&self) -> usize;
    fn running(&self) -> usize;
    /// Runs the job's prompt and gives it a slot; returns its result when it ended already.
    fn admit(&mut self, job: Job) -> Option<Done>;
    /// One step for every running job; returns the jobs that ended.
    fn step(&mut self) -> Vec<Done>;
}

/// Streams a job's text to its channel; false (cancel) once the client is gone. An empty
/// piece is the loop asking whether to go on.
pub(super) fn stream_to(events: Reply) -> impl FnMut(&str) -> bool {
    move |piece| {
        if piece.is_empty() {
            !events.is_closed()
        } else {
            events.send(JobEvent::Text(piece.to_string())).is_ok()
        }
    }
}

pub(super) struct AlignerBatch<'a>(pub(super) aligner::Batch<'a, Reply>);

impl JobBatch for AlignerBatch<'_> {
    fn free(&self) -> usize {
        self.0.free()
    }
    fn running(&self) -> usize {
        self.0.running()
    }
    fn admit(&mut self, job: Job) -> Option<Done> {
        let on_text = Box::new(stream_to(job.events.clone()));
        self.0.admit_correction(
            job.template,
            &job.question,
            &job.answer,
            &job.config,
            on_text,
            job.events,
        )
    }
    fn step(&mut self) -> Vec<Done> {
        self.0.step()
    }
}

impl Pool {
    /// Runs jobs in a batch until the queue closes (false) or the worker panics (true, after
    /// answering every job it held). A corrector that cannot batch runs jobs one by one.
    pub(super) fn work_batched(&self, worker: &mut dyn super::Corrector) -> bool {
        // Every job the batch holds, so that a panic can still answer them.
        let mut held: Vec<Reply> = Vec::new();
        let ran = catch_unwind(AssertUnwindSafe(|| {
            let mut batch = worker.batch(self.slots)?;
            loop {
                while batch.free() > 0 {
                    let job = if batch.running() == 0 {
                        match self.next_job() {
                            Some(job) => job,
                            None => return Some(false),
                        }
                    } else {
                        match self.try_next_job() {
                            Some(job) => job,
                            None => break,
                        }
                    };
                    if job.events.is_closed() {
                        self.finish(&job.events, Err(gone_before_its_turn()));
                        continue;
                    }
                    held.push(job.events.clone());
                    if let Some(done) = batch.admit(job) {
                        self.release(&mut held, done);
                    }
                }
                for done in batch.step() {
                    self.release(&mut held, done);
                }
            }
        }));
        match ran {
            Ok(Some(closed)) => closed,
            // This corrector cannot batch: serve one job at a time instead.
            Ok(None) => self.work_one_by_one(worker),
            Err(payload) => {
                let error = crashed(payload.as_ref());
                for events in held {
                    let again = aligner::Error::Inference(error.to_string());
                    self.answer(&events, Err(again));
                }
                true
            }
        }
    }

    /// A job left the batch: it is no longer held, and gets its answer.
    fn release(&self, held: &mut Vec<Reply>, (events, result): Done) {
        held.retain(|h| !h.same_channel(&events));
        self.finish(&events, result);
    }
}

/// The batch of a real model: [`Aligner::batch`], or `None` when it cannot batch (a GPU).
pub(super) fn aligner_batch(model: &mut Aligner, slots: usize) -> Option<Box<dyn JobBatch + '_>> {
    Some(Box::new(AlignerBatch(model.batch(slots).ok()?)))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::super::tests::{done, job};
    use super::super::{Corrector, Loader};
    use super::*;

    /// Echoes each job's answer, one character per step; "boom" as an answer panics in step.
    #[derive(Default)]
    struct Batching {
        peak: Arc<AtomicUsize>,
    }

    struct Echoes<'a> {
        slots: usize,
        jobs: Vec<(Job, usize)>,
        peak: &'a AtomicUsize,
    }

    impl Corrector for Batching {
        fn correct(
            &mut self,
            _job: &Job,
            _on_text: &mut dyn FnMut(&str) -> bool,
        ) -> Result<Generation, aligner::Error> {
            unreachable!("a batching worker runs jobs in its batch")
        }
        fn batch(&mut self, slots: usize) -> Option<Box<dyn JobBatch + '_>> {
            Some(Box::new(Echoes {
                slots,
                jobs: Vec::new(),
                peak: &self.peak,
            }))
        }
    }

    impl JobBatch for Echoes<'_> {
        fn free(&self) -> usize {
            self.slots - self.jobs.len()
        }
        fn running(&self) -> usize {
            self.jobs.len()
        }
        fn admit(&mut self, job: Job) -> Option<Done> {
            if job.answer.is_empty() {
                let err = aligner::Error::InvalidRequest("empty answer".into());
                return Some((job.events, Err(err)));
            }
            self.jobs.push((job, 0));
            self.peak.fetch_max(self.jobs.len(), Ordering::SeqCst);
            None
        }
        fn step(&mut self) -> Vec<Done> {
            let mut out = Vec::new();
            for (job, at) in &mut self.jobs {
                assert!(job.answer != "boom", "scripted batch failure");
                if job.answer.starts_with("slow") {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                let c = job.answer[*at..].chars().next().unwrap();
                let _ = job.events.send(JobEvent::Text(c.to_string()));
                *at += c.len_utf8();
            }
            let (ended, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.jobs)
                .into_iter()
                .partition(|(job, at)| *at == job.answer.len());
            self.jobs = running;
            for (job, _) in ended {
                let echo = aligner::Error::InvalidRequest(format!("echo {}", job.answer));
                out.push((job.events, Err(echo)));
            }
            out
        }
    }

    fn loader() -> Loader {
        Box::new(|| Ok(Box::new(Batching::default()) as Box<dyn Corrector>))
    }

    #[test]
    fn jobs_share_the_batch_and_each_gets_its_own_answer() {
        let worker = Batching::default();
        let peak = Arc::clone(&worker.peak);
        let pool = Pool::start(vec![Box::new(worker)], 16, 3, loader()).unwrap();
        let answers = ["a", "bbbbbb", "cc", "", "dddd", "eeeeeeee", "f"];
        let rxs: Vec<_> = answers
            .iter()
            .map(|a| {
                let (mut j, rx) = job("q");
                j.answer = a.to_string();
                pool.submit(j).ok().unwrap();
                rx
            })
            .collect();
        for (a, rx) in answers.iter().zip(rxs) {
            let want = if a.is_empty() {
                "empty answer".to_string()
            } else {
                format!("echo {a}")
            };
            assert!(done(rx).contains(&want), "{a}");
        }
        assert_eq!(
            peak.load(Ordering::SeqCst),
            3,
            "never more than the slots, and full"
        );
        assert_eq!(pool.busy(), 0);
        pool.shutdown();
    }

    #[test]
    fn a_panic_in_a_step_answers_every_job_in_the_batch_and_replaces_the_worker() {
        let pool = Pool::start(vec![Box::new(Batching::default())], 16, 4, loader()).unwrap();
        let submit = |answer: &str| {
            let (mut j, rx) = job("q");
            j.answer = answer.into();
            pool.submit(j).ok().unwrap();
            rx
        };
        let rxs: Vec<_> = ["xxxxxxxx", "boom", "yyyyyyyy"]
            .map(submit)
            .into_iter()
            .collect();
        for rx in rxs {
            let e = done(rx);
            assert!(e.contains("worker crashed") || e.starts_with("echo"), "{e}");
        }
        // The fresh worker serves the next job, and the counters tell the truth.
        assert!(done(submit("zz")).contains("echo zz"));
        assert_eq!((pool.busy(), pool.alive(), pool.restarts()), (0, 1, 1));
        pool.shutdown();
    }

    #[test]
    fn a_queue_full_answer_counts_every_free_slot() {
        // One worker with 2 slots and no queue: 2 jobs are taken, a third waits for nobody.
        let pool = Pool::start(vec![Box::new(Batching::default())], 0, 2, loader()).unwrap();
        let slow = || {
            let (mut j, rx) = job("q");
            j.answer = format!("slow{}", "s".repeat(500)); // a second of steps
            (j, rx)
        };
        let (a, _ra) = slow();
        let (b, _rb) = slow();
        assert!(pool.submit(a).is_ok());
        assert!(pool.submit(b).is_ok());
        let (c, _rc) = job("q");
        assert!(pool.submit(c).is_err(), "a third job must be refused");
        pool.shutdown();
    }
}
