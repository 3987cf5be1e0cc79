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
    /// The expert's label (QuPath: the classification's name, else the annotation's name).
    pub label: Option<String>,
    /// The expert's note on it (QuPath: the annotation's description), shown as text.
    pub note: Option<String>,
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
    /// The regions to find.
    pub regions: Vec<Region>,
    /// The expert's other regions (labelled with other classes): not to be found, but a false
    /// mark inside one is told what lies there.
    pub context: Vec<Region>,
}

/// What lies under a mark outside every region to find.
#[derive(Debug, Clone, Serialize)]
pub struct FalseMark {
    /// Which mark (index into the round's marks).
    pub mark: usize,
    /// The label of the expert's other region there, if any.
    pub expert_label: Option<String>,
    /// The AI's probability of the question's class at that point, if a patch was analysed
    /// there.
    pub ai_probability: Option<f32>,
}

/// One point of the FROC-style curve: after the first `marks` marks (in the order given).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FrocPoint {
    /// Marks so far.
    pub marks: usize,
    /// False marks among them.
    pub false_marks: usize,
    /// Regions found by them, over all regions.
    pub sensitivity: f64,
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
    /// For each region, whether a mark fell in it.
    pub found: Vec<bool>,
    /// Regions found over regions (none without regions).
    pub sensitivity: Option<f64>,
    /// Marks inside a region over all marks (none without marks).
    pub precision: Option<f64>,
    /// Sensitivity against false marks as the marks were placed (the order stands in for the
    /// trainee's confidence: a mark placed first is the surest); only with several regions.
    pub froc: Vec<FrocPoint>,
    /// What lies under each false mark (filled by the caller, which has the AI's grid).
    pub false_mark_details: Vec<FalseMark>,
}

/// The expert annotation of a case folder: `expert.geojson` (a QuPath GeoJSON export:
/// a FeatureCollection, a list of features or one feature; Polygon and MultiPolygon). When
/// `class` names the label of some regions, those are the regions to find and the others are
/// context; otherwise every region is to be found.
pub fn expert(dir: &Path, class: Option<&str>) -> Result<Option<Reference>> {
    let path = dir.join("expert.geojson");
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(None);
    };
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Serve {
        path: path.clone(),
        message: format!("not valid GeoJSON: {e}"),
    })?;
    expert_from_value(&v, class)
        .map(Some)
        .map_err(|message| Error::Serve { path, message })
}

/// Most polygon vertices in an expert annotation (each mark is tested against all of them).
pub const MAX_VERTICES: usize = 2_000_000;

/// Coordinate pairs anywhere in a GeoJSON document.
fn count_vertices(v: &Value) -> usize {
    match v {
        Value::Array(a) if a.len() >= 2 && a[0].is_number() && a[1].is_number() => 1,
        Value::Array(a) => a.iter().map(count_vertices).sum(),
        Value::Object(o) => o.values().map(count_vertices).sum(),
        _ => 0,
    }
}

/// [`expert`] from a GeoJSON document already read (a course's ground truth).
pub fn expert_from_value(v: &Value, class: Option<&str>) -> std::result::Result<Reference, String> {
    if !matches!(v, Value::Object(_) | Value::Array(_)) {
        return Err("not a GeoJSON object".into());
    }
    let vertices = count_vertices(v);
    if vertices > MAX_VERTICES {
        return Err(format!(
            "{vertices} vertices; at most {MAX_VERTICES} are scored against"
        ));
    }
    let features: Vec<&Value> = match v {
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
    let text = |v: &Value| {
        v.as_str()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| t.chars().take(2000).collect::<String>())
    };
    for f in features {
        let props = &f["properties"];
        let label = text(&props["classification"]["name"]).or_else(|| text(&props["name"]));
        let note = text(&props["description"]).or_else(|| text(&props["note"]));
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
            regions.push(Region {
                polygons,
                label,
                note,
            });
        }
    }
    let of_class = |r: &Region| {
        class.is_some_and(|c| {
            r.label
                .as_deref()
                .is_some_and(|l| l.eq_ignore_ascii_case(c))
        })
    };
    let (regions, context): (Vec<Region>, Vec<Region>) = if regions.iter().any(of_class) {
        regions.into_iter().partition(of_class)
    } else {
        (regions, Vec::new())
    };
    let which = if context.is_empty() {
        String::new()
    } else {
        format!(" labelled {}", class.unwrap_or_default())
    };
    Ok(Reference {
        kind: "expert",
        description: format!(
            "the expert annotation ({} region{}{which})",
            regions.len(),
            if regions.len() == 1 { "" } else { "s" }
        ),
        regions,
        context,
    })
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
        regions.push(Region {
            polygons: squares,
            label: None,
            note: None,
        });
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
        context: Vec::new(),
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
    let n = reference.regions.len();
    let false_marks = hit_of.iter().filter(|h| h.is_none()).count();
    let mut froc = Vec::new();
    if n > 1 {
        let mut seen = vec![false; n];
        let (mut found_so_far, mut false_so_far) = (0, 0);
        for (i, h) in hit_of.iter().enumerate() {
            match h {
                Some(r) if !seen[*r] => {
                    seen[*r] = true;
                    found_so_far += 1;
                }
                Some(_) => {}
                None => false_so_far += 1,
            }
            froc.push(FrocPoint {
                marks: i + 1,
                false_marks: false_so_far,
                sensitivity: found_so_far as f64 / n as f64,
            });
        }
    }
    let false_mark_details = hit_of
        .iter()
        .enumerate()
        .filter(|(_, h)| h.is_none())
        .map(|(i, _)| FalseMark {
            mark: i,
            expert_label: reference
                .context
                .iter()
                .find(|r| r.contains(marks[i].x, marks[i].y))
                .and_then(|r| r.label.clone()),
            ai_probability: None,
        })
        .collect();
    Score {
        reference: reference.kind,
        reference_description: reference.description.clone(),
        regions: n,
        hits,
        misses: n - hits,
        false_marks,
        sensitivity: (n > 0).then(|| hits as f64 / n as f64),
        precision: (!marks.is_empty())
            .then(|| (marks.len() - false_marks) as f64 / marks.len() as f64),
        marks: hit_of,
        found,
        froc,
        false_mark_details,
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
        let region = |p: Vec<Vec<[f64; 2]>>| Region {
            polygons: vec![p],
            label: None,
            note: None,
        };
        let reference = Reference {
            kind: "expert",
            description: String::new(),
            regions: vec![
                region(vec![square(0.0, 0.0, 100.0), square(40.0, 40.0, 20.0)]),
                region(vec![square(500.0, 500.0, 10.0)]),
                region(vec![square(900.0, 0.0, 10.0)]),
            ],
            context: vec![Region {
                label: Some("Stroma".into()),
                ..region(vec![square(45.0, 45.0, 10.0)])
            }],
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
        assert_eq!(s.found, vec![true, true, false]);
        assert_eq!(s.sensitivity, Some(2.0 / 3.0));
        assert_eq!(s.precision, Some(0.75));
        // The hole's mark lies in the expert's stroma.
        assert_eq!(s.false_mark_details.len(), 1);
        assert_eq!(s.false_mark_details[0].mark, 1);
        assert_eq!(
            s.false_mark_details[0].expert_label.as_deref(),
            Some("Stroma")
        );
        let curve: Vec<(usize, usize, f64)> = s
            .froc
            .iter()
            .map(|p| (p.marks, p.false_marks, p.sensitivity))
            .collect();
        assert_eq!(
            curve,
            vec![
                (1, 0, 1.0 / 3.0),
                (2, 1, 1.0 / 3.0),
                (3, 1, 2.0 / 3.0),
                (4, 1, 2.0 / 3.0)
            ]
        );
        // No marks: no precision; one region: no curve.
        let one = Reference {
            regions: reference.regions[..1].to_vec(),
            ..reference.clone()
        };
        let s = score(&[], &one);
        assert_eq!(
            (s.sensitivity, s.precision, s.froc.len()),
            (Some(0.0), None, 0)
        );
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
