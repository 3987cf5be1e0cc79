//! Tessera: a whole-slide pathology inference engine.
//!
//! This crate is the product; the `tessera` binary only turns command-line flags into the
//! configuration types defined here and calls into the library.
//!
//! # Data flow
//!
//! ```text
//! path ──► slide::Slide::open ──► Slide (levels, MPP, properties, associated images)
//!                                   │
//!                                   ├──► info::SlideInfo        (`tessera info`)
//!                                   └──► Slide::read_region ──► RgbImage ──► output::write_png
//!                                                                            (`tessera region`)
//! ```
//!
//! Analysis (`tessera analyze`) chains the stages in [`pipeline`]: Slide → tissue::TissueMask →
//! grid::PatchGrid → batch::PatchBatch → predictions → stitch::Heatmap → outputs and
//! [`report`]. [`cohort`] runs it over many slides, [`watch`] beside a scanner (durable queue,
//! worker processes, metrics), and [`serve`] shows the results in a teaching viewer (Deep Zoom,
//! heatmap tiles, quiz).
//!
//! # Coordinate spaces
//!
//! Region locations are always level-0 pixels ([`geom::Level0Px`]); sizes are in pixels of the
//! level being read ([`geom::Size`]); positions inside a level are [`geom::LevelPx`]; tiles are
//! addressed by [`geom::TileIndex`]. Conversions go through named functions in [`geom`].

#![deny(missing_docs)]
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod batch;
pub mod bench;
pub mod cohort;
pub mod config;
pub mod error;
pub mod geom;
pub mod gpu;
pub mod grid;
pub mod info;
pub mod lockfile;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod report;
pub mod serve;
pub mod slide;
pub mod stain;
pub mod stitch;
pub mod synthetic;
mod sys;
pub mod tissue;
pub mod watch;

pub use config::{BackendChoice, Limits, SlideConfig};
pub use error::{Error, Result};
pub use geom::{GridIndex, Level0Px, LevelPx, Size, TileIndex};
pub use slide::Slide;

/// Tessera's version, as recorded in every output.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
