//! Patches to model input: read, resize, normalise, pack.
//!
//! In: a slide, the patches of a [`crate::grid::PatchGrid`] (level-0 locations) with their
//! [`ReadPlan`], and the model's preprocessing. Out: a [`PatchBatch`]: the patches' grid indices
//! and their RGB8 pixels at the model's input size. Each patch is read from the planned level
//! and resized to the model's input with area averaging when shrinking (bilinear when
//! enlarging). The session turns a batch into one float32 tensor, NCHW or NHWC, scaled to
//! [0, 1] and normalised per channel (WSInfer's `ToTensor` and `Normalize`) right before
//! running it ([`PatchBatch::tensor`]), so batches waiting in the queue take a quarter of the
//! memory. Patches are decoded in parallel on the caller's rayon pool.

use image::RgbImage;
use rayon::prelude::*;

use crate::error::Result;
use crate::geom::{GridIndex, Size};
use crate::grid::{Patch, ReadPlan};
use crate::model::config::{Layout, ModelConfig, Transform};
use crate::slide::Slide;

/// Preprocessing derived from a model's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// Model input (height, width).
    pub input: (u32, u32),
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by.
    pub std: [f32; 3],
    /// Scale 0–255 to 0–1 (`ToTensor`).
    pub to_unit: bool,
    /// Tensor layout.
    pub layout: Layout,
    /// Resize later: the batch's pixels stay at the read size, (height, width), and
    /// [`PatchBatch::tensor`] stain-normalises, resizes and normalises them in one go, with the
    /// wgpu shader when `on_gpu` ([`crate::gpu`]) or its CPU twin otherwise. `None`: pixels are
    /// resized on the CPU while decoding (needs `stain` to be `None`).
    pub deferred: Option<(u32, u32)>,
    /// Run the deferred step on the GPU.
    pub on_gpu: bool,
    /// Reinhard stain normalisation of each patch at its read size, before resizing.
    pub stain: Option<crate::stain::Reinhard>,
}

impl Preprocess {
    /// From a model configuration.
    pub fn from_config(c: &ModelConfig) -> Self {
        let mut p = Preprocess {
            input: c.input_size(),
            mean: [0.0; 3],
            std: [1.0; 3],
            to_unit: false,
            layout: c.tessera.layout,
            deferred: None,
            on_gpu: false,
            stain: None,
        };
        for t in &c.transform {
            match t {
                Transform::ToTensor => p.to_unit = true,
                Transform::Normalize { mean, std } => {
                    for i in 0..3 {
                        p.mean[i] = mean[i] as f32;
                        p.std[i] = std[i] as f32;
                    }
                }
                Transform::Resize { .. } => {}
            }
        }
        p
    }

    /// Floats per patch.
    pub fn patch_len(&self) -> usize {
        self.input.0 as usize * self.input.1 as usize * 3
    }

    /// Bytes per patch in a batch's pixels (the read size when resizing is deferred).
    pub fn pixel_len(&self) -> usize {
        match self.deferred {
            Some((h, w)) => h as usize * w as usize * 3,
            None => self.patch_len(),
        }
    }

    /// Writes one RGB image (already at the input size) into `out` in the configured layout.
    pub fn pack(&self, img: &RgbImage, out: &mut [f32]) {
        self.pack_pixels(img.as_raw(), out);
    }

    /// [`Preprocess::pack`] for raw RGB8 pixels (`h × w × 3`).
    pub fn pack_pixels(&self, rgb: &[u8], out: &mut [f32]) {
        let (h, w) = (self.input.0 as usize, self.input.1 as usize);
        // torchvision's ToTensor divides by 255.
        let div = if self.to_unit { 255.0 } else { 1.0 };
        for (i, p) in rgb.chunks_exact(3).enumerate() {
            for (c, &value) in p.iter().enumerate() {
                let v = (value as f32 / div - self.mean[c]) / self.std[c];
                let at = match self.layout {
                    Layout::Nchw => c * h * w + i,
                    Layout::Nhwc => i * 3 + c,
                };
                out[at] = v;
            }
        }
    }
}

/// A batch of patches ready for inference.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchBatch {
    /// Which patches, in order.
    pub indices: Vec<GridIndex>,
    /// RGB8 pixels, `indices.len() × height × width × 3`, patch after patch.
    pub pixels: Vec<u8>,
    /// How the pixels become the model's input tensor.
    pub pre: Preprocess,
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

    /// The model's input tensor (scaled, normalised, in the model's layout), in shape
    /// [`PatchBatch::shape`].
    pub fn tensor(&self) -> Vec<f32> {
        if let Some(from) = self.pre.deferred {
            let n = self.indices.len();
            let cpu = || crate::gpu::preprocess_cpu(&self.pixels, n, from, &self.pre);
            if !self.pre.on_gpu {
                return cpu();
            }
            // The GPU, or its CPU twin (same values) if the device fails mid-run.
            return crate::gpu::Gpu::shared()
                .and_then(|g| g.preprocess(&self.pixels, n, from, &self.pre))
                .unwrap_or_else(|_| cpu());
        }
        debug_assert!(
            self.pre.stain.is_none(),
            "stain normalisation needs deferred resizing"
        );
        let len = self.pre.patch_len();
        let mut out = vec![0f32; self.indices.len() * len];
        for (px, t) in self.pixels.chunks_exact(len).zip(out.chunks_exact_mut(len)) {
            self.pre.pack_pixels(px, t);
        }
        out
    }
}

/// Reads, resizes and packs `patches` into one batch (in the given order).
pub fn make_batch(
    slide: &Slide,
    patches: &[Patch],
    plan: ReadPlan,
    pre: &Preprocess,
) -> Result<PatchBatch> {
    make_batch_in(slide, patches, plan, pre, Vec::new())
}

/// [`make_batch`] into a recycled buffer (the `pixels` of a batch already consumed), so that a
/// long run reuses a few tensors instead of allocating one per batch: every value is
/// overwritten, whatever the buffer held.
pub fn make_batch_in(
    slide: &Slide,
    patches: &[Patch],
    plan: ReadPlan,
    pre: &Preprocess,
    mut pixels: Vec<u8>,
) -> Result<PatchBatch> {
    let len = pre.pixel_len();
    pixels.clear();
    pixels.resize(patches.len() * len, 0);
    pixels
        .par_chunks_mut(len)
        .zip(patches.par_iter())
        .try_for_each(|(out, patch)| -> Result<()> {
            let img =
                slide.read_region(patch.location, plan.level, Size::new(plan.side, plan.side))?;
            let img = match pre.deferred {
                // Resized later, with the whole batch.
                Some(_) => img,
                None => resize(&img, pre.input.1, pre.input.0),
            };
            out.copy_from_slice(img.as_raw());
            Ok(())
        })?;
    Ok(PatchBatch {
        indices: patches.iter().map(|p| p.index).collect(),
        pixels,
        pre: pre.clone(),
    })
}

/// Resizes to `w × h`: area averaging when shrinking an axis, bilinear when enlarging it.
pub fn resize(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    if img.dimensions() == (w, h) {
        return img.clone();
    }
    let (sw, sh) = (img.width() as usize, img.height() as usize);
    // Horizontal pass into f32 rows, then vertical.
    let hw = weights(sw, w as usize);
    let vw = weights(sh, h as usize);
    let src = img.as_raw();
    let mut tmp = vec![0f32; sh * w as usize * 3];
    for y in 0..sh {
        for (x, taps) in hw.iter().enumerate() {
            for c in 0..3 {
                tmp[(y * w as usize + x) * 3 + c] = taps
                    .iter()
                    .map(|&(i, wt)| src[(y * sw + i) * 3 + c] as f32 * wt)
                    .sum();
            }
        }
    }
    let mut out = RgbImage::new(w, h);
    for (y, taps) in vw.iter().enumerate() {
        for x in 0..w as usize {
            for c in 0..3 {
                let v: f32 = taps
                    .iter()
                    .map(|&(i, wt)| tmp[(i * w as usize + x) * 3 + c] * wt)
                    .sum();
                out.get_pixel_mut(x as u32, y as u32).0[c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// Resampling taps for one axis: for each output pixel, (source index, weight).
fn weights(src: usize, dst: usize) -> Vec<Vec<(usize, f32)>> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|o| {
            if scale >= 1.0 {
                // Area: the source interval [o·s, (o+1)·s) weighted by overlap.
                let (a, b) = (o as f64 * scale, (o + 1) as f64 * scale);
                let mut taps = Vec::new();
                let mut i = a.floor() as usize;
                while (i as f64) < b && i < src {
                    let overlap = (b.min(i as f64 + 1.0) - a.max(i as f64)).max(0.0);
                    if overlap > 0.0 {
                        taps.push((i, (overlap / scale) as f32));
                    }
                    i += 1;
                }
                taps
            } else {
                // Bilinear with pixel centres aligned.
                let x = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
                let i = (x.floor() as usize).min(src - 1);
                let j = (i + 1).min(src - 1);
                let f = (x - i as f64) as f32;
                if i == j {
                    vec![(i, 1.0)]
                } else {
                    vec![(i, 1.0 - f), (j, f)]
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_averaging_halves_exactly() {
        let img = RgbImage::from_fn(4, 2, |x, _| {
            image::Rgb([if x % 2 == 0 { 0 } else { 200 }, 10, 20])
        });
        let r = resize(&img, 2, 1);
        assert_eq!(r.get_pixel(0, 0).0, [100, 10, 20]);
        assert_eq!(r.get_pixel(1, 0).0, [100, 10, 20]);
        // Non-integer ratios keep a flat image flat.
        let flat = RgbImage::from_pixel(449, 449, image::Rgb([37, 91, 200]));
        assert!(resize(&flat, 224, 224)
            .pixels()
            .all(|p| p.0 == [37, 91, 200]));
        assert!(resize(&flat, 500, 500)
            .pixels()
            .all(|p| p.0 == [37, 91, 200]));
    }

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
        };
        let mut out = vec![0f32; 6];
        pre.pack(&img, &mut out);
        assert_eq!(out, [-1.0, 1.0, 0.0, 0.0, 0.2, 0.2]);
        pre.layout = Layout::Nhwc;
        pre.pack(&img, &mut out);
        assert_eq!(out, [-1.0, 0.0, 0.2, 1.0, 0.0, 0.2]);
    }
}
