//! Out of focus: a focus measure over tissue, judged against the slide's own tissue.
//!
//! In: RGB tiles of tissue at (about) [`FocusParams::um_px`] — during `analyze` the patches'
//! pixels as read for the model (no second read of the slide), box-reduced to that
//! resolution; in `tessera qc` tiles read for the purpose. Out: one focus score per tile and,
//! for the slide, which tiles are blurred ([`assess`]).
//!
//! Method. The score is 1 / the mean width, in pixels, of the tile's strongest edges
//! (Marziliano et al. 2002, "A no-reference perceptual blur metric"): on the green channel
//! (where haematoxylin and eosin both absorb), along every fourth row and column, at each
//! steepest point of an edge among the tile's strongest tenth (and at least 10 grey levels
//! per pixel), the distance between the intensity extremes on either side. Blur widens every
//! edge by about its σ, so the score falls steadily with blur (a Laplacian's energy, tried
//! first, rises again when heavy blur leaves only JPEG noise), and it hardly depends on how
//! dense or dark the tissue is. Calibrated on real TCGA tissue with Gaussian blurs made on it
//! (`tests/qc.rs`, measured at 1 µm/px): sharp tiles score 0.23–0.30, a slide blurred all over
//! by σ = 0.75 µm 0.16–0.20, σ = 1–3 µm blurs 0.07–0.17; the clean shared slides 0.25–0.37.
//! A tile is blurred when its score is below [`FocusParams::relative`] times the slide's
//! reference (the [`FocusParams::reference_percentile`] of its tiles' scores: the sharpest
//! tissue the scanner managed on this slide), which finds a blurred band on a sharp slide; or
//! below [`FocusParams::absolute`], which finds a slide that is soft all over (its reference is
//! itself low). HistoQC's `BlurDetectionModule` thresholds a Laplacian at thumbnail scale,
//! where focus is barely visible; measuring at about 1 µm/px is what lets a σ = 6 blur be seen.

use image::RgbImage;

/// Thresholds of the focus measure.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FocusParams {
    /// The resolution focus is measured at, µm/px (default 1.0). Pixels finer than this are
    /// box-averaged to it; a slide whose finest level is coarser is measured as it is.
    pub um_px: f64,
    /// Blurred below this share of the slide's reference score (default 0.6).
    pub relative: f32,
    /// Blurred below this score whatever the slide (default 0.2).
    pub absolute: f32,
    /// The reference is this percentile of the slide's tile scores (default 0.9).
    pub reference_percentile: f64,
    /// Fewer measured tiles than this: the relative rule is not applied (default 8).
    pub min_tiles: usize,
    /// `tessera qc`: side of each focus tile, µm (default 160).
    pub tile_um: f64,
    /// `tessera qc`: distance between tiles, µm (default 320; each tile stands for the
    /// square around it).
    pub step_um: f64,
}

impl Default for FocusParams {
    fn default() -> Self {
        Self {
            um_px: 1.0,
            relative: 0.6,
            absolute: 0.2,
            reference_percentile: 0.9,
            min_tiles: 8,
            tile_um: 160.0,
            step_um: 320.0,
        }
    }
}

/// Rows and columns sampled by the measure: every `SAMPLE`th, from the second. The mean width
/// is an average over edges, so it does not need them all; a quarter of the lines costs a
/// quarter of the work (the measure runs on every patch an analysis reads).
const SAMPLE: usize = 4;

/// The focus score of `img` box-reduced by `factor` (1: as it is); `None` when the reduced
/// tile is smaller than 16 × 16 or too flat to judge (grey standard deviation under 3 over
/// the sampled lines).
pub fn measure(img: &RgbImage, factor: u32) -> Option<f32> {
    let f = factor.max(1) as usize;
    let (w, h) = (img.width() as usize / f, img.height() as usize / f);
    if w < 16 || h < 16 {
        return None;
    }
    let rows: Vec<usize> = (1..h - 1).step_by(SAMPLE).collect();
    let cols: Vec<usize> = (1..w - 1).step_by(SAMPLE).collect();
    let (along_rows, along_cols) = sampled_lines(img, f, &rows, &cols);
    let n = (along_rows.len() + along_cols.len()) as f32;
    let all = || along_rows.iter().chain(&along_cols);
    let mean = all().sum::<f32>() / n;
    let var = all().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
    if var < 9.0 {
        return None;
    }
    let (sum, count) = edge_widths(&along_rows, w, &along_cols, h);
    (count >= MIN_EDGES).then(|| (count as f64 / sum) as f32)
}

/// The green channel of `img` (where haematoxylin and eosin both absorb: H&E's contrast),
/// box-averaged by `f` (the remainder dropped), along the reduced image's `rows` (each
/// `width / f` values) and down its `cols` (each `height / f` values), line after line.
fn sampled_lines(img: &RgbImage, f: usize, rows: &[usize], cols: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let w0 = img.width() as usize;
    let (w, h) = (w0 / f, img.height() as usize / f);
    let raw = img.as_raw();
    let scale = 1.0 / (f * f) as f32;
    let mut along_rows = vec![0f32; rows.len() * w];
    let mut sums = vec![0u32; w];
    for (out, &y) in along_rows.chunks_exact_mut(w).zip(rows) {
        sums.iter_mut().for_each(|v| *v = 0);
        for yy in y * f..(y + 1) * f {
            let line = &raw[yy * w0 * 3..(yy * w0 + w * f) * 3];
            // The common factors with a block size the compiler knows (unrolled, no inner
            // loop).
            match f {
                1 => sums
                    .iter_mut()
                    .zip(line.chunks_exact(3))
                    .for_each(|(a, p)| *a += p[1] as u32),
                2 => sums
                    .iter_mut()
                    .zip(line.chunks_exact(6))
                    .for_each(|(a, p)| *a += p[1] as u32 + p[4] as u32),
                4 => sums
                    .iter_mut()
                    .zip(line.chunks_exact(12))
                    .for_each(|(a, p)| {
                        *a += p[1] as u32 + p[4] as u32 + p[7] as u32 + p[10] as u32
                    }),
                _ => sums
                    .iter_mut()
                    .zip(line.chunks_exact(3 * f))
                    .for_each(|(a, p)| {
                        *a += p.iter().skip(1).step_by(3).map(|&v| v as u32).sum::<u32>()
                    }),
            }
        }
        for (g, &v) in out.iter_mut().zip(&sums) {
            *g = v as f32 * scale;
        }
    }
    let mut along_cols = vec![0f32; cols.len() * h];
    let mut col_sums = vec![0u32; cols.len()];
    for y in 0..h {
        col_sums.iter_mut().for_each(|v| *v = 0);
        for yy in y * f..(y + 1) * f {
            let line = &raw[yy * w0 * 3..(yy * w0 + w * f) * 3];
            for (a, &x) in col_sums.iter_mut().zip(cols) {
                *a += line[x * f * 3..(x + 1) * f * 3]
                    .iter()
                    .skip(1)
                    .step_by(3)
                    .map(|&v| v as u32)
                    .sum::<u32>();
            }
        }
        for (c, &v) in col_sums.iter().enumerate() {
            along_cols[c * h + y] = v as f32 * scale;
        }
    }
    (along_rows, along_cols)
}

/// Strong edges needed for a score.
const MIN_EDGES: usize = 12;

/// The widths of strong edges along sampled lines of a grey image — `rows` of `w` values and
/// `cols` of `h`, line after line (Marziliano et al. 2002): at each local maximum of the
/// gradient's magnitude that is among the lines' strongest (at least their 90th percentile
/// and 10 grey levels per pixel), the distance between the intensity extremes on either side.
/// Returns the widths' sum and count.
fn edge_widths(rows: &[f32], w: usize, cols: &[f32], h: usize) -> (f64, usize) {
    // Central differences along each line, and the 90th percentile of their magnitudes from a
    // histogram of whole grey levels.
    let gradient = |lines: &[f32], len: usize, hist: &mut [u32; 256]| -> Vec<f32> {
        let mut g = vec![0f32; lines.len()];
        for (line, out) in lines.chunks_exact(len).zip(g.chunks_exact_mut(len)) {
            for j in 1..len - 1 {
                let a = (line[j + 1] - line[j - 1]) / 2.0;
                out[j] = a;
                hist[(a.abs() as usize).min(255)] += 1;
            }
        }
        g
    };
    let mut hist = [0u32; 256];
    let gx = gradient(rows, w, &mut hist);
    let gy = gradient(cols, h, &mut hist);
    let total: u32 = hist.iter().sum();
    if total == 0 {
        return (0.0, 0);
    }
    let k = (total - 1) * 9 / 10;
    let mut seen = 0;
    let p90 = (0..256)
        .find(|&v| {
            seen += hist[v];
            seen > k
        })
        .unwrap_or(255) as f32;
    let t = p90.max(10.0);
    let (mut sum, mut count) = (0u64, 0usize);
    for (v, g) in rows.chunks_exact(w).zip(gx.chunks_exact(w)) {
        walk(v, g, t, &mut sum, &mut count);
    }
    for (v, g) in cols.chunks_exact(h).zip(gy.chunks_exact(h)) {
        walk(v, g, t, &mut sum, &mut count);
    }
    (sum as f64, count)
}

/// Along one line of grey values `v` with gradient `g`: at each steepest point of an edge at
/// least `t` steep, adds the distance between the intensity extremes on either side.
fn walk(v: &[f32], g: &[f32], t: f32, sum: &mut u64, count: &mut usize) {
    let len = v.len();
    for j in 2..len.saturating_sub(2) {
        let a = g[j].abs();
        if a < t || a < g[j - 1].abs() || a < g[j + 1].abs() {
            continue; // weak, or not the steepest point of its edge
        }
        let s = g[j].signum();
        let mut lo = j;
        while lo > 0 && s * (v[lo] - v[lo - 1]) > 0.0 && j - lo < 32 {
            lo -= 1;
        }
        let mut hi = j;
        while hi + 1 < len && s * (v[hi + 1] - v[hi]) > 0.0 && hi - j < 32 {
            hi += 1;
        }
        *sum += (hi - lo) as u64;
        *count += 1;
    }
}

/// The box-reduction factor that brings pixels of `read_um_px` to about `params.um_px`.
pub fn factor_for(read_um_px: f64, params: &FocusParams) -> u32 {
    (params.um_px / read_um_px).round().max(1.0) as u32
}

/// A slide's focus verdict over its tiles.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// Per input score: blurred or not (`None` scores are never blurred).
    pub blurred: Vec<bool>,
    /// The reference score (the chosen percentile), when enough tiles were measured.
    pub reference: Option<f32>,
    /// Tiles measured.
    pub measured: usize,
    /// Scores' 5th, 25th, 50th, 75th and 95th percentiles.
    pub percentiles: Option<[f32; 5]>,
}

/// Which of `scores` are blurred, by [`FocusParams::relative`] and [`FocusParams::absolute`].
pub fn assess(scores: &[Option<f32>], params: &FocusParams) -> Assessment {
    let mut sorted: Vec<f32> = scores.iter().flatten().copied().collect();
    sorted.sort_by(f32::total_cmp);
    let pct = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let reference =
        (sorted.len() >= params.min_tiles.max(1)).then(|| pct(params.reference_percentile));
    let cut = reference.map_or(params.absolute, |r| {
        (r * params.relative).max(params.absolute)
    });
    Assessment {
        blurred: scores.iter().map(|s| s.is_some_and(|v| v < cut)).collect(),
        reference,
        measured: sorted.len(),
        percentiles: (!sorted.is_empty())
            .then(|| [pct(0.05), pct(0.25), pct(0.5), pct(0.75), pct(0.95)]),
    }
}

/// A focus tile read by [`measure_slide`]: the level-0 cell it stands for and its score.
#[derive(Debug, Clone, PartialEq)]
pub struct FocusTile {
    /// The cell's top-left corner, level-0 pixels.
    pub at: crate::geom::Level0Px,
    /// The cell's side, level-0 pixels.
    pub side: u64,
    /// Its score (`None`: too flat to judge).
    pub score: Option<f32>,
}

/// Focus tiles over `mask`'s tissue, read from `slide` for the purpose (`tessera qc`): one
/// tile of [`FocusParams::tile_um`] at the centre of each [`FocusParams::step_um`] cell that
/// is at least half tissue, read from the coarsest level at least as fine as
/// [`FocusParams::um_px`]. Returns the tiles and the µm/px they were measured at; `Err` says
/// why focus cannot be measured on this slide (a thumbnail-only slide, no tissue cell).
pub fn measure_slide(
    slide: &crate::slide::Slide,
    mask: &crate::tissue::TissueMask,
    mpp: f64,
    params: &FocusParams,
) -> crate::error::Result<std::result::Result<(Vec<FocusTile>, f64), String>> {
    use rayon::prelude::*;
    let levels = slide.levels();
    // A slide much coarser than the focus resolution shows no focus.
    if mpp > params.um_px * 4.0 {
        return Ok(Err(format!(
            "the slide's finest level is {mpp:.2} µm/px; focus needs about {} µm/px",
            params.um_px
        )));
    }
    let level = (0..levels.len())
        .rev()
        .find(|&l| levels[l].downsample * mpp <= params.um_px * 1.01)
        .unwrap_or(0);
    let ds = levels[level].downsample;
    let factor = factor_for(ds * mpp, params);
    let measured_um_px = ds * mpp * factor as f64;
    let step = (params.step_um / mpp).round().max(1.0) as u64;
    let tile = ((params.tile_um / mpp).round() as u64).min(step).max(1);
    let dims = slide.dimensions();
    let (cols, rows) = (dims.width / step, dims.height / step);
    let cells: Vec<(u64, u64)> = (0..rows)
        .flat_map(|r| (0..cols).map(move |c| (c, r)))
        .filter(|&(c, r)| {
            mask.fraction_in(
                crate::geom::Level0Px::new((c * step) as i64, (r * step) as i64),
                step,
                step,
            ) >= 0.5
        })
        .collect();
    if cells.is_empty() {
        return Ok(Err(format!(
            "no tissue cell of {} µm fits on the slide",
            params.step_um
        )));
    }
    let side_read = ((tile as f64 / ds).round() as u64).max(1);
    let tiles = cells
        .par_iter()
        .map(|&(c, r)| -> crate::error::Result<FocusTile> {
            let off = (step - tile) / 2;
            let at = crate::geom::Level0Px::new((c * step + off) as i64, (r * step + off) as i64);
            let img = slide.read_region(at, level, crate::geom::Size::new(side_read, side_read))?;
            Ok(FocusTile {
                at: crate::geom::Level0Px::new((c * step) as i64, (r * step) as i64),
                side: step,
                score: measure(&img, factor),
            })
        })
        .collect::<crate::error::Result<Vec<_>>>()?;
    Ok(Ok((tiles, measured_um_px)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_lines_are_box_averages_for_every_factor() {
        let (w, h) = (37u32, 29u32);
        let mut x = 0x9e37_79b9u32;
        let img = RgbImage::from_fn(w, h, |_, _| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            image::Rgb([x as u8, (x >> 8) as u8, (x >> 16) as u8])
        });
        for f in 1..=5usize {
            let (rw, rh) = (w as usize / f, h as usize / f);
            let at = |bx: usize, by: usize| {
                let mut sum = 0u32;
                for yy in by * f..(by + 1) * f {
                    for xx in bx * f..(bx + 1) * f {
                        sum += img.get_pixel(xx as u32, yy as u32).0[1] as u32;
                    }
                }
                sum as f32 * (1.0 / (f * f) as f32)
            };
            let rows: Vec<usize> = (1..rh - 1).step_by(SAMPLE).collect();
            let cols: Vec<usize> = (1..rw - 1).step_by(SAMPLE).collect();
            let (r, c) = sampled_lines(&img, f, &rows, &cols);
            assert_eq!((r.len(), c.len()), (rows.len() * rw, cols.len() * rh));
            for (k, &y) in rows.iter().enumerate() {
                for x in 0..rw {
                    assert_eq!(r[k * rw + x], at(x, y), "factor {f}, row {y}, x {x}");
                }
            }
            for (k, &x) in cols.iter().enumerate() {
                for y in 0..rh {
                    assert_eq!(c[k * rh + y], at(x, y), "factor {f}, column {x}, y {y}");
                }
            }
        }
    }
}
