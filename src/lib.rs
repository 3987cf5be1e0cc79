//! Tessera's application layer: the command line's library side, the watch service beside a
//! scanner, the teaching viewer, the benchmarks and the synthetic slide generator.
//!
//! The product is layered in three crates, the direction pointing one way
//! (`docs/architecture.md`):
//!
//! ```text
//! tessera (this crate: cli, watch, serve, bench, synthetic)
//!   └─► tessera_engine: cohort → pipeline (analyze) → report → output → results
//!                       pipeline → stages (tissue, grid, batch, stitch) → model / gpu → imaging
//!         └─► tessera_slide: slide model, formats, native reader, OpenSlide, geometry, limits
//! ```
//!
//! Everything of the engine (and, through it, of the slide layer) is re-exported here under
//! the paths it has always had (`tessera::pipeline`, `tessera::slide::Slide`, …), so a caller
//! depends on one crate; the `tessera` binary only turns command-line flags into their
//! configuration types and calls in.

#![deny(missing_docs)]
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod bench;
pub mod error;
pub mod serve;
pub mod synthetic;
pub mod watch;

pub use tessera_engine::*;

/// The services' error (watch, serve); `tessera::Error` is the engine's.
pub use error::Error as ServiceError;
/// The engine's error, under the name it has always had.
pub use tessera_engine::{Error, Result};
