//! The slide model every later stage uses.
//!
//! In: a path (a slide file, or a folder holding a DICOM series) and a [`SlideConfig`].
//! Out: a [`Slide`] with its pyramid levels, MPP and where it came from, objective power,
//! vendor, properties, associated images, ICC profile, and `read_region`, which returns RGB8
//! pixels with OpenSlide's semantics: the location is the region's top-left corner in level-0
//! pixels ([`Level0Px`]); the size is in pixels of the level read ([`Size`]); pixels outside the
//! slide are white; transparent pixels are composited onto white.
//!
//! Readers implement [`SlideReader`]: Tessera's own ([`native`]: Aperio SVS, generic tiled TIFF
//! and DICOM WSI) and OpenSlide ([`openslide`]) for every other format and as the fallback.
//! [`Slide::open`] sniffs the file first ([`detect`]) so that it can refuse absurd dimensions
//! before any reader allocates, and name the format in every error.

pub mod detect;
pub mod native;
pub mod openslide;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::config::{BackendChoice, Limits, SlideConfig};
use crate::error::{Error, Result};
use crate::geom::{Level0Px, Size};
use detect::Detected;

/// Most directory entries examined when a folder is opened as a DICOM series.
const MAX_DIR_ENTRIES: usize = 10_000;

/// One level of the pyramid.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Level {
    /// Size in this level's pixels.
    pub size: Size,
    /// Level-0 pixels per pixel of this level (1 for level 0; may be non-integer).
    pub downsample: f64,
    /// The stored tile size, when the reader reports one.
    pub tile_size: Option<Size>,
}

/// A non-pyramid image stored with the slide: `label`, `macro`, `thumbnail`…
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AssociatedImage {
    /// The name, e.g. "label". Labels and macros often show patient identifiers.
    pub name: String,
    /// Size in pixels.
    pub size: Size,
}

/// Which reader opened a slide.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendInfo {
    /// "openslide".
    pub name: &'static str,
    /// The shared library used, when there is one.
    pub library: Option<PathBuf>,
    /// The reader's version, e.g. OpenSlide's "4.0.1".
    pub version: String,
}

/// Physical pixel size of level 0 in micrometres per pixel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mpp {
    /// µm per pixel horizontally.
    pub x: f64,
    /// µm per pixel vertically.
    pub y: f64,
    /// Where the value came from.
    pub source: MppSource,
}

/// Where an MPP value came from. Results record it, because a value from TIFF resolution tags
/// is often a placeholder (72 dpi) rather than the scanner's calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum MppSource {
    /// A vendor metadata field written by the scanner.
    SlideMetadata {
        /// The field, e.g. "aperio.MPP (Aperio ImageDescription)".
        field: String,
    },
    /// The TIFF XResolution/YResolution tags, converted from their unit.
    TiffResolution {
        /// The ResolutionUnit as read ("inch", "centimeter").
        unit: String,
    },
    /// Given by the user.
    User,
}

impl std::fmt::Display for MppSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MppSource::SlideMetadata { field } => write!(f, "{field}"),
            MppSource::TiffResolution { unit } => {
                write!(
                    f,
                    "TIFF resolution tags, per {unit}; often a placeholder, check it"
                )
            }
            MppSource::User => write!(f, "given by the user"),
        }
    }
}

/// What a slide reader provides. Implemented by each backend; [`Slide`] validates every
/// request (level range, limits, bounds) before calling it.
pub trait SlideReader: Send + Sync {
    /// Which reader this is.
    fn backend(&self) -> BackendInfo;
    /// Human format name, e.g. "Aperio SVS".
    fn format(&self) -> &str;
    /// Vendor name as OpenSlide spells it ("aperio", "generic-tiff", "dicom"…).
    fn vendor(&self) -> Option<&str>;
    /// The pyramid, level 0 first.
    fn levels(&self) -> &[Level];
    /// All properties, by name.
    fn properties(&self) -> &BTreeMap<String, String>;
    /// Associated images.
    fn associated_images(&self) -> &[AssociatedImage];
    /// The slide's ICC profile, if it has one and the reader can read it.
    fn icc_profile(&self, max_bytes: u64) -> Result<Option<Vec<u8>>>;
    /// Fills `out` (exactly `size.width * size.height * 3` bytes, RGB8, rows top to bottom)
    /// with the region whose top-left corner is `location` (level-0 pixels) at `level`.
    /// `level` is in range and `size` is non-empty and within the limits.
    fn read_region_rgb(
        &self,
        location: Level0Px,
        level: usize,
        size: Size,
        out: &mut [u8],
    ) -> Result<()>;
    /// Fills `out` (`image.size` pixels, RGB8) with an associated image.
    fn read_associated_rgb(&self, image: &AssociatedImage, out: &mut [u8]) -> Result<()>;
    /// Where a slide read over the network came from; `None` for a file.
    fn remote(&self) -> Option<&RemoteSource> {
        None
    }
    /// The DICOM attributes of a DICOM WSI series; `None` for other formats.
    fn dicom_source(&self) -> Option<&DicomSource> {
        None
    }
}

/// What a DICOM WSI series says about itself, for objects that reference it (Tessera's DICOM
/// outputs): the attributes of its first level-0 instance (patient, study, frame of reference,
/// specimen, geometry; the per-frame functional groups left out) and its level-0 instances.
/// Holds patient identifiers: not for logs or reports.
#[derive(Debug, Clone)]
pub struct DicomSource {
    /// The first level-0 instance's attributes.
    pub attributes: dicom_object::InMemDicomObject,
    /// The level-0 instances: (SOP Class UID, SOP Instance UID).
    pub level0: Vec<(String, String)>,
}

/// A slide read from a DICOMweb server: which series, and a fingerprint of its content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RemoteSource {
    /// The `dicomweb+http(s)://` URL given (never with credentials).
    pub url: String,
    /// Study Instance UID.
    pub study: String,
    /// Series Instance UID.
    pub series: String,
    /// SOP Instance UIDs of the series' instances, sorted.
    pub instances: Vec<String>,
    /// SHA-256 (hex) of the study, series and SOP Instance UIDs, every instance's attributes
    /// (DICOM JSON, bulk data URIs left out) and level 0's first and last frames.
    pub fingerprint: String,
}

/// An open whole-slide image.
pub struct Slide {
    path: PathBuf,
    opened: PathBuf,
    reader: Box<dyn SlideReader>,
    icc: Option<std::sync::Arc<moxcms::Transform8BitExecutor>>,
    mpp: Option<Mpp>,
    objective_power: Option<f64>,
    limits: Limits,
}

impl std::fmt::Debug for Slide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slide")
            .field("path", &self.path)
            .field("format", &self.reader.format())
            .field("levels", &self.reader.levels())
            .finish_non_exhaustive()
    }
}

impl Slide {
    /// Opens the slide at `path` with the default configuration.
    pub fn open(path: impl AsRef<Path>) -> Result<Slide> {
        Slide::open_with(path, &SlideConfig::default())
    }

    /// Opens the slide at `path`. A folder is opened as a DICOM series through its first DICOM
    /// file (OpenSlide reads the whole folder).
    pub fn open_with(path: impl AsRef<Path>, config: &SlideConfig) -> Result<Slide> {
        let path = path.as_ref();
        if native::dicomweb::is_url(path) {
            if config.backend == BackendChoice::OpenSlide {
                return Err(Error::Unsupported {
                    path: path.into(),
                    format: "DICOMweb".into(),
                    reason: "OpenSlide reads files only; a DICOMweb series is read by the \
                             native reader (--backend auto or native)"
                        .into(),
                });
            }
            let reader = native::NativeReader::open_dicomweb(path, config)?;
            let mut slide = Slide::from_reader(path, Box::new(reader), &config.limits)?;
            if config.apply_icc {
                slide.icc = slide.icc_transform()?;
            }
            return Ok(slide);
        }
        let meta = std::fs::metadata(path).map_err(|e| Error::from_io(path, e))?;
        let (opened, detected) = if meta.is_dir() {
            match first_dicom_in(path)? {
                Some(file) => (file, Detected::Dicom),
                None => {
                    return Err(Error::NotASlide {
                        path: path.into(),
                        detected: "a directory with no DICOM files in it".into(),
                    })
                }
            }
        } else {
            (path.to_path_buf(), detect::sniff(path)?)
        };
        let format = detected.format_name();
        let limits = &config.limits;

        match &detected {
            Detected::Empty => {
                return Err(Error::NotASlide {
                    path: path.into(),
                    detected: "an empty file (0 bytes)".into(),
                })
            }
            Detected::BrokenTiff { reason } => {
                return Err(Error::Corrupt {
                    path: path.into(),
                    format,
                    backend: "Tessera's TIFF header check".into(),
                    message: reason.clone(),
                })
            }
            Detected::Tiff(t) => check_level0(path, limits, t.width, t.height)?,
            Detected::Dicom | Detected::Other { .. } => {}
        }
        // The native reader takes tiled TIFFs that are generic or Aperio, and DICOM WSI;
        // OpenSlide the rest.
        let native_candidate = matches!(&detected, Detected::Tiff(t)
            if t.tiled && matches!(t.vendor, None | Some("Aperio SVS")))
            || detected == Detected::Dicom;
        let open_native = || {
            if detected == Detected::Dicom {
                // A folder: the series of its first WSI file (the folder's first DICOM file,
                // chosen for detection, may be another kind of DICOM).
                let series = if meta.is_dir() { path } else { &opened };
                native::NativeReader::open_dicom(series, limits, config.cache_bytes)
            } else {
                native::NativeReader::open(&opened, limits, config.cache_bytes)
            }
        };
        let reader: Box<dyn SlideReader> = match config.backend {
            BackendChoice::Native => {
                if !matches!(detected, Detected::Tiff(_) | Detected::Dicom) {
                    return Err(Error::NotASlide {
                        path: path.into(),
                        detected: format!(
                            "{}; the native reader reads only Aperio SVS, tiled TIFF and DICOM \
                             WSI (use --backend auto or openslide)",
                            detected.describe()
                        ),
                    });
                }
                Box::new(open_native()?)
            }
            BackendChoice::Auto if native_candidate => {
                match open_native() {
                    Ok(r) => Box::new(r),
                    // A layout the native reader does not handle: OpenSlide may.
                    Err(native_err @ (Error::Unsupported { .. } | Error::NotASlide { .. })) => {
                        match open_openslide(path, &opened, &detected, config) {
                            Ok(r) => r,
                            Err(Error::BackendMissing { .. }) => return Err(native_err),
                            Err(e) => return Err(e),
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            BackendChoice::Auto | BackendChoice::OpenSlide => {
                open_openslide(path, &opened, &detected, config)?
            }
        };

        let mut slide = Slide::from_reader(path, reader, limits)?;
        slide.opened = opened;
        if config.apply_icc {
            slide.icc = slide.icc_transform()?;
        }
        Ok(slide)
    }

    /// Wraps an already opened reader (e.g. [`native::NativeReader::from_bytes`]) so that every
    /// request goes through the same validation and limits as a slide opened from a path.
    pub fn from_reader(
        path: impl Into<PathBuf>,
        reader: Box<dyn SlideReader>,
        limits: &Limits,
    ) -> Result<Slide> {
        let path = path.into();
        let Some(level0) = reader.levels().first().map(|l| l.size) else {
            return Err(Error::Corrupt {
                path,
                format: reader.format().into(),
                backend: reader.backend().name.into(),
                message: "no levels".into(),
            });
        };
        check_level0(&path, limits, level0.width, level0.height)?;
        let props = reader.properties();
        let mpp = mpp_from_properties(props, reader.vendor());
        let objective_power = props
            .get("openslide.objective-power")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v > 0.0);
        Ok(Slide {
            opened: path.clone(),
            path,
            reader,
            icc: None,
            mpp,
            objective_power,
            limits: limits.clone(),
        })
    }

    /// The path the slide was opened from, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file handed to the reader (differs from [`Slide::path`] for a DICOM folder).
    pub fn opened_file(&self) -> &Path {
        &self.opened
    }

    /// Human format name, e.g. "Aperio SVS" or "DICOM".
    pub fn format(&self) -> &str {
        self.reader.format()
    }

    /// Vendor as OpenSlide names it ("aperio", "generic-tiff", "dicom"…).
    pub fn vendor(&self) -> Option<&str> {
        self.reader.vendor()
    }

    /// Which reader opened the slide, and its version.
    pub fn backend(&self) -> BackendInfo {
        self.reader.backend()
    }

    /// Where a slide read over DICOMweb came from; `None` for a file.
    pub fn remote(&self) -> Option<&RemoteSource> {
        self.reader.remote()
    }

    /// A DICOM WSI series' own attributes (holds patient identifiers); `None` for other
    /// formats and for OpenSlide's reading.
    pub fn dicom_source(&self) -> Option<&DicomSource> {
        self.reader.dicom_source()
    }

    /// The pyramid levels, level 0 (full resolution) first.
    pub fn levels(&self) -> &[Level] {
        self.reader.levels()
    }

    /// Number of levels.
    pub fn level_count(&self) -> usize {
        self.reader.levels().len()
    }

    /// Level-0 dimensions.
    pub fn dimensions(&self) -> Size {
        self.reader.levels()[0].size
    }

    /// Level-0 µm per pixel, or `None` when the file does not say.
    pub fn mpp(&self) -> Option<&Mpp> {
        self.mpp.as_ref()
    }

    /// Objective power (e.g. 20 for 20×), when the file states it.
    pub fn objective_power(&self) -> Option<f64> {
        self.objective_power
    }

    /// All properties as the reader reports them.
    pub fn properties(&self) -> &BTreeMap<String, String> {
        self.reader.properties()
    }

    /// Associated images (names and sizes; pixels are decoded only on request).
    pub fn associated_images(&self) -> &[AssociatedImage] {
        self.reader.associated_images()
    }

    /// The slide's ICC profile bytes, when present and readable.
    pub fn icc_profile(&self) -> Result<Option<Vec<u8>>> {
        self.reader.icc_profile(self.limits.max_icc_bytes)
    }

    /// A transform from the slide's ICC profile to sRGB, or `None` without a profile.
    fn icc_transform(&self) -> Result<Option<std::sync::Arc<moxcms::Transform8BitExecutor>>> {
        let Some(profile) = self.icc_profile()? else {
            return Ok(None);
        };
        let bad = |message: String| Error::Corrupt {
            path: self.path.clone(),
            format: self.format().into(),
            backend: "ICC colour management (moxcms)".into(),
            message,
        };
        let src = moxcms::ColorProfile::new_from_slice(&profile)
            .map_err(|e| bad(format!("the ICC profile cannot be read: {e:?}")))?;
        let transform = src
            .create_transform_8bit(
                moxcms::Layout::Rgb,
                &moxcms::ColorProfile::new_srgb(),
                moxcms::Layout::Rgb,
                moxcms::TransformOptions::default(),
            )
            .map_err(|e| bad(format!("the ICC profile cannot be applied: {e:?}")))?;
        Ok(Some(transform))
    }

    /// True when pixels are converted from the slide's ICC profile to sRGB.
    pub fn applies_icc(&self) -> bool {
        self.icc.is_some()
    }

    /// The level whose downsample is the largest not above `downsample` (OpenSlide's rule:
    /// level 0 when below every level, the last level when above every level).
    pub fn best_level_for_downsample(&self, downsample: f64) -> usize {
        let levels = self.levels();
        if downsample.is_nan() || downsample < levels[0].downsample {
            return 0;
        }
        levels
            .iter()
            .position(|l| downsample < l.downsample)
            .map(|i| i - 1)
            .unwrap_or(levels.len() - 1)
    }

    /// Reads a region as RGB8: `location` is the top-left corner in level-0 pixels, `size` is
    /// in pixels of `level`. Pixels outside the slide are white.
    ///
    /// Errors: [`Error::LevelOutOfRange`], [`Error::InvalidRegion`] (empty size, or
    /// coordinates beyond ±2⁵³), [`Error::LimitExceeded`] (more than `max_region_pixels`,
    /// refused before allocating), [`Error::RegionOutOfBounds`] (no overlap with the level),
    /// and the reader's errors ([`Error::RegionRead`], [`Error::TileDecode`],
    /// [`Error::Poisoned`]). An error never comes with pixels.
    pub fn read_region(&self, location: Level0Px, level: usize, size: Size) -> Result<RgbImage> {
        let pixels = self.check_region(location, level, size)?;
        let mut buf = vec![0u8; pixels as usize * 3];
        self.reader
            .read_region_rgb(location, level, size, &mut buf)?;
        if let Some(t) = &self.icc {
            let mut converted = vec![0u8; buf.len()];
            t.transform(&buf, &mut converted)
                .map_err(|e| Error::Corrupt {
                    path: self.path.clone(),
                    format: self.format().into(),
                    backend: "ICC colour management (moxcms)".into(),
                    message: format!("{e:?}"),
                })?;
            buf = converted;
        }
        RgbImage::from_raw(size.width as u32, size.height as u32, buf).ok_or_else(|| {
            Error::InvalidRegion {
                path: self.path.clone(),
                reason: format!("{size} does not fit an image buffer"),
            }
        })
    }

    fn check_region(&self, location: Level0Px, level: usize, size: Size) -> Result<u64> {
        let path = || self.path.clone();
        let Some(l) = self.levels().get(level) else {
            return Err(Error::LevelOutOfRange {
                path: path(),
                level,
                level_count: self.level_count(),
            });
        };
        if size.is_empty() {
            return Err(Error::InvalidRegion {
                path: path(),
                reason: format!("size {size} is empty"),
            });
        }
        let pixels = size.pixels().unwrap_or(u64::MAX);
        if pixels > self.limits.max_region_pixels
            || size.width > u32::MAX as u64
            || size.height > u32::MAX as u64
        {
            return Err(Error::LimitExceeded {
                path: path(),
                what: "region size in pixels",
                value: pixels,
                limit: self.limits.max_region_pixels,
            });
        }
        const MAX_COORD: i64 = 1 << 53;
        if location.x.abs() > MAX_COORD || location.y.abs() > MAX_COORD {
            return Err(Error::InvalidRegion {
                path: path(),
                reason: format!("location ({}, {}) is out of range", location.x, location.y),
            });
        }
        // Overlap test in level pixels: [x/ds, x/ds + w) against [0, level width).
        let lx = location.x as f64 / l.downsample;
        let ly = location.y as f64 / l.downsample;
        let outside = lx >= l.size.width as f64
            || ly >= l.size.height as f64
            || lx + size.width as f64 <= 0.0
            || ly + size.height as f64 <= 0.0;
        if outside {
            return Err(Error::RegionOutOfBounds {
                path: path(),
                level,
                location,
                size,
                level_size: l.size,
            });
        }
        Ok(pixels)
    }

    /// Decodes an associated image ("label", "macro", "thumbnail"…). Labels and macros may
    /// show patient identifiers: callers export them only when the user asked.
    pub fn read_associated_image(&self, name: &str) -> Result<RgbImage> {
        let Some(image) = self.associated_images().iter().find(|a| a.name == name) else {
            return Err(Error::AssociatedImageNotFound {
                path: self.path.clone(),
                name: name.into(),
                available: self
                    .associated_images()
                    .iter()
                    .map(|a| a.name.clone())
                    .collect(),
            });
        };
        let pixels = image.size.pixels().unwrap_or(u64::MAX);
        if pixels > self.limits.max_associated_pixels {
            return Err(Error::LimitExceeded {
                path: self.path.clone(),
                what: "associated image size in pixels",
                value: pixels,
                limit: self.limits.max_associated_pixels,
            });
        }
        let mut buf = vec![0u8; pixels as usize * 3];
        self.reader.read_associated_rgb(image, &mut buf)?;
        RgbImage::from_raw(image.size.width as u32, image.size.height as u32, buf).ok_or_else(
            || Error::InvalidRegion {
                path: self.path.clone(),
                reason: format!("associated image {name} does not fit an image buffer"),
            },
        )
    }
}

/// Opens a slide through OpenSlide, found as configured.
fn open_openslide(
    path: &Path,
    opened: &Path,
    detected: &Detected,
    config: &SlideConfig,
) -> Result<Box<dyn SlideReader>> {
    let format = detected.format_name();
    // Files that look like nothing a slide reader handles are refused without loading one.
    let plain_file = matches!(detected, Detected::Other { format }
        if ["PNG image", "JPEG image", "ZIP archive", "gzip data", "text", "unknown binary data"]
            .contains(&format.as_str()));
    let lib = match &config.openslide_library {
        Some(lib) => openslide::load(lib)?,
        None => match openslide::discover() {
            openslide::Discovery::Found(lib) => lib,
            openslide::Discovery::Failed { library, message } => {
                return Err(Error::BackendLoad { library, message })
            }
            openslide::Discovery::Missing(_) if plain_file => {
                return Err(Error::NotASlide {
                    path: path.into(),
                    detected: detected.describe(),
                })
            }
            openslide::Discovery::Missing(tried) => {
                return Err(Error::BackendMissing {
                    path: path.into(),
                    format,
                    tried,
                })
            }
        },
    };
    if *detected == Detected::Dicom && !lib.is_v4() {
        return Err(Error::BackendTooOld {
            path: path.into(),
            format: "DICOM WSI".into(),
            found: lib.version.clone(),
            required: "4.0".into(),
            library: lib.path.clone(),
        });
    }
    let reader =
        openslide::OpenSlideReader::open(lib, opened, &format).map_err(|e| with_path(e, path))?;
    Ok(Box::new(reader))
}

/// Refuses level-0 dimensions over the configured limits.
fn check_level0(path: &Path, limits: &Limits, width: u64, height: u64) -> Result<()> {
    let over = |what, value, limit| {
        (value > limit).then(|| Error::LimitExceeded {
            path: path.into(),
            what,
            value,
            limit,
        })
    };
    match over("level-0 width", width, limits.max_level0_width)
        .or_else(|| over("level-0 height", height, limits.max_level0_height))
    {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The first file (in name order) of a folder that is a DICOM file, or `None`.
fn first_dicom_in(dir: &Path) -> Result<Option<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::from_io(dir, e))?;
    let mut files: Vec<PathBuf> = entries
        .take(MAX_DIR_ENTRIES)
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    files.sort();
    for file in files {
        if matches!(detect::sniff(&file), Ok(Detected::Dicom)) {
            return Ok(Some(file));
        }
    }
    Ok(None)
}

/// Errors from a reader name the file it opened; report the path the user gave instead.
fn with_path(e: Error, path: &Path) -> Error {
    let path = path.to_path_buf();
    match e {
        Error::NotASlide { detected, .. } => Error::NotASlide { path, detected },
        Error::Unsupported { format, reason, .. } => Error::Unsupported {
            path,
            format,
            reason,
        },
        Error::Corrupt {
            format,
            backend,
            message,
            ..
        } => Error::Corrupt {
            path,
            format,
            backend,
            message,
        },
        other => other,
    }
}

/// Level-0 MPP from OpenSlide's standard properties, with its source.
fn mpp_from_properties(props: &BTreeMap<String, String>, vendor: Option<&str>) -> Option<Mpp> {
    let get = |k: &str| {
        props
            .get(k)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    let (x, y) = (get("openslide.mpp-x")?, get("openslide.mpp-y")?);
    let field = |f: &str| MppSource::SlideMetadata { field: f.into() };
    let source = match vendor.unwrap_or("") {
        "aperio" => field("aperio.MPP (Aperio ImageDescription)"),
        "dicom" => field("DICOM PixelSpacing"),
        "mirax" => field("MIRAX Slidedat.ini"),
        _ if props.contains_key("tiff.XResolution") => MppSource::TiffResolution {
            unit: props
                .get("tiff.ResolutionUnit")
                .cloned()
                .unwrap_or_else(|| "inch".into()),
        },
        v => field(&format!("openslide.mpp-x/-y ({v} metadata)")),
    };
    Some(Mpp { x, y, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mpp_sources() {
        let mut p = BTreeMap::new();
        assert_eq!(mpp_from_properties(&p, Some("aperio")), None);
        p.insert("openslide.mpp-x".to_string(), "0.499".to_string());
        p.insert("openslide.mpp-y".to_string(), "0.5".to_string());
        let m = mpp_from_properties(&p, Some("aperio")).unwrap();
        assert_eq!((m.x, m.y), (0.499, 0.5));
        assert!(
            matches!(m.source, MppSource::SlideMetadata { ref field } if field.starts_with("aperio.MPP"))
        );
        p.insert("tiff.XResolution".to_string(), "28.3".to_string());
        p.insert("tiff.ResolutionUnit".to_string(), "centimeter".to_string());
        let m = mpp_from_properties(&p, Some("generic-tiff")).unwrap();
        assert_eq!(
            m.source,
            MppSource::TiffResolution {
                unit: "centimeter".into()
            }
        );
        p.insert("openslide.mpp-x".to_string(), "nan".to_string());
        assert_eq!(mpp_from_properties(&p, Some("generic-tiff")), None);
    }
}
