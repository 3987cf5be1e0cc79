//! Imaging: the pixel maths every stage shares, with no knowledge of slides, models or files.
//!
//! In: RGB8 pixels (patches, thumbnails, region crops) and plain parameters. Out: resized
//! images ([`resize`]), model input tensors ([`preprocess`]), stain-normalised pixels
//! ([`stain`]) and colour-mapped probabilities ([`colour`]). These are the CPU definitions; the
//! wgpu shaders of [`crate::gpu`] compute the same values on a GPU and are tested against them.
//! Coordinates: pixels of the image at hand.

pub mod colour;
pub mod morph;
pub mod preprocess;
pub mod resize;
pub mod stain;
