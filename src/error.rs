//! The services' error type: the watch service and the viewer.
//!
//! In: failures of the engine (kept whole, as [`Error::Engine`]), of the watch service's queue
//! and worker processes, and of the viewer. Out: one [`Error`] enum whose every variant names
//! the file or address concerned, with a stable [`Error::kind`].

use std::path::PathBuf;

/// Convenient alias for results carrying [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `tessera watch` and `tessera serve`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An analysis, a slide or a file (the engine's error, whole).
    #[error(transparent)]
    Engine(#[from] tessera_engine::Error),

    /// The viewer (`tessera serve`) cannot start or answer: no analysed slide, address in
    /// use…
    #[error("{}: {message}", path.display())]
    Serve {
        /// The results folder (or the file or address concerned).
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// The watch service's queue, lock or worker processes.
    #[error("{}: {message}", path.display())]
    Queue {
        /// The queue database, lock file or worker program.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl Error {
    /// Maps an I/O error on `path` to the engine's matching variant.
    pub fn from_io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Engine(tessera_engine::Error::from_io(path, source))
    }

    /// A short, stable name of the variant (the engine's for its errors).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Engine(e) => e.kind(),
            Error::Serve { .. } => "serve",
            Error::Queue { .. } => "queue",
        }
    }
}

impl From<tessera_engine::SlideError> for Error {
    fn from(e: tessera_engine::SlideError) -> Self {
        Error::Engine(e.into())
    }
}
