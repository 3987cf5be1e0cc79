//! The watch service's health and metrics endpoint: `GET /healthz` and `GET /metrics`
//! (Prometheus text format 0.0.4), on axum like the viewer (one HTTP stack in Tessera), on a
//! single-threaded runtime of its own thread.
//!
//! In: a bound listener, the service's [`Metrics`] and its queue folder. Out: answers to
//! scrapes, each closing its connection. It serves nothing else (404 for other paths, 405 for
//! other methods) and has no authentication: bind it to 127.0.0.1 (the default) or a
//! management network.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::queue::{self, Queue};

/// Counters and gauges shared by the service's threads.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Slides analysed to completion since start.
    pub done: AtomicU64,
    /// Failed attempts since start (quarantines included).
    pub failed: AtomicU64,
    /// Slides quarantined since start.
    pub quarantined: AtomicU64,
    /// Patches analysed since start.
    pub patches: AtomicU64,
    /// Seconds spent analysing slides that completed, as f64 bits.
    pub analysis_seconds: AtomicU64,
    /// Unix time of the last completed slide, as f64 bits (0: none yet).
    pub last_success: AtomicU64,
    /// Unix time of the last inbox scan, as f64 bits.
    pub last_scan: AtomicU64,
    /// Workers analysing a slide now.
    pub busy: AtomicU64,
    /// Workers configured.
    pub workers: AtomicU64,
    /// Scan interval in seconds, as f64 bits (for the health check).
    pub rescan_s: AtomicU64,
}

/// Adds `v` to an f64 stored as bits.
pub fn add_f64(a: &AtomicU64, v: f64) {
    let _ = a.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
        Some((f64::from_bits(b) + v).to_bits())
    });
}

fn get_f64(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Ordering::SeqCst))
}

/// What the two routes read.
#[derive(Clone)]
struct Endpoint {
    metrics: Arc<Metrics>,
    queue_dir: PathBuf,
    /// Opened on first use: the service's own connection may still be creating the tables.
    queue: Arc<Mutex<Option<Queue>>>,
}

impl Endpoint {
    /// Runs `f` with the queue, opening it if it is not open yet (`None` if it cannot be).
    fn with_queue<T>(&self, f: impl FnOnce(Option<&Queue>) -> T) -> T {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.is_none() {
            *q = Queue::open(&self.queue_dir).ok();
        }
        f(q.as_ref())
    }
}

fn plain(status: StatusCode, ctype: &'static str, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONNECTION, "close"),
        ],
        body,
    )
        .into_response()
}

async fn healthz(State(e): State<Endpoint>) -> Response {
    let (status, body) = e.with_queue(|q| health(&e.metrics, q));
    plain(status, "text/plain", body)
}

async fn metrics_text(State(e): State<Endpoint>) -> Response {
    let body = e.with_queue(|q| render(&e.metrics, q));
    plain(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        body,
    )
}

/// Serves until `stop` is set. An error says why the endpoint could not run (the service
/// goes on without it).
pub fn serve(
    listener: TcpListener,
    stop: &AtomicBool,
    metrics: Arc<Metrics>,
    queue_dir: &Path,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let state = Endpoint {
        metrics,
        queue_dir: queue_dir.to_path_buf(),
        queue: Arc::new(Mutex::new(None)),
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { plain(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()) })
        .with_state(state);
    rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let stopped = async {
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        };
        // Stopping drops the server and any scrape in flight with it.
        tokio::select! {
            served = axum::serve(listener, app) => served,
            () = stopped => Ok(()),
        }
    })
}

/// Healthy while the scan loop runs on time and the queue can be read.
fn health(metrics: &Metrics, q: Option<&Queue>) -> (StatusCode, String) {
    let since_scan = queue::now() - get_f64(&metrics.last_scan);
    let allowed = (3.0 * get_f64(&metrics.rescan_s)).max(300.0);
    let queue_ok = q.is_some_and(|q| q.counts().is_ok());
    if !queue_ok {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy: the queue cannot be read\n".into(),
        );
    }
    if since_scan > allowed {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: no inbox scan for {since_scan:.0} s\n"),
        );
    }
    (StatusCode::OK, "ok\n".into())
}

/// The metrics in Prometheus text format.
pub fn render(metrics: &Metrics, q: Option<&Queue>) -> String {
    let mut s = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
        s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in samples {
            s.push_str(&format!("{name}{labels} {value}\n"));
        }
    };
    let counts = q.and_then(|q| q.counts().ok()).unwrap_or_default();
    let states = ["stable", "running", "failed", "done", "quarantined"];
    let by_state: Vec<(String, String)> = states
        .iter()
        .map(|st| {
            let n = counts.iter().find(|(k, _)| k == st).map_or(0, |(_, n)| *n);
            (format!("{{state=\"{st}\"}}"), n.to_string())
        })
        .collect();
    metric(
        "tessera_watch_queue_slides",
        "gauge",
        "Slide versions in the queue by state (failed: waiting for a retry).",
        &by_state,
    );
    let verdicts = q.and_then(|q| q.verdict_counts().ok()).unwrap_or_default();
    let by_verdict: Vec<(String, String)> = ["pass", "review", "rescan"]
        .iter()
        .map(|v| {
            let n = verdicts.iter().find(|(k, _)| k == v).map_or(0, |(_, n)| *n);
            (format!("{{verdict=\"{v}\"}}"), n.to_string())
        })
        .collect();
    metric(
        "tessera_watch_qc_slides",
        "gauge",
        "Slide versions done, by slide QC verdict.",
        &by_verdict,
    );
    let load = |a: &AtomicU64| a.load(Ordering::SeqCst).to_string();
    let one = |v: String| vec![(String::new(), v)];
    metric(
        "tessera_watch_slides_done_total",
        "counter",
        "Slides analysed to completion since the service started.",
        &one(load(&metrics.done)),
    );
    metric(
        "tessera_watch_slides_failed_total",
        "counter",
        "Failed analysis attempts since the service started.",
        &one(load(&metrics.failed)),
    );
    metric(
        "tessera_watch_slides_quarantined_total",
        "counter",
        "Slides quarantined since the service started.",
        &one(load(&metrics.quarantined)),
    );
    metric(
        "tessera_watch_patches_total",
        "counter",
        "Patches analysed since the service started.",
        &one(load(&metrics.patches)),
    );
    let secs = get_f64(&metrics.analysis_seconds);
    let patches = metrics.patches.load(Ordering::SeqCst) as f64;
    metric(
        "tessera_watch_patches_per_second",
        "gauge",
        "Patches per second of analysis over the slides completed since the service started.",
        &one(format!("{}", if secs > 0.0 { patches / secs } else { 0.0 })),
    );
    metric(
        "tessera_watch_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last slide analysed to completion (0: none since start).",
        &one(format!("{}", get_f64(&metrics.last_success))),
    );
    metric(
        "tessera_watch_last_scan_timestamp_seconds",
        "gauge",
        "Unix time of the last inbox scan.",
        &one(format!("{}", get_f64(&metrics.last_scan))),
    );
    metric(
        "tessera_watch_workers_busy",
        "gauge",
        "Workers analysing a slide now.",
        &one(load(&metrics.busy)),
    );
    metric(
        "tessera_watch_workers",
        "gauge",
        "Workers configured.",
        &one(load(&metrics.workers)),
    );
    s
}
