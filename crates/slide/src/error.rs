//! The slide layer's error type.
//!
//! In: failures from the file system, the slide readers and the limits. Out: one [`Error`]
//! enum with structured variants; every variant names the file it concerns, so a message
//! printed on its own says which slide failed and why.

use std::path::PathBuf;

/// Convenient alias for results carrying [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while opening or reading a slide.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The path does not exist.
    #[error("{}: no such file or directory", path.display())]
    NotFound {
        /// The path given.
        path: PathBuf,
    },

    /// The file exists but may not be read.
    #[error("{}: permission denied", path.display())]
    PermissionDenied {
        /// The path given.
        path: PathBuf,
    },

    /// Any other I/O failure.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The file is not a slide any backend recognises.
    #[error("{}: not a slide or an unsupported format (detected: {detected})", path.display())]
    NotASlide {
        /// The path given.
        path: PathBuf,
        /// What the file looks like, e.g. "stripped (untiled) TIFF 1493 × 901, 3 × 8-bit".
        detected: String,
    },

    /// The format was recognised, but this flavour of it is not supported.
    #[error("{}: unsupported {format}: {reason}", path.display())]
    Unsupported {
        /// The path given.
        path: PathBuf,
        /// The recognised format, e.g. "DICOM".
        format: String,
        /// Why it cannot be read, as the backend said it.
        reason: String,
    },

    /// A request to a DICOMweb server failed (after retries, when the failure was transient).
    #[error("{url}: {message}")]
    Remote {
        /// The URL asked for (never with credentials).
        url: String,
        /// The HTTP status, when the server answered.
        status: Option<u16>,
        /// What went wrong, e.g. "HTTP 404 Not Found".
        message: String,
    },

    /// The file is damaged: the backend recognised it but could not read it.
    #[error("{}: corrupt {format} file ({backend}: {message})", path.display())]
    Corrupt {
        /// The path given.
        path: PathBuf,
        /// The recognised format.
        format: String,
        /// The backend that failed, e.g. "OpenSlide 4.0.1".
        backend: String,
        /// The backend's message.
        message: String,
    },

    /// No library that can read this format is installed.
    #[error(
        "{}: reading {format} needs OpenSlide, which was not found (tried: {}). Install it with \
         `pip install openslide-bin` (OpenSlide 4, every format) or `apt-get install libopenslide0` \
         (OpenSlide 3.4.1, no DICOM), or set TESSERA_OPENSLIDE to the library's path",
        path.display(),
        tried.join("; ")
    )]
    BackendMissing {
        /// The path given.
        path: PathBuf,
        /// The detected format that needed the backend.
        format: String,
        /// Every place searched and why each failed.
        tried: Vec<String>,
    },

    /// The installed backend is too old for this format.
    #[error(
        "{}: {format} needs OpenSlide {required} or newer, but OpenSlide {found} was loaded from \
         {}. Install OpenSlide 4 with `pip install openslide-bin`, or set TESSERA_OPENSLIDE to a \
         newer libopenslide.so.1",
        path.display(),
        library.display()
    )]
    BackendTooOld {
        /// The path given.
        path: PathBuf,
        /// The detected format.
        format: String,
        /// The version that was loaded.
        found: String,
        /// The oldest version that reads the format.
        required: String,
        /// The library file that was loaded.
        library: PathBuf,
    },

    /// A library the user named explicitly could not be loaded.
    #[error("{}: cannot load OpenSlide: {message}", library.display())]
    BackendLoad {
        /// The library path or name.
        library: PathBuf,
        /// Why loading failed.
        message: String,
    },

    /// A level index beyond the pyramid.
    #[error("{}: level {level} does not exist (the slide has {level_count} levels)", path.display())]
    LevelOutOfRange {
        /// The slide.
        path: PathBuf,
        /// The level asked for.
        level: usize,
        /// How many levels there are.
        level_count: usize,
    },

    /// A region request that makes no sense (empty, or coordinates that overflow).
    #[error("{}: invalid region: {reason}", path.display())]
    InvalidRegion {
        /// The slide.
        path: PathBuf,
        /// What is wrong with the request.
        reason: String,
    },

    /// A region that lies entirely outside the slide.
    #[error(
        "{}: region at level-0 ({}, {}) of {} level-{level} pixels lies entirely outside the \
         level ({})",
        path.display(), location.x, location.y, size, level_size
    )]
    RegionOutOfBounds {
        /// The slide.
        path: PathBuf,
        /// The level read.
        level: usize,
        /// Top-left corner in level-0 pixels.
        location: crate::geom::Level0Px,
        /// Requested size in level pixels.
        size: crate::geom::Size,
        /// The level's size.
        level_size: crate::geom::Size,
    },

    /// A file or request larger than a configured limit.
    #[error("{}: {what} is {value}, over the limit of {limit}", path.display())]
    LimitExceeded {
        /// The slide.
        path: PathBuf,
        /// What was measured, e.g. "level-0 width".
        what: &'static str,
        /// The value found.
        value: u64,
        /// The configured limit.
        limit: u64,
    },

    /// One tile could not be decoded.
    #[error("{}: tile (column {}, row {}) of level {level} does not decode: {message}",
        path.display(), tile.col, tile.row)]
    TileDecode {
        /// The slide.
        path: PathBuf,
        /// The level of the tile.
        level: usize,
        /// The tile's grid position.
        tile: crate::geom::TileIndex,
        /// The decoder's message.
        message: String,
    },

    /// A region read failed inside the backend (OpenSlide does not say which tile).
    #[error(
        "{}: reading {} pixels at level-0 ({}, {}) of level {level} failed ({backend}: {message})",
        path.display(), size, location.x, location.y
    )]
    RegionRead {
        /// The slide.
        path: PathBuf,
        /// The level read.
        level: usize,
        /// Top-left corner in level-0 pixels.
        location: crate::geom::Level0Px,
        /// Requested size in level pixels.
        size: crate::geom::Size,
        /// The backend, e.g. "OpenSlide 4.0.1".
        backend: String,
        /// The backend's message.
        message: String,
    },

    /// A slide handle failed earlier and may not be used again (OpenSlide's errors latch).
    #[error("{}: the slide handle failed earlier and cannot be reused (first error: {first_error})",
        path.display())]
    Poisoned {
        /// The slide.
        path: PathBuf,
        /// The error that poisoned it.
        first_error: String,
    },

    /// An associated image name the slide does not have.
    #[error("{}: no associated image named {name:?} (available: {})", path.display(),
        available.join(", "))]
    AssociatedImageNotFound {
        /// The slide.
        path: PathBuf,
        /// The name asked for.
        name: String,
        /// The names the slide has.
        available: Vec<String>,
    },
}

impl Error {
    /// Maps an I/O error on `path` to the matching variant.
    pub fn from_io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        match source.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound { path },
            std::io::ErrorKind::PermissionDenied => Error::PermissionDenied { path },
            _ => Error::Io { path, source },
        }
    }

    /// A short, stable name of the variant, used in JSON output (`"kind"`).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotFound { .. } => "not_found",
            Error::PermissionDenied { .. } => "permission_denied",
            Error::Io { .. } => "io",
            Error::NotASlide { .. } => "not_a_slide",
            Error::Unsupported { .. } => "unsupported",
            Error::Corrupt { .. } => "corrupt",
            Error::Remote { .. } => "remote",
            Error::BackendMissing { .. } => "backend_missing",
            Error::BackendTooOld { .. } => "backend_too_old",
            Error::BackendLoad { .. } => "backend_load",
            Error::LevelOutOfRange { .. } => "level_out_of_range",
            Error::InvalidRegion { .. } => "invalid_region",
            Error::RegionOutOfBounds { .. } => "region_out_of_bounds",
            Error::LimitExceeded { .. } => "limit_exceeded",
            Error::TileDecode { .. } => "tile_decode",
            Error::RegionRead { .. } => "region_read",
            Error::Poisoned { .. } => "poisoned",
            Error::AssociatedImageNotFound { .. } => "associated_image_not_found",
        }
    }
}
