//! Synthetic whole-slide images for benchmarks: Aperio-style pyramidal tiled JPEG TIFFs of any
//! size, tiled from real tissue.
//!
//! In: a [`SyntheticSpec`] (level-0 size in pixels, tile size, JPEG quality, seed) and RGB
//! source images of real tissue (e.g. `../shared/testdata/images/tcga-regions/*.png`).
//! Out: a TIFF (BigTIFF when it may pass 4 GiB) whose level 0 is a mosaic of tissue tiles cut
//! from the sources at seeded offsets with flips and rotations, laid out as a few tissue blobs
//! on a near-white background (about 40 % tissue), plus reduced levels at downsamples 4, 16, …
//! averaged from level 0. The ImageDescription starts with "Aperio", so OpenSlide and Tessera
//! read it as Aperio SVS. Writing is atomic (temporary file, then rename).
//!
//! A pool of distinct encoded tiles is reused across the grid, which keeps generation fast (a
//! 50,000² slide takes well under a minute) while every read still decodes real JPEG data.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tessera_engine::{Error, Result};

/// What to generate.
#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    /// Level-0 width in pixels.
    pub width: u64,
    /// Level-0 height in pixels.
    pub height: u64,
    /// Tile side in pixels (multiple of 16).
    pub tile: u32,
    /// JPEG quality 1–100.
    pub quality: u8,
    /// Chroma subsampling of the JPEG tiles (recorded in YCbCrSubSampling too).
    pub subsampling: Subsampling,
    /// MCUs between JPEG restart markers; 0 writes none.
    pub restart_interval: u16,
    /// Seed for tile choice and tissue layout.
    pub seed: u64,
    /// µm per pixel written into the description.
    pub mpp: f64,
    /// RGB images of real tissue to cut tiles from.
    pub sources: Vec<PathBuf>,
    /// Artefacts made on purpose (QC tests: the truth is known by construction).
    pub artefacts: Vec<MadeArtefact>,
}

/// Chroma subsampling of YCbCr JPEG tiles, as scanners and converters write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Subsampling {
    /// 2×2 (4:2:0): Aperio's usual.
    #[default]
    S420,
    /// 2×1 (4:2:2).
    S422,
    /// 1×1 (4:4:4): no subsampling.
    S444,
}

impl Subsampling {
    /// Horizontal and vertical luma samples per chroma sample (TIFF's YCbCrSubSampling).
    pub fn factors(self) -> (u16, u16) {
        match self {
            Subsampling::S420 => (2, 2),
            Subsampling::S422 => (2, 1),
            Subsampling::S444 => (1, 1),
        }
    }

    fn encoder(self) -> jpeg_encoder::SamplingFactor {
        match self {
            Subsampling::S420 => jpeg_encoder::SamplingFactor::R_4_2_0,
            Subsampling::S422 => jpeg_encoder::SamplingFactor::R_4_2_2,
            Subsampling::S444 => jpeg_encoder::SamplingFactor::R_4_4_4,
        }
    }
}

/// Level-0 tiles `cols × rows` (tile-grid units: column `c` covers level-0 x from `c·tile`).
#[derive(Debug, Clone, PartialEq)]
pub struct TileRect {
    /// Tile columns.
    pub cols: std::ops::Range<u64>,
    /// Tile rows.
    pub rows: std::ops::Range<u64>,
}

/// An artefact made on a rectangle of tiles.
#[derive(Debug, Clone, PartialEq)]
pub enum MadeArtefact {
    /// Out of focus: a Gaussian blur of `sigma` level-0 pixels, tile by tile.
    Blur {
        /// Where.
        tiles: TileRect,
        /// σ in level-0 pixels.
        sigma: f32,
    },
    /// A fold: the tissue lies double, so its transmittance is squared (Beer–Lambert). Only
    /// tissue tiles fold.
    Fold {
        /// Where.
        tiles: TileRect,
    },
    /// Marker ink over everything: each channel multiplied by its transmittance (0–1).
    Ink {
        /// Where.
        tiles: TileRect,
        /// Transmittance per channel, R, G, B.
        transmittance: [f32; 3],
    },
    /// An air bubble's outline: a dark grey ring (grey 70, as light refracted away at the
    /// rim) of `ring` level-0 pixels' width around a circle of `radius` about `centre`, over
    /// glass and tissue alike.
    Bubble {
        /// The centre, level-0 pixels.
        centre: (u64, u64),
        /// The radius, level-0 pixels.
        radius: f64,
        /// The ring's width, level-0 pixels.
        ring: f64,
    },
}

impl MadeArtefact {
    /// The tiles it touches, for tiles `side` pixels wide.
    fn tiles(&self, side: u64) -> TileRect {
        match self {
            MadeArtefact::Blur { tiles, .. }
            | MadeArtefact::Ink { tiles, .. }
            | MadeArtefact::Fold { tiles } => tiles.clone(),
            MadeArtefact::Bubble {
                centre,
                radius,
                ring,
            } => {
                let reach = radius + ring;
                let lo = |c: u64| (c as f64 - reach).max(0.0) as u64 / side;
                let hi = |c: u64| (c as f64 + reach) as u64 / side + 1;
                TileRect {
                    cols: lo(centre.0)..hi(centre.0),
                    rows: lo(centre.1)..hi(centre.1),
                }
            }
        }
    }
}

/// `rgb` (a `side`-pixel square tile) blurred with a Gaussian of `sigma` pixels, edges
/// clamped.
fn gaussian(rgb: &[u8], side: usize, sigma: f32) -> Vec<u8> {
    let r = (3.0 * sigma).ceil().max(1.0) as isize;
    let k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|v| v / sum).collect();
    let pass = |src: &[f32], horizontal: bool| -> Vec<f32> {
        let mut out = vec![0f32; src.len()];
        for y in 0..side {
            for x in 0..side {
                for c in 0..3 {
                    let mut acc = 0f32;
                    for (j, w) in k.iter().enumerate() {
                        let d = j as isize - r;
                        let (xx, yy) = if horizontal {
                            ((x as isize + d).clamp(0, side as isize - 1) as usize, y)
                        } else {
                            (x, (y as isize + d).clamp(0, side as isize - 1) as usize)
                        };
                        acc += w * src[(yy * side + xx) * 3 + c];
                    }
                    out[(y * side + x) * 3 + c] = acc;
                }
            }
        }
        out
    };
    let f: Vec<f32> = rgb.iter().map(|&v| v as f32).collect();
    pass(&pass(&f, true), false)
        .iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect()
}

/// What was written.
#[derive(Debug, Clone)]
pub struct SyntheticReport {
    /// Bytes written.
    pub bytes: u64,
    /// Level sizes, level 0 first.
    pub levels: Vec<(u64, u64)>,
    /// Fraction of level-0 tiles that hold tissue.
    pub tissue_fraction: f64,
    /// True when written as BigTIFF.
    pub bigtiff: bool,
}

/// SplitMix64: a small, seedable generator (no dependency needed for benchmarks' layouts).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn hash(seed: u64, a: u64, b: u64) -> u64 {
    let mut r =
        Rng(seed ^ a.wrapping_mul(0x1000_0000_01B3) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F));
    r.next()
}

/// One pool tile: its pixels (for building reduced levels) and its JPEG encoding.
struct PoolTile {
    rgb: Vec<u8>,
    jpeg: Vec<u8>,
}

fn encode_jpeg(rgb: &[u8], side: u32, spec: &SyntheticSpec) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, spec.quality);
    enc.set_sampling_factor(spec.subsampling.encoder());
    if spec.restart_interval > 0 {
        enc.set_restart_interval(spec.restart_interval);
    }
    enc.encode(rgb, side as u16, side as u16, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| Error::Encode {
            path: PathBuf::from("<synthetic tile>"),
            message: e.to_string(),
        })?;
    Ok(out)
}

/// Cuts `count` tissue tiles from the sources at seeded offsets, with flips and rotations.
fn tissue_pool(spec: &SyntheticSpec, count: usize, rng: &mut Rng) -> Result<Vec<Vec<u8>>> {
    let side = spec.tile as usize;
    let mut images = Vec::new();
    for p in &spec.sources {
        let img = image::open(p)
            .map_err(|e| Error::InvalidInput {
                path: p.clone(),
                reason: format!("not a readable image: {e}"),
            })?
            .to_rgb8();
        if img.width() as usize >= side && img.height() as usize >= side {
            images.push(img);
        }
    }
    if images.is_empty() {
        return Err(Error::InvalidInput {
            path: spec.sources.first().cloned().unwrap_or_default(),
            reason: format!("no source image is at least {side} × {side} pixels"),
        });
    }
    let mut pool = Vec::with_capacity(count);
    for _ in 0..count {
        let img = &images[rng.below(images.len() as u64) as usize];
        let x0 = rng.below((img.width() as usize - side + 1) as u64) as usize;
        let y0 = rng.below((img.height() as usize - side + 1) as u64) as usize;
        let (flip, rot) = (rng.below(2) == 1, rng.below(4));
        let mut tile = vec![0u8; side * side * 3];
        for y in 0..side {
            for x in 0..side {
                let (mut sx, mut sy) = (x, y);
                for _ in 0..rot {
                    (sx, sy) = (side - 1 - sy, sx);
                }
                if flip {
                    sx = side - 1 - sx;
                }
                let p = img.get_pixel((x0 + sx) as u32, (y0 + sy) as u32).0;
                tile[(y * side + x) * 3..][..3].copy_from_slice(&p);
            }
        }
        pool.push(tile);
    }
    Ok(pool)
}

/// Near-white slide background with faint noise.
fn background_pool(side: u32, count: usize, rng: &mut Rng) -> Vec<Vec<u8>> {
    (0..count)
        .map(|_| {
            let base = [
                236 + rng.below(8) as u8,
                234 + rng.below(8) as u8,
                238 + rng.below(8) as u8,
            ];
            (0..side as usize * side as usize)
                .flat_map(|_| {
                    let n = rng.below(5) as u8;
                    [base[0] - n, base[1] - n, base[2] - n]
                })
                .collect()
        })
        .collect()
}

/// Box-averages a square RGB tile by `factor` (a power of two dividing the side).
fn shrink(rgb: &[u8], side: usize, factor: usize) -> Vec<u8> {
    let out_side = side / factor;
    let mut out = vec![0u8; out_side * out_side * 3];
    let n = (factor * factor) as u32;
    for oy in 0..out_side {
        for ox in 0..out_side {
            let mut acc = [0u32; 3];
            for y in oy * factor..(oy + 1) * factor {
                for x in ox * factor..(ox + 1) * factor {
                    let i = (y * side + x) * 3;
                    for c in 0..3 {
                        acc[c] += rgb[i + c] as u32;
                    }
                }
            }
            for c in 0..3 {
                out[(oy * out_side + ox) * 3 + c] = ((acc[c] + n / 2) / n) as u8;
            }
        }
    }
    out
}

struct LevelOut {
    width: u64,
    height: u64,
    offsets: Vec<u64>,
    counts: Vec<u64>,
}

/// Writes the slide described by `spec` to `path`.
pub fn write_synthetic_slide(path: &Path, spec: &SyntheticSpec) -> Result<SyntheticReport> {
    let side = spec.tile;
    if side < 16 || side % 16 != 0 || spec.width == 0 || spec.height == 0 {
        return Err(Error::InvalidInput {
            path: path.into(),
            reason: format!("tile {side} must be a multiple of 16 and the size non-empty"),
        });
    }
    let mut rng = Rng(spec.seed);
    let tissue = tissue_pool(spec, 96, &mut rng)?;
    let background = background_pool(side, 8, &mut rng);
    let pool: Vec<PoolTile> = tissue
        .into_iter()
        .chain(background)
        .map(|rgb| {
            let jpeg = encode_jpeg(&rgb, side, spec)?;
            Ok(PoolTile { rgb, jpeg })
        })
        .collect::<Result<_>>()?;
    let n_tissue = 96u64;

    let s = side as u64;
    let (across, down) = (spec.width.div_ceil(s), spec.height.div_ceil(s));
    // Tissue blobs: ellipses in tile-grid units.
    let blobs: Vec<(f64, f64, f64, f64)> = (0..5)
        .map(|_| {
            (
                (0.15 + 0.7 * rng.unit()) * across as f64,
                (0.15 + 0.7 * rng.unit()) * down as f64,
                (0.12 + 0.18 * rng.unit()) * across as f64,
                (0.12 + 0.18 * rng.unit()) * down as f64,
            )
        })
        .collect();
    let is_tissue = |c: u64, r: u64| {
        blobs.iter().any(|&(cx, cy, rx, ry)| {
            let dx = (c as f64 + 0.5 - cx) / rx.max(0.5);
            let dy = (r as f64 + 0.5 - cy) / ry.max(0.5);
            dx * dx + dy * dy <= 1.0
        })
    };
    let choose = |c: u64, r: u64| -> usize {
        let h = hash(spec.seed, c, r);
        if is_tissue(c, r) {
            (h % n_tissue) as usize
        } else {
            (n_tissue + h % (pool.len() as u64 - n_tissue)) as usize
        }
    };

    // Tiles with made artefacts: their own pixels instead of the pool's, made once.
    let mut made_tiles: std::collections::HashMap<(u64, u64), Vec<u8>> = Default::default();
    for a in &spec.artefacts {
        let tiles = a.tiles(side as u64);
        for r in tiles.rows.start..tiles.rows.end.min(down) {
            for c in tiles.cols.start..tiles.cols.end.min(across) {
                let t = choose(c, r);
                if matches!(a, MadeArtefact::Fold { .. }) && t >= n_tissue as usize {
                    continue;
                }
                let rgb = made_tiles
                    .entry((c, r))
                    .or_insert_with(|| pool[t].rgb.clone());
                match a {
                    MadeArtefact::Blur { sigma, .. } => *rgb = gaussian(rgb, side as usize, *sigma),
                    MadeArtefact::Fold { .. } => {
                        for v in rgb.iter_mut() {
                            *v = ((*v as u32 * *v as u32 + 127) / 255) as u8;
                        }
                    }
                    MadeArtefact::Ink { transmittance, .. } => {
                        for (i, v) in rgb.iter_mut().enumerate() {
                            *v = (*v as f32 * transmittance[i % 3]).round() as u8;
                        }
                    }
                    MadeArtefact::Bubble {
                        centre,
                        radius,
                        ring,
                    } => {
                        for (i, px) in rgb.chunks_exact_mut(3).enumerate() {
                            let (s, i) = (side as u64, i as u64);
                            let x = (c * s + i % s) as f64 + 0.5 - centre.0 as f64;
                            let y = (r * s + i / s) as f64 + 0.5 - centre.1 as f64;
                            if ((x * x + y * y).sqrt() - radius).abs() <= ring / 2.0 {
                                px.fill(70);
                            }
                        }
                    }
                }
            }
        }
    }
    let made = |c: u64, r: u64| made_tiles.get(&(c, r));

    // Estimated size decides between classic TIFF and BigTIFF.
    let mean_tile = pool.iter().map(|p| p.jpeg.len() as u64).sum::<u64>() / pool.len() as u64;
    let bigtiff = across * down * mean_tile * 3 / 2 > 3 * 1024 * 1024 * 1024;

    let mut tissue_tiles = 0u64;
    let mut report = SyntheticReport {
        bytes: 0,
        levels: Vec::new(),
        tissue_fraction: 0.0,
        bigtiff,
    };
    crate::output::write_atomic(path, |w| {
        let io = |e: std::io::Error| Error::from_io(path, e);
        // Header; the first IFD's offset is patched at the end.
        if bigtiff {
            w.write_all(b"II\x2b\x00\x08\x00\x00\x00").map_err(io)?;
            w.write_all(&0u64.to_le_bytes()).map_err(io)?;
        } else {
            w.write_all(b"II\x2a\x00").map_err(io)?;
            w.write_all(&0u32.to_le_bytes()).map_err(io)?;
        }
        let mut pos = if bigtiff { 16u64 } else { 8 };
        let mut levels: Vec<LevelOut> = Vec::new();

        // Level 0.
        let mut l0 = LevelOut {
            width: spec.width,
            height: spec.height,
            offsets: Vec::with_capacity((across * down) as usize),
            counts: Vec::with_capacity((across * down) as usize),
        };
        for r in 0..down {
            for c in 0..across {
                let t = choose(c, r);
                tissue_tiles += u64::from(t < n_tissue as usize);
                let own;
                let jpeg = match made(c, r) {
                    Some(rgb) => {
                        own = encode_jpeg(rgb, side, spec)?;
                        &own
                    }
                    None => &pool[t].jpeg,
                };
                w.write_all(jpeg).map_err(io)?;
                l0.offsets.push(pos);
                l0.counts.push(jpeg.len() as u64);
                pos += jpeg.len() as u64;
            }
        }
        levels.push(l0);

        // Reduced levels at downsample 4^k, built from shrunken pool tiles.
        let mut k = 1u32;
        loop {
            let factor = 4u64.pow(k);
            let (lw, lh) = (spec.width / factor, spec.height / factor);
            if factor > s || lw.max(lh) < 2 * s || lw == 0 || lh == 0 {
                break;
            }
            let small: Vec<Vec<u8>> = pool
                .iter()
                .map(|p| shrink(&p.rgb, side as usize, factor as usize))
                .collect();
            let small_side = (s / factor) as usize;
            let (la, ld) = (lw.div_ceil(s), lh.div_ceil(s));
            let mut level = LevelOut {
                width: lw,
                height: lh,
                offsets: Vec::new(),
                counts: Vec::new(),
            };
            let mut rgb = vec![0u8; (s * s * 3) as usize];
            for r in 0..ld {
                for c in 0..la {
                    // This tile covers factor × factor level-0 tiles.
                    for sy in 0..factor {
                        for sx in 0..factor {
                            let (c0, r0) = (c * factor + sx, r * factor + sy);
                            let own;
                            let src = if c0 < across && r0 < down {
                                match made(c0, r0) {
                                    Some(rgb) => {
                                        own = shrink(rgb, side as usize, factor as usize);
                                        &own
                                    }
                                    None => &small[choose(c0, r0)],
                                }
                            } else {
                                &small[n_tissue as usize]
                            };
                            for y in 0..small_side {
                                let dst = ((sy as usize * small_side + y) * s as usize
                                    + sx as usize * small_side)
                                    * 3;
                                rgb[dst..dst + small_side * 3]
                                    .copy_from_slice(&src[y * small_side * 3..][..small_side * 3]);
                            }
                        }
                    }
                    let jpeg = encode_jpeg(&rgb, side, spec)?;
                    w.write_all(&jpeg).map_err(io)?;
                    level.offsets.push(pos);
                    level.counts.push(jpeg.len() as u64);
                    pos += jpeg.len() as u64;
                }
            }
            levels.push(level);
            k += 1;
        }

        // The IFDs, chained, after the tile data.
        let description = format!(
            "Aperio Image Library Tessera synthetic\r\n{}x{} ({side}x{side}) JPEG/YCC Q={}|AppMag = 20|MPP = {}|Seed = {}",
            spec.width, spec.height, spec.quality, spec.mpp, spec.seed
        );
        let first_ifd = pos;
        for (i, level) in levels.iter().enumerate() {
            let last = i + 1 == levels.len();
            pos = write_ifd(
                w,
                pos,
                bigtiff,
                level,
                (side, spec.subsampling.factors()),
                (i == 0).then_some(&description),
                last,
            )
            .map_err(io)?;
        }
        w.seek(SeekFrom::Start(if bigtiff { 8 } else { 4 }))
            .map_err(io)?;
        if bigtiff {
            w.write_all(&first_ifd.to_le_bytes()).map_err(io)?;
        } else {
            let off = u32::try_from(first_ifd).map_err(|_| {
                io(std::io::Error::other(
                    "classic TIFF passed 4 GiB; BigTIFF was needed",
                ))
            })?;
            w.write_all(&off.to_le_bytes()).map_err(io)?;
        }
        w.seek(SeekFrom::End(0)).map_err(io)?;
        report.bytes = pos;
        report.levels = levels.iter().map(|l| (l.width, l.height)).collect();
        Ok(())
    })?;
    report.tissue_fraction = tissue_tiles as f64 / (across * down) as f64;
    Ok(report)
}

/// Writes one IFD at `pos` (its out-of-line values follow it) and returns the new end; tiles
/// are `side`² with the given YCbCr subsampling.
fn write_ifd(
    w: &mut impl Write,
    pos: u64,
    big: bool,
    level: &LevelOut,
    (side, (sub_x, sub_y)): (u32, (u16, u16)),
    description: Option<&String>,
    last: bool,
) -> std::io::Result<u64> {
    // (tag, type, values) with the type's natural size; arrays go out of line.
    enum V {
        Short(Vec<u16>),
        Long(Vec<u32>),
        Long8(Vec<u64>),
        Rational(u32, u32),
        Ascii(Vec<u8>),
    }
    let offs = if big {
        V::Long8(level.offsets.clone())
    } else {
        V::Long(level.offsets.iter().map(|&o| o as u32).collect())
    };
    let mut entries: Vec<(u16, V)> = vec![
        (254, V::Long(vec![u32::from(description.is_none())])),
        (256, V::Long(vec![level.width as u32])),
        (257, V::Long(vec![level.height as u32])),
        (258, V::Short(vec![8, 8, 8])),
        (259, V::Short(vec![7])),
        (262, V::Short(vec![6])),
        (277, V::Short(vec![3])),
        (284, V::Short(vec![1])),
        (322, V::Long(vec![side])),
        (323, V::Long(vec![side])),
        (324, offs),
        (
            325,
            V::Long(level.counts.iter().map(|&c| c as u32).collect()),
        ),
        (530, V::Short(vec![sub_x, sub_y])),
    ];
    if let Some(d) = description {
        let mut b = d.as_bytes().to_vec();
        b.push(0);
        entries.push((270, V::Ascii(b)));
        entries.push((282, V::Rational(10_000, 1)));
        entries.push((283, V::Rational(10_000, 1)));
        entries.push((296, V::Short(vec![3])));
    }
    entries.sort_by_key(|e| e.0);
    let (count_size, entry_size, inline) = if big {
        (8u64, 20u64, 8usize)
    } else {
        (2, 12, 4)
    };
    let ifd_len = count_size + entries.len() as u64 * entry_size + inline as u64;
    let mut data_pos = pos + ifd_len;
    let mut ifd = Vec::new();
    let mut data = Vec::new();
    if big {
        ifd.extend((entries.len() as u64).to_le_bytes());
    } else {
        ifd.extend((entries.len() as u16).to_le_bytes());
    }
    for (tag, v) in &entries {
        let (typ, count, bytes): (u16, u64, Vec<u8>) = match v {
            V::Short(v) => (
                3,
                v.len() as u64,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            V::Long(v) => (
                4,
                v.len() as u64,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            V::Long8(v) => (
                16,
                v.len() as u64,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            V::Rational(n, d) => (5, 1, [n.to_le_bytes(), d.to_le_bytes()].concat()),
            V::Ascii(b) => (2, b.len() as u64, b.clone()),
        };
        ifd.extend(tag.to_le_bytes());
        ifd.extend(typ.to_le_bytes());
        if big {
            ifd.extend(count.to_le_bytes());
        } else {
            ifd.extend((count as u32).to_le_bytes());
        }
        let mut field = vec![0u8; inline];
        if bytes.len() <= inline {
            field[..bytes.len()].copy_from_slice(&bytes);
        } else {
            if big {
                field.copy_from_slice(&data_pos.to_le_bytes());
            } else {
                field.copy_from_slice(&(data_pos as u32).to_le_bytes());
            }
            data_pos += bytes.len() as u64;
            data.extend(bytes);
        }
        ifd.extend(field);
    }
    let next = if last { 0 } else { data_pos };
    if big {
        ifd.extend(next.to_le_bytes());
    } else {
        ifd.extend((next as u32).to_le_bytes());
    }
    w.write_all(&ifd)?;
    w.write_all(&data)?;
    Ok(data_pos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackendChoice, Level0Px, Size, Slide, SlideConfig};

    #[test]
    fn a_small_synthetic_slide_reads_back_through_the_native_reader() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.png");
        image::RgbImage::from_fn(300, 300, |x, y| {
            image::Rgb([(x % 200) as u8 + 30, 60, (y % 150) as u8 + 50])
        })
        .save(&src)
        .unwrap();
        let out = dir.path().join("synthetic.svs");
        let spec = SyntheticSpec {
            width: 3000,
            height: 2000,
            tile: 128,
            quality: 85,
            subsampling: Subsampling::default(),
            restart_interval: 0,
            seed: 7,
            mpp: 0.5,
            sources: vec![src],
            artefacts: Vec::new(),
        };
        let report = write_synthetic_slide(&out, &spec).unwrap();
        assert_eq!(report.levels[0], (3000, 2000));
        assert_eq!(report.levels[1], (750, 500));
        assert!(
            report.tissue_fraction > 0.05 && report.tissue_fraction < 0.95,
            "{report:?}"
        );
        let config = SlideConfig {
            backend: BackendChoice::Native,
            ..SlideConfig::default()
        };
        let slide = Slide::open_with(&out, &config).unwrap();
        assert_eq!(slide.format(), "Aperio SVS");
        assert_eq!(slide.level_count(), report.levels.len());
        assert_eq!(slide.mpp().unwrap().x, 0.5);
        let r = slide
            .read_region(Level0Px::new(2950, 1950), 0, Size::new(100, 100))
            .unwrap();
        // Inside: slide pixels; outside the 3000 × 2000 image: white.
        assert_ne!(r.get_pixel(10, 10).0, [255, 255, 255]);
        assert_eq!(r.get_pixel(90, 90).0, [255, 255, 255]);
        assert!(
            std::fs::read_dir(dir.path()).unwrap().count() == 2,
            "no temporaries"
        );
    }
}
