//! Dense (per-pixel) models: overlapping tiles blended into class maps.
//!
//! In: each tile's model output, `classes × h × w` values (softmax, sigmoid or probabilities,
//! as the model's [`DenseSpec`] says), for a tile at a [`GridIndex`] of a patch grid whose
//! tiles are `tile` model pixels wide and `stride` apart. Out: one [`Heatmap`] per class whose
//! cells are `map_cell_pixels` model pixels (`cell_l0` level-0 pixels) from the slide's
//! origin, each the blended probability of the output pixels whose centres fall in it (`None`
//! where no tile reached or, once [`DenseMap::restrict_to`] is given the tissue mask, outside
//! tissue), and, per tile, its mean probability per class over the whole tile (patches.csv,
//! slide score, top regions). Coordinates: model pixels inside, level-0 pixels in the heatmaps.
//!
//! Blending: an output pixel at `t` model pixels from a tile's edge weighs `ramp(tx)·ramp(ty)`,
//! `ramp(t) = min(1, (t + ½) / overlap, (tile − t − ½) / overlap)` (linear ramps across the
//! overlap, 1 without overlap), so a tile's unreliable borders count less where a neighbour
//! covers them. Sums are fixed point (weights and probabilities in 1/256) added to atomic u32s:
//! addition is exact and order-free, so the maps are byte-identical whatever order the workers
//! finish tiles in. Memory: `(classes + 1) × 4` bytes per cell, allocated once; a
//! full-resolution map is never held (a 100,000² slide at 0.25 µm/px with a 0.5 µm/px model and
//! 16-pixel cells: 3,125² cells, 117 MB for two classes).

use std::sync::atomic::{AtomicU32, Ordering};

use crate::geom::GridIndex;
use crate::model::config::{Activation, DenseSpec};
use crate::stitch::Heatmap;

/// The most cells a class map may have (about 600 MB for two classes): a finer map is refused
/// with advice to raise `dense.map_cell_pixels`.
pub const MAX_CELLS: u64 = 50_000_000;

/// Fixed-point scale of weights and probabilities.
const Q: f32 = 256.0;

/// The class-map accumulator of one slide.
pub struct DenseMap {
    spec: DenseSpec,
    classes: usize,
    tile: u32,
    stride: u32,
    /// Cells across and down.
    cells: (u32, u32),
    /// Level-0 pixels per cell side.
    cell_l0: f64,
    /// `classes` sums per cell, cell after cell.
    sums: Vec<AtomicU32>,
    /// The weight of each cell.
    weights: Vec<AtomicU32>,
    /// Cells whose centre lies in the tissue mask (all, until [`DenseMap::restrict_to`]).
    tissue: Option<Vec<bool>>,
}

impl DenseMap {
    /// An empty map for a slide `extent` level-0 pixels wide and high, analysed with tiles of
    /// `tile` model pixels every `stride`, `scale` level-0 pixels per model pixel. Refuses a
    /// map of more than `max_cells` cells.
    pub fn new(
        spec: DenseSpec,
        classes: usize,
        (tile, stride): (u32, u32),
        extent: (u64, u64),
        scale: f64,
        max_cells: u64,
    ) -> Result<DenseMap, String> {
        let cell = spec.map_cell_pixels.max(1) as f64;
        let across = |l0: u64| (l0 as f64 / scale / cell).ceil().max(1.0) as u64;
        let (w, h) = (across(extent.0), across(extent.1));
        if w * h > max_cells {
            return Err(format!(
                "the class map would have {w} × {h} cells, more than the {max_cells} allowed: \
                 raise the model's dense.map_cell_pixels"
            ));
        }
        let n = (w * h) as usize;
        Ok(DenseMap {
            spec,
            classes,
            tile,
            stride,
            cells: (w as u32, h as u32),
            cell_l0: cell * scale,
            sums: (0..n * classes).map(|_| AtomicU32::new(0)).collect(),
            weights: (0..n).map(|_| AtomicU32::new(0)).collect(),
            tissue: None,
        })
    }

    /// Keeps only the cells whose centre lies in tissue: the maps, their regions and areas are
    /// findings in tissue (a tile also covers glass). One byte per cell.
    pub fn restrict_to(&mut self, mask: &crate::tissue::TissueMask) {
        let (w, h) = self.cells;
        let inside = |cx: u32, cy: u32| -> bool {
            let x = ((cx as f64 + 0.5) * self.cell_l0 / mask.downsample).floor();
            let y = ((cy as f64 + 0.5) * self.cell_l0 / mask.downsample).floor();
            x >= 0.0
                && y >= 0.0
                && (x as u64) < mask.size.width
                && (y as u64) < mask.size.height
                && mask.pixels[(y as u64 * mask.size.width + x as u64) as usize] > 0
        };
        let cells = (0..h)
            .flat_map(|cy| (0..w).map(move |cx| (cx, cy)))
            .map(|(cx, cy)| inside(cx, cy))
            .collect();
        self.tissue = Some(cells);
    }

    /// Adds one tile's output and returns its mean probability per class.
    pub fn add(&self, index: GridIndex, values: &[f32]) -> Result<Vec<f32>, String> {
        let c = self.classes;
        let per = values.len() / c.max(1);
        let side = (per as f64).sqrt().round() as usize;
        if c == 0 || values.len() != c * side * side || side == 0 || self.tile as usize % side != 0
        {
            return Err(format!(
                "a dense output of {} values is not {c} classes of a square map that divides \
                 the {}-pixel tile",
                values.len(),
                self.tile
            ));
        }
        let step = self.tile as usize / side;
        let cell = self.spec.map_cell_pixels as usize;
        if step > cell {
            return Err(format!(
                "the output has one value per {step} model pixels, coarser than the \
                 {cell}-pixel class-map cells: raise dense.map_cell_pixels to {step} or more"
            ));
        }
        let overlap = self.tile.saturating_sub(self.stride) as f32;
        let ramp = |t: f32| -> f32 {
            if overlap <= 0.0 {
                1.0
            } else {
                ((t + 0.5) / overlap)
                    .min((self.tile as f32 - t - 0.5) / overlap)
                    .clamp(0.0, 1.0)
            }
        };
        let origin = (
            index.col as usize * self.stride as usize,
            index.row as usize * self.stride as usize,
        );
        let mut means = vec![0f64; c];
        let mut probs = vec![0f32; c];
        for y in 0..side {
            // The output pixel's centre, in model pixels from the tile's and the slide's origin.
            let ty = (y * step) as f32 + (step as f32 - 1.0) / 2.0;
            let cy = (origin.1 + y * step + step / 2) / cell;
            for x in 0..side {
                let tx = (x * step) as f32 + (step as f32 - 1.0) / 2.0;
                let cx = (origin.0 + x * step + step / 2) / cell;
                for (k, p) in probs.iter_mut().enumerate() {
                    *p = values[k * per + y * side + x];
                }
                activate(self.spec.activation, &mut probs);
                for (m, &p) in means.iter_mut().zip(&probs) {
                    *m += p as f64;
                }
                if cx >= self.cells.0 as usize || cy >= self.cells.1 as usize {
                    continue;
                }
                let at = cy * self.cells.0 as usize + cx;
                if self.tissue.as_ref().is_some_and(|t| !t[at]) {
                    continue;
                }
                let w = (ramp(tx) * ramp(ty) * Q).round().max(1.0) as u32;
                self.weights[at].fetch_add(w, Ordering::Relaxed);
                for (k, &p) in probs.iter().enumerate() {
                    let q = (p.clamp(0.0, 1.0) * Q).round() as u32;
                    self.sums[at * c + k].fetch_add(w * q, Ordering::Relaxed);
                }
            }
        }
        Ok(means
            .into_iter()
            .map(|m| (m / (side * side) as f64) as f32)
            .collect())
    }

    /// The blended map of each class.
    pub fn heatmaps(&self) -> Vec<Heatmap> {
        (0..self.classes)
            .map(|k| Heatmap {
                width: self.cells.0,
                height: self.cells.1,
                cell_l0: self.cell_l0,
                values: self
                    .weights
                    .iter()
                    .enumerate()
                    .map(|(i, w)| {
                        let w = w.load(Ordering::Relaxed);
                        (w > 0).then(|| {
                            let s = self.sums[i * self.classes + k].load(Ordering::Relaxed);
                            (s as f64 / (w as f64 * Q as f64)) as f32
                        })
                    })
                    .collect(),
            })
            .collect()
    }
}

/// Turns one pixel's class values into probabilities.
fn activate(a: Activation, v: &mut [f32]) {
    match a {
        Activation::None => {}
        Activation::Sigmoid => v.iter_mut().for_each(|x| *x = 1.0 / (1.0 + (-*x).exp())),
        Activation::Softmax => {
            let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for x in v.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            v.iter_mut().for_each(|x| *x /= sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(overlap: u32, cell: u32) -> DenseSpec {
        DenseSpec {
            activation: Activation::None,
            overlap_pixels: overlap,
            map_cell_pixels: cell,
        }
    }

    /// A tile of constant probabilities `p` (two classes, 1 − p and p), `side` values a side.
    fn tile(p: f32, side: usize) -> Vec<f32> {
        let mut v = vec![1.0 - p; side * side];
        v.extend(vec![p; side * side]);
        v
    }

    #[test]
    fn overlapping_tiles_blend_with_linear_ramps_in_any_order() {
        // Tiles of 16 model pixels every 8 (overlap 8), cells of 4, a slide 24 pixels wide.
        let make = || DenseMap::new(spec(8, 4), 2, (16, 8), (24, 16), 1.0, 1 << 20).unwrap();
        let (a, b) = (make(), make());
        let left = GridIndex { col: 0, row: 0 };
        let right = GridIndex { col: 1, row: 0 };
        assert_eq!(a.add(left, &tile(0.0, 16)).unwrap(), [1.0, 0.0]);
        a.add(right, &tile(1.0, 16)).unwrap();
        b.add(right, &tile(1.0, 16)).unwrap();
        b.add(left, &tile(0.0, 16)).unwrap();
        let (ha, hb) = (a.heatmaps(), b.heatmaps());
        assert_eq!(ha, hb, "order-free");
        let row: Vec<f32> = (0..6).map(|x| ha[1].values[x].unwrap()).collect();
        // Left of the overlap only the left tile (0); right of it only the right one (1); in
        // between the ramps cross: rising from 0 to 1 across columns 8–15.
        assert_eq!(&row[..2], [0.0, 0.0]);
        assert_eq!(&row[4..], [1.0, 1.0]);
        assert!(
            row[2] > 0.05 && row[2] < 0.5 && row[3] > 0.5 && row[3] < 0.95,
            "{row:?}"
        );
        assert!(
            (row[2] + row[3] - 1.0).abs() < 0.02,
            "symmetric ramps: {row:?}"
        );
        assert_eq!(ha[1].cell_l0, 4.0);
        assert_eq!((ha[1].width, ha[1].height), (6, 4));
    }

    #[test]
    fn coarse_outputs_and_activations() {
        // An output of 4 × 4 for a 16-pixel tile (one value per 4 pixels) fills 4-pixel cells.
        let m = DenseMap::new(
            DenseSpec {
                activation: Activation::Softmax,
                overlap_pixels: 0,
                map_cell_pixels: 4,
            },
            2,
            (16, 16),
            (16, 16),
            2.0,
            1 << 20,
        )
        .unwrap();
        let mut v = vec![0.0; 16];
        v.extend(vec![2f32.ln(); 16]); // softmax: 1/3, 2/3
        let means = m.add(GridIndex { col: 0, row: 0 }, &v).unwrap();
        assert!((means[1] - 2.0 / 3.0).abs() < 1e-6);
        let h = m.heatmaps();
        assert_eq!((h[1].width, h[1].height), (2, 2));
        assert_eq!(h[1].cell_l0, 8.0);
        assert!(h[1].values[..4]
            .iter()
            .all(|v| (v.unwrap() - 2.0 / 3.0).abs() < 1.0 / 256.0));
        // Wrong sizes are refused with the reason.
        assert!(m
            .add(GridIndex { col: 0, row: 0 }, &[0.0; 18])
            .unwrap_err()
            .contains("18 values"));
        let fine = DenseMap::new(spec(0, 2), 2, (16, 16), (16, 16), 1.0, 1 << 20).unwrap();
        assert!(fine
            .add(GridIndex { col: 0, row: 0 }, &tile(0.5, 4))
            .unwrap_err()
            .contains("map_cell_pixels"));
        assert!(DenseMap::new(spec(0, 1), 2, (16, 16), (10_000, 10_000), 1.0, 1000).is_err());
    }
}
