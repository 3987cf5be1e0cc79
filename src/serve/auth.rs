//! Who may ask: the token that every request must carry when the viewer listens beyond the
//! loopback address, compared in constant time; and the response headers every answer gets
//! (no caching of private data, a Content-Security-Policy that forbids fetching elsewhere).
//!
//! In: a request and the configured token. Out: the request passed on, or 401. No coordinates.

use super::state::*;
use super::*;

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

/// Every request: the token check (when there is a token), then headers that keep the pages
/// from loading anything from elsewhere.
pub(super) async fn guard(State(st): State<St>, req: Request, next: Next) -> Response {
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
pub(super) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}
