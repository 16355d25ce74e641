//! Prometheus metrics, in the text exposition format: requests by route and status and
//! their latency (server-wide); per served model, requests by status and their latency,
//! batch sizes, queue depth, images classified and readiness (label `model`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Server-wide series: every request, by the route that matched.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
}

/// One served model's series; its batcher and the request tracker write them.
#[derive(Debug, Default)]
pub struct ModelMetrics {
    requests: Mutex<BTreeMap<u16, u64>>,
    latency: Mutex<Histogram>,
    batch_sizes: Mutex<Histogram>,
    images_classified: AtomicU64,
}

/// What [`Metrics::render`] shows of one model.
pub struct ModelView<'a> {
    pub name: &'a str,
    pub metrics: &'a ModelMetrics,
    pub queue_depth: usize,
    pub ready: bool,
}

impl ModelMetrics {
    pub fn observe_request(&self, status: u16, elapsed: Duration) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry(status).or_default() += 1;
        }
        if let Ok(mut l) = self.latency.lock() {
            l.observe(&LATENCY_BUCKETS, elapsed.as_secs_f64());
        }
    }

    pub fn observe_batch(&self, size: usize) {
        if let Ok(mut h) = self.batch_sizes.lock() {
            h.observe(&BATCH_BUCKETS, size as f64);
        }
        self.images_classified
            .fetch_add(size as u64, Ordering::Relaxed);
    }
}

/// `model="name"`, with the name escaped for the exposition format.
fn model_label(name: &str) -> String {
    let escaped = name
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("model=\"{escaped}\"")
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

    pub fn render(&self, models: &[ModelView]) -> String {
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
        out.push_str(
            "# HELP classify_model_requests_total Requests to one model's inference routes, by status.\n",
        );
        out.push_str("# TYPE classify_model_requests_total counter\n");
        for m in models {
            if let Ok(r) = m.metrics.requests.lock() {
                for (status, n) in r.iter() {
                    let _ = writeln!(
                        out,
                        "classify_model_requests_total{{{},status=\"{status}\"}} {n}",
                        model_label(m.name)
                    );
                }
            }
        }
        out.push_str(
            "# HELP classify_model_request_duration_seconds Latency of one model's inference requests.\n",
        );
        out.push_str("# TYPE classify_model_request_duration_seconds histogram\n");
        for m in models {
            if let Ok(h) = m.metrics.latency.lock() {
                h.render(
                    &mut out,
                    "classify_model_request_duration_seconds",
                    &model_label(m.name),
                    &LATENCY_BUCKETS,
                );
            }
        }
        out.push_str("# HELP classify_batch_size Images per forward pass.\n");
        out.push_str("# TYPE classify_batch_size histogram\n");
        for m in models {
            if let Ok(h) = m.metrics.batch_sizes.lock() {
                h.render(
                    &mut out,
                    "classify_batch_size",
                    &model_label(m.name),
                    &BATCH_BUCKETS,
                );
            }
        }
        out.push_str("# HELP classify_queue_depth Images waiting for the network.\n");
        out.push_str("# TYPE classify_queue_depth gauge\n");
        for m in models {
            let _ = writeln!(
                out,
                "classify_queue_depth{{{}}} {}",
                model_label(m.name),
                m.queue_depth
            );
        }
        out.push_str("# HELP classify_images_classified_total Images run through the network.\n");
        out.push_str("# TYPE classify_images_classified_total counter\n");
        for m in models {
            let _ = writeln!(
                out,
                "classify_images_classified_total{{{}}} {}",
                model_label(m.name),
                m.metrics.images_classified.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP classify_model_ready 1 once the model is loaded and warmed up.\n");
        out.push_str("# TYPE classify_model_ready gauge\n");
        for m in models {
            let _ = writeln!(
                out,
                "classify_model_ready{{{}}} {}",
                model_label(m.name),
                u8::from(m.ready)
            );
        }
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
        let (a, b) = (ModelMetrics::default(), ModelMetrics::default());
        a.observe_batch(3);
        a.observe_request(200, Duration::from_millis(30));
        b.observe_request(503, Duration::from_millis(1));
        let text = m.render(&[
            ModelView {
                name: "resnet50",
                metrics: &a,
                queue_depth: 2,
                ready: true,
            },
            ModelView {
                name: "odd\"name",
                metrics: &b,
                queue_depth: 0,
                ready: false,
            },
        ]);
        assert!(text.contains("classify_requests_total{route=\"/predict\",status=\"200\"} 1"));
        assert!(text.contains(
            "classify_request_duration_seconds_bucket{route=\"/predict\",le=\"0.05\"} 2"
        ));
        assert!(text.contains("classify_batch_size_bucket{model=\"resnet50\",le=\"4\"} 1"));
        assert!(text.contains("classify_queue_depth{model=\"resnet50\"} 2"));
        assert!(text.contains("classify_images_classified_total{model=\"resnet50\"} 3"));
        assert!(text.contains("classify_images_classified_total{model=\"odd\\\"name\"} 0"));
        assert!(text.contains("classify_model_requests_total{model=\"resnet50\",status=\"200\"} 1"));
        assert!(
            text.contains("classify_model_requests_total{model=\"odd\\\"name\",status=\"503\"} 1")
        );
        assert!(text.contains(
            "classify_model_request_duration_seconds_bucket{model=\"resnet50\",le=\"0.05\"} 1"
        ));
        assert!(text.contains("classify_model_ready{model=\"resnet50\"} 1"));
        assert!(text.contains("classify_model_ready{model=\"odd\\\"name\"} 0"));
    }
}
