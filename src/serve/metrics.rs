//! Prometheus metrics (`GET /metrics`, text format 0.0.4): requests by route and status, request
//! and per-stage latency histograms, queue depth, renders cancelled, merges and merge-cache hits.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use stylus_diffusion::lora::MergeCacheStats;

use super::AppState;
use super::queue::CancelReason;

/// Upper bounds (seconds) of the latency buckets: selection is milliseconds, renders seconds to
/// minutes.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(&mut self.counts) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

type MergeStatsFn = Arc<dyn Fn() -> MergeCacheStats + Send + Sync>;

/// The server's counters.
pub struct Metrics {
    /// (route, status) -> requests.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// route -> request latency.
    latency: Mutex<BTreeMap<String, Histogram>>,
    /// stage -> latency (queue, embed, retrieve, compose, render, encode).
    stages: Mutex<BTreeMap<&'static str, Histogram>>,
    cancelled: Mutex<BTreeMap<&'static str, u64>>,
    images: AtomicU64,
    merge_stats: Option<MergeStatsFn>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters stay usable after a panic elsewhere: each update is one assignment.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    pub fn new(merge_stats: Option<MergeStatsFn>) -> Self {
        Self {
            requests: Default::default(),
            latency: Default::default(),
            stages: Default::default(),
            cancelled: Default::default(),
            images: AtomicU64::new(0),
            merge_stats,
        }
    }

    /// Records one stage's time.
    pub fn stage(&self, stage: &'static str, seconds: f64) {
        lock(&self.stages)
            .entry(stage)
            .or_default()
            .observe(seconds);
    }

    pub fn cancelled(&self, reason: CancelReason) {
        *lock(&self.cancelled).entry(reason.label()).or_default() += 1;
    }

    pub fn images(&self, count: usize) {
        self.images.fetch_add(count as u64, Ordering::Relaxed);
    }

    /// Merges so far, when a model is loaded.
    pub fn merge_stats(&self) -> Option<MergeCacheStats> {
        self.merge_stats.as_ref().map(|stats| stats())
    }

    fn request(&self, route: &str, status: u16, seconds: f64) {
        *lock(&self.requests)
            .entry((route.to_string(), status))
            .or_default() += 1;
        lock(&self.latency)
            .entry(route.to_string())
            .or_default()
            .observe(seconds);
    }

    /// The text exposition.
    pub fn render(&self, state: &AppState) -> String {
        let mut out = String::new();
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            &mut out,
            "stylus_http_requests_total",
            "counter",
            "HTTP requests by route and status.",
        );
        for ((route, status), count) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "stylus_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        family(
            &mut out,
            "stylus_http_request_duration_seconds",
            "histogram",
            "Time to answer, by route.",
        );
        for (route, histogram) in lock(&self.latency).iter() {
            histogram.write(
                &mut out,
                "stylus_http_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        family(
            &mut out,
            "stylus_stage_duration_seconds",
            "histogram",
            "Time per stage: queue (waiting), embed, retrieve, compose, render (merge and \
             sample), encode (PNG).",
        );
        for (stage, histogram) in lock(&self.stages).iter() {
            histogram.write(
                &mut out,
                "stylus_stage_duration_seconds",
                &format!("stage=\"{stage}\""),
            );
        }
        family(
            &mut out,
            "stylus_queue_depth",
            "gauge",
            "Render requests waiting (not the running one).",
        );
        let _ = writeln!(out, "stylus_queue_depth {}", state.queue.waiting());
        family(
            &mut out,
            "stylus_render_running",
            "gauge",
            "1 while a render runs.",
        );
        let running = u8::from(state.queue.status().running().is_some());
        let _ = writeln!(out, "stylus_render_running {running}");
        family(
            &mut out,
            "stylus_renders_cancelled_total",
            "counter",
            "Renders stopped early, by reason.",
        );
        for (reason, count) in lock(&self.cancelled).iter() {
            let _ = writeln!(
                out,
                "stylus_renders_cancelled_total{{reason=\"{reason}\"}} {count}"
            );
        }
        family(
            &mut out,
            "stylus_images_total",
            "counter",
            "Images rendered and sent.",
        );
        let _ = writeln!(
            out,
            "stylus_images_total {}",
            self.images.load(Ordering::Relaxed)
        );
        if let Some(stats) = self.merge_stats() {
            family(
                &mut out,
                "stylus_merges_total",
                "counter",
                "Adapter sets merged into the model.",
            );
            let _ = writeln!(out, "stylus_merges_total {}", stats.merges);
            family(
                &mut out,
                "stylus_merge_cache_hits_total",
                "counter",
                "Renders whose adapter set was already merged.",
            );
            let _ = writeln!(out, "stylus_merge_cache_hits_total {}", stats.hits);
            family(
                &mut out,
                "stylus_merge_cache_bytes",
                "gauge",
                "Bytes of merged parameters held by the merged-set cache.",
            );
            let _ = writeln!(out, "stylus_merge_cache_bytes {}", stats.bytes);
            family(
                &mut out,
                "stylus_merge_cache_sets",
                "gauge",
                "Merged adapter sets held (the active one included).",
            );
            let _ = writeln!(out, "stylus_merge_cache_sets {}", stats.sets);
        }
        out
    }
}

/// Counts every request by its route pattern (never the raw path: clients cannot grow the
/// label set) and status.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.request(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
