//! The viewer's shared state: the catalogue of analysed slides (re-read when result.json
//! changes, at most every 5 s), the opened slides, the probability grids, and the byte-bounded
//! cache of rendered tiles.
//!
//! In: the results folder and the folders slides may be read from. Out: [`Shared`], which the
//! handlers of [`super::tiles`], [`super::api`] and the quiz routes read. Coordinates: level-0
//! pixels; Deep Zoom geometry from [`crate::deepzoom`].

use super::*;

pub(super) const TILE: u64 = 254;
pub(super) const OVERLAP: u64 = 1;

/// A bounded cache of encoded tiles (least recently used out first).
pub(super) struct TileCache {
    pub(super) limit: u64,
    pub(super) bytes: u64,
    pub(super) tick: u64,
    pub(super) map: HashMap<String, (Bytes, u64)>,
}

impl TileCache {
    pub(super) fn get(&mut self, k: &str) -> Option<Bytes> {
        self.tick += 1;
        let t = self.tick;
        self.map.get_mut(k).map(|(v, used)| {
            *used = t;
            v.clone()
        })
    }

    pub(super) fn put(&mut self, k: String, v: Bytes) {
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

pub(super) type Catalogue = BTreeMap<String, Arc<Case>>;

pub(super) type OnceSlide = std::sync::OnceLock<std::result::Result<Arc<Slide>, String>>;

pub(super) struct Shared {
    pub(super) cfg: ServeConfig,
    pub(super) token: Option<String>,
    /// How requests are let in.
    pub(super) mode: Mode,
    /// The viewer's database (absent when it could not be created: a read-only results
    /// folder; answers are then refused).
    pub(super) db: Option<Arc<accounts::Db>>,
    /// Where it is (or would be).
    pub(super) db_file: PathBuf,
    /// Failed logins per lower-cased name.
    pub(super) throttle: Mutex<HashMap<String, Throttle>>,
    /// Password hashes computed at once (each takes 19 MiB and tens of milliseconds).
    pub(super) hashing: tokio::sync::Semaphore,
    /// The catalogue; new output folders are added when the slide list is asked for.
    pub(super) cases: std::sync::RwLock<Arc<Catalogue>>,
    /// When the results folder was last listed.
    pub(super) listed: Mutex<std::time::Instant>,
    /// Opened slides; one open per slide even when many requests ask at once.
    pub(super) slides: Mutex<HashMap<String, Arc<OnceSlide>>>,
    pub(super) grids: Mutex<HashMap<String, Arc<ProbGrid>>>,
    pub(super) cache: Mutex<TileCache>,
    /// Bounds the tiles rendered at once (memory and CPU).
    pub(super) render: Arc<tokio::sync::Semaphore>,
}

pub(super) type St = Arc<Shared>;

/// Failed logins of one name: after [`auth::FREE_FAILURES`] in a row, each further attempt
/// waits, doubling from 30 s up to 15 min; a success clears it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Throttle {
    pub(super) failures: u32,
    pub(super) until: std::time::Instant,
}

/// A case's id and result version (`id#stamp`): the key of its opened slide and its grid.
pub(super) fn version_key(case: &Case) -> String {
    format!("{}#{:?}", case.id, case.stamp)
}

/// An HTTP error with a plain-text reason.
pub(super) struct Fail(pub(super) StatusCode, pub(super) String);

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

pub(super) fn not_found(what: &str) -> Fail {
    Fail(StatusCode::NOT_FOUND, format!("not found: {what}"))
}

/// A 500 with the reason.
pub(super) fn internal(e: impl std::fmt::Display) -> Fail {
    Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Runs `f` (the viewer database, files) on the blocking pool, off the async threads; its
/// answer, or the refusal it gives.
pub(super) async fn blocking<T: IntoResponse + Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, Fail> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => v.into_response(),
        Ok(Err(fail)) => fail.into_response(),
        Err(e) => internal(e).into_response(),
    }
}

/// A request's role and account: its session's, or, in single-user mode (no session), the
/// one local user's, who counts as an instructor.
pub(super) fn role_of(
    session: &Option<axum::Extension<accounts::Session>>,
) -> (accounts::Role, Option<accounts::User>) {
    match session {
        Some(axum::Extension(s)) => (s.user.role, Some(s.user.clone())),
        None => (accounts::Role::Instructor, None),
    }
}

/// Refuses a trainee.
pub(super) fn instructors_only(role: accounts::Role) -> std::result::Result<(), Fail> {
    if role == accounts::Role::Instructor {
        Ok(())
    } else {
        Err(Fail(StatusCode::FORBIDDEN, "instructors only".into()))
    }
}

impl Shared {
    pub(super) fn catalogue(&self) -> Arc<Catalogue> {
        match self.cases.read() {
            Ok(c) => c.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }

    pub(super) fn case(&self, id: &str) -> std::result::Result<Arc<Case>, Fail> {
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
    pub(super) fn refresh(&self) {
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
    pub(super) fn slide(&self, id: &str) -> std::result::Result<Arc<Slide>, Fail> {
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

    pub(super) fn grid(&self, id: &str) -> std::result::Result<Arc<ProbGrid>, Fail> {
        let case = self.case(id)?;
        let key = version_key(&case);
        if let Some(g) = self.grids.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(g);
        }
        let g = Arc::new(
            ProbGrid::load(&case.dir, &case.result)
                .map_err(|e| Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
        );
        if let Ok(mut m) = self.grids.lock() {
            m.insert(key, g.clone());
        }
        Ok(g)
    }

    pub(super) fn deepzoom(&self, id: &str) -> std::result::Result<DeepZoom, Fail> {
        let d = self.case(id)?.result.slide.dimensions;
        Ok(DeepZoom::new(
            crate::geom::Size::new(d.width, d.height),
            TILE,
            OVERLAP,
        ))
    }
}

/// A case's slide, opened in the blocking pool (opening reads the file's header).
pub(super) async fn slide_of(st: &St, id: &str) -> std::result::Result<Arc<Slide>, Fail> {
    let (st, id) = (st.clone(), id.to_string());
    tokio::task::spawn_blocking(move || st.slide(&id))
        .await
        .map_err(|e| Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}
