//! Format sniffing: what a file is, from its first bytes and, for TIFF, its first IFD.
//!
//! In: a path. Out: a [`Detected`] value that names the format for error messages, routes the
//! file to a backend, and lets [`crate::Slide::open`] refuse absurd dimensions before any
//! backend allocates for them. Every read here is bounded (a few KiB per file) and every offset
//! is checked against the file's length, so hostile files cannot make this allocate or loop.
//! Dimensions are level-0 pixels as written in the file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::{Error, Result};

/// Most IFD entries read from a TIFF header; real slides have a few dozen.
const MAX_IFD_ENTRIES: u64 = 4096;
/// Most IFDs followed in one file; slides have a handful, pyramids a few dozen.
const MAX_IFDS: u64 = 4096;
/// Most bytes of ImageDescription kept for vendor detection.
const MAX_DESCRIPTION: u64 = 4096;

/// What a file looks like.
#[derive(Debug, Clone, PartialEq)]
pub enum Detected {
    /// A zero-byte file.
    Empty,
    /// A TIFF or BigTIFF whose first IFD could be read.
    Tiff(TiffSummary),
    /// A TIFF whose header or first IFD is damaged.
    BrokenTiff {
        /// What is wrong.
        reason: String,
    },
    /// A DICOM Part 10 file ("DICM" at offset 128).
    Dicom,
    /// A format recognised by its extension or magic number that is not TIFF or DICOM.
    Other {
        /// Format name, e.g. "MIRAX", "PNG image", "text".
        format: String,
    },
}

/// The facts read from a TIFF's first IFD.
#[derive(Debug, Clone, PartialEq)]
pub struct TiffSummary {
    /// BigTIFF (version 43) rather than classic TIFF.
    pub big: bool,
    /// ImageWidth of IFD 0, in level-0 pixels.
    pub width: u64,
    /// ImageLength of IFD 0, in level-0 pixels.
    pub height: u64,
    /// True when IFD 0 has TileWidth and TileLength.
    pub tiled: bool,
    /// Compression tag (1 when absent).
    pub compression: u64,
    /// SamplesPerPixel (1 when absent).
    pub samples_per_pixel: u64,
    /// First BitsPerSample value (1 when absent).
    pub bits_per_sample: u64,
    /// Vendor recognised from the ImageDescription or private tags, if any.
    pub vendor: Option<&'static str>,
}

impl Detected {
    /// Human name of the format, used in error messages.
    pub fn format_name(&self) -> String {
        match self {
            Detected::Empty => "empty file".into(),
            Detected::Tiff(t) => match (t.vendor, t.tiled) {
                (Some(v), _) => v.into(),
                (None, true) if t.big => "tiled BigTIFF".into(),
                (None, true) => "tiled TIFF".into(),
                (None, false) => "stripped (untiled) TIFF".into(),
            },
            Detected::BrokenTiff { .. } => "TIFF".into(),
            Detected::Dicom => "DICOM".into(),
            Detected::Other { format } => format.clone(),
        }
    }

    /// A one-line description with the details that matter for support questions.
    pub fn describe(&self) -> String {
        match self {
            Detected::Tiff(t) => format!(
                "{} {} × {}, {} × {}-bit samples, compression {}",
                self.format_name(),
                t.width,
                t.height,
                t.samples_per_pixel,
                t.bits_per_sample,
                t.compression
            ),
            Detected::BrokenTiff { reason } => format!("damaged TIFF ({reason})"),
            _ => self.format_name(),
        }
    }
}

/// Sniffs the file at `path`.
pub fn sniff(path: &Path) -> Result<Detected> {
    let mut file = File::open(path).map_err(|e| Error::from_io(path, e))?;
    let len = file.metadata().map_err(|e| Error::from_io(path, e))?.len();
    if len == 0 {
        return Ok(Detected::Empty);
    }
    let mut head = Vec::with_capacity(512);
    (&mut file)
        .take(512)
        .read_to_end(&mut head)
        .map_err(|e| Error::from_io(path, e))?;

    if head.starts_with(b"II") || head.starts_with(b"MM") {
        let le = head[0] == b'I';
        let version = if head.len() >= 4 {
            u16_at(&head[2..4], le)
        } else {
            0
        };
        if version == 42 || version == 43 {
            return Ok(match read_tiff(&mut file, len, le, version == 43) {
                Ok(t) => Detected::Tiff(t),
                Err(reason) => Detected::BrokenTiff { reason },
            });
        }
    }
    if head.len() >= 132 && &head[128..132] == b"DICM" {
        return Ok(Detected::Dicom);
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    let by_extension = match ext.as_str() {
        "mrxs" => Some("MIRAX"),
        "vms" | "vmu" => Some("Hamamatsu VMS/VMU"),
        "svslide" => Some("Sakura SVSlide"),
        "czi" => Some("Zeiss CZI"),
        "isyntax" => Some("Philips iSyntax"),
        _ => None,
    };
    let format = if let Some(f) = by_extension {
        f.to_string()
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        "PNG image".into()
    } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        "JPEG image".into()
    } else if head.starts_with(b"PK\x03\x04") {
        "ZIP archive".into()
    } else if head.starts_with(&[0x1F, 0x8B]) {
        "gzip data".into()
    } else if std::str::from_utf8(&head).is_ok_and(|s| {
        s.chars()
            .all(|c| !c.is_control() || c.is_ascii_whitespace())
    }) {
        "text".into()
    } else {
        "unknown binary data".into()
    };
    Ok(Detected::Other { format })
}

fn u16_at(b: &[u8], le: bool) -> u16 {
    let a = [b[0], b[1]];
    if le {
        u16::from_le_bytes(a)
    } else {
        u16::from_be_bytes(a)
    }
}

fn uint_at(b: &[u8], le: bool) -> u64 {
    let mut v = 0u64;
    for i in 0..b.len() {
        let byte = if le { b[b.len() - 1 - i] } else { b[i] };
        v = (v << 8) | byte as u64;
    }
    v
}

/// Reads exactly `n` bytes at `offset`, refusing ranges past the end of the file.
fn read_at(file: &mut File, len: u64, offset: u64, n: u64) -> Result<Vec<u8>, String> {
    let end = offset
        .checked_add(n)
        .ok_or_else(|| format!("offset {offset} overflows"))?;
    if end > len {
        return Err(format!(
            "{n} bytes at offset {offset} lie past the end of the {len}-byte file"
        ));
    }
    let mut buf = vec![0u8; n as usize];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(|e| e.to_string())?;
    Ok(buf)
}

fn read_tiff(file: &mut File, len: u64, le: bool, big: bool) -> Result<TiffSummary, String> {
    let (ifd0, count_size, entry_size, inline) = if big {
        let h = read_at(file, len, 4, 12)?;
        if uint_at(&h[0..2], le) != 8 || uint_at(&h[2..4], le) != 0 {
            return Err("unexpected value in BigTIFF header".into());
        }
        (uint_at(&h[4..12], le), 8u64, 20u64, 8u64)
    } else {
        (uint_at(&read_at(file, len, 4, 4)?, le), 2, 12, 4)
    };
    if ifd0 < 8 {
        return Err(format!("first IFD offset {ifd0} points into the header"));
    }
    let n = uint_at(&read_at(file, len, ifd0, count_size)?, le);
    if n == 0 || n > MAX_IFD_ENTRIES {
        return Err(format!("first IFD claims {n} entries"));
    }
    let entries = read_at(file, len, ifd0 + count_size, n * entry_size)?;

    let mut t = TiffSummary {
        big,
        width: 0,
        height: 0,
        tiled: false,
        compression: 1,
        samples_per_pixel: 1,
        bits_per_sample: 1,
        vendor: None,
    };
    let (mut tile_w, mut tile_h, mut description) = (false, false, String::new());
    for e in entries.chunks_exact(entry_size as usize) {
        let tag = uint_at(&e[0..2], le);
        let typ = uint_at(&e[2..4], le);
        let (count, value) = if big {
            (uint_at(&e[4..12], le), &e[12..20])
        } else {
            (uint_at(&e[4..8], le), &e[8..12])
        };
        let width = match typ {
            1 | 2 | 6 | 7 => 1,
            3 | 8 => 2,
            4 | 9 | 13 => 4,
            16..=18 => 8,
            _ => continue,
        };
        // First value of the entry, inline or at its offset.
        let first = |file: &mut File| -> Result<u64, String> {
            if count == 0 {
                return Err(format!("tag {tag} has no value"));
            }
            if count * width <= inline {
                Ok(uint_at(&value[..width as usize], le))
            } else {
                let off = uint_at(&value[..inline as usize], le);
                Ok(uint_at(&read_at(file, len, off, width)?, le))
            }
        };
        match tag {
            256 => t.width = first(file)?,
            257 => t.height = first(file)?,
            258 => t.bits_per_sample = first(file)?,
            259 => t.compression = first(file)?,
            277 => t.samples_per_pixel = first(file)?,
            322 => tile_w = true,
            323 => tile_h = true,
            270 if typ == 2 && count > 0 => {
                let n = count.min(MAX_DESCRIPTION);
                let bytes = if count <= inline {
                    value[..count as usize].to_vec()
                } else {
                    read_at(file, len, uint_at(&value[..inline as usize], le), n)?
                };
                description = String::from_utf8_lossy(&bytes).into_owned();
            }
            65420 => t.vendor = Some("Hamamatsu NDPI"),
            _ => {}
        }
    }
    t.tiled = tile_w && tile_h;
    // Walk the rest of the IFD chain: every IFD must lie inside the file (a truncated copy
    // loses its last IFDs) and the chain must end (a cycle would make readers loop).
    let next_size = if big { 8 } else { 4 };
    let mut next = uint_at(
        &read_at(file, len, ifd0 + count_size + n * entry_size, next_size)?,
        le,
    );
    let mut seen = std::collections::HashSet::from([ifd0]);
    while next != 0 {
        if !seen.insert(next) {
            return Err(format!("the IFD chain loops back to offset {next}"));
        }
        if seen.len() as u64 > MAX_IFDS {
            return Err(format!("more than {MAX_IFDS} IFDs"));
        }
        let n = uint_at(
            &read_at(file, len, next, count_size).map_err(|e| {
                format!(
                    "IFD {} is missing: {e}; the file looks truncated",
                    seen.len() - 1
                )
            })?,
            le,
        );
        if n > MAX_IFD_ENTRIES {
            return Err(format!("IFD at offset {next} claims {n} entries"));
        }
        let at = next + count_size + n * entry_size;
        next = uint_at(&read_at(file, len, at, next_size)?, le);
    }
    if t.vendor.is_none() {
        let lower = description.to_ascii_lowercase();
        t.vendor = if description.starts_with("Aperio") {
            Some("Aperio SVS")
        } else if lower.contains("perkinelmer-qpi") {
            Some("PerkinElmer QPTIFF")
        } else if lower.starts_with("<?xml") && lower.contains("leica") {
            Some("Leica SCN")
        } else if lower.contains("dpufsimport") {
            Some("Philips TIFF")
        } else if lower.contains("ventana") {
            Some("Ventana BIF")
        } else {
            None
        };
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    /// A little-endian classic TIFF with one IFD holding the given SHORT/LONG entries.
    fn tiff(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut b = b"II\x2a\x00\x08\x00\x00\x00".to_vec();
        b.extend((entries.len() as u16).to_le_bytes());
        for &(tag, typ, v) in entries {
            b.extend(tag.to_le_bytes());
            b.extend(typ.to_le_bytes());
            b.extend(1u32.to_le_bytes());
            b.extend(v.to_le_bytes());
        }
        b.extend(0u32.to_le_bytes());
        b
    }

    #[test]
    fn reads_a_tiled_tiff_header() {
        let f = write(&tiff(&[
            (256, 4, 10_000_000),
            (257, 4, 20_000),
            (259, 3, 7),
            (322, 3, 256),
            (323, 3, 256),
        ]));
        match sniff(f.path()).unwrap() {
            Detected::Tiff(t) => {
                assert_eq!((t.width, t.height, t.compression), (10_000_000, 20_000, 7));
                assert!(t.tiled && !t.big);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn damaged_tiffs_are_described_not_trusted() {
        // IFD offset past the end of the file.
        let mut b = b"II\x2a\x00".to_vec();
        b.extend(1_000_000u32.to_le_bytes());
        let d = sniff(write(&b).path()).unwrap();
        assert!(matches!(&d, Detected::BrokenTiff { reason } if reason.contains("past the end")));
        // Absurd entry count.
        let mut b = b"II\x2a\x00\x08\x00\x00\x00".to_vec();
        b.extend(60_000u16.to_le_bytes());
        let d = sniff(write(&b).path()).unwrap();
        assert!(matches!(&d, Detected::BrokenTiff { reason } if reason.contains("60000")));
        // A chain that loops back to the first IFD.
        let mut b = tiff(&[(256, 4, 16), (257, 4, 16)]);
        let len = b.len();
        b[len - 4..].copy_from_slice(&8u32.to_le_bytes());
        let d = sniff(write(&b).path()).unwrap();
        assert!(matches!(&d, Detected::BrokenTiff { reason } if reason.contains("loops")));
        // A next-IFD pointer past the end (a truncated file).
        let mut b = tiff(&[(256, 4, 16), (257, 4, 16)]);
        let len = b.len();
        b[len - 4..].copy_from_slice(&4000u32.to_le_bytes());
        let d = sniff(write(&b).path()).unwrap();
        assert!(matches!(&d, Detected::BrokenTiff { reason } if reason.contains("past the end")));
        // Truncated header.
        let d = sniff(write(b"II\x2a\x00\x08").path()).unwrap();
        assert!(matches!(d, Detected::BrokenTiff { .. }));
    }

    #[test]
    fn other_formats() {
        assert_eq!(sniff(write(b"").path()).unwrap(), Detected::Empty);
        let png = sniff(write(b"\x89PNG\r\n\x1a\n....").path()).unwrap();
        assert_eq!(png.format_name(), "PNG image");
        let text = sniff(write(b"hello, this is not a slide\n").path()).unwrap();
        assert_eq!(text.format_name(), "text");
        let mut dcm = vec![0u8; 128];
        dcm.extend(b"DICM....");
        assert_eq!(sniff(write(&dcm).path()).unwrap(), Detected::Dicom);
    }
}
