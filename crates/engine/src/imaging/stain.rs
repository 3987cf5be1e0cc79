//! Reinhard stain normalisation: a patch's colours moved so that their CIE L\*a\*b\* means and
//! standard deviations become a target's.
//!
//! In: RGB8 pixels (a patch at its read size, or a reference image to fit a target from).
//! Out: per-pixel RGB as floats in 0–255 (not rounded), or a [`Reinhard`] target. No coordinate
//! space: every pixel of the patch counts, as in TIAToolbox's `ReinhardNormalizer`
//! (`cv2.meanStdDev` over the whole image, no tissue mask).
//!
//! Lab is OpenCV's `COLOR_RGB2Lab` for floats (sRGB gamma, D65 white), in TIAToolbox's units:
//! L in 0–100, a and b around 0. TIAToolbox converts through 8-bit Lab and rounds the result to
//! 8 bits; here everything stays in f32, so the values differ from TIAToolbox's by that
//! quantisation (a few grey levels at most). The same maths runs in `shaders/preprocess.wgsl`;
//! the functions here are its CPU twin, down to the order of the sums.

use std::path::Path;

/// A Reinhard target: Lab means and standard deviations (L, a, b).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Reinhard {
    /// Target mean of L (0–100), a and b.
    pub mean: [f32; 3],
    /// Target standard deviation of L, a and b (each > 0).
    pub std: [f32; 3],
}

/// Lanes of the per-patch sums: the shader's workgroup size. Pixel `i` goes to lane `i % 64`,
/// and the lanes are added as a tree (32, 16, … 1), as the shader's reduction does.
pub const LANES: usize = 64;

/// A standard deviation at or below this (Lab units) counts as a flat channel, which is shifted
/// to the target mean but not scaled. It is far above the float error of a uniform patch's
/// statistics (≈ 1e-3) and below what one 8-bit step in one pixel of a patch gives.
pub const FLAT: f32 = 0.01;

fn to_linear(c: f32) -> f32 {
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

fn to_srgb(c: f32) -> f32 {
    if c <= 0.003_130_8 {
        12.92 * c
    } else {
        // c^(1/2.4) = c^(1/3) · c^(1/12), and c^(1/12) = √√(c^(1/3)).
        let t = cbrt(c);
        1.055 * (t * t.sqrt().sqrt()) - 0.055
    }
}

/// Cube root of a positive float: a bit-level first guess and three Newton steps (to f32
/// precision, several times faster than libm's `cbrtf` or `powf`, which dominated the CPU
/// path's time).
fn cbrt(x: f32) -> f32 {
    let mut y = f32::from_bits(x.to_bits() / 3 + 0x2a51_4067);
    for _ in 0..3 {
        y = (2.0 * y + x / (y * y)) * (1.0 / 3.0);
    }
    y
}

fn f_lab(t: f32) -> f32 {
    if t > 0.008856 {
        cbrt(t)
    } else {
        7.787 * t + 16.0 / 116.0
    }
}

fn f_inv(f: f32) -> f32 {
    if f > 0.206_893 {
        f * f * f
    } else {
        (f - 16.0 / 116.0) / 7.787
    }
}

/// RGB (0–255) → Lab (L 0–100).
pub fn rgb_to_lab(rgb: [f32; 3]) -> [f32; 3] {
    linear_to_lab(rgb.map(|c| to_linear(c / 255.0)))
}

/// 8-bit RGB → Lab, with the sRGB decoding from a table (the same values [`rgb_to_lab`]
/// computes).
fn rgb8_to_lab(rgb: [u8; 3]) -> [f32; 3] {
    static LINEAR: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    let t = LINEAR.get_or_init(|| std::array::from_fn(|v| to_linear(v as f32 / 255.0)));
    linear_to_lab(rgb.map(|v| t[v as usize]))
}

fn linear_to_lab([r, g, b]: [f32; 3]) -> [f32; 3] {
    let x = (0.412_453 * r + 0.357_580 * g + 0.180_423 * b) / 0.950_456;
    let y = 0.212_671 * r + 0.715_160 * g + 0.072_169 * b;
    let z = (0.019_334 * r + 0.119_193 * g + 0.950_227 * b) / 1.088_754;
    let (fx, fy, fz) = (f_lab(x), f_lab(y), f_lab(z));
    let l = if y > 0.008856 {
        116.0 * fy - 16.0
    } else {
        903.3 * y
    };
    [l, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

/// Lab → RGB (0–255, clipped, not rounded).
pub fn lab_to_rgb(lab: [f32; 3]) -> [f32; 3] {
    let [l, a, b] = lab;
    let (y, fy) = if l <= 7.9996 {
        let y = l / 903.3;
        (y, 7.787 * y + 16.0 / 116.0)
    } else {
        let fy = (l + 16.0) / 116.0;
        (fy * fy * fy, fy)
    };
    let x = f_inv(a / 500.0 + fy) * 0.950_456;
    let z = f_inv(fy - b / 200.0) * 1.088_754;
    let r = 3.240_479 * x - 1.537_15 * y - 0.498_535 * z;
    let g = -0.969_256 * x + 1.875_991 * y + 0.041_556 * z;
    let bl = 0.055_648 * x - 0.204_043 * y + 1.057_311 * z;
    [r, g, bl].map(|c| to_srgb(c.clamp(0.0, 1.0)).clamp(0.0, 1.0) * 255.0)
}

fn lab_at(pixels: &[u8], i: usize) -> [f32; 3] {
    let p = &pixels[i * 3..i * 3 + 3];
    rgb8_to_lab([p[0], p[1], p[2]])
}

fn tree(mut lanes: [[f32; 3]; LANES]) -> [f32; 3] {
    let mut s = LANES / 2;
    while s > 0 {
        for t in 0..s {
            let add = lanes[t + s];
            for (a, b) in lanes[t].iter_mut().zip(add) {
                *a += b;
            }
        }
        s /= 2;
    }
    lanes[0]
}

/// Lab means and (population) standard deviations of one patch's RGB8 pixels, summed as the
/// shader sums them.
pub fn patch_stats(pixels: &[u8]) -> ([f32; 3], [f32; 3]) {
    let labs: Vec<[f32; 3]> = (0..pixels.len() / 3).map(|i| lab_at(pixels, i)).collect();
    lab_stats(&labs)
}

/// [`patch_stats`] of Lab values already converted.
fn lab_stats(labs: &[[f32; 3]]) -> ([f32; 3], [f32; 3]) {
    let n = labs.len();
    if n == 0 {
        return ([0.0; 3], [0.0; 3]);
    }
    let mut lanes = [[0f32; 3]; LANES];
    for (t, lane) in lanes.iter_mut().enumerate() {
        for v in labs.iter().skip(t).step_by(LANES) {
            for c in 0..3 {
                lane[c] += v[c];
            }
        }
    }
    let mean = tree(lanes).map(|s| s / n as f32);
    let mut lanes = [[0f32; 3]; LANES];
    for (t, lane) in lanes.iter_mut().enumerate() {
        for v in labs.iter().skip(t).step_by(LANES) {
            for c in 0..3 {
                let d = v[c] - mean[c];
                lane[c] += d * d;
            }
        }
    }
    let std = tree(lanes).map(|s| (s / n as f32).sqrt());
    (mean, std)
}

impl Reinhard {
    /// One pixel (Lab) of a patch with Lab statistics `src` moved to the target, as RGB 0–255.
    fn apply_lab(&self, lab: [f32; 3], src: ([f32; 3], [f32; 3])) -> [f32; 3] {
        let out = [0, 1, 2].map(|c| {
            let ratio = if src.1[c] > FLAT {
                self.std[c] / src.1[c]
            } else {
                1.0
            };
            (lab[c] - src.0[c]) * ratio + self.mean[c]
        });
        lab_to_rgb(out)
    }

    /// A patch's RGB8 pixels normalised (floats 0–255), as the shader computes them.
    pub fn normalise(&self, pixels: &[u8]) -> Vec<f32> {
        let labs: Vec<[f32; 3]> = (0..pixels.len() / 3).map(|i| lab_at(pixels, i)).collect();
        let stats = lab_stats(&labs);
        labs.iter()
            .flat_map(|&lab| self.apply_lab(lab, stats))
            .collect()
    }

    /// The target of a reference image: its Lab means and standard deviations (in f64, two
    /// passes over the pixels, nothing stored per pixel).
    pub fn fit(img: &image::RgbImage) -> Option<Reinhard> {
        let n = (img.width() as f64) * (img.height() as f64);
        if n == 0.0 {
            return None;
        }
        let lab = |p: &image::Rgb<u8>| rgb8_to_lab(p.0);
        let mut mean = [0f64; 3];
        for v in img.pixels().map(lab) {
            for c in 0..3 {
                mean[c] += v[c] as f64 / n;
            }
        }
        let mut var = [0f64; 3];
        for v in img.pixels().map(lab) {
            for c in 0..3 {
                var[c] += (v[c] as f64 - mean[c]).powi(2) / n;
            }
        }
        Reinhard::new(mean.map(|m| m as f32), var.map(|v| v.sqrt() as f32))
    }

    /// A target from its figures; `None` unless every value is finite, L's mean is in 0–100
    /// and every standard deviation is positive.
    pub fn new(mean: [f32; 3], std: [f32; 3]) -> Option<Reinhard> {
        let ok = mean.iter().chain(&std).all(|v| v.is_finite())
            && (0.0..=100.0).contains(&mean[0])
            && std.iter().all(|&s| s > 0.0);
        ok.then_some(Reinhard { mean, std })
    }

    /// `--reinhard TARGET`: six numbers `L,a,b,sL,sa,sb` (means, then standard deviations), or
    /// a reference image (PNG, JPEG, TIFF) whose statistics become the target.
    pub fn parse(s: &str) -> Result<Reinhard, String> {
        let nums: Vec<&str> = s.split(',').map(str::trim).collect();
        if nums.len() == 6 {
            let v: Vec<f32> = nums
                .iter()
                .map(|n| n.parse::<f32>())
                .collect::<Result<_, _>>()
                .map_err(|_| format!("{s:?}: six numbers expected: L,a,b,sL,sa,sb"))?;
            return Reinhard::new([v[0], v[1], v[2]], [v[3], v[4], v[5]]).ok_or_else(|| {
                format!("{s:?}: L's mean must be in 0-100 and standard deviations above 0")
            });
        }
        let path = Path::new(s);
        if !path.is_file() {
            return Err(format!(
                "{s:?}: neither six numbers (L,a,b,sL,sa,sb) nor a reference image file"
            ));
        }
        let mut r = image::ImageReader::open(path)
            .and_then(|r| r.with_guessed_format())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // A reference tile, not a slide: a 1 GiB decode limit bounds what a wrong file costs.
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(1 << 30);
        r.limits(limits);
        let img = r
            .decode()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .to_rgb8();
        Reinhard::fit(&img).ok_or_else(|| {
            format!(
                "{}: the reference image is empty or flat (a standard deviation of 0)",
                path.display()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_roots_are_accurate() {
        let mut worst = 0f64;
        for i in 1..=100_000 {
            let x = i as f32 / 100_000.0 * 1.2;
            let c = (cbrt(x) as f64 - (x as f64).cbrt()).abs() / (x as f64).cbrt();
            let s = to_srgb(x) as f64;
            let want = 1.055 * (x as f64).powf(1.0 / 2.4) - 0.055;
            worst = worst
                .max(c)
                .max(if x > 0.0032 { (s - want).abs() } else { 0.0 });
        }
        assert!(worst < 1e-6, "{worst}");
    }

    #[test]
    fn lab_round_trips_and_matches_known_values() {
        // OpenCV: white → (100, 0, 0); pure red → (53.24, 80.09, 67.20).
        let w = rgb_to_lab([255.0; 3]);
        assert!((w[0] - 100.0).abs() < 0.01 && w[1].abs() < 0.01 && w[2].abs() < 0.01);
        let r = rgb_to_lab([255.0, 0.0, 0.0]);
        assert!((r[0] - 53.24).abs() < 0.05, "{r:?}");
        assert!((r[1] - 80.09).abs() < 0.1, "{r:?}");
        assert!((r[2] - 67.20).abs() < 0.1, "{r:?}");
        for rgb in [[0.0, 0.0, 0.0], [200.0, 120.0, 180.0], [10.0, 250.0, 3.0]] {
            let back = lab_to_rgb(rgb_to_lab(rgb));
            for c in 0..3 {
                assert!((back[c] - rgb[c]).abs() < 0.05, "{rgb:?} -> {back:?}");
            }
        }
    }

    #[test]
    fn normalised_patches_take_the_targets_statistics() {
        // A pinkish gradient; the target is a darker, bluer stain.
        let px: Vec<u8> = (0..64 * 64)
            .flat_map(|i| {
                let (x, y) = ((i % 64) as u8, (i / 64) as u8);
                [180 + x / 2, 90 + y, 150 + (x ^ y) / 4]
            })
            .collect();
        let t = Reinhard::new([55.0, 20.0, -10.0], [8.0, 4.0, 3.0]).unwrap();
        let out = t.normalise(&px);
        let rounded: Vec<u8> = out.iter().map(|v| v.round() as u8).collect();
        let (m, s) = patch_stats(&rounded);
        for c in 0..3 {
            assert!((m[c] - t.mean[c]).abs() < 0.5, "mean {m:?}");
            assert!((s[c] - t.std[c]).abs() < 0.5, "std {s:?}");
        }
        // Its own statistics as the target: the patch comes back (up to float error).
        let (m, s) = patch_stats(&px);
        let same = Reinhard::new(m, s).unwrap().normalise(&px);
        for (a, b) in same.iter().zip(&px) {
            assert!((a - *b as f32).abs() < 0.05);
        }
    }

    #[test]
    fn a_uniform_patch_moves_to_the_target_mean_without_blowing_up() {
        let px = [200u8, 180, 210].repeat(224 * 224);
        let t = Reinhard::new([60.0, 20.0, -10.0], [12.0, 6.0, 5.0]).unwrap();
        let (_, sd) = patch_stats(&px);
        assert!(sd.iter().all(|&s| s < FLAT), "float noise only: {sd:?}");
        let out = t.normalise(&px);
        let want = lab_to_rgb(t.mean);
        for p in out.chunks(3) {
            for c in 0..3 {
                assert!((p[c] - want[c]).abs() < 0.05, "{p:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn targets_parse_from_numbers_and_refuse_nonsense() {
        let t = Reinhard::parse("65.2, 21.1,-12.3,14.1,7.2,5.3").unwrap();
        assert_eq!(t.mean, [65.2, 21.1, -12.3]);
        assert_eq!(t.std, [14.1, 7.2, 5.3]);
        assert!(Reinhard::parse("65,21,-12,14,7,0").is_err());
        assert!(Reinhard::parse("165,21,-12,14,7,5").is_err());
        assert!(Reinhard::parse("1,2,3").is_err());
        assert!(Reinhard::parse("nan,2,3,4,5,6").is_err());
        assert!(Reinhard::parse("/no/such/reference.png").is_err());
    }
}
