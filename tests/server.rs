//! `aligner serve` for real: a server process on a loopback port, driven over HTTP, with a fake
//! OpenAI-compatible upstream on another port for proxy mode.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::http::*;
use common::*;
use serde_json::{json, Value};

const QUESTION: &str = "What is the boiling point of water at sea level?";

fn model_arg() -> String {
    default_model().display().to_string()
}

fn metric(server: &Server, line_start: &str) -> f64 {
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn correct_plain_and_streamed_give_the_same_correction() {
    let server = Server::start(&["--model", &model_arg()]);
    let body = json!({"question": QUESTION, "answer": "Water boils at 50 degrees Celsius.", "max_tokens": 48});
    let plain: Value = post(&server, "/v1/correct", &body).json().unwrap();
    let text = plain["correction"].as_str().unwrap();
    assert!(!text.is_empty());
    assert_eq!(
        plain["usage"]["completion_tokens"].as_u64().unwrap()
            + plain["usage"]["prompt_tokens"].as_u64().unwrap(),
        plain["usage"]["total_tokens"].as_u64().unwrap()
    );
    assert_eq!(plain["provider"], "cpu");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let response = post(&server, "/v1/correct", &streamed);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let frames = sse_data(&response.text().unwrap());
    assert_eq!(frames.last().unwrap(), "[DONE]");
    let events: Vec<Value> = frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect();
    let joined: String = events.iter().filter_map(|e| e["delta"].as_str()).collect();
    assert_eq!(joined, text);
    let last = events.last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["correction"], plain["correction"]);
}

#[test]
fn chat_completions_correct_the_upstream_answer_plain_and_streamed() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let server = aligner_with_env(
        "UPSTREAM_TEST_KEY",
        "sk-test",
        &[
            "--model",
            &model_arg(),
            "--upstream",
            &upstream.url,
            "--upstream-model",
            "big-model",
            "--upstream-key-env",
            "UPSTREAM_TEST_KEY",
            "--max-new-tokens",
            "48",
        ],
    );
    let request = json!({"model": "client-model", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]});
    let plain: Value = post(&server, "/v1/chat/completions", &request)
        .json()
        .unwrap();
    assert_eq!(plain["object"], "chat.completion");
    let content = plain["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!content.is_empty());
    assert_eq!(plain["choices"][0]["message"]["role"], "assistant");
    assert_eq!(plain["aligner"]["original_answer"], UPSTREAM_ANSWER);
    assert_eq!(plain["aligner"]["upstream_usage"]["total_tokens"], 20);
    assert!(
        plain["aligner"]["correction_usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let frames = sse_data(
        &post(&server, "/v1/chat/completions", &streamed)
            .text()
            .unwrap(),
    );
    assert_eq!(frames.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        joined, content,
        "greedy streamed correction must equal the plain one"
    );
    let last = chunks.last().unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string());
    assert_eq!(last["aligner"]["original_answer"], UPSTREAM_ANSWER);

    let seen = upstream.requests.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|(auth, r)| auth == "Bearer sk-test" && r["model"] == "big-model"));
    assert_eq!(
        (seen[0].1["stream"].clone(), seen[1].1["stream"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!(seen[0].1["messages"][1]["content"], QUESTION);
}

fn aligner_with_env(key: &str, value: &str, args: &[&str]) -> Server {
    std::env::set_var(key, value); // inherited by the child started next
    Server::start(args)
}

#[test]
fn chat_without_upstream_corrects_the_last_assistant_message() {
    let server = Server::start(&["--model", &model_arg()]);
    let request = json!({"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "50 degrees."}], "max_tokens": 24});
    let v: Value = post(&server, "/v1/chat/completions", &request)
        .json()
        .unwrap();
    assert_eq!(v["aligner"]["original_answer"], "50 degrees.");
    assert!(!v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .is_empty());
    let bad = post(
        &server,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(bad.status(), 400);
    assert!(bad.json::<Value>().unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("last message must be the assistant answer"));
}

#[test]
fn bad_requests_get_openai_shaped_errors() {
    let server = Server::start(&[
        "--model",
        &model_arg(),
        "--api-key",
        "secret",
        "--max-body-bytes",
        "2000",
    ]);
    let c = client();
    let unauthorized = c
        .post(server.url("/v1/correct"))
        .json(&json!({"question": "q", "answer": "a"}))
        .send()
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert_eq!(
        unauthorized.json::<Value>().unwrap()["error"]["type"],
        "authentication_error"
    );
    let wrong = c
        .post(server.url("/v1/correct"))
        .bearer_auth("nope")
        .json(&json!({"question": "q", "answer": "a"}))
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let malformed = c
        .post(server.url("/v1/correct"))
        .bearer_auth("secret")
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(malformed.status(), 400);
    let err: Value = malformed.json().unwrap();
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    let invalid = c
        .post(server.url("/v1/correct"))
        .bearer_auth("secret")
        .json(&json!({"question": "q", "answer": "a", "top_p": 3.0}))
        .send()
        .unwrap();
    assert_eq!(invalid.status(), 400);
    let huge = c
        .post(server.url("/v1/correct"))
        .bearer_auth("secret")
        .json(&json!({"question": "q", "answer": "x".repeat(5000)}))
        .send()
        .unwrap();
    assert_eq!(huge.status(), 413);
    let ok = c
        .post(server.url("/v1/correct"))
        .bearer_auth("secret")
        .json(&json!({"question": "q", "answer": "a", "max_tokens": 4}))
        .send()
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        c.get(server.url("/health")).send().unwrap().status(),
        200,
        "health stays open"
    );
}

#[test]
fn upstream_failures_are_502_and_504_with_their_cause() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let request = json!({"messages": [{"role": "user", "content": QUESTION}]});

    let server = Server::start(&["--model", &model_arg(), "--upstream", &dead_url]);
    let r = post(&server, "/v1/chat/completions", &request);
    assert_eq!(r.status(), 502);
    assert!(r.json::<Value>().unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unreachable"));
    drop(server);

    let failing = FakeUpstream::start(UpstreamMode::Fail);
    let server = Server::start(&["--model", &model_arg(), "--upstream", &failing.url]);
    let r = post(&server, "/v1/chat/completions", &request);
    assert_eq!(r.status(), 502);
    assert!(r.json::<Value>().unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("upstream exploded"));
    drop(server);

    let hanging = FakeUpstream::start(UpstreamMode::Hang);
    let server = Server::start(&[
        "--model",
        &model_arg(),
        "--upstream",
        &hanging.url,
        "--upstream-timeout",
        "1",
    ]);
    let start = Instant::now();
    let r = post(&server, "/v1/chat/completions", &request);
    assert_eq!(r.status(), 504);
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(r.json::<Value>().unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("did not answer in time"));
}

fn long_request() -> Value {
    json!({"question": QUESTION, "answer": "It boils.", "max_tokens": 2000, "suppress_eos": true, "stream": true})
}

/// Sends [`long_request`] over a raw connection, which the caller can drop mid-stream.
fn start_long_request(server: &Server) -> std::net::TcpStream {
    let addr = server.base.trim_start_matches("http://").to_string();
    let body = long_request().to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(stream, "POST /v1/correct HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).unwrap();
    stream
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    // One worker with two batch slots and no queue: two requests run, a third is refused.
    let server = Server::start(&[
        "--model",
        &model_arg(),
        "--workers",
        "1",
        "--batch-size",
        "2",
        "--queue",
        "0",
    ]);
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let url = server.url("/v1/correct");
            std::thread::spawn(move || {
                let body = json!({"question": QUESTION, "answer": "It boils.", "max_tokens": 300, "suppress_eos": true});
                client().post(url).json(&body).send().unwrap().status()
            })
        })
        .collect();
    wait_until("both slots to be busy", || health(&server)["busy"] == 2);
    let refused = post(
        &server,
        "/v1/correct",
        &json!({"question": "q", "answer": "a"}),
    );
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        refused.json::<Value>().unwrap()["error"]["type"],
        "rate_limit_error"
    );
    for b in busy {
        assert_eq!(b.join().unwrap(), 200);
    }
    assert!(
        metric(
            &server,
            "aligner_requests_total{endpoint=\"/v1/correct\",status=\"429\"}"
        ) >= 1.0
    );
}

#[test]
fn a_client_that_disconnects_frees_its_slot() {
    let server = Server::start(&["--model", &model_arg(), "--workers", "1", "--queue", "0"]);
    let mut stream = start_long_request(&server);
    let mut first = [0u8; 256];
    let n = stream.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).contains("200 OK"));
    assert_eq!(health(&server)["busy"], 1);
    drop(stream); // 2000 tokens would take ~20 s; cancellation must free the worker at once
    let start = Instant::now();
    wait_until("the worker to be freed", || health(&server)["busy"] == 0);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(metric(&server, "aligner_cancelled_total"), 1.0);
    let next = post(
        &server,
        "/v1/correct",
        &json!({"question": "q", "answer": "a", "max_tokens": 4}),
    );
    assert_eq!(next.status(), 200);
}

#[test]
fn metrics_and_models_report_the_work_done() {
    let server = Server::start(&["--model", &model_arg()]);
    let models: Value = client()
        .get(server.url("/v1/models"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(models["data"][0]["id"], "smollm2-135m-instruct-int8");
    let key = "aligner_requests_total{endpoint=\"/v1/correct\",status=\"200\"}";
    assert_eq!(metric(&server, key), 0.0);
    let v: Value = post(
        &server,
        "/v1/correct",
        &json!({"question": "q", "answer": "a", "max_tokens": 8}),
    )
    .json()
    .unwrap();
    assert_eq!(metric(&server, key), 1.0);
    assert_eq!(
        metric(&server, "aligner_completion_tokens_total"),
        v["usage"]["completion_tokens"].as_f64().unwrap()
    );
    assert_eq!(
        metric(
            &server,
            "aligner_request_duration_seconds_count{endpoint=\"/v1/correct\"}"
        ),
        1.0
    );
    assert_eq!(metric(&server, "aligner_queue_depth"), 0.0);
    assert_eq!(health(&server)["provider"], "cpu");
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits() {
    let mut server = Server::start(&["--model", &model_arg()]);
    let url = server.url("/v1/correct");
    let in_flight = std::thread::spawn(move || {
        let body = json!({"question": QUESTION, "answer": "It boils.", "max_tokens": 64, "suppress_eos": true});
        let r = client().post(url).json(&body).send().unwrap();
        (r.status(), r.json::<Value>().unwrap())
    });
    wait_until("the request to start", || health(&server)["busy"] == 1);
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (status, body) = in_flight.join().unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["usage"]["completion_tokens"], 64);
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// Requests decoding together in one worker's batch each keep their own settings, seed and
/// stream: greedy answers equal the same request sent alone, streamed or not, and each seed
/// reproduces its sample. A client that leaves mid-stream is cancelled without disturbing them.
#[test]
fn batched_requests_keep_their_own_settings_seeds_and_streams() {
    let server = Server::start(&[
        "--model",
        &model_arg(),
        "--workers",
        "1",
        "--batch-size",
        "4",
    ]);
    let answer = "Water boils at 50 degrees Celsius.";
    let bodies = [
        json!({"question": QUESTION, "answer": answer, "max_tokens": 40, "temperature": 0.0}),
        json!({"question": QUESTION, "answer": answer, "max_tokens": 40, "temperature": 1.8, "seed": 7}),
        json!({"question": QUESTION, "answer": answer, "max_tokens": 40, "temperature": 1.8, "seed": 8, "top_k": 40}),
        json!({"question": "Who wrote Hamlet?", "answer": "Charles Dickens wrote it.", "max_tokens": 30, "stream": true}),
    ];
    let text = |server: &Server, body: &Value| -> String {
        let response = post(server, "/v1/correct", body);
        assert_eq!(response.status(), 200);
        if body["stream"] == true {
            let frames = sse_data(&response.text().unwrap());
            frames[..frames.len() - 1]
                .iter()
                .filter_map(|f| {
                    serde_json::from_str::<Value>(f).ok()?["delta"]
                        .as_str()
                        .map(String::from)
                })
                .collect()
        } else {
            response.json::<Value>().unwrap()["correction"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let alone: Vec<String> = bodies.iter().map(|b| text(&server, b)).collect();
    // A leaver: streams a long generation and hangs up after the first bytes.
    let mut stream = start_long_request(&server);
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|b| s.spawn(|| text(&server, b)))
            .collect();
        let mut first = [0u8; 256];
        let _ = stream.read(&mut first);
        drop(stream);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Greedy and streamed rows are exact. A sampled row's draw can flip where the kernels of a
    // wider batch (or another cached prefix) move a probability across the uniform draw, as a
    // near-tie flips greedy, so seeds are checked alone: reproducible, and distinct.
    assert_eq!((&together[0], &together[3]), (&alone[0], &alone[3]));
    assert!(together[1..3].iter().all(|t| !t.is_empty()));
    wait_until("the leaver to be cancelled", || {
        metric(&server, "aligner_cancelled_total") >= 1.0 && health(&server)["busy"] == 0
    });
    // Alone (the leaver is gone) and each after the same prompt, so from the same cached
    // prefix: a seed gives its sample again, and another seed another one.
    let again = [&bodies[1], &bodies[1], &bodies[1], &bodies[2]].map(|b| text(&server, b));
    assert_eq!(again[2], again[1], "a seed must reproduce its sample");
    assert_ne!(again[2], again[3], "two seeds gave the same sample");
}
