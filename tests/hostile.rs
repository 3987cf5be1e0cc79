//! Bad input: corrupt, unsupported, truncated and crafted files, odd paths and bad requests.
//! Each gets its typed error naming the file; nothing panics or returns pixels it did not read.

use std::io::Write;
use std::path::Path;

use tessera::{Level0Px, Limits, Size, Slide, SlideConfig, SlideError as Error};

use crate::require;
use crate::util::*;

fn open_err(path: &Path) -> Error {
    match Slide::open(path) {
        Ok(s) => panic!("{} opened: {s:?}", path.display()),
        Err(e) => {
            let name = path.file_name().unwrap().to_string_lossy();
            assert!(
                e.to_string().contains(&*name),
                "message does not name the file: {e}"
            );
            e
        }
    }
}

#[test]
fn corrupt_files_get_their_variants() {
    let dir = require!(data_and_openslide("corrupt"));
    let e = open_err(&dir.join("broken.svs"));
    assert!(
        matches!(&e, Error::NotASlide { detected, .. } if detected.contains("text")),
        "{e}"
    );
    let e = open_err(&dir.join("unopenable.tiff"));
    assert!(
        matches!(&e, Error::Unsupported { reason, .. } if reason.contains("52479")),
        "{e}"
    );
}

#[test]
fn unreadable_svs_fails_every_read_and_stays_poisoned() {
    let path = require!(data_and_openslide("corrupt/unreadable.svs"));
    let slide = open_as(&path, tessera::BackendChoice::OpenSlide);
    assert_eq!(slide.dimensions(), Size::new(16, 16));
    let first = slide
        .read_region(Level0Px::new(0, 0), 0, Size::new(16, 16))
        .unwrap_err();
    assert!(
        matches!(&first, Error::RegionRead { message, .. } if message.contains("Bogus marker length")),
        "{first}"
    );
    let again = slide
        .read_region(Level0Px::new(0, 0), 0, Size::new(4, 4))
        .unwrap_err();
    assert!(
        matches!(&again, Error::Poisoned { first_error, .. } if first_error.contains("Bogus")),
        "{again}"
    );
    assert!(again.to_string().contains("unreadable.svs"));
    // The native reader names the tile, and fails again on every read (nothing is cached).
    let native = open_as(&path, tessera::BackendChoice::Native);
    for _ in 0..2 {
        let e = native
            .read_region(Level0Px::new(0, 0), 0, Size::new(16, 16))
            .unwrap_err();
        assert!(
            matches!(&e, Error::TileDecode { level: 0, tile, .. } if tile.col == 0 && tile.row == 0),
            "{e}"
        );
    }
    // `info` checks pixels, so it reports the file as failed rather than fine.
    let info = tessera::info::describe(&path, &SlideConfig::default()).unwrap_err();
    assert!(matches!(info, Error::TileDecode { .. }), "{info}");
}

#[test]
fn unsupported_files_get_clear_errors() {
    let dir = require!(data_and_openslide("unsupported"));
    for (name, not_a_slide) in [
        ("kidney-stripped-rgb.tif", true),
        ("gray16-stripped.tif", true),
        ("vectra-fluorescence.qptiff", true),
        ("sm_image_grayscale.dcm", false),
        ("sm_image_jpegls.dcm", false),
        ("dicom-label-only", false),
        ("dicom-label-concat", false),
    ] {
        let e = open_err(&dir.join(name));
        if not_a_slide {
            assert!(matches!(e, Error::NotASlide { .. }), "{name}: {e}");
        } else {
            assert!(
                matches!(&e, Error::Unsupported { format, .. } if format == "DICOM WSI"),
                "{name}: {e}"
            );
        }
    }
    let e = open_err(&dir.join("kidney-stripped-rgb.tif"));
    assert!(e.to_string().contains("stripped (untiled) TIFF"), "{e}");
}

#[test]
fn paths_with_spaces_and_non_ascii_characters_open() {
    let src = require!(data_and_openslide("slides/aperio/CMU-1-Small-Region.svs"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a folder with spaces – ünïcødé");
    std::fs::create_dir(&dir).unwrap();
    let copy = dir.join("Schnitt Nr. 1 ☃ 病理.svs");
    std::fs::copy(&src, &copy).unwrap();
    let a = Slide::open(&src).unwrap();
    let b = Slide::open(&copy).unwrap();
    assert_eq!(a.dimensions(), b.dimensions());
    let at = (Level0Px::new(700, 900), 0, Size::new(64, 48));
    assert!(a.read_region(at.0, at.1, at.2).unwrap() == b.read_region(at.0, at.1, at.2).unwrap());
    let out = tessera(&[std::ffi::OsStr::new("info"), copy.as_os_str()], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("Schnitt Nr. 1 ☃ 病理.svs"));
}

#[test]
fn directories_empty_and_missing_files() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open_err(tmp.path());
    assert!(
        matches!(&e, Error::NotASlide { detected, .. } if detected.contains("directory")),
        "{e}"
    );
    let empty = tmp.path().join("empty.svs");
    std::fs::File::create(&empty).unwrap();
    let e = open_err(&empty);
    assert!(
        matches!(&e, Error::NotASlide { detected, .. } if detected.contains("empty")),
        "{e}"
    );
    let e = open_err(&tmp.path().join("missing.svs"));
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
}

#[test]
fn truncated_copies_never_yield_pixels_as_if_whole() {
    let src = require!(data_and_openslide("slides/aperio/CMU-1-Small-Region.svs"));
    let bytes = std::fs::read(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("truncated.svs");
    for keep in [
        7,
        4096,
        bytes.len() / 3,
        bytes.len() / 2,
        bytes.len() - 30_000,
    ] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        match Slide::open(&path) {
            Err(e) => {
                assert!(
                    matches!(e, Error::Corrupt { .. } | Error::NotASlide { .. }),
                    "{keep} bytes: {e}"
                );
                assert!(e.to_string().contains("truncated.svs"));
            }
            Ok(slide) => {
                let whole = slide.read_region(Level0Px::new(0, 0), 0, slide.dimensions());
                assert!(
                    whole.is_err(),
                    "{keep} bytes: the whole level read as if intact"
                );
            }
        }
    }
}

/// A classic little-endian TIFF whose one tiled IFD claims `side` × `side` pixels.
fn crafted_tiff(side: u32) -> Vec<u8> {
    let entries: [(u16, u16, u32); 7] = [
        (256, 4, side),
        (257, 4, side),
        (258, 3, 8),
        (259, 3, 7),
        (277, 3, 3),
        (322, 3, 256),
        (323, 3, 256),
    ];
    let mut b = b"II\x2a\x00\x08\x00\x00\x00".to_vec();
    b.extend((entries.len() as u16).to_le_bytes());
    for (tag, typ, v) in entries {
        b.extend(tag.to_le_bytes());
        b.extend(typ.to_le_bytes());
        b.extend(1u32.to_le_bytes());
        b.extend(v.to_le_bytes());
    }
    b.extend(0u32.to_le_bytes());
    b
}

#[test]
fn a_tiff_claiming_ten_million_squared_pixels_is_stopped_by_the_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("huge.tiff");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&crafted_tiff(10_000_000))
        .unwrap();
    // Refused from the header alone, before any backend is loaded or allocates.
    let e = open_err(&path);
    assert!(
        matches!(
            e,
            Error::LimitExceeded {
                value: 10_000_000,
                limit: 1_000_000,
                ..
            }
        ),
        "{e}"
    );
    // The limit is configuration: a lower one refuses a smaller claim too.
    std::fs::write(&path, crafted_tiff(50_000)).unwrap();
    let config = SlideConfig {
        limits: Limits {
            max_level0_width: 40_000,
            ..Limits::default()
        },
        ..SlideConfig::default()
    };
    let e = Slide::open_with(&path, &config).unwrap_err();
    assert!(
        matches!(
            e,
            Error::LimitExceeded {
                what: "level-0 width",
                ..
            }
        ),
        "{e}"
    );
    // Through the CLI, with OpenSlide disabled to prove the check needs none.
    std::fs::write(&path, crafted_tiff(10_000_000)).unwrap();
    let out = tessera(
        &[std::ffi::OsStr::new("info"), path.as_os_str()],
        &[("TESSERA_OPENSLIDE", std::ffi::OsStr::new("none"))],
    );
    assert_eq!(code(&out), 3);
    assert!(
        stderr(&out).contains("over the limit of 1000000"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn region_requests_are_validated_before_reading() {
    let path = require!(data_and_openslide("slides/generic-tiff/boxes.tiff"));
    let slide = Slide::open(&path).unwrap();
    let read = |x, y, level, w, h| slide.read_region(Level0Px::new(x, y), level, Size::new(w, h));
    assert!(matches!(
        read(0, 0, 4, 1, 1),
        Err(Error::LevelOutOfRange {
            level: 4,
            level_count: 4,
            ..
        })
    ));
    assert!(matches!(
        read(0, 0, 0, 0, 5),
        Err(Error::InvalidRegion { .. })
    ));
    assert!(matches!(
        read(300, 0, 0, 5, 5),
        Err(Error::RegionOutOfBounds { .. })
    ));
    assert!(matches!(
        read(-5, 0, 0, 5, 5),
        Err(Error::RegionOutOfBounds { .. })
    ));
    assert!(matches!(
        read(0, 250, 0, 5, 5),
        Err(Error::RegionOutOfBounds { .. })
    ));
    // Level 3 is 37 × 31: a level-0 location inside level 0 but beyond level 3's extent.
    assert!(read(296, 0, 3, 1, 1).is_ok());
    assert!(matches!(
        read(i64::MAX, 0, 0, 1, 1),
        Err(Error::InvalidRegion { .. })
    ));
    // 100 000 × 100 000 is refused without allocating 30 GB.
    assert!(matches!(
        read(0, 0, 0, 100_000, 100_000),
        Err(Error::LimitExceeded {
            what: "region size in pixels",
            ..
        })
    ));
    assert!(matches!(
        read(0, 0, 0, u64::MAX, 2),
        Err(Error::LimitExceeded { .. })
    ));
    // One pixel past the edge still overlaps: allowed, outside part white.
    let r = read(299, 249, 0, 2, 2).unwrap();
    assert_eq!(r.get_pixel(1, 1).0, [255, 255, 255]);
}

/// Hostile TIFFs for the native reader, built byte by byte.
mod native {
    use super::*;
    use tessera::BackendChoice;

    /// A little-endian classic TIFF with one IFD of (tag, type, values); arrays and
    /// `payload` are laid out after the IFD. Offsets in tag 324 that equal `u32::MAX` are
    /// replaced by the payload's offset.
    fn tiff(entries: &[(u16, u16, Vec<u32>)], payload: &[u8]) -> Vec<u8> {
        let ifd_len = 2 + entries.len() * 12 + 4;
        let mut data_off = 8 + ifd_len;
        let mut arrays = Vec::new();
        let mut out = b"II\x2a\x00\x08\x00\x00\x00".to_vec();
        out.extend((entries.len() as u16).to_le_bytes());
        let total_arrays: usize = entries
            .iter()
            .map(|(_, t, v)| v.len() * if *t == 3 { 2 } else { 4 })
            .filter(|&n| n > 4)
            .sum();
        let payload_off = (8 + ifd_len + total_arrays) as u32;
        for (tag, typ, vals) in entries {
            let size = if *typ == 3 { 2 } else { 4 };
            let mut bytes = Vec::new();
            for &v in vals {
                let v = if *tag == 324 && v == u32::MAX {
                    payload_off
                } else {
                    v
                };
                if size == 2 {
                    bytes.extend((v as u16).to_le_bytes());
                } else {
                    bytes.extend(v.to_le_bytes());
                }
            }
            out.extend(tag.to_le_bytes());
            out.extend(typ.to_le_bytes());
            out.extend((vals.len() as u32).to_le_bytes());
            if bytes.len() <= 4 {
                bytes.resize(4, 0);
                out.extend(bytes);
            } else {
                out.extend((data_off as u32).to_le_bytes());
                data_off += bytes.len();
                arrays.extend(bytes);
            }
        }
        out.extend(0u32.to_le_bytes());
        out.extend(arrays);
        out.extend(payload);
        out
    }

    /// A 64 × 64 single-tile TIFF with the given compression, tile bytes and byte count.
    fn one_tile(compression: u32, payload: &[u8], count: u32, offset: u32) -> Vec<u8> {
        tiff(
            &[
                (256, 4, vec![64]),
                (257, 4, vec![64]),
                (258, 3, vec![8, 8, 8]),
                (259, 3, vec![compression]),
                (262, 3, vec![2]),
                (277, 3, vec![3]),
                (322, 4, vec![64]),
                (323, 4, vec![64]),
                (324, 4, vec![offset]),
                (325, 4, vec![count]),
            ],
            payload,
        )
    }

    /// Writes `bytes` to a temporary `crafted.tiff` and opens it natively. The folder is
    /// returned too: the file must outlive the slide's reads.
    fn open_native(bytes: &[u8]) -> (tempfile::TempDir, Result<Slide, Error>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crafted.tiff");
        std::fs::write(&path, bytes).unwrap();
        let config = SlideConfig {
            backend: BackendChoice::Native,
            ..SlideConfig::default()
        };
        let slide = Slide::open_with(&path, &config);
        (dir, slide)
    }

    fn open_native_err(bytes: &[u8]) -> Error {
        open_native(bytes).1.unwrap_err()
    }

    fn read_all(slide: &Slide) -> Result<image::RgbImage, Error> {
        slide.read_region(Level0Px::new(0, 0), 0, slide.dimensions())
    }

    #[test]
    fn a_valid_raw_tile_reads_back() {
        let pixels: Vec<u8> = (0..64 * 64 * 3).map(|i| (i % 251) as u8).collect();
        let (_dir, s) = open_native(&one_tile(1, &pixels, pixels.len() as u32, u32::MAX));
        let s = s.unwrap();
        assert_eq!(read_all(&s).unwrap().as_raw(), &pixels);
    }

    #[test]
    fn tile_data_past_the_end_or_short_is_a_tile_error() {
        let pixels = vec![7u8; 64 * 64 * 3];
        // Offset far past the end of the file.
        let (_dir, s) = open_native(&one_tile(1, &pixels, pixels.len() as u32, 10_000_000));
        let s = s.unwrap();
        let e = read_all(&s).unwrap_err();
        assert!(
            matches!(&e, Error::TileDecode { message, .. } if message.contains("past the end")),
            "{e}"
        );
        // A truncated tile: fewer bytes than a raw tile needs.
        let (_dir, s) = open_native(&one_tile(1, &pixels[..100], 100, u32::MAX));
        let s = s.unwrap();
        let e = read_all(&s).unwrap_err();
        assert!(matches!(e, Error::TileDecode { .. }), "{e}");
        // A byte count that claims more than the file holds.
        let (_dir, s) = open_native(&one_tile(1, &pixels, u32::MAX - 1, u32::MAX));
        let s = s.unwrap();
        assert!(matches!(
            read_all(&s).unwrap_err(),
            Error::TileDecode { .. }
        ));
    }

    #[test]
    fn a_jpeg_tile_that_does_not_decode_is_an_error_naming_the_tile() {
        let junk = b"\xFF\xD8\xFF\xDB\x00\x04garbage garbage garbage\xFF\xD9";
        let (_dir, s) = open_native(&one_tile(7, junk, junk.len() as u32, u32::MAX));
        let s = s.unwrap();
        let e = read_all(&s).unwrap_err();
        assert!(
            matches!(&e, Error::TileDecode { level: 0, tile, .. } if tile.col == 0 && tile.row == 0),
            "{e}"
        );
        assert!(e.to_string().contains("crafted.tiff"));
        for codec in [5, 8, 33005, 33003] {
            let (_dir, s) = open_native(&one_tile(codec, junk, junk.len() as u32, u32::MAX));
            let s = s.unwrap();
            assert!(
                matches!(read_all(&s), Err(Error::TileDecode { .. })),
                "compression {codec}"
            );
        }
    }

    #[test]
    fn missing_tiles_in_regions_decoded_in_part_are_white() {
        // 4 × 2 tiles of 64², JPEG (YCbCr 4:2:0); tiles (0, 1) and (2, 1) are absent (0 bytes).
        let tile: Vec<u8> = (0..64 * 64)
            .flat_map(|i| [(i % 64 * 4) as u8, (i / 64 * 4) as u8, (i % 97) as u8])
            .collect();
        let mut jpeg = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut jpeg, 90);
        encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
        encoder
            .encode(&tile, 64, 64, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let (n, at) = (jpeg.len() as u32, u32::MAX);
        let bytes = tiff(
            &[
                (256, 4, vec![256]),
                (257, 4, vec![128]),
                (258, 3, vec![8, 8, 8]),
                (259, 3, vec![7]),
                (262, 3, vec![6]),
                (277, 3, vec![3]),
                (322, 4, vec![64]),
                (323, 4, vec![64]),
                (324, 4, vec![at, at, at, at, 0, at, 0, at]),
                (325, 4, vec![n, n, n, n, 0, n, 0, n]),
            ],
            &jpeg,
        );
        let (_dir, s) = open_native(&bytes);
        let all = read_all(&s.unwrap()).unwrap();
        // Fresh handles decode the tiles of unaligned regions in part: four tiles (two per
        // row of tiles, decoded in place), and eight (four per row, decoded apart in parallel).
        for (x, y, w, h) in [(32, 32, 64, 64), (160, 32, 64, 64), (32, 40, 192, 64)] {
            let (_dir, s) = open_native(&bytes);
            let part = s
                .unwrap()
                .read_region(Level0Px::new(x, y), 0, Size::new(w, h))
                .unwrap();
            for (px, py, p) in part.enumerate_pixels() {
                let (ax, ay) = (px + x as u32, py + y as u32);
                assert_eq!(
                    p,
                    all.get_pixel(ax, ay),
                    "({ax}, {ay}) of {w}×{h} at ({x}, {y})"
                );
                let absent = ay >= 64 && (ax < 64 || (128..192).contains(&ax));
                assert_eq!(p.0 == [255; 3], absent, "({ax}, {ay})");
            }
        }
    }

    #[test]
    fn absurd_layouts_are_refused_at_open() {
        // 10^6 × 10^6 pixels in 16 × 16 tiles claims 3.9 billion tiles but lists one.
        let e = open_native_err(&tiff(
            &[
                (256, 4, vec![1_000_000]),
                (257, 4, vec![1_000_000]),
                (258, 3, vec![8, 8, 8]),
                (259, 3, vec![1]),
                (277, 3, vec![3]),
                (322, 4, vec![16]),
                (323, 4, vec![16]),
                (324, 4, vec![8]),
                (325, 4, vec![1]),
            ],
            &[],
        ));
        assert!(
            matches!(&e, Error::Corrupt { message, .. } if message.contains("tiles")),
            "{e}"
        );
        // Tiles of 100,000 × 100,000 pixels.
        let mut entries = vec![
            (256, 4, vec![64]),
            (257, 4, vec![64]),
            (258, 3, vec![8, 8, 8]),
            (259, 3, vec![1]),
            (277, 3, vec![3]),
            (322, 4, vec![100_000]),
            (323, 4, vec![100_000]),
            (324, 4, vec![8]),
            (325, 4, vec![1]),
        ];
        let e = open_native_err(&tiff(&entries, &[]));
        assert!(
            matches!(&e, Error::Corrupt { message, .. } if message.contains("100000")),
            "{e}"
        );
        // A tile-offset array whose count runs past the end of the file.
        entries[5].2 = vec![16];
        entries[6].2 = vec![16];
        let mut bytes = tiff(&entries, &[]);
        // Patch the TileOffsets count (entry 7) to 2^30 values.
        let at = 8 + 2 + 7 * 12 + 4;
        bytes[at..at + 4].copy_from_slice(&(1u32 << 30).to_le_bytes());
        let e = open_native_err(&bytes);
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        // 16-bit samples: not read natively (auto would hand it to OpenSlide).
        let e = open_native_err(&tiff(
            &[
                (256, 4, vec![64]),
                (257, 4, vec![64]),
                (258, 3, vec![16, 16, 16]),
                (259, 3, vec![1]),
                (277, 3, vec![3]),
                (322, 4, vec![64]),
                (323, 4, vec![64]),
                (324, 4, vec![8]),
                (325, 4, vec![1]),
            ],
            &[],
        ));
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    }
}
