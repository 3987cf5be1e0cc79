//! `tessera info`: what a slide is, told truthfully.
//!
//! In: a path and a [`SlideConfig`]. Out: a [`SlideInfo`] (serialisable to the stable JSON
//! form, `schema_version` [`SCHEMA_VERSION`]) and its human-readable rendering. Describing a
//! slide also decodes one small region of its lowest-resolution level, so a file whose metadata
//! opens but whose pixels do not decode is reported as failed, not as fine.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::SlideConfig;
use crate::error::{Error, Result};
use crate::geom::{Level0Px, Size};
use crate::slide::{AssociatedImage, BackendInfo, Mpp, Slide};

/// Version of the JSON layout. Bumped when a field changes meaning or disappears; new fields
/// may be added without a bump.
pub const SCHEMA_VERSION: u32 = 1;

/// Largest side of the region decoded to check that pixels are readable.
const PIXEL_CHECK_SIDE: u64 = 256;

/// Everything `tessera info` reports about one slide.
#[derive(Debug, Clone, Serialize)]
pub struct SlideInfo {
    /// The path as given.
    pub path: PathBuf,
    /// Bytes on disk (for a DICOM folder, all files in it; 0 for a DICOMweb series).
    pub file_size_bytes: u64,
    /// For a series read over DICOMweb: its UIDs and content fingerprint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dicomweb: Option<crate::slide::RemoteSource>,
    /// Human format name.
    pub format: String,
    /// Vendor as OpenSlide names it.
    pub vendor: Option<String>,
    /// Reader and library used.
    pub backend: BackendInfo,
    /// Level-0 dimensions.
    pub dimensions: Size,
    /// Every level.
    pub levels: Vec<LevelInfo>,
    /// Level-0 µm/px and its source; `null` when the file does not say.
    pub mpp: Option<Mpp>,
    /// Objective power, when stated.
    pub objective_power: Option<f64>,
    /// Associated images (names and sizes only).
    pub associated_images: Vec<AssociatedImage>,
    /// Size of the ICC profile in bytes; `null` when there is none or the reader cannot read one.
    pub icc_profile_bytes: Option<u64>,
    /// OpenSlide's quickhash-1, a fingerprint of the slide's content.
    pub quickhash: Option<String>,
    /// The region decoded to prove the pixels are readable.
    pub pixel_check: PixelCheck,
    /// All properties; patient identifiers among them read `[redacted]` unless asked for
    /// ([`crate::identifiers`]).
    pub properties: BTreeMap<String, String>,
    /// How many property values were redacted (0 when identifiers were asked for).
    pub identifiers_redacted: usize,
}

/// One level as reported.
#[derive(Debug, Clone, Serialize)]
pub struct LevelInfo {
    /// Level index (0 = full resolution).
    pub index: usize,
    /// Width in level pixels.
    pub width: u64,
    /// Height in level pixels.
    pub height: u64,
    /// Downsample relative to level 0.
    pub downsample: f64,
    /// µm/px at this level (level-0 MPP × downsample).
    pub mpp_x: Option<f64>,
    /// µm/px at this level, vertically.
    pub mpp_y: Option<f64>,
    /// Stored tile size, when known.
    pub tile_size: Option<Size>,
}

/// The region read by the pixel check.
#[derive(Debug, Clone, Serialize)]
pub struct PixelCheck {
    /// Level read (the lowest-resolution one).
    pub level: usize,
    /// Top-left corner, level-0 pixels.
    pub location: Level0Px,
    /// Size in level pixels.
    pub size: Size,
}

/// The JSON document printed by `tessera info --json`.
#[derive(Debug, Serialize)]
pub struct InfoReport {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Tessera's version.
    pub tessera_version: &'static str,
    /// One entry per path, in the order given.
    pub slides: Vec<InfoEntry>,
}

/// The result for one path.
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum InfoEntry {
    /// The slide was read.
    Ok(Box<SlideInfo>),
    /// It was not.
    Error {
        /// The path as given.
        path: PathBuf,
        /// Stable error name, e.g. "corrupt" (see [`Error::kind`]).
        kind: &'static str,
        /// The full message.
        message: String,
    },
}

impl InfoEntry {
    /// Builds an entry from a result.
    pub fn from_result(path: &Path, result: Result<SlideInfo>) -> Self {
        match result {
            Ok(info) => InfoEntry::Ok(Box::new(info)),
            Err(e) => InfoEntry::Error {
                path: path.into(),
                kind: e.kind(),
                message: e.to_string(),
            },
        }
    }
}

/// Opens `path`, checks that its pixels decode, and describes it, its patient identifiers
/// redacted.
pub fn describe(path: &Path, config: &SlideConfig) -> Result<SlideInfo> {
    describe_with(path, config, false)
}

/// [`describe`], showing patient identifiers when `show_identifiers` is set.
pub fn describe_with(
    path: &Path,
    config: &SlideConfig,
    show_identifiers: bool,
) -> Result<SlideInfo> {
    let slide = Slide::open_with(path, config)?;
    let pixel_check = check_pixels(&slide)?;
    let icc_profile_bytes = slide.icc_profile()?.map(|p| p.len() as u64);
    let mpp = slide.mpp().cloned();
    let (properties, identifiers_redacted) = if show_identifiers {
        (slide.properties().clone(), 0)
    } else {
        crate::identifiers::redact(slide.properties())
    };
    let levels = slide
        .levels()
        .iter()
        .enumerate()
        .map(|(index, l)| LevelInfo {
            index,
            width: l.size.width,
            height: l.size.height,
            downsample: l.downsample,
            mpp_x: mpp.as_ref().map(|m| m.x * l.downsample),
            mpp_y: mpp.as_ref().map(|m| m.y * l.downsample),
            tile_size: l.tile_size,
        })
        .collect();
    Ok(SlideInfo {
        path: path.into(),
        file_size_bytes: match slide.remote() {
            Some(_) => 0,
            None => size_on_disk(path)?,
        },
        dicomweb: slide.remote().cloned(),
        format: slide.format().into(),
        vendor: slide.vendor().map(Into::into),
        backend: slide.backend(),
        dimensions: slide.dimensions(),
        levels,
        mpp,
        objective_power: slide.objective_power(),
        associated_images: slide.associated_images().to_vec(),
        icc_profile_bytes,
        quickhash: slide.properties().get("openslide.quickhash-1").cloned(),
        pixel_check,
        properties,
        identifiers_redacted,
    })
}

/// Decodes up to 256 × 256 pixels at the centre of the lowest-resolution level.
fn check_pixels(slide: &Slide) -> Result<PixelCheck> {
    let level = slide.level_count() - 1;
    let l = &slide.levels()[level];
    let size = Size::new(
        l.size.width.min(PIXEL_CHECK_SIDE),
        l.size.height.min(PIXEL_CHECK_SIDE),
    );
    let location = crate::geom::LevelPx::new(
        ((l.size.width - size.width) / 2) as i64,
        ((l.size.height - size.height) / 2) as i64,
    )
    .to_level0(l.downsample);
    slide.read_region(location, level, size)?;
    Ok(PixelCheck {
        level,
        location,
        size,
    })
}

/// Bytes on disk: the file, or every file of a DICOM series folder.
pub fn size_on_disk(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| Error::from_io(path, e))?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let entries = std::fs::read_dir(path).map_err(|e| Error::from_io(path, e))?;
    Ok(entries
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64;
    let mut unit = "";
    for u in UNITS {
        v /= 1024.0;
        unit = u;
        if v < 1024.0 {
            break;
        }
    }
    format!("{v:.1} {unit} ({n} bytes)")
}

/// A number without trailing zeros: 0.499, 2.0005, 20.
fn num(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// The human-readable form printed by `tessera info`.
pub fn render_text(info: &SlideInfo) -> String {
    let mut s = String::new();
    let name = info
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| info.path.display().to_string());
    let _ = writeln!(s, "{name}");
    let row = |s: &mut String, k: &str, v: String| {
        let _ = writeln!(s, "  {k:<12} {v}");
    };
    row(&mut s, "path", info.path.display().to_string());
    row(
        &mut s,
        "format",
        match &info.vendor {
            Some(v) => format!("{} (vendor \"{v}\")", info.format),
            None => info.format.clone(),
        },
    );
    let b = &info.backend;
    row(
        &mut s,
        "backend",
        match &b.library {
            Some(lib) => format!("{} {} ({})", b.name, b.version, lib.display()),
            None => format!("{} {}", b.name, b.version),
        },
    );
    match &info.dicomweb {
        Some(r) => row(
            &mut s,
            "DICOMweb",
            format!(
                "study {}, series {}, {} instances",
                r.study,
                r.series,
                r.instances.len()
            ),
        ),
        None => row(&mut s, "file size", human_bytes(info.file_size_bytes)),
    }
    row(
        &mut s,
        "dimensions",
        format!("{} px (level 0)", info.dimensions),
    );
    row(
        &mut s,
        "µm/px",
        match &info.mpp {
            Some(m) => format!("{} × {} (from {})", num(m.x), num(m.y), m.source),
            None => "unknown (the file does not say)".into(),
        },
    );
    row(
        &mut s,
        "objective",
        info.objective_power
            .map(|p| format!("{}×", num(p)))
            .unwrap_or_else(|| "unknown".into()),
    );
    row(&mut s, "levels", info.levels.len().to_string());
    let _ = writeln!(
        s,
        "    {:>5}  {:>10}  {:>19}  {:>9}  tile",
        "level", "downsample", "width × height", "µm/px"
    );
    for l in &info.levels {
        let _ = writeln!(
            s,
            "    {:>5}  {:>10}  {:>19}  {:>9}  {}",
            l.index,
            num(l.downsample),
            format!("{} × {}", l.width, l.height),
            l.mpp_x.map(num).unwrap_or_else(|| "-".into()),
            l.tile_size
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into()),
        );
    }
    row(
        &mut s,
        "associated",
        if info.associated_images.is_empty() {
            "none".into()
        } else {
            info.associated_images
                .iter()
                .map(|a| format!("{} {}", a.name, a.size))
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    row(
        &mut s,
        "ICC profile",
        info.icc_profile_bytes
            .map(|n| format!("{n} bytes"))
            .unwrap_or_else(|| "none".into()),
    );
    if let Some(h) = &info.quickhash {
        row(&mut s, "quickhash", h.clone());
    }
    let c = &info.pixel_check;
    row(
        &mut s,
        "pixels",
        format!("ok ({} region of level {} decoded)", c.size, c.level),
    );
    if info.identifiers_redacted > 0 {
        row(
            &mut s,
            "identifiers",
            format!(
                "{} patient identifier properties redacted (--show-identifiers shows them)",
                info.identifiers_redacted
            ),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_sizes_read_well() {
        assert_eq!(num(0.499), "0.499");
        assert_eq!(num(20.0), "20");
        assert_eq!(num(2.0005), "2.0005");
        assert_eq!(human_bytes(10), "10 bytes");
        assert_eq!(human_bytes(1938955), "1.8 MiB (1938955 bytes)");
    }
}
