//! Coverslip and slide edges: long straight dark lines.
//!
//! In: the QC thumbnail (RGB at the tissue mask's scale) and the pixels already called ink.
//! Out: an edge mask on the same raster.
//!
//! Method. Candidate pixels are grey (unsaturated, so not stained tissue) and clearly darker
//! than the slide's glass (its brightness's 90th percentile). A Hough transform (1° angles,
//! 2-pixel distances; Duda & Hart 1972, as HistoQC's coverslip-edge work relies on straight
//! borders) finds the strongest line; when at least [`EdgeParams::min_length_um`] of
//! candidates lie on it, the candidates within [`EdgeParams::band_um`] of it are an edge, are
//! taken out, and the next line is sought (at most [`EdgeParams::max_lines`]). The mask then
//! grows through touching candidates (the dark band beside a coverslip's rim) and is dilated
//! by one pixel. Bubbles, whose outlines are curved, are not detected.

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
    morph::dilate(&grown, w, h, 1)
}
