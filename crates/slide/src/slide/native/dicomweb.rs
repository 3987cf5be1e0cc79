//! A DICOM WSI series read from an archive (PACS, vendor-neutral archive) over DICOMweb, frame by
//! frame, without copying the slide.
//!
//! In: a URL `dicomweb+http[s]://HOST/PATH/studies/STUDY[/series/SERIES]` and a
//! [`DicomWebConfig`] (credentials, CA file, timeout, retries, batching). Out: the series'
//! instances as [`RemoteMeta`] (QIDO-RS finds the slide microscopy series when the URL names
//! none; WADO-RS `…/metadata` gives every instance's attributes as DICOM JSON), each with a
//! [`RemoteInstance`] that fetches frames on demand with WADO-RS frame retrieval
//! (`…/instances/SOP/frames/5,6,7`, in the stored transfer syntax). A request asks for the frame
//! wanted and the frames after it, which a sweep of the slide reads next; those wait, until read
//! once, in a byte-bounded buffer per instance. [`super::dicom`] assembles the instances into
//! levels exactly as it does files, and decoded tiles go to the reader's tile cache.
//! Coordinates: frame numbers only (1-based on the wire, 0-based in this module's API).
//!
//! Credentials come from the configuration only: a URL carrying `user:password@` is refused, so
//! that URLs, which reach logs, errors and result.json, never hold them. Transient failures (no
//! connection, timeouts, HTTP 408, 429, 500, 502, 503, 504) are retried with a doubling pause;
//! the rest fail at once with [`Error::Remote`] naming the URL and the status.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Duration;

use dicom_object::InMemDicomObject;
use sha2::{Digest, Sha256};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use crate::config::{DicomWebAuth, DicomWebConfig};
use crate::error::{Error, Result};

/// The prefix that marks a slide as a DICOMweb series rather than a file.
pub const SCHEME: &str = "dicomweb+";

/// Deepest nesting of sequences read from DICOM JSON.
const MAX_JSON_DEPTH: usize = 32;
/// Most instances in one series.
const MAX_INSTANCES: usize = 10_000;

/// What asking for frames accepts: any stored transfer syntax, as is.
const ACCEPT_FRAMES: &str =
    "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*";
const ACCEPT_JSON: &str = "application/dicom+json";

/// True for a path that is a DICOMweb URL (`dicomweb+http://` or `dicomweb+https://`).
pub fn is_url(path: &Path) -> bool {
    path.to_str()
        .is_some_and(|s| s.starts_with("dicomweb+http://") || s.starts_with("dicomweb+https://"))
}

/// Where a series is: the server's DICOMweb root and the study (and series) UIDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The DICOMweb root, e.g. `http://pacs:8042/dicom-web`.
    pub base: String,
    /// Study Instance UID.
    pub study: String,
    /// Series Instance UID, when the URL names one.
    pub series: Option<String>,
}

fn is_uid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Parses `dicomweb+http[s]://HOST[:PORT]/PATH/studies/UID[/series/UID]`.
pub fn parse_url(url: &str) -> std::result::Result<Location, String> {
    let rest = url
        .strip_prefix(SCHEME)
        .ok_or("a DICOMweb slide starts with dicomweb+http:// or dicomweb+https://")?;
    let (scheme, after) = rest.split_once("://").ok_or("no :// after the scheme")?;
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "scheme dicomweb+{scheme} (use dicomweb+http or dicomweb+https)"
        ));
    }
    let authority = after.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err(
            "credentials in the URL are refused (they would reach logs and \
                    result.json): give them with --dicomweb-user and TESSERA_DICOMWEB_PASSWORD, \
                    or a bearer token"
                .into(),
        );
    }
    if authority.is_empty() {
        return Err("no host".into());
    }
    if after.contains(['?', '#']) {
        return Err("a query or fragment in a series URL".into());
    }
    let (base, tail) = rest
        .rsplit_once("/studies/")
        .ok_or("no /studies/STUDY_UID in the URL")?;
    let parts: Vec<&str> = tail.trim_end_matches('/').split('/').collect();
    let (study, series) = match parts[..] {
        [study] => (study, None),
        [study, "series", series] => (study, Some(series)),
        _ => {
            return Err(
                "expected …/studies/STUDY_UID or …/studies/STUDY_UID/series/SERIES_UID".into(),
            )
        }
    };
    for uid in std::iter::once(study).chain(series) {
        if !is_uid(uid) {
            return Err(format!("{uid:?} is not a DICOM UID"));
        }
    }
    Ok(Location {
        base: base.trim_end_matches('/').to_string(),
        study: study.into(),
        series: series.map(String::from),
    })
}

/// Why one request failed.
struct Failure {
    status: Option<u16>,
    message: String,
    transient: bool,
}

impl Failure {
    /// The server answered `status` (not 200): transient for 408, 429, 500, 502, 503, 504.
    fn status(status: u16, reason: &str, hint: &str) -> Failure {
        Failure {
            status: Some(status),
            message: format!("HTTP {status} {reason}{hint}"),
            transient: matches!(status, 408 | 429 | 500 | 502 | 503 | 504),
        }
    }
}

/// An HTTP client for one server: TLS roots, credentials, timeouts and retries.
pub(crate) struct Client {
    agent: ureq::Agent,
    auth: Option<String>,
    retries: u32,
    batch: u64,
    buffer_bytes: u64,
    /// The answer caps of [`DicomWebConfig`].
    max_query_bytes: u64,
    max_metadata_bytes: u64,
    max_frames_bytes: u64,
    max_frame_bytes: u64,
}

impl Client {
    pub(crate) fn new(cfg: &DicomWebConfig) -> Result<Client> {
        let mut roots: Vec<Certificate<'static>> = rustls_native_certs::load_native_certs()
            .certs
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| Error::from_io(ca, e))?;
            let before = roots.len();
            for item in ureq::tls::parse_pem(&pem) {
                match item {
                    Ok(PemItem::Certificate(c)) => roots.push(c),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(Error::Corrupt {
                            path: ca.clone(),
                            format: "PEM".into(),
                            backend: "the DICOMweb client".into(),
                            message: e.to_string(),
                        })
                    }
                }
            }
            if roots.len() == before {
                return Err(Error::Corrupt {
                    path: ca.clone(),
                    format: "PEM".into(),
                    backend: "the DICOMweb client".into(),
                    message: "no certificate in the CA file".into(),
                });
            }
        }
        let tls = TlsConfig::builder()
            .root_certs(if roots.is_empty() {
                RootCerts::WebPki
            } else {
                RootCerts::new_with_certs(&roots)
            })
            .build();
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.timeout))
            .http_status_as_error(false)
            // An archive inside the hospital is reached directly, never through a proxy.
            .proxy(None)
            .tls_config(tls)
            .user_agent(format!("tessera/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        let secret = |file: &Path| -> Result<String> {
            let text = std::fs::read_to_string(file).map_err(|e| Error::from_io(file, e))?;
            Ok(text.lines().next().unwrap_or("").trim().to_string())
        };
        let basic = |user: &str, password: &str| {
            use base64::Engine;
            let pair = format!("{user}:{password}");
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        };
        let auth = match &cfg.auth {
            DicomWebAuth::None => None,
            DicomWebAuth::Basic { user, password } => Some(basic(user, password)),
            DicomWebAuth::BasicPasswordFile { user, file } => Some(basic(user, &secret(file)?)),
            DicomWebAuth::Bearer(token) => Some(format!("Bearer {}", token.trim())),
            DicomWebAuth::BearerFile(file) => Some(format!("Bearer {}", secret(file)?)),
        };
        Ok(Client {
            agent,
            auth,
            retries: cfg.retries,
            batch: cfg.batch_frames.max(1),
            buffer_bytes: cfg.buffer_bytes,
            max_query_bytes: cfg.max_query_bytes,
            max_metadata_bytes: cfg.max_metadata_bytes,
            max_frames_bytes: cfg.max_frames_bytes,
            max_frame_bytes: cfg.max_frame_bytes,
        })
    }

    /// Runs `once` until it succeeds, fails for good, or has been retried `retries` times
    /// after transient failures (a doubling pause from 250 ms); the failure names `url`.
    fn retrying<T>(
        &self,
        url: &str,
        once: impl Fn() -> std::result::Result<T, Failure>,
    ) -> Result<T> {
        let mut attempt = 0u32;
        loop {
            match once() {
                Ok(v) => return Ok(v),
                Err(f) if f.transient && attempt < self.retries => {
                    std::thread::sleep(Duration::from_millis(250 << attempt.min(6)));
                    attempt += 1;
                }
                Err(f) => {
                    return Err(Error::Remote {
                        url: url.into(),
                        status: f.status,
                        message: if attempt > 0 {
                            format!("{} (after {} attempts)", f.message, attempt + 1)
                        } else {
                            f.message
                        },
                    })
                }
            }
        }
    }

    /// GETs `url` accepting `accept`, reading at most `limit` bytes of body: the content type
    /// and the body. Transient failures are retried.
    fn get(&self, url: &str, accept: &str, limit: u64) -> Result<(String, Vec<u8>)> {
        self.retrying(url, || self.get_once(url, accept, limit))
    }

    fn get_once(
        &self,
        url: &str,
        accept: &str,
        limit: u64,
    ) -> std::result::Result<(String, Vec<u8>), Failure> {
        let mut req = self.agent.get(url).header("Accept", accept);
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        let transport = |e: ureq::Error| {
            // A refused certificate comes as invalid data, and trying again will not help.
            let transient = match &e {
                ureq::Error::Io(io) => io.kind() != std::io::ErrorKind::InvalidData,
                ureq::Error::Timeout(_)
                | ureq::Error::ConnectionFailed
                | ureq::Error::Protocol(_) => true,
                _ => false,
            };
            Failure {
                status: None,
                message: match e {
                    ureq::Error::BodyExceedsLimit(n) => {
                        format!("the answer is larger than {n} bytes")
                    }
                    e => e.to_string(),
                },
                transient,
            }
        };
        let mut resp = req.call().map_err(transport)?;
        let status = resp.status().as_u16();
        if status != 200 {
            let reason = resp.status().canonical_reason().unwrap_or("");
            let hint = match status {
                401 => ": the server wants credentials, or refused those given",
                403 => ": these credentials may not read this",
                404 => ": no such study, series or instance on this server",
                406 => ": the server cannot send this in the form asked for",
                _ => "",
            };
            return Err(Failure::status(status, reason, hint));
        }
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(transport)?;
        Ok((content_type, body))
    }

    /// POSTs `body` as `content_type`; transient failures are retried like GETs. The status.
    fn post(&self, url: &str, content_type: &str, body: &[u8]) -> Result<u16> {
        self.retrying(url, || {
            let mut req = self
                .agent
                .post(url)
                .header("Content-Type", content_type)
                .header("Accept", ACCEPT_JSON);
            if let Some(a) = &self.auth {
                req = req.header("Authorization", a);
            }
            match req.send(body) {
                Ok(resp) if resp.status().as_u16() == 200 => Ok(200),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let hint = match status {
                        202 => ": the archive kept some of the objects and refused others",
                        401 => ": the server wants credentials, or refused those given",
                        409 => ": the archive refused the objects",
                        _ => "",
                    };
                    let reason = resp.status().canonical_reason().unwrap_or("");
                    Err(Failure::status(status, reason, hint))
                }
                Err(e) => Err(Failure {
                    status: None,
                    message: e.to_string(),
                    transient: matches!(e, ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed)
                        || matches!(&e, ureq::Error::Io(io)
                        if io.kind() != std::io::ErrorKind::InvalidData),
                }),
            }
        })
    }

    fn json(&self, url: &str, limit: u64) -> Result<serde_json::Value> {
        let (_, body) = self.get(url, ACCEPT_JSON, limit)?;
        if body.is_empty() {
            // Orthanc answers an empty search with an empty body.
            return Ok(serde_json::Value::Array(Vec::new()));
        }
        serde_json::from_slice(&body).map_err(|e| Error::Remote {
            url: url.into(),
            status: Some(200),
            message: format!("the answer is not DICOM JSON: {e}"),
        })
    }
}

/// Frames fetched and not yet read, oldest first.
#[derive(Default)]
struct Buffer {
    frames: HashMap<u64, Vec<u8>>,
    order: VecDeque<u64>,
    bytes: u64,
    in_flight: HashSet<u64>,
    /// A read-ahead request is under way.
    prefetching: bool,
}

impl Buffer {
    fn take(&mut self, k: u64) -> Option<Vec<u8>> {
        let data = self.frames.remove(&k)?;
        self.bytes -= data.len() as u64;
        self.order.retain(|&j| j != k);
        Some(data)
    }

    fn put(&mut self, k: u64, data: Vec<u8>, cap: u64) {
        self.bytes += data.len() as u64;
        if let Some(old) = self.frames.insert(k, data) {
            self.bytes -= old.len() as u64;
        } else {
            self.order.push_back(k);
        }
        while self.bytes > cap {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(d) = self.frames.remove(&oldest) {
                self.bytes -= d.len() as u64;
            }
        }
    }
}

/// One instance on the server, its frames fetched on demand.
pub(crate) struct RemoteInstance {
    client: Arc<Client>,
    /// `…/studies/S/series/S/instances/SOP`.
    url: String,
    frames: u64,
    /// The stored transfer syntax, from the first frames' answer.
    syntax: OnceLock<String>,
    buffer: Mutex<Buffer>,
    arrived: Condvar,
    /// Itself, for the read-ahead thread.
    me: Weak<RemoteInstance>,
}

fn lock(m: &Mutex<Buffer>) -> std::sync::MutexGuard<'_, Buffer> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RemoteInstance {
    /// Up to `n` frames from `from` on (within four batches) that are neither buffered nor
    /// asked for: what the next request should bring.
    fn missing(&self, b: &Buffer, from: u64, n: u64) -> Vec<u64> {
        let end = from.saturating_add(4 * self.client.batch).min(self.frames);
        (from..end)
            .filter(|j| !b.frames.contains_key(j) && !b.in_flight.contains(j))
            .take(n as usize)
            .collect()
    }

    /// Starts fetching in the background when fewer than half a batch of the frames after `k`
    /// are buffered or on their way, so that the network works while the caller decodes. One
    /// read-ahead at a time; a failed one is left for the frames' readers to retry.
    fn read_ahead(&self, b: &mut Buffer, k: u64) {
        let batch = self.client.batch;
        if b.prefetching || batch < 2 {
            return;
        }
        let window = k + 1..(k + 1 + batch).min(self.frames);
        let coming = window
            .filter(|j| b.frames.contains_key(j) || b.in_flight.contains(j))
            .count() as u64;
        if coming > batch / 2 {
            return;
        }
        let ks = self.missing(b, k + 1, batch);
        let Some(me) = self.me.upgrade() else { return };
        if ks.is_empty() {
            return;
        }
        b.in_flight.extend(ks.iter().copied());
        b.prefetching = true;
        std::thread::spawn(move || {
            let fetched = me.fetch(&ks);
            let mut b = lock(&me.buffer);
            for j in &ks {
                b.in_flight.remove(j);
            }
            if let Ok(frames) = fetched {
                for (&j, data) in ks.iter().zip(frames) {
                    b.put(j, data, me.client.buffer_bytes);
                }
            }
            b.prefetching = false;
            drop(b);
            me.arrived.notify_all();
        });
    }

    /// Frame `k` (0-based). Threads wanting frames of a request under way wait for it.
    pub(crate) fn frame(&self, k: u64) -> std::result::Result<Vec<u8>, String> {
        if k >= self.frames {
            return Err(format!(
                "{}: frame {} of {} frames",
                self.url,
                k + 1,
                self.frames
            ));
        }
        let batch = {
            let mut b = lock(&self.buffer);
            loop {
                if let Some(data) = b.take(k) {
                    self.read_ahead(&mut b, k);
                    return Ok(data);
                }
                if !b.in_flight.contains(&k) {
                    break;
                }
                b = self.arrived.wait(b).unwrap_or_else(|e| e.into_inner());
            }
            let mut batch = vec![k];
            batch.extend(self.missing(&b, k + 1, self.client.batch - 1));
            b.in_flight.extend(batch.iter().copied());
            batch
        };
        let fetched = self.fetch(&batch);
        let mut b = lock(&self.buffer);
        for j in &batch {
            b.in_flight.remove(j);
        }
        let out = fetched.map(|frames| {
            let mut frames = frames.into_iter();
            let first = frames.next().unwrap_or_default();
            for (&j, data) in batch[1..].iter().zip(frames) {
                b.put(j, data, self.client.buffer_bytes);
            }
            first
        });
        if out.is_ok() {
            self.read_ahead(&mut b, k);
        }
        drop(b);
        self.arrived.notify_all();
        out.map_err(|e| e.to_string())
    }

    /// The stored transfer syntax (fetching the first frames when not yet known).
    pub(crate) fn transfer_syntax(&self) -> Result<String> {
        if let Some(s) = self.syntax.get() {
            return Ok(s.clone());
        }
        // Fetch frame 0 and keep it for whoever reads it.
        let frames = self.fetch(&[0])?;
        let mut b = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = frames.into_iter().next() {
            b.put(0, f, self.client.buffer_bytes);
        }
        Ok(self.syntax.get().cloned().unwrap_or_default())
    }

    /// Frames `ks` (0-based), in that order, in one request.
    fn fetch(&self, ks: &[u64]) -> Result<Vec<Vec<u8>>> {
        let list: Vec<String> = ks.iter().map(|k| (k + 1).to_string()).collect();
        let url = format!("{}/frames/{}", self.url, list.join(","));
        let (content_type, body) =
            self.client
                .get(&url, ACCEPT_FRAMES, self.client.max_frames_bytes)?;
        let bad = |message: String| Error::Remote {
            url: url.clone(),
            status: Some(200),
            message,
        };
        let boundary = param(&content_type, "boundary").ok_or_else(|| {
            bad(format!(
                "not a multipart answer (Content-Type {content_type:?})"
            ))
        })?;
        let parts = multipart(&body, &boundary).map_err(bad)?;
        if parts.len() != ks.len() {
            return Err(bad(format!(
                "{} frames in the answer for {} asked for",
                parts.len(),
                ks.len()
            )));
        }
        let mut out = Vec::with_capacity(parts.len());
        for (i, (part_type, data)) in parts.into_iter().enumerate() {
            if data.is_empty() || data.len() as u64 > self.client.max_frame_bytes {
                return Err(bad(format!("frame {} has {} bytes", ks[i] + 1, data.len())));
            }
            let syntax = syntax_of(&part_type)
                .or_else(|| syntax_of(&content_type))
                .ok_or_else(|| bad(format!("frame of unknown type {part_type:?}")))?;
            let known = self.syntax.get_or_init(|| syntax.clone());
            if *known != syntax {
                return Err(bad(format!(
                    "frames in two transfer syntaxes ({known} and {syntax})"
                )));
            }
            out.push(data);
        }
        Ok(out)
    }
}

/// A parameter of a Content-Type value (`boundary`, `transfer-syntax`), unquoted.
fn param(content_type: &str, name: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// The transfer syntax a frame's content type says: its `transfer-syntax` parameter, else the
/// default of its media type (PS3.18 Table 8.7.3-2).
fn syntax_of(content_type: &str) -> Option<String> {
    // The parameter may sit inside a quoted `type="image/jpeg; transfer-syntax=…"`.
    if let Some(i) = content_type.find("transfer-syntax=") {
        let v: String = content_type[i + "transfer-syntax=".len()..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        if !v.is_empty() {
            return Some(v);
        }
    }
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "image/jpeg" => Some("1.2.840.10008.1.2.4.50".into()),
        "image/jp2" => Some("1.2.840.10008.1.2.4.90".into()),
        "application/octet-stream" => Some("1.2.840.10008.1.2.1".into()),
        _ => None,
    }
}

/// The parts of a `multipart/related` body: each part's Content-Type and content. A body
/// without its closing delimiter (cut short) is an error.
fn multipart(body: &[u8], boundary: &str) -> std::result::Result<Vec<(String, Vec<u8>)>, String> {
    if boundary.is_empty() || boundary.len() > 200 {
        return Err("a multipart boundary of unusable length".into());
    }
    let delim = format!("\r\n--{boundary}");
    let finder = memchr::memmem::Finder::new(delim.as_bytes());
    // A delimiter is the boundary line followed by a line break, or by "--" when it closes.
    let is_delim = |i: usize| {
        let after = &body[(i + delim.len()).min(body.len())..];
        after.starts_with(b"\r\n") || after.starts_with(b"--")
    };
    let next = |from: usize| {
        finder
            .find_iter(&body[from..])
            .map(|i| from + i)
            .find(|&i| is_delim(i))
    };
    // The first delimiter may open the body without a line break before it; `at` is where a
    // delimiter's "--" starts.
    let mut at = if body.starts_with(&delim.as_bytes()[2..]) {
        0
    } else {
        next(0)
            .map(|i| i + 2)
            .ok_or("no multipart delimiter in the answer")?
    };
    let mut parts = Vec::new();
    loop {
        let after = at + delim.len() - 2;
        let rest = body
            .get(after..)
            .ok_or("the answer ends inside a delimiter")?;
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        let start = after
            + if rest.starts_with(b"\r\n") {
                2
            } else {
                return Err("a malformed multipart delimiter line".into());
            };
        let end = next(start).ok_or("the answer was cut short (no closing multipart delimiter)")?;
        let part = &body[start..end];
        let (headers, content) = if part.starts_with(b"\r\n") {
            (&part[..0], &part[2..])
        } else {
            let h = memchr::memmem::find(part, b"\r\n\r\n")
                .ok_or("a multipart part without the blank line after its headers")?;
            (&part[..h], &part[h + 4..])
        };
        let content_type = String::from_utf8_lossy(headers)
            .split("\r\n")
            .find_map(|line| {
                let (k, v) = line.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-type")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        parts.push((content_type, content.to_vec()));
        at = end + 2;
    }
}

/// One instance of the series: its attributes and its frames on the server.
pub(crate) struct RemoteMeta {
    /// SOP Instance UID.
    pub(crate) sop: String,
    /// SOP Class UID.
    pub(crate) class: String,
    /// The attributes (bulk data left empty).
    pub(crate) obj: InMemDicomObject,
    /// The first optical path's ICC profile, when the server sent it as bulk data.
    pub(crate) icc_bulk: Option<Vec<u8>>,
    /// Its frames.
    pub(crate) remote: Arc<RemoteInstance>,
}

impl RemoteMeta {
    /// Its number of frames.
    pub(crate) fn remote_frames(&self) -> u64 {
        self.remote.frames
    }
}

/// The series named by a `dicomweb+` URL, its instances' attributes read.
pub(crate) struct RemoteSeries {
    pub(crate) study: String,
    pub(crate) series: String,
    /// The URL as given (no credentials: they are refused in URLs).
    pub(crate) url: String,
    /// Every instance's attributes, in SOP Instance UID order.
    pub(crate) instances: Vec<RemoteMeta>,
    /// SHA-256 of the study, series and SOP Instance UIDs and every instance's attributes.
    pub(crate) metadata_hash: Sha256,
}

/// The string value of `tag` (8 hex digits) in a DICOM JSON data set.
fn json_str<'a>(ds: &'a serde_json::Value, tag: &str) -> Option<&'a str> {
    ds.get(tag)?.get("Value")?.get(0)?.as_str()
}

/// A slide microscopy series on a server, as a search lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSeries {
    /// Its address, `dicomweb+…/studies/STUDY/series/SERIES`.
    pub url: String,
    /// How many instances the server holds of it now (grows while it is being stored).
    pub instances: u64,
}

/// Every slide microscopy series on the server whose DICOMweb root is `root` (with or without
/// the `dicomweb+` prefix): QIDO-RS `series?Modality=SM`, in pages of `cfg.qido_page`
/// (`limit`/`offset`) until a page comes back empty, so that a server capping its answers below
/// the page size is followed to the end. A server that ignores `limit` (a page longer than asked
/// for) has answered whole; one that ignores `offset` (a page repeating earlier series) is an
/// error. More than `cfg.max_listed_series` series listed is an error rather than an unbounded
/// list.
pub fn list_slide_series(root: &str, cfg: &DicomWebConfig) -> Result<Vec<ListedSeries>> {
    let base = root
        .strip_prefix(SCHEME)
        .unwrap_or(root)
        .trim_end_matches('/');
    let client = Client::new(cfg)?;
    let page = cfg.qido_page.max(1);
    let mut out: Vec<ListedSeries> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut offset = 0u64;
    loop {
        let url =
            format!("{base}/series?Modality=SM&includefield=00201209&limit={page}&offset={offset}");
        let found = client.json(&url, client.max_query_bytes)?;
        let listed = found.as_array().map(Vec::as_slice).unwrap_or_default();
        let mut new = 0u64;
        for s in listed {
            // Every entry counts as seen (a page of malformed ones is still a page); only
            // slide series with well-formed UIDs are listed.
            let (study, series) = (json_str(s, "0020000D"), json_str(s, "0020000E"));
            let key = match (study, series) {
                (Some(st), Some(se)) => format!("{st}/{se}"),
                _ => s.to_string(),
            };
            if !seen.insert(key) {
                continue;
            }
            new += 1;
            if seen.len() as u64 > cfg.max_listed_series {
                return Err(Error::LimitExceeded {
                    path: std::path::PathBuf::from(base),
                    what: "series in the archive's listing",
                    value: seen.len() as u64,
                    limit: cfg.max_listed_series,
                });
            }
            let (Some(study), Some(series)) = (study, series) else {
                continue;
            };
            if !is_uid(study) || !is_uid(series) {
                continue;
            }
            let url = format!("{SCHEME}{base}/studies/{study}/series/{series}");
            let instances = s
                .get("00201209")
                .and_then(|e| e.get("Value"))
                .and_then(|v| v.get(0))
                .and_then(|v| v.as_u64().or_else(|| v.as_str()?.trim().parse().ok()))
                .unwrap_or(0);
            out.push(ListedSeries { url, instances });
        }
        let n = listed.len() as u64;
        // An empty page ends the listing; so does a longer one than asked for (the server
        // ignores `limit` and answered whole). A short page does not: the server may cap its
        // answers below `limit`. A page of nothing new after a full one means the server
        // ignores `offset`, and the rest cannot be listed.
        if n == 0 || n > page {
            break;
        }
        if new == 0 {
            return Err(Error::Remote {
                url: base.into(),
                status: None,
                message: format!(
                    "QIDO-RS paging: the page at offset {offset} repeats earlier series (the \
                     server ignores offset); the archive cannot be listed past {offset}"
                ),
            });
        }
        offset += n;
    }
    out.sort_by(|a, b| a.url.cmp(&b.url));
    Ok(out)
}

/// Stores DICOM Part 10 `objects` on a DICOMweb server with STOW-RS, all in one request
/// (`POST {root}/studies`), so that the archive gets all of them or none from this call. `root`
/// is the server's DICOMweb root (`http(s)://…/dicom-web`, with or without the `dicomweb+`
/// prefix). Transient failures are retried with backoff; a 202 (some refused) is an error.
pub fn store(root: &str, cfg: &DicomWebConfig, objects: &[Vec<u8>]) -> Result<()> {
    let root = root
        .strip_prefix(SCHEME)
        .unwrap_or(root)
        .trim_end_matches('/');
    if !(root.starts_with("http://") || root.starts_with("https://")) {
        return Err(Error::Remote {
            url: root.into(),
            status: None,
            message: "a DICOMweb root starts with http:// or https://".into(),
        });
    }
    if root.split('/').nth(2).is_some_and(|a| a.contains('@')) {
        return Err(Error::Remote {
            url: "(the --dicomweb-store URL)".into(),
            status: None,
            message: "credentials in the URL are refused (they would reach logs)".into(),
        });
    }
    let client = Client::new(cfg)?;
    // A boundary that no object contains.
    let mut h = Sha256::new();
    for o in objects {
        h.update(o);
    }
    let boundary = format!("tessera-{:x}", h.finalize());
    let mut body = Vec::new();
    for o in objects {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(o);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    client.post(
        &format!("{root}/studies"),
        &format!("multipart/related; type=\"application/dicom\"; boundary={boundary}"),
        &body,
    )?;
    Ok(())
}

/// A data set from its DICOM JSON form (PS3.18 F.2): every element with its VR and values,
/// sequences to [`MAX_JSON_DEPTH`]; bulk data by URI is left out (only the ICC profile is
/// fetched, by the caller).
fn from_dicom_json(
    ds: &serde_json::Value,
    depth: usize,
) -> std::result::Result<InMemDicomObject, String> {
    use dicom_core::value::{DataSetSequence, PrimitiveValue};
    use dicom_core::{DataElement, Tag, VR};
    use serde_json::Value as J;
    if depth > MAX_JSON_DEPTH {
        return Err(format!("sequences nested over {MAX_JSON_DEPTH} deep"));
    }
    let map = ds
        .as_object()
        .ok_or("a data set that is not a JSON object")?;
    let mut obj = InMemDicomObject::new_empty();
    for (key, el) in map {
        let tag = u32::from_str_radix(key, 16)
            .ok()
            .filter(|_| key.len() == 8)
            .map(|t| Tag((t >> 16) as u16, t as u16))
            .ok_or_else(|| format!("{key:?} is not a tag"))?;
        let vr_text = el.get("vr").and_then(J::as_str).unwrap_or("UN");
        let vr = vr_text
            .parse::<VR>()
            .map_err(|_| format!("{key}: unknown VR {vr_text:?}"))?;
        let values: &[J] = el
            .get("Value")
            .and_then(J::as_array)
            .map_or(&[], Vec::as_slice);
        let bad = |what: &str| format!("{key} ({vr_text}): {what}");
        let text = |v: &J| match v {
            J::String(s) => Ok(s.clone()),
            J::Number(n) => Ok(n.to_string()),
            J::Null => Ok(String::new()),
            _ => Err(bad("a value that is not text")),
        };
        let num = |v: &J| -> std::result::Result<f64, String> {
            match v {
                J::Number(n) => n.as_f64().ok_or_else(|| bad("a number out of range")),
                J::String(s) => s.trim().parse::<f64>().map_err(|_| bad("not a number")),
                _ => Err(bad("a value that is not a number")),
            }
        };
        let int = |v: &J| -> std::result::Result<i64, String> {
            match v {
                J::Number(n) => n.as_i64().ok_or_else(|| bad("not a whole number")),
                J::String(s) => s
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| bad("not a whole number")),
                _ => Err(bad("a value that is not a number")),
            }
        };
        macro_rules! ints {
            ($variant:ident, $t:ty) => {
                PrimitiveValue::$variant(
                    values
                        .iter()
                        .map(|v| {
                            int(v).and_then(|i| <$t>::try_from(i).map_err(|_| bad("out of range")))
                        })
                        .collect::<std::result::Result<_, _>>()?,
                )
            };
        }
        let value = match vr {
            VR::SQ => {
                let items = values
                    .iter()
                    .map(|v| from_dicom_json(v, depth + 1))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                obj.put(DataElement::new(tag, vr, DataSetSequence::from(items)));
                continue;
            }
            VR::OB | VR::OW | VR::OD | VR::OF | VR::OL | VR::OV | VR::UN => {
                match el.get("InlineBinary").and_then(J::as_str) {
                    Some(b64) => {
                        use base64::Engine;
                        PrimitiveValue::from(
                            base64::engine::general_purpose::STANDARD
                                .decode(b64)
                                .map_err(|_| bad("InlineBinary that is not base64"))?,
                        )
                    }
                    // Bulk data by URI: left out.
                    None => continue,
                }
            }
            VR::PN => PrimitiveValue::Strs(
                values
                    .iter()
                    .map(|v| match v {
                        J::Object(m) => Ok(m
                            .get("Alphabetic")
                            .and_then(J::as_str)
                            .unwrap_or("")
                            .to_string()),
                        other => text(other),
                    })
                    .collect::<std::result::Result<_, _>>()?,
            ),
            VR::US => ints!(U16, u16),
            VR::SS => ints!(I16, i16),
            VR::UL => ints!(U32, u32),
            VR::SL => ints!(I32, i32),
            VR::UV => ints!(U64, u64),
            VR::SV => ints!(I64, i64),
            VR::FL => PrimitiveValue::F32(
                values
                    .iter()
                    .map(|v| num(v).map(|f| f as f32))
                    .collect::<std::result::Result<_, _>>()?,
            ),
            VR::FD => PrimitiveValue::F64(
                values
                    .iter()
                    .map(num)
                    .collect::<std::result::Result<_, _>>()?,
            ),
            VR::AT => PrimitiveValue::Tags(
                values
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .and_then(|s| u32::from_str_radix(s, 16).ok())
                            .map(|t| Tag((t >> 16) as u16, t as u16))
                            .ok_or_else(|| bad("not a tag"))
                    })
                    .collect::<std::result::Result<_, _>>()?,
            ),
            _ => PrimitiveValue::Strs(
                values
                    .iter()
                    .map(text)
                    .collect::<std::result::Result<_, _>>()?,
            ),
        };
        let value = if values.is_empty() && !matches!(vr, VR::OB | VR::OW | VR::UN) {
            PrimitiveValue::Empty
        } else {
            value
        };
        obj.put(DataElement::new(tag, vr, value));
    }
    Ok(obj)
}

/// Removes `BulkDataURI`s (they name the server, not the content) for hashing.
fn strip_bulk(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("BulkDataURI");
            m.values_mut().for_each(strip_bulk);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_bulk),
        _ => {}
    }
}

/// Finds the series (QIDO-RS when the URL names none) and reads its instances' metadata.
/// Errors name the URL; a URL that cannot be parsed is not a slide.
pub(crate) fn open_series(path: &Path, cfg: &DicomWebConfig, max_icc: u64) -> Result<RemoteSeries> {
    let url = path.to_string_lossy().into_owned();
    let loc = parse_url(&url).map_err(|why| Error::NotASlide {
        path: path.into(),
        detected: format!("not a usable DICOMweb URL: {why}"),
    })?;
    let client = Arc::new(Client::new(cfg)?);
    let not_a_slide = |detected: String| Error::NotASlide {
        path: path.into(),
        detected,
    };
    let series = match &loc.series {
        Some(s) => s.clone(),
        None => {
            let q = format!("{}/studies/{}/series?Modality=SM", loc.base, loc.study);
            let found = client.json(&q, client.max_query_bytes)?;
            let uids: Vec<String> = found
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| json_str(s, "0020000E").map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            match &uids[..] {
                [] => {
                    return Err(not_a_slide(format!(
                        "study {} has no slide microscopy (SM) series",
                        loc.study
                    )))
                }
                [one] => one.clone(),
                many => {
                    return Err(not_a_slide(format!(
                        "study {} has {} slide microscopy series; name one with \
                         …/studies/{}/series/UID: {}",
                        loc.study,
                        many.len(),
                        loc.study,
                        many.join(", ")
                    )))
                }
            }
        }
    };
    let series_url = format!("{}/studies/{}/series/{}", loc.base, loc.study, series);
    let meta = client.json(&format!("{series_url}/metadata"), client.max_metadata_bytes)?;
    let items = meta.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return Err(Error::Remote {
            url: format!("{series_url}/metadata"),
            status: Some(200),
            message: "the series has no instances".into(),
        });
    }
    if items.len() > MAX_INSTANCES {
        return Err(Error::LimitExceeded {
            path: path.into(),
            what: "instances in a DICOMweb series",
            value: items.len() as u64,
            limit: MAX_INSTANCES as u64,
        });
    }
    let mut instances = Vec::new();
    let mut hashed: Vec<(String, Vec<u8>)> = Vec::new();
    for ds in items {
        let sop = json_str(&ds, "00080018").unwrap_or("").to_string();
        let class = json_str(&ds, "00080016").unwrap_or("").to_string();
        if !is_uid(&sop) {
            return Err(Error::Remote {
                url: format!("{series_url}/metadata"),
                status: Some(200),
                message: "an instance without a usable SOP Instance UID".into(),
            });
        }
        let bulk_icc = ds
            .get("00480105")
            .and_then(|s| s.get("Value"))
            .and_then(|v| v.get(0))
            .and_then(|p| p.get("00282000"))
            .and_then(|e| e.get("BulkDataURI"))
            .and_then(|u| u.as_str())
            .map(String::from);
        let mut canonical = ds.clone();
        strip_bulk(&mut canonical);
        hashed.push((
            sop.clone(),
            serde_json::to_vec(&canonical).unwrap_or_default(),
        ));
        let obj = from_dicom_json(&ds, 0).map_err(|e| Error::Remote {
            url: format!("{series_url}/metadata"),
            status: Some(200),
            message: format!("instance {sop}: {e}"),
        })?;
        let icc_bulk = match bulk_icc {
            Some(u) => {
                let (content_type, body) = client.get(&u, ACCEPT_FRAMES, max_icc)?;
                let data = match param(&content_type, "boundary") {
                    Some(b) => multipart(&body, &b)
                        .map_err(|m| Error::Remote {
                            url: u.clone(),
                            status: Some(200),
                            message: m,
                        })?
                        .into_iter()
                        .next()
                        .map(|(_, d)| d)
                        .unwrap_or_default(),
                    None => body,
                };
                Some(data)
            }
            None => None,
        };
        let frames = obj
            .get(dicom_dictionary_std::tags::NUMBER_OF_FRAMES)
            .and_then(|e| e.to_int::<i64>().ok())
            .unwrap_or(1)
            .clamp(0, 16 * 1024 * 1024) as u64;
        instances.push(RemoteMeta {
            remote: Arc::new_cyclic(|me| RemoteInstance {
                client: client.clone(),
                url: format!("{series_url}/instances/{sop}"),
                frames,
                syntax: OnceLock::new(),
                buffer: Mutex::new(Buffer::default()),
                arrived: Condvar::new(),
                me: me.clone(),
            }),
            sop,
            class,
            obj,
            icc_bulk,
        });
    }
    instances.sort_by(|a, b| a.sop.cmp(&b.sop));
    hashed.sort();
    let mut h = Sha256::new();
    h.update(loc.study.as_bytes());
    h.update([0]);
    h.update(series.as_bytes());
    for (sop, json) in &hashed {
        h.update([0]);
        h.update(sop.as_bytes());
        h.update((json.len() as u64).to_le_bytes());
        h.update(json);
    }
    Ok(RemoteSeries {
        study: loc.study,
        series,
        url,
        instances,
        metadata_hash: h,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let l = parse_url("dicomweb+http://pacs:8042/dicom-web/studies/1.2.3/series/4.5").unwrap();
        assert_eq!(l.base, "http://pacs:8042/dicom-web");
        assert_eq!(
            (l.study.as_str(), l.series.as_deref()),
            ("1.2.3", Some("4.5"))
        );
        let l = parse_url("dicomweb+https://h/studies/1.2/").unwrap();
        assert_eq!((l.base.as_str(), l.series), ("https://h", None));
        for bad in [
            "http://h/studies/1.2",
            "dicomweb+ftp://h/studies/1.2",
            "dicomweb+http://u:p@h/studies/1.2",
            "dicomweb+http://h/series/1.2",
            "dicomweb+http://h/studies/1.2/instances/3",
            "dicomweb+http://h/studies/x.y",
            "dicomweb+http://h/studies/1.2?x=1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        assert!(parse_url("dicomweb+http://u:p@h/studies/1.2")
            .unwrap_err()
            .contains("credentials"));
    }

    #[test]
    fn multipart_parts() {
        let body = b"--XY\r\nContent-Type: image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50\r\n\r\nab\r\n--XY\r\nContent-Type: image/jpeg\r\n\r\n\r\n--XYc\r\n--XY--\r\n";
        let parts = multipart(body, "XY").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].1, b"ab");
        assert_eq!(parts[1].1, b"\r\n--XYc");
        assert_eq!(
            syntax_of(&parts[0].0).as_deref(),
            Some("1.2.840.10008.1.2.4.50")
        );
        // Cut short: no closing delimiter.
        assert!(multipart(&body[..40], "XY").is_err());
        assert!(multipart(b"nothing here", "XY").is_err());
        assert_eq!(
            param(
                "multipart/related; type=\"image/jpeg\"; boundary=\"a b\"",
                "boundary"
            )
            .as_deref(),
            Some("a b")
        );
    }

    #[test]
    fn dicom_json_is_read() {
        use dicom_dictionary_std::tags;
        let ds = serde_json::json!({
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
            "00280010": {"vr": "US", "Value": [500]},
            "00480006": {"vr": "UL", "Value": [2220]},
            "00280009": {"vr": "AT"},
            "00480001": {"vr": "FL", "Value": [1.5, "NaN"]},
            "00201041": {"vr": "DS", "Value": [0.000499]},
            "52009229": {"vr": "SQ", "Value": [{"00289110": {"vr": "SQ", "Value": [
                {"00280030": {"vr": "DS", "Value": [0.000499, 0.000499]}}]}}]},
            "00282000": {"vr": "OB", "InlineBinary": "AAE="},
            "7FE00010": {"vr": "OB", "BulkDataURI": "http://x/bulk"}
        });
        let o = from_dicom_json(&ds, 0).unwrap();
        assert_eq!(
            o.get(tags::PATIENT_NAME).unwrap().to_str().unwrap(),
            "Doe^Jane"
        );
        assert_eq!(o.get(tags::ROWS).unwrap().to_int::<u16>().unwrap(), 500);
        assert_eq!(
            o.get(tags::TOTAL_PIXEL_MATRIX_COLUMNS)
                .unwrap()
                .to_int::<u32>()
                .unwrap(),
            2220
        );
        assert_eq!(
            o.get(tags::ICC_PROFILE)
                .unwrap()
                .to_bytes()
                .unwrap()
                .as_ref(),
            &[0, 1]
        );
        assert!(o.get(tags::PIXEL_DATA).is_none());
        let spacing = o
            .get(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0]
            .get(tags::PIXEL_MEASURES_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0]
            .get(tags::PIXEL_SPACING)
            .unwrap()
            .to_multi_float64()
            .unwrap();
        assert_eq!(spacing, vec![0.000499, 0.000499]);
        for bad in [
            serde_json::json!({"0010": {"vr": "PN"}}),
            serde_json::json!({"00280010": {"vr": "US", "Value": [70000]}}),
            serde_json::json!({"00280010": {"vr": "XX"}}),
            serde_json::json!([1]),
        ] {
            assert!(from_dicom_json(&bad, 0).is_err(), "{bad}");
        }
        let mut deep = serde_json::json!({});
        for _ in 0..40 {
            deep = serde_json::json!({"00400555": {"vr": "SQ", "Value": [deep]}});
        }
        assert!(from_dicom_json(&deep, 0).unwrap_err().contains("deep"));
    }

    #[test]
    fn auth_is_never_printed() {
        let a = DicomWebAuth::Basic {
            user: "u".into(),
            password: "secret".into(),
        };
        assert!(!format!("{a:?}").contains("secret"));
        assert!(!format!("{:?}", DicomWebAuth::Bearer("tok".into())).contains("tok"));
    }
}
