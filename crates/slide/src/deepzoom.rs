//! Deep Zoom geometry and tiles, as openslide-python's `DeepZoomGenerator` computes them
//! (`limit_bounds` off): the level sizes, the tile grid and, for each tile, which region of
//! which slide level to read.
//!
//! In: a slide's level-0 size and levels, a Deep Zoom level and tile (column, row). Out: the
//! tile's region (level-0 origin, slide level, size in that level's pixels) and its output size
//! in Deep Zoom pixels; [`render_tile`] reads and resizes it into an RGB image.
//! Coordinates: Deep Zoom level `L` has `2^(levels-1-L)` level-0 pixels per pixel.

use image::RgbImage;

use crate::error::{Error, Result};
use crate::geom::{Level0Px, Size};
use crate::slide::Slide;

/// The Deep Zoom pyramid of one slide.
#[derive(Debug, Clone)]
pub struct DeepZoom {
    /// Size of each Deep Zoom level, smallest (1 × 1) first.
    pub levels: Vec<Size>,
    /// Tile side in pixels, without overlap.
    pub tile: u64,
    /// Pixels of overlap on each inner tile edge.
    pub overlap: u64,
}

/// Where a tile comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileSource {
    /// Top-left corner in level-0 pixels.
    pub origin: Level0Px,
    /// The slide level read.
    pub level: usize,
    /// Size read, in that level's pixels.
    pub read: Size,
    /// Size of the tile, in Deep Zoom pixels.
    pub out: Size,
    /// Level-0 pixels per tile pixel.
    pub downsample: f64,
}

impl DeepZoom {
    /// The pyramid for a slide of `dims` level-0 pixels.
    pub fn new(dims: Size, tile: u64, overlap: u64) -> DeepZoom {
        let mut levels = vec![dims];
        let (mut w, mut h) = (dims.width.max(1), dims.height.max(1));
        while w > 1 || h > 1 {
            w = w.div_ceil(2).max(1);
            h = h.div_ceil(2).max(1);
            levels.push(Size::new(w, h));
        }
        levels.reverse();
        DeepZoom {
            levels,
            tile,
            overlap,
        }
    }

    /// Columns and rows of tiles at Deep Zoom level `level`.
    pub fn tiles(&self, level: usize) -> Option<(u64, u64)> {
        let s = self.levels.get(level)?;
        Some((s.width.div_ceil(self.tile), s.height.div_ceil(self.tile)))
    }

    /// The `.dzi` descriptor.
    pub fn dzi(&self, format: &str) -> String {
        let full = self.levels.last().copied().unwrap_or(Size::new(1, 1));
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Image xmlns=\"http://schemas.microsoft.com/deepzoom/2008\" \
             Format=\"{format}\" Overlap=\"{}\" TileSize=\"{}\"><Size Height=\"{}\" Width=\"{}\"/></Image>\n",
            self.overlap, self.tile, full.height, full.width
        )
    }

    /// Where tile (`col`, `row`) of Deep Zoom level `level` comes from; `None` if there is no
    /// such tile. `slide_levels` are the slide's levels (size and downsample).
    pub fn source(
        &self,
        slide_levels: &[crate::slide::Level],
        best_level: impl Fn(f64) -> usize,
        level: usize,
        col: u64,
        row: u64,
    ) -> Option<TileSource> {
        let (cols, rows) = self.tiles(level)?;
        if col >= cols || row >= rows {
            return None;
        }
        let z = self.levels[level];
        let z_ds = 2f64.powi((self.levels.len() - 1 - level) as i32);
        let slide_level = best_level(z_ds);
        let lvl = slide_levels.get(slide_level)?;
        let l_z_ds = z_ds / lvl.downsample;
        let axis = |i: u64, n: u64, z_len: u64, l_len: u64| {
            let tl = if i > 0 { self.overlap } else { 0 };
            let br = if i + 1 < n { self.overlap } else { 0 };
            let z_loc = i * self.tile;
            let z_size = self.tile.min(z_len - z_loc) + tl + br;
            let l_loc = l_z_ds * (z_loc - tl) as f64;
            let l0_loc = (lvl.downsample * l_loc).round() as i64;
            let l_size = ((l_z_ds * z_size as f64).ceil() as u64)
                .min(l_len.saturating_sub(l_loc.ceil() as u64))
                .max(1);
            (l0_loc, l_size, z_size)
        };
        let (x0, lw, zw) = axis(col, cols, z.width, lvl.size.width);
        let (y0, lh, zh) = axis(row, rows, z.height, lvl.size.height);
        Some(TileSource {
            origin: Level0Px { x: x0, y: y0 },
            level: slide_level,
            read: Size::new(lw, lh),
            out: Size::new(zw, zh),
            downsample: z_ds,
        })
    }
}

/// Reads a tile's region and resizes it to the tile's size (triangle filter).
pub fn render_tile(slide: &Slide, src: &TileSource) -> Result<RgbImage> {
    let img = slide.read_region(src.origin, src.level, src.read)?;
    if src.read == src.out {
        return Ok(img);
    }
    let (w, h) = (src.out.width as u32, src.out.height as u32);
    if w == 0 || h == 0 {
        return Err(Error::InvalidRegion {
            path: slide.path().into(),
            reason: "empty Deep Zoom tile".into(),
        });
    }
    Ok(image::imageops::resize(
        &img,
        w,
        h,
        image::imageops::FilterType::Triangle,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_tiles_follow_openslide_python() {
        // openslide-python's DeepZoomGenerator on CMU-1-Small-Region (2220 × 2967), tile 254,
        // overlap 1: 13 levels, the last 9 × 12 tiles.
        let dz = DeepZoom::new(Size::new(2220, 2967), 254, 1);
        assert_eq!(dz.levels.len(), 13);
        assert_eq!(dz.levels[0], Size::new(1, 1));
        assert_eq!(dz.levels[12], Size::new(2220, 2967));
        assert_eq!(dz.levels[11], Size::new(1110, 1484));
        assert_eq!(dz.tiles(12), Some((9, 12)));
        assert_eq!(dz.tiles(13), None);
        let levels = [crate::slide::Level {
            size: Size::new(2220, 2967),
            downsample: 1.0,
            tile_size: None,
        }];
        let s = dz.source(&levels, |_| 0, 12, 0, 0).unwrap();
        assert_eq!(s.origin, Level0Px { x: 0, y: 0 });
        assert_eq!((s.out, s.read), (Size::new(255, 255), Size::new(255, 255)));
        let s = dz.source(&levels, |_| 0, 12, 1, 1).unwrap();
        assert_eq!(s.origin, Level0Px { x: 253, y: 253 });
        assert_eq!(s.out, Size::new(256, 256));
        // The last column: 2220 - 8 × 254 = 188 pixels plus the left overlap.
        let s = dz.source(&levels, |_| 0, 12, 8, 11).unwrap();
        assert_eq!(s.out, Size::new(189, 2967 - 11 * 254 + 1));
        assert_eq!(s.origin.x, 8 * 254 - 1);
        assert!(dz.source(&levels, |_| 0, 12, 9, 0).is_none());
        // Level 11 reads twice the area of level 0 into the same tile size.
        let s = dz.source(&levels, |_| 0, 11, 1, 0).unwrap();
        assert_eq!(s.origin.x, 2 * 253);
        assert_eq!(s.read.width, 512);
        assert_eq!(s.out.width, 256);
        assert!(dz.dzi("jpeg").contains("Height=\"2967\" Width=\"2220\""));
    }
}
