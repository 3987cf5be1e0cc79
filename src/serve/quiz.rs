//! Quiz mode: a trainee's marks on a case, scored against the expert annotation when the case
//! has one, or against the AI's thresholded regions otherwise, and saved per trainee and case.
//!
//! In: marks (points in level-0 pixels), the case's expert GeoJSON (QuPath export: polygons in
//! level-0 pixels) or its [`ProbGrid`] with a class and threshold. Out: a [`Score`] (hits,
//! misses, false marks, and which reference was used); the viewer saves it in its database
//! ([`super::accounts`]).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cases::ProbGrid;
use crate::error::{Error, Result};

/// A trainee's mark: a point in level-0 pixels.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Mark {
    /// Level-0 x.
    pub x: f64,
    /// Level-0 y.
    pub y: f64,
}

/// One region of the reference.
#[derive(Debug, Clone, Serialize)]
pub struct Region {
    /// Polygons (outer ring then holes), level-0 pixels; for AI regions, the patch squares.
    pub polygons: Vec<Vec<Vec<[f64; 2]>>>,
}

impl Region {
    fn contains(&self, x: f64, y: f64) -> bool {
        self.polygons.iter().any(|rings| {
            let mut inside = false;
            for ring in rings {
                // Even-odd over every ring: a point in a hole is outside.
                if ring_contains(ring, x, y) {
                    inside = !inside;
                }
            }
            inside
        })
    }
}

fn ring_contains(ring: &[[f64; 2]], x: f64, y: f64) -> bool {
    let mut inside = false;
    let n = ring.len();
    for i in 0..n {
        let [xi, yi] = ring[i];
        let [xj, yj] = ring[(i + n - 1) % n];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
    }
    inside
}

/// What the marks were scored against.
#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    /// "expert" or "ai".
    pub kind: &'static str,
    /// A sentence for the trainee: which annotation, or which class and threshold.
    pub description: String,
    /// The regions.
    pub regions: Vec<Region>,
}

/// The result of one round.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    /// "expert" or "ai".
    pub reference: &'static str,
    /// Which reference, in words.
    pub reference_description: String,
    /// Regions in the reference.
    pub regions: usize,
    /// Regions with at least one mark in them.
    pub hits: usize,
    /// Regions without any mark.
    pub misses: usize,
    /// Marks outside every region.
    pub false_marks: usize,
    /// For each mark, the region it fell in.
    pub marks: Vec<Option<usize>>,
}

/// The expert annotation of a case folder: `expert.geojson` (a QuPath GeoJSON export:
/// a FeatureCollection, a list of features or one feature; Polygon and MultiPolygon).
pub fn expert(dir: &Path) -> Result<Option<Reference>> {
    let path = dir.join("expert.geojson");
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(None);
    };
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Serve {
        path: path.clone(),
        message: format!("not valid GeoJSON: {e}"),
    })?;
    let features: Vec<&Value> = match &v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) if o.get("type") == Some(&Value::from("FeatureCollection")) => o
            .get("features")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        other => vec![other],
    };
    let ring = |r: &Value| -> Vec<[f64; 2]> {
        r.as_array()
            .map(|pts| {
                pts.iter()
                    .filter_map(|p| Some([p.get(0)?.as_f64()?, p.get(1)?.as_f64()?]))
                    .collect()
            })
            .unwrap_or_default()
    };
    let polygon = |p: &Value| -> Vec<Vec<[f64; 2]>> {
        p.as_array()
            .map(|rings| rings.iter().map(ring).collect())
            .unwrap_or_default()
    };
    let mut regions = Vec::new();
    for f in features {
        let g = &f["geometry"];
        let polygons = match g["type"].as_str() {
            Some("Polygon") => vec![polygon(&g["coordinates"])],
            Some("MultiPolygon") => g["coordinates"]
                .as_array()
                .map(|ps| ps.iter().map(polygon).collect())
                .unwrap_or_default(),
            _ => continue,
        };
        if polygons
            .iter()
            .any(|p| p.first().is_some_and(|r| r.len() >= 3))
        {
            regions.push(Region { polygons });
        }
    }
    Ok(Some(Reference {
        kind: "expert",
        description: format!(
            "the expert annotation (expert.geojson, {} region{})",
            regions.len(),
            if regions.len() == 1 { "" } else { "s" }
        ),
        regions,
    }))
}

/// The AI's regions: 4-connected groups of patches whose probability of `class` is at least
/// `threshold`.
pub fn ai_regions(grid: &ProbGrid, class: usize, threshold: f32) -> Reference {
    let positive = |i: usize| {
        grid.patches[i]
            .probs
            .get(class)
            .is_some_and(|p| *p >= threshold)
    };
    let mut seen = vec![false; grid.patches.len()];
    let mut regions = Vec::new();
    for start in 0..grid.patches.len() {
        if seen[start] || !positive(start) {
            continue;
        }
        let mut stack = vec![start];
        seen[start] = true;
        let mut squares = Vec::new();
        while let Some(i) = stack.pop() {
            let p = &grid.patches[i];
            let (x0, y0) = (p.x as f64, p.y as f64);
            let (x1, y1) = (x0 + p.width as f64, y0 + p.height as f64);
            squares.push(vec![vec![[x0, y0], [x1, y0], [x1, y1], [x0, y1]]]);
            for (dc, dr) in [(1, 0), (-1, 0), (0, 1), (0, -1)] {
                if let Some(&j) = grid.by_cell.get(&(p.col + dc, p.row + dr)) {
                    if !seen[j] && positive(j) {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        regions.push(Region { polygons: squares });
    }
    let name = grid.classes.get(class).cloned().unwrap_or_default();
    Reference {
        kind: "ai",
        description: format!(
            "the AI's regions: connected patches with P({name}) ≥ {threshold} ({} region{}); \
             this case has no expert annotation",
            regions.len(),
            if regions.len() == 1 { "" } else { "s" }
        ),
        regions,
    }
}

/// Scores marks against a reference.
pub fn score(marks: &[Mark], reference: &Reference) -> Score {
    let hit_of: Vec<Option<usize>> = marks
        .iter()
        .map(|m| reference.regions.iter().position(|r| r.contains(m.x, m.y)))
        .collect();
    let mut found = vec![false; reference.regions.len()];
    for r in hit_of.iter().flatten() {
        found[*r] = true;
    }
    let hits = found.iter().filter(|f| **f).count();
    Score {
        reference: reference.kind,
        reference_description: reference.description.clone(),
        regions: reference.regions.len(),
        hits,
        misses: reference.regions.len() - hits,
        false_marks: hit_of.iter().filter(|h| h.is_none()).count(),
        marks: hit_of,
    }
}

/// A trainee's name as given, if it is acceptable: 1–64 letters, digits, spaces, `.`, `_`,
/// `-` (it names a folder).
pub fn trainee_ok(name: &str) -> bool {
    let t = name.trim();
    !t.is_empty()
        && t.len() <= 64
        && t == name
        && !t.starts_with('.')
        && t.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_score_against_polygons_with_holes() {
        let square =
            |x0: f64, y0: f64, s: f64| vec![[x0, y0], [x0 + s, y0], [x0 + s, y0 + s], [x0, y0 + s]];
        let reference = Reference {
            kind: "expert",
            description: String::new(),
            regions: vec![
                Region {
                    polygons: vec![vec![square(0.0, 0.0, 100.0), square(40.0, 40.0, 20.0)]],
                },
                Region {
                    polygons: vec![vec![square(500.0, 500.0, 10.0)]],
                },
                Region {
                    polygons: vec![vec![square(900.0, 0.0, 10.0)]],
                },
            ],
        };
        let marks = [
            Mark { x: 10.0, y: 10.0 },   // region 0
            Mark { x: 50.0, y: 50.0 },   // in the hole: false
            Mark { x: 505.0, y: 505.0 }, // region 1
            Mark { x: 20.0, y: 90.0 },   // region 0 again
        ];
        let s = score(&marks, &reference);
        assert_eq!((s.regions, s.hits, s.misses, s.false_marks), (3, 2, 1, 1));
        assert_eq!(s.marks, vec![Some(0), None, Some(1), Some(0)]);
    }

    #[test]
    fn trainee_names_cannot_escape() {
        assert!(trainee_ok("Dr. Ana-María_2"));
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            ".hidden",
            " x",
            "a\\b",
            &"x".repeat(65),
        ] {
            assert!(!trainee_ok(bad), "{bad}");
        }
    }
}
