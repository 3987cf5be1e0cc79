//! What both fuzz targets do with a reader that opened: every level read at a tile-aligned
//! place, an unaligned one, across the far edge, at negative coordinates and at a fractional
//! level position, and every associated image decoded.

use std::path::Path;

use tessera_slide::slide::native::NativeReader;
use tessera_slide::{Level0Px, Limits, Size, Slide};

/// Small limits, so that an input cannot ask for much.
pub fn limits() -> Limits {
    Limits {
        max_region_pixels: 1 << 20,
        max_level0_width: 1 << 20,
        max_level0_height: 1 << 20,
        max_associated_pixels: 1 << 22,
        max_icc_bytes: 1 << 20,
    }
}

/// Reads everything `reader` offers through a [`Slide`].
pub fn exercise(name: &Path, reader: NativeReader, limits: &Limits) {
    let Ok(slide) = Slide::from_reader(name, Box::new(reader), limits) else {
        return;
    };
    let _ = slide.icc_profile();
    for (i, level) in slide.levels().iter().enumerate() {
        let ds = level.downsample;
        let s = level.size;
        // A tile-aligned read, an unaligned one, one across the far edge, one at negative
        // coordinates, and one at a fractional level position.
        for (x, y, w, h) in [
            (0, 0, s.width.min(256), s.height.min(256)),
            (3, 5, s.width.min(300), s.height.min(200)),
            (
                (s.width.saturating_sub(7)) as i64,
                (s.height.saturating_sub(9)) as i64,
                64,
                64,
            ),
            (-11, -13, 40, 40),
        ] {
            let at = Level0Px::new((x as f64 * ds) as i64 + i as i64, (y as f64 * ds) as i64);
            let _ = slide.read_region(at, i, Size::new(w.max(1), h.max(1)));
        }
    }
    for a in slide.associated_images().to_vec() {
        let _ = slide.read_associated_image(&a.name);
    }
}
