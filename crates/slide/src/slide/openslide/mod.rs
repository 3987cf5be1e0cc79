//! The OpenSlide backend: OpenSlide's C library, found and loaded at run time.
//!
//! In: a slide path. Out: an [`OpenSlideReader`] implementing [`SlideReader`]: levels,
//! properties, associated images, ICC profile and RGB regions (level-0 locations, level-pixel
//! sizes, transparent pixels composited onto white).
//!
//! The library is searched in this order ([`discover`]):
//! 1. `TESSERA_OPENSLIDE`, a path or soname. When set, it is the only candidate: a library the
//!    user named that fails to load is an error, never a silent fallback. The value `none`
//!    disables OpenSlide (formats that need it then fail with [`Error::BackendMissing`]).
//! 2. `libopenslide.so.1` inside the `openslide_bin` Python package (OpenSlide 4.x,
//!    `pip install openslide-bin`), located by asking `python3` (then `python`).
//! 3. The system's `libopenslide.so.1`, then `libopenslide.so.0` (Debian's 3.4.1).
//!
//! OpenSlide's errors latch: once a handle reports an error it is useless. The reader records
//! the first error and every later call returns [`Error::Poisoned`] naming it.

mod ffi;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{AssociatedImage, BackendInfo, Level, SlideReader};
use crate::error::{Error, Result};
use crate::geom::{Level0Px, Size};

/// Rows of a region are read in bands of at most this many pixels when the level's downsample
/// is an integer, bounding the temporary ARGB buffer at 16 MiB.
const BAND_PIXELS: u64 = 1 << 22;

/// A loaded OpenSlide library.
pub struct OpenSlideLib {
    api: Arc<ffi::Api>,
    /// The path or soname it was loaded from.
    pub path: PathBuf,
    /// `openslide_get_version()`, e.g. "4.0.1".
    pub version: String,
}

impl std::fmt::Debug for OpenSlideLib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenSlideLib")
            .field("path", &self.path)
            .field("version", &self.version)
            .finish()
    }
}

impl OpenSlideLib {
    /// The major version number (3 or 4), parsed from [`OpenSlideLib::version`].
    pub fn major(&self) -> u32 {
        self.version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    }

    /// True for OpenSlide 4 and later, which read DICOM and ICC profiles.
    pub fn is_v4(&self) -> bool {
        self.major() >= 4 || self.api.has_icc()
    }

    /// "OpenSlide 4.0.1".
    pub fn label(&self) -> String {
        format!("OpenSlide {}", self.version)
    }
}

/// The outcome of searching for OpenSlide.
#[derive(Debug, Clone)]
pub enum Discovery {
    /// A library was found and loaded.
    Found(Arc<OpenSlideLib>),
    /// Nothing was found; each entry says where we looked and why it failed.
    Missing(Vec<String>),
    /// `TESSERA_OPENSLIDE` named a library that could not be loaded.
    Failed {
        /// The library named.
        library: PathBuf,
        /// Why it failed.
        message: String,
    },
}

/// Loads (once per path per process) the OpenSlide library at `path`.
pub fn load(path: &Path) -> Result<Arc<OpenSlideLib>> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, Arc<OpenSlideLib>>>> = OnceLock::new();
    let map = LOADED.get_or_init(Default::default);
    if let Some(lib) = map.lock().unwrap_or_else(|e| e.into_inner()).get(path) {
        return Ok(lib.clone());
    }
    let api = ffi::Api::load(path).map_err(|message| Error::BackendLoad {
        library: path.to_path_buf(),
        message,
    })?;
    let lib = Arc::new(OpenSlideLib {
        version: api.version(),
        api: Arc::new(api),
        path: path.to_path_buf(),
    });
    map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(path.to_path_buf(), lib.clone());
    Ok(lib)
}

/// Searches for OpenSlide as described in the module documentation. The result is computed
/// once per process.
pub fn discover() -> Discovery {
    static FOUND: OnceLock<Discovery> = OnceLock::new();
    FOUND.get_or_init(discover_uncached).clone()
}

fn discover_uncached() -> Discovery {
    if let Some(named) = std::env::var_os("TESSERA_OPENSLIDE").filter(|v| !v.is_empty()) {
        if named == "none" {
            return Discovery::Missing(vec!["TESSERA_OPENSLIDE=none: OpenSlide disabled".into()]);
        }
        let library = PathBuf::from(named);
        return match load(&library) {
            Ok(lib) => Discovery::Found(lib),
            Err(Error::BackendLoad { message, .. }) => Discovery::Failed { library, message },
            Err(e) => Discovery::Failed {
                message: e.to_string(),
                library,
            },
        };
    }
    let mut tried = vec!["TESSERA_OPENSLIDE: not set".to_string()];
    match python_package_dir("openslide_bin") {
        Ok(dir) => {
            let candidate = dir.join("libopenslide.so.1");
            match load(&candidate) {
                Ok(lib) => return Discovery::Found(lib),
                Err(e) => tried.push(format!("openslide_bin Python package: {e}")),
            }
        }
        Err(why) => tried.push(format!("openslide_bin Python package: {why}")),
    }
    for soname in ["libopenslide.so.1", "libopenslide.so.0"] {
        match load(Path::new(soname)) {
            Ok(lib) => return Discovery::Found(lib),
            Err(_) => tried.push(format!("system {soname}: not found")),
        }
    }
    Discovery::Missing(tried)
}

/// Finds an installed Python package's folder by asking the Python interpreter, without
/// importing the package. Gives up after 10 seconds.
pub fn python_package_dir(module: &str) -> std::result::Result<PathBuf, String> {
    let script = format!(
        "import importlib.util as u, os\ns = u.find_spec('{module}')\n\
         print(os.path.dirname(s.origin) if s and s.origin else '')"
    );
    let mut last = String::from("no python3 or python on PATH");
    for python in ["python3", "python"] {
        let child = Command::new(python)
            .args(["-I", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = child else { continue };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let Some(status) = status else {
            last = format!("{python} did not answer within 10 s");
            continue;
        };
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            use std::io::Read;
            let _ = stdout.read_to_string(&mut out);
        }
        let dir = out.trim();
        if status.success() && !dir.is_empty() {
            return Ok(PathBuf::from(dir));
        }
        last = format!("not installed for {python}");
    }
    Err(last)
}

/// A slide opened through OpenSlide.
pub struct OpenSlideReader {
    raw: ffi::RawSlide,
    lib: Arc<OpenSlideLib>,
    path: PathBuf,
    format: String,
    vendor: Option<String>,
    levels: Vec<Level>,
    properties: BTreeMap<String, String>,
    associated: Vec<AssociatedImage>,
    poisoned: OnceLock<String>,
}

/// Human format name for an OpenSlide vendor string.
fn format_for_vendor(vendor: &str) -> Option<&'static str> {
    Some(match vendor {
        "aperio" => "Aperio SVS",
        "generic-tiff" => "generic tiled TIFF",
        "dicom" => "DICOM WSI",
        "hamamatsu" => "Hamamatsu NDPI/VMS/VMU",
        "leica" => "Leica SCN",
        "mirax" => "MIRAX",
        "philips" => "Philips TIFF",
        "sakura" => "Sakura SVSlide",
        "trestle" => "Trestle TIFF",
        "ventana" => "Ventana BIF",
        "zeiss" => "Zeiss CZI",
        "synthetic" => "OpenSlide synthetic test slide",
        _ => return None,
    })
}

/// Sorts an OpenSlide error raised while opening into "unsupported" (a valid file of a flavour
/// OpenSlide does not read) or "corrupt" (anything else).
fn is_unsupported_message(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "unsupported",
        "not supported",
        "no pyramid levels",
        "couldn't get image flavor",
        "associated image as a concatenation",
        " != ",
    ]
    .iter()
    .any(|k| m.contains(k))
}

impl OpenSlideReader {
    /// Opens `path` with `lib`. `format` is the sniffed format name used in errors.
    pub fn open(lib: Arc<OpenSlideLib>, path: &Path, format: &str) -> Result<Self> {
        let Some(raw) = ffi::RawSlide::open(lib.api.clone(), path) else {
            return Err(Error::NotASlide {
                path: path.into(),
                detected: format!("{format}, which {} does not recognise", lib.label()),
            });
        };
        if let Some(message) = raw.error() {
            let format = lib
                .api
                .detect_vendor(path)
                .and_then(|v| format_for_vendor(&v))
                .unwrap_or(format)
                .to_string();
            return Err(if is_unsupported_message(&message) {
                Error::Unsupported {
                    path: path.into(),
                    format,
                    reason: message,
                }
            } else {
                Error::Corrupt {
                    path: path.into(),
                    format,
                    backend: lib.label(),
                    message,
                }
            });
        }
        let corrupt = |message: String| Error::Corrupt {
            path: path.into(),
            format: format.to_string(),
            backend: lib.label(),
            message,
        };

        let count = raw.level_count();
        if count < 1 {
            return Err(corrupt(
                raw.error()
                    .unwrap_or_else(|| format!("level count {count}")),
            ));
        }
        let mut levels = Vec::with_capacity(count as usize);
        for i in 0..count {
            let (w, h) = raw.level_dimensions(i);
            let ds = raw.level_downsample(i);
            if w <= 0 || h <= 0 || !(ds.is_finite() && ds >= 1.0 - 1e-9) {
                return Err(corrupt(raw.error().unwrap_or_else(|| {
                    format!("level {i} reports {w} × {h} pixels, downsample {ds}")
                })));
            }
            let tile = |axis: &str| {
                raw.property(&format!("openslide.level[{i}].tile-{axis}"))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            levels.push(Level {
                size: Size::new(w as u64, h as u64),
                downsample: ds,
                tile_size: match (tile("width"), tile("height")) {
                    (Some(w), Some(h)) => Some(Size::new(w, h)),
                    _ => None,
                },
            });
        }
        let properties: BTreeMap<String, String> = raw
            .property_names()
            .into_iter()
            .filter_map(|k| raw.property(&k).map(|v| (k, v)))
            .collect();
        let mut associated = Vec::new();
        for name in raw.associated_image_names() {
            let (w, h) = raw.associated_image_dimensions(&name);
            if w > 0 && h > 0 {
                associated.push(AssociatedImage {
                    name,
                    size: Size::new(w as u64, h as u64),
                });
            }
        }
        if let Some(message) = raw.error() {
            return Err(corrupt(message));
        }
        let vendor = properties.get("openslide.vendor").cloned();
        let format = vendor
            .as_deref()
            .and_then(format_for_vendor)
            .unwrap_or(format);
        Ok(Self {
            raw,
            lib,
            path: path.into(),
            format: format.into(),
            vendor,
            levels,
            properties,
            associated,
            poisoned: OnceLock::new(),
        })
    }

    /// Fails if the handle was poisoned by an earlier error.
    fn check_poison(&self) -> Result<()> {
        match self.poisoned.get() {
            Some(first) => Err(Error::Poisoned {
                path: self.path.clone(),
                first_error: first.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Checks OpenSlide's error state after a call; an error poisons the handle.
    fn check_error(&self) -> std::result::Result<(), String> {
        match self.raw.error() {
            Some(message) => {
                let _ = self.poisoned.set(message.clone());
                Err(message)
            }
            None => Ok(()),
        }
    }
}

/// Converts premultiplied ARGB words to RGB composited onto white.
///
/// For a premultiplied colour `c` with alpha `a`, "over white" is `c + (255 - a)`: opaque pixels
/// are copied, fully transparent ones (outside the slide, missing tiles) become white, and
/// partly transparent edge pixels blend without the dark seams that dropping alpha causes.
fn argb_to_rgb_over_white(src: &[u32], dst: &mut [u8]) {
    for (px, out) in src.iter().zip(dst.chunks_exact_mut(3)) {
        let a = (px >> 24) as u8;
        let bg = 255 - a;
        out[0] = ((px >> 16) as u8).saturating_add(bg);
        out[1] = ((px >> 8) as u8).saturating_add(bg);
        out[2] = (*px as u8).saturating_add(bg);
    }
}

impl SlideReader for OpenSlideReader {
    fn backend(&self) -> BackendInfo {
        BackendInfo {
            name: "openslide",
            library: Some(self.lib.path.clone()),
            version: self.lib.version.clone(),
        }
    }

    fn format(&self) -> &str {
        &self.format
    }

    fn vendor(&self) -> Option<&str> {
        self.vendor.as_deref()
    }

    fn levels(&self) -> &[Level] {
        &self.levels
    }

    fn properties(&self) -> &BTreeMap<String, String> {
        &self.properties
    }

    fn associated_images(&self) -> &[AssociatedImage] {
        &self.associated
    }

    fn icc_profile(&self, max_bytes: u64) -> Result<Option<Vec<u8>>> {
        self.check_poison()?;
        let Some(size) = self.raw.icc_profile_size() else {
            return Ok(None);
        };
        self.check_error().map_err(|message| Error::Corrupt {
            path: self.path.clone(),
            format: self.format.clone(),
            backend: self.lib.label(),
            message,
        })?;
        if size <= 0 {
            return Ok(None);
        }
        if size as u64 > max_bytes {
            return Err(Error::LimitExceeded {
                path: self.path.clone(),
                what: "ICC profile size in bytes",
                value: size as u64,
                limit: max_bytes,
            });
        }
        let profile = self.raw.read_icc_profile(size);
        self.check_error().map_err(|message| Error::Corrupt {
            path: self.path.clone(),
            format: self.format.clone(),
            backend: self.lib.label(),
            message,
        })?;
        Ok(profile)
    }

    fn read_region_rgb(
        &self,
        location: Level0Px,
        level: usize,
        size: Size,
        out: &mut [u8],
    ) -> Result<()> {
        self.check_poison()?;
        let ds = self.levels[level].downsample;
        // Banding keeps the ARGB buffer small. It is exact only when every band's level-0 row
        // is an integer (integer downsample); otherwise one call reads the whole region.
        let band_rows = if ds.fract() == 0.0 {
            (BAND_PIXELS / size.width.max(1)).clamp(1, size.height)
        } else {
            size.height
        };
        let row_bytes = size.width as usize * 3;
        let mut row = 0u64;
        while row < size.height {
            let rows = band_rows.min(size.height - row);
            let y = location.y + (row as f64 * ds) as i64;
            let argb =
                self.raw
                    .read_region(location.x, y, level as i32, size.width as i64, rows as i64);
            self.check_error().map_err(|message| Error::RegionRead {
                path: self.path.clone(),
                level,
                location,
                size,
                backend: self.lib.label(),
                message,
            })?;
            let start = row as usize * row_bytes;
            argb_to_rgb_over_white(&argb, &mut out[start..start + rows as usize * row_bytes]);
            row += rows;
        }
        Ok(())
    }

    fn read_associated_rgb(&self, image: &AssociatedImage, out: &mut [u8]) -> Result<()> {
        self.check_poison()?;
        let argb = self.raw.read_associated_image(
            &image.name,
            image.size.width as i64,
            image.size.height as i64,
        );
        self.check_error().map_err(|message| Error::Corrupt {
            path: self.path.clone(),
            format: self.format.clone(),
            backend: self.lib.label(),
            message: format!("associated image {}: {message}", image.name),
        })?;
        argb_to_rgb_over_white(&argb, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn premultiplied_argb_composites_onto_white() {
        let src = [
            0xFF_10_20_30, // opaque: copied
            0x00_00_00_00, // transparent: white
            0x80_40_00_80, // half transparent premultiplied: blended with white
        ];
        let mut dst = [0u8; 9];
        argb_to_rgb_over_white(&src, &mut dst);
        assert_eq!(
            dst,
            [0x10, 0x20, 0x30, 255, 255, 255, 0x40 + 0x7F, 0x7F, 0xFF]
        );
    }

    #[test]
    fn open_errors_are_sorted() {
        assert!(is_unsupported_message(
            "Unsupported TIFF compression: 52479"
        ));
        assert!(is_unsupported_message(
            "Reading x.dcm: Attribute BitsAllocated value 16 != 8"
        ));
        assert!(!is_unsupported_message(
            "TIFFRGBAImageGet failed, last error: JPEGLib: Bogus marker length"
        ));
    }
}
