//! Heatmap overlays: a colour-mapped probability map blended onto a slide thumbnail, with a
//! legend.
//!
//! In: an RGB thumbnail and its downsample (level-0 pixels per thumbnail pixel), a
//! [`Heatmap`] (cells of `cell_l0` level-0 pixels) and the threshold. Out: an RGB image: the
//! thumbnail with viridis colours blended in where patches were analysed (bilinear between cell
//! centres; the overlay shader on a GPU, its CPU twin otherwise, [`crate::gpu`]), cells at or
//! above the threshold outlined in white, and below it a legend strip (colour bar from 0 to 1
//! with ticks and labels at 0, the threshold and 1).

use image::{Rgb, RgbImage};

use crate::gpu::Gpu;
use crate::imaging::colour::{overlay_cpu, viridis, Cmap};
use crate::stitch::Heatmap;

/// 3 × 5 bitmaps for the legend's digits and the decimal point.
fn glyph(ch: char) -> [u8; 5] {
    match ch {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b010, 0b010, 0b010],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0, 0, 0, 0, 0b010],
        _ => [0; 5],
    }
}

fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, scale: i64, color: [u8; 3]) {
    for (k, ch) in s.chars().enumerate() {
        let g = glyph(ch);
        for (row, bits) in g.iter().enumerate() {
            for col in 0..3 {
                if bits & (0b100 >> col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let px = x + (k as i64 * 4 + col) * scale + dx;
                            let py = y + row as i64 * scale + dy;
                            if px >= 0
                                && py >= 0
                                && (px as u32) < img.width()
                                && (py as u32) < img.height()
                            {
                                img.put_pixel(px as u32, py as u32, Rgb(color));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The overlay image (thumbnail plus a legend strip below it), blended on `gpu` when given
/// (its CPU twin if that fails, or without one), and why the GPU failed when it did.
pub fn overlay(
    thumb: &RgbImage,
    downsample: f64,
    heat: &Heatmap,
    threshold: f32,
    gpu: Option<&Gpu>,
) -> (RgbImage, Option<String>) {
    let (w, h) = thumb.dimensions();
    let legend_h = 36u32.max(h / 12);
    let mut out = RgbImage::from_pixel(w, h + legend_h, Rgb([255, 255, 255]));
    // Every analysed cell is coloured (threshold 0): the threshold shows as outlines.
    let grid: Vec<f32> = heat.values.iter().map(|v| v.unwrap_or(-1.0)).collect();
    let size = (heat.width, heat.height);
    let cell = (heat.cell_l0 / downsample) as f32;
    let (blend, cmap) = (0.6, Cmap::Viridis);
    let cpu = || overlay_cpu(thumb, &grid, size, cell, 0.0, blend, cmap);
    let (blended, gpu_failure) =
        match gpu.map(|g| g.overlay(thumb, &grid, size, cell, 0.0, blend, cmap)) {
            None => (cpu(), None),
            Some(Ok(img)) => (img, None),
            Some(Err(why)) => (cpu(), Some(why)),
        };
    image::imageops::replace(&mut out, &blended, 0, 0);
    // Outline cells at or above the threshold (edges between above and not-above).
    let above = |x: f64, y: f64| -> bool {
        let (i, j) = (
            (x / heat.cell_l0).floor() as i64,
            (y / heat.cell_l0).floor() as i64,
        );
        i >= 0
            && j >= 0
            && i < heat.width as i64
            && j < heat.height as i64
            && heat.get(i as u32, j as u32).is_some_and(|p| p >= threshold)
    };
    for y in 0..h {
        for x in 0..w {
            let (lx, ly) = ((x as f64 + 0.5) * downsample, (y as f64 + 0.5) * downsample);
            let me = above(lx, ly);
            let right = x + 1 < w && above(lx + downsample, ly) != me;
            let down = y + 1 < h && above(lx, ly + downsample) != me;
            if right || down {
                out.put_pixel(x, y, Rgb([255, 255, 255]));
            }
        }
    }
    // Legend: a colour bar with ticks and labels at 0, the threshold and 1.
    let margin = (w / 20).max(8);
    let bar_w = w.saturating_sub(2 * margin).max(1);
    let bar_y = h + legend_h / 6;
    let bar_h = (legend_h / 3).max(6);
    for dx in 0..bar_w {
        let c = viridis(dx as f32 / (bar_w.max(2) - 1) as f32);
        for dy in 0..bar_h {
            if margin + dx < w && bar_y + dy < h + legend_h {
                out.put_pixel(margin + dx, bar_y + dy, Rgb(c));
            }
        }
    }
    let scale = ((legend_h / 18).max(1)) as i64;
    let label_y = (bar_y + bar_h + 3) as i64;
    for (v, label) in [
        (0.0, "0".to_string()),
        (threshold, format!("{threshold}")),
        (1.0, "1".to_string()),
    ] {
        let x = margin as i64 + (v as f64 * (bar_w.saturating_sub(1)) as f64).round() as i64;
        for dy in 0..(bar_h + 2) {
            let py = bar_y - 1 + dy;
            if (x as u32) < w && py < h + legend_h {
                out.put_pixel(x as u32, py, Rgb([0, 0, 0]));
            }
        }
        let tw = label.chars().count() as i64 * 4 * scale;
        text(
            &mut out,
            (x - tw / 2).max(0),
            label_y,
            &label,
            scale,
            [0, 0, 0],
        );
    }
    (out, gpu_failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viridis_ends_and_overlay_size() {
        assert_eq!(viridis(0.0), [68, 1, 84]);
        assert_eq!(viridis(1.0), [253, 231, 37]);
        let heat = Heatmap {
            width: 2,
            height: 1,
            cell_l0: 10.0,
            values: vec![Some(1.0), None],
        };
        let thumb = RgbImage::from_pixel(20, 10, Rgb([200, 200, 200]));
        let (o, failure) = overlay(&thumb, 1.0, &heat, 0.5, None);
        assert!(failure.is_none());
        assert_eq!(o.width(), 20);
        assert!(o.height() > 10);
        // Analysed cell coloured, unanalysed cell untouched.
        assert_ne!(o.get_pixel(4, 4).0, [200, 200, 200]);
        assert_eq!(o.get_pixel(15, 4).0, [200, 200, 200]);
    }
}
