//! A running `aligner serve` on a loopback port, and a scriptable fake OpenAI upstream.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::aligner;

pub struct Server {
    pub child: Child,
    pub base: String,
    /// Everything the server printed on stderr so far.
    pub log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `aligner serve --port 0 ARGS` and waits for its "listening on" line.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(aligner(), args)
    }

    /// Like [`start`](Self::start) with a prepared command (extra environment, a wrapper).
    pub fn start_with(mut command: std::process::Command, args: &[&str]) -> Server {
        let mut child = command
            .arg("serve")
            .args(["--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let base = loop {
            let line = lines.next().expect("serve printed its address").unwrap();
            log.lock().unwrap().push_str(&(line.clone() + "\n"));
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Server { child, base, log }
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    /// Sends SIGTERM and waits (at most `limit`) for the exit; `None` if it did not exit.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn post(server: &Server, path: &str, body: &serde_json::Value) -> reqwest::blocking::Response {
    client().post(server.url(path)).json(body).send().unwrap()
}

pub fn health(server: &Server) -> serde_json::Value {
    client()
        .get(server.url("/health"))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// `data:` payloads of an SSE body, in order.
pub fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim().to_string())
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
pub enum UpstreamMode {
    Answer,
    Hang,
    Fail,
}

/// A fake OpenAI-compatible upstream on a loopback port, recording what it was sent.
pub struct FakeUpstream {
    pub url: String,
    pub requests: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
}

pub const UPSTREAM_ANSWER: &str = "Water boils at 50 degrees Celsius at sea level.";

impl FakeUpstream {
    pub fn start(mode: UpstreamMode) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = Arc::clone(&seen);
                std::thread::spawn(move || serve_one(stream, mode, &seen));
            }
        });
        FakeUpstream { url, requests }
    }
}

fn serve_one(
    mut stream: TcpStream,
    mode: UpstreamMode,
    seen: &Mutex<Vec<(String, serde_json::Value)>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let (mut length, mut auth) = (0usize, String::new());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("authorization:") {
            auth = line["authorization:".len()..].trim().to_string();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    seen.lock().unwrap().push((auth, request.clone()));
    match mode {
        UpstreamMode::Hang => std::thread::sleep(Duration::from_secs(30)),
        UpstreamMode::Fail => {
            let body = r#"{"error":{"message":"upstream exploded"}}"#;
            let _ = write!(stream, "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        }
        UpstreamMode::Answer if request["stream"] == true => {
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
            );
            let words: Vec<&str> = UPSTREAM_ANSWER.split_inclusive(' ').collect();
            for piece in words.chunks(3) {
                let chunk = serde_json::json!({"object": "chat.completion.chunk", "model": "fake-upstream",
                    "choices": [{"index": 0, "delta": {"content": piece.concat()}, "finish_reason": null}]});
                let _ = write!(stream, "data: {chunk}\n\n");
                let _ = stream.flush();
            }
            let usage = serde_json::json!({"object": "chat.completion.chunk", "choices": [],
                "usage": {"prompt_tokens": 11, "completion_tokens": 9, "total_tokens": 20}});
            let _ = write!(stream, "data: {usage}\n\ndata: [DONE]\n\n");
        }
        UpstreamMode::Answer => {
            let body = serde_json::json!({"id": "x", "object": "chat.completion", "model": "fake-upstream",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": UPSTREAM_ANSWER}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 9, "total_tokens": 20}})
            .to_string();
            let _ = write!(stream, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        }
    }
}
