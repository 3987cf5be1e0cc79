//! `tessera watch`: a real service process on real files — growing files, corrupt and replaced
//! slides, a second service, SIGTERM, and SIGKILL at random moments.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::require;
use crate::util::*;

fn spawn(inbox: &Path, out: &Path, extra: &[&str]) -> Child {
    spawn_env(inbox, out, extra, &[])
}

fn spawn_env(inbox: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .envs(env.iter().copied())
        .arg("watch")
        .arg(inbox)
        .arg("--out")
        .arg(out)
        .args(["--inference", "tract", "-q"])
        // Defaults for the tests, unless the test gives its own.
        .args(
            [["--rescan", "0.2"], ["--http", "off"]]
                .into_iter()
                .filter(|[flag, _]| !extra.contains(flag))
                .flatten(),
        )
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tessera watch")
}

/// Runs a `--once` service to the end; returns its exit code and stderr.
fn once(inbox: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["--once", "--settle", "0"];
    args.extend_from_slice(extra);
    let o = spawn(inbox, out, &args).wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn events(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join(".watch/events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["event"] == kind).count()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn queue_states(out: &Path) -> Vec<(String, String)> {
    let o = tessera_str(&["queue", "--out", out.to_str().unwrap(), "list"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].to_string(), f[4].to_string())
        })
        .collect()
}

/// Live `watch-worker` processes started for the results folder `out` (read from /proc).
fn workers_of(out: &Path) -> Vec<u32> {
    let needle = out.to_string_lossy().into_owned();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.iter().any(|a| a == "watch-worker") && args.contains(&needle)
        })
        .collect()
}

/// GET `path` from `addr`; returns the status code and body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// Every file under `dir` with its size and modification time (the inbox must not change).
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::metadata(&p).unwrap();
        v.push((p, m.len(), m.modified().unwrap()));
    }
    v.sort();
    v
}

/// A complete, valid output folder for `name`-<fingerprint>: result.json parses and
/// patches.csv has one row per analysed patch.
fn valid_outputs(out: &Path, name: &str) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(out).unwrap() {
        let p = e.unwrap().path();
        let f = p.file_name().unwrap().to_string_lossy().into_owned();
        if !f.starts_with(&format!("{name}-")) {
            continue;
        }
        let r: Value =
            serde_json::from_slice(&std::fs::read(p.join("result.json")).unwrap()).unwrap();
        let rows = std::fs::read_to_string(p.join("patches.csv"))
            .unwrap()
            .lines()
            .count()
            - 1;
        assert_eq!(rows as u64, r["patches_analysed"].as_u64().unwrap(), "{f}");
        assert!(p.join("report.html").is_file());
        n += 1;
    }
    n
}

#[test]
fn a_slide_copied_in_chunks_is_analysed_once_after_it_stops_growing() {
    let src = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let t = tempfile::tempdir().unwrap();
    let (inbox, out) = (t.path().join("inbox"), t.path().join("out"));
    std::fs::create_dir_all(&inbox).unwrap();
    let mut service = spawn(&inbox, &out, &["--settle", "1.5"]);
    // Six chunks, 0.4 s apart: the file grows for 2 s, each pause shorter than the settle.
    let bytes = std::fs::read(&src).unwrap();
    let dst = inbox.join("scan.svs");
    let mut f = std::fs::File::create(&dst).unwrap();
    for chunk in bytes.chunks(bytes.len().div_ceil(6)) {
        use std::io::Write;
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(400));
    }
    drop(f);
    wait_for("the analysis", Duration::from_secs(300), || {
        count(&events(&out), "analysed") == 1
    });
    sigterm(&service);
    let status = service.wait().unwrap();
    assert!(status.success(), "{status}");
    let ev = events(&out);
    // Never taken while growing: one version queued, analysed once, nothing failed.
    assert_eq!(count(&ev, "queued"), 1, "{ev:#?}");
    assert_eq!(count(&ev, "analysed"), 1);
    assert_eq!(
        count(&ev, "failed") + count(&ev, "quarantined"),
        0,
        "{ev:#?}"
    );
    assert_eq!(count(&ev, "stopped"), 1, "SIGTERM stops it cleanly");
    assert_eq!(valid_outputs(&out, "scan.svs"), 1);
    assert_eq!(
        queue_states(&out),
        [("done".into(), dst.display().to_string())]
    );
}

#[test]
fn a_corrupt_slide_is_retried_then_quarantined_while_the_others_finish() {
    let good = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let bad = require!(data("corrupt/broken.svs"));
    let t = tempfile::tempdir().unwrap();
    let (inbox, out) = (t.path().join("inbox"), t.path().join("out"));
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::copy(&good, inbox.join("good.svs")).unwrap();
    std::fs::copy(&bad, inbox.join("bad.svs")).unwrap();
    let before = snapshot(&inbox);
    let (rc, err) = once(&inbox, &out, &["--attempts", "3", "--backoff", "0.1"]);
    assert_eq!(rc, 0, "{err}");
    let ev = events(&out);
    assert_eq!(count(&ev, "failed"), 2, "two retries: {ev:#?}");
    assert_eq!(count(&ev, "quarantined"), 1);
    assert!(err.contains("bad.svs"), "failures are reported: {err}");
    // Each failure carries the error's kind as well as its message, in the journal and the queue.
    for e in ev
        .iter()
        .filter(|e| matches!(e["event"].as_str(), Some("failed" | "quarantined")))
    {
        assert_eq!(e["kind"], "not_a_slide", "{e}");
    }
    let mut states = queue_states(&out);
    states.sort();
    assert_eq!(states[0].0, "done");
    assert!(states[0].1.ends_with("good.svs"));
    assert_eq!(states[1].0, "quarantined");
    assert_eq!(valid_outputs(&out, "good.svs"), 1);
    assert_eq!(
        valid_outputs(&out, "bad.svs"),
        0,
        "no output for a failed slide"
    );
    assert_eq!(snapshot(&inbox), before, "the inbox is never modified");

    // An operator puts it back; it fails the same way, and `forget` removes it.
    let list = tessera_str(&["queue", "--out", out.to_str().unwrap(), "list"]);
    let id = String::from_utf8_lossy(&list.stdout)
        .lines()
        .find(|l| l.contains("bad.svs"))
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap();
    assert!(
        String::from_utf8_lossy(&list.stdout)
            .lines()
            .any(|l| l.contains("bad.svs") && l.contains(" not_a_slide ")),
        "queue list shows the kind: {}",
        String::from_utf8_lossy(&list.stdout)
    );
    let o = tessera_str(&["queue", "--out", out.to_str().unwrap(), "retry", &id]);
    assert_eq!(code(&o), 0);
    assert!(queue_states(&out).iter().any(|(s, _)| s == "stable"));
    let o = tessera_str(&["queue", "--out", out.to_str().unwrap(), "forget", &id]);
    assert_eq!(code(&o), 0);
    assert_eq!(queue_states(&out).len(), 1);
    let o = tessera_str(&["queue", "--out", out.to_str().unwrap(), "forget", "999"]);
    assert_eq!(code(&o), 3, "an unknown id is an error");
}

#[test]
fn a_replaced_slide_is_analysed_again_and_both_results_are_kept() {
    let a = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let b = require!(data("slides/aperio/small.svs"));
    let t = tempfile::tempdir().unwrap();
    // Spaces and non-ASCII characters in the inbox path.
    let (inbox, out) = (
        t.path().join("scanner inbox/Ölfeld ü"),
        t.path().join("out"),
    );
    std::fs::create_dir_all(&inbox).unwrap();
    let slide = inbox.join("case 1.svs");
    std::fs::copy(&b, &slide).unwrap();
    assert_eq!(once(&inbox, &out, &[]).0, 0);
    // A second pass with nothing new analyses nothing.
    assert_eq!(once(&inbox, &out, &[]).0, 0);
    assert_eq!(count(&events(&out), "analysed"), 1);
    // The scanner rewrites the file: a new version, analysed; the first result stays.
    std::fs::copy(&a, &slide).unwrap();
    assert_eq!(once(&inbox, &out, &[]).0, 0);
    assert_eq!(count(&events(&out), "analysed"), 2);
    assert_eq!(valid_outputs(&out, "case 1.svs"), 2);
    let states = queue_states(&out);
    assert_eq!(states.len(), 2);
    assert!(states.iter().all(|(s, _)| s == "done"));
}

#[test]
fn a_second_service_on_the_same_results_folder_refuses_to_start() {
    let t = tempfile::tempdir().unwrap();
    let (inbox, out) = (t.path().join("inbox"), t.path().join("out"));
    std::fs::create_dir_all(&inbox).unwrap();
    let mut first = spawn(&inbox, &out, &[]);
    wait_for("the first service", Duration::from_secs(60), || {
        count(&events(&out), "started") == 1
    });
    let (rc, err) = once(&inbox, &out, &[]);
    assert_eq!(rc, 3);
    assert!(err.contains("another tessera watch"), "{err}");
    sigterm(&first);
    assert!(first.wait().unwrap().success());
    // Once the first has stopped, a new one may start.
    assert_eq!(once(&inbox, &out, &[]).0, 0);
}

#[test]
fn sigterm_during_a_slide_finishes_it_and_leaves_a_consistent_queue() {
    let src = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let t = tempfile::tempdir().unwrap();
    let (inbox, out) = (t.path().join("inbox"), t.path().join("out"));
    std::fs::create_dir_all(&inbox).unwrap();
    for n in ["a.svs", "b.svs"] {
        std::fs::copy(&src, inbox.join(n)).unwrap();
    }
    let mut service = spawn(&inbox, &out, &["--settle", "0"]);
    wait_for("a slide to start", Duration::from_secs(120), || {
        count(&events(&out), "running") == 1
    });
    sigterm(&service);
    assert!(service.wait().unwrap().success());
    let ev = events(&out);
    assert_eq!(
        count(&ev, "analysed"),
        1,
        "the slide under way is finished: {ev:#?}"
    );
    let states: Vec<String> = queue_states(&out).into_iter().map(|(s, _)| s).collect();
    assert!(!states.contains(&"running".to_string()), "{states:?}");
    assert!(states.contains(&"done".to_string()), "{states:?}");
    // A restart finishes the rest.
    assert_eq!(once(&inbox, &out, &[]).0, 0);
    assert_eq!(count(&events(&out), "analysed"), 2);
}

#[test]
fn killed_at_random_moments_fifty_times_every_slide_is_done_exactly_once() {
    let src = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let tiny = require!(data("slides/aperio/small.svs"));
    let t = tempfile::tempdir().unwrap();
    let (inbox, out) = (t.path().join("inbox"), t.path().join("out"));
    std::fs::create_dir_all(inbox.join("sub")).unwrap();
    // Three quick slides first in the queue, then eight that take seconds each, so that most
    // rounds find work under way.
    for n in ["a.svs", "b.svs", "c.svs"] {
        std::fs::copy(&tiny, inbox.join(n)).unwrap();
    }
    for n in [
        "d.svs",
        "e.svs",
        "f.svs",
        "g.svs",
        "h.svs",
        "sub/i.svs",
        "sub/j.svs",
        "sub/k.svs",
    ] {
        std::fs::copy(&src, inbox.join(n)).unwrap();
    }
    let names = [
        "a.svs", "b.svs", "c.svs", "d.svs", "e.svs", "f.svs", "g.svs", "h.svs", "i.svs", "j.svs",
        "k.svs",
    ];
    // A fixed pseudo-random schedule (xorshift), so a failure can be replayed.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let rounds = 50;
    let mut killed_while_running = 0;
    let mut orphans = 0;
    for _ in 0..rounds {
        // Each finished analysis pauses 500 ms before the queue records it, so that some kills
        // land between the output appearing and the queue knowing.
        let mut service = spawn_env(
            &inbox,
            &out,
            &["--once", "--settle", "0"],
            &[("TESSERA_WATCH_TEST_PAUSE_MS", "500")],
        );
        let delay = Duration::from_millis(next() % 6000);
        let t0 = Instant::now();
        while t0.elapsed() < delay && service.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = service.kill(); // SIGKILL
        let _ = service.wait();
        // Its worker process dies with it (the kernel kills it), so no orphan goes on
        // writing outputs for a slide the next start queues again.
        let t1 = Instant::now();
        while !workers_of(&out).is_empty() && t1.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        orphans += workers_of(&out).len();
        let ev = events(&out);
        if ev.last().is_some_and(|e| e["event"] == "running") {
            killed_while_running += 1;
        }
    }
    let during = events(&out);
    let (analysed_during, recovered_done) = (
        count(&during, "analysed"),
        during
            .iter()
            .filter(|e| e["event"] == "recovered" && e["state"] == "done")
            .count(),
    );
    // Then let it finish.
    let (rc, err) = once(&inbox, &out, &[]);
    assert_eq!(rc, 0, "{err}");
    let ev = events(&out);
    let mut lost = 0;
    let mut duplicated = 0;
    for n in names {
        let analysed = ev
            .iter()
            .filter(|e| e["event"] == "analysed" && e["path"].as_str().unwrap().ends_with(n))
            .count();
        let recovered = ev
            .iter()
            .filter(|e| {
                e["event"] == "recovered"
                    && e["state"] == "done"
                    && e["path"].as_str().unwrap().ends_with(n)
            })
            .count();
        if analysed > 1 {
            duplicated += 1;
        }
        if analysed + recovered == 0 || valid_outputs(&out, n) != 1 {
            lost += 1;
        }
    }
    let states = queue_states(&out);
    eprintln!(
        "fault injection: {rounds} SIGKILL rounds ({killed_while_running} during an analysis), \
         {} slides, {lost} lost, {duplicated} analysed twice, {orphans} orphaned workers; {analysed_during} analyses \
         completed between kills, {recovered_done} found complete after a kill, {} starts",
        names.len(),
        count(&ev, "started")
    );
    assert_eq!((lost, duplicated, orphans), (0, 0, 0));
    assert_eq!(states.len(), names.len());
    assert!(states.iter().all(|(s, _)| s == "done"), "{states:?}");
    // No temporary folder of a killed run is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("tmp-tessera"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(
        killed_while_running > 0,
        "the schedule never hit an analysis"
    );
}

#[test]
fn a_slide_that_crashes_its_worker_is_quarantined_and_the_service_goes_on() {
    let src = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let t = tempfile::tempdir().unwrap();
    let (inbox, out) = (t.path().join("inbox"), t.path().join("out"));
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::copy(&src, inbox.join("crashes.svs")).unwrap();
    std::fs::copy(&src, inbox.join("fine.svs")).unwrap();
    // The worker process aborts (SIGABRT, as a native crash would) on the first slide.
    let o = spawn_env(
        &inbox,
        &out,
        &[
            "--once",
            "--settle",
            "0",
            "--backoff",
            "0",
            "--attempts",
            "2",
        ],
        &[("TESSERA_WATCH_TEST_CRASH", "crashes")],
    )
    .wait_with_output()
    .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let ev = events(&out);
    let failures: Vec<&Value> = ev
        .iter()
        .filter(|e| matches!(e["event"].as_str(), Some("failed" | "quarantined")))
        .collect();
    assert_eq!(failures.len(), 2, "{ev:#?}");
    assert_eq!(failures[1]["event"], "quarantined");
    for f in &failures {
        let msg = f["error"].as_str().unwrap();
        assert!(msg.contains("crashes.svs"), "{msg}");
        assert!(msg.contains("worker process died"), "{msg}");
        assert!(msg.contains("signal 6"), "{msg}");
        assert_eq!(f["kind"], "worker_died", "{f}");
    }
    assert_eq!(
        count(&ev, "started"),
        1,
        "the service itself never restarted"
    );
    assert_eq!(valid_outputs(&out, "fine.svs"), 1);
    assert_eq!(valid_outputs(&out, "crashes.svs"), 0);
    let mut states = queue_states(&out);
    states.sort();
    assert_eq!(
        states.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
        ["done", "quarantined"]
    );
}

#[test]
fn filesystem_events_find_a_new_slide_without_waiting_for_the_rescan() {
    let src = require!(data("slides/aperio/small.svs"));
    let t = tempfile::tempdir().unwrap();
    let (inbox, out) = (t.path().join("inbox"), t.path().join("out"));
    std::fs::create_dir_all(inbox.join("deeper/still")).unwrap();
    // An hour between rescans: after the first (empty) scan only an event can find the slide.
    let mut service = spawn(&inbox, &out, &["--settle", "0.5", "--rescan", "3600"]);
    wait_for("the service to start", Duration::from_secs(60), || {
        count(&events(&out), "started") == 1
    });
    std::thread::sleep(Duration::from_millis(300));
    std::fs::copy(&src, inbox.join("deeper/still/new.svs")).unwrap();
    wait_for("the slide to be analysed", Duration::from_secs(120), || {
        count(&events(&out), "analysed") == 1
    });
    sigterm(&service);
    assert!(service.wait().unwrap().success());
    let started = events(&out)
        .into_iter()
        .find(|e| e["event"] == "started")
        .unwrap();
    assert_eq!(started["events"], "on");
    assert_eq!(valid_outputs(&out, "new.svs"), 1);
}

#[test]
fn with_events_off_the_rescan_still_finds_new_slides() {
    let src = require!(data("slides/aperio/small.svs"));
    let t = tempfile::tempdir().unwrap();
    let (inbox, out) = (t.path().join("inbox"), t.path().join("out"));
    std::fs::create_dir_all(&inbox).unwrap();
    let mut service = spawn(&inbox, &out, &["--settle", "0.3", "--events", "off"]);
    wait_for("the service to start", Duration::from_secs(60), || {
        count(&events(&out), "started") == 1
    });
    std::fs::copy(&src, inbox.join("later.svs")).unwrap();
    wait_for("the slide to be analysed", Duration::from_secs(120), || {
        count(&events(&out), "analysed") == 1
    });
    sigterm(&service);
    assert!(service.wait().unwrap().success());
    let started = events(&out)
        .into_iter()
        .find(|e| e["event"] == "started")
        .unwrap();
    assert_eq!(started["events"], "off");
}

#[test]
fn a_done_marker_glob_holds_a_slide_until_the_scanner_writes_it() {
    let src = require!(data("slides/aperio/small.svs"));
    let t = tempfile::tempdir().unwrap();
    let (inbox, out) = (t.path().join("inbox"), t.path().join("out"));
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::copy(&src, inbox.join("scan 1.svs")).unwrap();
    let marker = ["--done-marker", "{stem}.done"];
    let (rc, err) = once(&inbox, &out, &marker);
    assert_eq!(rc, 0, "{err}");
    let ev = events(&out);
    assert_eq!(count(&ev, "queued"), 0, "{ev:#?}");
    let waiting = ev.iter().find(|e| e["event"] == "waiting").unwrap();
    assert!(waiting["reason"].as_str().unwrap().contains("done-marker"));
    // A marker for another slide does not count; this slide's does.
    std::fs::write(inbox.join("scan 2.done"), b"").unwrap();
    assert_eq!(once(&inbox, &out, &marker).0, 0);
    assert_eq!(count(&events(&out), "analysed"), 0);
    std::fs::write(inbox.join("scan 1.done"), b"").unwrap();
    assert_eq!(once(&inbox, &out, &marker).0, 0);
    assert_eq!(count(&events(&out), "analysed"), 1);
    assert_eq!(valid_outputs(&out, "scan 1.svs"), 1);
    // A glob that cannot be valid is refused before anything starts.
    let (rc, err) = once(&inbox, &out, &["--done-marker", "../x"]);
    assert_eq!(rc, 3, "{err}");
    assert!(err.contains("done-marker"), "{err}");
}

#[test]
fn metrics_and_health_are_served_on_loopback_while_several_workers_run() {
    let src = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let t = tempfile::tempdir().unwrap();
    let (inbox, out) = (t.path().join("inbox"), t.path().join("out"));
    std::fs::create_dir_all(&inbox).unwrap();
    for n in ["a.svs", "b.svs", "c.svs", "d.svs"] {
        std::fs::copy(&src, inbox.join(n)).unwrap();
    }
    std::fs::write(inbox.join("broken.svs"), b"not a slide at all").unwrap();
    let mut service = spawn(
        &inbox,
        &out,
        &[
            "--settle",
            "0",
            "--workers",
            "3",
            "--http",
            "127.0.0.1:0",
            "--backoff",
            "0",
            "--attempts",
            "1",
        ],
    );
    let mut addr = String::new();
    wait_for("the service to start", Duration::from_secs(60), || {
        let ev = events(&out);
        match ev.iter().find(|e| e["event"] == "started") {
            Some(e) => {
                addr = e["http"].as_str().unwrap().to_string();
                true
            }
            None => false,
        }
    });
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert_eq!(http_get(&addr, "/healthz"), (200, "ok\n".into()));
    wait_for(
        "every slide to be settled",
        Duration::from_secs(300),
        || {
            let ev = events(&out);
            count(&ev, "analysed") == 4 && count(&ev, "quarantined") == 1 && count(&ev, "qc") == 4
        },
    );
    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    for line in [
        "tessera_watch_queue_slides{state=\"done\"} 4",
        "tessera_watch_queue_slides{state=\"quarantined\"} 1",
        "tessera_watch_queue_slides{state=\"running\"} 0",
        "tessera_watch_slides_done_total 4",
        "tessera_watch_slides_failed_total 1",
        "tessera_watch_slides_quarantined_total 1",
        "tessera_watch_workers 3",
        "tessera_watch_qc_slides{verdict=\"pass\"} 4",
        "tessera_watch_qc_slides{verdict=\"rescan\"} 0",
        "# TYPE tessera_watch_patches_total counter",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "{line} missing from:\n{body}"
        );
    }
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(value("tessera_watch_patches_total"), 4.0 * 43.0);
    assert!(value("tessera_watch_patches_per_second") > 0.0);
    assert!(value("tessera_watch_last_success_timestamp_seconds") > 1.7e9);
    assert_eq!(http_get(&addr, "/nothing").0, 404);
    sigterm(&service);
    assert!(service.wait().unwrap().success());
    // Each slide was analysed once, and more than one worker took part.
    let ev = events(&out);
    let workers: std::collections::BTreeSet<u64> = ev
        .iter()
        .filter(|e| e["event"] == "running")
        .map(|e| e["worker"].as_u64().unwrap())
        .collect();
    assert!(workers.len() > 1, "{workers:?}");
    for n in ["a.svs", "b.svs", "c.svs", "d.svs"] {
        assert_eq!(valid_outputs(&out, n), 1, "{n}");
    }
    assert!(
        workers_of(&out).is_empty(),
        "worker processes left after the service stopped"
    );
}

#[test]
fn a_hung_analysis_is_stopped_at_the_slide_timeout_and_quarantined() {
    let src = require!(data("slides/aperio/small.svs"));
    let t = tempfile::tempdir().unwrap();
    let (inbox, out) = (t.path().join("inbox"), t.path().join("out"));
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::copy(&src, inbox.join("hangs.svs")).unwrap();
    std::fs::copy(&src, inbox.join("fine.svs")).unwrap();
    let o = spawn_env(
        &inbox,
        &out,
        &[
            "--once",
            "--settle",
            "0",
            "--attempts",
            "1",
            "--slide-timeout",
            "3",
        ],
        &[("TESSERA_WATCH_TEST_HANG", "hangs")],
    )
    .wait_with_output()
    .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let ev = events(&out);
    let q = ev
        .iter()
        .find(|e| e["event"] == "quarantined")
        .expect("quarantined");
    let msg = q["error"].as_str().unwrap();
    assert!(
        msg.contains("hangs.svs") && msg.contains("longer than 3 s"),
        "{msg}"
    );
    assert_eq!(valid_outputs(&out, "fine.svs"), 1);
    assert!(workers_of(&out).is_empty(), "the hung worker was stopped");
}

#[test]
fn a_rescan_verdict_acts_once_per_slide_through_sigkills() {
    // small.svs has no tissue: QC says rescan. CMU-1 passes.
    let tiny = require!(data("slides/aperio/small.svs"));
    let src = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let t = tempfile::tempdir().unwrap();
    let (inbox, out, marks) = (
        t.path().join("inbox"),
        t.path().join("out"),
        t.path().join("rescan"),
    );
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::copy(&tiny, inbox.join("blank.svs")).unwrap();
    std::fs::copy(&src, inbox.join("good.svs")).unwrap();
    let log = t.path().join("actions.log");
    let started = t.path().join("started");
    // The command notes that it started, takes a while, then appends its id.
    let cmd = format!(
        "touch '{}'; sleep 2; echo \"$TESSERA_ACTION_ID $TESSERA_VERDICT\" >> '{}'",
        started.display(),
        log.display()
    );
    let args = [
        "--once",
        "--settle",
        "0",
        "--rescan-marker",
        marks.to_str().unwrap(),
        "--on-rescan",
        &cmd,
    ];
    // 1. Killed after blank.svs's outputs are complete but before the queue records it.
    let mut service = spawn_env(
        &inbox,
        &out,
        &args,
        &[("TESSERA_WATCH_TEST_PAUSE_MS", "4000")],
    );
    let blank_done = || {
        std::fs::read_dir(&out).is_ok_and(|d| {
            d.filter_map(|e| e.ok()).any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("blank.svs-") && e.path().join("result.json").is_file()
            })
        })
    };
    wait_for("blank.svs's outputs", Duration::from_secs(60), blank_done);
    let _ = service.kill();
    let _ = service.wait();
    assert!(
        !log.exists() && !started.exists(),
        "the action ran before the verdict was recorded"
    );
    // 2. Restarted: the verdict is recorded from the results and the action starts; killed
    // while its command runs.
    let mut service = spawn(&inbox, &out, &args);
    wait_for(
        "the rescan command to start",
        Duration::from_secs(60),
        || started.exists(),
    );
    let _ = service.kill();
    let _ = service.wait();
    // 3. Restarted to the end: the interrupted command is not run again; the first one
    // finishes on its own.
    let (rc, err) = once(&inbox, &out, &args[3..]);
    assert_eq!(rc, 0, "{err}");
    wait_for(
        "the first command to finish",
        Duration::from_secs(10),
        || log.exists(),
    );
    std::thread::sleep(Duration::from_millis(2500));
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "the command ran {} times: {lines:?}",
        lines.len()
    );
    assert!(lines[0].ends_with(" rescan"));
    let markers: Vec<_> = std::fs::read_dir(&marks)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(markers.len(), 1, "{markers:?}");
    assert!(markers[0].starts_with("blank.svs-") && markers[0].ends_with(".rescan.json"));
    let m: Value =
        serde_json::from_slice(&std::fs::read(marks.join(&markers[0])).unwrap()).unwrap();
    assert!(
        m["reasons"][0].as_str().unwrap().contains("no tissue"),
        "{m}"
    );
    let ev = events(&out);
    assert_eq!(count(&ev, "qc"), 2, "one verdict per slide");
    assert!(ev.iter().any(|e| e["event"] == "rescan_action"
        && e["command"]
            .as_str()
            .is_some_and(|c| c.starts_with("not run again"))));
    // The queue shows each verdict; the pass has no action.
    let o = tessera_str(&["queue", "--out", out.to_str().unwrap(), "list"]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        text.lines()
            .any(|l| l.contains("blank.svs") && l.contains(" rescan/done ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("good.svs") && l.contains(" pass ")),
        "{text}"
    );
}
