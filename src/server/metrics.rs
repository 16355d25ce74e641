//! Prometheus metrics, in the text exposition format: requests by route and status, request
//! latency and batch size histograms, queue depth, images classified.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, buckets: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; buckets.len()];
        }
        for (i, b) in buckets.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, buckets: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in buckets.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    batch_sizes: Mutex<Histogram>,
    pub queue_depth: AtomicUsize,
    pub images_classified: AtomicU64,
}

impl Metrics {
    pub fn observe_request(&self, route: &str, status: u16, elapsed: Duration) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((route.to_string(), status)).or_default() += 1;
        }
        if let Ok(mut l) = self.latency.lock() {
            l.entry(route.to_string())
                .or_default()
                .observe(&LATENCY_BUCKETS, elapsed.as_secs_f64());
        }
    }

    pub fn observe_batch(&self, size: usize) {
        if let Ok(mut h) = self.batch_sizes.lock() {
            h.observe(&BATCH_BUCKETS, size as f64);
        }
        self.images_classified
            .fetch_add(size as u64, Ordering::Relaxed);
    }

    pub fn render(&self, queue_depth: usize) -> String {
        let mut out = String::new();
        out.push_str("# HELP classify_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE classify_requests_total counter\n");
        if let Ok(r) = self.requests.lock() {
            for ((route, status), n) in r.iter() {
                let _ = writeln!(
                    out,
                    "classify_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP classify_request_duration_seconds Request latency by route.\n");
        out.push_str("# TYPE classify_request_duration_seconds histogram\n");
        if let Ok(l) = self.latency.lock() {
            for (route, h) in l.iter() {
                h.render(
                    &mut out,
                    "classify_request_duration_seconds",
                    &format!("route=\"{route}\""),
                    &LATENCY_BUCKETS,
                );
            }
        }
        out.push_str("# HELP classify_batch_size Images per forward pass.\n");
        out.push_str("# TYPE classify_batch_size histogram\n");
        if let Ok(h) = self.batch_sizes.lock() {
            h.render(&mut out, "classify_batch_size", "", &BATCH_BUCKETS);
        }
        out.push_str("# HELP classify_queue_depth Images waiting for the network.\n");
        out.push_str("# TYPE classify_queue_depth gauge\n");
        let _ = writeln!(out, "classify_queue_depth {queue_depth}");
        out.push_str("# HELP classify_images_classified_total Images run through the network.\n");
        out.push_str("# TYPE classify_images_classified_total counter\n");
        let _ = writeln!(
            out,
            "classify_images_classified_total {}",
            self.images_classified.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.observe_request("/predict", 200, Duration::from_millis(30));
        m.observe_request("/predict", 400, Duration::from_millis(2));
        m.observe_batch(3);
        let text = m.render(2);
        assert!(text.contains("classify_requests_total{route=\"/predict\",status=\"200\"} 1"));
        assert!(text.contains(
            "classify_request_duration_seconds_bucket{route=\"/predict\",le=\"0.05\"} 2"
        ));
        assert!(text.contains("classify_batch_size_bucket{le=\"4\"} 1"));
        assert!(text.contains("classify_queue_depth 2"));
        assert!(text.contains("classify_images_classified_total 3"));
    }
}
