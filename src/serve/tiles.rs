//! Deep Zoom tiles: the slide's (JPEG, read through the slide layer) and the heatmap overlay's
//! (PNG with alpha, drawn from the stored probabilities), with ETags and the tile cache.
//!
//! In: a case id, a Deep Zoom level, column and row (and the overlay's class, colour map and
//! threshold). Out: the tile. Coordinates: Deep Zoom levels in URLs, level-0 pixels inside.

use super::state::*;
use super::*;

pub(super) async fn dzi(State(st): State<St>, UrlPath(name): UrlPath<String>) -> Response {
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
pub(super) fn tile_address<'a>(
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

pub(super) fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
}

pub(super) fn tile_response(bytes: Bytes, ctype: &'static str, etag: &str) -> Response {
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
pub(super) async fn cached_tile(
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

pub(super) async fn slide_tile(
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
pub(super) struct OverlayQuery {
    class: Option<String>,
    cmap: Option<String>,
    threshold: Option<f32>,
}

pub(super) async fn overlay_tile(
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
    // The class the report scored: the slide score's, else the model's, else the last.
    let positive = case.result.positive_class_name().to_string();
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
