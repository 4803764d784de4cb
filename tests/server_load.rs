//! A bounded load run against `aligner serve` on loopback: concurrent clients for a fixed
//! time. It fails on any 5xx (429s from the bounded queue are allowed) and on memory growth;
//! the figures (requests/s, p50/p99 latency, RSS) are printed for the record, never asserted
//! as timings.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http::*;
use common::*;
use serde_json::json;

const CLIENTS: usize = 4;
const WARMUP: Duration = Duration::from_secs(3);
const RUN: Duration = Duration::from_secs(20);

/// Drives the server with CLIENTS threads for `how_long`; returns (status, latency) per request.
fn drive(server: &Server, how_long: Duration) -> Vec<(u16, Duration)> {
    let results = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (url, results, stop) = (server.url("/v1/correct"), Arc::clone(&results), Arc::clone(&stop));
            std::thread::spawn(move || {
                let client = client();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({"question": format!("What is {c} times {i}?"), "answer": format!("It is {}.", c * i + 1), "max_tokens": 16});
                    let start = Instant::now();
                    let status = client.post(&url).json(&body).send().map(|r| r.status().as_u16()).unwrap_or(599);
                    results.lock().unwrap().push((status, start.elapsed()));
                    if status == 429 {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(how_long);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    Arc::try_unwrap(results).unwrap().into_inner().unwrap()
}

#[test]
fn sustained_load_has_no_server_errors_and_no_memory_growth() {
    let model = default_model();
    let server = Server::start(&[
        "--model",
        model.to_str().unwrap(),
        "--workers",
        "2",
        "--queue",
        "4",
    ]);
    drive(&server, WARMUP);
    let before = rss_kb(server.pid());
    let results = drive(&server, RUN);
    let after = rss_kb(server.pid());

    let server_errors: Vec<_> = results.iter().filter(|(s, _)| *s >= 500).collect();
    assert!(server_errors.is_empty(), "5xx answers: {server_errors:?}");
    let mut ok: Vec<Duration> = results
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, d)| *d)
        .collect();
    let rejected = results.iter().filter(|(s, _)| *s == 429).count();
    assert!(results.iter().all(|(s, _)| *s == 200 || *s == 429));
    assert!(ok.len() > 10, "only {} requests succeeded", ok.len());
    ok.sort();
    let pct = |p: f64| ok[((ok.len() - 1) as f64 * p).round() as usize];
    eprintln!(
        "load: {CLIENTS} clients, {:.0} s: {} ok ({:.2} req/s), {rejected} x 429, p50 {:?}, p99 {:?}, RSS {} MB -> {} MB",
        RUN.as_secs_f64(),
        ok.len(),
        ok.len() as f64 / RUN.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        before / 1024,
        after / 1024
    );
    // Arenas and caches settle during warm-up; after that the run must not keep growing.
    assert!(
        after <= before + before / 10 + 16 * 1024,
        "RSS grew from {before} kB to {after} kB"
    );
}
