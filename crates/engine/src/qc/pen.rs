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

use super::morph;

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

/// Which colour rules a pixel meets: `[green, blue, red, black]`, strictly or loosely.
fn rules(p: [u8; 3], strict: bool, q: &PenParams) -> [bool; 4] {
    let (h, s, v) = hsv(p);
    let [r, g, b] = p.map(f32::from);
    let k = if strict { 1.0 } else { q.weak_factor };
    let red_from = if strict {
        q.red_hue_from
    } else {
        q.red_hue_from - 7.0
    };
    let red_to = if strict { 15.0 } else { 20.0 };
    let od = |c: f32| -((c + 1.0) / 256.0).log10();
    let blue_over_green = od(b) / od(g).max(1e-3);
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
            && blue_over_green >= min_bg,
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

/// The pen masks of `thumb` at `um_px` µm per pixel: `[green, blue, red, black]`.
pub fn detect(thumb: &RgbImage, um_px: f64, q: &PenParams) -> [Vec<bool>; 4] {
    let (w, h) = (thumb.width() as usize, thumb.height() as usize);
    let n = w * h;
    let mut strict: [Vec<bool>; 4] = std::array::from_fn(|_| vec![false; n]);
    let mut weak: [Vec<bool>; 4] = std::array::from_fn(|_| vec![false; n]);
    for (i, p) in thumb.pixels().enumerate() {
        let (s, l) = (rules(p.0, true, q), rules(p.0, false, q));
        for k in 0..4 {
            strict[k][i] = s[k];
            weak[k][i] = l[k];
        }
    }
    let px_area_mm2 = (um_px / 1000.0).powi(2);
    let min_px = (q.seed_min_mm2 / px_area_mm2).round().max(1.0) as usize;
    let steps = (q.grow_um / um_px).round().max(0.0) as usize;
    let mut out: [Vec<bool>; 4] = std::array::from_fn(|k| {
        let seed = morph::drop_small(&strict[k], w, h, min_px);
        morph::grow(&seed, &weak[k], w, h, steps)
    });
    // Black: keep only components that are somewhere at least a marker's width across.
    let dist = morph::distance(&out[3], w, h);
    let (label, sizes) = morph::components(&out[3], w, h);
    let half_width_px = (q.black_min_width_um / um_px / 2.0) as f32;
    let mut wide = vec![false; sizes.len()];
    for (i, &l) in label.iter().enumerate() {
        if l != u32::MAX && dist[i] >= half_width_px {
            wide[l as usize] = true;
        }
    }
    for (i, v) in out[3].iter_mut().enumerate() {
        *v = *v && wide[label[i] as usize];
    }
    out
}
