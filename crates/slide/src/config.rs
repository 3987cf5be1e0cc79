//! Configuration shared by every command: which slide backend to use and the limits that
//! protect the machine from hostile or mistaken input.
//!
//! In: values from the command line (parsed by the binary) or from a library caller.
//! Out: plain structs with safe defaults; nothing here touches a file.

use std::path::PathBuf;
use std::time::Duration;

/// Resource limits. A file or request that exceeds one is refused with
/// [`crate::Error::LimitExceeded`] before anything of that size is allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest region, in pixels, that one `read_region` call may return (default 64 Mpx,
    /// 192 MiB of RGB).
    pub max_region_pixels: u64,
    /// Largest level-0 width a slide may claim (default 1,000,000).
    pub max_level0_width: u64,
    /// Largest level-0 height a slide may claim (default 1,000,000).
    pub max_level0_height: u64,
    /// Largest associated image (label, macro, thumbnail) that may be decoded (default 64 Mpx).
    pub max_associated_pixels: u64,
    /// Largest ICC profile that may be read (default 16 MiB).
    pub max_icc_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_region_pixels: 64 * 1024 * 1024,
            max_level0_width: 1_000_000,
            max_level0_height: 1_000_000,
            max_associated_pixels: 64 * 1024 * 1024,
            max_icc_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Which reader opens a slide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// The best available reader for each file: Tessera's native reader for Aperio SVS,
    /// generic tiled TIFF and DICOM WSI, OpenSlide for everything else (and for TIFF layouts
    /// and DICOM series the native reader refuses as unsupported).
    #[default]
    Auto,
    /// Force the native reader.
    Native,
    /// Force OpenSlide.
    OpenSlide,
}

/// Everything needed to open a slide.
///
/// Serializable for the engine's run key: only the settings that can change pixels are
/// serialized (`apply_icc`); the readers give the same pixels (tested), and limits and the
/// cache only decide whether and how fast a slide is read.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SlideConfig {
    /// Which reader to use.
    #[serde(skip)]
    pub backend: BackendChoice,
    /// A specific OpenSlide shared library to load. `None` searches as described in
    /// [`crate::slide::openslide::discover`]: `TESSERA_OPENSLIDE`, the `openslide_bin` Python
    /// package, then the system's library.
    #[serde(skip)]
    pub openslide_library: Option<PathBuf>,
    /// Resource limits.
    #[serde(skip)]
    pub limits: Limits,
    /// Bytes of decoded tiles the native reader keeps per slide (default 256 MiB).
    #[serde(skip)]
    pub cache_bytes: u64,
    /// Convert pixels from the slide's ICC profile to sRGB (default off, as OpenSlide).
    pub apply_icc: bool,
    /// How a `dicomweb+http(s)://` slide is fetched (authentication, TLS, batching).
    #[serde(skip)]
    pub dicomweb: DicomWebConfig,
}

/// Credentials for a DICOMweb server. Never printed: `Debug` shows only the kind.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum DicomWebAuth {
    /// No Authorization header.
    #[default]
    None,
    /// HTTP basic authentication.
    Basic {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// HTTP basic authentication, the password read from a file (its first line) when the
    /// slide is opened.
    BasicPasswordFile {
        /// The user name.
        user: String,
        /// The file holding the password.
        file: PathBuf,
    },
    /// A bearer token (OAuth 2 access token or similar).
    Bearer(String),
    /// A bearer token read from a file (its first line) when the slide is opened, so a token
    /// renewed in the file is picked up by the next slide.
    BearerFile(PathBuf),
}

impl std::fmt::Debug for DicomWebAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DicomWebAuth::None => "None",
            DicomWebAuth::Basic { .. } | DicomWebAuth::BasicPasswordFile { .. } => {
                "Basic(<redacted>)"
            }
            DicomWebAuth::Bearer(_) | DicomWebAuth::BearerFile(_) => "Bearer(<redacted>)",
        })
    }
}

/// How slides named by a `dicomweb+http(s)://…/studies/UID[/series/UID]` URL are fetched
/// (see [`crate::slide::native::dicomweb`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DicomWebConfig {
    /// Credentials sent with every request.
    pub auth: DicomWebAuth,
    /// PEM certificates trusted besides the system's roots (a hospital's own CA).
    pub ca_file: Option<PathBuf>,
    /// Longest one request may take, connection to last byte (default 60 s).
    pub timeout: Duration,
    /// Attempts after the first for a transient failure (no connection, timeout, HTTP 408,
    /// 429, 500, 502, 503, 504), with a doubling pause from 250 ms (default 3).
    pub retries: u32,
    /// Frames asked for in one WADO-RS request: the one wanted and those after it, which a
    /// sweep reads next (default 64). While the caller decodes, the next frames are fetched
    /// in the background once fewer than half a batch of them are on hand.
    pub batch_frames: u64,
    /// Bytes of fetched, not yet decoded frames kept per instance (default 64 MiB).
    pub buffer_bytes: u64,
    /// Series asked for in one QIDO-RS page when the watch lists an archive (`limit`/`offset`,
    /// default 500): an archive of any size is listed in pages until one comes back empty, so
    /// a server that caps its answers below this is followed to the end.
    pub qido_page: u64,
    /// Most series one listing takes in (default 1,000,000); more is an error.
    pub max_listed_series: u64,
    /// Largest QIDO-RS answer read (default 16 MiB).
    pub max_query_bytes: u64,
    /// Largest WADO-RS metadata answer read: every instance of the series (default 256 MiB;
    /// a series of many concatenated instances or a long per-frame table may need more).
    pub max_metadata_bytes: u64,
    /// Largest frame-retrieval answer read, all the frames of one request (default 512 MiB).
    pub max_frames_bytes: u64,
    /// Largest single frame (default 64 MiB).
    pub max_frame_bytes: u64,
}

impl Default for DicomWebConfig {
    fn default() -> Self {
        Self {
            auth: DicomWebAuth::None,
            ca_file: None,
            timeout: Duration::from_secs(60),
            retries: 3,
            batch_frames: 64,
            buffer_bytes: 64 * 1024 * 1024,
            qido_page: 500,
            max_listed_series: 1_000_000,
            max_query_bytes: 16 * 1024 * 1024,
            max_metadata_bytes: 256 * 1024 * 1024,
            max_frames_bytes: 512 * 1024 * 1024,
            max_frame_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Default for SlideConfig {
    fn default() -> Self {
        Self {
            backend: BackendChoice::default(),
            openslide_library: None,
            limits: Limits::default(),
            cache_bytes: 256 * 1024 * 1024,
            apply_icc: false,
            dicomweb: DicomWebConfig::default(),
        }
    }
}
