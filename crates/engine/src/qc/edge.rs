//! Coverslip and slide edges (long straight dark lines) and air bubbles (dark round
//! outlines), both flagged as the `edge` kind.
//!
//! In: the QC thumbnail (RGB at the tissue mask's scale) and the pixels already called ink.
//! Out: an edge mask on the same raster: the lines, and each bubble's disc.
//!
//! Method. Candidate pixels are grey (unsaturated, so not stained tissue) and clearly darker
//! than the slide's glass (its brightness's 90th percentile). A Hough transform (1° angles,
//! 2-pixel distances; Duda & Hart 1972, as HistoQC's coverslip-edge work relies on straight
//! borders) finds the strongest line; when at least [`EdgeParams::min_length_um`] of
//! candidates lie on it, the candidates within [`EdgeParams::band_um`] of it are an edge, are
//! taken out, and the next line is sought (at most [`EdgeParams::max_lines`]). The mask then
//! grows through touching candidates (the dark band beside a coverslip's rim) and is dilated
//! by one pixel.
//!
//! Bubbles. An air bubble under the coverslip shows as a dark grey ring where light is
//! refracted at its rim; the tissue inside it is distorted and out of focus. The candidates not
//! on a line, bridged over gaps of up to two pixels (a one-pixel dilation), are split into
//! connected pieces; a piece is a bubble's outline when it is round: its bounding box between
//! [`EdgeParams::bubble_min_diameter_um`] and [`EdgeParams::bubble_max_diameter_um`] and about
//! square, a least-squares circle (Kåsa 1976) fits its pixels within
//! [`EdgeParams::bubble_max_residual`] of the radius, and its pixels surround the centre
//! ([`EdgeParams::bubble_min_coverage`] of 36 directions). The disc inside is flagged. A bubble
//! whose outline is broken by gaps wider than two pixels, or hidden by dark tissue, is
//! missed; only the outline is evidence (HistoQC has no bubble detector; GrandQC learns them).

use image::RgbImage;

use super::pen::hsv;
use crate::imaging::morph;

/// Thresholds of the edge detector.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeParams {
    /// A candidate's saturation (0–255) is at most this (default 30).
    pub max_sat: f32,
    /// A candidate is at least this much darker than the glass (0–255, default 35).
    pub min_darkness: f32,
    /// A line counts when this many µm of candidates lie on it (default 2500).
    pub min_length_um: f64,
    /// Candidates within this many µm of a found line belong to it (default 24).
    pub band_um: f64,
    /// Lines sought at most (default 6).
    pub max_lines: usize,
    /// The found lines grow through touching candidates this many µm (default 64).
    pub grow_um: f64,
    /// A bubble's outline is at least this wide, µm (default 300).
    pub bubble_min_diameter_um: f64,
    /// … and at most this wide, µm (default 6000).
    pub bubble_max_diameter_um: f64,
    /// Its pixels lie within this share of the radius of the fitted circle, root mean square
    /// (default 0.12).
    pub bubble_max_residual: f64,
    /// Its pixels lie in at least this share of 36 directions from the centre (default 0.8).
    pub bubble_min_coverage: f64,
}

impl Default for EdgeParams {
    fn default() -> Self {
        Self {
            max_sat: 30.0,
            min_darkness: 35.0,
            min_length_um: 2500.0,
            band_um: 24.0,
            max_lines: 6,
            grow_um: 64.0,
            bubble_min_diameter_um: 300.0,
            bubble_max_diameter_um: 6000.0,
            bubble_max_residual: 0.12,
            bubble_min_coverage: 0.8,
        }
    }
}

const ANGLES: usize = 180;

/// The edge mask of `thumb` at `um_px` µm per pixel, ink excluded.
pub fn detect(thumb: &RgbImage, ink: &[bool], um_px: f64, q: &EdgeParams) -> Vec<bool> {
    let (w, h) = (thumb.width() as usize, thumb.height() as usize);
    if w * h == 0 {
        return Vec::new();
    }
    // The glass's brightness: the 90th percentile of the value (max of R, G, B), from a
    // histogram.
    let mut hist = [0usize; 256];
    for p in thumb.pixels() {
        hist[p.0.iter().copied().max().unwrap_or(0) as usize] += 1;
    }
    let k = ((w * h - 1) as f64 * 0.9) as usize;
    let mut seen = 0;
    let glass = (0..256)
        .find(|&v| {
            seen += hist[v];
            seen > k
        })
        .unwrap_or(255) as f32;
    let candidate: Vec<bool> = thumb
        .pixels()
        .zip(ink)
        .map(|(p, &i)| {
            let (_, s, v) = hsv(p.0);
            !i && s <= q.max_sat && v <= glass - q.min_darkness
        })
        .collect();
    let mut left: Vec<usize> = (0..w * h).filter(|&i| candidate[i]).collect();
    let (sin, cos): (Vec<f64>, Vec<f64>) = (0..ANGLES)
        .map(|a| (a as f64).to_radians().sin_cos())
        .unzip();
    let diag = ((w * w + h * h) as f64).sqrt();
    let bins = (2.0 * diag / 2.0).ceil() as usize + 2;
    let rho_bin = |x: usize, y: usize, a: usize| -> usize {
        (((x as f64 * cos[a] + y as f64 * sin[a]) + diag) / 2.0) as usize
    };
    let min_votes = (q.min_length_um / um_px).max(8.0) as u32;
    let band = (q.band_um / um_px).max(1.0);
    let mut found = vec![false; w * h];
    for _ in 0..q.max_lines {
        if (left.len() as u32) < min_votes {
            break;
        }
        // Very many candidates (a dusty or grey slide) vote through an even sample.
        let step = left.len().div_ceil(200_000).max(1);
        let mut acc = vec![0u32; ANGLES * bins];
        for &i in left.iter().step_by(step) {
            let (x, y) = (i % w, i / w);
            for a in 0..ANGLES {
                acc[a * bins + rho_bin(x, y, a)] += 1;
            }
        }
        // Adjacent distance bins together, so a line on a bin border keeps its votes.
        let (best, votes) = (0..acc.len())
            .map(|j| {
                let next = if (j + 1) % bins != 0 { acc[j + 1] } else { 0 };
                (j, (acc[j] + next) * step as u32)
            })
            .max_by_key(|&(j, v)| (v, std::cmp::Reverse(j)))
            .unwrap_or((0, 0));
        if votes < min_votes {
            break;
        }
        let a = best / bins;
        let rho = (best % bins) as f64 * 2.0 - diag + 2.0;
        let (on, off): (Vec<usize>, Vec<usize>) = left.iter().partition(|&&i| {
            let (x, y) = ((i % w) as f64, (i / w) as f64);
            (x * cos[a] + y * sin[a] - rho).abs() <= band
        });
        for i in on {
            found[i] = true;
        }
        left = off;
    }
    let steps = (q.grow_um / um_px).round() as usize;
    let grown = morph::grow(&found, &candidate, w, h, steps);
    let mut out = morph::dilate(&grown, w, h, 1);
    let rest: Vec<bool> = candidate.iter().zip(&out).map(|(&c, &e)| c && !e).collect();
    drop(candidate);
    for (cx, cy, r) in bubbles(&rest, w, h, um_px, q) {
        let reach = r + 1.0;
        let y0 = (cy - reach).floor().max(0.0) as usize;
        let y1 = ((cy + reach).ceil() as usize).min(h - 1);
        let x0 = (cx - reach).floor().max(0.0) as usize;
        let x1 = ((cx + reach).ceil() as usize).min(w - 1);
        for y in y0..=y1 {
            for x in x0..=x1 {
                let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
                if dx * dx + dy * dy <= reach * reach {
                    out[y * w + x] = true;
                }
            }
        }
    }
    out
}

/// The round outlines among `m`'s pieces (see the module's doc): `(cx, cy, r)` in pixels
/// (pixel centres at `+0.5`), each the circle fitted to the outline.
fn bubbles(m: &[bool], w: usize, h: usize, um_px: f64, q: &EdgeParams) -> Vec<(f64, f64, f64)> {
    let (dmin, dmax) = (
        (q.bubble_min_diameter_um / um_px).max(6.0),
        q.bubble_max_diameter_um / um_px,
    );
    // A ring of diameter d has at least about π·d pixels; smaller pieces cannot be one.
    let min_px = (std::f64::consts::PI * dmin * 0.5).max(8.0) as usize;
    // Pieces of the bridged mask, walked one at a time and cleared as they are (no label
    // image: a byte per pixel in all, on the largest thumbnails too); only the original
    // candidates in a piece are evidence.
    let mut left = morph::dilate(m, w, h, 1);
    let (mut stack, mut piece) = (Vec::new(), Vec::new());
    let mut found = Vec::new();
    for start in 0..left.len() {
        if !left[start] {
            continue;
        }
        left[start] = false;
        stack.push(start);
        piece.clear();
        while let Some(i) = stack.pop() {
            if m[i] {
                piece.push(i);
            }
            for j in morph::neighbours4(i, w, h) {
                if left[j] {
                    left[j] = false;
                    stack.push(j);
                }
            }
        }
        if piece.len() < min_px {
            continue;
        }
        if let Some(c) = round_outline(&piece, m, w, h, (dmin, dmax), q) {
            found.push(c);
        }
    }
    found
}

/// The circle of `px` (one piece's candidate pixels, of the candidates `m`), if it is a
/// bubble's outline between `dmin` and `dmax` pixels across.
fn round_outline(
    px: &[usize],
    m: &[bool],
    w: usize,
    h: usize,
    (dmin, dmax): (f64, f64),
    q: &EdgeParams,
) -> Option<(f64, f64, f64)> {
    let (mut x0, mut x1, mut y0, mut y1) = (usize::MAX, 0, usize::MAX, 0);
    for &i in px {
        let (x, y) = (i % w, i / w);
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    let (bw, bh) = ((x1 - x0 + 1) as f64, (y1 - y0 + 1) as f64);
    let d = bw.max(bh);
    if d < dmin || d > dmax || bw.min(bh) < 0.75 * d {
        return None;
    }
    let pts: Vec<(f64, f64)> = px
        .iter()
        .map(|&i| ((i % w) as f64 + 0.5, (i / w) as f64 + 0.5))
        .collect();
    let (cx, cy, r) = fit_circle(&pts)?;
    if (2.0 * r - d).abs() > 0.25 * d {
        return None;
    }
    let sq: f64 = pts
        .iter()
        .map(|&(x, y)| ((x - cx).hypot(y - cy) - r).powi(2))
        .sum();
    let rms = (sq / pts.len() as f64).sqrt();
    // The piece must be at least a half circle on its own …
    let dirs = |pts: &mut dyn Iterator<Item = (f64, f64)>| {
        let mut d = [false; 36];
        for (x, y) in pts {
            let a = (y - cy).atan2(x - cx).to_degrees().rem_euclid(360.0);
            d[((a / 10.0) as usize).min(35)] = true;
        }
        d.iter().filter(|&&v| v).count() as f64 / 36.0
    };
    if rms > q.bubble_max_residual * r || dirs(&mut pts.iter().copied()) < 0.5 {
        return None;
    }
    // … and, with every candidate on the fitted circle (an outline crossing tissue may
    // break into pieces), surround its centre.
    let band = (0.05 * r).max(2.0);
    let (ax, bx) = (
        (cx - r - band).max(0.0) as usize,
        ((cx + r + band) as usize).min(w - 1),
    );
    let (ay, by) = (
        (cy - r - band).max(0.0) as usize,
        ((cy + r + band) as usize).min(h - 1),
    );
    let mut on = (ay..=by)
        .flat_map(|y| (ax..=bx).map(move |x| (x, y)))
        .filter_map(|(x, y)| {
            let (fx, fy) = (x as f64 + 0.5, y as f64 + 0.5);
            (m[y * w + x] && ((fx - cx).hypot(fy - cy) - r).abs() <= band).then_some((fx, fy))
        });
    (dirs(&mut on) >= q.bubble_min_coverage).then_some((cx, cy, r))
}

/// The least-squares circle through `pts` (Kåsa's algebraic fit: x² + y² + D·x + E·y + F = 0,
/// solved by its normal equations), as `(cx, cy, r)`; `None` when degenerate.
fn fit_circle(pts: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    let n = pts.len() as f64;
    // Centred coordinates keep the normal equations well conditioned.
    let (mx, my) = pts
        .iter()
        .fold((0.0, 0.0), |(a, b), &(x, y)| (a + x / n, b + y / n));
    let (mut sxx, mut syy, mut sxy, mut sxz, mut syz, mut sz) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for &(x, y) in pts {
        let (x, y) = (x - mx, y - my);
        let z = x * x + y * y;
        sxx += x * x;
        syy += y * y;
        sxy += x * y;
        sxz += x * z;
        syz += y * z;
        sz += z;
    }
    // With centred sums (Σx = Σy = 0): [sxx sxy; sxy syy]·[D; E] = −[sxz; syz], F = −sz/n.
    let det = sxx * syy - sxy * sxy;
    if det.abs() < 1e-9 {
        return None;
    }
    let d = -(sxz * syy - syz * sxy) / det;
    let e = -(syz * sxx - sxz * sxy) / det;
    let f = -sz / n;
    let r2 = (d * d + e * e) / 4.0 - f;
    (r2 > 0.0).then(|| (mx - d / 2.0, my - e / 2.0, r2.sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_outline_is_a_bubble_and_an_arc_or_a_blob_is_not() {
        let (w, h) = (200usize, 160usize);
        let ring = |cx: f64, cy: f64, r: f64, from: f64, to: f64| -> Vec<bool> {
            (0..w * h)
                .map(|i| {
                    let (dx, dy) = ((i % w) as f64 + 0.5 - cx, (i / w) as f64 + 0.5 - cy);
                    let a = dy.atan2(dx).to_degrees().rem_euclid(360.0);
                    ((dx * dx + dy * dy).sqrt() - r).abs() <= 1.5 && a >= from && a < to
                })
                .collect()
        };
        let q = EdgeParams::default();
        // 8 µm/px: a 1.2 mm bubble is 150 pixels across.
        let found = bubbles(&ring(100.0, 80.0, 60.0, 0.0, 360.0), w, h, 8.0, &q);
        assert_eq!(found.len(), 1, "{found:?}");
        let (cx, cy, r) = found[0];
        assert!((cx - 100.0).abs() < 1.0 && (cy - 80.0).abs() < 1.0 && (r - 60.0).abs() < 1.5);
        // A half circle (a curved scratch) is no bubble, nor a filled disc, nor a tiny ring.
        assert!(bubbles(&ring(100.0, 80.0, 60.0, 0.0, 180.0), w, h, 8.0, &q).is_empty());
        let disc: Vec<bool> = (0..w * h)
            .map(|i| {
                let (dx, dy) = ((i % w) as f64 - 100.0, (i / w) as f64 - 80.0);
                dx * dx + dy * dy < 3600.0
            })
            .collect();
        assert!(bubbles(&disc, w, h, 8.0, &q).is_empty());
        assert!(bubbles(&ring(100.0, 80.0, 10.0, 0.0, 360.0), w, h, 8.0, &q).is_empty());
        assert_eq!(fit_circle(&[(0.0, 0.0), (1.0, 1.0), (2.0, 2.0)]), None);
    }
}
