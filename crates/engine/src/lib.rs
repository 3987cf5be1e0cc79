//! Tessera's engine: from an opened slide to the files a lab keeps.
//!
//! In: a slide (the [`tessera_slide`] crate), a model folder and an [`pipeline::AnalyzeConfig`].
//! Out: a slide's output folder (result.json, patches.csv, GeoJSON, heatmaps, overlays,
//! report.html), and for many slides a cohort summary. Errors are this crate's [`Error`], which
//! keeps a slide error whole.
//!
//! # Data flow
//!
//! Analysis chains the stages in [`pipeline`] (the one orchestration place): Slide →
//! tissue::TissueMask → grid::PatchGrid → batch::PatchBatch → predictions → stitch::Heatmap →
//! [`output`] and [`report`]; a dense model's tile outputs are blended into its heatmaps by
//! [`dense`]. [`cohort`] runs it over many slides. Preprocessing and colour
//! maps are [`imaging`]; [`gpu`] runs the same maths as wgpu shaders; [`model`] holds the
//! inference backends (Backend → Model → Session, sessions take tensors).
//!
//! # Coordinate spaces
//!
//! Region locations are always level-0 pixels ([`geom::Level0Px`]); sizes are in pixels of the
//! level being read ([`geom::Size`]); grid cells are [`geom::GridIndex`].

#![deny(missing_docs)]
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod batch;
pub mod cohort;
pub mod dense;
pub mod error;
pub mod gpu;
pub mod grid;
pub mod imaging;
pub mod lockfile;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod qc;
pub mod report;
pub mod results;
pub mod stitch;
pub mod tissue;

// The slide layer, under the paths the engine's modules name it by.
pub use tessera_slide::{config, deepzoom, geom, info, slide, sys};
pub use tessera_slide::{BackendChoice, DicomWebAuth, DicomWebConfig, Limits, SlideConfig};
pub use tessera_slide::{GridIndex, Level0Px, LevelPx, Size, Slide, TileIndex};

pub use error::{Error, Result};

/// The slide layer's error type, as opposed to the engine's [`Error`].
pub use tessera_slide::Error as SlideError;

/// Tessera's version, as recorded in every output.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The engine's cargo features this build was made with (`ort`, `tract`, `gpu`).
pub fn features() -> Vec<&'static str> {
    let mut f = Vec::new();
    if cfg!(feature = "ort") {
        f.push("ort");
    }
    if cfg!(feature = "tract") {
        f.push("tract");
    }
    if cfg!(feature = "gpu") {
        f.push("gpu");
    }
    f
}
