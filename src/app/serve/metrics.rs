//! Prometheus text-format metrics: requests by endpoint and status, tokens, latency
//! histograms, queue depth. Plain atomics and a small map; no metrics framework needed.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const BUCKETS: [f64; 11] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
}

impl Metrics {
    pub fn record(&self, endpoint: &str, status: u16, seconds: f64) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((endpoint.to_string(), status)).or_default() += 1;
        }
        if let Ok(mut l) = self.latency.lock() {
            let h = l.entry(endpoint.to_string()).or_default();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if seconds <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += seconds;
        }
    }

    pub fn add_tokens(&self, prompt: usize, completion: usize) {
        self.prompt_tokens
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion as u64, Ordering::Relaxed);
    }

    /// The exposition text; `gauges` are point-in-time values (queue depth, busy workers).
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        out.push_str("# HELP aligner_requests_total HTTP requests by endpoint and status.\n");
        out.push_str("# TYPE aligner_requests_total counter\n");
        if let Ok(r) = self.requests.lock() {
            for ((endpoint, status), n) in r.iter() {
                let _ = writeln!(
                    out,
                    "aligner_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP aligner_request_duration_seconds Request latency.\n");
        out.push_str("# TYPE aligner_request_duration_seconds histogram\n");
        if let Ok(l) = self.latency.lock() {
            for (endpoint, h) in l.iter() {
                for (bound, n) in BUCKETS.iter().zip(h.counts) {
                    let _ = writeln!(
                        out,
                        "aligner_request_duration_seconds_bucket{{endpoint=\"{endpoint}\",le=\"{bound}\"}} {n}"
                    );
                }
                let _ = writeln!(
                    out,
                    "aligner_request_duration_seconds_bucket{{endpoint=\"{endpoint}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    out,
                    "aligner_request_duration_seconds_sum{{endpoint=\"{endpoint}\"}} {}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "aligner_request_duration_seconds_count{{endpoint=\"{endpoint}\"}} {}",
                    h.count
                );
            }
        }
        for (name, help, value) in [
            (
                "aligner_prompt_tokens_total",
                "Prompt tokens processed.",
                self.prompt_tokens.load(Ordering::Relaxed) as f64,
            ),
            (
                "aligner_completion_tokens_total",
                "Tokens generated.",
                self.completion_tokens.load(Ordering::Relaxed) as f64,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_text_is_prometheus_shaped() {
        let m = Metrics::default();
        m.record("/v1/correct", 200, 0.3);
        m.record("/v1/correct", 200, 3.0);
        m.record("/v1/correct", 429, 0.001);
        m.add_tokens(10, 5);
        let text = m.render(&[("aligner_queue_depth", "Jobs waiting.", 2.0)]);
        assert!(text.contains("aligner_requests_total{endpoint=\"/v1/correct\",status=\"200\"} 2"));
        assert!(text.contains("aligner_requests_total{endpoint=\"/v1/correct\",status=\"429\"} 1"));
        assert!(text.contains("le=\"0.05\"} 1\n"), "{text}");
        assert!(text.contains("le=\"0.5\"} 2\n"), "{text}");
        assert!(text.contains("le=\"5\"} 3\n"), "{text}");
        assert!(text.contains("aligner_request_duration_seconds_count{endpoint=\"/v1/correct\"} 3"));
        assert!(text.contains("aligner_completion_tokens_total 5"));
        assert!(text.contains("# TYPE aligner_queue_depth gauge\naligner_queue_depth 2"));
    }
}
