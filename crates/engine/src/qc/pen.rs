//! Pen ink: green, blue, red and black marker on the slide.
//!
//! In: the QC thumbnail (RGB at the tissue mask's scale, about 8 µm/px) and its µm/px.
//! Out: a pen mask on the same raster (one `bool` per thumbnail pixel).
//!
//! Method. Colour rules in HSV (hue in degrees, saturation and value 0–255, as HistoQC's
//! `LightDarkModule`/`PenMarkingModule` and histolab's `GreenPenFilter`/`RedPenFilter`/
//! `BluePenFilter` state pen colours as RGB/HSV ranges) with hysteresis: pixels matching a
//! strict rule seed the mask, seed components smaller than [`PenParams::seed_min_mm2`] are
//! dropped (a red blood cell cluster at thumbnail scale matches the strict red rule, a stroke
//! of marker does not stay that small), then each seed grows through neighbouring pixels that
//! match a looser rule, at most [`PenParams::grow_um`] away (the fainter rim and streaks of a
//! stroke). H&E never makes green or saturated blue; eosin is pink-magenta (hue about
//! 320–340°), so red ink is told from eosin by a redder hue, far greater saturation and a
//! larger blue-to-green optical-density ratio (which, unlike colour, does not change where
//! eosin lies double in a fold).
//! Black ink is dark and unsaturated; the coverslip's edge is too, so a black component
//! counts as ink only where it is at least [`PenParams::black_min_width_um`] wide (a marker
//! stroke), leaving thin dark lines to the edge detector.
//!
//! Tuned on `../shared/testdata/qc/histoqc` (Dice against the hand-made masks is printed by
//! `tests/qc.rs` and recorded in BENCHMARKS.md) and checked on clean tissue at the same scale.

use image::RgbImage;

use crate::imaging::morph;

/// The pen detector's thresholds. Hue in degrees, saturation and value 0–255.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PenParams {
    /// Green/teal: hue range (default 70–200°) …
    pub green_hue: (f32, f32),
    /// … saturation at least this (default 60) and G − R at least this (default 30).
    pub green_min_sat: f32,
    /// See `green_min_sat`.
    pub green_min_g_minus_r: f32,
    /// Blue: hue range (default 200–250°), saturation at least 90, B − R at least 80.
    pub blue_hue: (f32, f32),
    /// See `blue_hue`.
    pub blue_min_sat: f32,
    /// See `blue_hue`.
    pub blue_min_b_minus_r: f32,
    /// Red: hue from this (default 340°) through 0 to 15°; saturation at least 150;
    /// R − G at least 100 and R − B at least 65.
    pub red_hue_from: f32,
    /// See `red_hue_from`.
    pub red_min_sat: f32,
    /// See `red_hue_from`.
    pub red_min_r_minus_g: f32,
    /// See `red_hue_from`.
    pub red_min_r_minus_b: f32,
    /// Red ink's blue optical density is at least this share of its green one (default 0.68;
    /// the looser rule 0.02 less). Eosin's is about 0.55–0.65, and a ratio of optical densities
    /// does not change where tissue lies double, so a dark fold is not called ink.
    pub red_min_od_blue_over_green: f32,
    /// Black: value at most this (default 60) and saturation at most 110.
    pub black_max_value: f32,
    /// See `black_max_value`.
    pub black_max_sat: f32,
    /// The looser rule that seeds grow through scales each strict threshold by this factor
    /// (default 0.6; black's value limit is raised by 30, red's hue widened by 7°).
    pub weak_factor: f32,
    /// Seed components smaller than this many mm² are dropped (default 0.0016: 25 pixels at
    /// 8 µm/px).
    pub seed_min_mm2: f64,
    /// How far seeds grow through the looser rule, in µm (default 80).
    pub grow_um: f64,
    /// A black component is ink only where it is at least this wide, in µm (default 160).
    pub black_min_width_um: f64,
}

impl Default for PenParams {
    fn default() -> Self {
        Self {
            green_hue: (70.0, 200.0),
            green_min_sat: 60.0,
            green_min_g_minus_r: 30.0,
            blue_hue: (200.0, 250.0),
            blue_min_sat: 90.0,
            blue_min_b_minus_r: 80.0,
            red_hue_from: 340.0,
            red_min_sat: 150.0,
            red_min_r_minus_g: 100.0,
            red_min_r_minus_b: 65.0,
            red_min_od_blue_over_green: 0.68,
            black_max_value: 60.0,
            black_max_sat: 110.0,
            weak_factor: 0.6,
            seed_min_mm2: 0.0016,
            grow_um: 80.0,
            black_min_width_um: 160.0,
        }
    }
}

/// Hue (degrees), saturation and value (0–255) of an RGB pixel.
pub fn hsv(p: [u8; 3]) -> (f32, f32, f32) {
    let [r, g, b] = p.map(f32::from);
    let mx = r.max(g).max(b);
    let mn = r.min(g).min(b);
    let d = mx - mn;
    let h = if d == 0.0 {
        0.0
    } else if mx == r {
        (60.0 * (g - b) / d).rem_euclid(360.0)
    } else if mx == g {
        60.0 * (b - r) / d + 120.0
    } else {
        60.0 * (r - g) / d + 240.0
    };
    let s = if mx > 0.0 { d / mx * 255.0 } else { 0.0 };
    (h, s, mx)
}

/// Which colour rules a pixel `p` (hue, saturation and value `(h, s, v)`, [`hsv`]) meets:
/// `[green, blue, red, black]`, strictly or loosely.
fn rules(p: [u8; 3], (h, s, v): (f32, f32, f32), strict: bool, q: &PenParams) -> [bool; 4] {
    let [r, g, b] = p.map(f32::from);
    let k = if strict { 1.0 } else { q.weak_factor };
    let red_from = if strict {
        q.red_hue_from
    } else {
        q.red_hue_from - 7.0
    };
    let red_to = if strict { 15.0 } else { 20.0 };
    // Only where the other red rules hold (two table look-ups, but most pixels need none).
    let blue_over_green =
        || super::stain::channel_od(p[2]) / super::stain::channel_od(p[1]).max(1e-3);
    let min_bg = q.red_min_od_blue_over_green - if strict { 0.0 } else { 0.02 };
    [
        (q.green_hue.0..=q.green_hue.1).contains(&h)
            && s >= q.green_min_sat * k
            && g - r >= q.green_min_g_minus_r * k,
        h > q.blue_hue.0
            && h <= q.blue_hue.1
            && s >= q.blue_min_sat * k
            && b - r >= q.blue_min_b_minus_r * k,
        (h >= red_from || h <= red_to)
            && s >= q.red_min_sat * k
            && r - g >= q.red_min_r_minus_g * k
            && r - b >= q.red_min_r_minus_b * k
            && blue_over_green() >= min_bg,
        v <= if strict {
            q.black_max_value
        } else {
            q.black_max_value + 30.0
        } && s
            <= if strict {
                q.black_max_sat
            } else {
                q.black_max_sat + 30.0
            },
    ]
}

/// Green ink's bit in [`detect`]'s mask.
pub const GREEN: u8 = 1;
/// Blue ink's bit.
pub const BLUE: u8 = 2;
/// Red ink's bit.
pub const RED: u8 = 4;
/// Black ink's bit.
pub const BLACK: u8 = 8;

/// The pen mask of `thumb` at `um_px` µm per pixel: one byte per pixel, the bits of the ink
/// colours found there ([`GREEN`], [`BLUE`], [`RED`], [`BLACK`]). The colours are done one
/// after another, so that a large thumbnail needs a few bytes per pixel at a time.
pub fn detect(thumb: &RgbImage, um_px: f64, q: &PenParams) -> Vec<u8> {
    let (w, h) = (thumb.width() as usize, thumb.height() as usize);
    // Strict rules in the low four bits, loose ones in the high four.
    let bits = |r: [bool; 4]| {
        r.iter()
            .enumerate()
            .fold(0u8, |a, (k, &v)| a | (u8::from(v) << k))
    };
    let matched: Vec<u8> = thumb
        .pixels()
        .map(|p| {
            let c = hsv(p.0);
            bits(rules(p.0, c, true, q)) | bits(rules(p.0, c, false, q)) << 4
        })
        .collect();
    let px_area_mm2 = (um_px / 1000.0).powi(2);
    let min_px = (q.seed_min_mm2 / px_area_mm2).round().max(1.0) as usize;
    let steps = (q.grow_um / um_px).round().max(0.0) as usize;
    let mut out = vec![0u8; w * h];
    for bit in [GREEN, BLUE, RED, BLACK] {
        if !matched.iter().any(|&m| m & bit != 0) {
            continue;
        }
        let seed: Vec<bool> = matched.iter().map(|&m| m & bit != 0).collect();
        let seed = morph::drop_small(&seed, w, h, min_px);
        let weak: Vec<bool> = matched.iter().map(|&m| m & (bit << 4) != 0).collect();
        let mut m = morph::grow(&seed, &weak, w, h, steps);
        drop((seed, weak));
        if bit == BLACK {
            m = wide_only(m, w, h, q.black_min_width_um / um_px);
        }
        for (o, v) in out.iter_mut().zip(m) {
            if v {
                *o |= bit;
            }
        }
    }
    out
}

/// The components of `m` that are somewhere at least `min_width` pixels wide.
fn wide_only(mut m: Vec<bool>, w: usize, h: usize, min_width: f64) -> Vec<bool> {
    let dist = morph::distance(&m, w, h);
    let (label, sizes) = morph::components(&m, w, h);
    let half = (min_width / 2.0) as f32;
    let mut wide = vec![false; sizes.len()];
    for (i, &l) in label.iter().enumerate() {
        if l != u32::MAX && dist[i] >= half {
            wide[l as usize] = true;
        }
    }
    for (i, v) in m.iter_mut().enumerate() {
        *v = *v && wide[label[i] as usize];
    }
    m
}
