//! The GPU device of a build without the engine's `gpu` feature: a type that cannot exist, so
//! that every caller takes its CPU path.
//!
//! In: nothing. Out: [`Gpu::shared`] says why there is no GPU. No coordinates.

use image::RgbImage;

use crate::imaging::colour::Cmap;
use crate::imaging::preprocess::Preprocess;

/// No GPU in this build: no value of this type can be made.
pub struct Gpu {
    /// The adapter (never read: there is none).
    pub adapter: String,
    /// A software adapter (never read: there is none).
    pub is_cpu: bool,
    never: std::convert::Infallible,
}

impl Gpu {
    /// Always `Err`: the engine was built without its `gpu` feature.
    pub fn shared() -> Result<&'static Gpu, String> {
        Err(
            "this build of Tessera has no GPU support (tessera-engine's `gpu` feature is off)"
                .into(),
        )
    }

    /// Unreachable: there is no [`Gpu`].
    pub fn preprocess(
        &self,
        _pixels: &[u8],
        _n: usize,
        _src: (u32, u32),
        _pre: &Preprocess,
    ) -> Result<Vec<f32>, String> {
        match self.never {}
    }

    /// Unreachable: there is no [`Gpu`].
    #[allow(clippy::too_many_arguments)]
    pub fn overlay(
        &self,
        _base: &RgbImage,
        _grid: &[f32],
        _grid_size: (u32, u32),
        _cell: f32,
        _threshold: f32,
        _alpha: f32,
        _cmap: Cmap,
    ) -> Result<RgbImage, String> {
        match self.never {}
    }
}
