//! Patches to model input: read, resize, normalise, pack.
//!
//! In: a slide, the patches of a [`crate::grid::PatchGrid`] (level-0 locations) with their
//! [`ReadPlan`], and the model's preprocessing. Out: a [`PatchBatch`]: the patches' grid indices
//! and their RGB8 pixels at the model's input size. Each patch is read from the planned level
//! and brought to the model's input by the model's geometry (its resize method, Resize and
//! CenterCrop steps: [`crate::imaging::resize`]); when stain normalisation is asked without
//! deferred resizing, it is applied at the read size first and rounded to 8 bits. The
//! inference worker turns a batch into one float32
//! [`InputTensor`], NCHW or NHWC, scaled to [0, 1] and normalised per channel (WSInfer's
//! `ToTensor` and `Normalize`) right before running it ([`PatchBatch::tensor`], the maths of
//! [`crate::imaging::preprocess`]), so batches waiting in the queue take a quarter of the
//! memory. Patches are decoded in parallel on the caller's rayon pool. When asked, each
//! patch's focus score ([`crate::qc::focus::measure`]) is taken from the pixels as read, before
//! any resizing, so slide QC needs no second read of the slide.

use rayon::prelude::*;

use crate::error::Result;
use crate::geom::{GridIndex, Size};
use crate::grid::{Patch, ReadPlan};
use crate::imaging::preprocess::{preprocess_cpu, Layout, Preprocess};
use crate::model::InputTensor;
use crate::slide::Slide;

/// A batch of patches ready for inference.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchBatch {
    /// Which patches, in order.
    pub indices: Vec<GridIndex>,
    /// RGB8 pixels, `indices.len() × height × width × 3`, patch after patch.
    pub pixels: Vec<u8>,
    /// How the pixels become the model's input tensor.
    pub pre: Preprocess,
    /// Each patch's focus score, in order (empty when not asked for).
    pub focus: Vec<Option<f32>>,
}

impl PatchBatch {
    /// Tensor shape: `[n, 3, h, w]` or `[n, h, w, 3]`.
    pub fn shape(&self) -> [usize; 4] {
        let (n, h, w) = (
            self.indices.len(),
            self.pre.input.0 as usize,
            self.pre.input.1 as usize,
        );
        match self.pre.layout {
            Layout::Nchw => [n, 3, h, w],
            Layout::Nhwc => [n, h, w, 3],
        }
    }

    /// The model's input tensor (scaled, normalised, in the model's layout), and, when the
    /// batch was to be preprocessed on the GPU but the device failed, why: the values then
    /// come from the CPU twin (the same maths), and the caller records the fallback.
    pub fn tensor(&self) -> (InputTensor, Option<String>) {
        let shape = self.shape();
        if let Some(from) = self.pre.deferred {
            let n = self.indices.len();
            let cpu = || preprocess_cpu(&self.pixels, n, from, &self.pre);
            if !self.pre.on_gpu {
                return (InputTensor { shape, data: cpu() }, None);
            }
            let (data, failure) = match crate::gpu::Gpu::shared()
                .and_then(|g| g.preprocess(&self.pixels, n, from, &self.pre))
            {
                Ok(data) => (data, None),
                Err(why) => (cpu(), Some(why)),
            };
            return (InputTensor { shape, data }, failure);
        }
        let len = self.pre.patch_len();
        let mut out = vec![0f32; self.indices.len() * len];
        // One rayon task per patch (the caller's pool, or the global one): a single thread
        // packing batches of 128 kept an H200 waiting most of the time.
        out.par_chunks_exact_mut(len)
            .zip(self.pixels.par_chunks_exact(len))
            .for_each(|(t, px)| self.pre.pack_pixels(px, t));
        (InputTensor { shape, data: out }, None)
    }
}

/// Reads, resizes and packs `patches` into one batch (in the given order).
pub fn make_batch(
    slide: &Slide,
    patches: &[Patch],
    plan: ReadPlan,
    pre: &Preprocess,
) -> Result<PatchBatch> {
    make_batch_in(slide, patches, plan, pre, Vec::new(), None)
}

/// [`make_batch`] into a recycled buffer (the `pixels` of a batch already consumed), so that a
/// long run reuses a few tensors instead of allocating one per batch: every value is
/// overwritten, whatever the buffer held. With `focus_factor`, each patch's focus score is
/// measured on its pixels as read, box-reduced by that factor.
pub fn make_batch_in(
    slide: &Slide,
    patches: &[Patch],
    plan: ReadPlan,
    pre: &Preprocess,
    mut pixels: Vec<u8>,
    focus_factor: Option<u32>,
) -> Result<PatchBatch> {
    let len = pre.pixel_len();
    pixels.clear();
    pixels.resize(patches.len() * len, 0);
    let mut focus = vec![
        None;
        if focus_factor.is_some() {
            patches.len()
        } else {
            0
        }
    ];
    let focus_slots: Vec<Option<&mut Option<f32>>> = if focus_factor.is_some() {
        focus.iter_mut().map(Some).collect()
    } else {
        patches.iter().map(|_| None).collect()
    };
    pixels
        .par_chunks_mut(len)
        .zip(patches.par_iter())
        .zip(focus_slots.into_par_iter())
        .try_for_each(|((out, patch), focus_slot)| -> Result<()> {
            let img =
                slide.read_region(patch.location, plan.level, Size::new(plan.side, plan.side))?;
            if let (Some(slot), Some(f)) = (focus_slot, focus_factor) {
                *slot = crate::qc::focus::measure(&img, f);
            }
            let img = match (pre.deferred, &pre.stain) {
                // Resized later, with the whole batch.
                (Some(_), _) => img,
                (None, None) => pre.geometry.apply(img),
                (None, Some(stain)) => {
                    let (w, h) = img.dimensions();
                    let px: Vec<u8> = stain
                        .normalise(img.as_raw())
                        .into_iter()
                        .map(|v| v.round().clamp(0.0, 255.0) as u8)
                        .collect();
                    let img = image::RgbImage::from_raw(w, h, px).ok_or_else(|| {
                        crate::error::Error::InvalidInput {
                            path: slide.path().into(),
                            reason: "stain normalisation changed the patch size".into(),
                        }
                    })?;
                    pre.geometry.apply(img)
                }
            };
            out.copy_from_slice(img.as_raw());
            Ok(())
        })?;
    Ok(PatchBatch {
        indices: patches.iter().map(|p| p.index).collect(),
        pixels,
        pre: pre.clone(),
        focus,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;

    #[test]
    fn packing_follows_layout_and_normalisation() {
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([x as u8 * 255, 0, 51]));
        let mut pre = Preprocess {
            input: (1, 2),
            mean: [0.5, 0.0, 0.0],
            std: [0.5, 1.0, 1.0],
            to_unit: true,
            layout: Layout::Nchw,
            deferred: None,
            on_gpu: false,
            stain: None,
            geometry: Default::default(),
        };
        let mut out = vec![0f32; 6];
        pre.pack(&img, &mut out);
        assert_eq!(out, [-1.0, 1.0, 0.0, 0.0, 0.2, 0.2]);
        pre.layout = Layout::Nhwc;
        pre.pack(&img, &mut out);
        assert_eq!(out, [-1.0, 0.0, 0.2, 1.0, 0.0, 0.2]);
    }
}
