//! The patch grid: where the model looks.
//!
//! In: level-0 dimensions and MPP, the model's physical patch (`patch_size_pixels` at
//! `spacing_um_px`, WSInfer's convention), a stride, a [`TissueMask`] and a minimum tissue
//! fraction. Out: a [`PatchGrid`] of patches in level-0 coordinates, keyed by [`GridIndex`], each
//! with its tissue fraction; only patches at or above the threshold are kept for analysis. Also
//! the read plan: which pyramid level to read each patch from (the coarsest at or finer than
//! the model's resolution) and at what size, before resizing to the model's input.

use serde::Serialize;

use crate::geom::{GridIndex, Level0Px, Size};
use crate::slide::Level;
use crate::tissue::TissueMask;

/// What the grid is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct GridSpec {
    /// Model input side in pixels.
    pub patch_pixels: u32,
    /// Model resolution in µm per pixel.
    pub spacing_um_px: f64,
    /// Distance between patch origins, in model pixels (= `patch_pixels` for no overlap).
    pub stride_pixels: u32,
    /// Patches with less tissue than this fraction are skipped (default 0.5).
    pub min_tissue: f64,
}

/// One patch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Patch {
    /// Grid position.
    pub index: GridIndex,
    /// Top-left corner, level-0 pixels.
    pub location: Level0Px,
    /// Side in level-0 pixels.
    pub side: u64,
    /// Fraction of the patch covered by the tissue mask.
    pub tissue_fraction: f64,
}

/// The analysis grid.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchGrid {
    /// Columns and rows of the full grid (analysed or not).
    pub cols: u32,
    /// Rows of the full grid.
    pub rows: u32,
    /// Patch side in level-0 pixels (fractional; each patch rounds it).
    pub side_l0: f64,
    /// Stride in level-0 pixels.
    pub stride_l0: f64,
    /// Patches kept for analysis, in row-major grid order.
    pub patches: Vec<Patch>,
    /// Patches skipped for too little tissue.
    pub skipped: usize,
}

impl PatchGrid {
    /// Lays the grid over a slide of `dims` level-0 pixels at `mpp` µm/px. Only whole patches
    /// inside the slide are placed.
    pub fn plan(dims: Size, mpp: f64, spec: &GridSpec, mask: &TissueMask) -> PatchGrid {
        let scale = spec.spacing_um_px / mpp;
        let side_l0 = spec.patch_pixels as f64 * scale;
        let stride_l0 = spec.stride_pixels.max(1) as f64 * scale;
        let count = |extent: u64| -> u32 {
            if (extent as f64) < side_l0 {
                0
            } else {
                (((extent as f64 - side_l0) / stride_l0).floor() as u64 + 1).min(u32::MAX as u64)
                    as u32
            }
        };
        let (cols, rows) = (count(dims.width), count(dims.height));
        let side = side_l0.round().max(1.0) as u64;
        let mut patches = Vec::new();
        let mut skipped = 0;
        for row in 0..rows {
            for col in 0..cols {
                let location = Level0Px::new(
                    (col as f64 * stride_l0).round() as i64,
                    (row as f64 * stride_l0).round() as i64,
                );
                let tissue_fraction = mask.fraction_in(location, side, side);
                if tissue_fraction >= spec.min_tissue && tissue_fraction > 0.0 {
                    patches.push(Patch {
                        index: GridIndex { col, row },
                        location,
                        side,
                        tissue_fraction,
                    });
                } else {
                    skipped += 1;
                }
            }
        }
        PatchGrid {
            cols,
            rows,
            side_l0,
            stride_l0,
            patches,
            skipped,
        }
    }
}

/// How patches are read: level and size at that level.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReadPlan {
    /// Pyramid level read.
    pub level: usize,
    /// Region side in that level's pixels (resized to the model's input afterwards).
    pub side: u64,
}

/// The coarsest level at or finer than `spacing_um_px`, and the region side to read there.
pub fn read_plan(levels: &[Level], mpp: f64, spec: &GridSpec, side_l0: u64) -> ReadPlan {
    let wanted = spec.spacing_um_px / mpp;
    // Largest downsample not above the wanted one (a tolerance absorbs 2.0005-style levels).
    let level = levels
        .iter()
        .enumerate()
        .filter(|(_, l)| l.downsample <= wanted * 1.001)
        .map(|(i, _)| i)
        .next_back()
        .unwrap_or(0);
    let side = ((side_l0 as f64 / levels[level].downsample).round() as u64).max(1);
    ReadPlan { level, side }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_mask(w: u64, h: u64, d: f64) -> TissueMask {
        TissueMask {
            pixels: vec![255; (w * h) as usize],
            size: Size::new(w, h),
            downsample: d,
            threshold: 0,
        }
    }

    fn spec(stride: u32) -> GridSpec {
        GridSpec {
            patch_pixels: 224,
            spacing_um_px: 0.5,
            stride_pixels: stride,
            min_tissue: 0.5,
        }
    }

    #[test]
    fn grid_counts_whole_patches_at_the_model_resolution() {
        // 0.25 µm/px slide, 0.5 µm/px model: a 224-pixel patch spans 448 level-0 pixels.
        let g = PatchGrid::plan(
            Size::new(2000, 1000),
            0.25,
            &spec(224),
            &full_mask(20, 10, 100.0),
        );
        assert_eq!((g.cols, g.rows), (4, 2));
        assert_eq!(g.patches.len(), 8);
        assert_eq!(g.patches[5].location, Level0Px::new(448, 448));
        assert_eq!(g.patches[5].side, 448);
        // Half overlap doubles the density.
        let g = PatchGrid::plan(
            Size::new(2000, 1000),
            0.25,
            &spec(112),
            &full_mask(20, 10, 100.0),
        );
        assert_eq!((g.cols, g.rows), (7, 3));
        // A slide smaller than one patch has none.
        let g = PatchGrid::plan(
            Size::new(300, 300),
            0.25,
            &spec(224),
            &full_mask(3, 3, 100.0),
        );
        assert!(g.patches.is_empty());
    }

    #[test]
    fn patches_with_too_little_tissue_are_skipped() {
        // Tissue only in the left half of a 4 × 2 mask (each mask pixel = 448 level-0 px).
        let mut m = full_mask(4, 2, 448.0);
        for y in 0..2 {
            for x in 2..4 {
                m.pixels[y * 4 + x] = 0;
            }
        }
        let g = PatchGrid::plan(Size::new(1792, 896), 0.25, &spec(224), &m);
        assert_eq!(g.patches.len(), 4);
        assert_eq!(g.skipped, 4);
        assert!(g
            .patches
            .iter()
            .all(|p| p.index.col < 2 && p.tissue_fraction == 1.0));
    }

    #[test]
    fn read_plan_takes_the_coarsest_level_at_or_finer_than_needed() {
        let level = |ds: f64| Level {
            size: Size::new(1, 1),
            downsample: ds,
            tile_size: None,
        };
        let levels = [level(1.0), level(2.0005), level(8.0)];
        // Needed downsample 2 (0.5 µm/px model on 0.25 µm/px): level 1 (2.0005 ≈ 2).
        let p = read_plan(&levels, 0.25, &spec(224), 448);
        assert_eq!(
            p,
            ReadPlan {
                level: 1,
                side: 224
            }
        );
        // Needed downsample 4: still level 1, read larger and shrink.
        let mut s = spec(224);
        s.spacing_um_px = 1.0;
        assert_eq!(
            read_plan(&levels, 0.25, &s, 896),
            ReadPlan {
                level: 1,
                side: 448
            }
        );
        // Finer than level 0: level 0.
        s.spacing_um_px = 0.1;
        assert_eq!(read_plan(&levels, 0.25, &s, 90).level, 0);
    }
}
