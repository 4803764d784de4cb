//! A fixed pool of model sessions behind a bounded queue.
//!
//! ONNX Runtime's `run` takes `&mut self`, so each worker thread owns one loaded model and takes
//! one job at a time. The queue in front is bounded: a full queue is refused at once (the HTTP
//! layer answers 429) instead of letting latency grow without limit. A job whose client went
//! away is cancelled at its next token, or between the chunks of its prompt.
//!
//! A worker that panics must not take its request, its slot or the pool's counters with it: the
//! panic is caught, the request gets an error naming the cause, and the worker's model is
//! replaced by a freshly loaded one (a panic may leave it mid-pass). A worker whose model cannot
//! be reloaded stops, and the pool reports it (`/health` says `degraded`, or `down`).
//!
//! With `slots > 1`, a worker whose corrector can batch ([`Corrector::batch`]) keeps up to
//! `slots` jobs decoding together and takes the next queued job as soon as one finishes
//! (continuous batching, see [`batched`]); each job keeps its own settings, seed, stream and
//! cancellation.
//!
//! The pool runs anything that implements [`Corrector`], so its behaviour is unit-tested with
//! scripted workers, no model needed.

mod batched;
pub use batched::JobBatch;

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use aligner::{Aligner, Generation, GenerationConfig, Template};
use tokio::sync::mpsc::UnboundedSender;

use crate::app::errors::panic_message;

/// What a worker runs a job with: a loaded model, or a scripted stand-in in tests.
pub trait Corrector: Send {
    fn correct(
        &mut self,
        job: &Job,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation, aligner::Error>;

    /// A batch of `slots` jobs decoding together, when this corrector can batch.
    fn batch(&mut self, _slots: usize) -> Option<Box<dyn JobBatch + '_>> {
        None
    }
}

impl Corrector for Aligner {
    fn correct(
        &mut self,
        job: &Job,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation, aligner::Error> {
        let template = match job.template {
            Some(t) => t,
            None => self.template()?,
        };
        self.correct_with_template(template, &job.question, &job.answer, &job.config, on_text)
    }

    fn batch(&mut self, slots: usize) -> Option<Box<dyn JobBatch + '_>> {
        batched::aligner_batch(self, slots)
    }
}

/// Loads a replacement for a worker whose model panicked.
pub type Loader = Box<dyn Fn() -> Result<Box<dyn Corrector>, String> + Send + Sync>;

/// One correction to run.
pub struct Job {
    pub question: String,
    pub answer: String,
    pub template: Option<Template>,
    pub config: GenerationConfig,
    pub events: UnboundedSender<JobEvent>,
}

pub enum JobEvent {
    Text(String),
    Done(Result<Generation, aligner::Error>),
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

pub struct Pool {
    queue: Mutex<Queue>,
    ready: Condvar,
    capacity: usize,
    /// Jobs one worker runs at once (1: no batching).
    slots: usize,
    busy: AtomicUsize,
    alive: AtomicUsize,
    restarts: AtomicUsize,
    cancelled: AtomicUsize,
    workers: Mutex<Vec<JoinHandle<()>>>,
    loader: Loader,
    stopping: AtomicBool,
}

pub struct QueueFull;

/// A poisoned lock only means another thread panicked while holding it; the queue itself is
/// always consistent (every change is one push or pop), so go on with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pool {
    /// Starts one worker per corrector, each running up to `slots` jobs at once; `capacity`
    /// jobs may wait beyond those running.
    pub fn start(
        workers: Vec<Box<dyn Corrector>>,
        capacity: usize,
        slots: usize,
        loader: Loader,
    ) -> std::io::Result<Arc<Pool>> {
        let pool = Arc::new(Pool {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            capacity,
            slots: slots.max(1),
            busy: AtomicUsize::new(0),
            alive: AtomicUsize::new(workers.len()),
            restarts: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            workers: Mutex::new(Vec::new()),
            loader,
            stopping: AtomicBool::new(false),
        });
        let mut handles = Vec::new();
        for (i, worker) in workers.into_iter().enumerate() {
            let p = Arc::clone(&pool);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("aligner-worker-{i}"))
                    .spawn(move || p.work(worker))?,
            );
        }
        *lock(&pool.workers) = handles;
        Ok(pool)
    }

    /// Queues a job, or refuses it when `capacity` jobs are already waiting and every
    /// worker is busy (or no worker is left).
    pub fn submit(&self, job: Job) -> Result<(), QueueFull> {
        let mut q = lock(&self.queue);
        let alive = self.alive();
        let idle = (alive * self.slots).saturating_sub(self.busy());
        if q.closed || alive == 0 || q.jobs.len() >= self.capacity + idle {
            return Err(QueueFull);
        }
        q.jobs.push_back(job);
        self.ready.notify_one();
        Ok(())
    }

    /// Jobs waiting for a worker.
    pub fn depth(&self) -> usize {
        lock(&self.queue).jobs.len()
    }

    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }

    /// Workers still running (a worker whose model could not be reloaded is gone).
    pub fn alive(&self) -> usize {
        self.alive.load(Ordering::SeqCst)
    }

    /// Workers replaced after a panic.
    pub fn restarts(&self) -> usize {
        self.restarts.load(Ordering::SeqCst)
    }

    pub fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Lets queued and running jobs finish, then stops the workers.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        lock(&self.queue).closed = true;
        self.ready.notify_all();
        let handles = std::mem::take(&mut *lock(&self.workers));
        for h in handles {
            let _ = h.join();
        }
    }

    fn next_job(&self) -> Option<Job> {
        let mut q = lock(&self.queue);
        loop {
            if let Some(job) = q.jobs.pop_front() {
                self.busy.fetch_add(1, Ordering::SeqCst);
                return Some(job);
            }
            if q.closed {
                return None;
            }
            q = self.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// A queued job if there is one, without waiting.
    fn try_next_job(&self) -> Option<Job> {
        let job = lock(&self.queue).jobs.pop_front()?;
        self.busy.fetch_add(1, Ordering::SeqCst);
        Some(job)
    }

    fn work(&self, mut worker: Box<dyn Corrector>) {
        loop {
            let crashed = if self.slots > 1 {
                self.work_batched(&mut *worker)
            } else {
                self.work_one_by_one(&mut *worker)
            };
            if !crashed {
                return; // the queue closed
            }
            // The model may have stopped mid-pass: replace it before the next job.
            match (self.loader)() {
                Ok(fresh) => {
                    worker = fresh;
                    self.restarts.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    eprintln!("aligner: a worker crashed and could not be restarted: {e}");
                    self.alive.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
            }
        }
    }

    /// Runs jobs one at a time until the queue closes (false) or the worker panics (true,
    /// after answering the job it was on).
    fn work_one_by_one(&self, worker: &mut dyn Corrector) -> bool {
        while let Some(job) = self.next_job() {
            let mut on_text = batched::stream_to(job.events.clone());
            let outcome = if job.events.is_closed() {
                Ok(Err(gone_before_its_turn()))
            } else {
                catch_unwind(AssertUnwindSafe(|| worker.correct(&job, &mut on_text)))
            };
            match outcome {
                Ok(result) => self.finish(&job.events, result),
                Err(payload) => {
                    self.answer(&job.events, Err(crashed(payload.as_ref())));
                    return true;
                }
            }
        }
        false
    }

    /// Counts a job its client left, then answers it.
    fn finish(
        &self,
        events: &UnboundedSender<JobEvent>,
        result: Result<Generation, aligner::Error>,
    ) {
        let cancelled = match &result {
            Ok(g) => g.finish_reason == aligner::FinishReason::Cancelled,
            Err(e) => matches!(e, aligner::Error::Cancelled(_)),
        };
        if cancelled {
            self.cancelled.fetch_add(1, Ordering::SeqCst);
        }
        self.answer(events, result);
    }

    /// Frees the job's slot, then sends its result. Freeing first means a client that reads
    /// /health right after its response never sees its own request still counted.
    fn answer(
        &self,
        events: &UnboundedSender<JobEvent>,
        result: Result<Generation, aligner::Error>,
    ) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
        let _ = events.send(JobEvent::Done(result));
    }
}

fn gone_before_its_turn() -> aligner::Error {
    aligner::Error::Cancelled("the client disconnected before its turn".into())
}

/// The error a request gets when its worker panicked.
fn crashed(payload: &(dyn std::any::Any + Send)) -> aligner::Error {
    let cause = panic_message(payload);
    aligner::Error::Inference(format!(
        "the worker crashed on this request ({cause}); it has been restarted, please report the request"
    ))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    /// Panics on the question "boom"; otherwise echoes the answer.
    struct Scripted;

    impl Corrector for Scripted {
        fn correct(
            &mut self,
            job: &Job,
            on_text: &mut dyn FnMut(&str) -> bool,
        ) -> Result<Generation, aligner::Error> {
            if job.question == "boom" {
                panic!("scripted failure");
            }
            on_text(&job.answer);
            Err(aligner::Error::InvalidRequest(format!(
                "echo {}",
                job.answer
            )))
        }
    }

    pub(crate) fn job(question: &str) -> (Job, UnboundedReceiver<JobEvent>) {
        let (events, rx) = unbounded_channel();
        let job = Job {
            question: question.into(),
            answer: "fine".into(),
            template: None,
            config: GenerationConfig::default(),
            events,
        };
        (job, rx)
    }

    pub(crate) fn done(mut rx: UnboundedReceiver<JobEvent>) -> String {
        loop {
            match rx.blocking_recv() {
                Some(JobEvent::Done(Err(e))) => return e.to_string(),
                Some(JobEvent::Done(Ok(_))) => return "ok".into(),
                Some(JobEvent::Text(_)) => {}
                None => return "channel closed without an answer".into(),
            }
        }
    }

    #[test]
    fn a_panicking_job_gets_an_error_and_the_worker_is_replaced() {
        let loads = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&loads);
        let loader: Loader = Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Scripted) as Box<dyn Corrector>)
        });
        let pool = Pool::start(vec![Box::new(Scripted)], 4, 1, loader).unwrap();
        let (j, rx) = job("boom");
        pool.submit(j).ok().unwrap();
        let e = done(rx);
        assert!(
            e.contains("worker crashed") && e.contains("scripted failure"),
            "{e}"
        );
        // The same slot serves the next request, and the counters tell the truth.
        let (j, rx) = job("fine?");
        pool.submit(j).ok().unwrap();
        assert!(done(rx).contains("echo fine"));
        assert_eq!(pool.busy(), 0);
        assert_eq!(pool.alive(), 1);
        assert_eq!(pool.restarts(), 1);
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        pool.shutdown();
    }

    #[test]
    fn a_worker_that_cannot_be_reloaded_is_reported_gone() {
        let loader: Loader = Box::new(|| Err("model folder vanished".into()));
        let pool = Pool::start(vec![Box::new(Scripted)], 4, 1, loader).unwrap();
        let (j, rx) = job("boom");
        pool.submit(j).ok().unwrap();
        assert!(done(rx).contains("worker crashed"));
        // Wait for the worker to record its exit.
        for _ in 0..200 {
            if pool.alive() == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(pool.alive(), 0);
        assert_eq!(pool.busy(), 0);
        // Nobody is left to run a job: refuse at once instead of queueing forever.
        let (j, _rx) = job("fine?");
        assert!(pool.submit(j).is_err());
        pool.shutdown();
    }

    #[test]
    fn a_client_that_left_is_cancelled_between_prompt_chunks() {
        struct Probing;
        impl Corrector for Probing {
            fn correct(
                &mut self,
                _job: &Job,
                on_text: &mut dyn FnMut(&str) -> bool,
            ) -> Result<Generation, aligner::Error> {
                // The loop probes with empty pieces while it runs the prompt.
                for _ in 0..100 {
                    if !on_text("") {
                        return Err(aligner::Error::Cancelled("probe said stop".into()));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(aligner::Error::InvalidRequest("ran to the end".into()))
            }
        }
        let loader: Loader = Box::new(|| Ok(Box::new(Probing) as Box<dyn Corrector>));
        let pool = Pool::start(vec![Box::new(Probing)], 4, 1, loader).unwrap();
        let (j, rx) = job("long prompt");
        pool.submit(j).ok().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        drop(rx);
        for _ in 0..200 {
            if pool.cancelled() == 1 && pool.busy() == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(pool.cancelled(), 1);
        assert_eq!(pool.busy(), 0);
        pool.shutdown();
    }
}
