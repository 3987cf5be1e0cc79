//! A bounded TIFF / BigTIFF structure parser for the native reader.
//!
//! In: an open file. Out: its IFDs (main chain and the first IFD's SubIFDs) with typed access to
//! tag values. Every offset is checked against the file's length, arrays may not be larger than
//! the file, the IFD chain may not loop or exceed [`MAX_IFDS`], and reads use positional I/O so
//! one `Tiff` serves many threads. No pixel data is read here. Errors are plain strings; the
//! reader wraps them in typed errors naming the file.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Where TIFF bytes come from: a file (positional reads, shareable across threads) or memory.
pub trait Source: Send + Sync + std::fmt::Debug {
    /// Total length in bytes.
    fn size(&self) -> std::io::Result<u64>;
    /// Fills `buf` from `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl Source for File {
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl Source for Vec<u8> {
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.len() as u64)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Most IFDs followed in one file.
pub const MAX_IFDS: usize = 1024;
/// Most entries in one IFD.
const MAX_ENTRIES: u64 = 4096;
/// Most values in one array tag (tile offsets of a 1,000,000² slide in 256² tiles fit: 15.3 M).
const MAX_ARRAY: u64 = 64 * 1024 * 1024;

/// Well-known tags.
#[allow(missing_docs)]
pub mod tag {
    pub const NEW_SUBFILE_TYPE: u16 = 254;
    pub const IMAGE_WIDTH: u16 = 256;
    pub const IMAGE_LENGTH: u16 = 257;
    pub const BITS_PER_SAMPLE: u16 = 258;
    pub const COMPRESSION: u16 = 259;
    pub const PHOTOMETRIC: u16 = 262;
    pub const IMAGE_DESCRIPTION: u16 = 270;
    pub const MAKE: u16 = 271;
    pub const MODEL: u16 = 272;
    pub const STRIP_OFFSETS: u16 = 273;
    pub const SAMPLES_PER_PIXEL: u16 = 277;
    pub const ROWS_PER_STRIP: u16 = 278;
    pub const STRIP_BYTE_COUNTS: u16 = 279;
    pub const X_RESOLUTION: u16 = 282;
    pub const Y_RESOLUTION: u16 = 283;
    pub const PLANAR_CONFIGURATION: u16 = 284;
    pub const RESOLUTION_UNIT: u16 = 296;
    pub const SOFTWARE: u16 = 305;
    pub const DATE_TIME: u16 = 306;
    pub const PREDICTOR: u16 = 317;
    pub const TILE_WIDTH: u16 = 322;
    pub const TILE_LENGTH: u16 = 323;
    pub const TILE_OFFSETS: u16 = 324;
    pub const TILE_BYTE_COUNTS: u16 = 325;
    pub const SUB_IFDS: u16 = 330;
    pub const EXTRA_SAMPLES: u16 = 338;
    pub const SAMPLE_FORMAT: u16 = 339;
    pub const JPEG_TABLES: u16 = 347;
    pub const YCBCR_SUBSAMPLING: u16 = 530;
    pub const ICC_PROFILE: u16 = 34675;
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    typ: u16,
    count: u64,
    /// The raw value field: the value itself when it fits, else its offset.
    field: [u8; 8],
}

/// One image file directory.
#[derive(Debug, Clone)]
pub struct Ifd {
    /// Byte offset of the IFD in the file.
    pub offset: u64,
    /// Index in the main chain; SubIFDs carry their parent's index.
    pub index: usize,
    /// True for an IFD reached through the SubIFDs tag.
    pub is_sub_ifd: bool,
    entries: BTreeMap<u16, Entry>,
}

/// A byte source with its length: positional reads, each checked against the length.
#[derive(Debug)]
pub struct SourceFile {
    file: Box<dyn Source>,
    len: u64,
}

impl SourceFile {
    /// Wraps `file`, reading its length once.
    pub fn new(file: impl Source + 'static) -> Result<SourceFile, String> {
        let len = file.size().map_err(|e| e.to_string())?;
        Ok(SourceFile {
            file: Box::new(file),
            len,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty source.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads `n` bytes at `offset`, refusing ranges outside the file.
    pub fn read_at(&self, offset: u64, n: u64) -> Result<Vec<u8>, String> {
        let end = offset
            .checked_add(n)
            .ok_or_else(|| format!("offset {offset} + {n} overflows"))?;
        if end > self.len {
            return Err(format!(
                "{n} bytes at offset {offset} lie past the end of the {}-byte file",
                self.len
            ));
        }
        let mut buf = vec![0u8; n as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| format!("reading {n} bytes at offset {offset}: {e}"))?;
        Ok(buf)
    }
}

/// A parsed TIFF file.
#[derive(Debug)]
pub struct Tiff {
    file: SourceFile,
    le: bool,
    big: bool,
    /// The main IFD chain in file order, then IFD 0's SubIFDs.
    pub ifds: Vec<Ifd>,
}

fn type_size(typ: u16) -> Option<u64> {
    Some(match typ {
        1 | 2 | 6 | 7 => 1,
        3 | 8 => 2,
        4 | 9 | 11 | 13 => 4,
        5 | 10 | 12 | 16..=18 => 8,
        _ => return None,
    })
}

impl Tiff {
    /// Parses the header and IFDs of `file`.
    pub fn parse(file: impl Source + 'static) -> Result<Tiff, String> {
        let mut t = Tiff {
            file: SourceFile::new(file)?,
            le: true,
            big: false,
            ifds: Vec::new(),
        };
        let head = t.read_at(0, 8)?;
        t.le = match &head[0..2] {
            b"II" => true,
            b"MM" => false,
            _ => return Err("not a TIFF file".into()),
        };
        let first = match t.uint(&head[2..4]) {
            42 => t.uint(&head[4..8]),
            43 => {
                t.big = true;
                let h = t.read_at(4, 12)?;
                if t.uint(&h[0..2]) != 8 || t.uint(&h[2..4]) != 0 {
                    return Err("unexpected value in BigTIFF header".into());
                }
                t.uint(&h[4..12])
            }
            v => return Err(format!("TIFF version {v} is neither 42 nor 43")),
        };
        let mut seen = HashSet::new();
        let mut next = first;
        while next != 0 {
            if !seen.insert(next) {
                return Err(format!("the IFD chain loops back to offset {next}"));
            }
            if seen.len() > MAX_IFDS {
                return Err(format!("more than {MAX_IFDS} IFDs"));
            }
            let index = t.ifds.len();
            let (ifd, after) = t
                .read_ifd(next, index, false)
                .map_err(|e| format!("IFD {index}: {e}"))?;
            t.ifds.push(ifd);
            next = after;
        }
        if t.ifds.is_empty() {
            return Err("no IFDs".into());
        }
        // Pyramids stored as SubIFDs of the first IFD (OME-TIFF and others).
        if let Some(subs) = t.uints(&t.ifds[0].clone(), tag::SUB_IFDS)? {
            for off in subs {
                if !seen.insert(off) || seen.len() > MAX_IFDS {
                    return Err(format!(
                        "SubIFD at offset {off} repeats or exceeds the limit"
                    ));
                }
                let (ifd, _) = t
                    .read_ifd(off, 0, true)
                    .map_err(|e| format!("SubIFD at {off}: {e}"))?;
                t.ifds.push(ifd);
            }
        }
        Ok(t)
    }

    fn uint(&self, b: &[u8]) -> u64 {
        let mut v = 0u64;
        for i in 0..b.len() {
            let byte = if self.le { b[b.len() - 1 - i] } else { b[i] };
            v = (v << 8) | byte as u64;
        }
        v
    }

    /// Reads `n` bytes at `offset`, refusing ranges outside the file.
    pub fn read_at(&self, offset: u64, n: u64) -> Result<Vec<u8>, String> {
        self.file.read_at(offset, n)
    }

    /// The file, for reading tiles once the IFDs are parsed.
    pub fn into_file(self) -> SourceFile {
        self.file
    }

    fn read_ifd(&self, offset: u64, index: usize, is_sub_ifd: bool) -> Result<(Ifd, u64), String> {
        let (count_size, entry_size, next_size) = if self.big { (8, 20, 8) } else { (2, 12, 4) };
        let n = self.uint(&self.read_at(offset, count_size)?);
        if n == 0 || n > MAX_ENTRIES {
            return Err(format!("claims {n} entries"));
        }
        let raw = self.read_at(offset + count_size, n * entry_size + next_size)?;
        let mut entries = BTreeMap::new();
        for e in raw[..(n * entry_size) as usize].chunks_exact(entry_size as usize) {
            let tag = self.uint(&e[0..2]) as u16;
            let typ = self.uint(&e[2..4]) as u16;
            let (count, value) = if self.big {
                (self.uint(&e[4..12]), &e[12..20])
            } else {
                (self.uint(&e[4..8]), &e[8..12])
            };
            let mut field = [0u8; 8];
            field[..value.len()].copy_from_slice(value);
            entries.insert(tag, Entry { typ, count, field });
        }
        let next = self.uint(&raw[(n * entry_size) as usize..]);
        Ok((
            Ifd {
                offset,
                index,
                is_sub_ifd,
                entries,
            },
            next,
        ))
    }

    /// The raw bytes of a tag's values, bounded by the file and [`MAX_ARRAY`] values.
    fn raw(&self, ifd: &Ifd, tag: u16) -> Result<Option<(u16, u64, Vec<u8>)>, String> {
        let Some(e) = ifd.entries.get(&tag) else {
            return Ok(None);
        };
        let Some(size) = type_size(e.typ) else {
            return Err(format!("tag {tag} has unknown type {}", e.typ));
        };
        if e.count > MAX_ARRAY {
            return Err(format!("tag {tag} claims {} values", e.count));
        }
        let bytes = e.count * size;
        let inline = if self.big { 8 } else { 4 };
        let data = if bytes <= inline {
            e.field[..bytes as usize].to_vec()
        } else {
            let off = self.uint(&e.field[..inline as usize]);
            self.read_at(off, bytes)
                .map_err(|err| format!("tag {tag}: {err}"))?
        };
        Ok(Some((e.typ, e.count, data)))
    }

    /// True when the IFD has the tag.
    pub fn has(&self, ifd: &Ifd, tag: u16) -> bool {
        ifd.entries.contains_key(&tag)
    }

    /// All values of an unsigned integer tag (BYTE, SHORT, LONG, LONG8, IFD, IFD8).
    pub fn uints(&self, ifd: &Ifd, tag: u16) -> Result<Option<Vec<u64>>, String> {
        let Some((typ, _, data)) = self.raw(ifd, tag)? else {
            return Ok(None);
        };
        let size = match typ {
            1 | 7 => 1,
            3 => 2,
            4 | 13 => 4,
            16 | 18 => 8,
            t => return Err(format!("tag {tag} has type {t}, not an unsigned integer")),
        };
        Ok(Some(
            data.chunks_exact(size).map(|c| self.uint(c)).collect(),
        ))
    }

    /// The first value of an unsigned integer tag.
    pub fn uint_tag(&self, ifd: &Ifd, tag: u16) -> Result<Option<u64>, String> {
        match self.uints(ifd, tag)? {
            Some(v) => v
                .first()
                .copied()
                .map(Some)
                .ok_or_else(|| format!("tag {tag} has no value")),
            None => Ok(None),
        }
    }

    /// A RATIONAL tag's first value.
    pub fn rational(&self, ifd: &Ifd, tag: u16) -> Result<Option<f64>, String> {
        let Some((typ, _, data)) = self.raw(ifd, tag)? else {
            return Ok(None);
        };
        if typ != 5 || data.len() < 8 {
            return Err(format!("tag {tag} is not a RATIONAL"));
        }
        let (n, d) = (self.uint(&data[0..4]), self.uint(&data[4..8]));
        Ok((d != 0).then(|| n as f64 / d as f64))
    }

    /// The bytes of an ASCII, BYTE or UNDEFINED tag, at most `max` of them.
    pub fn bytes(&self, ifd: &Ifd, tag: u16, max: u64) -> Result<Option<Vec<u8>>, String> {
        match ifd.entries.get(&tag) {
            Some(e) if e.count > max => Err(format!("tag {tag} holds {} bytes", e.count)),
            Some(_) => Ok(self.raw(ifd, tag)?.map(|(_, _, d)| d)),
            None => Ok(None),
        }
    }

    /// An ASCII tag as text, without its trailing NULs.
    pub fn ascii(&self, ifd: &Ifd, tag: u16, max: u64) -> Result<Option<String>, String> {
        Ok(self.bytes(ifd, tag, max)?.map(|b| {
            let s = String::from_utf8_lossy(&b).into_owned();
            s.trim_end_matches('\0').to_string()
        }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a little-endian classic TIFF: each IFD is a list of (tag, type, values); values
    /// longer than 4 bytes are stored after the IFDs. Returns the bytes.
    pub fn build(ifds: &[Vec<(u16, u16, Vec<u32>)>]) -> Vec<u8> {
        let mut out = b"II\x2a\x00".to_vec();
        out.extend(8u32.to_le_bytes());
        // Lay out IFDs first, data after.
        let ifd_sizes: Vec<usize> = ifds.iter().map(|e| 2 + e.len() * 12 + 4).collect();
        let mut data_off = 8 + ifd_sizes.iter().sum::<usize>();
        let mut data = Vec::new();
        let mut ifd_off = 8;
        for (i, entries) in ifds.iter().enumerate() {
            out.extend((entries.len() as u16).to_le_bytes());
            for (tag, typ, vals) in entries {
                let size = if *typ == 3 { 2 } else { 4 };
                let mut bytes = Vec::new();
                for v in vals {
                    if size == 2 {
                        bytes.extend((*v as u16).to_le_bytes());
                    } else {
                        bytes.extend(v.to_le_bytes());
                    }
                }
                out.extend(tag.to_le_bytes());
                out.extend(typ.to_le_bytes());
                out.extend((vals.len() as u32).to_le_bytes());
                if bytes.len() <= 4 {
                    bytes.resize(4, 0);
                    out.extend(&bytes);
                } else {
                    out.extend((data_off as u32).to_le_bytes());
                    data_off += bytes.len();
                    data.extend(bytes);
                }
            }
            ifd_off += ifd_sizes[i];
            let next = if i + 1 < ifds.len() {
                ifd_off as u32
            } else {
                0
            };
            out.extend(next.to_le_bytes());
        }
        out.extend(data);
        out
    }

    fn parse(bytes: &[u8]) -> Result<Tiff, String> {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        Tiff::parse(f)
    }

    #[test]
    fn parses_chains_and_arrays() {
        let t = parse(&build(&[
            vec![(256, 4, vec![1000]), (324, 4, vec![10, 20, 30])],
            vec![(256, 3, vec![500])],
        ]))
        .unwrap();
        assert_eq!(t.ifds.len(), 2);
        assert_eq!(t.uint_tag(&t.ifds[0], 256).unwrap(), Some(1000));
        assert_eq!(t.uints(&t.ifds[0], 324).unwrap(), Some(vec![10, 20, 30]));
        assert_eq!(t.uint_tag(&t.ifds[1], 256).unwrap(), Some(500));
        assert_eq!(t.uint_tag(&t.ifds[1], 257).unwrap(), None);
    }

    #[test]
    fn hostile_structures_are_refused() {
        // A loop: IFD 0's next pointer points at itself.
        let mut b = build(&[vec![(256, 4, vec![1])]]);
        let n = b.len();
        b[n - 4..].copy_from_slice(&8u32.to_le_bytes());
        assert!(parse(&b).unwrap_err().contains("loops"));
        // An array past the end of the file.
        let mut b = build(&[vec![(324, 4, vec![1, 2, 3])]]);
        let off = 8 + 2 + 8; // value field of the only entry
        b[off..off + 4].copy_from_slice(&1_000_000u32.to_le_bytes());
        let t = parse(&b).unwrap();
        assert!(t
            .uints(&t.ifds[0], 324)
            .unwrap_err()
            .contains("past the end"));
        // A count so large its byte size overflows.
        let mut b = build(&[vec![(324, 4, vec![1, 2, 3])]]);
        b[8 + 2 + 4..8 + 2 + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        let t = parse(&b).unwrap();
        assert!(t.uints(&t.ifds[0], 324).is_err());
        // Garbage.
        assert!(parse(b"II\x2a\x00").is_err());
        assert!(parse(b"XX\x2a\x00\x08\x00\x00\x00").is_err());
    }
}
