//! `read_region` equals OpenSlide's own output, read through openslide-python in another
//! process, for every level of the shared slides: tile-aligned, unaligned, across the slide's
//! edge and at negative coordinates, plus one whole level larger than a read band.

use std::process::{Command, Stdio};

use tessera::slide::openslide::{discover, Discovery};
use tessera::{Level0Px, Size, Slide};

use crate::require;
use crate::util::*;

/// Reads regions with openslide-python and writes their RGBA bytes, un-premultiplied as
/// openslide-python returns them, one after another.
const READER: &str = r#"
import json, sys, openslide
path, regions = sys.argv[1], json.loads(sys.argv[2])
s = openslide.OpenSlide(path)
out = sys.stdout.buffer
for x, y, level, w, h in regions:
    out.write(s.read_region((x, y), level, (w, h)).tobytes())
"#;

fn python_openslide_version() -> Option<String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import openslide; print(openslide.__library_version__)",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The regions to compare at every level: (x, y) in level-0 pixels, (w, h) in level pixels.
fn regions(slide: &Slide) -> Vec<(i64, i64, usize, u64, u64)> {
    let mut r = Vec::new();
    for (i, l) in slide.levels().iter().enumerate() {
        let ds = l.downsample;
        let (w, h) = (l.size.width, l.size.height);
        let tile = l.tile_size.unwrap_or(Size::new(256, 256));
        // Tile-aligned: the first tile.
        r.push((0, 0, i, tile.width.min(w), tile.height.min(h)));
        // Unaligned, inside.
        let (ux, uy) = (37.min(w - 1), 53.min(h - 1));
        r.push((
            (ux as f64 * ds) as i64,
            (uy as f64 * ds) as i64,
            i,
            301.min(w - ux),
            203.min(h - uy),
        ));
        // Across the bottom-right edge.
        r.push((
            ((w as f64 - 50.0).max(0.0) * ds) as i64,
            ((h as f64 - 40.0).max(0.0) * ds) as i64,
            i,
            120,
            90,
        ));
        // Starting above and left of the slide.
        r.push((-30, -20, i, 100, 80));
    }
    r
}

fn compare(rel: &str, extra: &[(i64, i64, usize, u64, u64)]) {
    let path = data(rel).unwrap();
    let slide = open_as(&path, tessera::BackendChoice::OpenSlide);
    let mut list = regions(&slide);
    list.extend_from_slice(extra);
    let json = serde_json::to_string(&list).unwrap();
    let opened = slide.opened_file().to_str().unwrap().to_string();
    let out = Command::new("python3")
        .args(["-c", READER, &opened, &json])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "openslide-python failed: {}",
        stderr(&out)
    );
    let mut reference = out.stdout.as_slice();
    for &(x, y, level, w, h) in &list {
        let ours = slide
            .read_region(Level0Px::new(x, y), level, Size::new(w, h))
            .unwrap_or_else(|e| panic!("{rel}: {e}"));
        let (theirs, rest) = reference.split_at((w * h * 4) as usize);
        reference = rest;
        for (i, (p, q)) in ours.pixels().zip(theirs.chunks_exact(4)).enumerate() {
            let a = q[3] as i32;
            for (c, (&ours, &theirs)) in p.0.iter().zip(&q[..3]).enumerate() {
                // openslide-python un-premultiplies; composite its pixel onto white.
                let want = (theirs as i32 * a + 127) / 255 + 255 - a;
                let tolerance = if a == 255 || a == 0 { 0 } else { 2 };
                assert!(
                    (ours as i32 - want).abs() <= tolerance,
                    "{rel}: region ({x}, {y}) level {level} {w}×{h}: pixel {i} channel {c}: \
                     ours {ours} vs OpenSlide {want} (alpha {a})"
                );
            }
        }
    }
    assert!(reference.is_empty());
}

fn parity_prerequisites() -> Option<()> {
    data("slides")?;
    let Discovery::Found(lib) = discover() else {
        skip("OpenSlide not found (pip install openslide-bin)");
        return None;
    };
    match python_openslide_version() {
        Some(v) if v == lib.version => Some(()),
        Some(v) => {
            skip(&format!(
                "openslide-python uses OpenSlide {v}, Tessera found {}",
                lib.version
            ));
            None
        }
        None => {
            skip("openslide-python is not installed (pip install openslide-python)");
            None
        }
    }
}

#[test]
fn aperio_jpeg_matches_openslide_including_a_whole_banded_level() {
    require!(parity_prerequisites());
    // The whole level (6.6 Mpx) is read in several bands.
    compare(
        "slides/aperio/CMU-1-Small-Region.svs",
        &[(0, 0, 0, 2220, 2967), (-7, 1000, 0, 2300, 13)],
    );
}

#[test]
fn aperio_jpeg2000_with_a_non_integer_downsample_matches_openslide() {
    require!(parity_prerequisites());
    compare(
        "slides/aperio/TCGA-CR-7395-01A-01-TS1.svs",
        &[(1001, 999, 1, 777, 555)],
    );
}

#[test]
fn generic_tiff_levels_match_openslide() {
    require!(parity_prerequisites());
    compare("slides/generic-tiff/boxes.tiff", &[(3, 5, 2, 74, 62)]);
    compare("slides/generic-tiff/boxes-deflate-levels.tiff", &[]);
}

#[test]
fn dicom_pyramid_matches_openslide() {
    require!(parity_prerequisites());
    compare("slides/dicom/cmu-1-small-region", &[]);
    compare("slides/dicom/camelyon-lowres", &[]);
    compare("slides/dicom/concat", &[]);
}

/// Native reader against OpenSlide, in the same process, on the same regions.
mod native {
    use super::*;
    use tessera::BackendChoice;

    fn open(path: &std::path::Path, backend: BackendChoice) -> Slide {
        open_as(path, backend)
    }

    /// Mean and maximum absolute difference per channel value.
    fn diff(a: &image::RgbImage, b: &image::RgbImage) -> (f64, u8) {
        assert_eq!(a.dimensions(), b.dimensions());
        let mut sum = 0u64;
        let mut max = 0u8;
        for (p, q) in a.as_raw().iter().zip(b.as_raw()) {
            let d = p.abs_diff(*q);
            sum += d as u64;
            max = max.max(d);
        }
        (sum as f64 / a.as_raw().len() as f64, max)
    }

    /// `exact`: the slide's tiles are ones Tessera's own JPEG decoder takes, which uses
    /// libjpeg's arithmetic, so every whole-pixel region must equal OpenSlide's byte for byte.
    pub fn compare(rel: &str, extra: &[(i64, i64, usize, u64, u64)], exact: bool) {
        compare_file(&data(rel).unwrap(), extra, exact)
    }

    /// [`compare`] on a slide given by its path.
    fn compare_file(path: &std::path::Path, extra: &[(i64, i64, usize, u64, u64)], exact: bool) {
        let rel = path.display();
        let native = open(path, BackendChoice::Native);
        let os = open(path, BackendChoice::OpenSlide);
        assert_eq!(native.backend().name, "native");
        assert_eq!(native.levels().len(), os.levels().len(), "{rel}");
        for (a, b) in native.levels().iter().zip(os.levels()) {
            assert_eq!(a.size, b.size, "{rel}");
            assert!(
                (a.downsample - b.downsample).abs() < 1e-9,
                "{rel}: {a:?} vs {b:?}"
            );
            assert_eq!(a.tile_size, b.tile_size, "{rel}");
        }
        assert_eq!(native.associated_images(), os.associated_images(), "{rel}");
        assert_eq!(
            native.mpp().map(|m| (m.x, m.y)),
            os.mpp().map(|m| (m.x, m.y)),
            "{rel}"
        );
        assert_eq!(native.objective_power(), os.objective_power(), "{rel}");
        assert_eq!(
            native.icc_profile().unwrap(),
            os.icc_profile().unwrap(),
            "{rel}"
        );
        let mut list = regions(&os);
        list.extend_from_slice(extra);
        for (x, y, level, w, h) in list {
            let at = (Level0Px::new(x, y), level, Size::new(w, h));
            let a = native.read_region(at.0, at.1, at.2).unwrap();
            let b = os.read_region(at.0, at.1, at.2).unwrap();
            // A fresh handle's first read is a scattered one (the JPEG tiles it covers in
            // part are decoded in part); `native` has just read the same tiles and now
            // decodes them whole. The pixels must not depend on which.
            let fresh = open(path, BackendChoice::Native)
                .read_region(at.0, at.1, at.2)
                .unwrap();
            let again = native.read_region(at.0, at.1, at.2).unwrap();
            assert!(
                fresh.as_raw() == again.as_raw() && a.as_raw() == again.as_raw(),
                "{rel}: region ({x}, {y}) level {level} {w}×{h}: partial and whole decodes differ"
            );
            let (mean, max) = diff(&a, &b);
            assert!(
                max == 0 || !exact,
                "{rel}: region ({x}, {y}) level {level} {w}×{h}: not OpenSlide's pixels \
                 (mean {mean:.3}, max {max})"
            );
            assert!(
                mean <= 0.5 && max <= 8,
                "{rel}: region ({x}, {y}) level {level} {w}×{h}: mean {mean:.3}, max {max}"
            );
        }
        for a in os.associated_images() {
            let (mean, max) = diff(
                &native.read_associated_image(&a.name).unwrap(),
                &os.read_associated_image(&a.name).unwrap(),
            );
            assert!(
                mean <= 0.5 && max <= 8,
                "{rel}: {}: mean {mean:.3}, max {max}",
                a.name
            );
        }
    }

    #[test]
    fn native_aperio_jpeg_matches_openslide() {
        require!(parity_prerequisites_native());
        compare(
            "slides/aperio/CMU-1-Small-Region.svs",
            &[
                (0, 0, 0, 2220, 2967),
                (239, 239, 0, 2, 2),
                (100, 2900, 0, 500, 300),
            ],
            true,
        );
        compare("slides/aperio/small.svs", &[], true);
    }

    #[test]
    fn native_aperio_jpeg2000_matches_openslide() {
        require!(parity_prerequisites_native());
        compare(
            "slides/aperio/TCGA-CR-7395-01A-01-TS1.svs",
            &[
                (1001, 999, 1, 777, 555),
                (0, 0, 1, 2221, 1783),
                (-5, -9, 1, 300, 200),
            ],
            false,
        );
    }

    #[test]
    fn native_generic_tiff_matches_openslide() {
        require!(parity_prerequisites_native());
        compare(
            "slides/generic-tiff/boxes.tiff",
            &[(3, 5, 2, 74, 62), (1, 1, 3, 36, 30)],
            false,
        );
        compare(
            "slides/generic-tiff/boxes-deflate-levels.tiff",
            &[(7, 3, 1, 149, 124)],
            false,
        );
    }

    /// Tile layouts other scanners and converters write (issue 22), generated from the shared
    /// tissue: 240- and 512-pixel tiles, 4:2:2 and 4:4:4 chroma, restart markers, quality 75 to
    /// 90 (1024-pixel tiles need a source image that large; the shared ones are 1000²).
    /// Tessera's pixels equal OpenSlide's byte for byte on each.
    #[test]
    fn native_matches_openslide_on_generated_tile_layouts() {
        require!(parity_prerequisites_native());
        let tmp = tempfile::tempdir().unwrap();
        let source = data("images/tcga-regions/TCGA-HE-7130-01Z-00-DX1.png").unwrap();
        for (tile, sub, restart, quality) in [
            ("240", "444", "0", "75"),
            ("256", "422", "0", "90"),
            ("512", "420", "4", "90"),
            ("512", "444", "16", "75"),
            ("512", "422", "1", "85"),
        ] {
            let path = tmp
                .path()
                .join(format!("t{tile}-{sub}-r{restart}-q{quality}.svs"));
            let o = tessera_str(&[
                "generate",
                path.to_str().unwrap(),
                "--width",
                "3000",
                "--height",
                "2200",
                "--tile",
                tile,
                "--subsampling",
                sub,
                "--restart-interval",
                restart,
                "--quality",
                quality,
                "--source",
                source.to_str().unwrap(),
            ]);
            assert_eq!(code(&o), 0, "{}", stderr(&o));
            compare_file(&path, &[(0, 0, 0, 3000, 2200), (777, 555, 0, 3, 700)], true);
        }
    }

    fn parity_prerequisites_native() -> Option<()> {
        data("slides")?;
        openslide4()
    }
}
