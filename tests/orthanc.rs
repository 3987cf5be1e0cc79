//! A real Orthanc (Debian's `orthanc` with its `orthanc-dicomweb` plugin) started by a test as
//! a plain process: a free loopback port, a temporary storage folder and configuration, no DICOM
//! port; stopped when dropped. Skips (fails under CI) when Orthanc or the plugin is absent.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;

use crate::util::skip;

const PLUGIN: &str = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so";

pub struct Orthanc {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Basic-authentication user and password, when the server wants them.
    auth: Option<(String, String)>,
}

/// A loopback port nothing listens on (free when asked).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn binary() -> Option<PathBuf> {
    ["/usr/sbin/Orthanc", "/usr/bin/Orthanc"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Orthanc {
    /// Starts Orthanc with the DICOMweb plugin; `users` turns authentication on.
    pub fn start(users: Option<(&str, &str)>) -> Option<Orthanc> {
        let Some(bin) = binary() else {
            skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)");
            return None;
        };
        if !Path::new(PLUGIN).exists() {
            skip("Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cfg = serde_json::json!({
            "Name": "tessera-test",
            "StorageDirectory": dir.path().join("db"),
            "IndexDirectory": dir.path().join("db"),
            "HttpPort": port,
            "DicomServerEnabled": false,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": users.is_some(),
            "Plugins": [PLUGIN],
            "DicomWeb": {"Enable": true, "Root": "/dicom-web/",
                         "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        });
        if let Some((u, p)) = users {
            cfg["RegisteredUsers"] = serde_json::json!({ u: p });
        }
        let cfg_path = dir.path().join("orthanc.json");
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        let log = std::fs::File::create(dir.path().join("orthanc.log")).unwrap();
        let child = Command::new(bin)
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start Orthanc");
        let mut o = Orthanc {
            child,
            port,
            dir,
            auth: users.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = o.child.try_wait() {
                panic!("Orthanc exited ({status}): {}", o.log());
            }
            if o.get(&format!("http://127.0.0.1:{port}/system")).0 > 0 {
                return Some(o);
            }
            if Instant::now() > deadline {
                panic!("Orthanc did not start: {}", o.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("orthanc.log")).unwrap_or_default()
    }

    /// The DICOMweb root, `http://127.0.0.1:PORT/dicom-web`.
    pub fn dicomweb(&self) -> String {
        format!("http://127.0.0.1:{}/dicom-web", self.port)
    }

    /// `dicomweb+http://…/studies/STUDY[/series/SERIES]`.
    pub fn slide_url(&self, study: &str, series: Option<&str>) -> String {
        let mut u = format!("dicomweb+{}/studies/{study}", self.dicomweb());
        if let Some(s) = series {
            u.push_str(&format!("/series/{s}"));
        }
        u
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .build()
            .new_agent()
    }

    fn auth_header(&self) -> Option<String> {
        self.auth.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
    }

    /// GET with the server's credentials: the status (0 when unreachable) and the body.
    pub fn get(&self, url: &str) -> (u16, Vec<u8>) {
        let mut req = Self::agent().get(url);
        if let Some(a) = self.auth_header() {
            req = req.header("Authorization", a);
        }
        match req.call() {
            Ok(mut r) => (
                r.status().as_u16(),
                r.body_mut().read_to_vec().unwrap_or_default(),
            ),
            Err(_) => (0, Vec::new()),
        }
    }

    /// GETs a REST path (`/series`) as JSON.
    pub fn rest(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(&format!("http://127.0.0.1:{}{path}", self.port));
        assert_eq!(
            status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).unwrap()
    }

    fn post(&self, path: &str, body: &[u8]) -> serde_json::Value {
        let mut req = Self::agent().post(&format!("http://127.0.0.1:{}{path}", self.port));
        if let Some(a) = self.auth_header() {
            req = req.header("Authorization", a);
        }
        let mut r = req.send(body).expect("POST to Orthanc");
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        assert_eq!(status, 200, "POST {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Stores one DICOM file.
    pub fn upload(&self, file: &Path) {
        self.post("/instances", &std::fs::read(file).unwrap());
    }

    /// Stores every `.dcm` file of a folder.
    pub fn upload_dir(&self, dir: &Path) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "dcm") {
                self.upload(&p);
            }
        }
    }

    /// Creates an instance from tags with Orthanc's own `/tools/create-dicom` (a secondary
    /// capture, not a slide); its Study and Series Instance UIDs.
    pub fn create_dicom(&self, tags: serde_json::Value) -> (String, String) {
        let made = self.post(
            "/tools/create-dicom",
            serde_json::to_string(&serde_json::json!({ "Tags": tags }))
                .unwrap()
                .as_bytes(),
        );
        let id = made["ID"].as_str().unwrap();
        let tags = self.rest(&format!("/instances/{id}/tags?simplify"));
        (
            tags["StudyInstanceUID"].as_str().unwrap().to_string(),
            tags["SeriesInstanceUID"].as_str().unwrap().to_string(),
        )
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
