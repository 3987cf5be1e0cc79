//! Tile and strip decoders for the native TIFF reader.
//!
//! In: one tile's (or strip's) compressed bytes, its expected size in pixels, and how the file
//! says it is encoded. Out: RGB8 pixels, exactly `width * height * 3` bytes, written into the
//! caller's buffer. Output sizes are fixed before decoding, so a hostile tile can never make a
//! decoder allocate more than one tile; a decoder panic is caught and reported as an error.
//!
//! JPEG tiles of the common kind go to Tessera's own decoder (`baseline.rs`, libjpeg's
//! arithmetic, so OpenSlide's pixels), the rest to zune-jpeg.
//!
//! Colour follows OpenSlide: for JPEG the TIFF Photometric tag decides whether the samples are
//! RGB or YCbCr, whatever the JPEG stream's own markers say (Aperio writes RGB JPEGs without
//! Adobe markers); JPEG 2000 compression 33003 is YCbCr without MCT, 33005 RGB with MCT.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Compression schemes the native reader decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Compression 1.
    None,
    /// Compression 5.
    Lzw,
    /// Compression 7, with the TIFF JPEGTables (if any) spliced in front of each tile.
    Jpeg,
    /// Compressions 8 and 32946.
    Deflate,
    /// Aperio 33003: JPEG 2000 codestream holding YCbCr without MCT.
    Jp2kYcbcr,
    /// Aperio 33005: JPEG 2000 codestream with MCT (RGB out).
    Jp2kRgb,
}

impl Codec {
    /// The codec for a TIFF Compression value, or `None` when unsupported.
    pub fn from_tiff(compression: u64) -> Option<Codec> {
        Some(match compression {
            1 => Codec::None,
            5 => Codec::Lzw,
            7 => Codec::Jpeg,
            8 | 32946 => Codec::Deflate,
            33003 => Codec::Jp2kYcbcr,
            33005 => Codec::Jp2kRgb,
            _ => return None,
        })
    }
}

/// How the samples of a tile are laid out, from the IFD.
#[derive(Debug, Clone)]
pub struct Encoding {
    /// Compression.
    pub codec: Codec,
    /// Photometric interpretation: 2 = RGB, 6 = YCbCr.
    pub photometric: u64,
    /// Predictor: 1 = none, 2 = horizontal differencing.
    pub predictor: u64,
    /// The JPEGTables stream (SOI, tables, EOI), if present.
    pub jpeg_tables: Option<Vec<u8>>,
}

/// Decodes `data` into `out` (RGB8, `width * height * 3` bytes).
pub fn decode(
    enc: &Encoding,
    data: &[u8],
    width: usize,
    height: usize,
    out: &mut [u8],
) -> Result<(), String> {
    debug_assert_eq!(out.len(), width * height * 3);
    let result = catch_unwind(AssertUnwindSafe(|| match enc.codec {
        Codec::None => {
            let n = out.len();
            if data.len() < n {
                return Err(format!("{} bytes where {n} are needed", data.len()));
            }
            out.copy_from_slice(&data[..n]);
            undo_predictor(enc.predictor, out, width)
        }
        Codec::Lzw => {
            lzw(data, out)?;
            undo_predictor(enc.predictor, out, width)
        }
        Codec::Deflate => {
            deflate(data, out)?;
            undo_predictor(enc.predictor, out, width)
        }
        Codec::Jpeg => jpeg(enc, data, width, height, out),
        Codec::Jp2kRgb | Codec::Jp2kYcbcr => jp2k(enc.codec, data, width, height, out),
    }));
    match result {
        Ok(r) => r,
        Err(_) => Err("the decoder panicked on this data".into()),
    }
}

fn undo_predictor(predictor: u64, buf: &mut [u8], width: usize) -> Result<(), String> {
    match predictor {
        1 => Ok(()),
        2 => {
            for row in buf.chunks_exact_mut(width * 3) {
                for i in 3..row.len() {
                    row[i] = row[i].wrapping_add(row[i - 3]);
                }
            }
            Ok(())
        }
        p => Err(format!("unsupported predictor {p}")),
    }
}

fn lzw(data: &[u8], out: &mut [u8]) -> Result<(), String> {
    let mut d = weezl::decode::Decoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8);
    let (mut inp, mut written) = (data, 0);
    while written < out.len() {
        let r = d.decode_bytes(inp, &mut out[written..]);
        let status = r.status.map_err(|e| format!("LZW: {e}"))?;
        inp = &inp[r.consumed_in..];
        written += r.consumed_out;
        match status {
            weezl::LzwStatus::Done => break,
            weezl::LzwStatus::NoProgress if r.consumed_out == 0 => break,
            _ => {}
        }
    }
    if written < out.len() {
        return Err(format!(
            "LZW data ends after {written} of {} bytes",
            out.len()
        ));
    }
    Ok(())
}

fn deflate(data: &[u8], out: &mut [u8]) -> Result<(), String> {
    use miniz_oxide::inflate::core::{decompress, inflate_flags, DecompressorOxide};
    use miniz_oxide::inflate::TINFLStatus;
    let mut state = DecompressorOxide::new();
    let flags = inflate_flags::TINFL_FLAG_PARSE_ZLIB_HEADER
        | inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
    let (status, _, written) = decompress(&mut state, data, out, 0, flags);
    match status {
        TINFLStatus::Done | TINFLStatus::HasMoreOutput if written == out.len() => Ok(()),
        TINFLStatus::Done => Err(format!(
            "Deflate data ends after {written} of {} bytes",
            out.len()
        )),
        s => Err(format!("Deflate: {s:?} after {written} bytes")),
    }
}

/// libjpeg's YCbCr → RGB (JFIF, full range), rounded.
fn ycbcr_to_rgb(buf: &mut [u8]) {
    for px in buf.chunks_exact_mut(3) {
        let y = px[0] as f32;
        let cb = px[1] as f32 - 128.0;
        let cr = px[2] as f32 - 128.0;
        let c = |v: f32| v.round().clamp(0.0, 255.0) as u8;
        px[0] = c(y + 1.402 * cr);
        px[1] = c(y - 0.344_136 * cb - 0.714_136 * cr);
        px[2] = c(y + 1.772 * cb);
    }
}

/// Does the JPEG decoder believe this 3-component stream is RGB (and so will not convert it)?
/// Mirrors zune-jpeg: an Adobe APP14 marker with transform 0, or component ids 'R','G','B'.
fn stream_says_rgb(stream: &[u8]) -> bool {
    let mut adobe_rgb = false;
    for segment in super::markers::segments(stream) {
        let Ok((marker, seg, _)) = segment else {
            return false;
        };
        match marker {
            0xEE if seg.starts_with(b"Adobe") && seg.len() >= 12 => adobe_rgb = seg[11] == 0,
            0xC0..=0xC2 if seg.len() >= 15 && seg[5] == 3 => {
                let ids = [seg[6], seg[9], seg[12]];
                return adobe_rgb || ids == [b'R', b'G', b'B'];
            }
            _ => {}
        }
    }
    adobe_rgb
}

/// Rejects a single-scan sequential JPEG whose entropy-coded data holds a marker other than
/// stuffing, restarts and the final EOI. zune-jpeg, even in strict mode, takes a DHT, DQT, DRI,
/// COM or APPn marker there for one between scans, looks for the next scan, meets EOI and
/// reports success with the rest of the tile never written; libjpeg warns ("Corrupt JPEG
/// data"), which OpenSlide makes fatal. Progressive or multi-scan streams are left to the
/// decoder: markers between their scans are legal. Malformed headers are the decoder's to
/// report.
fn check_scan_markers(stream: &[u8]) -> Result<(), String> {
    let mut components = None;
    let mut data_start = None;
    for segment in super::markers::segments(stream) {
        let Ok((marker, seg, end)) = segment else {
            return Ok(());
        };
        match marker {
            0xC0 | 0xC1 => components = seg.get(5).copied(),
            0xC2..=0xCF if marker != 0xC4 && marker != 0xC8 && marker != 0xCC => return Ok(()),
            0xDA if components.is_some() && seg.first().copied() == components => {
                data_start = Some(end)
            }
            _ => {}
        }
    }
    let Some(data_start) = data_start.filter(|&end| end <= stream.len()) else {
        return Ok(());
    };
    let data = &stream[data_start..];
    let mut at = 0;
    while let Some(p) = memchr::memchr(0xFF, &data[at..]) {
        let mut q = at + p + 1;
        while data.get(q) == Some(&0xFF) {
            q += 1;
        }
        match data.get(q) {
            None | Some(0xD9) => return Ok(()),
            Some(0x00) | Some(0xD0..=0xD7) => at = q + 1,
            Some(m) => {
                return Err(format!(
                    "JPEG: marker FF{m:02X} inside the scan data at byte {}",
                    data_start + at + p
                ))
            }
        }
    }
    Ok(())
}

/// The tile's JPEG stream with the level's JPEGTables (without its EOI) spliced in before the
/// tile (without its SOI).
fn spliced<'a>(enc: &Encoding, data: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
    match &enc.jpeg_tables {
        Some(t) if t.len() >= 4 && data.len() >= 2 && data.starts_with(&[0xFF, 0xD8]) => {
            let body = t.strip_suffix(&[0xFF, 0xD9]).unwrap_or(t);
            [body, &data[2..]].concat().into()
        }
        _ => data.into(),
    }
}

/// Decodes only `rect` of a tile into `out` (rows `stride` bytes apart), for a read that needs
/// part of a tile it will not reuse. `Ok(false)` when the tile is not one the partial decoder
/// takes (see [`baseline`](super::baseline)); the caller then decodes the whole tile.
pub fn decode_part(
    enc: &Encoding,
    data: &[u8],
    (width, height): (usize, usize),
    rect: super::baseline::Rect,
    out: &mut [u8],
    stride: usize,
) -> Result<bool, String> {
    if enc.codec != Codec::Jpeg {
        return Ok(false);
    }
    let stream = spliced(enc, data);
    let ycbcr = enc.photometric == 6;
    catch_unwind(AssertUnwindSafe(|| {
        super::baseline::decode(&stream, width, height, rect, ycbcr, out, stride)
    }))
    .unwrap_or_else(|_| Err("the decoder panicked on this data".into()))
}

fn jpeg(
    enc: &Encoding,
    data: &[u8],
    width: usize,
    height: usize,
    out: &mut [u8],
) -> Result<(), String> {
    use zune_jpeg::zune_core::{
        bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions,
    };
    let stream = &*spliced(enc, data);
    // The common tile (baseline, 3 components, restart markers or none) with libjpeg's arithmetic; the
    // rest with zune-jpeg.
    let whole = super::baseline::Rect {
        x: 0,
        y: 0,
        w: width,
        h: height,
    };
    if width > 0
        && height > 0
        && super::baseline::decode(
            stream,
            width,
            height,
            whole,
            enc.photometric == 6,
            out,
            width * 3,
        )?
    {
        return Ok(());
    }
    check_scan_markers(stream)?;
    let says_rgb = stream_says_rgb(stream);
    let want_ycbcr = enc.photometric == 6;
    // Ask for the samples as stored whenever the decoder's guess disagrees with the TIFF.
    let out_cs = if says_rgb || !want_ycbcr {
        if says_rgb {
            ColorSpace::RGB
        } else {
            ColorSpace::YCbCr
        }
    } else {
        ColorSpace::RGB
    };
    // Strict: zune-jpeg otherwise pads a tile whose scan ends early with grey and reports
    // success; OpenSlide makes every libjpeg warning fatal, and so do we.
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .jpeg_set_out_colorspace(out_cs)
        .set_max_width(width.max(1))
        .set_max_height(height.max(1));
    let mut d = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(stream), options);
    d.decode_headers().map_err(|e| format!("JPEG: {e:?}"))?;
    let (w, h) = d.dimensions().ok_or("JPEG: no dimensions")?;
    if (w, h) != (width, height) {
        return Err(format!("JPEG is {w} × {h}, the tile is {width} × {height}"));
    }
    match d.input_colorspace() {
        Some(cs) if cs.num_components() == 3 => {}
        other => return Err(format!("JPEG colour space {other:?} is not 3-component")),
    }
    d.decode_into(out).map_err(|e| format!("JPEG: {e:?}"))?;
    if want_ycbcr && says_rgb {
        ycbcr_to_rgb(out);
    }
    Ok(())
}

fn jp2k(
    codec: Codec,
    data: &[u8],
    width: usize,
    height: usize,
    out: &mut [u8],
) -> Result<(), String> {
    use hayro_jpeg2000::{DecodeSettings, DecoderContext, Image};
    let image =
        Image::new(data, &DecodeSettings::default()).map_err(|e| format!("JPEG 2000: {e:?}"))?;
    let (w, h) = (image.width() as usize, image.height() as usize);
    if (w, h) != (width, height) {
        return Err(format!(
            "JPEG 2000 codestream is {w} × {h}, the tile is {width} × {height}"
        ));
    }
    let mut ctx = DecoderContext::default();
    let decoded = image
        .decode(&mut ctx)
        .map_err(|e| format!("JPEG 2000: {e:?}"))?;
    if decoded.components().len() != 3 {
        return Err(format!(
            "JPEG 2000 with {} components",
            decoded.components().len()
        ));
    }
    decoded.store_u8_into(out);
    // 33003 holds YCbCr. The decoder converts it itself only when it recognises sYCC from the
    // chroma subsampling; otherwise the samples come through unconverted.
    if codec == Codec::Jp2kYcbcr && !siz_is_subsampled_ycc(data) {
        ycbcr_to_rgb(out);
    }
    Ok(())
}

/// True when the codestream's SIZ marker subsamples components 1 and 2 alike and more than
/// component 0 (the decoder's rule for treating the image as sYCC).
fn siz_is_subsampled_ycc(cs: &[u8]) -> bool {
    // SOC (2) + SIZ marker (2) + Lsiz (2) + Rsiz (2) + 8 × u32 (32) + Csiz (2) = 42.
    if cs.len() < 42 + 9 || cs[0..4] != [0xFF, 0x4F, 0xFF, 0x51] {
        return false;
    }
    let comp = |i: usize| (cs[42 + 3 * i + 1], cs[42 + 3 * i + 2]);
    let (y, cb, cr) = (comp(0), comp(1), comp(2));
    cb == cr && cb != y && cb.0 >= y.0 && cb.1 >= y.1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(codec: Codec, predictor: u64) -> Encoding {
        Encoding {
            codec,
            photometric: 2,
            predictor,
            jpeg_tables: None,
        }
    }

    #[test]
    fn raw_deflate_and_predictor() {
        let pixels: Vec<u8> = (0..4 * 2 * 3).map(|i| (i * 7) as u8).collect();
        let mut out = vec![0; pixels.len()];
        decode(&enc(Codec::None, 1), &pixels, 4, 2, &mut out).unwrap();
        assert_eq!(out, pixels);
        let z = miniz_oxide::deflate::compress_to_vec_zlib(&pixels, 6);
        decode(&enc(Codec::Deflate, 1), &z, 4, 2, &mut out).unwrap();
        assert_eq!(out, pixels);
        // Horizontal differencing: encode, then decode back.
        let mut diff = pixels.clone();
        for row in diff.chunks_exact_mut(12) {
            for i in (3..12).rev() {
                row[i] = row[i].wrapping_sub(row[i - 3]);
            }
        }
        let z = miniz_oxide::deflate::compress_to_vec_zlib(&diff, 6);
        decode(&enc(Codec::Deflate, 2), &z, 4, 2, &mut out).unwrap();
        assert_eq!(out, pixels);
    }

    /// A JPEG tile cut short inside its entropy-coded data, or with a stray marker in its scan,
    /// is an error (as OpenSlide makes libjpeg's warnings fatal), never a tile padded with grey
    /// or left partly unwritten.
    /// Not caught: a scan cut short and then closed with a fresh end-of-image marker, which
    /// zune-jpeg decodes by padding the scan with zero bits (a valid code in most tables).
    #[test]
    fn a_truncated_or_damaged_jpeg_tile_is_an_error() {
        let (w, h) = (64usize, 64usize);
        let pixels: Vec<u8> = (0..w * h * 3).map(|i| ((i * 37) % 251) as u8).collect();
        let mut jpeg = Vec::new();
        jpeg_encoder::Encoder::new(&mut jpeg, 90)
            .encode(&pixels, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let mut e = enc(Codec::Jpeg, 1);
        e.photometric = 6;
        let mut out = vec![0; w * h * 3];
        decode(&e, &jpeg, w, h, &mut out).unwrap();
        // Cut inside the scan.
        let cut = &jpeg[..jpeg.len() * 2 / 3];
        let err = decode(&e, cut, w, h, &mut out).unwrap_err();
        assert!(err.starts_with("JPEG"), "{err}");
        // Damage: a stray marker in the middle of the scan. A COM or APPn segment there is
        // taken by zune-jpeg for one between scans: it then meets EOI and reports success with
        // the rest of the tile unwritten, so the scan is checked before decoding.
        for marker in [[0xFF, 0xC4], [0xFF, 0xFE], [0xFF, 0xE1]] {
            let mid = jpeg.len() / 2;
            let damaged = [
                &jpeg[..mid],
                &marker[..],
                &[0x00, 0x04, 0x00, 0x00],
                &jpeg[mid..],
            ]
            .concat();
            let err = decode(&e, &damaged, w, h, &mut out).unwrap_err();
            assert!(err.starts_with("JPEG"), "{marker:02X?}: {err}");
        }
        // Stuffed bytes, fill bytes and restart markers are not damage.
        assert!(check_scan_markers(&jpeg).is_ok());
        let sos = jpeg.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let scan = sos + 2 + u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]) as usize;
        let fine = [
            &jpeg[..scan],
            &[0x12, 0xFF, 0x00, 0xFF, 0xFF, 0xD3, 0x34],
            &jpeg[scan..],
        ]
        .concat();
        assert!(check_scan_markers(&fine).is_ok());
    }

    #[test]
    fn lzw_round_trip() {
        let pixels: Vec<u8> = (0..64 * 3).map(|i| (i % 13) as u8).collect();
        let mut e = weezl::encode::Encoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8);
        let z = e.encode(&pixels).unwrap();
        let mut out = vec![0; pixels.len()];
        decode(&enc(Codec::Lzw, 1), &z, 8, 8, &mut out).unwrap();
        assert_eq!(out, pixels);
    }

    #[test]
    fn short_or_garbage_data_is_an_error_not_pixels() {
        let mut out = vec![0; 4 * 4 * 3];
        for codec in [
            Codec::None,
            Codec::Lzw,
            Codec::Deflate,
            Codec::Jpeg,
            Codec::Jp2kRgb,
        ] {
            let e = decode(&enc(codec, 1), b"\xFF\xD8garbage", 4, 4, &mut out);
            assert!(e.is_err(), "{codec:?} accepted garbage");
        }
        let z = miniz_oxide::deflate::compress_to_vec_zlib(&[1, 2, 3], 6);
        assert!(decode(&enc(Codec::Deflate, 1), &z, 4, 4, &mut out)
            .unwrap_err()
            .contains("ends after 3"));
    }

    /// Regression (fuzzing, 2026-11-25): a marker segment of length 0 or 1 made the marker
    /// scan slice backwards and panic.
    #[test]
    fn marker_segments_shorter_than_their_length_field_do_not_panic() {
        for len in [0u8, 1] {
            let s = [0xFF, 0xD8, 0xFF, 0xE0, 0x00, len, 0xFF, 0xC0, 0x00, 0x11];
            assert!(!stream_says_rgb(&s));
            let mut out = vec![0; 4 * 4 * 3];
            let e = Encoding {
                codec: Codec::Jpeg,
                photometric: 2,
                predictor: 1,
                jpeg_tables: None,
            };
            assert!(decode(&e, &s, 4, 4, &mut out).is_err());
        }
    }

    #[test]
    fn adobe_and_component_ids_are_recognised() {
        // SOI, SOF0 with ids R,G,B.
        let mut s = vec![0xFF, 0xD8, 0xFF, 0xC0, 0, 17, 8, 0, 16, 0, 16, 3];
        s.extend([b'R', 0x11, 0, b'G', 0x11, 0, b'B', 0x11, 0]);
        assert!(stream_says_rgb(&s));
        s[12] = 1;
        assert!(!stream_says_rgb(&s));
    }
}
