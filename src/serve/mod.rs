//! `tessera serve`: a web viewer over analysed slides for teaching — the slide as Deep Zoom
//! tiles, the AI heatmap as a second tile layer, and a quiz mode that scores a trainee's marks.
//!
//! In: a results folder (from `analyze` or `watch`), the folders slides may be read from, and a
//! bind address. Out: HTTP (axum on tokio). Routes:
//! - `GET /`, `/view/{id}`, `/progress`: the pages (`assets/`; OpenSeadragon is built in, nothing
//!   is fetched from elsewhere).
//! - `GET /api/slides`: the cases as JSON, each with its `id`; `GET /api/slides/{id}`: its
//!   result.json; `…/geojson`: its QuPath GeoJSON; `…/patch?x=&y=`: the patch at a level-0 point;
//!   `…/label`: the label image, only with `--allow-label`.
//! - `GET /slides/{id}.dzi`, `/slides/{id}_files/{level}/{col}_{row}.jpeg`: Deep Zoom (254-pixel
//!   tiles, 1 pixel of overlap, as openslide-python), read through the native reader when it
//!   supports the slide.
//! - `GET /overlay/{id}_files/{level}/{col}_{row}.png?class=&cmap=&threshold=`: heatmap tiles on
//!   the same grid, from the stored probabilities (PNG with alpha).
//! - `POST /api/quiz/{id}`: scores and saves a quiz round; `GET /api/progress?trainee=`.
//!
//! Coordinates: level-0 pixels in the API; Deep Zoom levels in tile URLs ([`deepzoom`]).
//! Security: ids are looked up in the catalogue ([`cases`]), never joined to paths; binding to
//! anything but 127.0.0.1 or ::1 requires a token on every request; label and macro images stay
//! private unless `--allow-label`; the server makes no outgoing request.

pub mod cases;
pub mod quiz;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::SlideConfig;
use crate::deepzoom::{self, DeepZoom};
use crate::error::{Error, Result};
use crate::imaging::colour::Cmap;
use crate::slide::Slide;
use cases::{Case, ProbGrid};

/// Everything the viewer needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The results folder.
    pub results: PathBuf,
    /// Folders slides may be read from (empty: no slide is read; results only).
    pub slides: Vec<PathBuf>,
    /// Where to listen (default 127.0.0.1:8080).
    pub bind: SocketAddr,
    /// The access token (required, generated if absent, when `bind` is not loopback).
    pub token: Option<String>,
    /// Serve label and macro images.
    pub allow_label: bool,
    /// JPEG quality of slide tiles (default 75, as openslide-python's deepzoom).
    pub jpeg_quality: u8,
    /// Bytes of encoded tiles kept in memory (default 256 MiB).
    pub cache_bytes: u64,
    /// The trainee's name for quiz answers, when the page does not give one.
    pub trainee: Option<String>,
    /// How slides are opened.
    pub slide: SlideConfig,
}

impl ServeConfig {
    /// Defaults for `results`.
    pub fn new(results: PathBuf) -> ServeConfig {
        ServeConfig {
            results,
            slides: Vec::new(),
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            allow_label: false,
            jpeg_quality: 75,
            cache_bytes: 256 << 20,
            trainee: None,
            slide: SlideConfig::default(),
        }
    }
}

/// Is a token needed for this address? Everything but 127.0.0.1 and ::1.
pub fn needs_token(addr: &SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V4(ip) => ip != std::net::Ipv4Addr::LOCALHOST,
        std::net::IpAddr::V6(ip) => ip != std::net::Ipv6Addr::LOCALHOST,
    }
}

/// A random token (128 bits from the kernel, hex).
pub fn generate_token() -> Result<String> {
    let mut b = [0u8; 16];
    let path = std::path::Path::new("/dev/urandom");
    use std::io::Read;
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| Error::from_io(path, e))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

const TILE: u64 = 254;
const OVERLAP: u64 = 1;

/// A bounded cache of encoded tiles (least recently used out first).
struct TileCache {
    limit: u64,
    bytes: u64,
    tick: u64,
    map: HashMap<String, (Bytes, u64)>,
}

impl TileCache {
    fn get(&mut self, k: &str) -> Option<Bytes> {
        self.tick += 1;
        let t = self.tick;
        self.map.get_mut(k).map(|(v, used)| {
            *used = t;
            v.clone()
        })
    }

    fn put(&mut self, k: String, v: Bytes) {
        let n = v.len() as u64;
        if n > self.limit {
            return;
        }
        while self.bytes + n > self.limit {
            let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((old, _)) = self.map.remove(&oldest) {
                self.bytes -= old.len() as u64;
            }
        }
        self.tick += 1;
        if let Some((old, _)) = self.map.insert(k, (v, self.tick)) {
            self.bytes -= old.len() as u64;
        }
        self.bytes += n;
    }
}

type Catalogue = BTreeMap<String, Arc<Case>>;

type OnceSlide = std::sync::OnceLock<std::result::Result<Arc<Slide>, String>>;

struct Shared {
    cfg: ServeConfig,
    token: Option<String>,
    /// The catalogue; new output folders are added when the slide list is asked for.
    cases: std::sync::RwLock<Arc<Catalogue>>,
    /// When the results folder was last listed.
    listed: Mutex<std::time::Instant>,
    /// Opened slides; one open per slide even when many requests ask at once.
    slides: Mutex<HashMap<String, Arc<OnceSlide>>>,
    grids: Mutex<HashMap<String, Arc<ProbGrid>>>,
    cache: Mutex<TileCache>,
    /// Bounds the tiles rendered at once (memory and CPU).
    render: Arc<tokio::sync::Semaphore>,
}

type St = Arc<Shared>;

/// A case's id and result version (`id#stamp`): the key of its opened slide and its grid.
fn version_key(case: &Case) -> String {
    format!("{}#{:?}", case.id, case.stamp)
}

/// An HTTP error with a plain-text reason.
struct Fail(StatusCode, String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.1 + "\n",
        )
            .into_response()
    }
}

fn not_found(what: &str) -> Fail {
    Fail(StatusCode::NOT_FOUND, format!("not found: {what}"))
}

impl Shared {
    fn catalogue(&self) -> Arc<Catalogue> {
        match self.cases.read() {
            Ok(c) => c.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }

    fn case(&self, id: &str) -> std::result::Result<Arc<Case>, Fail> {
        self.catalogue()
            .get(id)
            .cloned()
            .ok_or_else(|| not_found("no such slide"))
    }

    /// Adds output folders that appeared since the last listing (at most every 5 s), and reads
    /// again those whose result.json changed, so that slides analysed while the viewer runs
    /// (by `tessera watch`, say) show up, and a slide analysed again shows its new results.
    /// Cached tiles need no purge: their keys carry the fingerprint and analysis time.
    /// Blocking.
    fn refresh(&self) {
        {
            let Ok(mut last) = self.listed.lock() else {
                return;
            };
            if last.elapsed() < std::time::Duration::from_secs(5) {
                return;
            }
            *last = std::time::Instant::now();
        }
        let known = self.catalogue();
        let Ok(new) = cases::load_new(&self.cfg.results, &self.cfg.slides, false, |id, st| {
            known.get(id).is_some_and(|c| c.stamp == st)
        }) else {
            return;
        };
        if new.is_empty() {
            return;
        }
        let changed: Vec<String> = new.iter().map(|c| format!("{}#", c.id)).collect();
        if let Ok(mut c) = self.cases.write() {
            let mut next = (**c).clone();
            for case in new {
                next.insert(case.id.clone(), Arc::new(case));
            }
            *c = Arc::new(next);
        }
        // The opened slide and grid of a changed case's old version are not needed any more
        // (they are keyed by version, so a request still holding the old case is not mixed
        // up with the new one).
        let stale = |k: &String| changed.iter().any(|p| k.starts_with(p.as_str()));
        if let Ok(mut m) = self.slides.lock() {
            m.retain(|k, _| !stale(k));
        }
        if let Ok(mut m) = self.grids.lock() {
            m.retain(|k, _| !stale(k));
        }
    }

    /// The opened slide of a case (blocking: call from the blocking pool, see [`slide_of`]).
    fn slide(&self, id: &str) -> std::result::Result<Arc<Slide>, Fail> {
        let case = self.case(id)?;
        let Some(path) = &case.slide else {
            return Err(not_found(case.missing.as_deref().unwrap_or("slide file")));
        };
        let once = match self.slides.lock() {
            Ok(mut m) => m.entry(version_key(&case)).or_default().clone(),
            Err(_) => Arc::new(OnceSlide::new()),
        };
        once.get_or_init(|| {
            Slide::open_with(path, &self.cfg.slide)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| Fail(StatusCode::INTERNAL_SERVER_ERROR, e))
    }

    fn grid(&self, id: &str) -> std::result::Result<Arc<ProbGrid>, Fail> {
        let case = self.case(id)?;
        let key = version_key(&case);
        if let Some(g) = self.grids.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(g);
        }
        let g = Arc::new(
            ProbGrid::load(&case.dir)
                .map_err(|e| Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
        );
        if let Ok(mut m) = self.grids.lock() {
            m.insert(key, g.clone());
        }
        Ok(g)
    }

    fn deepzoom(&self, id: &str) -> std::result::Result<DeepZoom, Fail> {
        let d = self.case(id)?.result.slide.dimensions;
        Ok(DeepZoom::new(
            crate::geom::Size::new(d.width, d.height),
            TILE,
            OVERLAP,
        ))
    }
}

/// A case's slide, opened in the blocking pool (opening reads the file's header).
async fn slide_of(st: &St, id: &str) -> std::result::Result<Arc<Slide>, Fail> {
    let (st, id) = (st.clone(), id.to_string());
    tokio::task::spawn_blocking(move || st.slide(&id))
        .await
        .map_err(|e| Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

/// Serves until `shutdown` completes. `ready` gets the address actually bound (port 0 picks
/// one) and the token, before the first request is accepted.
pub fn run(
    cfg: ServeConfig,
    ready: impl FnOnce(SocketAddr, Option<&str>),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let cases = cases::load(&cfg.results, &cfg.slides, false)?;
    if cases.is_empty() {
        return Err(Error::Serve {
            path: cfg.results.clone(),
            message: "no analysed slide here (no <slide>/result.json)".into(),
        });
    }
    let token = match (&cfg.token, needs_token(&cfg.bind)) {
        (Some(t), _) if t.len() < 16 => {
            return Err(Error::Serve {
                path: cfg.results.clone(),
                message: "the token must have at least 16 characters".into(),
            })
        }
        (Some(t), _) => Some(t.clone()),
        (None, true) => Some(generate_token()?),
        (None, false) => None,
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let shared = Arc::new(Shared {
        token,
        cases: std::sync::RwLock::new(Arc::new(
            cases
                .into_iter()
                .map(|c| (c.id.clone(), Arc::new(c)))
                .collect(),
        )),
        listed: Mutex::new(std::time::Instant::now()),
        slides: Mutex::new(HashMap::new()),
        grids: Mutex::new(HashMap::new()),
        cache: Mutex::new(TileCache {
            limit: cfg.cache_bytes,
            bytes: 0,
            tick: 0,
            map: HashMap::new(),
        }),
        render: Arc::new(tokio::sync::Semaphore::new(threads * 2)),
        cfg,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| Error::Serve {
            path: shared.cfg.results.clone(),
            message: format!("cannot start the runtime: {e}"),
        })?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(shared.cfg.bind)
            .await
            .map_err(|e| Error::Serve {
                path: shared.cfg.results.clone(),
                message: format!("cannot listen on {}: {e}", shared.cfg.bind),
            })?;
        let addr = listener.local_addr().map_err(|e| Error::Serve {
            path: shared.cfg.results.clone(),
            message: e.to_string(),
        })?;
        ready(addr, shared.token.as_deref());
        let app = router(shared);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| Error::Serve {
                path: PathBuf::from(addr.to_string()),
                message: e.to_string(),
            })
    })
}

fn router(shared: St) -> Router {
    Router::new()
        .route("/", get(|| async { page(assets::INDEX) }))
        .route("/view/{id}", get(view))
        .route("/progress", get(|| async { page(assets::PROGRESS) }))
        .route("/static/{file}", get(static_file))
        .route("/api/slides", get(list))
        .route("/api/slides/{id}", get(result_json))
        .route("/api/slides/{id}/geojson", get(geojson))
        .route("/api/slides/{id}/patch", get(patch_at))
        .route("/api/slides/{id}/label", get(label))
        .route("/api/quiz/{id}", post(quiz_round))
        .route("/api/progress", get(progress))
        .route("/slides/{name}", get(dzi))
        .route("/slides/{name}/{level}/{tile}", get(slide_tile))
        .route("/overlay/{name}/{level}/{tile}", get(overlay_tile))
        .fallback(|| async { not_found("no such page") })
        .layer(axum::middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// Every request: the token check (when there is a token), then headers that keep the pages
/// from loading anything from elsewhere.
async fn guard(State(st): State<St>, req: Request, next: Next) -> Response {
    let mut set_cookie = None;
    if st.token.is_none() {
        // Loopback without a token: only requests addressed to loopback, so that a web page
        // whose domain is rebound to 127.0.0.1 (DNS rebinding) cannot read the slides.
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let name = match host.rsplit_once(':') {
            Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => host,
        };
        if !matches!(name, "127.0.0.1" | "localhost" | "[::1]") {
            return Fail(
                StatusCode::FORBIDDEN,
                format!("requests must be addressed to 127.0.0.1, not {host:?}"),
            )
            .into_response();
        }
    }
    if let Some(token) = &st.token {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let cookie = req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix("tessera_token=").map(str::to_string));
        let query = req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("token=").map(str::to_string))
        });
        let ok = |t: &Option<String>| t.as_deref().is_some_and(|t| same(t, token));
        if ok(&query) {
            set_cookie = Some(format!(
                "tessera_token={token}; HttpOnly; SameSite=Strict; Path=/"
            ));
        } else if !ok(&bearer) && !ok(&cookie) {
            let why = if bearer.is_none() && cookie.is_none() && query.is_none() {
                "a token is required: open the address printed at start (…?token=…)"
            } else {
                "wrong token"
            };
            return Fail(StatusCode::UNAUTHORIZED, why.into()).into_response();
        }
    }
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; \
             script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    if let Some(c) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::SET_COOKIE, c);
    }
    res
}

/// Constant-time comparison.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn page(html: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html,
    )
        .into_response()
}

mod assets {
    pub const INDEX: &str = include_str!("assets/index.html");
    pub const VIEWER: &str = include_str!("assets/viewer.html");
    pub const PROGRESS: &str = include_str!("assets/progress.html");
    pub const VIEWER_JS: &str = include_str!("assets/viewer.js");
    pub const PAGES_JS: &str = include_str!("assets/pages.js");
    pub const CSS: &str = include_str!("assets/viewer.css");
    /// OpenSeadragon 6.1.1 from its npm package (`assets/fetch-openseadragon.sh`).
    pub const OSD: &str = include_str!("assets/openseadragon.min.js");
}

async fn view(State(st): State<St>, UrlPath(id): UrlPath<String>) -> Response {
    match st.case(&id) {
        Ok(_) => page(assets::VIEWER),
        Err(f) => f.into_response(),
    }
}

async fn static_file(UrlPath(file): UrlPath<String>) -> Response {
    let (body, ctype) = match file.as_str() {
        "viewer.js" => (assets::VIEWER_JS, "text/javascript; charset=utf-8"),
        "pages.js" => (assets::PAGES_JS, "text/javascript; charset=utf-8"),
        "viewer.css" => (assets::CSS, "text/css; charset=utf-8"),
        "openseadragon.min.js" => (assets::OSD, "text/javascript; charset=utf-8"),
        _ => return not_found("no such file").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn list(State(st): State<St>) -> Json<Value> {
    let st2 = st.clone();
    let _ = tokio::task::spawn_blocking(move || st2.refresh()).await;
    let slides: Vec<Value> = st
        .catalogue()
        .values()
        .map(|c| {
            let r = &c.result;
            let cfg = &r.model.config;
            json!({
                "id": c.id,
                "name": r.slide.path.file_name().map(|n| n.to_string_lossy()),
                "dimensions": r.slide.dimensions,
                "mpp": r.slide.mpp.x,
                "slide_score": r.slide_score,
                "classes": cfg.class_names,
                "positive_class": cfg.tessera.positive_class,
                "threshold": r.parameters.threshold,
                "model": r.model.name,
                "patches": r.patches_analysed,
                "viewable": c.slide.is_some(),
                "why_not": c.missing,
                "expert_annotation": c.dir.join("expert.geojson").is_file(),
            })
        })
        .collect();
    Json(json!({"slides": slides, "trainee": st.cfg.trainee, "allow_label": st.cfg.allow_label}))
}

async fn result_json(State(st): State<St>, UrlPath(id): UrlPath<String>) -> Response {
    match st.case(&id) {
        Ok(c) => Json(c.result.clone()).into_response(),
        Err(f) => f.into_response(),
    }
}

async fn geojson(State(st): State<St>, UrlPath(id): UrlPath<String>) -> Response {
    let c = match st.case(&id) {
        Ok(c) => c,
        Err(f) => return f.into_response(),
    };
    match std::fs::read(c.dir.join("annotations.geojson")) {
        Ok(b) => ([(header::CONTENT_TYPE, "application/geo+json")], b).into_response(),
        Err(_) => not_found("annotations.geojson").into_response(),
    }
}

#[derive(Deserialize)]
struct Point {
    x: f64,
    y: f64,
}

async fn patch_at(
    State(st): State<St>,
    UrlPath(id): UrlPath<String>,
    Query(p): Query<Point>,
) -> Response {
    let g = match st.grid(&id) {
        Ok(g) => g,
        Err(f) => return f.into_response(),
    };
    match g.at(p.x, p.y) {
        Some(patch) => {
            let probs: BTreeMap<&str, f32> = g
                .classes
                .iter()
                .map(String::as_str)
                .zip(patch.probs.iter().copied())
                .collect();
            Json(json!({"patch": patch, "probabilities": probs})).into_response()
        }
        None => not_found("no analysed patch at this point").into_response(),
    }
}

async fn label(State(st): State<St>, UrlPath(id): UrlPath<String>) -> Response {
    if !st.cfg.allow_label {
        return not_found("label images are not served (start the viewer with --allow-label)")
            .into_response();
    }
    let slide = match slide_of(&st, &id).await {
        Ok(s) => s,
        Err(f) => return f.into_response(),
    };
    let res = tokio::task::spawn_blocking(move || {
        let img = slide.read_associated_image("label")?;
        crate::output::encode_rgb_png(&img)
    })
    .await;
    match res {
        Ok(Ok(png)) => ([(header::CONTENT_TYPE, "image/png")], png).into_response(),
        Ok(Err(e)) => not_found(&e.to_string()).into_response(),
        Err(e) => Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `{id}.dzi` → id.
async fn dzi(State(st): State<St>, UrlPath(name): UrlPath<String>) -> Response {
    let Some(id) = name.strip_suffix(".dzi") else {
        return not_found("no such slide").into_response();
    };
    if let Err(f) = slide_of(&st, id).await {
        return f.into_response();
    }
    match st.deepzoom(id) {
        Ok(dz) => ([(header::CONTENT_TYPE, "application/xml")], dz.dzi("jpeg")).into_response(),
        Err(f) => f.into_response(),
    }
}

/// Parses `{id}_files`, a level and `{col}_{row}.{ext}`.
fn tile_address<'a>(
    name: &'a str,
    level: &str,
    tile: &str,
    ext: &str,
) -> Option<(&'a str, usize, u64, u64)> {
    let id = name.strip_suffix("_files")?;
    let level = level.parse().ok()?;
    let (c, r) = tile.strip_suffix(ext)?.split_once('_')?;
    Some((id, level, c.parse().ok()?, r.parse().ok()?))
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
}

fn tile_response(bytes: Bytes, ctype: &'static str, etag: &str) -> Response {
    // Bytes are reference-counted: a cached tile is sent without copying.
    let mut res = Response::new(Body::from(bytes));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    res
}

/// A tile from the cache, or rendered (in the blocking pool, a bounded number at once) and
/// cached; 304 when the client has it.
async fn cached_tile(
    st: St,
    headers: &HeaderMap,
    key: String,
    ctype: &'static str,
    render: impl FnOnce() -> std::result::Result<Vec<u8>, Fail> + Send + 'static,
) -> Response {
    let etag = format!("\"{:x}\"", {
        use sha2::Digest;
        let d = sha2::Sha256::digest(key.as_bytes());
        u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    });
    if etag_matches(headers, &etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    if let Some(b) = st.cache.lock().ok().and_then(|mut c| c.get(&key)) {
        return tile_response(b, ctype, &etag);
    }
    let Ok(permit) = st.render.clone().acquire_owned().await else {
        return Fail(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()).into_response();
    };
    // The permit moves into the render: a client that disconnects does not free it while the
    // render still runs.
    let job = move || {
        let r = render();
        drop(permit);
        r
    };
    match tokio::task::spawn_blocking(job).await {
        Ok(Ok(bytes)) => {
            let bytes = Bytes::from(bytes);
            if let Ok(mut c) = st.cache.lock() {
                c.put(key, bytes.clone());
            }
            tile_response(bytes, ctype, &etag)
        }
        Ok(Err(f)) => f.into_response(),
        Err(e) => Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn slide_tile(
    State(st): State<St>,
    headers: HeaderMap,
    UrlPath((name, level, tile)): UrlPath<(String, String, String)>,
) -> Response {
    let Some((id, level, col, row)) = tile_address(&name, &level, &tile, ".jpeg") else {
        return not_found("no such tile").into_response();
    };
    let dz = match st.deepzoom(id) {
        Ok(v) => v,
        Err(f) => return f.into_response(),
    };
    let slide = match slide_of(&st, id).await {
        Ok(v) => v,
        Err(f) => return f.into_response(),
    };
    let Some(src) = dz.source(
        slide.levels(),
        |d| slide.best_level_for_downsample(d),
        level,
        col,
        row,
    ) else {
        return not_found("no such tile").into_response();
    };
    let Ok(case) = st.case(id) else {
        return not_found("no such slide").into_response();
    };
    let fp = case.result.slide.fingerprint.sha256.clone();
    let q = st.cfg.jpeg_quality;
    let key = format!("slide/{id}/{fp}/{level}/{col}/{row}/q{q}");
    cached_tile(st, &headers, key, "image/jpeg", move || {
        let img = deepzoom::render_tile(&slide, &src)
            .map_err(|e| Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, q)
            .encode(
                img.as_raw(),
                img.width() as u16,
                img.height() as u16,
                jpeg_encoder::ColorType::Rgb,
            )
            .map_err(|e| Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Ok(out)
    })
    .await
}

#[derive(Deserialize)]
struct OverlayQuery {
    class: Option<String>,
    cmap: Option<String>,
    threshold: Option<f32>,
}

async fn overlay_tile(
    State(st): State<St>,
    headers: HeaderMap,
    UrlPath((name, level, tile)): UrlPath<(String, String, String)>,
    Query(q): Query<OverlayQuery>,
) -> Response {
    let Some((id, level, col, row)) = tile_address(&name, &level, &tile, ".png") else {
        return not_found("no such tile").into_response();
    };
    let (dz, grid) = match st.deepzoom(id).and_then(|dz| Ok((dz, st.grid(id)?))) {
        Ok(v) => v,
        Err(f) => return f.into_response(),
    };
    let Ok(case) = st.case(id) else {
        return not_found("no such slide").into_response();
    };
    let positive = case
        .result
        .model
        .config
        .tessera
        .positive_class
        .clone()
        .unwrap_or_default();
    let class_name = q.class.unwrap_or(positive);
    let Some(class) = grid.classes.iter().position(|c| *c == class_name) else {
        return Fail(StatusCode::BAD_REQUEST, format!("no class {class_name:?}")).into_response();
    };
    let cmap_name = q.cmap.unwrap_or_else(|| "viridis".into());
    let Some(cmap) = Cmap::parse(&cmap_name) else {
        return Fail(
            StatusCode::BAD_REQUEST,
            "cmap must be viridis, jet or coolwarm".into(),
        )
        .into_response();
    };
    let threshold = q.threshold.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&threshold) {
        return Fail(
            StatusCode::BAD_REQUEST,
            "threshold must be in [0, 1]".into(),
        )
        .into_response();
    }
    // The overlay's geometry is the slide tile's, without reading the slide: level-0 box from
    // the Deep Zoom level alone.
    let full = [crate::slide::Level {
        size: dz
            .levels
            .last()
            .copied()
            .unwrap_or(crate::geom::Size::new(1, 1)),
        downsample: 1.0,
        tile_size: None,
    }];
    let Some(src) = dz.source(&full, |_| 0, level, col, row) else {
        return not_found("no such tile").into_response();
    };
    let r = &case.result;
    let key = format!(
        "overlay/{id}/{}/{}/{}/{level}/{col}/{row}/{class}/{cmap_name}/{threshold}",
        r.slide.fingerprint.sha256, r.model.sha256, r.analysed_at,
    );
    cached_tile(st, &headers, key, "image/png", move || {
        let img = cases::overlay_tile(
            &grid,
            src.origin,
            src.downsample,
            src.out,
            class,
            threshold,
            cmap,
        );
        crate::output::encode_rgba_png(&img)
            .map_err(|e| Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    })
    .await
}

#[derive(Deserialize)]
struct QuizRound {
    trainee: Option<String>,
    marks: Vec<quiz::Mark>,
    class: Option<String>,
    threshold: Option<f32>,
}

async fn quiz_round(
    State(st): State<St>,
    UrlPath(id): UrlPath<String>,
    Json(round): Json<QuizRound>,
) -> Response {
    let case = match st.case(&id) {
        Ok(c) => c,
        Err(f) => return f.into_response(),
    };
    let Some(trainee) = round.trainee.clone().or_else(|| st.cfg.trainee.clone()) else {
        return Fail(StatusCode::BAD_REQUEST, "a trainee name is needed".into()).into_response();
    };
    if !quiz::trainee_ok(&trainee) {
        return Fail(
            StatusCode::BAD_REQUEST,
            "a trainee name has 1–64 letters, digits, spaces, '.', '_' or '-'".into(),
        )
        .into_response();
    }
    if round.marks.len() > 1000
        || round
            .marks
            .iter()
            .any(|m| !m.x.is_finite() || !m.y.is_finite())
    {
        return Fail(StatusCode::BAD_REQUEST, "at most 1000 finite marks".into()).into_response();
    }
    let positive = case
        .result
        .model
        .config
        .tessera
        .positive_class
        .clone()
        .unwrap_or_default();
    let class_name = round.class.clone().unwrap_or(positive);
    let threshold = round
        .threshold
        .or_else(|| Some(case.result.parameters.threshold as f32))
        .unwrap_or(0.5);
    let reference = match quiz::expert(&case.dir) {
        Ok(Some(r)) => r,
        Ok(None) => {
            let g = match st.grid(&id) {
                Ok(g) => g,
                Err(f) => return f.into_response(),
            };
            let Some(class) = g.classes.iter().position(|c| *c == class_name) else {
                return Fail(StatusCode::BAD_REQUEST, format!("no class {class_name:?}"))
                    .into_response();
            };
            quiz::ai_regions(&g, class, threshold)
        }
        Err(e) => return Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let score = quiz::score(&round.marks, &reference);
    let record = json!({
        "trainee": trainee,
        "case": id,
        "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "slide_fingerprint": case.result.slide.fingerprint.sha256,
        "model_sha256": case.result.model.sha256,
        "class": class_name,
        "threshold": threshold,
        "marks": round.marks,
        "score": score,
        "tessera_version": crate::VERSION,
    });
    let results = st.cfg.results.clone();
    let (t, c, r) = (trainee.clone(), id.clone(), record.clone());
    let saved = tokio::task::spawn_blocking(move || quiz::save(&results, &t, &c, &r)).await;
    match saved {
        Ok(Ok(path)) => Json(json!({
            "score": score,
            "reference": reference,
            "saved": path.strip_prefix(&st.cfg.results).unwrap_or(&path),
        }))
        .into_response(),
        Ok(Err(e)) => Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
struct Trainee {
    trainee: Option<String>,
}

async fn progress(State(st): State<St>, Query(t): Query<Trainee>) -> Response {
    let Some(trainee) = t.trainee.or_else(|| st.cfg.trainee.clone()) else {
        return Fail(
            StatusCode::BAD_REQUEST,
            "which trainee? (?trainee=NAME)".into(),
        )
        .into_response();
    };
    if !quiz::trainee_ok(&trainee) {
        return Fail(StatusCode::BAD_REQUEST, "invalid trainee name".into()).into_response();
    }
    let rounds = quiz::progress(&st.cfg.results, &trainee);
    Json(json!({"trainee": trainee, "rounds": rounds})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tile_cache_stays_within_its_bytes_and_drops_the_least_recent() {
        let mut c = TileCache {
            limit: 300,
            bytes: 0,
            tick: 0,
            map: HashMap::new(),
        };
        for k in ["a", "b", "c"] {
            c.put(k.into(), Bytes::from(vec![0u8; 100]));
        }
        assert_eq!(c.bytes, 300);
        assert!(c.get("a").is_some()); // "b" is now the least recently used
        c.put("d".into(), Bytes::from(vec![0u8; 100]));
        assert_eq!(c.bytes, 300);
        assert!(c.get("b").is_none());
        assert!(c.get("a").is_some() && c.get("c").is_some() && c.get("d").is_some());
        c.put("huge".into(), Bytes::from(vec![0u8; 301])); // larger than the cache: not kept
        assert!(c.get("huge").is_none());
        assert_eq!(c.bytes, 300);
    }

    #[test]
    fn only_127_0_0_1_and_ipv6_loopback_go_without_a_token() {
        assert!(!needs_token(&"127.0.0.1:8080".parse().unwrap()));
        assert!(!needs_token(&"[::1]:8080".parse().unwrap()));
        assert!(needs_token(&"127.0.0.2:8080".parse().unwrap()));
        assert!(needs_token(&"0.0.0.0:8080".parse().unwrap()));
        assert!(needs_token(&"[::]:8080".parse().unwrap()));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "abcd"));
    }
}
