//! Tessera's slide layer: whole-slide images as levels of pixels, and nothing above that.
//!
//! In: a path (a file, a DICOM series folder or a MIRAX `.mrxs`) and a [`SlideConfig`]. Out: a
//! [`Slide`] — levels, µm/px and its source, properties, associated images — whose
//! [`Slide::read_region`] returns RGB pixels, and the [`info`] report and [`deepzoom`] tiling
//! built on it. Errors are this crate's [`Error`], every variant naming the file.
//!
//! This crate depends on no other Tessera crate and on no inference runtime, GPU, web or
//! database library; all of Tessera's `unsafe` code (OpenSlide's FFI in
//! `slide/openslide/ffi.rs`, the JPEG decoder's SIMD kernels, the C library calls of [`sys`])
//! lives here.
//!
//! # Data flow
//!
//! ```text
//! path ──► slide::Slide::open ──► Slide (levels, MPP, properties, associated images)
//!                                   │
//!                                   ├──► info::SlideInfo        (`tessera info`)
//!                                   ├──► deepzoom::DeepZoom     (the viewer's tiles)
//!                                   └──► Slide::read_region ──► RgbImage
//! ```
//!
//! # Coordinate spaces
//!
//! Region locations are always level-0 pixels ([`geom::Level0Px`]); sizes are in pixels of the
//! level being read ([`geom::Size`]); positions inside a level are [`geom::LevelPx`]; tiles are
//! addressed by [`geom::TileIndex`]. Conversions go through named functions in [`geom`].

#![deny(missing_docs)]
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod config;
pub mod deepzoom;
pub mod error;
pub mod geom;
pub mod identifiers;
pub mod info;
pub mod slide;
pub mod sys;

pub use config::{BackendChoice, DicomWebAuth, DicomWebConfig, Limits, SlideConfig};
pub use error::{Error, Result};
pub use geom::{GridIndex, Level0Px, LevelPx, Size, TileIndex};
pub use slide::Slide;

/// Tessera's version, as recorded in every output.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
