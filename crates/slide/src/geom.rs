//! Coordinate newtypes.
//!
//! In: raw integers from callers and file headers. Out: typed positions that cannot be mixed up.
//!
//! * [`Level0Px`] — a position in level-0 (full resolution) pixels. Every region location
//!   passed to [`crate::Slide::read_region`] is in this space, as in OpenSlide.
//! * [`LevelPx`] — a position in the pixels of one pyramid level.
//! * [`Size`] — a width and height in pixels of the level it belongs to.
//! * [`TileIndex`] — the column and row of a tile in one level's tile grid.
//! * [`GridIndex`] — the column and row of a patch in the analysis grid.
//!
//! Conversions between spaces go only through the named functions below.

use serde::Serialize;

/// A position in level-0 pixels (x to the right, y down, origin at the slide's top-left).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Level0Px {
    /// Column in level-0 pixels.
    pub x: i64,
    /// Row in level-0 pixels.
    pub y: i64,
}

/// A position in the pixels of one pyramid level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct LevelPx {
    /// Column in level pixels.
    pub x: i64,
    /// Row in level pixels.
    pub y: i64,
}

/// A width and height, in pixels of the level the value belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Size {
    /// Width in pixels.
    pub width: u64,
    /// Height in pixels.
    pub height: u64,
}

/// Column and row of a tile in one level's tile grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct TileIndex {
    /// Tile column (0 at the left).
    pub col: u64,
    /// Tile row (0 at the top).
    pub row: u64,
}

/// Column and row of a patch in a [`crate::grid::PatchGrid`] (not a file tile: patches follow the
/// model's physical resolution, tiles the file's storage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct GridIndex {
    /// Patch column (0 at the left).
    pub col: u32,
    /// Patch row (0 at the top).
    pub row: u32,
}

impl Level0Px {
    /// A level-0 position.
    pub const fn new(x: i64, y: i64) -> Self {
        Self { x, y }
    }

    /// The same point in the pixels of a level with the given downsample, rounded down
    /// (OpenSlide's convention: `level = level0 / downsample`).
    pub fn to_level(self, downsample: f64) -> LevelPx {
        LevelPx {
            x: (self.x as f64 / downsample).floor() as i64,
            y: (self.y as f64 / downsample).floor() as i64,
        }
    }
}

impl LevelPx {
    /// A position in level pixels.
    pub const fn new(x: i64, y: i64) -> Self {
        Self { x, y }
    }

    /// The level-0 position of this level pixel's top-left corner, rounded down.
    pub fn to_level0(self, downsample: f64) -> Level0Px {
        Level0Px {
            x: (self.x as f64 * downsample).floor() as i64,
            y: (self.y as f64 * downsample).floor() as i64,
        }
    }

    /// The tile containing this pixel in a grid of `tile` sized tiles, or `None` for negative
    /// positions (outside every grid) or an empty tile size.
    pub fn tile(self, tile: Size) -> Option<TileIndex> {
        if self.x < 0 || self.y < 0 || tile.width == 0 || tile.height == 0 {
            return None;
        }
        Some(TileIndex {
            col: self.x as u64 / tile.width,
            row: self.y as u64 / tile.height,
        })
    }
}

impl Size {
    /// A size in pixels.
    pub const fn new(width: u64, height: u64) -> Self {
        Self { width, height }
    }

    /// Number of pixels, or `None` when it does not fit in a `u64`.
    pub fn pixels(self) -> Option<u64> {
        self.width.checked_mul(self.height)
    }

    /// True when either side is zero.
    pub fn is_empty(self) -> bool {
        self.width == 0 || self.height == 0
    }
}

impl TileIndex {
    /// The level-pixel position of this tile's top-left corner in a grid of `tile` sized tiles.
    pub fn origin(self, tile: Size) -> LevelPx {
        LevelPx {
            x: (self.col * tile.width) as i64,
            y: (self.row * tile.height) as i64,
        }
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} × {}", self.width, self.height)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_conversions_round_down() {
        let p = Level0Px::new(1001, 7);
        assert_eq!(p.to_level(4.0), LevelPx::new(250, 1));
        assert_eq!(Level0Px::new(-1, -8).to_level(4.0), LevelPx::new(-1, -2));
        assert_eq!(LevelPx::new(3, 5).to_level0(2.0005), Level0Px::new(6, 10));
    }

    #[test]
    fn tiles_and_origins_round_trip() {
        let t = Size::new(240, 240);
        let idx = LevelPx::new(479, 480).tile(t).unwrap();
        assert_eq!(idx, TileIndex { col: 1, row: 2 });
        assert_eq!(idx.origin(t), LevelPx::new(240, 480));
        assert_eq!(LevelPx::new(-1, 0).tile(t), None);
        assert_eq!(LevelPx::new(0, 0).tile(Size::new(0, 1)), None);
    }

    #[test]
    fn size_pixels_detects_overflow() {
        assert_eq!(Size::new(3, 4).pixels(), Some(12));
        assert_eq!(Size::new(u64::MAX, 2).pixels(), None);
        assert!(Size::new(0, 4).is_empty());
    }
}
