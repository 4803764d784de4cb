//! A fixed pool of model sessions behind a bounded queue.
//!
//! ONNX Runtime's `run` takes `&mut self`, so each worker thread owns one loaded model and takes
//! one job at a time. The queue in front is bounded: a full queue is refused at once (the HTTP
//! layer answers 429) instead of letting latency grow without limit. A job whose client went
//! away is cancelled at its next token.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use aligner::{Aligner, Generation, GenerationConfig, Template};
use tokio::sync::mpsc::UnboundedSender;

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
    busy: AtomicUsize,
    cancelled: AtomicUsize,
    workers: Mutex<Vec<JoinHandle<()>>>,
    stopping: AtomicBool,
}

pub struct QueueFull;

impl Pool {
    /// Starts one worker per model; `capacity` jobs may wait beyond those running.
    pub fn start(models: Vec<Aligner>, capacity: usize) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            capacity,
            busy: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            workers: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
        });
        let handles = models
            .into_iter()
            .enumerate()
            .map(|(i, model)| {
                let pool = Arc::clone(&pool);
                std::thread::Builder::new()
                    .name(format!("aligner-worker-{i}"))
                    .spawn(move || pool.work(model))
                    .expect("spawn worker thread")
            })
            .collect();
        *pool.workers.lock().unwrap() = handles;
        pool
    }

    /// Queues a job, or refuses it when `capacity` jobs are already waiting and every
    /// worker is busy.
    pub fn submit(&self, job: Job) -> Result<(), QueueFull> {
        let mut q = self.queue.lock().unwrap();
        let workers = self.workers.lock().map(|w| w.len()).unwrap_or(1);
        let idle = workers.saturating_sub(self.busy.load(Ordering::SeqCst));
        if q.closed || q.jobs.len() >= self.capacity + idle {
            return Err(QueueFull);
        }
        q.jobs.push_back(job);
        self.ready.notify_one();
        Ok(())
    }

    /// Jobs waiting for a worker.
    pub fn depth(&self) -> usize {
        self.queue.lock().map(|q| q.jobs.len()).unwrap_or(0)
    }

    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }

    pub fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Lets queued and running jobs finish, then stops the workers.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.queue.lock().unwrap().closed = true;
        self.ready.notify_all();
        let handles = std::mem::take(&mut *self.workers.lock().unwrap());
        for h in handles {
            let _ = h.join();
        }
    }

    fn next_job(&self) -> Option<Job> {
        let mut q = self.queue.lock().unwrap();
        loop {
            if let Some(job) = q.jobs.pop_front() {
                self.busy.fetch_add(1, Ordering::SeqCst);
                return Some(job);
            }
            if q.closed {
                return None;
            }
            q = self.ready.wait(q).unwrap();
        }
    }

    fn work(&self, mut model: Aligner) {
        while let Some(job) = self.next_job() {
            let events = job.events.clone();
            let mut cancelled = false;
            let mut on_text = |piece: &str| {
                // A closed channel means the client is gone: stop generating for it.
                cancelled = events.send(JobEvent::Text(piece.to_string())).is_err();
                !cancelled
            };
            let result = if events.is_closed() {
                cancelled = true;
                Err(aligner::Error::InvalidRequest("client disconnected".into()))
            } else {
                let template = match job.template {
                    Some(t) => Ok(t),
                    None => model.template(),
                };
                template.and_then(|t| {
                    model.correct_with_template(
                        t,
                        &job.question,
                        &job.answer,
                        &job.config,
                        &mut on_text,
                    )
                })
            };
            if cancelled {
                self.cancelled.fetch_add(1, Ordering::SeqCst);
            }
            let _ = job.events.send(JobEvent::Done(result));
            self.busy.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
