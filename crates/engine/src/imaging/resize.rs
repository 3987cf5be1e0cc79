//! Resizing and cropping RGB8 images, with the methods models are trained with.
//!
//! In: an RGB image, the wanted size and a [`ResizeMethod`]. Out: the resized image.
//! Coordinates: pixels of the image. Used for model patches ([`Geometry`]: a model's Resize and
//! CenterCrop steps), tissue-model inputs and region crops.
//!
//! - [`ResizeMethod::Torchvision`]: what torchvision's `Resize` does to a PIL image (WSInfer's
//!   recipe): PIL's bilinear filter with antialiasing (its support widens by the shrink factor),
//!   computed as Pillow computes it for 8-bit images — coefficients in double precision,
//!   rounded to 22-bit fixed point, a horizontal pass rounded to 8 bits, then a vertical pass.
//!   Byte-identical to `PIL.Image.resize(size, Image.BILINEAR)` (the compatibility tests check
//!   it against Pillow).
//! - [`ResizeMethod::Area`]: area averaging when shrinking an axis, bilinear (pixel centres
//!   aligned) when enlarging it, in floating point, rounded once at the end. Tessera's own
//!   method, and the one its GPU preprocessing shader implements.
//! - [`ResizeMethod::BilinearNoAntialias`]: two-tap bilinear sampling on both axes (PyTorch's
//!   `interpolate(mode="bilinear", align_corners=False, antialias=False)`), rounded once.

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// How an image is resized to a model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ResizeMethod {
    /// torchvision's `Resize` on PIL images: PIL bilinear with antialiasing, 8-bit fixed point.
    #[default]
    #[serde(rename = "torchvision-bilinear")]
    Torchvision,
    /// Area averaging when shrinking, bilinear when enlarging.
    #[serde(rename = "area")]
    Area,
    /// Bilinear without antialiasing.
    #[serde(rename = "bilinear-no-antialias")]
    BilinearNoAntialias,
}

impl ResizeMethod {
    /// The name used in config.json and result.json.
    pub fn label(self) -> &'static str {
        match self {
            ResizeMethod::Torchvision => "torchvision-bilinear",
            ResizeMethod::Area => "area",
            ResizeMethod::BilinearNoAntialias => "bilinear-no-antialias",
        }
    }
}

/// One geometric step of a model's preprocessing, applied to the patch in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Resize to (height, width).
    Resize(u32, u32),
    /// torchvision's `CenterCrop` to (height, width); never larger than the image (the model
    /// configuration is refused otherwise, rather than padded with black).
    CenterCrop(u32, u32),
}

/// The geometric part of a model's preprocessing: a resize method and the steps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Geometry {
    /// How Resize steps resample.
    pub method: ResizeMethod,
    /// Steps in order; the first is always a Resize (to the model's input or patch size).
    pub steps: Vec<Step>,
}

impl Geometry {
    /// The size after every step, (height, width); `None` without steps.
    pub fn output(&self) -> Option<(u32, u32)> {
        self.steps.last().map(|s| match *s {
            Step::Resize(h, w) | Step::CenterCrop(h, w) => (h, w),
        })
    }

    /// True when the geometry is one area resize: what the deferred (GPU) path computes.
    pub fn is_single_area_resize(&self) -> bool {
        self.method == ResizeMethod::Area
            && self.steps.len() == 1
            && matches!(self.steps[0], Step::Resize(..))
    }

    /// True when the geometry leaves an image of `size` (height, width) as it is: every step
    /// resizes or crops to that same size (every method copies an image already at its target
    /// size). The deferred (GPU) path then computes the same pixels whatever the method.
    pub fn keeps(&self, size: (u32, u32)) -> bool {
        self.steps.iter().all(|s| match *s {
            Step::Resize(h, w) | Step::CenterCrop(h, w) => (h, w) == size,
        })
    }

    /// In words, for messages: e.g. "torchvision-bilinear resizing with a centre crop".
    pub fn describe(&self) -> String {
        let crop = self.steps.iter().any(|s| matches!(s, Step::CenterCrop(..)));
        format!(
            "{} resizing{}",
            self.method.label(),
            if crop { " with a centre crop" } else { "" }
        )
    }

    /// Applies every step to `img`.
    pub fn apply(&self, img: RgbImage) -> RgbImage {
        self.steps.iter().fold(img, |img, step| match *step {
            Step::Resize(h, w) => resize_with(&img, w, h, self.method),
            Step::CenterCrop(h, w) => center_crop(&img, w, h),
        })
    }
}

/// torchvision's `center_crop` for a crop no larger than the image: offsets are
/// `round((size - crop) / 2)` with Python's rounding (halves to even).
pub fn center_crop(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (iw, ih) = img.dimensions();
    let (w, h) = (w.min(iw), h.min(ih));
    let offset = |full: u32, crop: u32| ((full - crop) as f64 / 2.0).round_ties_even() as u32;
    image::imageops::crop_imm(img, offset(iw, w), offset(ih, h), w, h).to_image()
}

/// Resizes to `w × h` with Tessera's area method (tissue-model inputs, region crops).
pub fn resize(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    resize_with(img, w, h, ResizeMethod::Area)
}

/// Resizes to `w × h` with `method`.
pub fn resize_with(img: &RgbImage, w: u32, h: u32, method: ResizeMethod) -> RgbImage {
    if img.dimensions() == (w, h) {
        return img.clone();
    }
    match method {
        ResizeMethod::Torchvision => pil_bilinear(img, w, h),
        ResizeMethod::Area | ResizeMethod::BilinearNoAntialias => float_separable(
            img,
            &coefficients(method, img.width() as usize, w as usize),
            &coefficients(method, img.height() as usize, h as usize),
            w,
            h,
        ),
    }
}

/// A separable resize in floating point, rounded to 8 bits once at the end.
fn float_separable(
    img: &RgbImage,
    hw: &[Vec<(usize, f32)>],
    vw: &[Vec<(usize, f32)>],
    w: u32,
    h: u32,
) -> RgbImage {
    let (sw, sh) = (img.width() as usize, img.height() as usize);
    let w = w as usize;
    let src = img.as_raw();
    let mut tmp = vec![0f32; sh * w * 3];
    for y in 0..sh {
        for (x, taps) in hw.iter().enumerate() {
            for c in 0..3 {
                tmp[(y * w + x) * 3 + c] = taps
                    .iter()
                    .map(|&(i, wt)| src[(y * sw + i) * 3 + c] as f32 * wt)
                    .sum();
            }
        }
    }
    let mut out = RgbImage::new(w as u32, h);
    for (y, taps) in vw.iter().enumerate() {
        for x in 0..w {
            for c in 0..3 {
                let v: f32 = taps
                    .iter()
                    .map(|&(i, wt)| tmp[(i * w + x) * 3 + c] * wt)
                    .sum();
                out.get_pixel_mut(x as u32, y as u32).0[c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// Resampling taps for one axis and a floating-point method: for each output pixel, (source
/// index, weight).
fn coefficients(method: ResizeMethod, src: usize, dst: usize) -> Vec<Vec<(usize, f32)>> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|o| {
            if scale >= 1.0 && method == ResizeMethod::Area {
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
                // Bilinear with pixel centres aligned, clamped at the first pixel.
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

/// Pillow's fixed-point precision for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's bilinear coefficients for one axis, as `precompute_coeffs` and
/// `normalize_coeffs_8bpc` compute them: per output pixel, the first source index and the
/// fixed-point weights.
fn pil_coefficients(src: usize, dst: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = src as f64 / dst as f64;
    let filterscale = scale.max(1.0);
    // The bilinear filter's support is 1, widened by the shrink factor.
    let support = filterscale;
    let ss = 1.0 / filterscale;
    (0..dst)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) truncates towards zero.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(src as i64) - xmin;
            let raw: Vec<f64> = (0..xmax.max(0))
                .map(|x| {
                    let t = ((x + xmin) as f64 - center + 0.5) * ss;
                    let t = t.abs();
                    if t < 1.0 {
                        1.0 - t
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|&k| {
                    let k = if total != 0.0 { k / total } else { k };
                    let v = k * (1u32 << PRECISION_BITS) as f64;
                    if v < 0.0 {
                        (-0.5 + v) as i32
                    } else {
                        (0.5 + v) as i32
                    }
                })
                .collect();
            (xmin as usize, fixed)
        })
        .collect()
}

/// Pillow's 8-bit clip of a fixed-point sum.
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `PIL.Image.resize((w, h), Image.BILINEAR)` for an RGB image, bit for bit: a horizontal pass
/// (skipped when the width is kept) rounded to 8 bits, then a vertical pass (skipped when the
/// height is kept).
fn pil_bilinear(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (sw, sh) = (img.width() as usize, img.height() as usize);
    let (w, h) = (w as usize, h as usize);
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut cur: Vec<u8> = img.as_raw().clone();
    let mut cur_w = sw;
    if w != sw {
        let taps = pil_coefficients(sw, w);
        let mut next = vec![0u8; sh * w * 3];
        for y in 0..sh {
            let row = &cur[y * sw * 3..(y + 1) * sw * 3];
            for (x, (start, k)) in taps.iter().enumerate() {
                let mut acc = [half; 3];
                for (i, &kw) in k.iter().enumerate() {
                    let p = &row[(start + i) * 3..(start + i) * 3 + 3];
                    for c in 0..3 {
                        acc[c] += p[c] as i32 * kw;
                    }
                }
                for c in 0..3 {
                    next[(y * w + x) * 3 + c] = clip8(acc[c]);
                }
            }
        }
        cur = next;
        cur_w = w;
    }
    if h != sh {
        let taps = pil_coefficients(sh, h);
        let mut next = vec![0u8; h * cur_w * 3];
        for (y, (start, k)) in taps.iter().enumerate() {
            for x in 0..cur_w {
                let mut acc = [half; 3];
                for (i, &kw) in k.iter().enumerate() {
                    let at = ((start + i) * cur_w + x) * 3;
                    for c in 0..3 {
                        acc[c] += cur[at + c] as i32 * kw;
                    }
                }
                for c in 0..3 {
                    next[(y * cur_w + x) * 3 + c] = clip8(acc[c]);
                }
            }
        }
        cur = next;
    }
    RgbImage::from_raw(w as u32, h as u32, cur).expect("buffer matches the size")
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
    }

    #[test]
    fn every_method_keeps_a_flat_image_flat() {
        let flat = RgbImage::from_pixel(449, 449, image::Rgb([37, 91, 200]));
        for m in [
            ResizeMethod::Area,
            ResizeMethod::Torchvision,
            ResizeMethod::BilinearNoAntialias,
        ] {
            for side in [224, 500, 7] {
                let r = resize_with(&flat, side, side, m);
                assert_eq!(r.dimensions(), (side, side));
                assert!(r.pixels().all(|p| p.0 == [37, 91, 200]), "{m:?} {side}");
            }
        }
    }

    #[test]
    fn pil_bilinear_halving_averages_with_a_widened_tent() {
        // Halving: support 2, centre at 2o+1; taps at 2o-1 … 2o+2 weigh 1/8, 3/8, 3/8, 1/8
        // (Pillow's values), clipped at the edges and renormalised.
        let img = RgbImage::from_fn(8, 1, |x, _| image::Rgb([(x * 32) as u8, 0, 255]));
        let r = resize_with(&img, 4, 1, ResizeMethod::Torchvision);
        let row: Vec<u8> = r.pixels().map(|p| p.0[0]).collect();
        // Output 1: (32·1 + 64·3 + 96·3 + 128·1) / 8 = 80.
        assert_eq!(row[1], 80);
        // Output 0: taps 0,1,2 with weights 3,3,1 (index -1 clipped): (0 + 96 + 64) / 7.
        assert_eq!(row[0], ((96.0 + 64.0) / 7.0_f64).round() as u8);
        assert!(r.pixels().all(|p| p.0[2] == 255 && p.0[1] == 0));
        // Bilinear without antialias takes two taps only: output 1 samples 2.5 → (64 + 96) / 2.
        let b = resize_with(&img, 4, 1, ResizeMethod::BilinearNoAntialias);
        assert_eq!(b.get_pixel(1, 0).0[0], 80);
        assert_eq!(b.get_pixel(0, 0).0[0], 16);
    }

    #[test]
    fn center_crop_rounds_offsets_as_python_does() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8, y as u8, 0]));
        // (5 - 2) / 2 = 1.5 → 2 (half to even); (4 - 3) / 2 = 0.5 → 0.
        let c = center_crop(&img, 2, 3);
        assert_eq!(c.dimensions(), (2, 3));
        assert_eq!(c.get_pixel(0, 0).0, [2, 0, 0]);
        let g = Geometry {
            method: ResizeMethod::Torchvision,
            steps: vec![Step::Resize(8, 10), Step::CenterCrop(4, 4)],
        };
        assert_eq!(g.output(), Some((4, 4)));
        assert_eq!(g.apply(img.clone()).dimensions(), (4, 4));
        assert!(!g.is_single_area_resize());
        assert!(!g.keeps((8, 10)) && !g.keeps((4, 4)));
        // Patches read at the model's size are copied by every method.
        let same = Geometry {
            method: ResizeMethod::Torchvision,
            steps: vec![Step::Resize(4, 5), Step::CenterCrop(4, 5)],
        };
        assert!(same.keeps((4, 5)) && !same.keeps((5, 4)));
        let sized = center_crop(&img, 5, 4);
        assert_eq!(same.apply(sized.clone()), sized);
        assert_eq!(
            g.describe(),
            "torchvision-bilinear resizing with a centre crop"
        );
    }
}
