//! Tessera's native reader for Aperio SVS, generic tiled (Big)TIFF and DICOM WSI, in pure Rust.
//!
//! In: a TIFF-family file, or a DICOM series ([`dicom`] finds its levels and frames; the
//! region assembly below is shared). Out: a [`NativeReader`] implementing [`SlideReader`] with
//! OpenSlide's semantics: the same levels (Aperio: every tiled IFD in file order; generic TIFF:
//! IFD 0 and the tiled reduced-resolution IFDs and SubIFDs, widest first), downsamples
//! `(h0/h + w0/w) / 2`, associated images, the `aperio.*` / `tiff.*` / `openslide.*` properties,
//! and `read_region` pixels.
//!
//! Regions: the level-0 location is divided by the level's downsample and kept fractional, as
//! OpenSlide does. A whole-pixel start copies decoded tiles; a fractional start is resampled
//! bilinearly with pixman's 7-bit weights (what OpenSlide's cairo drawing does), pixels outside
//! the image being transparent. Tiles come from a byte-bounded LRU cache shared by all threads,
//! and the tiles a region still needs are decoded in parallel on the caller's rayon pool; a
//! region that is exactly one whole tile is decoded straight into the caller's buffer. In a
//! scattered read (no tile near the region read recently), the JPEG tiles a whole-pixel region
//! covers only in part are decoded only in part and not cached (`baseline.rs`); the pixels of an
//! intact tile are the same either way.

pub mod baseline;
pub mod cache;
pub mod decode;
pub mod dicom;
pub mod dicomweb;
mod markers;
pub mod tiff;

use std::collections::VecDeque;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::{AssociatedImage, BackendInfo, DicomSource, Level, RemoteSource, SlideReader};
use crate::config::Limits;
use crate::error::{Error, Result};
use crate::geom::{Level0Px, LevelPx, Size, TileIndex};
use cache::TileCache;
use decode::{Codec, Encoding};
use tiff::{tag, Ifd, SourceFile, Tiff};

/// Largest tile or strip, in pixels, the reader will decode (a 4096 × 4096 tile is 48 MiB).
const MAX_TILE_PIXELS: u64 = 4096 * 4096;
/// Largest compressed tile, in bytes.
const MAX_TILE_BYTES: u64 = 64 * 1024 * 1024;
/// Largest ImageDescription or JPEGTables read.
const MAX_TEXT: u64 = 1024 * 1024;

const BACKEND: &str = "Tessera native TIFF reader";

/// One pyramid level: where each tile's compressed bytes lie, and how they are encoded.
pub(crate) struct NativeLevel {
    pub(crate) size: Size,
    pub(crate) tile: Size,
    pub(crate) tiles_across: u64,
    /// Byte offset of each tile (row-major) in its file.
    pub(crate) offsets: Vec<u64>,
    /// Byte count of each tile; 0 for a missing tile (painted white, as OpenSlide does).
    pub(crate) counts: Vec<u64>,
    /// The file of each tile, as an index into the reader's files; `None`: all in file 0.
    pub(crate) tile_files: Option<Vec<u16>>,
    pub(crate) enc: Encoding,
}

/// A non-pyramid image stored in strips (a single-frame image is one strip).
pub(crate) struct NativeAssociated {
    pub(crate) info: AssociatedImage,
    /// The file the strips lie in, as an index into the reader's files.
    pub(crate) file: u16,
    pub(crate) rows_per_strip: u64,
    pub(crate) offsets: Vec<u64>,
    pub(crate) counts: Vec<u64>,
    pub(crate) enc: Encoding,
}

/// What a format's opener found, for [`NativeReader::assemble`].
pub(crate) struct Parts {
    pub(crate) path: PathBuf,
    pub(crate) format: String,
    pub(crate) vendor: String,
    /// The reader's name in errors.
    pub(crate) backend: &'static str,
    /// Where tiles are read from (one file for TIFF; one per instance for DICOM).
    pub(crate) files: Vec<Store>,
    /// Levels, widest first.
    pub(crate) levels: Vec<NativeLevel>,
    pub(crate) associated: Vec<NativeAssociated>,
    /// The format's own properties (`aperio.*`, `tiff.*`, `dicom.*`…); the `openslide.*`
    /// level, associated-image and ICC properties are added by `assemble`.
    pub(crate) properties: BTreeMap<String, String>,
    pub(crate) icc: Option<Vec<u8>>,
    /// Set for a series read over DICOMweb.
    pub(crate) remote: Option<RemoteSource>,
    /// Set for a DICOM series.
    pub(crate) dicom: Option<Box<DicomSource>>,
}

/// Where a reader's tile bytes come from.
pub(crate) enum Store {
    /// A file (or bytes in memory): a tile is the byte range `(offset, count)`.
    File(SourceFile),
    /// An instance on a DICOMweb server: a tile is frame `offset` (0-based); `count` is 1.
    Frames(std::sync::Arc<dicomweb::RemoteInstance>),
}

impl Store {
    /// A tile's bytes: `count` bytes at `offset` of a file, or a remote instance's frame
    /// `offset`.
    pub(crate) fn read(&self, offset: u64, count: u64) -> std::result::Result<Vec<u8>, String> {
        match self {
            Store::File(f) => f.read_at(offset, count),
            Store::Frames(r) => r.frame(offset),
        }
    }
}

/// A slide opened by the native reader.
pub struct NativeReader {
    files: Vec<Store>,
    path: PathBuf,
    backend: &'static str,
    format: String,
    vendor: String,
    levels: Vec<NativeLevel>,
    level_info: Vec<Level>,
    associated: Vec<NativeAssociated>,
    associated_info: Vec<AssociatedImage>,
    properties: BTreeMap<String, String>,
    icc: Option<Vec<u8>>,
    remote: Option<RemoteSource>,
    dicom: Option<Box<DicomSource>>,
    cache: TileCache,
    /// The tiles of the last reads, newest last: tells scattered reads from sweeps.
    recent: Mutex<VecDeque<(usize, TileIndex)>>,
}

/// How many recently read tiles [`NativeReader::scattered`] remembers.
const RECENT_TILES: usize = 64;

/// C's `%.17g`, as OpenSlide formats doubles (`g_ascii_dtostr`): 17 significant digits,
/// trailing zeros dropped, exponent form below 1e-4 and from 1e17.
fn g(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v == 0.0 {
        return "0".into();
    }
    let sci = format!("{v:.16e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if !(-4..17).contains(&exp) {
        let m = trim(mantissa.to_string());
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{m}e{sign}{:02}", exp.abs())
    } else {
        let decimals = (16 - exp).max(0) as usize;
        trim(format!("{v:.decimals$}"))
    }
}

impl NativeReader {
    /// Opens `path`. Files that are TIFF but not a layout this reader handles (untiled,
    /// another vendor's, an unsupported compression) give [`Error::Unsupported`] or
    /// [`Error::NotASlide`], so the caller can hand them to OpenSlide.
    pub fn open(path: &Path, limits: &Limits, cache_bytes: u64) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::from_io(path, e))?;
        Self::from_source(path, file, limits, cache_bytes)
    }

    /// Opens the DICOM WSI series `path` belongs to (a file of it, or its folder): see
    /// [`dicom`].
    pub fn open_dicom(path: &Path, limits: &Limits, cache_bytes: u64) -> Result<Self> {
        Self::assemble(dicom::open(path, limits)?, cache_bytes)
    }

    /// Opens the DICOM WSI series a `dicomweb+http(s)://…/studies/UID[/series/UID]` URL names,
    /// reading frames from the server as regions need them ([`dicomweb`]).
    pub fn open_dicomweb(url: &Path, config: &crate::SlideConfig) -> Result<Self> {
        Self::assemble(
            dicom::open_remote(url, &config.dicomweb, &config.limits)?,
            config.cache_bytes,
        )
    }

    /// Opens one DICOM WSI instance held in memory; `name` is used in errors. Used by the fuzz
    /// target.
    pub fn dicom_from_bytes(
        name: &Path,
        bytes: Vec<u8>,
        limits: &Limits,
        cache_bytes: u64,
    ) -> Result<Self> {
        Self::assemble(dicom::open_bytes(name, bytes, limits)?, cache_bytes)
    }

    /// Opens a TIFF held in memory; `name` is used in errors. Used by the fuzz target.
    pub fn from_bytes(
        name: &Path,
        bytes: Vec<u8>,
        limits: &Limits,
        cache_bytes: u64,
    ) -> Result<Self> {
        Self::from_source(name, bytes, limits, cache_bytes)
    }

    fn from_source(
        path: &Path,
        file: impl tiff::Source + 'static,
        limits: &Limits,
        cache_bytes: u64,
    ) -> Result<Self> {
        let corrupt = |message: String| Error::Corrupt {
            path: path.into(),
            format: "TIFF".into(),
            backend: BACKEND.into(),
            message,
        };
        let tiff = Tiff::parse(file).map_err(corrupt)?;
        let ifd0 = tiff.ifds[0].clone();
        let description = tiff
            .ascii(&ifd0, tag::IMAGE_DESCRIPTION, MAX_TEXT)
            .map_err(corrupt)?
            .unwrap_or_default();
        let tiled = |ifd: &Ifd| tiff.has(ifd, tag::TILE_WIDTH) && tiff.has(ifd, tag::TILE_LENGTH);
        if !tiled(&ifd0) {
            return Err(Error::NotASlide {
                path: path.into(),
                detected: "stripped (untiled) TIFF".into(),
            });
        }
        let aperio = description.starts_with("Aperio");
        let (vendor, format) = if aperio {
            ("aperio", "Aperio SVS")
        } else {
            ("generic-tiff", "generic tiled TIFF")
        };

        // Which IFDs are levels.
        let mut level_ifds: Vec<&Ifd> = Vec::new();
        for ifd in &tiff.ifds {
            if !tiled(ifd) {
                continue;
            }
            let subfile = tiff
                .uint_tag(ifd, tag::NEW_SUBFILE_TYPE)
                .map_err(corrupt)?
                .unwrap_or(0);
            let is_level = if aperio {
                !ifd.is_sub_ifd
            } else {
                ifd.index == 0 || ifd.is_sub_ifd || subfile & 1 == 1
            };
            if is_level {
                level_ifds.push(ifd);
            }
        }
        let mut levels = Vec::with_capacity(level_ifds.len());
        for ifd in &level_ifds {
            levels.push(read_level(&tiff, ifd).map_err(|e| e.into_error(path, format))?);
        }
        if !aperio {
            levels.sort_by_key(|l| std::cmp::Reverse(l.size.width));
        }
        check_level0(path, &levels, limits)?;

        // Associated images (Aperio): untiled IFDs.
        let mut associated = Vec::new();
        if aperio {
            for ifd in tiff.ifds.iter().filter(|i| !i.is_sub_ifd && !tiled(i)) {
                let subfile = tiff
                    .uint_tag(ifd, tag::NEW_SUBFILE_TYPE)
                    .map_err(corrupt)?
                    .unwrap_or(0);
                let name = match (ifd.index, subfile) {
                    (1, _) => "thumbnail",
                    (_, 1) => "label",
                    (_, 9) => "macro",
                    _ => continue,
                };
                match read_associated(&tiff, ifd, name) {
                    Ok(a) => associated.push(a),
                    Err(NativeOpenError::Unsupported(_)) => continue,
                    Err(e) => return Err(e.into_error(path, format)),
                }
            }
        }
        // OpenSlide lists associated images by name.
        associated.sort_by(|a, b| a.info.name.cmp(&b.info.name));

        let icc = match tiff.bytes(&ifd0, tag::ICC_PROFILE, limits.max_icc_bytes) {
            Ok(v) => v,
            Err(e) => return Err(corrupt(e)),
        };
        let properties = properties(&tiff, &ifd0, vendor, &description).map_err(corrupt)?;
        Self::assemble(
            Parts {
                path: path.into(),
                format: format.into(),
                vendor: vendor.into(),
                backend: BACKEND,
                files: vec![Store::File(tiff.into_file())],
                levels,
                associated,
                properties,
                icc,
                remote: None,
                dicom: None,
            },
            cache_bytes,
        )
    }

    /// The reader over a format's levels and associated images: OpenSlide's downsamples
    /// `(h0/h + w0/w) / 2` and the `openslide.*` properties that follow from them.
    pub(crate) fn assemble(parts: Parts, cache_bytes: u64) -> Result<Self> {
        let Parts {
            path,
            format,
            vendor,
            backend,
            files,
            levels,
            associated,
            mut properties,
            icc,
            remote,
            dicom,
        } = parts;
        let corrupt = |message: String| Error::Corrupt {
            path: path.clone(),
            format: format.clone(),
            backend: backend.into(),
            message,
        };
        let Some(first) = levels.first() else {
            return Err(corrupt("no pyramid levels".into()));
        };
        let (w0, h0) = (first.size.width as f64, first.size.height as f64);
        let mut level_info = Vec::with_capacity(levels.len());
        for (i, l) in levels.iter().enumerate() {
            let ds = (h0 / l.size.height as f64 + w0 / l.size.width as f64) / 2.0;
            if i > 0
                && ds
                    < level_info
                        .last()
                        .map(|p: &Level| p.downsample)
                        .unwrap_or(1.0)
            {
                return Err(corrupt(format!("level {i} is larger than level {}", i - 1)));
            }
            level_info.push(Level {
                size: l.size,
                downsample: if i == 0 { 1.0 } else { ds },
                tile_size: Some(l.tile),
            });
        }
        let associated_info = associated.iter().map(|a| a.info.clone()).collect();
        openslide_properties(
            &mut properties,
            &vendor,
            &level_info,
            &associated,
            icc.as_deref(),
        );
        Ok(Self {
            files,
            path,
            backend,
            format,
            vendor,
            levels,
            level_info,
            associated,
            associated_info,
            properties,
            icc,
            remote,
            dicom,
            cache: TileCache::new(cache_bytes),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_TILES + 16)),
        })
    }

    /// The decoded tile, from the cache or the file; `None` for a missing tile (no bytes).
    /// Threads asking for the same uncached tile at once share one decode.
    fn tile(&self, level: usize, t: TileIndex) -> Result<Option<Arc<Vec<u8>>>> {
        self.cache.get_or_decode((level, t), || {
            let l = &self.levels[level];
            let mut buf = vec![0u8; (l.tile.width * l.tile.height * 3) as usize];
            Ok(self.decode_tile_into(level, t, &mut buf)?.then_some(buf))
        })
    }

    /// Decodes a tile into `out`; false for a missing tile.
    fn decode_tile_into(&self, level: usize, t: TileIndex, out: &mut [u8]) -> Result<bool> {
        let l = &self.levels[level];
        let Some(data) = self.tile_bytes(level, t)? else {
            return Ok(false);
        };
        decode::decode(
            &l.enc,
            &data,
            l.tile.width as usize,
            l.tile.height as usize,
            out,
        )
        .map_err(|m| self.tile_error(level, t, m))?;
        Ok(true)
    }

    fn tile_error(&self, level: usize, t: TileIndex, message: String) -> Error {
        Error::TileDecode {
            path: self.path.clone(),
            level,
            tile: t,
            message,
        }
    }

    /// A tile's compressed bytes; `None` for a missing tile.
    fn tile_bytes(&self, level: usize, t: TileIndex) -> Result<Option<Vec<u8>>> {
        let l = &self.levels[level];
        let i = (t.row * l.tiles_across + t.col) as usize;
        let (offset, count) = (l.offsets[i], l.counts[i]);
        if count == 0 {
            return Ok(None);
        }
        if count > MAX_TILE_BYTES {
            return Err(self.tile_error(level, t, format!("{count} compressed bytes")));
        }
        let file = l.tile_files.as_ref().map_or(0, |f| f[i] as usize);
        let data = self.files[file].read(offset, count);
        data.map(Some).map_err(|m| self.tile_error(level, t, m))
    }

    /// The tiles of `wanted` (one region's) to decode only in part: those `may_crop` accepts,
    /// with no neighbour (nor themselves) among the tiles of recent reads, and not cached.
    /// Reads that sweep the slide (analysis, the viewer's panning) come back for the rest of a
    /// tile and its neighbours, so those tiles are decoded whole and cached; scattered reads
    /// would decode whole tiles and never reuse them. Every wanted tile joins the recent ones.
    fn scattered(
        &self,
        level: usize,
        wanted: &[TileIndex],
        may_crop: impl Fn(&TileIndex) -> bool,
    ) -> Vec<TileIndex> {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let near = |t: &TileIndex| {
            recent
                .iter()
                .any(|&(l, r)| l == level && r.col.abs_diff(t.col) + r.row.abs_diff(t.row) <= 1)
        };
        let crop: Vec<TileIndex> = wanted
            .iter()
            .filter(|t| may_crop(t) && !near(t) && self.cache.get(&(level, **t)).is_none())
            .copied()
            .collect();
        for &t in wanted {
            if recent.len() == RECENT_TILES {
                recent.pop_front();
            }
            recent.push_back((level, t));
        }
        crop
    }

    /// Decodes the part `[x0, x1) × [y0, y1)` (level pixels) of tile `t` into `out`, rows
    /// `stride` bytes apart. False when the tile is missing or not one the partial decoder
    /// takes (nothing written).
    fn tile_part(
        &self,
        level: usize,
        t: TileIndex,
        (x0, x1, y0, y1): (u64, u64, u64, u64),
        out: &mut [u8],
        stride: usize,
    ) -> Result<bool> {
        let l = &self.levels[level];
        let Some(data) = self.tile_bytes(level, t)? else {
            return Ok(false);
        };
        let rect = baseline::Rect {
            x: (x0 - t.col * l.tile.width) as usize,
            y: (y0 - t.row * l.tile.height) as usize,
            w: (x1 - x0) as usize,
            h: (y1 - y0) as usize,
        };
        let size = (l.tile.width as usize, l.tile.height as usize);
        decode::decode_part(&l.enc, &data, size, rect, out, stride)
            .map_err(|m| self.tile_error(level, t, m))
    }

    /// Fetches every tile in `tiles` (cache first, the rest decoded in parallel).
    fn tiles(
        &self,
        level: usize,
        tiles: Vec<TileIndex>,
    ) -> Result<HashMap<TileIndex, Option<Arc<Vec<u8>>>>> {
        tiles
            .into_par_iter()
            .map(|t| self.tile(level, t).map(|tile| (t, tile)))
            .collect()
    }
}

/// Errors while reading one IFD's layout, mapped to typed errors by the caller.
enum NativeOpenError {
    Unsupported(String),
    Corrupt(String),
}

impl NativeOpenError {
    fn into_error(self, path: &Path, format: &str) -> Error {
        match self {
            NativeOpenError::Unsupported(reason) => Error::Unsupported {
                path: path.into(),
                format: format.into(),
                reason,
            },
            NativeOpenError::Corrupt(message) => Error::Corrupt {
                path: path.into(),
                format: format.into(),
                backend: BACKEND.into(),
                message,
            },
        }
    }
}

impl From<String> for NativeOpenError {
    fn from(s: String) -> Self {
        NativeOpenError::Corrupt(s)
    }
}

fn encoding(tiff: &Tiff, ifd: &Ifd) -> std::result::Result<Encoding, NativeOpenError> {
    let get = |t, default| -> std::result::Result<u64, NativeOpenError> {
        Ok(tiff.uint_tag(ifd, t)?.unwrap_or(default))
    };
    let compression = get(tag::COMPRESSION, 1)?;
    let codec = Codec::from_tiff(compression)
        .ok_or_else(|| NativeOpenError::Unsupported(format!("TIFF compression {compression}")))?;
    let spp = get(tag::SAMPLES_PER_PIXEL, 1)?;
    let bps = tiff
        .uints(ifd, tag::BITS_PER_SAMPLE)?
        .unwrap_or_else(|| vec![1]);
    let planar = get(tag::PLANAR_CONFIGURATION, 1)?;
    let photometric = get(tag::PHOTOMETRIC, 2)?;
    if spp != 3 || bps.iter().any(|&b| b != 8) || planar != 1 {
        return Err(NativeOpenError::Unsupported(format!(
            "{spp} samples of {bps:?} bits, planar configuration {planar} (only 3 × 8-bit \
             contiguous RGB is read natively)"
        )));
    }
    let jpeg_like = matches!(codec, Codec::Jpeg | Codec::Jp2kRgb | Codec::Jp2kYcbcr);
    if !(photometric == 2 || photometric == 6 && jpeg_like) {
        return Err(NativeOpenError::Unsupported(format!(
            "photometric interpretation {photometric} with compression {compression}"
        )));
    }
    let jpeg_tables = if codec == Codec::Jpeg {
        tiff.bytes(ifd, tag::JPEG_TABLES, MAX_TEXT)?
    } else {
        None
    };
    Ok(Encoding {
        codec,
        photometric,
        predictor: get(tag::PREDICTOR, 1)?,
        jpeg_tables,
    })
}

fn dims(tiff: &Tiff, ifd: &Ifd) -> std::result::Result<Size, NativeOpenError> {
    let w = tiff.uint_tag(ifd, tag::IMAGE_WIDTH)?.unwrap_or(0);
    let h = tiff.uint_tag(ifd, tag::IMAGE_LENGTH)?.unwrap_or(0);
    if w == 0 || h == 0 {
        return Err(NativeOpenError::Corrupt(format!(
            "IFD {} has dimensions {w} × {h}",
            ifd.index
        )));
    }
    Ok(Size::new(w, h))
}

fn read_level(tiff: &Tiff, ifd: &Ifd) -> std::result::Result<NativeLevel, NativeOpenError> {
    let size = dims(tiff, ifd)?;
    let tw = tiff.uint_tag(ifd, tag::TILE_WIDTH)?.unwrap_or(0);
    let th = tiff.uint_tag(ifd, tag::TILE_LENGTH)?.unwrap_or(0);
    if tw == 0 || th == 0 || tw * th > MAX_TILE_PIXELS {
        return Err(NativeOpenError::Corrupt(format!(
            "IFD {} has {tw} × {th} tiles",
            ifd.index
        )));
    }
    let enc = encoding(tiff, ifd)?;
    let tiles_across = size.width.div_ceil(tw);
    let tiles_down = size.height.div_ceil(th);
    let n = tiles_across
        .checked_mul(tiles_down)
        .ok_or_else(|| NativeOpenError::Corrupt("tile count overflows".into()))?;
    let offsets = tiff.uints(ifd, tag::TILE_OFFSETS)?.unwrap_or_default();
    let counts = tiff.uints(ifd, tag::TILE_BYTE_COUNTS)?.unwrap_or_default();
    if offsets.len() as u64 != n || counts.len() as u64 != n {
        return Err(NativeOpenError::Corrupt(format!(
            "IFD {} needs {n} tiles but lists {} offsets and {} byte counts",
            ifd.index,
            offsets.len(),
            counts.len()
        )));
    }
    Ok(NativeLevel {
        size,
        tile: Size::new(tw, th),
        tiles_across,
        offsets,
        counts,
        tile_files: None,
        enc,
    })
}

fn read_associated(
    tiff: &Tiff,
    ifd: &Ifd,
    name: &str,
) -> std::result::Result<NativeAssociated, NativeOpenError> {
    let size = dims(tiff, ifd)?;
    let enc = encoding(tiff, ifd)?;
    let rows_per_strip = tiff
        .uint_tag(ifd, tag::ROWS_PER_STRIP)?
        .unwrap_or(size.height)
        .clamp(1, size.height);
    let strips = size.height.div_ceil(rows_per_strip);
    let offsets = tiff.uints(ifd, tag::STRIP_OFFSETS)?.unwrap_or_default();
    let counts = tiff.uints(ifd, tag::STRIP_BYTE_COUNTS)?.unwrap_or_default();
    if offsets.len() as u64 != strips || counts.len() as u64 != strips {
        return Err(NativeOpenError::Corrupt(format!(
            "{name} image needs {strips} strips but lists {} offsets and {} byte counts",
            offsets.len(),
            counts.len()
        )));
    }
    if size.width * rows_per_strip > MAX_TILE_PIXELS {
        return Err(NativeOpenError::Unsupported(format!(
            "{name} image strips of {} × {rows_per_strip}",
            size.width
        )));
    }
    Ok(NativeAssociated {
        info: AssociatedImage {
            name: name.into(),
            size,
        },
        file: 0,
        rows_per_strip,
        offsets,
        counts,
        enc,
    })
}

/// Refuses a level 0 beyond the limits.
pub(crate) fn check_level0(path: &Path, levels: &[NativeLevel], limits: &Limits) -> Result<()> {
    if let Some(l) = levels.first() {
        if l.size.width > limits.max_level0_width || l.size.height > limits.max_level0_height {
            return Err(Error::LimitExceeded {
                path: path.into(),
                what: "level-0 width or height",
                value: l.size.width.max(l.size.height),
                limit: limits.max_level0_width.min(limits.max_level0_height),
            });
        }
    }
    Ok(())
}

/// The `openslide.*` properties every native format reports: vendor, levels, associated
/// images, ICC size.
fn openslide_properties(
    p: &mut BTreeMap<String, String>,
    vendor: &str,
    levels: &[Level],
    associated: &[NativeAssociated],
    icc: Option<&[u8]>,
) {
    p.insert("openslide.vendor".into(), vendor.into());
    p.insert("openslide.level-count".into(), levels.len().to_string());
    for (i, l) in levels.iter().enumerate() {
        p.insert(
            format!("openslide.level[{i}].width"),
            l.size.width.to_string(),
        );
        p.insert(
            format!("openslide.level[{i}].height"),
            l.size.height.to_string(),
        );
        p.insert(format!("openslide.level[{i}].downsample"), g(l.downsample));
        if let Some(t) = l.tile_size {
            p.insert(
                format!("openslide.level[{i}].tile-width"),
                t.width.to_string(),
            );
            p.insert(
                format!("openslide.level[{i}].tile-height"),
                t.height.to_string(),
            );
        }
    }
    for a in associated {
        p.insert(
            format!("openslide.associated.{}.width", a.info.name),
            a.info.size.width.to_string(),
        );
        p.insert(
            format!("openslide.associated.{}.height", a.info.name),
            a.info.size.height.to_string(),
        );
    }
    if let Some(icc) = icc {
        p.insert("openslide.icc-size".into(), icc.len().to_string());
    }
}

/// The TIFF and vendor properties OpenSlide would report for the file (the subset Tessera uses
/// and shows).
fn properties(
    tiff: &Tiff,
    ifd0: &Ifd,
    vendor: &str,
    description: &str,
) -> std::result::Result<BTreeMap<String, String>, String> {
    let mut p = BTreeMap::new();
    for (t, name) in [
        (tag::IMAGE_DESCRIPTION, "ImageDescription"),
        (tag::MAKE, "Make"),
        (tag::MODEL, "Model"),
        (tag::SOFTWARE, "Software"),
        (tag::DATE_TIME, "DateTime"),
    ] {
        if let Some(v) = tiff.ascii(ifd0, t, MAX_TEXT)? {
            p.insert(format!("tiff.{name}"), v);
        }
    }
    let unit = tiff.uint_tag(ifd0, tag::RESOLUTION_UNIT)?.unwrap_or(2);
    p.insert(
        "tiff.ResolutionUnit".into(),
        match unit {
            1 => "none",
            2 => "inch",
            3 => "centimeter",
            _ => "unknown",
        }
        .into(),
    );
    let xres = tiff.rational(ifd0, tag::X_RESOLUTION).unwrap_or(None);
    let yres = tiff.rational(ifd0, tag::Y_RESOLUTION).unwrap_or(None);
    if let Some(x) = xres {
        p.insert("tiff.XResolution".into(), g(x));
    }
    if let Some(y) = yres {
        p.insert("tiff.YResolution".into(), g(y));
    }
    if vendor == "aperio" {
        p.insert("openslide.comment".into(), description.into());
        // OpenSlide: split on '|', ignore the first element, "key = value" pairs.
        for item in description.split('|').skip(1) {
            if let Some((k, v)) = item.split_once('=') {
                p.insert(format!("aperio.{}", k.trim()), v.trim().into());
            }
        }
        if let Some(mpp) = p.get("aperio.MPP").and_then(|v| v.parse::<f64>().ok()) {
            p.insert("openslide.mpp-x".into(), g(mpp));
            p.insert("openslide.mpp-y".into(), g(mpp));
        }
        if let Some(mag) = p.get("aperio.AppMag").and_then(|v| v.parse::<f64>().ok()) {
            p.insert("openslide.objective-power".into(), g(mag));
        }
    } else {
        // Generic TIFF: MPP from the resolution tags (OpenSlide 4.0).
        let per_um = match unit {
            2 => Some(25_400.0),
            3 => Some(10_000.0),
            _ => None,
        };
        if let (Some(k), Some(x), Some(y)) = (per_um, xres, yres) {
            if x > 0.0 && y > 0.0 {
                p.insert("openslide.mpp-x".into(), g(k / x));
                p.insert("openslide.mpp-y".into(), g(k / y));
            }
        }
    }
    Ok(p)
}

/// pixman's bilinear weight for a fractional offset: 16.16 fixed point, top 7 bits, widened
/// to 8 bits (`BILINEAR_INTERPOLATION_BITS` = 7).
fn pixman_weight(frac: f64) -> u32 {
    let fixed = (frac * 65536.0).round() as u32 & 0xFFFF;
    (fixed >> 9) << 1
}

impl SlideReader for NativeReader {
    fn remote(&self) -> Option<&RemoteSource> {
        self.remote.as_ref()
    }

    fn dicom_source(&self) -> Option<&DicomSource> {
        self.dicom.as_deref()
    }

    fn backend(&self) -> BackendInfo {
        BackendInfo {
            name: "native",
            library: None,
            version: crate::VERSION.into(),
        }
    }

    fn format(&self) -> &str {
        &self.format
    }

    fn vendor(&self) -> Option<&str> {
        Some(&self.vendor)
    }

    fn levels(&self) -> &[Level] {
        &self.level_info
    }

    fn properties(&self) -> &BTreeMap<String, String> {
        &self.properties
    }

    fn associated_images(&self) -> &[AssociatedImage] {
        &self.associated_info
    }

    fn icc_profile(&self, _max_bytes: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.icc.clone())
    }

    fn read_region_rgb(
        &self,
        location: Level0Px,
        level: usize,
        size: Size,
        out: &mut [u8],
    ) -> Result<()> {
        let l = &self.levels[level];
        let ds = self.level_info[level].downsample;
        // OpenSlide: a negative start is cut off in whole level pixels (truncated), and the
        // rest starts at level coordinate 0.
        let start = |v: i64| -> (f64, u64) {
            if v < 0 {
                (0.0, ((-v) as f64 / ds) as u64)
            } else {
                (v as f64 / ds, 0)
            }
        };
        let (lx, skip_x) = start(location.x);
        let (ly, skip_y) = start(location.y);
        if skip_x >= size.width || skip_y >= size.height {
            out.fill(255);
            return Ok(());
        }
        let (w, h) = (size.width - skip_x, size.height - skip_y);
        let (ix, iy) = (lx.floor() as i64, ly.floor() as i64);
        let (wx, wy) = (
            pixman_weight(lx - lx.floor()),
            pixman_weight(ly - ly.floor()),
        );
        // Source window in level pixels: one more column/row when interpolating.
        let (sw, sh) = (w + u64::from(wx > 0), h + u64::from(wy > 0));
        let x0 = ix.max(0) as u64;
        let y0 = iy.max(0) as u64;
        let x1 = ((ix + sw as i64).max(0) as u64).min(l.size.width);
        let y1 = ((iy + sh as i64).max(0) as u64).min(l.size.height);
        if x0 >= x1 || y0 >= y1 {
            out.fill(255);
            return Ok(());
        }
        let t0 = LevelPx::new(x0 as i64, y0 as i64).tile(l.tile);
        let t1 = LevelPx::new(x1 as i64 - 1, y1 as i64 - 1).tile(l.tile);
        let (Some(t0), Some(t1)) = (t0, t1) else {
            out.fill(255);
            return Ok(());
        };
        let row_bytes = size.width as usize * 3;

        // One whole tile, exactly aligned: decode straight into the caller's buffer.
        if wx == 0 && wy == 0 && skip_x == 0 && skip_y == 0 && t0 == t1 {
            let origin = t0.origin(l.tile);
            if origin == LevelPx::new(ix, iy)
                && size == l.tile
                && x1 - x0 == l.tile.width
                && y1 - y0 == l.tile.height
                && self.cache.get(&(level, t0)).is_none()
            {
                if !self.decode_tile_into(level, t0, out)? {
                    out.fill(255);
                }
                return Ok(());
            }
        }
        let mut wanted = Vec::new();
        for row in t0.row..=t1.row {
            for col in t0.col..=t1.col {
                wanted.push(TileIndex { col, row });
            }
        }
        let (tw, th) = (l.tile.width, l.tile.height);
        // The part of tile `t` inside the source window, in level pixels.
        let clip = |t: &TileIndex| {
            let (ox, oy) = (t.col * tw, t.row * th);
            (ox.max(x0), (ox + tw).min(x1), oy.max(y0), (oy + th).min(y1))
        };

        if wx == 0 && wy == 0 {
            // Whole-pixel start. In a scattered read, the JPEG tiles the region covers only in
            // part are decoded in part, straight into the output; the rest come whole from the
            // cache.
            let crop: HashSet<TileIndex> = self
                .scattered(level, &wanted, |t| {
                    l.enc.codec == Codec::Jpeg
                        && clip(t) != (t.col * tw, (t.col + 1) * tw, t.row * th, (t.row + 1) * th)
                })
                .into_iter()
                .collect();
            let whole: Vec<TileIndex> = wanted
                .iter()
                .filter(|t| !crop.contains(t))
                .copied()
                .collect();
            let tiles = self.tiles(level, whole)?;
            // Everything not painted below (outside the image, missing tiles) is white; when
            // the tiles cover the whole region, every byte is painted and the fill is moot (a
            // cropped tile that turns out missing is painted white where it would go).
            let covered = skip_x == 0
                && skip_y == 0
                && x1 - x0 == w
                && y1 - y0 == h
                && tiles.values().all(Option::is_some);
            if !covered {
                out.fill(255);
            }
            // The output rows of each row of tiles, painted in parallel.
            let mut bands = Vec::new();
            let mut rest = &mut out[..];
            let mut taken = 0;
            for row in t0.row..=t1.row {
                let (band_y0, band_y1) = ((row * th).max(y0), ((row + 1) * th).min(y1));
                let first = ((band_y0 as i64 - iy) as u64 + skip_y) as usize;
                let last = ((band_y1 as i64 - iy) as u64 + skip_y) as usize;
                let (_, tail) = std::mem::take(&mut rest).split_at_mut((first - taken) * row_bytes);
                let (band, tail) = tail.split_at_mut((last - first) * row_bytes);
                rest = tail;
                taken = last;
                bands.push((row, band));
            }
            return bands.into_par_iter().try_for_each(|(row, band)| {
                // A band with a few cropped tiles (a random region has two) decodes them
                // straight into the output, one after another. A wider one decodes them in
                // parallel into buffers of their own, then copies them.
                let cropped: Vec<TileIndex> = (t0.col..=t1.col)
                    .map(|col| TileIndex { col, row })
                    .filter(|t| crop.contains(t))
                    .collect();
                let buffered: HashMap<TileIndex, Option<Vec<u8>>> = if cropped.len() > 2 {
                    cropped
                        .into_par_iter()
                        .map(|t| {
                            let part = clip(&t);
                            let (cx0, cx1, cy0, cy1) = part;
                            let w = ((cx1 - cx0) * 3) as usize;
                            let mut px = vec![0u8; w * (cy1 - cy0) as usize];
                            let done = self.tile_part(level, t, part, &mut px, w)?;
                            Ok((t, done.then_some(px)))
                        })
                        .collect::<Result<_>>()?
                } else {
                    HashMap::new()
                };
                for col in t0.col..=t1.col {
                    let t = TileIndex { col, row };
                    let part = clip(&t);
                    let (cx0, cx1, cy0, cy1) = part;
                    let dx = ((cx0 as i64 - ix) as u64 + skip_x) as usize;
                    let n = ((cx1 - cx0) * 3) as usize;
                    let mut fetched = None;
                    // The source rows: the part alone, or the whole tile from its origin.
                    let (src, src_w, sx, sy) = match (tiles.get(&t), buffered.get(&t)) {
                        (Some(tile), _) => {
                            (tile.as_deref().map(|v| &v[..]), tw, t.col * tw, t.row * th)
                        }
                        (None, Some(Some(px))) => (Some(&px[..]), cx1 - cx0, cx0, cy0),
                        (None, buffer) => {
                            if buffer.is_none()
                                && self.tile_part(level, t, part, &mut band[dx * 3..], row_bytes)?
                            {
                                continue;
                            }
                            // Not one the partial decoder takes (or missing): whole.
                            let tile = fetched.insert(self.tile(level, t)?);
                            (tile.as_deref().map(|v| &v[..]), tw, t.col * tw, t.row * th)
                        }
                    };
                    let Some(src) = src else {
                        for i in 0..(cy1 - cy0) as usize {
                            band[i * row_bytes + dx * 3..][..n].fill(255);
                        }
                        continue;
                    };
                    for (i, y) in (cy0..cy1).enumerate() {
                        let from = (((y - sy) * src_w + (cx0 - sx)) * 3) as usize;
                        let to = i * row_bytes + dx * 3;
                        band[to..to + n].copy_from_slice(&src[from..from + n]);
                    }
                }
                Ok(())
            });
        }
        let tiles = self.tiles(level, wanted)?;

        // Fractional start: bilinear resampling over a stitched window of source pixels
        // (RGBA, alpha 0 outside the image and in missing tiles), composited onto white. The
        // loop below writes every pixel after the cut-off margins; those are white.
        if skip_x > 0 || skip_y > 0 {
            out.fill(255);
        }
        let (swu, shu) = (sw as usize, sh as usize);
        let mut win = vec![0u8; swu * shu * 4];
        for (t, tile) in &tiles {
            let Some(tile) = tile else { continue };
            let (ox, oy) = (t.col * tw, t.row * th);
            let cx0 = ox.max(x0);
            let cx1 = (ox + tw).min(x1);
            let cy0 = oy.max(y0);
            let cy1 = (oy + th).min(y1);
            for y in cy0..cy1 {
                let src = (((y - oy) * tw + (cx0 - ox)) * 3) as usize;
                let wy_ = (y as i64 - iy) as usize;
                let wx_ = (cx0 as i64 - ix) as usize;
                let dst = (wy_ * swu + wx_) * 4;
                for (k, px) in tile[src..src + ((cx1 - cx0) * 3) as usize]
                    .chunks_exact(3)
                    .enumerate()
                {
                    win[dst + k * 4..dst + k * 4 + 4].copy_from_slice(&[px[0], px[1], px[2], 255]);
                }
            }
        }
        // pixman's bilinear_interpolation: 8-bit weights summing to 65536, rounded.
        let weights = [
            (256 - wx) * (256 - wy),
            wx * (256 - wy),
            (256 - wx) * wy,
            wx * wy,
        ];
        let (right, down) = (usize::from(wx > 0) * 4, usize::from(wy > 0) * swu * 4);
        for j in 0..h as usize {
            let dst_row = (j + skip_y as usize) * row_bytes + skip_x as usize * 3;
            let src_row = j * swu * 4;
            for i in 0..w as usize {
                let p = src_row + i * 4;
                let corners = [p, p + right, p + down, p + down + right];
                let mut acc = [0u32; 4];
                for (&q, &wgt) in corners.iter().zip(&weights) {
                    for c in 0..4 {
                        acc[c] += win[q + c] as u32 * wgt;
                    }
                }
                let a = (acc[3] + 0x8000) >> 16;
                let dst = dst_row + i * 3;
                for c in 0..3 {
                    out[dst + c] = (((acc[c] + 0x8000) >> 16) + (255 - a)).min(255) as u8;
                }
            }
        }
        Ok(())
    }

    fn read_associated_rgb(&self, image: &AssociatedImage, out: &mut [u8]) -> Result<()> {
        let a = self
            .associated
            .iter()
            .find(|a| a.info.name == image.name)
            .ok_or_else(|| Error::AssociatedImageNotFound {
                path: self.path.clone(),
                name: image.name.clone(),
                available: self
                    .associated_info
                    .iter()
                    .map(|a| a.name.clone())
                    .collect(),
            })?;
        let width = a.info.size.width as usize;
        let row_bytes = width * 3;
        let fail = |strip: u64, message: String| Error::Corrupt {
            path: self.path.clone(),
            format: self.format.clone(),
            backend: self.backend.into(),
            message: format!("{} image, strip {strip}: {message}", image.name),
        };
        for (s, (&offset, &count)) in a.offsets.iter().zip(&a.counts).enumerate() {
            let s = s as u64;
            let y0 = s * a.rows_per_strip;
            let rows = a.rows_per_strip.min(a.info.size.height - y0) as usize;
            if count == 0 || count > MAX_TILE_BYTES {
                return Err(fail(s, format!("{count} bytes")));
            }
            let data = self.files[a.file as usize]
                .read(offset, count)
                .map_err(|e| fail(s, e))?;
            let dst = &mut out[y0 as usize * row_bytes..(y0 as usize + rows) * row_bytes];
            // A last strip may be stored at the full strip height.
            if let Err(first) = decode::decode(&a.enc, &data, width, rows, dst) {
                let full = a.rows_per_strip as usize;
                if full == rows || a.enc.codec != Codec::Jpeg {
                    return Err(fail(s, first));
                }
                let mut tmp = vec![0u8; full * row_bytes];
                decode::decode(&a.enc, &data, width, full, &mut tmp).map_err(|_| fail(s, first))?;
                dst.copy_from_slice(&tmp[..dst.len()]);
            }
        }
        Ok(())
    }
}
