//! The engine's error type.
//!
//! In: failures of the slide layer (kept whole, as [`Error::Slide`]), of the file system while
//! writing outputs, of models, inference, outputs and reports. Out: one [`Error`] enum with
//! structured variants; every variant names the file (slide, model folder, output) it concerns,
//! so a message printed on its own says what failed and why.

use std::path::PathBuf;

/// Convenient alias for results carrying [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while analysing slides and writing their results.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The slide could not be opened or read (the slide layer's error, whole).
    #[error(transparent)]
    Slide(#[from] tessera_slide::Error),

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

    /// An input that is not a slide (a source image, a setting) cannot be used.
    #[error("{}: {reason}", path.display())]
    InvalidInput {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A DICOM result object could not be made or written.
    #[error("{}: {reason}", path.display())]
    DicomOutput {
        /// The file it was to be written to.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// A part of Tessera this build was made without (a cargo feature of tessera-engine).
    #[error("this build of Tessera has no {what} (tessera-engine's `{feature}` feature is off)")]
    NotBuilt {
        /// The cargo feature.
        feature: &'static str,
        /// What is missing.
        what: String,
    },

    /// A thread of the analysis (the patch reader, an inference worker) panicked.
    #[error("{}: the {thread} panicked", path.display())]
    Panicked {
        /// The slide being analysed.
        path: PathBuf,
        /// Which thread, e.g. "patch reader".
        thread: &'static str,
    },

    /// A model's configuration is missing fields or inconsistent.
    #[error("{}: invalid model configuration: {reason}", path.display())]
    ModelConfig {
        /// The config.json.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A model could not be loaded or does not fit its configuration.
    #[error("{}: cannot use the model ({backend}): {message}", path.display())]
    Model {
        /// The model folder or file.
        path: PathBuf,
        /// The inference backend.
        backend: String,
        /// What went wrong.
        message: String,
    },

    /// Inference failed on a batch.
    #[error("{}: inference failed ({backend}): {message}", path.display())]
    Inference {
        /// The slide being analysed.
        path: PathBuf,
        /// The inference backend.
        backend: String,
        /// What went wrong.
        message: String,
    },

    /// The slide does not state its resolution and none was given.
    #[error("{}: the slide does not state its µm per pixel; give it with --mpp (e.g. --mpp 0.25 for a 40× scan, 0.5 for 20×)", path.display())]
    MissingMpp {
        /// The slide.
        path: PathBuf,
    },

    /// Encoding an output image failed.
    #[error("{}: cannot encode image: {message}", path.display())]
    Encode {
        /// The output file.
        path: PathBuf,
        /// The encoder's message.
        message: String,
    },

    /// A finished output folder cannot be turned into a report (a file missing or malformed).
    #[error("{}: cannot build the report: {message}", path.display())]
    Report {
        /// The output folder or the file in it.
        path: PathBuf,
        /// What is missing or wrong.
        message: String,
    },

    /// The inference device the user named cannot be used.
    #[error("{device}: {message}")]
    Device {
        /// The option and device asked for, e.g. "--device CUDA:1".
        device: String,
        /// What was found instead, and how to get it.
        message: String,
    },

    /// An external program the user asked for (Chromium for `--pdf`) is absent or failed.
    #[error("{}: {tool}: {message}", path.display())]
    External {
        /// The file it was working on.
        path: PathBuf,
        /// The program.
        tool: String,
        /// What happened, and how to fix it.
        message: String,
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

    /// Is this failure the slide's own — the same on any machine (a corrupt, unsupported or
    /// oversized file, a tile that does not decode, no MPP) — rather than this worker's (its
    /// device, model, disk, libraries or network)?
    pub fn is_the_slides_own(&self) -> bool {
        matches!(
            self.kind(),
            "corrupt"
                | "not_a_slide"
                | "unsupported"
                | "tile_decode"
                | "limit_exceeded"
                | "missing_mpp"
        )
    }

    /// A short, stable name of the variant, used in JSON output (`"kind"`); a slide error
    /// gives the slide layer's own kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Slide(e) => e.kind(),
            Error::NotFound { .. } => "not_found",
            Error::PermissionDenied { .. } => "permission_denied",
            Error::Io { .. } => "io",
            Error::InvalidInput { .. } => "invalid_input",
            Error::DicomOutput { .. } => "dicom_output",
            Error::Panicked { .. } => "panicked",
            Error::NotBuilt { .. } => "not_built",
            Error::ModelConfig { .. } => "model_config",
            Error::Model { .. } => "model",
            Error::Inference { .. } => "inference",
            Error::MissingMpp { .. } => "missing_mpp",
            Error::Encode { .. } => "encode",
            Error::Report { .. } => "report",
            Error::Device { .. } => "device",
            Error::External { .. } => "external",
        }
    }
}
