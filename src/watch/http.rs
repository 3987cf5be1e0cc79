//! The watch service's health and metrics endpoint: `GET /healthz` and `GET /metrics`
//! (Prometheus text format 0.0.4), plain HTTP/1.1 on one thread, one client at a time.
//!
//! In: a bound listener, the service's [`Metrics`] and its queue folder. Out: answers to
//! scrapes. It serves nothing else (404), reads at most 8 KiB of request, gives each client 5 s
//! in all, and has no authentication: bind it to 127.0.0.1 (the default) or a management
//! network.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

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

/// Serves until `stop` is set.
pub fn serve(listener: TcpListener, stop: &AtomicBool, metrics: &Metrics, queue_dir: &Path) {
    let _ = listener.set_nonblocking(true);
    // Opened on first use: the service's own connection may still be creating the tables.
    let mut q: Option<Queue> = None;
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if q.is_none() {
                    q = Queue::open(queue_dir).ok();
                }
                let _ = answer(stream, metrics, q.as_ref());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(25));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Reads from a stream until an overall deadline, however slowly the client sends.
struct Deadline<'a>(&'a TcpStream, std::time::Instant);

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.1.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.0.set_read_timeout(Some(left))?;
        self.0.read(buf)
    }
}

fn answer(stream: TcpStream, metrics: &Metrics, q: Option<&Queue>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    // One client at a time, each given 5 s in all to send its request.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut reader = BufReader::new(Deadline(&stream, deadline).take(8192));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Read (and ignore) the headers, to the blank line or the size limit.
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/healthz") => health(metrics, q),
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(metrics, q),
        ),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".into()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".into(),
        ),
    };
    let mut w = &stream;
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        w.write_all(body.as_bytes())?;
    }
    w.flush()
}

/// Healthy while the scan loop runs on time and the queue can be read.
fn health(metrics: &Metrics, q: Option<&Queue>) -> (&'static str, &'static str, String) {
    let since_scan = queue::now() - get_f64(&metrics.last_scan);
    let allowed = (3.0 * get_f64(&metrics.rescan_s)).max(300.0);
    let queue_ok = q.is_some_and(|q| q.counts().is_ok());
    if !queue_ok {
        return (
            "503 Service Unavailable",
            "text/plain",
            "unhealthy: the queue cannot be read\n".into(),
        );
    }
    if since_scan > allowed {
        return (
            "503 Service Unavailable",
            "text/plain",
            format!("unhealthy: no inbox scan for {since_scan:.0} s\n"),
        );
    }
    ("200 OK", "text/plain", "ok\n".into())
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
