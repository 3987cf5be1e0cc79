//! A small headless-Chromium driver over the DevTools protocol, for the report and viewer tests: it
//! records every request a page makes, every console error, exception and failed load, and
//! takes full-page screenshots.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use crate::util::skip;

/// Chromium, or a printed skip (a failure under CI).
pub fn chromium() -> Option<PathBuf> {
    let found = tessera::report::pdf::find_chromium();
    if found.is_none() {
        skip("Chromium is not installed (apt-get install chromium)");
    }
    found
}

/// A running headless Chromium with one DevTools connection.
pub struct Browser {
    child: Child,
    ws: WebSocket<TcpStream>,
    id: u64,
    events: Vec<Value>,
    _profile: tempfile::TempDir,
}

/// What a visit saw.
pub struct Visit {
    /// The DevTools session of the page's tab.
    pub session: String,
    /// Every URL the page requested (the document included).
    pub requests: Vec<String>,
    /// Console errors, uncaught exceptions, error log entries and failed loads.
    pub errors: Vec<String>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Starts Chromium with a fresh profile, no network services, and every host name but
    /// 127.0.0.1 (the viewer tests' server) unresolvable (nothing can leave the machine even if
    /// a page tried).
    pub fn start(exe: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(exe)
            .args(tessera::report::pdf::HEADLESS_FLAGS)
            .args([
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let port_file = profile.path().join("DevToolsActivePort");
        let started = Instant::now();
        let text = loop {
            if let Ok(t) = std::fs::read_to_string(&port_file) {
                if t.lines().count() >= 2 {
                    break t;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "Chromium did not open its DevTools port within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut lines = text.lines();
        let port: u16 = lines.next().unwrap().trim().parse().unwrap();
        let path = lines.next().unwrap().trim().to_string();
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let (ws, _) = tungstenite::client(format!("ws://127.0.0.1:{port}{path}"), stream)
            .expect("DevTools websocket");
        Browser {
            child,
            ws,
            id: 0,
            events: Vec::new(),
            _profile: profile,
        }
    }

    fn read(&mut self) -> Value {
        loop {
            match self.ws.read().expect("a DevTools message within 60 s") {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                _ => continue,
            }
        }
    }

    /// Calls `method` (in `session`, or on the browser) and returns its result.
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.id += 1;
        let id = self.id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        self.ws.send(Message::Text(msg.to_string().into())).unwrap();
        loop {
            let v = self.read();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
            self.events.push(v);
        }
    }

    fn wait_event(&mut self, session: &str, method: &str) {
        if self
            .events
            .iter()
            .any(|e| e["method"] == method && e["sessionId"] == session)
        {
            return;
        }
        loop {
            let v = self.read();
            let hit = v["method"] == method && v["sessionId"] == session;
            self.events.push(v);
            if hit {
                return;
            }
        }
    }

    /// Opens `url` in a new tab `width` CSS pixels wide and waits for its load event.
    pub fn visit(&mut self, url: &str, width: u32) -> Visit {
        let target = self.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        let session = attached["sessionId"].as_str().unwrap().to_string();
        let s = Some(session.as_str());
        for domain in ["Page", "Network", "Runtime", "Log"] {
            self.call(s, &format!("{domain}.enable"), json!({}));
        }
        self.call(
            s,
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": 1200, "deviceScaleFactor": 1, "mobile": false}),
        );
        self.events.clear();
        self.call(s, "Page.navigate", json!({"url": url}));
        self.wait_event(&session, "Page.loadEventFired");
        // Let late events (errors logged after load) arrive.
        self.eval(&session, "new Promise(r => setTimeout(() => r(true), 300))");
        let (requests, errors) = self.seen(&session);
        Visit {
            session,
            requests,
            errors,
        }
    }

    /// Every request and every error of `session` since its navigation (events read so far).
    pub fn seen(&self, session: &str) -> (Vec<String>, Vec<String>) {
        let mut requests = Vec::new();
        let mut errors = Vec::new();
        for e in self.events.iter().filter(|e| e["sessionId"] == session) {
            let p = &e["params"];
            match e["method"].as_str().unwrap_or("") {
                "Network.requestWillBeSent" => {
                    requests.push(p["request"]["url"].as_str().unwrap_or("").to_string())
                }
                "Network.loadingFailed" => errors.push(format!("load failed: {p}")),
                "Runtime.exceptionThrown" => errors.push(format!("exception: {p}")),
                "Runtime.consoleAPICalled"
                    if matches!(p["type"].as_str(), Some("error" | "assert")) =>
                {
                    errors.push(format!("console: {}", p["args"]))
                }
                "Log.entryAdded" if p["entry"]["level"] == "error" => {
                    errors.push(format!("log: {}", p["entry"]))
                }
                _ => {}
            }
        }
        (requests, errors)
    }

    /// Evaluates `expr` (awaiting promises) in the page and returns its value.
    pub fn eval(&mut self, session: &str, expr: &str) -> Value {
        let r = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expr}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// A full-page PNG screenshot, also written to `target/tmp/screens/<name>.png` so that a
    /// person can look at it.
    pub fn screenshot(&mut self, session: &str, name: &str) -> image::RgbImage {
        let s = Some(session);
        let m = self.call(s, "Page.getLayoutMetrics", json!({}));
        let (w, h) = (
            m["cssContentSize"]["width"].as_f64().unwrap().ceil(),
            m["cssContentSize"]["height"].as_f64().unwrap().ceil(),
        );
        self.call(
            s,
            "Emulation.setDeviceMetricsOverride",
            json!({"width": w as u32, "height": h as u32, "deviceScaleFactor": 1, "mobile": false}),
        );
        let shot = self.call(s, "Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screens");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &png).unwrap();
        eprintln!("screenshot: {}", path.display());
        image::load_from_memory(&png).unwrap().to_rgb8()
    }
}

/// Requests outside `folder` (other than inline `data:` URIs).
pub fn outside(requests: &[String], folder: &Path) -> Vec<String> {
    let base = tessera::report::pdf::file_url(folder).unwrap() + "/";
    requests
        .iter()
        .filter(|u| !u.starts_with(&base) && !u.starts_with("data:"))
        .cloned()
        .collect()
}
