//! Stitching: per-patch probabilities into heatmaps and thresholded regions.
//!
//! In: the [`PatchGrid`] and the predictions, keyed by [`GridIndex`]. Out: a [`Heatmap`] per
//! class at patch-stride resolution — each cell is the mean probability of the analysed patches
//! covering it (overlaps averaged), `None` where no patch was analysed — and, for a threshold,
//! the cells at or above it traced into polygons with holes, in level-0 pixel coordinates.
//! Also the slide-level score ([`ScoreMethod`]) and the top-scoring patches, spaced apart, that
//! the report shows as crops ([`top_patches`]).
//! Everything is ordered by grid index, so the output never depends on thread scheduling.

use std::collections::BTreeMap;

use crate::geom::GridIndex;
use crate::grid::{Patch, PatchGrid};

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
        // each side facing an "off" cell. Vertices are cell corners (x, y), numbered x-major
        // (so vertex order is (x, y) order); a vertex has at most two edges out, kept in the
        // order they were found (`NONE` marks an empty slot). Memory: 8 bytes per vertex.
        const NONE: u32 = u32::MAX;
        let vh = self.height as i64 + 1;
        let id = |(x, y): (i64, i64)| (x * vh + y) as u32;
        let at = |v: u32| ((v as i64) / vh, (v as i64) % vh);
        let vertices = (self.width as usize + 1) * vh as usize;
        let mut next: Vec<[u32; 2]> = vec![[NONE; 2]; if self.width == 0 { 0 } else { vertices }];
        let mut push = |from: (i64, i64), to: (i64, i64)| {
            let slots = &mut next[id(from) as usize];
            let free = if slots[0] == NONE { 0 } else { 1 };
            slots[free] = id(to);
        };
        for y in 0..self.height as i64 {
            for x in 0..self.width as i64 {
                if !on(x, y) {
                    continue;
                }
                if !on(x, y - 1) {
                    push((x, y), (x + 1, y)); // top, left to right
                }
                if !on(x + 1, y) {
                    push((x + 1, y), (x + 1, y + 1)); // right, down
                }
                if !on(x, y + 1) {
                    push((x + 1, y + 1), (x, y + 1)); // bottom, leftwards
                }
                if !on(x - 1, y) {
                    push((x, y + 1), (x, y)); // left, up
                }
            }
        }
        // Takes out-edge `k` of vertex `v`, keeping the other in first place.
        let take = |next: &mut Vec<[u32; 2]>, v: u32, k: usize| -> u32 {
            let slots = &mut next[v as usize];
            let out = slots[k];
            if k == 0 {
                slots[0] = slots[1];
            }
            slots[1] = NONE;
            out
        };
        let mut rings: Vec<Vec<(i64, i64)>> = Vec::new();
        for start in 0..next.len() as u32 {
            while next[start as usize][0] != NONE {
                let mut ring = vec![at(start)];
                let mut prev = at(start);
                let mut cur = take(&mut next, start, 0);
                while cur != start {
                    let c = at(cur);
                    ring.push(c);
                    let outs = next[cur as usize];
                    debug_assert!(outs[0] != NONE, "every edge end starts another edge");
                    // Two ways out of a vertex: the cells touch only diagonally. Turn right,
                    // keeping diagonal neighbours as separate regions (4-connectivity).
                    let pick = if outs[1] != NONE {
                        let d_in = (c.0 - prev.0, c.1 - prev.1);
                        let right = (-d_in.1, d_in.0);
                        outs.iter()
                            .position(|&o| {
                                let o = at(o);
                                (o.0 - c.0, o.1 - c.1) == right
                            })
                            .unwrap_or(0)
                    } else {
                        0
                    };
                    let n = take(&mut next, cur, pick);
                    if n == NONE {
                        break; // cannot happen on a closed boundary; never loop forever
                    }
                    prev = c;
                    cur = n;
                }
                ring.push(at(start));
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
        // Each outer ring's area and bounding box, and the outer rings whose box meets each
        // band of BAND rows, in index order: a hole is tested against those of its band only
        // (a dense map has tens of thousands of rings).
        const BAND: i64 = 32;
        let boxes: Vec<(i64, i64, i64, i64)> = outers
            .iter()
            .map(|r| {
                r.iter().fold(
                    (i64::MAX, i64::MAX, i64::MIN, i64::MIN),
                    |(x0, y0, x1, y1), &(x, y)| (x0.min(x), y0.min(y), x1.max(x), y1.max(y)),
                )
            })
            .collect();
        let areas: Vec<i64> = outers.iter().map(|r| area(r)).collect();
        let mut bands: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, b) in boxes.iter().enumerate() {
            for band in b.1.div_euclid(BAND)..=b.3.div_euclid(BAND) {
                bands.entry(band).or_default().push(i);
            }
        }
        let mut polygons: Vec<Vec<Vec<(i64, i64)>>> = outers.into_iter().map(|o| vec![o]).collect();
        for hole in holes {
            // The smallest outer ring containing the hole's first vertex (nudged inwards); the
            // first of equals, as before the bands.
            let p = (hole[0].0 as f64 + 0.5, hole[0].1 as f64 + 0.5);
            let q = (p.0 - 1.0, p.1 - 1.0);
            let inside_box = |b: &(i64, i64, i64, i64), (x, y): (f64, f64)| {
                x >= b.0 as f64 && x <= b.2 as f64 && y >= b.1 as f64 && y <= b.3 as f64
            };
            let mut candidates: Vec<usize> = [p.1, q.1]
                .iter()
                .flat_map(|y| bands.get(&(y.floor() as i64).div_euclid(BAND)))
                .flatten()
                .copied()
                .collect();
            candidates.sort_unstable();
            candidates.dedup();
            let owner = candidates
                .into_iter()
                .filter(|&i| {
                    (inside_box(&boxes[i], p) && contains(&polygons[i][0], p))
                        || (inside_box(&boxes[i], q) && contains(&polygons[i][0], q))
                })
                .min_by_key(|&i| areas[i]);
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

/// How one slide-level score is made from the positive class's patch probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreMethod {
    /// The highest patch probability.
    Max,
    /// The mean of the `k` highest patch probabilities (all of them when fewer).
    MeanTopK(usize),
}

impl Default for ScoreMethod {
    /// The mean of the top 10: one stray patch does not decide the slide.
    fn default() -> Self {
        ScoreMethod::MeanTopK(10)
    }
}

impl std::fmt::Display for ScoreMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScoreMethod::Max => write!(f, "max"),
            ScoreMethod::MeanTopK(k) => write!(f, "mean-top-{k}"),
        }
    }
}

impl std::str::FromStr for ScoreMethod {
    type Err = String;
    /// `max` or `mean-top-K` with K ≥ 1.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "max" {
            return Ok(ScoreMethod::Max);
        }
        match s.strip_prefix("mean-top-").map(str::parse::<usize>) {
            Some(Ok(k)) if k >= 1 => Ok(ScoreMethod::MeanTopK(k)),
            _ => Err(format!(
                "slide score must be `max` or `mean-top-K` with K ≥ 1 (e.g. mean-top-10), not `{s}`"
            )),
        }
    }
}

impl ScoreMethod {
    /// A sentence for the report.
    pub fn describe(&self) -> String {
        match self {
            ScoreMethod::Max => "highest patch probability".into(),
            ScoreMethod::MeanTopK(k) => format!("mean of the {k} highest patch probabilities"),
        }
    }

    /// The score of class `class`, or `None` when no patch was analysed.
    pub fn score(&self, predictions: &Predictions, class: usize) -> Option<f64> {
        let mut v: Vec<f32> = predictions
            .values()
            .filter_map(|p| p.get(class).copied())
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| b.total_cmp(a));
        let k = match self {
            ScoreMethod::Max => 1,
            ScoreMethod::MeanTopK(k) => (*k).min(v.len()),
        };
        Some(v[..k].iter().map(|&p| p as f64).sum::<f64>() / k as f64)
    }
}

/// Up to `k` analysed patches with the highest probability of `class`, highest first (ties in
/// grid order), skipping any whose centre lies within `min_distance_l0` (level-0 pixels, on
/// both axes) of one already chosen, so that crops around them do not overlap.
pub fn top_patches<'g>(
    grid: &'g PatchGrid,
    predictions: &Predictions,
    class: usize,
    k: usize,
    min_distance_l0: f64,
) -> Vec<(&'g Patch, f32)> {
    let mut scored: Vec<(&Patch, f32)> = grid
        .patches
        .iter()
        .filter_map(|p| Some((p, *predictions.get(&p.index)?.get(class)?)))
        .collect();
    // Stable sort: equal scores keep grid order.
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    let centre = |p: &Patch| {
        (
            p.location.x as f64 + p.side as f64 / 2.0,
            p.location.y as f64 + p.side as f64 / 2.0,
        )
    };
    let mut chosen: Vec<(&Patch, f32)> = Vec::new();
    for (p, s) in scored {
        if chosen.len() >= k {
            break;
        }
        let c = centre(p);
        let far = chosen.iter().all(|(q, _)| {
            let d = centre(q);
            (c.0 - d.0).abs() >= min_distance_l0 || (c.1 - d.1).abs() >= min_distance_l0
        });
        if far {
            chosen.push((p, s));
        }
    }
    chosen
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

    #[test]
    fn slide_scores_and_their_names() {
        let mut p = Predictions::new();
        for (i, v) in [0.1f32, 0.9, 0.5, 0.7].iter().enumerate() {
            p.insert(
                GridIndex {
                    col: i as u32,
                    row: 0,
                },
                vec![1.0 - v, *v],
            );
        }
        assert_eq!(ScoreMethod::Max.score(&p, 1), Some(0.9f32 as f64));
        let top2 = ScoreMethod::MeanTopK(2).score(&p, 1).unwrap();
        assert!((top2 - 0.8).abs() < 1e-6, "{top2}");
        // k beyond the number of patches: the mean of all of them.
        let all = ScoreMethod::MeanTopK(99).score(&p, 1).unwrap();
        assert!((all - 0.55).abs() < 1e-6, "{all}");
        assert_eq!(ScoreMethod::Max.score(&Predictions::new(), 1), None);
        for text in ["max", "mean-top-10"] {
            assert_eq!(text.parse::<ScoreMethod>().unwrap().to_string(), text);
        }
        for bad in ["mean-top-0", "top", "mean-top-x", ""] {
            assert!(bad.parse::<ScoreMethod>().is_err(), "{bad}");
        }
    }

    #[test]
    fn top_patches_are_spaced_apart() {
        use crate::geom::Level0Px;
        let mut patches = Vec::new();
        let mut preds = Predictions::new();
        for col in 0..6u32 {
            let index = GridIndex { col, row: 0 };
            patches.push(Patch {
                index,
                location: Level0Px::new(col as i64 * 100, 0),
                side: 100,
                tissue_fraction: 1.0,
            });
            // Scores fall from left to right.
            preds.insert(index, vec![0.0, 1.0 - col as f32 * 0.1]);
        }
        let grid = PatchGrid {
            cols: 6,
            rows: 1,
            side_l0: 100.0,
            stride_l0: 100.0,
            patches,
            skipped: 0,
        };
        let cols = |v: Vec<(&Patch, f32)>| v.iter().map(|(p, _)| p.index.col).collect::<Vec<_>>();
        assert_eq!(cols(top_patches(&grid, &preds, 1, 3, 0.0)), [0, 1, 2]);
        // Crops of 250 px: centres at least 250 apart.
        assert_eq!(cols(top_patches(&grid, &preds, 1, 3, 250.0)), [0, 3]);
    }

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
