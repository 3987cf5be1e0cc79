//! Slide QC's pictures and annotations.
//!
//! In: the display thumbnail (with its downsample: level-0 pixels per thumbnail pixel) and the
//! [`QcMap`] (artefact flags on the tissue mask's raster). Out: `qc-mask.png` (the raster, each
//! pixel in its kind's colour), `qc-overlay.png` (the thumbnail with each artefact tinted and
//! outlined in its kind's colour) and the artefacts as QuPath annotations
//! classified `Pen`, `Blur`, `Fold`, `Faint`, `Edge`, in level-0 pixels.

use std::path::Path;

use image::RgbImage;

use crate::error::Result;
use crate::qc::{Kind, QcMap};

/// The thumbnail with every artefact tinted (35 %) and outlined in its kind's colour (the
/// colours are named in the report's legend and the README).
pub fn overlay(thumb: &RgbImage, thumb_ds: f64, map: &QcMap) -> RgbImage {
    let (w, h) = thumb.dimensions();
    let scale = thumb_ds / map.downsample;
    let at = |x: i64, y: i64| -> u8 {
        if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
            return 0;
        }
        let mx = ((x as f64 + 0.5) * scale) as usize;
        let my = ((y as f64 + 0.5) * scale) as usize;
        if mx >= map.width || my >= map.height {
            return 0;
        }
        map.flags[my * map.width + mx]
    };
    let mut out = thumb.clone();
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let f = at(x, y);
            let Some(kind) = Kind::ALL.iter().find(|k| f & k.bit() != 0) else {
                continue;
            };
            let bit = kind.bit();
            let edge = [(-1, 0), (1, 0), (0, -1), (0, 1)]
                .iter()
                .any(|(dx, dy)| at(x + dx, y + dy) & bit == 0);
            let c = kind.color();
            let p = out.get_pixel_mut(x as u32, y as u32);
            for (v, &k) in p.0.iter_mut().zip(&c) {
                *v = if edge {
                    k
                } else {
                    (*v as f32 * 0.65 + k as f32 * 0.35).round() as u8
                };
            }
        }
    }
    out
}

/// Writes `qc-mask.png` and `qc-overlay.png` into `dir`.
pub fn write_images(dir: &Path, thumb: &RgbImage, thumb_ds: f64, map: &QcMap) -> Result<()> {
    super::write_png(&dir.join("qc-mask.png"), &map.to_image())?;
    super::write_png(&dir.join("qc-overlay.png"), &overlay(thumb, thumb_ds, map))
}

/// Each kind's artefacts as a GeoJSON region (polygons in level-0 pixels), kinds without any
/// left out. A raster over [`MAX_TRACE_SIDE`] pixels is traced in blocks (a block counts when
/// any of its pixels does), so that tracing stays small on the largest slides.
pub fn regions(map: &QcMap) -> Vec<super::geojson::Region> {
    let present = map.flags.iter().fold(0u8, |a, &f| a | f);
    let f = map.width.max(map.height).div_ceil(MAX_TRACE_SIDE).max(1);
    let (w, h) = (map.width.div_ceil(f), map.height.div_ceil(f));
    Kind::ALL
        .iter()
        .filter(|k| present & k.bit() != 0)
        .map(|&k| {
            let mut values = vec![None; w * h];
            for (i, &flag) in map.flags.iter().enumerate() {
                if flag & k.bit() != 0 {
                    values[(i / map.width / f) * w + (i % map.width) / f] = Some(1.0);
                }
            }
            let heat = crate::stitch::Heatmap {
                width: w as u32,
                height: h as u32,
                cell_l0: map.downsample * f as f64,
                values,
            };
            super::geojson::Region {
                class: k.qupath_class().into(),
                color: k.color(),
                polygons: heat.regions(0.5),
            }
        })
        .filter(|r| !r.polygons.is_empty())
        .collect()
}

/// The largest raster side traced into polygons as it is (1024 pixels: 8 mm of slide at the
/// default 8 µm/px).
pub const MAX_TRACE_SIDE: usize = 1024;
