//! Folds and thick or over-stained tissue (too dark), and faint or under-stained tissue.
//!
//! In: the QC thumbnail (RGB at the tissue mask's scale), the tissue mask on the same raster
//! and the pixels already called ink. Out: a fold mask and a faint mask on that raster.
//!
//! Method. Each pixel's optical density, the mean over R, G and B of −log10((I + 1)/256)
//! (Beer–Lambert: OD adds up where tissue lies double), median-filtered. A fold or a thick, over-stained
//! region is tissue whose OD is both above an absolute floor and well above the slide's own
//! median tissue OD (HistoQC's `LightDarkModule.getIntensityThresholdPercent` thresholds
//! darkness in absolute terms only; judging against the slide's median keeps a uniformly dark
//! stain from being called a fold). Candidates are opened with a 3×3 square and components
//! under [`StainParams::fold_min_mm2`] are dropped. Faint tissue is tissue whose OD is below
//! [`StainParams::faint_max_od`] (HistoQC's "too light"), after the same clean-up.

use image::RgbImage;

use crate::imaging::morph;

/// Thresholds of the fold and faint detectors.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StainParams {
    /// A fold's mean OD is at least this (default 0.5: typical H&E tissue, about 0.25, lying double) …
    pub fold_min_od: f32,
    /// … and at least this many times the slide's median tissue OD (default 1.5; tissue lying
    /// double has twice the OD).
    pub fold_relative: f32,
    /// Fold components smaller than this many mm² are dropped (default 0.02).
    pub fold_min_mm2: f64,
    /// Tissue fainter than this mean OD is faint (default 0.06).
    pub faint_max_od: f32,
    /// Faint components smaller than this many mm² are dropped (default 0.05).
    pub faint_min_mm2: f64,
    /// Median filter of the optical density before thresholding, pixels (odd; default 5).
    pub median: usize,
}

impl Default for StainParams {
    fn default() -> Self {
        Self {
            fold_min_od: 0.5,
            fold_relative: 1.5,
            fold_min_mm2: 0.02,
            faint_max_od: 0.06,
            faint_min_mm2: 0.05,
            median: 5,
        }
    }
}

/// Mean optical density of a pixel over R, G and B.
pub fn od(p: [u8; 3]) -> f32 {
    p.iter().map(|&c| channel_od(c)).sum::<f32>() / 3.0
}

/// One channel's optical density, −log10((c + 1)/256), from a table (a logarithm per pixel
/// and channel was a quarter of the thumbnail detectors' time).
pub fn channel_od(c: u8) -> f32 {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|c| -((c as f32 + 1.0) / 256.0).log10()))[c as usize]
}

/// `(fold, faint)` masks, and the median tissue OD they were judged against.
pub fn detect(
    thumb: &RgbImage,
    tissue: &[bool],
    ink: &[bool],
    um_px: f64,
    q: &StainParams,
) -> (Vec<bool>, Vec<bool>, f32) {
    let (w, h) = (thumb.width() as usize, thumb.height() as usize);
    // OD in hundredths, median-filtered: a fold is judged over its surroundings' texture, not
    // pixel by pixel (nuclei and gaps at this scale would break it up).
    let raw: Vec<u8> = thumb
        .pixels()
        .map(|p| (od(p.0) * 100.0).round().clamp(0.0, 255.0) as u8)
        .collect();
    let ods = crate::tissue::median_blur(&raw, w, h, q.median);
    drop(raw);
    // The median tissue OD, from a histogram of the hundredths.
    let mut hist = [0usize; 256];
    for ((&o, &t), &i) in ods.iter().zip(tissue).zip(ink) {
        if t && !i {
            hist[o as usize] += 1;
        }
    }
    let total: usize = hist.iter().sum();
    if total == 0 {
        return (vec![false; w * h], vec![false; w * h], 0.0);
    }
    let mut seen = 0;
    let median = (0..256)
        .find(|&v| {
            seen += hist[v];
            seen > total / 2
        })
        .unwrap_or(0) as f32
        / 100.0;
    let fold_at = q.fold_min_od.max(q.fold_relative * median);
    let px_mm2 = (um_px / 1000.0).powi(2);
    let clean = |m: Vec<bool>, min_mm2: f64| {
        let m = morph::open(&m, w, h, 1);
        morph::drop_small(&m, w, h, (min_mm2 / px_mm2).round().max(1.0) as usize)
    };
    let candidates = |f: &dyn Fn(f32) -> bool| -> Vec<bool> {
        (0..w * h)
            .map(|i| tissue[i] && !ink[i] && f(ods[i] as f32 / 100.0))
            .collect()
    };
    let fold = clean(candidates(&|o| o >= fold_at), q.fold_min_mm2);
    let faint = clean(candidates(&|o| o < q.faint_max_od), q.faint_min_mm2);
    (fold, faint, median)
}
