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
//! - `GET /api/slides/{id}/qc.png`: slide QC's artefacts (qc-mask.png, clean pixels
//!   transparent), one picture over the whole slide at the tissue mask's scale;
//! - `GET /overlay/{id}_files/{level}/{col}_{row}.png?class=&cmap=&threshold=`: heatmap tiles on
//!   the same grid, from the stored probabilities (PNG with alpha).
//! - `POST /api/quiz/{id}`: scores and saves a quiz round; `GET /api/progress?trainee=`.
//! - Accounts mode ([`accounts`]): `GET /login`, `POST /api/login`, `POST /api/logout`,
//!   `GET /api/me` (who is logged in, and the CSRF token), `GET /api/users` (instructors).
//! - Progress ([`progress`]): `GET /api/progress` also summarises (per class, per case, the
//!   misses to review); `GET /overview` and `/api/overview`, `/api/answers.csv` for
//!   instructors.
//! - Courses ([`course`]): `/courses…` pages and `/api/courses…` (list, create or import, read,
//!   replace, export, answer a case).
//!
//! Coordinates: level-0 pixels in the API; Deep Zoom levels in tile URLs ([`deepzoom`]).
//! Security: ids are looked up in the catalogue ([`cases`]), never joined to paths; label and
//! macro images stay private unless `--allow-label`; the server makes no outgoing request.
//! Who may ask ([`auth`]): when the viewer's database holds accounts, every route but the login
//! page, the login request and the static assets needs a session (cookie: HttpOnly,
//! SameSite=Strict, Secure with `--secure-cookies`), every state-changing request needs the
//! session's CSRF token, failed logins are throttled, and answers are tied to the account.
//! Without accounts (one user): binding to anything but 127.0.0.1 or ::1 requires a token on
//! every request.

pub mod accounts;
mod api;
mod auth;
pub mod cases;
pub mod course;
mod course_routes;
pub mod progress;
pub mod quiz;
mod random;
mod state;
mod tiles;

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
use state::*;

pub use auth::{generate_token, needs_token};

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
    /// The viewer's database (accounts, sessions, answers); default
    /// `RESULTS/.tessera/viewer.sqlite` ([`accounts::db_path`]).
    pub db: Option<PathBuf>,
    /// Mark the session cookie `Secure` (when a TLS proxy serves the viewer as https).
    pub secure_cookies: bool,
    /// How long a login lasts, in seconds (default 12 h).
    pub session_seconds: i64,
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
            db: None,
            secure_cookies: false,
            session_seconds: 12 * 3600,
        }
    }
}

/// How requests are let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One user, no token: loopback only.
    Open,
    /// One user with the access token.
    Token,
    /// Accounts in the viewer's database; `usize`: how many.
    Accounts(usize),
}

/// Serves until `shutdown` completes. `ready` gets the address actually bound (port 0 picks
/// one), the token (token mode) and the mode, before the first request is accepted.
pub fn run(
    cfg: ServeConfig,
    ready: impl FnOnce(SocketAddr, Option<&str>, Mode),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let cases = cases::load(&cfg.results, &cfg.slides, false)?;
    if cases.is_empty() {
        return Err(Error::Serve {
            path: cfg.results.clone(),
            message: "no analysed slide here (no <slide>/result.json)".into(),
        });
    }
    let db_file = cfg
        .db
        .clone()
        .unwrap_or_else(|| accounts::db_path(&cfg.results));
    // An existing database is opened (a broken one is an error: it may hold the accounts);
    // a missing one is created for the answers, unless the results folder is read-only.
    let db = match accounts::Db::open(&db_file, false)? {
        Some(db) => Some(db),
        None => accounts::Db::open(&db_file, true).ok().flatten(),
    };
    let n_accounts = match &db {
        Some(db) => {
            db.import_quiz_files(&cfg.results)?;
            db.accounts()? as usize
        }
        None => 0,
    };
    let token = match (&cfg.token, needs_token(&cfg.bind)) {
        _ if n_accounts > 0 => None,
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
    let mode = match (n_accounts, &token) {
        (n, _) if n > 0 => Mode::Accounts(n),
        (_, Some(_)) => Mode::Token,
        _ => Mode::Open,
    };
    let threads = crate::sys::cpus();
    let shared = Arc::new(Shared {
        token,
        mode,
        db: db.map(Arc::new),
        db_file,
        throttle: Mutex::new(HashMap::new()),
        hashing: tokio::sync::Semaphore::new(2),
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
        ready(addr, shared.token.as_deref(), shared.mode);
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
        .route("/", get(|| async { api::page(api::assets::INDEX) }))
        .route("/view/{id}", get(api::view))
        .route(
            "/progress",
            get(|| async { api::page(api::assets::PROGRESS) }),
        )
        .route("/static/{file}", get(api::static_file))
        .route("/api/slides", get(api::list))
        .route("/api/slides/{id}", get(api::result_json))
        .route("/api/slides/{id}/geojson", get(api::geojson))
        .route("/api/slides/{id}/qc.png", get(api::qc_layer))
        .route("/api/slides/{id}/patch", get(api::patch_at))
        .route("/api/slides/{id}/label", get(api::label))
        .route("/api/quiz/{id}", post(api::quiz_round))
        .route("/api/progress", get(api::progress))
        .route("/login", get(|| async { api::page(api::assets::LOGIN) }))
        .route("/api/login", post(auth::login))
        .route("/api/logout", post(auth::logout))
        .route("/api/me", get(auth::me))
        .route("/api/users", get(auth::users))
        .route("/api/overview", get(api::overview))
        .route("/api/answers.csv", get(api::answers_csv))
        .route(
            "/overview",
            get(|| async { api::page(api::assets::OVERVIEW) }),
        )
        .route(
            "/courses",
            get(|| async { api::page(api::assets::COURSES) }),
        )
        .route(
            "/courses/new",
            get(|| async { api::page(api::assets::EDITOR) }),
        )
        .route(
            "/courses/{id}",
            get(|| async { api::page(api::assets::COURSE) }),
        )
        .route(
            "/courses/{id}/edit",
            get(|| async { api::page(api::assets::EDITOR) }),
        )
        .route(
            "/api/courses",
            get(course_routes::list).post(course_routes::create),
        )
        .route(
            "/api/courses/{id}",
            get(course_routes::get_course).put(course_routes::update),
        )
        .route("/api/courses/{id}/export", get(course_routes::export))
        .route(
            "/api/courses/{id}/cases/{n}/answer",
            post(course_routes::answer),
        )
        .route("/slides/{name}", get(tiles::dzi))
        .route("/slides/{name}/{level}/{tile}", get(tiles::slide_tile))
        .route("/overlay/{name}/{level}/{tile}", get(tiles::overlay_tile))
        .fallback(|| async { not_found("no such page") })
        .layer(axum::extract::DefaultBodyLimit::max(course::MAX_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            auth::guard,
        ))
        .with_state(shared)
}

#[cfg(test)]
mod tests {
    use super::auth::same;
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
