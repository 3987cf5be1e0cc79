//! Resizing RGB8 images: area averaging when shrinking an axis, bilinear (pixel centres
//! aligned) when enlarging it, rounded back to 8 bits.
//!
//! In: an RGB image and the wanted size. Out: the resized image. Coordinates: pixels of the
//! image. Used for tissue-model inputs, region crops and patches resized while decoding.

use image::RgbImage;

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
}
