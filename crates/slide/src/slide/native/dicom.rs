//! Tessera's native DICOM WSI reader: a series of VL Whole Slide Microscopy Image instances
//! read as one pyramid, without OpenSlide.
//!
//! In: a DICOM file or a folder. The files of the folder (of the given file's folder; at most
//! [`MAX_DIR_ENTRIES`] entries, more is an error) whose SOP class is VL Whole Slide Microscopy
//! Image Storage and whose Series Instance UID is the series' are read, as OpenSlide 4 does:
//! the given file's series, or for a folder the series of its first WSI file in name order. A
//! file whose metadata cannot be read is skipped, as OpenSlide skips it, unless it is the file
//! given; a file of the series that is damaged past its metadata (a truncated part, a broken
//! frame table) fails the slide rather than leave its tiles white. Out: the parts of a
//! [`NativeReader`]: levels (instances
//! of the same total pixel matrix, concatenations included, widest first), their frames as
//! tiles in level pixels, the label, overview ("macro") and thumbnail instances as associated
//! images, the `dicom.*` properties (OpenSlide's flattening of the first level-0 instance),
//! MPP from the shared Pixel Measures and the first optical path's ICC profile.
//!
//! Parsing is dicom-rs's: a lazy pass over each file's tokens checks every value length against
//! the file and this module's caps (value size, metadata size, element count, nesting depth)
//! before anything is allocated, and finds the pixel data; then the metadata (the bytes before
//! the pixel data) is parsed by dicom-object through a decoder that refuses any value longer
//! than those bytes. Only the items of an encapsulated pixel data element (the DICOM
//! encapsulation's 8-byte item headers) are walked here, so frames are read on demand by
//! position, like TIFF tiles. dicom-rs's panics on malformed data are caught and reported as a
//! corrupt file. The caps are constants, not yet [`Limits`] fields.
//!
//! What is read: the transfer syntaxes OpenSlide reads (Explicit VR Little Endian uncompressed,
//! JPEG baseline, JPEG 2000), 3 × 8-bit samples, one focal plane, TILED_FULL and TILED_SPARSE,
//! one fragment per frame; label, overview and thumbnail instances of one frame within the
//! associated-image limit (tiled ones are left out). Other transfer syntaxes, sample layouts
//! and frames split across fragments are [`Error::Unsupported`], so that `--backend auto` can
//! hand the series to OpenSlide; damaged files are [`Error::Corrupt`]. An instance without
//! ImageType, which OpenSlide refuses, is read as a level (Orthanc's WSI dicomizer 1.x writes
//! none; `tessera.dicom.image-type-missing` says so). Not handled: a
//! dual-personality DICOM-TIFF file is read as the TIFF it also is.
//!
//! Colour: JPEG frames follow the Photometric Interpretation as OpenSlide does (YBR_FULL_422:
//! YCbCr; RGB: no colour transform), except where the frames themselves say otherwise: a JFIF
//! marker or an Adobe marker with transform 1 means YCbCr in the JPEG standard, and such frames
//! in an instance tagged RGB (a real converter's mistake) are decoded as YCbCr. OpenSlide shows
//! those slides in false colours; `tessera.dicom.photometric-override` records the decision.
//!
//! A series on a DICOMweb server ([`open_remote`]) is read the same way: [`super::dicomweb`]
//! gives each instance's attributes (from WADO-RS metadata) and its frames, fetched on demand,
//! in place of a file and its frame table; the transfer syntax is the one the server says its
//! frames are stored in.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::header::Header;
use dicom_core::value::Value;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::{tags, uids, StandardDataDictionary};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{FileMetaTable, InMemDicomObject};
use dicom_parser::dataset::lazy_read::LazyDataSetReader;
use dicom_parser::dataset::LazyDataToken;
use dicom_parser::StatefulDecode;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::decode::{Codec, Encoding};
use super::tiff::SourceFile;
use super::{
    dicomweb, g, NativeAssociated, NativeLevel, Parts, Store, MAX_TILE_BYTES, MAX_TILE_PIXELS,
};
use crate::config::DicomWebConfig;
use crate::config::Limits;
use crate::error::{Error, Result};
use crate::geom::Size;
use crate::slide::AssociatedImage;

/// The format name in errors and `Slide::format`, as the OpenSlide path names it.
pub const FORMAT: &str = "DICOM WSI";
/// The backend name in errors.
pub const BACKEND: &str = "Tessera native DICOM reader";

/// Most bytes of metadata (everything before the pixel data) read from one instance.
const MAX_HEADER_BYTES: u64 = 256 * 1024 * 1024;
/// Largest single metadata value (an ICC profile is a few MiB at most).
const MAX_VALUE_BYTES: u64 = 64 * 1024 * 1024;
/// Most frames in one instance.
const MAX_FRAMES: u64 = 16 * 1024 * 1024;
/// Most files in one level.
const MAX_FILES: usize = u16::MAX as usize - 1;
/// Most directory entries in a series' folder; a folder with more is refused.
const MAX_DIR_ENTRIES: usize = 10_000;
/// Deepest nesting of sequences (dicom-object builds them recursively: deeper nesting could
/// exhaust the stack, which no error handling survives). WSI metadata nests about five deep.
const MAX_DEPTH: usize = 32;
/// Most data elements and items in one instance's metadata (a sparse slide's per-frame
/// groups hold about ten per frame).
const MAX_TOKENS: u64 = 8 * 1024 * 1024;

const WSI_SOP_CLASS: &str = uids::VL_WHOLE_SLIDE_MICROSCOPY_IMAGE_STORAGE;

/// Why one file is not part of the series.
enum Skip {
    /// Not DICOM, or not a WSI instance: ignored, as OpenSlide ignores it.
    NotWsi(String),
    /// Its metadata cannot be read, so its series is unknown: ignored unless it is the file
    /// given (OpenSlide skips such files too).
    Unreadable(Error),
    /// An instance of another series than the one wanted.
    OtherSeries,
    /// An instance of `series` that cannot be used: fatal when it is the slide's series.
    Bad { series: String, error: Box<Error> },
}

/// One instance, its metadata read and its frames located.
struct Instance {
    path: PathBuf,
    /// The bytes, when the instance came from memory or a server; a file is opened when first
    /// needed (so a folder of many series does not hold a descriptor per file).
    file: Option<Store>,
    meta: FileMetaTable,
    obj: InMemDicomObject,
    /// (offset, length) of each frame in the file; for a server's instance, (frame index, 1).
    frames: Vec<(u64, u64)>,
    /// The ICC profile a server sent as bulk data (left out of the attributes).
    icc_bulk: Option<Vec<u8>>,
}

impl Instance {
    fn str(&self, tag: Tag) -> Option<String> {
        self.obj
            .get(tag)
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches([' ', '\0']).to_string())
    }
    fn int(&self, tag: Tag) -> Option<i64> {
        self.obj.get(tag).and_then(|e| e.to_int::<i64>().ok())
    }
    fn strs(&self, tag: Tag) -> Option<Vec<String>> {
        self.obj
            .get(tag)
            .and_then(|e| e.to_multi_str().ok())
            .map(|v| {
                v.iter()
                    .map(|s| s.trim_matches([' ', '\0']).to_string())
                    .collect()
            })
    }
    fn series(&self) -> Option<String> {
        self.str(tags::SERIES_INSTANCE_UID)
    }
    /// The image this file is (a part of): the concatenation's source SOP instance, else the
    /// Concatenation UID (some writers give only that), else the file's own SOP instance.
    fn underlying_sop(&self) -> Option<String> {
        self.str(tags::SOP_INSTANCE_UID_OF_CONCATENATION_SOURCE)
            .or_else(|| self.str(tags::CONCATENATION_UID))
            .or_else(|| self.str(tags::SOP_INSTANCE_UID))
    }
    fn err(&self, message: impl Into<String>) -> Error {
        corrupt(&self.path, message)
    }
    fn unsupported(&self, reason: impl Into<String>) -> Error {
        Error::Unsupported {
            path: self.path.clone(),
            format: FORMAT.into(),
            reason: reason.into(),
        }
    }
}

fn corrupt(path: &Path, message: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.into(),
        format: FORMAT.into(),
        backend: BACKEND.into(),
        message: message.into(),
    }
}

/// Opens the series of `path`: a DICOM file (its series, read from every file of its folder)
/// or a folder (the series of its first WSI file in name order).
pub(crate) fn open(path: &Path, limits: &Limits) -> Result<Parts> {
    let meta = std::fs::metadata(path).map_err(|e| Error::from_io(path, e))?;
    let (dir, start) = if meta.is_dir() {
        (path.to_path_buf(), None)
    } else {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        (dir, Some(path.to_path_buf()))
    };
    let mut names: Vec<PathBuf> = Vec::new();
    for (n, entry) in std::fs::read_dir(&dir)
        .map_err(|e| Error::from_io(&dir, e))?
        .enumerate()
    {
        if n >= MAX_DIR_ENTRIES {
            return Err(Error::LimitExceeded {
                path: dir.clone(),
                what: "entries in a DICOM series folder",
                value: n as u64 + 1,
                limit: MAX_DIR_ENTRIES as u64,
            });
        }
        let Ok(entry) = entry else { continue };
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            names.push(entry.path());
        }
    }
    names.sort();
    // The given file first: its series is the slide.
    if let Some(start) = &start {
        names.retain(|n| n.file_name() != start.file_name());
        names.insert(0, start.clone());
    }

    let mut series: Option<String> = None;
    let mut instances = Vec::new();
    let mut first_skip: Option<String> = None;
    for name in names {
        let given = start.as_ref() == Some(&name);
        match read_instance(&name, series.as_deref()) {
            Ok(inst) => {
                if series.is_none() {
                    series = inst.series();
                }
                instances.push(inst);
            }
            Err(Skip::OtherSeries) => {}
            Err(Skip::Bad { series: s, error }) => {
                // A damaged instance of the slide's series (or the one that would set it) is
                // fatal: skipping it would leave white tiles or a missing level.
                if given || series.is_none() || series.as_deref() == Some(s.as_str()) {
                    return Err(*error);
                }
            }
            Err(Skip::Unreadable(e)) => {
                if given {
                    return Err(e);
                }
                first_skip.get_or_insert(e.to_string());
            }
            Err(Skip::NotWsi(why)) => {
                if given {
                    return Err(Error::NotASlide {
                        path: name.clone(),
                        detected: why,
                    });
                }
                first_skip.get_or_insert(why);
            }
        }
    }
    if instances.is_empty() {
        return Err(Error::NotASlide {
            path: path.into(),
            detected: match first_skip {
                Some(why) => format!("no readable DICOM WSI instance in the folder ({why})"),
                None => "a directory with no DICOM files in it".into(),
            },
        });
    }
    build(path, instances, limits)
}

/// Opens the series a `dicomweb+http(s)://` URL names: its WSI instances as read from the
/// server (other SOP classes are left out, as in a folder), assembled as a file series is, with
/// the [`RemoteSource`](crate::slide::RemoteSource) that identifies it.
pub(crate) fn open_remote(url: &Path, cfg: &DicomWebConfig, limits: &Limits) -> Result<Parts> {
    use sha2::Digest;
    let series = dicomweb::open_series(url, cfg, limits.max_icc_bytes)?;
    let mut instances = Vec::new();
    let mut other = None;
    let mut sops = Vec::new();
    for m in series.instances.iter() {
        sops.push(m.sop.clone());
        if m.class != WSI_SOP_CLASS {
            other.get_or_insert(m.class.clone());
            continue;
        }
        let syntax = m.remote.transfer_syntax()?;
        let meta = dicom_object::meta::FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(m.class.as_str())
            .media_storage_sop_instance_uid(m.sop.as_str())
            .transfer_syntax(syntax.as_str())
            .build()
            .map_err(|e| corrupt(url, format!("instance {}: {e}", m.sop)))?;
        let frames = (0..m.remote_frames()).map(|k| (k, 1)).collect();
        instances.push(Instance {
            path: url.into(),
            file: Some(Store::Frames(m.remote.clone())),
            meta,
            obj: m.obj.clone(),
            frames,
            icc_bulk: m.icc_bulk.clone(),
        });
    }
    if instances.is_empty() {
        return Err(Error::NotASlide {
            path: url.into(),
            detected: format!(
                "series {} holds no VL Whole Slide Microscopy instance (SOP class {})",
                series.series,
                other.unwrap_or_default()
            ),
        });
    }
    let mut parts = build(url, instances, limits)?;
    // The fingerprint: the attributes, and level 0's first and last frames.
    let mut h = series.metadata_hash.clone();
    let l0 = &parts.levels[0];
    let present: Vec<usize> = l0
        .counts
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .map(|(i, _)| i)
        .collect();
    for &t in [present.first(), present.last()].into_iter().flatten() {
        let file = l0.tile_files.as_ref().map_or(0, |f| f[t] as usize);
        let frame = parts.files[file]
            .read(l0.offsets[t], l0.counts[t])
            .map_err(|m| corrupt(url, m))?;
        h.update((frame.len() as u64).to_le_bytes());
        h.update(&frame);
    }
    sops.sort();
    parts.remote = Some(crate::slide::RemoteSource {
        url: series.url.clone(),
        study: series.study.clone(),
        series: series.series.clone(),
        instances: sops,
        fingerprint: format!("{:x}", h.finalize()),
    });
    Ok(parts)
}

/// What an instance is, from its ImageType (OpenSlide's accepted combinations).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Level,
    Associated(&'static str),
}

fn kind(image_type: &[String]) -> Option<Kind> {
    let t: Vec<&str> = image_type.iter().map(String::as_str).collect();
    let [a, b, c, d] = t[..] else { return None };
    if !matches!(a, "ORIGINAL" | "DERIVED") || b != "PRIMARY" {
        return None;
    }
    match (c, d) {
        ("VOLUME", "NONE") => Some(Kind::Level),
        ("VOLUME", "RESAMPLED") if a == "DERIVED" => Some(Kind::Level),
        ("LABEL", "NONE") => Some(Kind::Associated("label")),
        ("OVERVIEW", "NONE") => Some(Kind::Associated("macro")),
        ("THUMBNAIL", "RESAMPLED") => Some(Kind::Associated("thumbnail")),
        _ => None,
    }
}

/// How an instance's frames are encoded.
fn encoding(inst: &Instance) -> Result<Encoding> {
    let syntax = inst.meta.transfer_syntax().to_string();
    let codec = match syntax.as_str() {
        uids::EXPLICIT_VR_LITTLE_ENDIAN => Codec::None,
        uids::JPEG_BASELINE8_BIT => Codec::Jpeg,
        uids::JPEG2000_LOSSLESS | uids::JPEG2000 => Codec::Jp2kRgb,
        other => {
            return Err(inst.unsupported(format!(
                "transfer syntax {other} (read natively: uncompressed Explicit VR Little \
                 Endian, JPEG baseline, JPEG 2000)"
            )))
        }
    };
    for (tag, name, want, required) in [
        (tags::PLANAR_CONFIGURATION, "PlanarConfiguration", 0, true),
        (tags::BITS_ALLOCATED, "BitsAllocated", 8, true),
        (tags::BITS_STORED, "BitsStored", 8, true),
        (tags::HIGH_BIT, "HighBit", 7, true),
        (tags::SAMPLES_PER_PIXEL, "SamplesPerPixel", 3, true),
        (tags::PIXEL_REPRESENTATION, "PixelRepresentation", 0, true),
        (
            tags::TOTAL_PIXEL_MATRIX_FOCAL_PLANES,
            "TotalPixelMatrixFocalPlanes",
            1,
            false,
        ),
    ] {
        match inst.int(tag) {
            Some(v) if v == want => {}
            None if !required => {}
            None if tag == tags::PLANAR_CONFIGURATION && codec != Codec::None => {}
            Some(v) => {
                return Err(inst.unsupported(format!(
                    "{name} {v} (only 3 × 8-bit colour, one focal plane, is read)"
                )))
            }
            None => return Err(inst.err(format!("no {name}"))),
        }
    }
    let photometric = inst
        .str(tags::PHOTOMETRIC_INTERPRETATION)
        .ok_or_else(|| inst.err("no PhotometricInterpretation"))?;
    let photometric = match (codec, photometric.as_str()) {
        (Codec::Jpeg, "YBR_FULL_422") => 6,
        (Codec::Jpeg, "RGB") => 2,
        // The codestream says whether it holds a colour transform and the decoder inverts
        // it, so all three come out RGB (OpenSlide 4.0.1 refuses YBR_RCT).
        (Codec::Jp2kRgb, "YBR_ICT" | "YBR_RCT" | "RGB") => 2,
        (Codec::None, "RGB") => 2,
        (_, p) => {
            return Err(inst.unsupported(format!(
                "photometric interpretation {p} with transfer syntax {syntax}"
            )))
        }
    };
    Ok(Encoding {
        codec,
        photometric,
        predictor: 1,
        jpeg_tables: None,
    })
}

/// Does a JPEG stream say, by its own markers, that it holds YCbCr? A JFIF APP0 marker
/// (JFIF is YCbCr by definition) or an Adobe APP14 marker with transform 1, and no component
/// ids 'R','G','B'.
fn stream_says_ycbcr(stream: &[u8]) -> bool {
    let mut says = false;
    for segment in super::markers::segments(stream) {
        let Ok((marker, seg, _)) = segment else {
            return false;
        };
        match marker {
            0xE0 if seg.starts_with(b"JFIF\0") => says = true,
            0xEE if seg.starts_with(b"Adobe") && seg.len() >= 12 => says = seg[11] == 1,
            0xC0..=0xC2 if seg.len() >= 15 && seg[5] == 3 => {
                return says && [seg[6], seg[9], seg[12]] != [b'R', b'G', b'B'];
            }
            0xDA => break,
            _ => {}
        }
    }
    says
}

/// Reads one file's metadata and frame positions; `want` is the series wanted, when known
/// (other series' files are not walked further).
fn read_instance(path: &Path, want: Option<&str>) -> std::result::Result<Instance, Skip> {
    let io = |e| Skip::Unreadable(Error::from_io(path, e));
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    read_instance_from(path, BufReader::new(file), len, None, want)
}

/// Opens one DICOM instance held in memory as a series of its own; `name` is used in errors.
/// Used by the fuzz target.
pub(crate) fn open_bytes(name: &Path, bytes: Vec<u8>, limits: &Limits) -> Result<Parts> {
    let len = bytes.len() as u64;
    let source = Store::File(SourceFile::new(bytes.clone()).map_err(|m| corrupt(name, m))?);
    match read_instance_from(name, std::io::Cursor::new(bytes), len, Some(source), None) {
        Ok(inst) => build(name, vec![inst], limits),
        Err(Skip::Bad { error, .. }) => Err(*error),
        Err(Skip::Unreadable(error)) => Err(error),
        Err(Skip::NotWsi(detected)) => Err(Error::NotASlide {
            path: name.into(),
            detected,
        }),
        Err(Skip::OtherSeries) => Err(corrupt(name, "no series")),
    }
}

/// Reads one instance's metadata and frame positions from `r` (the whole file, `len` bytes).
/// dicom-rs panics on some malformed data (dicom-parser 0.10.1 on an item outside a
/// sequence); such a panic is an unreadable file here.
fn read_instance_from<R: Read + Seek>(
    path: &Path,
    r: R,
    len: u64,
    source: Option<Store>,
    want: Option<&str>,
) -> std::result::Result<Instance, Skip> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        parse_instance(path, r, len, source, want)
    }))
    .unwrap_or_else(|_| {
        Err(Skip::Unreadable(corrupt(
            path,
            "the DICOM parser (dicom-rs) failed on this data",
        )))
    })
}

fn parse_instance<R: Read + Seek>(
    path: &Path,
    mut r: R,
    len: u64,
    source: Option<Store>,
    want: Option<&str>,
) -> std::result::Result<Instance, Skip> {
    let bad = |m: String| Skip::Unreadable(corrupt(path, m));
    let io = |e| Skip::Unreadable(Error::from_io(path, e));
    let mut head = [0u8; 132];
    if len < 132 || r.read_exact(&mut head).is_err() || &head[128..] != b"DICM" {
        return Err(Skip::NotWsi("not a DICOM file (no DICM preamble)".into()));
    }
    let meta = read_meta(&mut r, len).map_err(bad)?;
    let class = meta.media_storage_sop_class_uid().to_string();
    if class != WSI_SOP_CLASS {
        return Err(Skip::NotWsi(format!(
            "DICOM, but SOP class {class} is not VL Whole Slide Microscopy Image Storage"
        )));
    }
    let data_start = r.stream_position().map_err(io)?;
    let ts = TransferSyntaxRegistry
        .get(meta.transfer_syntax())
        .ok_or_else(|| {
            Skip::Unreadable(Error::Unsupported {
                path: path.into(),
                format: FORMAT.into(),
                reason: format!("unknown transfer syntax {}", meta.transfer_syntax()),
            })
        })?;

    // Lazy pass: lengths checked, the pixel data found.
    let pixel = {
        let mut reader = LazyDataSetReader::new_with_ts(&mut r, ts)
            .map_err(|e| bad(format!("data set: {e}")))?;
        let mut depth = 0usize;
        let mut tokens = 0u64;
        let mut pixel = None;
        while let Some(token) = reader.advance() {
            let token = token.map_err(|e| bad(format!("data set: {e}")))?;
            tokens += 1;
            if tokens > MAX_TOKENS {
                return Err(bad(format!("more than {MAX_TOKENS} elements of metadata")));
            }
            match token {
                LazyDataToken::SequenceStart { .. } | LazyDataToken::ItemStart { .. } => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(bad(format!("sequences nested over {MAX_DEPTH} deep")));
                    }
                }
                LazyDataToken::SequenceEnd | LazyDataToken::ItemEnd => {
                    depth = depth.saturating_sub(1)
                }
                LazyDataToken::PixelSequenceStart if depth == 0 => {
                    pixel = Some(Pixel::Encapsulated);
                    break;
                }
                // An icon image inside a sequence: its items are skipped below.
                LazyDataToken::PixelSequenceStart => depth += 1,
                LazyDataToken::ElementHeader(_) => {}
                LazyDataToken::LazyValue { header, decoder } => {
                    let at = decoder.position();
                    let n =
                        header.len.get().map(u64::from).ok_or_else(|| {
                            bad(format!("{} has an undefined length", header.tag()))
                        })?;
                    // The pixel data's length is checked once the series is known.
                    if header.tag() == tags::PIXEL_DATA && depth == 0 {
                        pixel = Some(Pixel::Native { at, len: n });
                        break;
                    }
                    if at + n > len {
                        return Err(bad(format!(
                            "{} claims {n} bytes at offset {at}, past the end of the \
                             {len}-byte file",
                            header.tag()
                        )));
                    }
                    if n > MAX_VALUE_BYTES {
                        return Err(bad(format!("{} claims {n} bytes", header.tag())));
                    }
                    if at > MAX_HEADER_BYTES {
                        return Err(bad(format!(
                            "more than {MAX_HEADER_BYTES} bytes of metadata"
                        )));
                    }
                    LazyDataToken::LazyValue { header, decoder }
                        .skip()
                        .map_err(|e| bad(format!("data set: {e}")))?;
                }
                LazyDataToken::LazyItemValue { len: n, decoder } => {
                    let at = decoder.position();
                    if at + u64::from(n) > len {
                        return Err(bad(format!(
                            "an item claims {n} bytes at offset {at}, past the end of the file"
                        )));
                    }
                    LazyDataToken::LazyItemValue { len: n, decoder }
                        .skip()
                        .map_err(|e| bad(format!("data set: {e}")))?;
                }
                _ => {}
            }
        }
        let at = reader.into_decoder().position();
        (pixel, at)
    };
    let (pixel, pixel_start) = pixel;
    let Some(pixel) = pixel else {
        return Err(bad("no pixel data".into()));
    };

    // The metadata: the bytes before the pixel data's header, read into memory and parsed by
    // dicom-object through a decoder that refuses any value longer than what is left of them
    // (dicom-object reserves whatever length an element claims, and on damaged data its
    // reading can part ways with the lazy pass's).
    let header = if ts.uid() == uids::IMPLICIT_VR_LITTLE_ENDIAN {
        8
    } else {
        12
    };
    let meta_end = match pixel {
        Pixel::Native { at, .. } => at,
        Pixel::Encapsulated => pixel_start,
    }
    .saturating_sub(header);
    if meta_end < data_start || meta_end - data_start > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "{} bytes of metadata",
            meta_end.saturating_sub(data_start)
        )));
    }
    let mut bytes = vec![0u8; (meta_end - data_start) as usize];
    r.seek(SeekFrom::Start(data_start))
        .and_then(|_| r.read_exact(&mut bytes))
        .map_err(io)?;
    let decoder = dicom_parser::stateful::decode::DynStatefulDecoder::new_with(
        &bytes[..],
        ts,
        Default::default(),
        0,
    )
    .map_err(|e| bad(format!("metadata: {e}")))?;
    let obj = InMemDicomObject::read_dataset(Bounded {
        inner: decoder,
        end: bytes.len() as u64,
    })
    .map_err(|e| bad(format!("metadata: {e}")))?;
    drop(bytes);
    let mut inst = Instance {
        path: path.into(),
        file: source,
        meta,
        obj,
        frames: Vec::new(),
        icc_bulk: None,
    };
    // From here on the series is known: another series' file goes no further, and this
    // series' damaged file is the slide's problem.
    let Some(series) = inst.series() else {
        return Err(bad("no Series Instance UID".into()));
    };
    if want.is_some_and(|w| w != series) {
        return Err(Skip::OtherSeries);
    }
    let fail = |error: Error| Skip::Bad {
        series: series.clone(),
        error: Box::new(error),
    };
    let encapsulated = ts.is_encapsulated_pixel_data();
    if encapsulated != matches!(pixel, Pixel::Encapsulated) {
        return Err(fail(inst.err(format!(
            "{} pixel data under transfer syntax {}",
            if encapsulated {
                "native"
            } else {
                "encapsulated"
            },
            ts.uid()
        ))));
    }
    let n_frames = inst.int(tags::NUMBER_OF_FRAMES).unwrap_or(1);
    if n_frames < 1 || n_frames as u64 > MAX_FRAMES {
        return Err(fail(inst.err(format!("NumberOfFrames {n_frames}"))));
    }
    let n_frames = n_frames as u64;
    let file_len = len;
    inst.frames = match pixel {
        Pixel::Native { at, len } => {
            if at.saturating_add(len) > file_len {
                return Err(fail(inst.err(format!(
                    "the pixel data claims {len} bytes at offset {at}, past the end of the \
                     {file_len}-byte file (truncated?)"
                ))));
            }
            let side = |tag| {
                inst.int(tag)
                    .filter(|v| (1..=i64::from(u16::MAX)).contains(v))
                    .map(|v| v as u64)
            };
            let (Some(rows), Some(cols)) = (side(tags::ROWS), side(tags::COLUMNS)) else {
                return Err(fail(inst.err("no usable Rows and Columns")));
            };
            // Sized by the samples as stored; whether they can be read is decided later.
            let spp = inst.int(tags::SAMPLES_PER_PIXEL).unwrap_or(3).clamp(1, 4) as u64;
            let bytes = inst.int(tags::BITS_ALLOCATED).unwrap_or(8).clamp(8, 64) as u64 / 8;
            let frame = rows * cols * spp * bytes;
            if rows * cols > MAX_TILE_PIXELS {
                return Err(fail(inst.err(format!("frames of {cols} × {rows}"))));
            }
            if frame.saturating_mul(n_frames) > len {
                return Err(fail(inst.err(format!(
                    "{n_frames} frames of {cols} × {rows} need {} bytes; the pixel data has \
                     {len}",
                    frame.saturating_mul(n_frames)
                ))));
            }
            (0..n_frames).map(|k| (at + k * frame, frame)).collect()
        }
        Pixel::Encapsulated => match encapsulated_frames(&mut r, pixel_start, len, n_frames) {
            Ok(f) => f,
            Err(FramesError::Corrupt(m)) => return Err(fail(inst.err(m))),
            Err(FramesError::Unsupported(m)) => return Err(fail(inst.unsupported(m))),
        },
    };
    Ok(inst)
}

/// Most bytes of the file meta group.
const MAX_META_BYTES: u64 = 1024 * 1024;

/// The file meta group (after the preamble and "DICM", which `r` has just read). Its length
/// comes from its first element, File Meta Information Group Length; every element's length is
/// checked against it by dicom-rs's lazy reader before dicom-object reads the group, which
/// would otherwise reserve whatever length an element claims.
fn read_meta<R: Read + Seek>(r: &mut R, len: u64) -> std::result::Result<FileMetaTable, String> {
    let mut head = [0u8; 12];
    r.read_exact(&mut head)
        .map_err(|e| format!("file meta information: {e}"))?;
    if head[..4] != [0x02, 0x00, 0x00, 0x00] || &head[4..6] != b"UL" {
        return Err("the file meta group does not start with its group length".into());
    }
    let group = u64::from(u32::from_le_bytes([head[8], head[9], head[10], head[11]]));
    if group > MAX_META_BYTES || 144 + group > len {
        return Err(format!(
            "the file meta group claims {group} bytes (the file has {len})"
        ));
    }
    let mut body = vec![0u8; group as usize];
    r.read_exact(&mut body)
        .map_err(|e| format!("file meta information: {e}"))?;
    let explicit = TransferSyntaxRegistry
        .get(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .ok_or("no Explicit VR Little Endian transfer syntax")?;
    let mut cursor = std::io::Cursor::new(&body[..]);
    let mut lazy = LazyDataSetReader::new_with_ts(&mut cursor, explicit)
        .map_err(|e| format!("file meta information: {e}"))?;
    while let Some(token) = lazy.advance() {
        let token = token.map_err(|e| format!("file meta information: {e}"))?;
        if let LazyDataToken::LazyValue { header, decoder } = token {
            let at = decoder.position();
            let n = header.len.get().map(u64::from).unwrap_or(u64::MAX);
            if at.saturating_add(n) > group {
                return Err(format!(
                    "file meta element {} claims {n} bytes; the group has {group}",
                    header.tag()
                ));
            }
            LazyDataToken::LazyValue { header, decoder }
                .skip()
                .map_err(|e| format!("file meta information: {e}"))?;
        } else if !matches!(token, LazyDataToken::ElementHeader(_)) {
            return Err("a sequence in the file meta group".into());
        }
    }
    let mut whole = Vec::with_capacity(16 + body.len());
    whole.extend_from_slice(b"DICM");
    whole.extend_from_slice(&head);
    whole.extend_from_slice(&body);
    FileMetaTable::from_reader(&whole[..]).map_err(|e| format!("file meta information: {e}"))
}

/// A decoder that refuses to read a value longer than what is left of its `end` bytes, or
/// longer than [`MAX_VALUE_BYTES`], before anything is allocated for it.
struct Bounded<S> {
    inner: S,
    end: u64,
}

type DecodeResult<T> = dicom_parser::stateful::decode::Result<T>;

impl<S: StatefulDecode> Bounded<S> {
    fn check(&self, len: u32) -> DecodeResult<()> {
        let at = self.inner.position();
        let len = u64::from(len);
        if len == u64::from(u32::MAX) || at + len > self.end || len > MAX_VALUE_BYTES {
            return Err(dicom_parser::stateful::decode::Error::ReadValueData {
                position: at,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "a value claims {len} bytes; {} are left",
                        self.end - at.min(self.end)
                    ),
                ),
                backtrace: std::backtrace::Backtrace::disabled(),
            });
        }
        Ok(())
    }
}

impl<S: StatefulDecode> StatefulDecode for Bounded<S> {
    type Reader = S::Reader;

    fn decode_header(&mut self) -> DecodeResult<dicom_core::DataElementHeader> {
        self.inner.decode_header()
    }
    fn decode_item_header(&mut self) -> DecodeResult<dicom_core::header::SequenceItemHeader> {
        self.inner.decode_item_header()
    }
    fn read_value(
        &mut self,
        header: &dicom_core::DataElementHeader,
    ) -> DecodeResult<dicom_core::PrimitiveValue> {
        self.check(header.len.0)?;
        self.inner.read_value(header)
    }
    fn read_value_preserved(
        &mut self,
        header: &dicom_core::DataElementHeader,
    ) -> DecodeResult<dicom_core::PrimitiveValue> {
        self.check(header.len.0)?;
        self.inner.read_value_preserved(header)
    }
    fn read_value_bytes(
        &mut self,
        header: &dicom_core::DataElementHeader,
    ) -> DecodeResult<dicom_core::PrimitiveValue> {
        self.check(header.len.0)?;
        self.inner.read_value_bytes(header)
    }
    fn read_to_vec(&mut self, length: u32, vec: &mut Vec<u8>) -> DecodeResult<()> {
        self.check(length)?;
        self.inner.read_to_vec(length, vec)
    }
    fn read_u32_to_vec(&mut self, length: u32, vec: &mut Vec<u32>) -> DecodeResult<()> {
        self.check(length)?;
        self.inner.read_u32_to_vec(length, vec)
    }
    fn read_to<W>(&mut self, length: u32, out: W) -> DecodeResult<()>
    where
        Self: Sized,
        W: std::io::Write,
    {
        self.check(length)?;
        self.inner.read_to(length, out)
    }
    fn skip_bytes(&mut self, length: u32) -> DecodeResult<()> {
        self.inner.skip_bytes(length)
    }
    fn seek(&mut self, position: u64) -> DecodeResult<()>
    where
        Self::Reader: Seek,
    {
        self.inner.seek(position)
    }
    fn position(&self) -> u64 {
        self.inner.position()
    }
}

enum Pixel {
    Native { at: u64, len: u64 },
    Encapsulated,
}

/// Why the frame table could not be made.
enum FramesError {
    Corrupt(String),
    Unsupported(String),
}

/// The frames of encapsulated pixel data whose items start at `at` in `r` (`len` bytes in
/// all): the Basic Offset Table item, then one fragment per frame, then the sequence
/// delimiter. A stream without the offset table item (not conformant, but written) is taken
/// when its first item is already a frame. Frames split across fragments are not read
/// natively.
fn encapsulated_frames<R: Read + Seek>(
    r: &mut R,
    mut at: u64,
    len: u64,
    n_frames: u64,
) -> std::result::Result<Vec<(u64, u64)>, FramesError> {
    let corrupt = FramesError::Corrupt;
    let mut items: Vec<(u64, u64)> = Vec::new();
    let mut first = [0u8; 2];
    loop {
        let mut b = [0u8; 8];
        r.seek(SeekFrom::Start(at))
            .and_then(|_| r.read_exact(&mut b))
            .map_err(|e| {
                corrupt(format!(
                    "encapsulated pixel data at offset {at}: {e} (the file is truncated)"
                ))
            })?;
        let group = u16::from_le_bytes([b[0], b[1]]);
        let element = u16::from_le_bytes([b[2], b[3]]);
        let n = u64::from(u32::from_le_bytes([b[4], b[5], b[6], b[7]]));
        match (group, element) {
            (0xFFFE, 0xE000) => {
                if n == u64::from(u32::MAX) {
                    return Err(corrupt("a pixel data item of undefined length".into()));
                }
                let value = at + 8;
                if value + n > len {
                    return Err(corrupt(format!(
                        "pixel data item {} of {n} bytes at offset {value} lies past the end \
                         of the {len}-byte file (truncated?)",
                        items.len()
                    )));
                }
                if items.is_empty() && n >= 2 {
                    r.read_exact(&mut first)
                        .map_err(|e| corrupt(format!("pixel data: {e}")))?;
                }
                items.push((value, n));
                if items.len() as u64 > n_frames + 1 {
                    return Err(FramesError::Unsupported(format!(
                        "more than {} fragments for {n_frames} frames (frames split across \
                         fragments are not read natively)",
                        n_frames + 1
                    )));
                }
                at = value + n;
            }
            (0xFFFE, 0xE0DD) => break,
            _ => {
                return Err(corrupt(format!(
                    "unexpected ({group:04X},{element:04X}) inside the encapsulated pixel data"
                )))
            }
        }
    }
    // No offset table item: the first item is a frame (a JPEG's SOI, a JPEG 2000 SOC).
    let starts_a_frame = first == [0xFF, 0xD8] || first == [0xFF, 0x4F];
    if items.len() as u64 == n_frames && starts_a_frame {
        return Ok(items);
    }
    let Some((_, fragments)) = items.split_first() else {
        return Err(corrupt("encapsulated pixel data without items".into()));
    };
    if fragments.len() as u64 == n_frames {
        return Ok(fragments.to_vec());
    }
    if (fragments.len() as u64) < n_frames {
        return Err(corrupt(format!(
            "{} fragments for {n_frames} frames",
            fragments.len()
        )));
    }
    Err(FramesError::Unsupported(format!(
        "{} fragments for {n_frames} frames (frames split across fragments are not read \
         natively)",
        fragments.len()
    )))
}

/// Frame → tile of one instance: `(frame index, column, row)` in tiles.
fn frame_tiles(
    inst: &Instance,
    tile: Size,
    across: u64,
    down: u64,
) -> Result<Vec<(usize, u64, u64)>> {
    let n = inst.frames.len() as u64;
    let organisation = inst.str(tags::DIMENSION_ORGANIZATION_TYPE);
    let per_frame = inst
        .obj
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items());
    let sparse = organisation.as_deref() == Some("TILED_SPARSE")
        || (organisation.as_deref() != Some("TILED_FULL") && per_frame.is_some());
    let mut out = Vec::with_capacity(n as usize);
    if !sparse {
        // Row-major from the concatenation's first frame; frames beyond one plane (other
        // optical paths) are not read.
        let offset = inst
            .int(tags::CONCATENATION_FRAME_OFFSET_NUMBER)
            .unwrap_or(0)
            .max(0) as u64;
        for k in 0..n {
            let g = offset + k;
            if g < across * down {
                out.push((k as usize, g % across, g / across));
            }
        }
        return Ok(out);
    }
    let items = per_frame
        .ok_or_else(|| inst.err("TILED_SPARSE without a Per-Frame Functional Groups Sequence"))?;
    if items.len() as u64 != n {
        return Err(inst.err(format!(
            "{} per-frame functional groups for {n} frames",
            items.len()
        )));
    }
    for (k, item) in items.iter().enumerate() {
        let pos = item
            .get(tags::PLANE_POSITION_SLIDE_SEQUENCE)
            .and_then(|e| e.items())
            .and_then(|i| i.first())
            .ok_or_else(|| inst.err(format!("frame {k} has no Plane Position (Slide)")))?;
        let get = |tag| {
            pos.get(tag)
                .and_then(|e| e.to_int::<i64>().ok())
                .ok_or_else(|| inst.err(format!("frame {k}: no {tag} position")))
        };
        let (c, r) = (
            get(tags::COLUMN_POSITION_IN_TOTAL_IMAGE_PIXEL_MATRIX)?,
            get(tags::ROW_POSITION_IN_TOTAL_IMAGE_PIXEL_MATRIX)?,
        );
        if c < 1 || r < 1 {
            return Err(inst.err(format!("frame {k} at ({c}, {r}), positions start at 1")));
        }
        let (c, r) = (c as u64 - 1, r as u64 - 1);
        if c % tile.width != 0 || r % tile.height != 0 {
            return Err(inst.unsupported(format!(
                "frame {k} at pixel ({c}, {r}) is not on the {} × {} tile grid",
                tile.width, tile.height
            )));
        }
        let (col, row) = (c / tile.width, r / tile.height);
        if col >= across || row >= down {
            return Err(inst.err(format!("frame {k} at ({c}, {r}) lies outside the image")));
        }
        out.push((k, col, row));
    }
    Ok(out)
}

struct LevelBuild {
    size: Size,
    tile: Size,
    files: Vec<usize>,
}

/// Opens the files tiles are read from, each once, in the order first used.
struct Files {
    index: HashMap<usize, u16>,
    files: Vec<Store>,
}

impl Files {
    /// The index of instance `i`'s file, opening it (or taking it from memory) on first use.
    fn of(&mut self, i: usize, instances: &mut [Instance]) -> Result<u16> {
        if let Some(&fi) = self.index.get(&i) {
            return Ok(fi);
        }
        let inst = &mut instances[i];
        let file = match inst.file.take() {
            Some(f) => f,
            None => {
                let f =
                    std::fs::File::open(&inst.path).map_err(|e| Error::from_io(&inst.path, e))?;
                Store::File(SourceFile::new(f).map_err(|m| inst.err(m))?)
            }
        };
        let fi = u16::try_from(self.files.len()).map_err(|_| inst.err("too many files"))?;
        self.files.push(file);
        self.index.insert(i, fi);
        Ok(fi)
    }
}

/// Whether the JPEG frame at `(offset, count)` of `file` says, by its own markers, that it
/// holds YCbCr.
fn frame_says_ycbcr(file: &Store, offset: u64, count: u64, inst: &Instance) -> Result<bool> {
    let head = file
        .read(offset, count.min(64 * 1024))
        .map_err(|m| inst.err(m))?;
    Ok(stream_says_ycbcr(&head))
}

/// Assembles the series' instances into levels and associated images.
fn build(path: &Path, mut instances: Vec<Instance>, limits: &Limits) -> Result<Parts> {
    let mut levels: Vec<LevelBuild> = Vec::new();
    let mut untyped = false;
    let mut associated: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (i, inst) in instances.iter().enumerate() {
        // OpenSlide reads the first four values of ImageType. Without any (what Orthanc's
        // WSI dicomizer 1.x writes, which makes pyramids only) the instance is a level.
        let kind = match inst.strs(tags::IMAGE_TYPE) {
            None => {
                untyped = true;
                Kind::Level
            }
            Some(t) if t.iter().all(String::is_empty) => {
                untyped = true;
                Kind::Level
            }
            Some(t) if t.len() >= 4 => match kind(&t[..4]) {
                Some(k) => k,
                None => continue,
            },
            Some(_) => return Err(inst.unsupported("ImageType with fewer than four values")),
        };
        encoding(inst)?;
        let dim = |tag, name: &str, max: u64| -> Result<u64> {
            match inst.int(tag) {
                Some(v) if v > 0 && (v as u64) <= max => Ok(v as u64),
                _ => Err(inst.err(format!("no usable {name}"))),
            }
        };
        let size = Size::new(
            dim(
                tags::TOTAL_PIXEL_MATRIX_COLUMNS,
                "TotalPixelMatrixColumns",
                u64::from(u32::MAX),
            )?,
            dim(
                tags::TOTAL_PIXEL_MATRIX_ROWS,
                "TotalPixelMatrixRows",
                u64::from(u32::MAX),
            )?,
        );
        let tile = Size::new(
            dim(tags::COLUMNS, "Columns", u64::from(u16::MAX))?,
            dim(tags::ROWS, "Rows", u64::from(u16::MAX))?,
        );
        match kind {
            Kind::Associated(name) => {
                if let Some(&prev) = associated.get(name) {
                    if instances[prev].underlying_sop() != inst.underlying_sop() {
                        return Err(inst.err(format!(
                            "two different {name} images in one series ({} and {})",
                            instances[prev].path.display(),
                            inst.path.display()
                        )));
                    }
                    continue;
                }
                associated.insert(name, i);
            }
            Kind::Level => {
                if tile.width * tile.height > MAX_TILE_PIXELS {
                    return Err(inst.err(format!("frames of {} × {}", tile.width, tile.height)));
                }
                if let Some(l) = levels.iter_mut().find(|l| l.size == size) {
                    let sop = inst.underlying_sop();
                    if l.files
                        .iter()
                        .any(|&j| instances[j].underlying_sop() != sop)
                    {
                        return Err(inst.err(format!(
                            "the series holds two different images of {} × {}",
                            size.width, size.height
                        )));
                    }
                    if l.tile != tile {
                        return Err(inst.err(format!(
                            "tiles of {} × {} in a level of {} × {} tiles",
                            tile.width, tile.height, l.tile.width, l.tile.height
                        )));
                    }
                    if l.files.len() >= MAX_FILES {
                        return Err(inst.err("too many files in one level"));
                    }
                    l.files.push(i);
                } else {
                    levels.push(LevelBuild {
                        size,
                        tile,
                        files: vec![i],
                    });
                }
            }
        }
    }
    if levels.is_empty() {
        return Err(Error::Unsupported {
            path: path.into(),
            format: FORMAT.into(),
            reason: "no pyramid levels (no VOLUME instance)".into(),
        });
    }
    levels.sort_by_key(|l| std::cmp::Reverse(l.size.width));
    if levels[0].size.width > limits.max_level0_width
        || levels[0].size.height > limits.max_level0_height
    {
        return Err(Error::LimitExceeded {
            path: path.into(),
            what: "level-0 width or height",
            value: levels[0].size.width.max(levels[0].size.height),
            limit: limits.max_level0_width.min(limits.max_level0_height),
        });
    }

    // The tile tables are allocated whole, so their size is bounded by the frames the files
    // hold: per level (a sparse level may leave most of its grid empty, not a thousand times
    // more) and in all.
    let all_frames: u64 = instances.iter().map(|i| i.frames.len() as u64).sum();
    let mut table_left = all_frames.saturating_mul(64).saturating_add(1 << 20);
    let mut files = Files {
        index: HashMap::new(),
        files: Vec::new(),
    };
    let mut overrides = Vec::new();
    let mut native_levels = Vec::with_capacity(levels.len());
    for (li, l) in levels.iter().enumerate() {
        let across = l.size.width.div_ceil(l.tile.width);
        let down = l.size.height.div_ceil(l.tile.height);
        let frames: u64 = l
            .files
            .iter()
            .map(|&i| instances[i].frames.len() as u64)
            .sum();
        let n = across
            .checked_mul(down)
            .filter(|&n| {
                n <= MAX_FRAMES && n <= frames.saturating_mul(1024) + 65_536 && n <= table_left
            })
            .ok_or_else(|| {
                corrupt(
                    path,
                    format!("level {li} is a grid of {across} × {down} tiles for {frames} frames"),
                )
            })?;
        table_left -= n;
        let n = n as usize;
        let mut offsets = vec![0u64; n];
        let mut counts = vec![0u64; n];
        let mut tile_files = vec![0u16; n];
        let mut enc = encoding(&instances[l.files[0]])?;
        for &i in &l.files {
            let e = encoding(&instances[i])?;
            if e.codec != enc.codec || e.photometric != enc.photometric {
                return Err(
                    instances[i].unsupported("the files of one level are encoded differently")
                );
            }
            let fi = files.of(i, &mut instances)?;
            let inst = &instances[i];
            let mut placed = 0usize;
            for (k, col, row) in frame_tiles(inst, l.tile, across, down)? {
                let t = (row * across + col) as usize;
                placed += 1;
                if counts[t] != 0 {
                    continue; // the first file holding a tile wins, as in OpenSlide
                }
                let (at, len) = inst.frames[k];
                if len == 0 || len > MAX_TILE_BYTES {
                    return Err(inst.err(format!("frame {k} has {len} bytes")));
                }
                offsets[t] = at;
                counts[t] = len;
                tile_files[t] = fi;
            }
            // A file none of whose frames lands on the grid (a concatenation part with a
            // wrong frame offset) would leave its tiles white without a word.
            if placed == 0 {
                return Err(inst.err(format!(
                    "none of its {} frames lies on the {across} × {down} tile grid",
                    inst.frames.len()
                )));
            }
        }
        if enc.codec == Codec::Jpeg && enc.photometric == 2 {
            // The mis-tagged case: look at the level's first frame.
            if let Some(t) = counts.iter().position(|&c| c > 0) {
                let fi = tile_files[t] as usize;
                let owner = *files
                    .index
                    .iter()
                    .find(|(_, &f)| f as usize == fi)
                    .map(|(i, _)| i)
                    .expect("a placed tile's file is indexed");
                if frame_says_ycbcr(&files.files[fi], offsets[t], counts[t], &instances[owner])? {
                    enc.photometric = 6;
                    overrides.push(format!("level {li}"));
                }
            }
        }
        native_levels.push(NativeLevel {
            size: l.size,
            tile: l.tile,
            tiles_across: across,
            offsets,
            counts,
            tile_files: (l.files.len() > 1 || files.files.len() > 1).then_some(tile_files),
            enc,
        });
    }

    let mut native_associated = Vec::new();
    let mut associated_icc = Vec::new();
    for (&name, &i) in &associated {
        let inst = &instances[i];
        let size = Size::new(
            inst.int(tags::TOTAL_PIXEL_MATRIX_COLUMNS).unwrap_or(0) as u64,
            inst.int(tags::TOTAL_PIXEL_MATRIX_ROWS).unwrap_or(0) as u64,
        );
        let frame = Size::new(
            inst.int(tags::COLUMNS).unwrap_or(0) as u64,
            inst.int(tags::ROWS).unwrap_or(0) as u64,
        );
        // One frame the size of the image (what OpenSlide reads), within the associated-image
        // limit; tiled or larger ones are left out rather than failing the slide.
        if frame != size
            || inst.frames.is_empty()
            || size.width.saturating_mul(size.height) > limits.max_associated_pixels
            || size.width.saturating_mul(size.height) > MAX_TILE_PIXELS
        {
            continue;
        }
        let mut enc = encoding(inst)?;
        let (at, len) = inst.frames[0];
        let icc = icc_profile(inst, limits.max_icc_bytes)?;
        let file = files.of(i, &mut instances)?;
        let inst = &instances[i];
        if enc.codec == Codec::Jpeg
            && enc.photometric == 2
            && frame_says_ycbcr(&files.files[file as usize], at, len, inst)?
        {
            enc.photometric = 6;
            overrides.push(format!("the {name} image"));
        }
        if let Some(icc) = icc {
            associated_icc.push((name, icc.len()));
        }
        native_associated.push(NativeAssociated {
            info: AssociatedImage {
                name: name.into(),
                size,
            },
            file,
            rows_per_strip: size.height,
            offsets: vec![at],
            counts: vec![len],
            enc,
        });
    }

    let level0 = &instances[levels[0].files[0]];
    let mut properties = properties(level0);
    for (name, size) in associated_icc {
        properties.insert(
            format!("openslide.associated.{name}.icc-size"),
            size.to_string(),
        );
    }
    if untyped {
        properties.insert(
            "tessera.dicom.image-type-missing".into(),
            "instances without ImageType were read as pyramid levels".into(),
        );
    }
    if !overrides.is_empty() {
        properties.insert(
            "tessera.dicom.photometric-override".into(),
            format!(
                "{}: tagged RGB, but the JPEG frames carry a JFIF or Adobe YCbCr marker; \
                 decoded as YCbCr",
                overrides.join(", ")
            ),
        );
    }
    let icc = icc_profile(level0, limits.max_icc_bytes)?;
    let mut attributes = level0.obj.clone();
    attributes.remove_element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    let dicom = crate::slide::DicomSource {
        attributes,
        level0: levels[0]
            .files
            .iter()
            .map(|&i| {
                let m = &instances[i].meta;
                (
                    m.media_storage_sop_class_uid()
                        .trim_end_matches('\0')
                        .to_string(),
                    m.media_storage_sop_instance_uid()
                        .trim_end_matches('\0')
                        .to_string(),
                )
            })
            .collect(),
    };
    Ok(Parts {
        path: path.into(),
        format: FORMAT.into(),
        vendor: "dicom".into(),
        backend: BACKEND,
        files: files.files,
        levels: native_levels,
        associated: native_associated,
        properties,
        icc,
        remote: None,
        dicom: Some(Box::new(dicom)),
    })
}

/// The first optical path's ICC profile.
fn icc_profile(inst: &Instance, max_bytes: u64) -> Result<Option<Vec<u8>>> {
    let bytes = match &inst.icc_bulk {
        Some(bytes) => bytes.clone(),
        None => {
            let Some(icc) = inst
                .obj
                .get(tags::OPTICAL_PATH_SEQUENCE)
                .and_then(|e| e.items())
                .and_then(|i| i.first())
                .and_then(|path| path.get(tags::ICC_PROFILE))
            else {
                return Ok(None);
            };
            icc.to_bytes()
                .map_err(|e| inst.err(format!("ICC profile: {e}")))?
                .into_owned()
        }
    };
    if bytes.len() as u64 > max_bytes {
        return Err(Error::LimitExceeded {
            path: inst.path.clone(),
            what: "ICC profile bytes",
            value: bytes.len() as u64,
            limit: max_bytes,
        });
    }
    Ok(Some(bytes))
}

/// OpenSlide's `dicom.*` properties: every element with a keyword, sequences as
/// `Seq[i].Keyword`, multi-valued elements as `Keyword[i]`, binary values left out; then MPP and
/// objective power.
fn properties(inst: &Instance) -> BTreeMap<String, String> {
    let mut p = BTreeMap::new();
    let meta = inst.meta.to_element_iter().collect::<Vec<_>>();
    for e in &meta {
        add_element(&mut p, "dicom", e.tag(), e.vr(), e.value());
    }
    add_dataset(&mut p, "dicom", &inst.obj);
    let spacing = "dicom.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing";
    let scaled = |p: &BTreeMap<String, String>, k: String| {
        p.get(&k)
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| g(v * 1000.0))
    };
    if let Some(y) = scaled(&p, format!("{spacing}[0]")) {
        p.insert("openslide.mpp-y".into(), y);
    }
    if let Some(x) = scaled(&p, format!("{spacing}[1]")) {
        p.insert("openslide.mpp-x".into(), x);
    }
    if let Some(power) = p
        .get("dicom.OpticalPathSequence[0].ObjectiveLensPower")
        .and_then(|v| v.parse::<f64>().ok())
    {
        p.insert("openslide.objective-power".into(), g(power));
    }
    if let Some(series) = inst.series() {
        p.insert("tessera.dicom.series".into(), series);
    }
    p
}

fn add_dataset(p: &mut BTreeMap<String, String>, prefix: &str, obj: &InMemDicomObject) {
    for e in obj.iter() {
        if e.tag() == tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE {
            continue;
        }
        add_element(p, prefix, e.tag(), e.vr(), e.value());
    }
}

fn add_element<I, P>(
    p: &mut BTreeMap<String, String>,
    prefix: &str,
    tag: Tag,
    vr: VR,
    value: &Value<I, P>,
) where
    I: AsDataset,
{
    let Some(keyword) = StandardDataDictionary.by_tag(tag).map(|e| e.alias()) else {
        return;
    };
    match value {
        Value::Sequence(seq) => {
            for (i, item) in seq.items().iter().enumerate() {
                if let Some(obj) = item.as_dataset() {
                    add_dataset(p, &format!("{prefix}.{keyword}[{i}]"), obj);
                }
            }
        }
        Value::Primitive(v) => {
            if tag.element() == 0 {
                return; // group lengths
            }
            if vr == VR::AT {
                // libdicom gives a tag as two integers, group and element.
                if let dicom_core::PrimitiveValue::Tags(t) = v {
                    for (i, t) in t.iter().enumerate() {
                        p.insert(format!("{prefix}.{keyword}[{}]", 2 * i), t.0.to_string());
                        p.insert(
                            format!("{prefix}.{keyword}[{}]", 2 * i + 1),
                            t.1.to_string(),
                        );
                    }
                }
                return;
            }
            if matches!(
                vr,
                VR::OB | VR::OW | VR::OD | VR::OF | VR::OL | VR::OV | VR::UN
            ) {
                return;
            }
            let format = |s: &str| -> String {
                let s = s.trim_matches([' ', '\0']);
                match vr {
                    // Binary floats as doubles (an FL widened), as C's %.17g.
                    VR::FD => s.parse::<f64>().map(g).unwrap_or_else(|_| s.into()),
                    VR::FL => s
                        .parse::<f32>()
                        .map(|f| g(f64::from(f)))
                        .unwrap_or_else(|_| s.into()),
                    _ => s.to_string(),
                }
            };
            // Strings OpenSlide (libdicom) keeps whole, backslashes and all.
            if matches!(
                vr,
                VR::LO | VR::LT | VR::ST | VR::UT | VR::UR | VR::SH | VR::PN | VR::UC
            ) {
                let whole = v.to_str();
                p.insert(format!("{prefix}.{keyword}"), format(&whole));
                return;
            }
            let values = v.to_multi_str();
            match values.len() {
                0 => {
                    p.insert(format!("{prefix}.{keyword}"), String::new());
                }
                1 => {
                    p.insert(format!("{prefix}.{keyword}"), format(&values[0]));
                }
                _ => {
                    for (i, s) in values.iter().enumerate() {
                        p.insert(format!("{prefix}.{keyword}[{i}]"), format(s));
                    }
                }
            }
        }
        Value::PixelSequence(_) => {}
    }
}

/// Items of a sequence that are data sets.
trait AsDataset {
    fn as_dataset(&self) -> Option<&InMemDicomObject>;
}

impl AsDataset for InMemDicomObject {
    fn as_dataset(&self) -> Option<&InMemDicomObject> {
        Some(self)
    }
}

impl AsDataset for dicom_core::header::EmptyObject {
    fn as_dataset(&self) -> Option<&InMemDicomObject> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_types() {
        let t = |v: &[&str]| kind(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            t(&["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]),
            Some(Kind::Level)
        );
        assert_eq!(
            t(&["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]),
            Some(Kind::Level)
        );
        assert_eq!(t(&["ORIGINAL", "PRIMARY", "VOLUME", "RESAMPLED"]), None);
        assert_eq!(
            t(&["ORIGINAL", "PRIMARY", "LABEL", "NONE"]),
            Some(Kind::Associated("label"))
        );
        assert_eq!(
            t(&["DERIVED", "PRIMARY", "OVERVIEW", "NONE"]),
            Some(Kind::Associated("macro"))
        );
        assert_eq!(t(&["ORIGINAL", "PRIMARY", "VOLUME"]), None);
        assert_eq!(t(&[]), None);
    }

    #[test]
    fn doubles_as_openslide_prints_them() {
        assert_eq!(g(0.499), "0.499");
        assert_eq!(g(28.969), "28.969000000000001");
        assert_eq!(g(f64::from(0.007984f32)), "0.0079840002581477165");
        assert_eq!(g(20.0), "20");
        assert_eq!(g(0.0), "0");
        assert_eq!(g(1e-5), "1.0000000000000001e-05");
        assert_eq!(g(-2.5), "-2.5");
    }

    #[test]
    fn jpeg_colour_markers() {
        // SOI, APP0 JFIF, SOF0 with component ids 1,2,3.
        let jfif = [
            0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0,
            0, 0xFF, 0xC0, 0x00, 0x11, 8, 0, 16, 0, 16, 3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1,
            0xFF, 0xDA,
        ];
        assert!(stream_says_ycbcr(&jfif));
        // The same with component ids R, G, B: RGB whatever JFIF says.
        let mut rgb = jfif;
        rgb[30] = b'R';
        rgb[33] = b'G';
        rgb[36] = b'B';
        assert!(!stream_says_ycbcr(&rgb));
        // No marker at all: nothing said.
        let mut bare = jfif.to_vec();
        bare.drain(2..20);
        assert!(!stream_says_ycbcr(&bare));
    }
}
