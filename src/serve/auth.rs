//! Who may ask. Accounts mode: a session cookie on every route but the login page, the login
//! request and the static assets; the session's CSRF token (`X-CSRF-Token`) on every request
//! that changes state; failed logins throttled per name; a new session id at every login (a
//! cookie set before login is never adopted). Token mode: the token every request must carry
//! when the viewer listens beyond the loopback address, compared in constant time. Both: the
//! response headers every answer gets (no sniffing, no referrer, a Content-Security-Policy
//! that forbids fetching elsewhere).
//!
//! In: a request, the configured token or the viewer's database. Out: the request passed on
//! (with its [`Session`] as an extension in accounts mode), or 401/403/429, or a redirect to
//! the login page. No coordinates.

use super::accounts::Session;
use super::state::*;
use super::*;

/// Failed logins of one name allowed before the waits begin.
pub(super) const FREE_FAILURES: u32 = 5;
const SESSION_COOKIE: &str = "tessera_session";

/// Is a token needed for this address? Everything but 127.0.0.1 and ::1.
pub fn needs_token(addr: &SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V4(ip) => ip != std::net::Ipv4Addr::LOCALHOST,
        std::net::IpAddr::V6(ip) => ip != std::net::Ipv6Addr::LOCALHOST,
    }
}

/// A random token (128 bits from the kernel, hex).
pub fn generate_token() -> Result<String> {
    Ok(super::random::hex(&super::random::random_bytes::<16>()?))
}

/// Every request: the token check (when there is a token), then headers that keep the pages
/// from loading anything from elsewhere.
pub(super) async fn guard(State(st): State<St>, mut req: Request, next: Next) -> Response {
    let mut set_cookie = None;
    if st.token.is_none() && !needs_token(&st.cfg.bind) {
        // Loopback without a token (one user, or accounts): only requests addressed to
        // loopback, so that a web page whose domain is rebound to 127.0.0.1 (DNS rebinding)
        // can neither read the slides nor try passwords from the victim's browser.
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
    if let Mode::Accounts(_) = st.mode {
        match session_gate(&st, &req) {
            Gate::Pass(Some(s)) => {
                req.extensions_mut().insert(s);
            }
            Gate::Pass(None) => {}
            Gate::Refuse(r) => return with_headers(r, None),
        }
    }
    if let Some(token) = &st.token {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let cookie = cookie(&req, "tessera_token");
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
    let res = next.run(req).await;
    with_headers(res, set_cookie)
}

/// The headers every answer gets.
fn with_headers(mut res: Response, set_cookie: Option<String>) -> Response {
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

/// What the accounts mode's gate decided.
enum Gate {
    /// Let in, with the request's session (none for the public routes).
    Pass(Option<Session>),
    /// The answer that refuses it.
    Refuse(Response),
}

/// Accounts mode: the request's session, or the answer that refuses it. Public: the login page
/// and request, the static assets (`Pass(None)`).
fn session_gate(st: &St, req: &Request) -> Gate {
    let path = req.uri().path();
    let changes = !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if changes && !same_origin(req) {
        return Gate::Refuse(
            Fail(StatusCode::FORBIDDEN, "cross-origin request refused".into()).into_response(),
        );
    }
    if path == "/login" || path == "/api/login" || path.starts_with("/static/") {
        return Gate::Pass(None);
    }
    let session = cookie(req, SESSION_COOKIE).and_then(|token| {
        st.db
            .as_ref()
            .and_then(|db| db.session(&token).ok().flatten())
    });
    let Some(session) = session else {
        let page = req.method() == axum::http::Method::GET
            && !(path.starts_with("/api/")
                || path.starts_with("/slides/")
                || path.starts_with("/overlay/"));
        return Gate::Refuse(if page {
            (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, "/login"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
            )
                .into_response()
        } else {
            Fail(
                StatusCode::UNAUTHORIZED,
                "not logged in (or the session ended): log in at /login".into(),
            )
            .into_response()
        });
    };
    if changes {
        let sent = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok());
        if !sent.is_some_and(|t| same(t, &session.csrf)) {
            return Gate::Refuse(
                Fail(
                    StatusCode::FORBIDDEN,
                    "missing or wrong CSRF token (X-CSRF-Token, from /api/me)".into(),
                )
                .into_response(),
            );
        }
    }
    Gate::Pass(Some(session))
}

/// A state-changing request from a page of another origin is refused: when the browser says
/// where it comes from (Origin, else Referer), that must be this host.
fn same_origin(req: &Request) -> bool {
    let h = req.headers();
    let Some(host) = h.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let from = h
        .get(header::ORIGIN)
        .or_else(|| h.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    match from {
        None => true,
        Some(o) => {
            let rest = o
                .strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
                .unwrap_or("");
            rest.split('/').next() == Some(host)
        }
    }
}

/// A cookie's value.
fn cookie(req: &Request, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(prefix.as_str()).map(str::to_string))
}

fn session_cookie(st: &St, value: &str, max_age: i64) -> String {
    format!(
        "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{}",
        if st.cfg.secure_cookies {
            "; Secure"
        } else {
            ""
        }
    )
}

#[derive(Deserialize)]
pub(super) struct Login {
    name: String,
    password: String,
}

/// Most names the throttle remembers; beyond it, entries whose wait is over are dropped.
const THROTTLE_NAMES: usize = 10_000;

/// Counts a login attempt for `key`; `Some(seconds)` when it must wait instead. The first
/// [`FREE_FAILURES`] attempts pass; from then on each waits 30 s, doubling up to 15 min. A
/// name left alone for an hour starts afresh; a success clears it.
fn reserve(m: &mut HashMap<String, Throttle>, key: &str, now: std::time::Instant) -> Option<u64> {
    if m.len() >= THROTTLE_NAMES && !m.contains_key(key) {
        m.retain(|_, t| t.until > now);
        if m.len() >= THROTTLE_NAMES {
            return Some(60);
        }
    }
    let t = m.entry(key.to_string()).or_insert(Throttle {
        failures: 0,
        until: now,
    });
    if now.saturating_duration_since(t.until) > std::time::Duration::from_secs(3600) {
        t.failures = 0;
    }
    if t.until > now {
        return Some((t.until - now).as_secs() + 1);
    }
    t.failures += 1;
    if t.failures >= FREE_FAILURES {
        let wait = 30u64 << (t.failures - FREE_FAILURES).min(5);
        t.until = now + std::time::Duration::from_secs(wait.min(900));
    }
    None
}

/// `POST /api/login` `{"name", "password"}`: a new session (cookie) and its CSRF token.
pub(super) async fn login(State(st): State<St>, req: Request) -> Response {
    let Mode::Accounts(_) = st.mode else {
        return not_found("no accounts: this viewer runs for one user").into_response();
    };
    let Some(db) = st.db.clone() else {
        return not_found("no viewer database").into_response();
    };
    let old = cookie(&req, SESSION_COOKIE);
    let body = match axum::body::to_bytes(req.into_body(), 16 << 10).await {
        Ok(b) => b,
        Err(_) => {
            return Fail(StatusCode::PAYLOAD_TOO_LARGE, "at most 16 KiB".into()).into_response()
        }
    };
    let Ok(Login { name, password }) = serde_json::from_slice::<Login>(&body) else {
        return Fail(
            StatusCode::BAD_REQUEST,
            "expected JSON {\"name\": …, \"password\": …}".into(),
        )
        .into_response();
    };
    // The same folding as the database's NOCASE names (ASCII only).
    let key = name.to_ascii_lowercase();
    let now = std::time::Instant::now();
    // The attempt is counted before the password is checked, so that many guesses sent at
    // once cannot all pass the check while the first ones are still hashing.
    let waiting = match st.throttle.lock() {
        Ok(mut m) => reserve(&mut m, &key, now),
        Err(_) => None,
    };
    if let Some(secs) = waiting {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, secs.to_string())],
            format!("too many failed logins for this name: try again in {secs} s\n"),
        )
            .into_response();
    }
    if !accounts::name_ok(&name) || password.len() > accounts::MAX_PASSWORD {
        return Fail(StatusCode::UNAUTHORIZED, "wrong name or password".into()).into_response();
    }
    let Ok(_permit) = st.hashing.acquire().await else {
        return Fail(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()).into_response();
    };
    let (db2, n2, p2) = (db.clone(), name.clone(), password);
    let checked = tokio::task::spawn_blocking(move || db2.verify(&n2, &p2)).await;
    let user = match checked {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => {
            return Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
        Err(e) => return Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let Some(user) = user else {
        return Fail(StatusCode::UNAUTHORIZED, "wrong name or password".into()).into_response();
    };
    if let Ok(mut m) = st.throttle.lock() {
        m.remove(&key);
    }
    // A session id the browser had before is ended, never carried over (session fixation).
    if let Some(old) = old {
        let _ = db.end_session(&old);
    }
    let lifetime = st.cfg.session_seconds;
    match db.start_session(&user, lifetime) {
        Ok((token, session)) => (
            [(header::SET_COOKIE, session_cookie(&st, &token, lifetime))],
            Json(json!({"name": user.name, "role": user.role, "csrf": session.csrf})),
        )
            .into_response(),
        Err(e) => Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `POST /api/logout`: ends the session.
pub(super) async fn logout(State(st): State<St>, req: Request) -> Response {
    if let (Some(db), Some(token)) = (&st.db, cookie(&req, SESSION_COOKIE)) {
        let _ = db.end_session(&token);
    }
    (
        [(header::SET_COOKIE, session_cookie(&st, "", 0))],
        Json(json!({"logged_out": true})),
    )
        .into_response()
}

/// `GET /api/me`: the mode, and in accounts mode who is logged in and the CSRF token.
pub(super) async fn me(
    State(st): State<St>,
    session: Option<axum::Extension<Session>>,
) -> Json<Value> {
    Json(match (st.mode, session) {
        (Mode::Accounts(_), Some(axum::Extension(s))) => json!({
            "mode": "accounts",
            "name": s.user.name,
            "role": s.user.role,
            "csrf": s.csrf,
        }),
        _ => json!({"mode": "single", "trainee": st.cfg.trainee}),
    })
}

/// `GET /api/users` (instructors): every account's name and role.
pub(super) async fn users(
    State(st): State<St>,
    session: Option<axum::Extension<Session>>,
) -> Response {
    if session.is_none() {
        return not_found("no accounts: this viewer runs for one user").into_response();
    }
    let (role, _) = role_of(&session);
    blocking(move || {
        instructors_only(role)?;
        let db = st
            .db
            .as_ref()
            .ok_or_else(|| not_found("no viewer database"))?;
        Ok(Json(json!({"users": db.users().map_err(internal)?})))
    })
    .await
}

/// Constant-time comparison.
pub(super) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}
