//! HTTP behaviour over scripted workers: the real router, middleware and listener on loopback,
//! with a pool whose workers echo the answer word by word instead of running a model. The
//! end-to-end tests in `tests/server*.rs` run the same routes over the real model.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use aligner::{FinishReason, Generation, GenerationConfig, Timings};
use serde_json::{json, Value};

use super::listen::{self, InFlight, Limits};
use super::metrics::Metrics;
use super::pool::{Corrector, Job, Loader, Pool};
use super::routes::AppState;

/// Closed until opened: holds every worker at the start of its job.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

/// Streams the answer back word by word (slowly when the question is "slow").
struct Echo(Arc<Gate>);

impl Corrector for Echo {
    fn correct(
        &mut self,
        job: &Job,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation, aligner::Error> {
        self.0.wait();
        let (mut text, mut tokens) = (String::new(), Vec::new());
        let mut finish = FinishReason::Eos;
        for (i, word) in job.answer.split_inclusive(' ').enumerate() {
            if !on_text(word) {
                finish = FinishReason::Cancelled;
                break;
            }
            text.push_str(word);
            tokens.push(i as u32);
            if job.question == "slow" {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(Generation {
            text,
            tokens,
            prompt_tokens: 3,
            reused_prompt_tokens: 0,
            finish_reason: finish,
            timings: Timings::default(),
            drafts: None,
        })
    }
}

struct Server {
    url: String,
    pool: Arc<Pool>,
    gate: Arc<Gate>,
    runtime: tokio::runtime::Runtime,
}

/// One echo worker and a queue of `queue`, served on a free loopback port.
fn start(queue: usize, gate_open: bool) -> Server {
    let gate = Arc::new(Gate::default());
    if gate_open {
        gate.open();
    }
    let reload = Arc::clone(&gate);
    let loader: Loader = Box::new(move || Ok(Box::new(Echo(Arc::clone(&reload))) as _));
    let pool = Pool::start(vec![Box::new(Echo(Arc::clone(&gate)))], queue, 1, loader).unwrap();
    let in_flight = Arc::new(InFlight::default());
    let state = Arc::new(AppState {
        pool: Arc::clone(&pool),
        metrics: Metrics::default(),
        defaults: GenerationConfig::default(),
        model_name: "echo".into(),
        provider: "cpu".into(),
        workers: 1,
        upstream: None,
        api_key: None,
        next_id: AtomicU64::new(1),
        in_flight: Arc::clone(&in_flight),
        max_body_bytes: 1 << 20,
        body_timeout: Duration::from_secs(5),
    });
    let app = super::router(state, 1 << 20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let limits = Limits {
        header_timeout: Duration::from_secs(5),
        max_connections: 64,
        shutdown_timeout: Duration::from_secs(1),
        shutdown_grace: Duration::from_millis(100),
    };
    runtime.spawn(listen::serve(
        listener,
        app,
        limits,
        in_flight,
        std::future::pending(),
    ));
    Server {
        url,
        pool,
        gate,
        runtime,
    }
}

/// Polls `done` for up to 10 s: a deadline for a state to be reached, not a timing test.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The `data:` payloads of an SSE body, checking its framing on the way.
fn sse_payloads(body: &str) -> Vec<String> {
    assert!(body.ends_with("\n\n"), "an event ends with a blank line");
    body.trim_end()
        .split("\n\n")
        .map(|frame| {
            let data = frame.strip_prefix("data: ");
            assert!(data.is_some(), "frame {frame:?} is not one data line");
            assert!(!frame.contains('\n'), "frame {frame:?} spans lines");
            data.unwrap().to_string()
        })
        .collect()
}

#[test]
fn a_full_queue_is_answered_429_with_retry_after_and_the_running_job_completes() {
    let s = start(0, false);
    let client = reqwest::Client::new();
    let body = json!({"question": "q", "answer": "kept as it is"});
    let first = s.runtime.spawn(
        client
            .post(format!("{}/v1/correct", s.url))
            .json(&body)
            .send(),
    );
    eventually("the worker to take the first job", || s.pool.busy() == 1);
    let refused = s
        .runtime
        .block_on(
            client
                .post(format!("{}/v1/correct", s.url))
                .json(&body)
                .send(),
        )
        .unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let error: Value = s.runtime.block_on(refused.json()).unwrap();
    assert_eq!(error["error"]["type"], "rate_limit_error");
    assert_eq!(error["error"]["code"], 429);

    s.gate.open();
    let done = s.runtime.block_on(first).unwrap().unwrap();
    assert_eq!(done.status().as_u16(), 200);
    let v: Value = s.runtime.block_on(done.json()).unwrap();
    assert_eq!(v["correction"], "kept as it is");
    assert_eq!(v["finish_reason"], "eos");
    assert_eq!(v["usage"]["total_tokens"], 3 + 4);
    s.pool.shutdown();
}

#[test]
fn correct_streams_deltas_then_the_report_then_done() {
    let s = start(4, true);
    let response = s
        .runtime
        .block_on(
            reqwest::Client::new()
                .post(format!("{}/v1/correct", s.url))
                .json(&json!({"question": "q", "answer": "one two three", "stream": true}))
                .send(),
        )
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let payloads = sse_payloads(&s.runtime.block_on(response.text()).unwrap());
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let events: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    let (report, deltas) = events.split_last().unwrap();
    let text: String = deltas
        .iter()
        .map(|d| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "one two three");
    assert_eq!(report["done"], true);
    assert_eq!(report["correction"], "one two three");
    assert_eq!(report["finish_reason"], "eos");
    s.pool.shutdown();
}

#[test]
fn chat_stream_is_openai_chunks_role_first_finish_reason_last() {
    let s = start(4, true);
    let request = json!({"stream": true, "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a b"},
    ]});
    let response = s
        .runtime
        .block_on(
            reqwest::Client::new()
                .post(format!("{}/v1/chat/completions", s.url))
                .json(&request)
                .send(),
        )
        .unwrap();
    let payloads = sse_payloads(&s.runtime.block_on(response.text()).unwrap());
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    assert!(chunks.len() >= 3, "{chunks:?}");
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["aligner"]["original_answer"], "a b");
    assert_eq!(last["usage"]["completion_tokens"], 2);
    let middle = &chunks[1..chunks.len() - 1];
    assert!(middle
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
    let text: String = middle
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, "a b");
    s.pool.shutdown();
}

#[test]
fn a_client_that_leaves_mid_stream_cancels_its_generation() {
    let s = start(4, true);
    let answer = "word ".repeat(2000);
    let mut response = s
        .runtime
        .block_on(
            reqwest::Client::new()
                .post(format!("{}/v1/correct", s.url))
                .json(&json!({"question": "slow", "answer": answer, "stream": true}))
                .send(),
        )
        .unwrap();
    let first = s.runtime.block_on(response.chunk()).unwrap();
    assert!(first.is_some_and(|c| !c.is_empty()));
    drop(response);
    eventually("the generation to be cancelled", || {
        s.pool.cancelled() == 1 && s.pool.busy() == 0
    });
    s.pool.shutdown();
}
