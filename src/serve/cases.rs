//! The viewer's catalogue: which analysed slides exist, and where each one's slide file is.
//!
//! In: the results folder (one `<id>/result.json` per analysed slide, as `tessera analyze` and
//! `tessera watch` write them) and the folders slides may be read from. Out: [`Case`]s keyed
//! by id (the output folder's name) and, per case, its probability grid ([`ProbGrid`], from
//! `patches.csv`, and for a dense model its class maps from the heatmap PNGs, in level-0
//! pixels).
//!
//! Ids are looked up in this map and never joined to a path, so no request can name a file.
//! A slide file is served only if its canonical path lies inside one of the slide folders
//! (`--slides`; without any, no slide is read, only results) and its fingerprint matches the
//! result's (a replaced slide is not shown under an old heatmap).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::results::{PatchTable, SlideResult};

/// One analysed slide.
#[derive(Debug, Clone)]
pub struct Case {
    /// The id: the output folder's name.
    pub id: String,
    /// The output folder.
    pub dir: PathBuf,
    /// Its result.json.
    pub result: SlideResult,
    /// The slide file (or DICOM folder), if it was found where slides may be read.
    pub slide: Option<PathBuf>,
    /// Why no slide file, when there is none.
    pub missing: Option<String>,
    /// result.json's modification time and size when it was read: a folder whose result.json
    /// changes (the slide was analysed again) is read again.
    pub stamp: Option<Stamp>,
}

/// A file's modification time and size.
pub type Stamp = (std::time::SystemTime, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Reads every case under `results` (the folder itself, or its sub-folders).
pub fn load(results: &Path, slide_dirs: &[PathBuf], hash_full: bool) -> Result<Vec<Case>> {
    load_new(results, slide_dirs, hash_full, |_, _| false)
}

/// [`load`], skipping the cases that `known(id, stamp)` says are loaded already with that
/// result.json (a refresh reads only the folders that appeared or changed since).
pub fn load_new(
    results: &Path,
    slide_dirs: &[PathBuf],
    hash_full: bool,
    known: impl Fn(&str, Option<Stamp>) -> bool,
) -> Result<Vec<Case>> {
    // Canonical, so that `serve .` inside one slide's folder still names the case.
    let results = &results
        .canonicalize()
        .map_err(|e| Error::from_io(results, e))?;
    let mut dirs = Vec::new();
    if results.join("result.json").is_file() {
        dirs.push(results.to_path_buf());
    } else {
        let rd = std::fs::read_dir(results).map_err(|e| Error::from_io(results, e))?;
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            let hidden = e.file_name().to_string_lossy().starts_with('.');
            if !hidden && p.join("result.json").is_file() {
                dirs.push(p);
            }
        }
    }
    dirs.sort();
    let allowed: Vec<PathBuf> = slide_dirs
        .iter()
        .filter_map(|d| d.canonicalize().ok())
        .collect();
    let mut cases = Vec::new();
    for dir in dirs {
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stamp = stamp(&dir.join("result.json"));
        if known(&id, stamp) {
            continue;
        }
        let Ok(result) = SlideResult::read(&dir.join("result.json")) else {
            continue;
        };
        let (slide, missing) = match find_slide(&result, &allowed, hash_full) {
            Ok(p) => (Some(p), None),
            Err(why) => (None, Some(why)),
        };
        cases.push(Case {
            id,
            dir,
            result,
            slide,
            missing,
            stamp,
        });
    }
    Ok(cases)
}

/// The slide file of a result, inside the allowed folders, with the same fingerprint.
fn find_slide(
    result: &SlideResult,
    allowed: &[PathBuf],
    hash_full: bool,
) -> std::result::Result<PathBuf, String> {
    let recorded = result.slide.path.clone();
    let want = result.slide.fingerprint.sha256.clone();
    let full = result.slide.fingerprint.method == "full file" || hash_full;
    let name = recorded.file_name().map(|n| n.to_os_string());
    if allowed.is_empty() {
        return Err(format!(
            "no slide folder given: start the viewer with --slides FOLDER (the one holding {})",
            recorded
                .file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned())
        ));
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(name) = &name {
        for dir in allowed {
            find_named(dir, name, 0, &mut candidates);
        }
    }
    for c in candidates {
        let Ok(canon) = c.canonicalize() else {
            continue;
        };
        if !allowed.iter().any(|d| canon.starts_with(d)) {
            continue;
        }
        if crate::pipeline::fingerprint(&canon, full).ok().as_deref() == Some(want.as_str()) {
            return Ok(canon);
        }
    }
    Err(format!(
        "slide file {} not found in the slide folders with fingerprint {}",
        recorded.display(),
        want.get(..12).unwrap_or(&want)
    ))
}

fn find_named(dir: &Path, name: &std::ffi::OsStr, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > 8 || out.len() > 64 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        if e.file_name() == name {
            out.push(p);
        } else if e.file_type().is_ok_and(|t| t.is_dir()) {
            find_named(&p, name, depth + 1, out);
        }
    }
}

/// The per-patch probabilities of a case, for overlays, clicks and scoring.
#[derive(Debug, Clone)]
pub struct ProbGrid {
    /// Class names, in the model's order.
    pub classes: Vec<String>,
    /// Patches: level-0 box (x, y, width, height), grid column and row, probabilities.
    pub patches: Vec<Patch>,
    /// Index into `patches` by (column, row).
    pub by_cell: BTreeMap<(i64, i64), usize>,
    /// Level-0 origin of cell (0, 0) and the step between cells.
    pub origin: (f64, f64),
    /// Level-0 pixels between neighbouring cells.
    pub step: (f64, f64),
    /// A dense model's class maps (its heatmap PNGs), which the overlay draws instead of the
    /// tiles' means.
    pub dense: Option<DenseLayer>,
}

/// A dense model's class maps, as the analysis wrote them.
#[derive(Debug, Clone)]
pub struct DenseLayer {
    /// Level-0 pixels per cell side.
    pub cell_l0: f64,
    /// One map per class, 0–255 for probabilities 0–1 (0 also where nothing was analysed).
    pub maps: Vec<image::GrayImage>,
}

impl DenseLayer {
    /// The class maps of the analysis in `dir`, when its result `r` says the model was dense;
    /// `None` for a patch classifier.
    fn load(dir: &Path, r: &SlideResult, classes: &[String]) -> Result<Option<DenseLayer>> {
        let Some(cell_um) = r.parameters.class_map_cell_um else {
            return Ok(None);
        };
        let maps = classes
            .iter()
            .map(|name| {
                let png = dir.join(format!("heatmap-{name}.png"));
                image::open(&png)
                    .map(|i| i.to_luma8())
                    .map_err(|e| Error::Serve {
                        path: png.clone(),
                        message: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(DenseLayer {
            cell_l0: cell_um / r.slide.mpp.x,
            maps,
        }))
    }

    /// Class `class`'s probability at the level-0 point (x, y); `None` outside the map or
    /// where it is 0.
    fn at(&self, class: usize, x: f64, y: f64) -> Option<f32> {
        let map = self.maps.get(class)?;
        let (cx, cy) = ((x / self.cell_l0).floor(), (y / self.cell_l0).floor());
        if cx < 0.0 || cy < 0.0 || cx >= map.width() as f64 || cy >= map.height() as f64 {
            return None;
        }
        let v = map.get_pixel(cx as u32, cy as u32).0[0];
        (v > 0).then(|| v as f32 / 255.0)
    }
}

/// One analysed patch.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Patch {
    /// Level-0 left edge.
    pub x: i64,
    /// Level-0 top edge.
    pub y: i64,
    /// Level-0 width.
    pub width: i64,
    /// Level-0 height.
    pub height: i64,
    /// Grid column.
    pub col: i64,
    /// Grid row.
    pub row: i64,
    /// Probability per class.
    pub probs: Vec<f32>,
}

impl ProbGrid {
    /// Reads `patches.csv` of a case folder (and, for a dense model, as its result `result`
    /// says, the class maps).
    pub fn load(dir: &Path, result: &SlideResult) -> Result<ProbGrid> {
        let path = dir.join("patches.csv");
        let table = PatchTable::read(&path).map_err(|e| Error::Serve {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let patches: Vec<Patch> = table
            .rows
            .into_iter()
            .map(|r| Patch {
                x: r.minx,
                y: r.miny,
                width: r.width as i64,
                height: r.height as i64,
                col: i64::from(r.col),
                row: i64::from(r.row),
                probs: r.probs,
            })
            .collect();
        let prob_cols = table.class_names;
        let by_cell = patches
            .iter()
            .enumerate()
            .map(|(i, p)| ((p.col, p.row), i))
            .collect();
        // The step from any two patches in different columns (rows); the patch side if the
        // grid has one column (row).
        let step_of = |pos: fn(&Patch) -> (i64, i64)| -> f64 {
            let first = patches.first().map(pos);
            patches
                .iter()
                .map(pos)
                .find_map(|(v, k)| {
                    let (v0, k0) = first?;
                    (k != k0).then(|| (v - v0) as f64 / (k - k0) as f64)
                })
                .unwrap_or(0.0)
        };
        let mut step = (step_of(|p| (p.x, p.col)), step_of(|p| (p.y, p.row)));
        if let Some(p) = patches.first() {
            if step.0 <= 0.0 {
                step.0 = p.width as f64;
            }
            if step.1 <= 0.0 {
                step.1 = p.height as f64;
            }
        }
        let origin = patches.first().map_or((0.0, 0.0), |p| {
            (
                p.x as f64 - p.col as f64 * step.0,
                p.y as f64 - p.row as f64 * step.1,
            )
        });
        let dense = DenseLayer::load(dir, result, &prob_cols)?;
        Ok(ProbGrid {
            classes: prob_cols,
            patches,
            by_cell,
            origin,
            step,
            dense,
        })
    }

    /// The patch whose cell holds the level-0 point (x, y).
    pub fn at(&self, x: f64, y: f64) -> Option<&Patch> {
        if self.step.0 <= 0.0 || self.step.1 <= 0.0 {
            return None;
        }
        let c = ((x - self.origin.0) / self.step.0).floor() as i64;
        let r = ((y - self.origin.1) / self.step.1).floor() as i64;
        let p = &self.patches[*self.by_cell.get(&(c, r))?];
        let inside = x >= p.x as f64
            && y >= p.y as f64
            && x < (p.x + p.width) as f64
            && y < (p.y + p.height) as f64;
        inside.then_some(p)
    }
}

/// A heatmap tile: `out` pixels, each `downsample` level-0 pixels wide starting at `origin`;
/// colour-mapped probability of `class` where a patch was analysed and the probability is at
/// least `threshold`, transparent elsewhere.
pub fn overlay_tile(
    grid: &ProbGrid,
    origin: crate::geom::Level0Px,
    downsample: f64,
    out: crate::geom::Size,
    class: usize,
    threshold: f32,
    map: crate::imaging::colour::Cmap,
) -> image::RgbaImage {
    let mut img = image::RgbaImage::new(out.width as u32, out.height as u32);
    for (px, py, pixel) in img.enumerate_pixels_mut() {
        let x = origin.x as f64 + (px as f64 + 0.5) * downsample;
        let y = origin.y as f64 + (py as f64 + 0.5) * downsample;
        let v = match &grid.dense {
            Some(d) => d.at(class, x, y),
            None => grid
                .at(x, y)
                .map(|p| p.probs.get(class).copied().unwrap_or(f32::NAN)),
        };
        if let Some(v) = v {
            if v.is_finite() && v >= threshold {
                let [r, g, b] = map.rgb8(v);
                *pixel = image::Rgba([r, g, b, 255]);
            }
        }
    }
    img
}
