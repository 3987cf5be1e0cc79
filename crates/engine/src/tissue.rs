//! Tissue detection: which parts of a slide hold tissue.
//!
//! In: a [`Slide`] and [`TissueParams`]. Out: a [`TissueMask`], a binary image at low
//! resolution (about 8 µm/px by default) that knows its own scale: mask pixel `(mx, my)` covers
//! level-0 pixels `[mx·d, (mx+1)·d) × [my·d, (my+1)·d)` where `d` is [`TissueMask::downsample`].
//!
//! The classical method, as in CLAM, HistoQC and WSInfer: the slide is read from the best
//! pyramid level and box-averaged to the mask grid; HSV saturation is median-blurred and
//! thresholded with Otsu's method (never below a floor, so a blank slide stays blank); then a
//! morphological closing joins nearby fragments, and connected components smaller than a
//! minimum area (objects) or holes smaller than a maximum area are removed / filled.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use image::{GrayImage, RgbImage};

use crate::error::Result;
use crate::geom::{Level0Px, LevelPx, Size};
use crate::slide::Slide;

/// Parameters of the classical tissue detector.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TissueParams {
    /// Target mask resolution in µm per pixel (default 8).
    pub mask_um_px: f64,
    /// Mask downsample (level-0 pixels per mask pixel) when the slide has no MPP (default 32).
    pub fallback_downsample: f64,
    /// Median blur window, in mask pixels (odd; default 7, as CLAM).
    pub median: usize,
    /// Lowest saturation threshold (0–255) Otsu's may choose (default 15).
    pub min_saturation: u8,
    /// Closing kernel side, in mask pixels (default 5).
    pub closing: usize,
    /// Objects smaller than this many mm² are removed (default 0.02).
    pub min_object_mm2: f64,
    /// Holes smaller than this many mm² are filled (default 0.01).
    pub max_hole_mm2: f64,
    /// Largest mask side in pixels (default 4096): coarser masks are used for huge slides.
    pub max_side: u64,
}

impl Default for TissueParams {
    fn default() -> Self {
        Self {
            mask_um_px: 8.0,
            fallback_downsample: 32.0,
            median: 7,
            min_saturation: 15,
            closing: 5,
            min_object_mm2: 0.02,
            max_hole_mm2: 0.01,
            max_side: 4096,
        }
    }
}

/// A binary tissue mask with its own scale.
#[derive(Debug, Clone, PartialEq)]
pub struct TissueMask {
    /// Mask pixels: 255 tissue, 0 background; row-major, `size.width × size.height`.
    pub pixels: Vec<u8>,
    /// Size in mask pixels.
    pub size: Size,
    /// Level-0 pixels per mask pixel.
    pub downsample: f64,
    /// The saturation threshold used (Otsu's, clamped to the floor).
    pub threshold: u8,
}

impl TissueMask {
    /// Fraction of the mask that is tissue.
    pub fn fraction(&self) -> f64 {
        if self.pixels.is_empty() {
            return 0.0;
        }
        self.pixels.iter().filter(|&&p| p > 0).count() as f64 / self.pixels.len() as f64
    }

    /// Tissue area in mm² for a level-0 MPP.
    pub fn area_mm2(&self, mpp_x: f64, mpp_y: f64) -> f64 {
        let px = self.pixels.iter().filter(|&&p| p > 0).count() as f64;
        px * self.downsample * mpp_x * self.downsample * mpp_y / 1e6
    }

    /// Fraction of the level-0 rectangle `[x, x+w) × [y, y+h)` covered by tissue, weighting
    /// each mask pixel by its overlap with the rectangle.
    pub fn fraction_in(&self, at: Level0Px, w: u64, h: u64) -> f64 {
        let d = self.downsample;
        let (x0, y0) = (at.x as f64 / d, at.y as f64 / d);
        let (x1, y1) = ((at.x as f64 + w as f64) / d, (at.y as f64 + h as f64) / d);
        let area = (x1 - x0) * (y1 - y0);
        if area <= 0.0 {
            return 0.0;
        }
        let mut covered = 0.0;
        let cx0 = x0.floor().max(0.0) as u64;
        let cy0 = y0.floor().max(0.0) as u64;
        let cx1 = (x1.ceil().max(0.0) as u64).min(self.size.width);
        let cy1 = (y1.ceil().max(0.0) as u64).min(self.size.height);
        for my in cy0..cy1 {
            let oy = (y1.min(my as f64 + 1.0) - y0.max(my as f64)).max(0.0);
            for mx in cx0..cx1 {
                if self.pixels[(my * self.size.width + mx) as usize] > 0 {
                    let ox = (x1.min(mx as f64 + 1.0) - x0.max(mx as f64)).max(0.0);
                    covered += ox * oy;
                }
            }
        }
        (covered / area).clamp(0.0, 1.0)
    }

    /// The mask as a greyscale image (255 = tissue).
    pub fn to_image(&self) -> GrayImage {
        GrayImage::from_raw(
            self.size.width as u32,
            self.size.height as u32,
            self.pixels.clone(),
        )
        .unwrap_or_default()
    }
}

/// The mask grid for a slide of level-0 `dims` at `mpp` µm/px (if known): downsample
/// (level-0 px per mask px) and size.
pub fn mask_geometry(dims: Size, mpp: Option<f64>, params: &TissueParams) -> (f64, Size) {
    let mut d = match mpp {
        Some(m) => params.mask_um_px / m,
        None => params.fallback_downsample,
    }
    .max(1.0);
    let longest = dims.width.max(dims.height) as f64;
    if longest / d > params.max_side as f64 {
        d = longest / params.max_side as f64;
    }
    let size = Size::new(
        ((dims.width as f64 / d).ceil() as u64).max(1),
        ((dims.height as f64 / d).ceil() as u64).max(1),
    );
    (d, size)
}

/// Reads the slide at the mask's scale: the best level at or finer than the mask, box-averaged
/// to the mask grid. Reads in bounded chunks, so any slide size works within the region limit.
pub fn thumbnail(slide: &Slide, downsample: f64, size: Size) -> Result<RgbImage> {
    let level = slide.best_level_for_downsample(downsample);
    let l = &slide.levels()[level];
    // Level pixels per mask pixel.
    let ratio = downsample / l.downsample;
    let w = size.width as usize;
    let mut out = RgbImage::from_pixel(size.width as u32, size.height as u32, image::Rgb([255; 3]));
    // Sums (r, g, b, count) only for the mask rows the current band of level rows touches,
    // so memory stays at a few rows of the mask, not the whole mask in 32-bit sums.
    let mut rows: BTreeMap<u64, Vec<[u32; 4]>> = BTreeMap::new();
    let finish = |r: u64, acc: Vec<[u32; 4]>, out: &mut RgbImage| {
        for (x, a) in acc.iter().enumerate() {
            if a[3] > 0 {
                let k = a[3];
                let px = [0, 1, 2].map(|c| ((a[c] + k / 2) / k) as u8);
                out.put_pixel(x as u32, r as u32, image::Rgb(px));
            }
        }
    };
    const CHUNK: u64 = 2048;
    let mut cy = 0;
    while cy < l.size.height {
        let ch = CHUNK.min(l.size.height - cy);
        let mut cx = 0;
        while cx < l.size.width {
            let cw = CHUNK.min(l.size.width - cx);
            let at = LevelPx::new(cx as i64, cy as i64).to_level0(l.downsample);
            let img = slide.read_region(at, level, Size::new(cw, ch))?;
            for (x, y, p) in img.enumerate_pixels() {
                let mx = (((cx + x as u64) as f64 / ratio) as usize).min(w - 1);
                let my = (((cy + y as u64) as f64 / ratio) as u64).min(size.height - 1);
                let acc = rows.entry(my).or_insert_with(|| vec![[0; 4]; w]);
                let a = &mut acc[mx];
                for (sum, v) in a.iter_mut().zip(p.0) {
                    *sum += v as u32;
                }
                a[3] += 1;
            }
            cx += cw;
        }
        cy += ch;
        // Mask rows whose level rows have all been read are final.
        while let Some(entry) = rows.first_entry() {
            if ((*entry.key() + 1) as f64 * ratio).ceil() as u64 > cy && cy < l.size.height {
                break;
            }
            let (r, acc) = entry.remove_entry();
            finish(r, acc, &mut out);
        }
    }
    for (r, acc) in std::mem::take(&mut rows) {
        finish(r, acc, &mut out);
    }
    Ok(out)
}

/// HSV saturation scaled to 0–255 (OpenCV's convention).
pub fn saturation(img: &RgbImage) -> Vec<u8> {
    img.pixels()
        .map(|p| {
            let [r, g, b] = p.0;
            let max = r.max(g).max(b) as u32;
            let min = r.min(g).min(b) as u32;
            // Black (max 0) has no saturation.
            (255 * (max - min) + max / 2).checked_div(max).unwrap_or(0) as u8
        })
        .collect()
}

/// Otsu's threshold of a 0–255 image: the level maximising between-class variance; pixels
/// strictly above it are foreground.
pub fn otsu(values: &[u8]) -> u8 {
    let mut hist = [0u64; 256];
    for &v in values {
        hist[v as usize] += 1;
    }
    let total = values.len() as f64;
    let sum_all: f64 = hist
        .iter()
        .enumerate()
        .map(|(i, &h)| i as f64 * h as f64)
        .sum();
    let (mut w0, mut sum0) = (0.0, 0.0);
    let (mut best, mut best_t) = (-1.0, 0u8);
    for (t, &h) in hist.iter().enumerate() {
        w0 += h as f64;
        sum0 += t as f64 * h as f64;
        let w1 = total - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let (m0, m1) = (sum0 / w0, (sum_all - sum0) / w1);
        let between = w0 * w1 * (m0 - m1) * (m0 - m1);
        if between > best {
            best = between;
            best_t = t as u8;
        }
    }
    best_t
}

/// Median filter with a square window (edges replicate), via a running histogram per row.
pub fn median_blur(v: &[u8], w: usize, h: usize, k: usize) -> Vec<u8> {
    let r = (k / 2) as isize;
    if r == 0 {
        return v.to_vec();
    }
    let at = |x: isize, y: isize| -> u8 {
        let x = x.clamp(0, w as isize - 1) as usize;
        let y = y.clamp(0, h as isize - 1) as usize;
        v[y * w + x]
    };
    let half = ((2 * r + 1) * (2 * r + 1) / 2) as u32;
    let mut out = vec![0u8; v.len()];
    for y in 0..h as isize {
        let mut hist = [0u32; 256];
        for dy in -r..=r {
            for dx in -r..=r {
                hist[at(dx, y + dy) as usize] += 1;
            }
        }
        for x in 0..w as isize {
            if x > 0 {
                for dy in -r..=r {
                    hist[at(x - r - 1, y + dy) as usize] -= 1;
                    hist[at(x + r, y + dy) as usize] += 1;
                }
            }
            let mut acc = 0;
            for (val, &c) in hist.iter().enumerate() {
                acc += c;
                if acc > half {
                    out[y as usize * w + x as usize] = val as u8;
                    break;
                }
            }
        }
    }
    out
}

/// Binary dilation (`grow`) or erosion with a square kernel; outside the image counts as
/// background for dilation and as foreground for erosion (so closing does not eat borders).
fn morph(m: &[u8], w: usize, h: usize, k: usize, grow: bool) -> Vec<u8> {
    // Separable: rows then columns.
    let rows = morph_pass(m, w, h, k, grow, (1, 0));
    morph_pass(&rows, w, h, k, grow, (0, 1))
}

/// One 1-D pass of [`morph`] along `dir` ((1, 0) rows, (0, 1) columns).
fn morph_pass(m: &[u8], w: usize, h: usize, k: usize, grow: bool, dir: (isize, isize)) -> Vec<u8> {
    let r = (k / 2) as isize;
    let get = |x: isize, y: isize| -> bool {
        if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
            !grow
        } else {
            m[y as usize * w + x as usize] > 0
        }
    };
    let mut out = vec![0u8; m.len()];
    for y in 0..h as isize {
        for x in 0..w as isize {
            let hit = (-r..=r).any(|d| get(x + d * dir.0, y + d * dir.1) == grow);
            out[y as usize * w + x as usize] = if hit == grow { 255 } else { 0 };
        }
    }
    out
}

/// Removes 4-connected components of value `target` smaller than `min_pixels` by setting them
/// to the other value. With `target` = 255 this removes small objects; with 0, it fills small
/// holes (background components that do not touch the border).
fn remove_small(m: &mut [u8], w: usize, h: usize, target: u8, min_pixels: usize) {
    let mut seen = vec![false; m.len()];
    let mut queue = VecDeque::new();
    let mut component = Vec::new();
    for start in 0..m.len() {
        if seen[start] || m[start] != target {
            continue;
        }
        component.clear();
        let mut touches_border = false;
        seen[start] = true;
        queue.push_back(start);
        while let Some(i) = queue.pop_front() {
            component.push(i);
            let (x, y) = (i % w, i / w);
            touches_border |= x == 0 || y == 0 || x == w - 1 || y == h - 1;
            for j in crate::imaging::morph::neighbours4(i, w, h) {
                if !seen[j] && m[j] == target {
                    seen[j] = true;
                    queue.push_back(j);
                }
            }
        }
        let is_hole = target == 0;
        if component.len() < min_pixels && !(is_hole && touches_border) {
            for &i in &component {
                m[i] = 255 - target;
            }
        }
    }
}

/// Detects tissue on `slide`, using the MPP the file states.
pub fn detect(slide: &Slide, params: &TissueParams) -> Result<TissueMask> {
    let mpp = slide.mpp().map(|m| (m.x + m.y) / 2.0);
    let (downsample, size) = mask_geometry(slide.dimensions(), mpp, params);
    let thumb = thumbnail(slide, downsample, size)?;
    Ok(mask_from_thumbnail(&thumb, downsample, mpp, params))
}

/// The classical mask from an RGB image already at the mask's scale; `mpp` (level-0 µm/px)
/// converts the area parameters to pixels.
pub fn mask_from_thumbnail(
    thumb: &RgbImage,
    downsample: f64,
    mpp: Option<f64>,
    params: &TissueParams,
) -> TissueMask {
    let (w, h) = (thumb.width() as usize, thumb.height() as usize);
    let sat = median_blur(&saturation(thumb), w, h, params.median | 1);
    let threshold = otsu(&sat).max(params.min_saturation);
    let mut m: Vec<u8> = sat
        .iter()
        .map(|&s| if s > threshold { 255 } else { 0 })
        .collect();
    if params.closing > 1 {
        m = morph(
            &morph(&m, w, h, params.closing, true),
            w,
            h,
            params.closing,
            false,
        );
    }
    // Areas in mask pixels (MPP unknown: assume 0.25 µm/px, a 40× scan, so areas stay sane).
    let mpp = mpp.unwrap_or(0.25);
    let px_mm2 = (downsample * mpp / 1000.0).powi(2);
    let min_object = (params.min_object_mm2 / px_mm2).round() as usize;
    let max_hole = (params.max_hole_mm2 / px_mm2).round() as usize;
    remove_small(&mut m, w, h, 255, min_object);
    remove_small(&mut m, w, h, 0, max_hole);
    TissueMask {
        pixels: m,
        size: Size::new(w as u64, h as u64),
        downsample,
        threshold,
    }
}

/// Side of the square input of the tissue U-Net (`../shared/testdata/models/tissue-unet`).
pub const UNET_SIDE: u32 = 500;
/// The U-Net's documented threshold on its sigmoid output.
pub const UNET_THRESHOLD: f32 = 0.6;

/// A tissue mask from an ONNX segmentation model with the tissue U-Net's contract: input NHWC
/// float `[1, 500, 500, 3]`, RGB in 0–1, the whole thumbnail resized to 500 × 500; output
/// `[1, 500, 500, 1]` sigmoid, tissue above 0.6. The result is resampled back to the mask grid
/// of `thumb` (nearest), so it has the same scale as the classical mask.
pub fn mask_from_model(onnx: &Path, thumb: &RgbImage, downsample: f64) -> Result<TissueMask> {
    let side = UNET_SIDE;
    let small = crate::imaging::resize::resize(thumb, side, side);
    let input: Vec<f32> = small.as_raw().iter().map(|&v| v as f32 / 255.0).collect();
    let out = crate::model::run_once(onnx, input, &[1, side as usize, side as usize, 3])?;
    if out.len() != (side * side) as usize {
        return Err(crate::error::Error::Model {
            path: onnx.into(),
            backend: "tract".into(),
            message: format!(
                "a tissue model must output {side}×{side} values, this one gave {}",
                out.len()
            ),
        });
    }
    let (w, h) = (thumb.width() as usize, thumb.height() as usize);
    let mut pixels = vec![0u8; w * h];
    for y in 0..h {
        let sy = ((y as f64 + 0.5) * side as f64 / h as f64) as usize;
        for x in 0..w {
            let sx = ((x as f64 + 0.5) * side as f64 / w as f64) as usize;
            let p = out[sy.min(side as usize - 1) * side as usize + sx.min(side as usize - 1)];
            pixels[y * w + x] = if p > UNET_THRESHOLD { 255 } else { 0 };
        }
    }
    Ok(TissueMask {
        pixels,
        size: Size::new(w as u64, h as u64),
        downsample,
        threshold: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otsu_splits_two_populations() {
        let mut v = vec![10u8; 500];
        v.extend(vec![200u8; 300]);
        let t = otsu(&v);
        assert!((10..200).contains(&t), "{t}");
        assert!(v.iter().filter(|&&x| x > t).count() == 300);
    }

    #[test]
    fn median_removes_salt_noise_and_keeps_edges() {
        let (w, h) = (9, 9);
        let mut v = vec![0u8; w * h];
        v[4 * w + 4] = 255; // isolated speck
        for y in 0..h {
            for x in 6..w {
                v[y * w + x] = 200; // a region with a straight edge
            }
        }
        let m = median_blur(&v, w, h, 3);
        assert_eq!(m[4 * w + 4], 0);
        assert_eq!(m[4 * w + 7], 200);
        assert_eq!(m[4 * w + 5], 0);
    }

    #[test]
    fn small_objects_go_and_small_holes_fill() {
        let (w, h) = (10, 10);
        let mut m = vec![0u8; w * h];
        m[0] = 255; // a 1-pixel object
        for y in 3..9 {
            for x in 3..9 {
                m[y * w + x] = 255;
            }
        }
        m[5 * w + 5] = 0; // a 1-pixel hole
        remove_small(&mut m, w, h, 255, 4);
        remove_small(&mut m, w, h, 0, 4);
        assert_eq!(m[0], 0);
        assert_eq!(m[5 * w + 5], 255);
        assert_eq!(m.iter().filter(|&&p| p > 0).count(), 36);
    }

    #[test]
    fn closing_joins_a_one_pixel_gap() {
        let (w, h) = (7, 3);
        let mut m = vec![255u8; w * h];
        for y in 0..h {
            m[y * w + 3] = 0;
        }
        let closed = morph(&morph(&m, w, h, 3, true), w, h, 3, false);
        assert!(closed.iter().all(|&p| p == 255));
    }

    #[test]
    fn fraction_in_weights_partial_pixels() {
        let mask = TissueMask {
            pixels: vec![255, 0, 0, 0],
            size: Size::new(2, 2),
            downsample: 10.0,
            threshold: 0,
        };
        assert_eq!(mask.fraction(), 0.25);
        assert!((mask.fraction_in(Level0Px::new(0, 0), 10, 10) - 1.0).abs() < 1e-9);
        assert!((mask.fraction_in(Level0Px::new(5, 0), 10, 10) - 0.5).abs() < 1e-9);
        assert_eq!(mask.fraction_in(Level0Px::new(10, 10), 10, 10), 0.0);
        assert_eq!(mask.fraction_in(Level0Px::new(-50, -50), 10, 10), 0.0);
    }
}
