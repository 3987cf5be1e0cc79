//! Patch preprocessing: RGB8 patches to a model's float32 input tensor.
//!
//! In: a batch of RGB8 patches (`n × sh × sw × 3`, patch after patch) and a [`Preprocess`]
//! (input size, `ToTensor` scaling, per-channel normalisation, layout, optional Reinhard stain
//! normalisation). Out: float32 values, `n × 3 × dh × dw` (NCHW) or `n × dh × dw × 3` (NHWC).
//! [`preprocess_cpu`] resizes (area averaging when shrinking an axis, bilinear when enlarging,
//! as [`crate::imaging::resize`] but without rounding to 8 bits in between), stain-normalises,
//! scales and normalises in one pass; it is the CPU twin of the preprocess shader in
//! [`crate::gpu`], which computes the same values. [`Preprocess::pack_pixels`] packs patches
//! already at the input size. Coordinates: pixels of the patch.

use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Tensor layout the ONNX graph expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Layout {
    /// Batch, channels, height, width (PyTorch's default).
    #[default]
    #[serde(rename = "NCHW")]
    Nchw,
    /// Batch, height, width, channels (TensorFlow's default).
    #[serde(rename = "NHWC")]
    Nhwc,
}

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
    /// wgpu shader when `on_gpu` ([`crate::gpu`], [`preprocess_cpu`]) or its CPU twin otherwise. `None`: pixels are
    /// resized on the CPU while decoding (needs `stain` to be `None`).
    pub deferred: Option<(u32, u32)>,
    /// Run the deferred step on the GPU.
    pub on_gpu: bool,
    /// Reinhard stain normalisation of each patch at its read size, before resizing.
    pub stain: Option<crate::imaging::stain::Reinhard>,
    /// How a patch read at any size becomes `input` when resizing is not deferred: the model's
    /// resize method and its Resize/CenterCrop steps ([`crate::imaging::resize::Geometry`]).
    /// The deferred path computes only a single area resize
    /// ([`crate::imaging::resize::Geometry::is_single_area_resize`]).
    pub geometry: crate::imaging::resize::Geometry,
}

impl Preprocess {
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

/// Tap `k` of output position `o` on an axis of `len` source pixels (the shader's `tap`):
/// (source index, weight); weight 0 past the last tap. Positions are integer numerators (in
/// units of 1/out_len, or 1/(2·out_len) for centres), so the twins agree on every tap and on
/// its weight up to one rounded division, whatever a GPU's division precision: with
/// `len / out_len` in floating point, one unit in the last place of a source position near 300
/// moved weights by 2e-5 on an NVIDIA H200.
pub(crate) fn tap(o: u32, len: u32, out_len: u32, k: u32) -> (u32, f32) {
    let (o, len64, out) = (u64::from(o), u64::from(len), u64::from(out_len));
    if len >= out_len {
        // Area averaging: output pixel o covers [o·len, (o+1)·len) / out_len.
        let (a, b) = (o * len64, (o + 1) * len64);
        let i = a / out + u64::from(k);
        if i * out >= b || i >= len64 {
            return (0, 0.0);
        }
        let overlap = b.min((i + 1) * out) - a.max(i * out);
        return (i as u32, overlap as f32 / len as f32);
    }
    // Bilinear: the centre x = ((2o+1)·len − out_len) / (2·out_len), at least 0.
    let den = 2 * out;
    let num = ((2 * o + 1) * len64).saturating_sub(out);
    let i = (num / den).min(len64 - 1);
    let j = (i + 1).min(len64 - 1);
    let f = (num - i * den) as f32 / den as f32;
    match k {
        0 if i == j => (i as u32, 1.0),
        0 => (i as u32, 1.0 - f),
        1 if i != j => (j as u32, f),
        _ => (0, 0.0),
    }
}

/// Taps per output position (the shader's `taps`): ceil(len / out_len) + 1 when shrinking,
/// 2 when enlarging.
pub(crate) fn taps(len: u32, out_len: u32) -> u32 {
    if len >= out_len {
        len.div_ceil(out_len) + 1
    } else {
        2
    }
}

/// Resizes and normalises a batch of RGB8 patches (`n × sh × sw × 3`, `src` = (sh, sw)) into
/// the model's float32 input, in the model's layout — the CPU twin of the preprocess shader.
pub fn preprocess_cpu(pixels: &[u8], n: usize, src: (u32, u32), pre: &Preprocess) -> Vec<f32> {
    let (sh, sw) = src;
    let (dh, dw) = pre.input;
    let per = (dh * dw) as usize;
    let mut out = vec![0f32; n * per * 3];
    let div = if pre.to_unit { 255.0 } else { 1.0 };
    // The taps of each output row and column (the shader's, computed once), zeros dropped.
    let axis = |len: u32, out: u32| -> Vec<Vec<(u32, f32)>> {
        (0..out)
            .map(|o| {
                (0..taps(len, out))
                    .map(|k| tap(o, len, out, k))
                    .filter(|t| t.1 != 0.0)
                    .collect()
            })
            .collect()
    };
    let (ytaps, xtaps) = (axis(sh, dh), axis(sw, dw));
    let plen = (sh * sw * 3) as usize;
    // Patches are independent: one rayon task each (the caller's pool, or the global one).
    out.par_chunks_mut(per * 3)
        .enumerate()
        .for_each(|(patch, o)| {
            let base = patch * plen;
            // Each source pixel, stain-normalised when asked (the shader's `source`).
            let src: Vec<f32> = match &pre.stain {
                Some(t) => t.normalise(&pixels[base..base + plen]),
                None => pixels[base..base + plen]
                    .iter()
                    .map(|&v| v as f32)
                    .collect(),
            };
            for oy in 0..dh {
                for ox in 0..dw {
                    let mut acc = [0f32; 3];
                    for &(iy, wy) in &ytaps[oy as usize] {
                        for &(ix, wx) in &xtaps[ox as usize] {
                            let w = wx * wy;
                            let at = ((iy * sw + ix) * 3) as usize;
                            for (c, a) in acc.iter_mut().enumerate() {
                                *a += w * src[at + c];
                            }
                        }
                    }
                    let pix = (oy * dw + ox) as usize;
                    for (c, a) in acc.iter().enumerate() {
                        let v = (a / div - pre.mean[c]) / pre.std[c];
                        let at = match pre.layout {
                            Layout::Nchw => c * per + pix,
                            Layout::Nhwc => pix * 3 + c,
                        };
                        o[at] = v;
                    }
                }
            }
        });
    out
}
