//! Stitching: per-patch probabilities into heatmaps and thresholded regions.
//!
//! In: the [`PatchGrid`] and the predictions, keyed by [`GridIndex`]. Out: a [`Heatmap`] per
//! class at patch-stride resolution — each cell is the mean probability of the analysed patches
//! covering it (overlaps averaged), `None` where no patch was analysed — and, for a threshold,
//! the cells at or above it traced into polygons with holes, in level-0 pixel coordinates.
//! Everything is ordered by grid index, so the output never depends on thread scheduling.

use std::collections::BTreeMap;

use crate::geom::GridIndex;
use crate::grid::PatchGrid;

/// Probabilities per analysed patch, one value per class.
pub type Predictions = BTreeMap<GridIndex, Vec<f32>>;

/// One class's probability map.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    /// Cells across.
    pub width: u32,
    /// Cells down.
    pub height: u32,
    /// Level-0 pixels per cell side (the stride).
    pub cell_l0: f64,
    /// Row-major cell values; `None` where nothing was analysed.
    pub values: Vec<Option<f32>>,
}

impl Heatmap {
    /// Builds the map of class `class`.
    pub fn build(grid: &PatchGrid, predictions: &Predictions, class: usize) -> Heatmap {
        // A patch spans k × k stride cells.
        let k = ((grid.side_l0 / grid.stride_l0).round() as u32).max(1);
        let (width, height) = if grid.cols == 0 || grid.rows == 0 {
            (0, 0)
        } else {
            (grid.cols + k - 1, grid.rows + k - 1)
        };
        let mut sum = vec![0f64; (width * height) as usize];
        let mut count = vec![0u32; (width * height) as usize];
        for (idx, probs) in predictions {
            let Some(&p) = probs.get(class) else { continue };
            for dy in 0..k {
                for dx in 0..k {
                    let i = ((idx.row + dy) * width + idx.col + dx) as usize;
                    sum[i] += p as f64;
                    count[i] += 1;
                }
            }
        }
        let values = sum
            .iter()
            .zip(&count)
            .map(|(&s, &n)| (n > 0).then(|| (s / n as f64) as f32))
            .collect();
        Heatmap {
            width,
            height,
            cell_l0: grid.stride_l0,
            values,
        }
    }

    /// The value of cell `(x, y)`.
    pub fn get(&self, x: u32, y: u32) -> Option<f32> {
        self.values[(y * self.width + x) as usize]
    }

    /// The map as 8-bit probabilities (0 where nothing was analysed).
    pub fn to_u8(&self) -> Vec<u8> {
        self.values
            .iter()
            .map(|p| p.map_or(0, |p| (p.clamp(0.0, 1.0) * 255.0).round() as u8))
            .collect()
    }

    /// Cells at or above `threshold`, traced into polygons (outer ring first, then holes),
    /// in level-0 pixels. Rings are closed (first point repeated last); outer rings run
    /// clockwise on screen (y down), holes counter-clockwise.
    pub fn regions(&self, threshold: f32) -> Vec<Vec<Vec<[f64; 2]>>> {
        let on = |x: i64, y: i64| -> bool {
            x >= 0
                && y >= 0
                && (x as u32) < self.width
                && (y as u32) < self.height
                && self.get(x as u32, y as u32).is_some_and(|p| p >= threshold)
        };
        // Directed boundary edges with the region on the right (y down): for each "on" cell,
        // each side facing an "off" cell. Vertices are cell corners (x, y).
        let mut next: BTreeMap<(i64, i64), Vec<(i64, i64)>> = BTreeMap::new();
        for y in 0..self.height as i64 {
            for x in 0..self.width as i64 {
                if !on(x, y) {
                    continue;
                }
                if !on(x, y - 1) {
                    next.entry((x, y)).or_default().push((x + 1, y)); // top, left to right
                }
                if !on(x + 1, y) {
                    next.entry((x + 1, y)).or_default().push((x + 1, y + 1)); // right, down
                }
                if !on(x, y + 1) {
                    next.entry((x + 1, y + 1)).or_default().push((x, y + 1)); // bottom, leftwards
                }
                if !on(x - 1, y) {
                    next.entry((x, y + 1)).or_default().push((x, y)); // left, up
                }
            }
        }
        let mut rings: Vec<Vec<(i64, i64)>> = Vec::new();
        let starts: Vec<(i64, i64)> = next.keys().copied().collect();
        for start in starts {
            while next.get(&start).is_some_and(|v| !v.is_empty()) {
                let mut ring = vec![start];
                let mut prev = start;
                let mut cur = {
                    let v = next.get_mut(&start).expect("present");
                    v.remove(0)
                };
                while cur != start {
                    ring.push(cur);
                    let outs = next
                        .get_mut(&cur)
                        .expect("every edge end starts another edge");
                    // Two ways out of a vertex: the cells touch only diagonally. Turn right,
                    // keeping diagonal neighbours as separate regions (4-connectivity).
                    let pick = if outs.len() > 1 {
                        let d_in = (cur.0 - prev.0, cur.1 - prev.1);
                        let right = (-d_in.1, d_in.0);
                        outs.iter()
                            .position(|&o| (o.0 - cur.0, o.1 - cur.1) == right)
                            .unwrap_or(0)
                    } else {
                        0
                    };
                    let n = outs.remove(pick);
                    prev = cur;
                    cur = n;
                }
                ring.push(start);
                rings.push(simplify(ring));
            }
        }
        // Signed area (shoelace, y down): outer rings positive, holes negative.
        let area = |r: &[(i64, i64)]| -> i64 {
            r.windows(2)
                .map(|w| w[0].0 * w[1].1 - w[1].0 * w[0].1)
                .sum()
        };
        let (outers, holes): (Vec<_>, Vec<_>) = rings.into_iter().partition(|r| area(r) > 0);
        let mut polygons: Vec<Vec<Vec<(i64, i64)>>> = outers.into_iter().map(|o| vec![o]).collect();
        for hole in holes {
            // The smallest outer ring containing the hole's first vertex (nudged inwards).
            let p = (hole[0].0 as f64 + 0.5, hole[0].1 as f64 + 0.5);
            let owner = polygons
                .iter()
                .enumerate()
                .filter(|(_, poly)| {
                    contains(&poly[0], p) || contains(&poly[0], (p.0 - 1.0, p.1 - 1.0))
                })
                .min_by_key(|(_, poly)| area(&poly[0]))
                .map(|(i, _)| i);
            if let Some(i) = owner {
                polygons[i].push(hole);
            }
        }
        let s = self.cell_l0;
        polygons
            .into_iter()
            .map(|poly| {
                poly.into_iter()
                    .map(|r| {
                        r.into_iter()
                            .map(|(x, y)| [x as f64 * s, y as f64 * s])
                            .collect()
                    })
                    .collect()
            })
            .collect()
    }
}

/// Removes vertices in the middle of straight runs; keeps the ring closed.
fn simplify(ring: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    let n = ring.len() - 1; // last repeats first
    let pts = &ring[..n];
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(n + 1);
    for i in 0..n {
        let a = pts[(i + n - 1) % n];
        let b = pts[i];
        let c = pts[(i + 1) % n];
        let collinear = (b.0 - a.0) * (c.1 - b.1) == (b.1 - a.1) * (c.0 - b.0);
        if !collinear {
            out.push(b);
        }
    }
    if let Some(&first) = out.first() {
        out.push(first);
    }
    out
}

/// Even-odd point-in-polygon test.
fn contains(ring: &[(i64, i64)], p: (f64, f64)) -> bool {
    let mut inside = false;
    for w in ring.windows(2) {
        let (a, b) = (
            (w[0].0 as f64, w[0].1 as f64),
            (w[1].0 as f64, w[1].1 as f64),
        );
        if (a.1 > p.1) != (b.1 > p.1) && p.0 < (b.0 - a.0) * (p.1 - a.1) / (b.1 - a.1) + a.0 {
            inside = !inside;
        }
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(w: u32, h: u32, on: &[(u32, u32)]) -> Heatmap {
        let mut values = vec![Some(0.0); (w * h) as usize];
        for &(x, y) in on {
            values[(y * w + x) as usize] = Some(0.9);
        }
        Heatmap {
            width: w,
            height: h,
            cell_l0: 10.0,
            values,
        }
    }

    #[test]
    fn one_cell_is_a_closed_square_in_level0_pixels() {
        let r = map(3, 3, &[(1, 1)]).regions(0.5);
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0][0],
            vec![
                [10.0, 10.0],
                [20.0, 10.0],
                [20.0, 20.0],
                [10.0, 20.0],
                [10.0, 10.0]
            ]
        );
    }

    #[test]
    fn a_ring_of_cells_has_a_hole() {
        let mut on = Vec::new();
        for y in 0..3 {
            for x in 0..3 {
                if (x, y) != (1, 1) {
                    on.push((x, y));
                }
            }
        }
        let r = map(3, 3, &on).regions(0.5);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].len(), 2, "outer ring and one hole");
        assert_eq!(r[0][0].len(), 5);
        assert_eq!(r[0][1].len(), 5);
    }

    #[test]
    fn diagonal_neighbours_are_separate_regions() {
        let r = map(2, 2, &[(0, 0), (1, 1)]).regions(0.5);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r.iter().all(|p| p.len() == 1 && p[0].len() == 5));
    }

    #[test]
    fn overlapping_patches_are_averaged() {
        let grid = PatchGrid {
            cols: 2,
            rows: 1,
            side_l0: 20.0,
            stride_l0: 10.0,
            patches: Vec::new(),
            skipped: 0,
        };
        let mut preds = Predictions::new();
        preds.insert(GridIndex { col: 0, row: 0 }, vec![0.2]);
        preds.insert(GridIndex { col: 1, row: 0 }, vec![0.6]);
        let h = Heatmap::build(&grid, &preds, 0);
        assert_eq!((h.width, h.height), (3, 2));
        assert_eq!(h.get(0, 0), Some(0.2));
        assert!((h.get(1, 0).unwrap() - 0.4).abs() < 1e-6);
        assert_eq!(h.get(2, 1), Some(0.6));
    }
}
