//! Soak: a real `aligner serve` on loopback under a mix of good and bad requests, clients that
//! leave, oversized bodies and slow clients, then SIGTERM. It passes when every request gets an
//! answer or a clean close, no 5xx appears (none is documented without an upstream), RSS stays
//! within 10% of its level after warm-up, and the server exits cleanly.
//!
//! `make test` runs it for 15 s; `ALIGNER_SOAK_SECS=600 cargo test --release --test soak --
//! --nocapture` is the long setting.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http::*;
use common::*;
use serde_json::json;

/// A tiny reproducible generator, so a failing mix can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Correct,
    Streamed,
    Chat,
    BadJson,
    BadOption,
    TooLong,
    HugeBody,
    NotFound,
    LeavesEarly,
    SlowClient,
}

const KINDS: [Kind; 10] = [
    Kind::Correct,
    Kind::Streamed,
    Kind::Chat,
    Kind::BadJson,
    Kind::BadOption,
    Kind::TooLong,
    Kind::HugeBody,
    Kind::NotFound,
    Kind::LeavesEarly,
    Kind::SlowClient,
];

/// One request of `kind`: `Ok(status)` for an answer, `Ok(0)` for a clean close we caused or
/// expected, `Err` for anything else.
fn one(
    kind: Kind,
    base: &str,
    addr: &str,
    http: &reqwest::blocking::Client,
) -> Result<u16, String> {
    let url = |p: &str| format!("{base}{p}");
    let good = json!({"question": "What is the capital of France?", "answer": "Paris is the capital of Germany.", "max_tokens": 8});
    let send = |r: reqwest::blocking::RequestBuilder| -> Result<u16, String> {
        let response = r.send().map_err(|e| format!("{kind:?}: {e:?}"))?;
        let status = response.status().as_u16();
        response
            .bytes()
            .map_err(|e| format!("{kind:?} body: {e}"))?;
        Ok(status)
    };
    match kind {
        Kind::Correct => send(http.post(url("/v1/correct")).json(&good)),
        Kind::Streamed => {
            let mut body = good.clone();
            body["stream"] = json!(true);
            send(http.post(url("/v1/correct")).json(&body))
        }
        Kind::Chat => send(http.post(url("/v1/chat/completions")).json(&json!({
            "messages": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "Nine."}],
            "max_tokens": 8}))),
        Kind::BadJson => send(
            http.post(url("/v1/correct"))
                .header("content-type", "application/json")
                .body("{\"question\": "),
        ),
        Kind::BadOption => send(http.post(url("/v1/correct")).json(&json!({"question": "q", "answer": "a", "top_p": 7, "stop": ["é"]}))),
        Kind::TooLong => send(http.post(url("/v1/correct")).json(&json!({"question": "q", "answer": "word ".repeat(20_000)}))),
        Kind::HugeBody => {
            // Over --max-body-bytes: 413, or the server closes while we are still sending.
            match http
                .post(url("/v1/correct"))
                .header("content-type", "application/json")
                .body(vec![b' '; 3 << 20])
                .send()
            {
                Ok(r) => Ok(r.status().as_u16()),
                Err(_) => Ok(0),
            }
        }
        Kind::NotFound => send(http.get(url("/v1/nothing"))),
        Kind::LeavesEarly => {
            let quick = reqwest::blocking::Client::builder()
                .timeout(Duration::from_millis(30))
                .build()
                .unwrap();
            match quick.post(url("/v1/correct")).json(&good).send() {
                Ok(r) => Ok(r.status().as_u16()),
                Err(_) => Ok(0),
            }
        }
        Kind::SlowClient => {
            // Half a request head, then silence: the server must close it on its own.
            let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            s.write_all(b"POST /v1/correct HTTP/1.1\r\nHost: x\r\n")
                .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut buf = Vec::new();
            match s.read_to_end(&mut buf) {
                Ok(_) => Ok(0),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(0),
                Err(e) => Err(format!("slow client never closed: {e}")),
            }
        }
    }
}

#[test]
fn soak_mixed_traffic_then_sigterm() {
    let secs: u64 = std::env::var("ALIGNER_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let model = default_model();
    let mut server = Server::start(&[
        "--model",
        model.to_str().unwrap(),
        "--queue",
        "4",
        "--header-timeout",
        "2",
        "--body-timeout",
        "5",
    ]);
    let pid = server.pid();
    let (base, addr) = (server.base.clone(), server.addr());
    let tally: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let warmup = Duration::from_secs(3.min(secs));
    let end = Instant::now() + warmup + Duration::from_secs(secs);
    let clients: Vec<_> = (0..4u64)
        .map(|seed| {
            let (base, addr) = (base.clone(), addr.clone());
            let (tally, failures) = (Arc::clone(&tally), Arc::clone(&failures));
            std::thread::spawn(move || {
                // A well-behaved client keeps idle connections for less than the server's
                // idle timeout (--header-timeout); otherwise a reused connection can race
                // the server closing it, as with any HTTP/1.1 server.
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(120))
                    .pool_idle_timeout(Duration::from_secs(1))
                    .build()
                    .unwrap();
                let mut rng = Lcg(seed + 1);
                while Instant::now() < end {
                    let kind = KINDS[rng.next(KINDS.len() as u64) as usize];
                    match one(kind, &base, &addr, &http) {
                        Ok(status) => {
                            *tally
                                .lock()
                                .unwrap()
                                .entry(format!("{kind:?} {status}"))
                                .or_default() += 1;
                            if ![0, 200, 400, 404, 408, 413, 429].contains(&status) {
                                failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("{kind:?} -> {status}"));
                            }
                        }
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(warmup);
    let rss_start = rss_mb(pid);
    let mut rss_peak = rss_start;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(500));
        rss_peak = rss_peak.max(rss_mb(pid));
    }
    for c in clients {
        c.join().unwrap();
    }
    let rss_end = rss_mb(pid);

    // SIGTERM with a request in flight and a half-sent head open: the request is answered,
    // the half-sent head does not hold the exit.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    let in_flight = {
        let base = base.clone();
        std::thread::spawn(move || {
            client()
                .post(format!("{base}/v1/correct"))
                .json(&json!({"question": "Q?", "answer": "A b c d e f.", "max_tokens": 24}))
                .send()
                .map(|r| r.status().as_u16())
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let status = server.terminate(Duration::from_secs(60));
    let answered = in_flight.join().unwrap();

    let tally = tally.lock().unwrap();
    let total: usize = tally.values().sum();
    eprintln!("soak: {secs} s after a {warmup:?} warm-up, {total} requests: {tally:?}");
    eprintln!("soak: RSS {rss_start:.1} MB after warm-up, peak {rss_peak:.1}, end {rss_end:.1} MB");
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        rss_end <= rss_start * 1.10,
        "RSS grew from {rss_start:.1} to {rss_end:.1} MB"
    );
    assert!(
        matches!(answered, Ok(200)),
        "in-flight request at SIGTERM: {answered:?}"
    );
    let status = status.expect("the server did not exit after SIGTERM");
    assert!(status.success(), "{status:?}");
    drop(slow);
}
