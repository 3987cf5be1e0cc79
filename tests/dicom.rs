//! The native DICOM WSI reader against OpenSlide 4 on every shared DICOM slide: the same
//! pyramid, metadata, associated images, ICC profile and pixels, and typed errors for damaged
//! and unsupported series.

use tessera::{BackendChoice, Level0Px, Size, Slide};

use crate::require;
use crate::util::*;

/// The shared DICOM series whose pixels are compared byte for byte with OpenSlide's.
const SERIES: &[&str] = &[
    "slides/dicom/boxes/boxes_0.dcm",
    "slides/dicom/boxes/boxes_1.dcm",
    "slides/dicom/camelyon-lowres",
    "slides/dicom/sm-image",
    "slides/dicom/concat",
];

/// Regions (level-0 location, level, size) that cover a level whole, its edges from outside,
/// and unaligned starts, for a slide of `size` at `levels`.
pub fn regions(slide: &Slide) -> Vec<(Level0Px, usize, Size)> {
    let mut out = Vec::new();
    for (i, l) in slide.levels().iter().enumerate() {
        let (w, h) = (l.size.width, l.size.height);
        let ds = l.downsample;
        out.push((Level0Px::new(0, 0), i, Size::new(w, h)));
        out.push((Level0Px::new(-7, -5), i, Size::new(w + 9, h + 3)));
        let mid = |v: u64| (v as f64 * ds / 2.0) as i64;
        out.push((
            Level0Px::new(mid(w) + 3, mid(h) + 1),
            i,
            Size::new(w.div_ceil(2) + 4, h.div_ceil(3) + 2),
        ));
        // Past the right and bottom edges.
        out.push((
            Level0Px::new(
                ((w as f64 - 5.0) * ds) as i64,
                ((h as f64 - 4.0) * ds) as i64,
            ),
            i,
            Size::new(17, 13),
        ));
    }
    out
}

pub fn assert_same_pixels(path: &std::path::Path, a: &Slide, b: &Slide) {
    for (at, level, size) in regions(a) {
        let x = a.read_region(at, level, size).unwrap();
        let y = b.read_region(at, level, size).unwrap();
        if x != y {
            let diff = x
                .as_raw()
                .iter()
                .zip(y.as_raw())
                .filter(|(p, q)| p != q)
                .count();
            panic!(
                "{}: level {level} at {at:?} size {size:?}: {diff} bytes differ between {} and {}",
                path.display(),
                a.backend().name,
                b.backend().name
            );
        }
    }
}

#[test]
fn native_dicom_matches_openslide_4() {
    require!(data_and_openslide("slides/dicom"));
    for rel in SERIES {
        let path = data(rel).unwrap();
        let native = open_as(&path, BackendChoice::Native);
        let os = open_as(&path, BackendChoice::OpenSlide);
        assert_eq!(native.backend().name, "native");
        assert_eq!(open_as(&path, BackendChoice::Auto).backend().name, "native");
        assert_eq!(native.vendor(), Some("dicom"), "{rel}");
        assert_eq!(native.format(), os.format(), "{rel}");
        assert_eq!(native.levels(), os.levels(), "{rel}");
        assert_eq!(native.mpp(), os.mpp(), "{rel}");
        assert_eq!(native.objective_power(), os.objective_power(), "{rel}");
        assert_eq!(native.associated_images(), os.associated_images(), "{rel}");
        assert_eq!(
            native.icc_profile().unwrap(),
            os.icc_profile().unwrap(),
            "{rel}"
        );
        for a in native.associated_images() {
            let x = native.read_associated_image(&a.name).unwrap();
            let y = os.read_associated_image(&a.name).unwrap();
            assert!(x == y, "{rel}: associated image {} differs", a.name);
        }
        assert_same_pixels(&path, &native, &os);
    }
}

#[test]
fn dicom_properties_are_openslides() {
    require!(data_and_openslide("slides/dicom"));
    for rel in SERIES.iter().chain(&["slides/dicom/cmu-1-small-region"]) {
        let path = data(rel).unwrap();
        let native = open_as(&path, BackendChoice::Native);
        let os = open_as(&path, BackendChoice::OpenSlide);
        let (np, op) = (native.properties(), os.properties());
        let mut missing = Vec::new();
        let mut differ = Vec::new();
        for (k, v) in op {
            if k == "openslide.quickhash-1" {
                continue;
            }
            match np.get(k) {
                None => missing.push(k.clone()),
                Some(n) if n != v => differ.push(format!("{k}: {n:?} vs OpenSlide's {v:?}")),
                Some(_) => {}
            }
        }
        let extra: Vec<&String> = np
            .keys()
            .filter(|k| !op.contains_key(*k) && !k.starts_with("tessera."))
            .collect();
        assert!(
            missing.is_empty() && differ.is_empty() && extra.is_empty(),
            "{rel}:\n missing {missing:?}\n differ ({}) {differ:?}\n extra {extra:?}",
            differ.len()
        );
    }
}

/// Mean absolute difference per sample of two images of the same size.
fn mean_abs(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

#[test]
fn a_series_tagged_rgb_holding_ycbcr_jpeg_is_read_in_true_colour() {
    // cmu-1-small-region's frames are JFIF (YCbCr) JPEG, tagged RGB. OpenSlide follows the tag
    // and shows false colours; Tessera follows the frames' own JFIF marker. The same tissue as
    // the Aperio CMU-1-Small-Region.svs, re-encoded by the converter, is the reference.
    let dir = require!(data_and_openslide("slides/dicom/cmu-1-small-region"));
    let svs = data("slides/aperio/CMU-1-Small-Region.svs").unwrap();
    let native = open_as(&dir, BackendChoice::Native);
    let os = open_as(&dir, BackendChoice::OpenSlide);
    let reference = open_as(&svs, BackendChoice::Native);
    let note = native
        .properties()
        .get("tessera.dicom.photometric-override")
        .expect("the override is recorded");
    assert!(
        note.starts_with("level 0, level 1, level 2,") && note.contains("YCbCr"),
        "{note}"
    );
    let full = |s: &Slide| {
        s.read_region(Level0Px::new(0, 0), 0, Size::new(2220, 2967))
            .unwrap()
    };
    let (ours, theirs, truth) = (full(&native), full(&os), full(&reference));
    let (d_ours, d_theirs) = (mean_abs(&ours, &truth), mean_abs(&theirs, &truth));
    eprintln!("mean |Δ| against the SVS: Tessera {d_ours:.2}, OpenSlide {d_theirs:.2}");
    assert!(d_ours < 6.0, "Tessera's colours are off: {d_ours}");
    assert!(
        d_theirs > 20.0,
        "OpenSlide's false colours were expected: {d_theirs}"
    );
    // A series tagged correctly carries no override.
    let camelyon = open_as(
        data("slides/dicom/camelyon-lowres").unwrap(),
        BackendChoice::Native,
    );
    assert!(!camelyon
        .properties()
        .contains_key("tessera.dicom.photometric-override"));
}

#[test]
fn unsupported_dicom_is_refused_natively_with_the_reason() {
    let dir = require!(data("unsupported"));
    for (name, reason) in [
        (
            "sm_image_jpegls.dcm",
            "transfer syntax 1.2.840.10008.1.2.4.80",
        ),
        ("sm_image_grayscale.dcm", "BitsAllocated 16"),
        ("dicom-label-only", "no pyramid levels"),
        ("dicom-label-concat", "no pyramid levels"),
    ] {
        let config = tessera::SlideConfig {
            backend: BackendChoice::Native,
            ..tessera::SlideConfig::default()
        };
        let e = Slide::open_with(dir.join(name), &config).unwrap_err();
        assert!(
            matches!(&e, tessera::SlideError::Unsupported { format, reason: r, .. }
                if format == "DICOM WSI" && r.contains(reason)),
            "{name}: {e}"
        );
    }
}

#[test]
fn dicom_without_image_type_is_read_as_a_pyramid() {
    // OpenSlide refuses a series without ImageType; Orthanc's WSI dicomizer 1.x writes no
    // ImageType at all, so Tessera reads such instances as levels and says so.
    let path = require!(data("unsupported/dicom-no-image-type.dcm"));
    let slide = open_as(&path, BackendChoice::Native);
    assert_eq!(slide.dimensions().width, 3236);
    assert_eq!(
        slide.properties()["tessera.dicom.image-type-missing"],
        "instances without ImageType were read as pyramid levels"
    );
    let l = slide.level_count() - 1;
    let size = slide.levels()[l].size;
    let img = slide.read_region(Level0Px::new(0, 0), l, size).unwrap();
    // Real tissue (and green ink), not a blank page.
    let non_white = img
        .pixels()
        .filter(|p| p.0[..3].iter().any(|&v| v < 200))
        .count();
    assert!(
        non_white * 10 > img.pixels().count(),
        "{non_white} non-white pixels"
    );
}

/// Copies `src` into a fresh folder as `name`, cut to `len` bytes or with `patch` applied.
fn damaged(src: &std::path::Path, len: Option<usize>, patch: &[(usize, u8)]) -> tempfile::TempDir {
    let mut bytes = std::fs::read(src).unwrap();
    if let Some(len) = len {
        bytes.truncate(len);
    }
    for &(at, v) in patch {
        if at < bytes.len() {
            bytes[at] = v;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("slide.dcm"), bytes).unwrap();
    tmp
}

#[test]
fn truncated_and_damaged_dicom_gets_typed_errors_never_a_panic_or_silent_pixels() {
    let src = require!(data(
        "slides/dicom/camelyon-lowres/multiframe_camelyon_challenge_image.dcm"
    ));
    let len = std::fs::metadata(&src).unwrap().len() as usize;
    let config = tessera::SlideConfig {
        backend: BackendChoice::Native,
        ..tessera::SlideConfig::default()
    };
    // Truncated anywhere: refused at open (metadata or frame table) naming the file.
    for cut in [140, 600, 3000, len / 2, len - 20, len - 1] {
        let tmp = damaged(&src, Some(cut), &[]);
        let file = tmp.path().join("slide.dcm");
        match Slide::open_with(&file, &config) {
            Err(e) => assert!(
                matches!(&e, tessera::SlideError::Corrupt { path, .. } if path == &file),
                "cut {cut}: {e}"
            ),
            Ok(s) => panic!("cut at {cut} of {len} opened: {s:?}"),
        }
    }
    // A frame's bytes overwritten: opens, and reading that frame is a tile error.
    let bytes = std::fs::read(&src).unwrap();
    let soi: Vec<usize> = bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == [0xFF, 0xD8, 0xFF, 0xE0])
        .map(|(i, _)| i)
        .collect();
    assert_eq!(soi.len(), 15, "one JPEG per frame");
    let patch: Vec<(usize, u8)> = (soi[4] + 700..soi[4] + 900).map(|i| (i, 0xFF)).collect();
    let tmp = damaged(&src, None, &patch);
    let slide = Slide::open_with(tmp.path().join("slide.dcm"), &config).unwrap();
    // Frame 4 is tile (4, 0) of a 5-across grid.
    let e = slide
        .read_region(Level0Px::new(4 * 256, 0), 0, Size::new(64, 64))
        .unwrap_err();
    assert!(
        matches!(&e, tessera::SlideError::TileDecode { tile, .. } if tile.col == 4 && tile.row == 0),
        "{e}"
    );
    // Lengths claiming gigabytes, in the file meta group and in the data set: refused before
    // anything that size is allocated (dicom-object would reserve the claimed length).
    let boxes = data("slides/dicom/boxes/boxes_0.dcm").unwrap();
    let raw = std::fs::read(&boxes).unwrap();
    assert_eq!(&raw[144..150], &[0x02, 0x00, 0x01, 0x00, b'O', b'B']);
    let meta_len = [(152, 0xF0), (153, 0xFF), (154, 0xFF), (155, 0x7F)];
    let group_len = u32::from_le_bytes([raw[140], raw[141], raw[142], raw[143]]) as usize;
    let first = 144 + group_len; // the data set's first element
                                 // The ICC profile (OB, a 4-byte length) in the optical path sequence.
    let ob = first
        + raw[first..]
            .windows(4)
            .position(|w| w == b"OB\0\0")
            .expect("an OB element in the data set");
    let data_len = [
        (ob + 4, 0xF0),
        (ob + 5, 0xFF),
        (ob + 6, 0xFF),
        (ob + 7, 0x7F),
    ];
    for (what, patch, says) in [
        ("meta", &meta_len[..], "file meta element"),
        ("data set", &data_len[..], "past the end"),
    ] {
        let tmp = damaged(&boxes, None, patch);
        let e = Slide::open_with(tmp.path().join("slide.dcm"), &config).unwrap_err();
        assert!(
            matches!(&e, tessera::SlideError::Corrupt { .. }) && e.to_string().contains(says),
            "{what}: {e}"
        );
    }
    // Sequences nested 100,000 deep (2 MB): refused before dicom-object, which builds them
    // recursively, could exhaust the stack.
    let mut nested = raw[..first].to_vec();
    for _ in 0..100_000 {
        // (0040,0555) Acquisition Context Sequence of undefined length, holding an item of
        // undefined length.
        nested.extend_from_slice(&[
            0x40, 0x00, 0x55, 0x05, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        nested.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("slide.dcm"), &nested).unwrap();
    let e = Slide::open_with(tmp.path().join("slide.dcm"), &config).unwrap_err();
    assert!(e.to_string().contains("nested over"), "{e}");
    // An item header where the data set's first element belongs: a corrupt file.
    let item = [
        (first, 0xFE),
        (first + 1, 0xFF),
        (first + 2, 0x00),
        (first + 3, 0xE0),
        (first + 4, 0x04),
        (first + 5, 0x00),
        (first + 6, 0x00),
        (first + 7, 0x00),
    ];
    let tmp = damaged(&boxes, None, &item);
    let e = Slide::open_with(tmp.path().join("slide.dcm"), &config).unwrap_err();
    assert!(
        matches!(&e, tessera::SlideError::Corrupt { .. }),
        "item at the root: {e}"
    );
    // Single-byte changes through the metadata (every 7th byte of the first 4,000, to three
    // values): an error or a slide, never a panic or an abort.
    let data_start = soi[0].min(4000);
    for at in (128..data_start).step_by(7) {
        for v in [0x00, 0xFF, 0x7F] {
            let tmp = damaged(&src, None, &[(at, v)]);
            if let Ok(s) = Slide::open_with(tmp.path().join("slide.dcm"), &config) {
                let size = s.dimensions();
                let _ = s.read_region(
                    Level0Px::new(0, 0),
                    0,
                    Size::new(size.width.min(300), size.height.min(300)),
                );
            }
        }
    }
}

#[test]
fn a_tiled_sparse_series_with_a_missing_tile_reads_as_openslide_does() {
    use dicom_core::value::{DataSetSequence, PrimitiveValue};
    use dicom_core::{DataElement, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::InMemDicomObject;

    let src = require!(data_and_openslide("slides/dicom/sm-image/sm_image.dcm"));
    let mut obj = dicom_object::open_file(&src).unwrap();
    let pixel_vr = obj.element(tags::PIXEL_DATA).unwrap().vr();
    let pixels = obj
        .element(tags::PIXEL_DATA)
        .unwrap()
        .to_bytes()
        .unwrap()
        .into_owned();
    // 50 × 50 in 10 × 10 frames: 5 × 5 tiles. Frames stored last first, tile 7 left out.
    let frame = 10 * 10 * 3;
    let keep: Vec<usize> = (0..25).rev().filter(|&k| k != 7).collect();
    let mut data = Vec::new();
    let mut items = Vec::new();
    for &k in &keep {
        data.extend_from_slice(&pixels[k * frame..(k + 1) * frame]);
        let (col, row) = ((k % 5) as i32, (k / 5) as i32);
        let pos = InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::COLUMN_POSITION_IN_TOTAL_IMAGE_PIXEL_MATRIX,
                VR::SL,
                PrimitiveValue::from(col * 10 + 1),
            ),
            DataElement::new(
                tags::ROW_POSITION_IN_TOTAL_IMAGE_PIXEL_MATRIX,
                VR::SL,
                PrimitiveValue::from(row * 10 + 1),
            ),
        ]);
        items.push(InMemDicomObject::from_element_iter([DataElement::new(
            tags::PLANE_POSITION_SLIDE_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![pos]),
        )]));
    }
    obj.put(DataElement::new(
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(items),
    ));
    obj.put(DataElement::new(
        tags::DIMENSION_ORGANIZATION_TYPE,
        VR::CS,
        PrimitiveValue::from("TILED_SPARSE"),
    ));
    obj.put(DataElement::new(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        PrimitiveValue::from(keep.len().to_string()),
    ));
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        pixel_vr,
        PrimitiveValue::from(data),
    ));
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sparse.dcm");
    obj.write_to_file(&path).unwrap();

    let native = open_as(&path, BackendChoice::Native);
    let os = open_as(&path, BackendChoice::OpenSlide);
    assert_same_pixels(&path, &native, &os);
    // The missing tile (column 2, row 1) is white; its neighbours are the original's.
    let original = open_as(&src, BackendChoice::Native);
    let whole = |s: &Slide| {
        s.read_region(Level0Px::new(0, 0), 0, Size::new(50, 50))
            .unwrap()
    };
    let (sparse, full) = (whole(&native), whole(&original));
    for (x, y, p) in sparse.enumerate_pixels() {
        if (20..30).contains(&x) && (10..20).contains(&y) {
            assert_eq!(p.0, [255, 255, 255], "({x}, {y})");
        } else {
            assert_eq!(p, full.get_pixel(x, y), "({x}, {y})");
        }
    }
}

/// Writes sm-image's 25 frames, replaced by seeded noise, as lossless JPEG 2000 DICOM, once
/// with the codestream's reversible colour transform (tagged YBR_ICT under the JPEG 2000
/// syntax, which OpenSlide 4.0.1 accepts; it refuses YBR_RCT) and once without (RGB, under
/// the lossless-only syntax), with pydicom and Pillow's OpenJPEG. Also writes the noise as
/// `truth.rgb` (the 50 × 50 image, RGB8).
const MAKE_J2K: &str = r#"
import io, os, sys, numpy as np, pydicom
from PIL import Image
from pydicom.encaps import encapsulate
src, out = sys.argv[1], sys.argv[2]
d = pydicom.dcmread(src)
frames = np.random.default_rng(7).integers(0, 256, (25, 10, 10, 3)).astype(np.uint8)
truth = np.zeros((50, 50, 3), np.uint8)
for k in range(25):
    truth[k // 5 * 10:k // 5 * 10 + 10, k % 5 * 10:k % 5 * 10 + 10] = frames[k]
truth.tofile(os.path.join(out, "truth.rgb"))
for name, mct, photometric, syntax in [
    ("ict", 1, "YBR_ICT", "1.2.840.10008.1.2.4.91"),
    ("rgb", 0, "RGB", "1.2.840.10008.1.2.4.90"),
]:
    enc = []
    for f in frames:
        b = io.BytesIO()
        Image.fromarray(f).save(b, "JPEG2000", irreversible=False, mct=mct, no_jp2=True)
        enc.append(b.getvalue())
    e = d.copy()
    e.file_meta.TransferSyntaxUID = syntax
    e.PhotometricInterpretation = photometric
    e.PixelData = encapsulate(enc)
    e["PixelData"].VR = "OB"
    e["PixelData"].is_undefined_length = True
    os.makedirs(os.path.join(out, name))
    e.save_as(os.path.join(out, name, "j2k.dcm"), enforce_file_format=True)
"#;

#[test]
fn jpeg_2000_dicom_reads_exactly_with_and_without_the_colour_transform() {
    let src = require!(data_and_openslide("slides/dicom/sm-image/sm_image.dcm"));
    require!(python_with(&["pydicom", "PIL", "numpy"]));
    let tmp = tempfile::tempdir().unwrap();
    let o = std::process::Command::new("python3")
        .args(["-c", MAKE_J2K])
        .arg(&src)
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let truth = std::fs::read(tmp.path().join("truth.rgb")).unwrap();
    for name in ["ict", "rgb"] {
        let path = tmp.path().join(name).join("j2k.dcm");
        let native = open_as(&path, BackendChoice::Native);
        let os = open_as(&path, BackendChoice::OpenSlide);
        let whole = native
            .read_region(Level0Px::new(0, 0), 0, Size::new(50, 50))
            .unwrap();
        assert!(whole.as_raw() == &truth, "{name}: not the encoded pixels");
        assert_same_pixels(&path, &native, &os);
    }
}

#[test]
fn a_damaged_part_of_the_series_fails_the_slide_and_other_files_do_not() {
    let dir = require!(data("slides/dicom/concat"));
    let config = tessera::SlideConfig {
        backend: BackendChoice::Native,
        ..tessera::SlideConfig::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    for name in ["part_1.dcm", "part_2.dcm"] {
        std::fs::copy(dir.join(name), tmp.path().join(name)).unwrap();
    }
    // A non-WSI DICOM file that sorts first (its SOP class changed), and a text file: the
    // folder still opens, as the series of its first WSI file.
    let mut other = std::fs::read(dir.join("part_1.dcm")).unwrap();
    let at = other
        .windows(30)
        .position(|w| w == b"1.2.840.10008.5.1.4.1.1.77.1.6")
        .unwrap();
    other[at + 29] = b'2'; // ...77.1.2: VL Microscopic Image
    std::fs::write(tmp.path().join("0-other.dcm"), &other).unwrap();
    std::fs::write(tmp.path().join("README.txt"), "notes").unwrap();
    let whole = Slide::open_with(tmp.path(), &config).unwrap();
    assert_eq!(whole.dimensions(), Size::new(64, 32));
    let reference = open_as(&dir, BackendChoice::Native);
    let at = (Level0Px::new(0, 0), 0, Size::new(64, 32));
    assert!(
        whole.read_region(at.0, at.1, at.2).unwrap()
            == reference.read_region(at.0, at.1, at.2).unwrap()
    );
    // The second part of the concatenation truncated in its pixel data: the slide fails,
    // naming that part, instead of opening with half its tiles white.
    let part2 = std::fs::read(dir.join("part_2.dcm")).unwrap();
    std::fs::write(tmp.path().join("part_2.dcm"), &part2[..part2.len() - 100]).unwrap();
    let e = Slide::open_with(tmp.path(), &config).unwrap_err();
    assert!(
        matches!(&e, tessera::SlideError::Corrupt { path, .. } if path.ends_with("part_2.dcm")),
        "{e}"
    );
}

#[test]
fn the_models_class_codes_name_the_segments_and_the_region_groups() {
    // A lab's model says what its classes are (SNOMED CT codes in config.json); the DICOM
    // outputs carry them, valid for dciodvfy.
    let folder = require!(data("slides/dicom/cmu-1-small-region"));
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let default = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/he-cellularity");
    std::fs::copy(default.join("model.onnx"), model.join("model.onnx")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(default.join("config.json")).unwrap()).unwrap();
    let sct = |v: &str, m: &str| serde_json::json!({"value": v, "scheme": "SCT", "meaning": m});
    cfg["tessera"]["class_codes"] = serde_json::json!([
        {"category": sct("91723000", "Anatomical Structure"), "type": sct("85756007", "Tissue")},
        {"category": sct("49755003", "Morphologically Abnormal Structure"), "type": sct("108369006", "Neoplasm")},
    ]);
    std::fs::write(model.join("config.json"), cfg.to_string()).unwrap();
    let out = t.path().join("out");
    let args: Vec<&std::ffi::OsStr> = vec![
        "analyze".as_ref(),
        folder.as_os_str(),
        "--model".as_ref(),
        model.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--inference".as_ref(),
        "tract".as_ref(),
        "-q".as_ref(),
    ];
    let o = tessera(&args, &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let dir = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("dicom/segmentation.dcm").is_file())
        .expect("a slide folder with dicom/");
    use dicom_dictionary_std::tags;
    let text = |o: &dicom_object::InMemDicomObject, tag| {
        o.element(tag)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches(['\0', ' '])
            .to_string()
    };
    let first = |o: &dicom_object::InMemDicomObject, tag| {
        o.element(tag).unwrap().items().unwrap()[0].clone()
    };
    let seg = dicom_object::open_file(dir.join("dicom/segmentation.dcm")).unwrap();
    let segments = seg
        .element(tags::SEGMENT_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    let types: Vec<(String, String)> = segments
        .iter()
        .map(|s| {
            let t = first(s, tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE);
            (text(&t, tags::CODE_VALUE), text(&t, tags::CODE_MEANING))
        })
        .collect();
    assert_eq!(
        types,
        [
            ("85756007".into(), "Tissue".into()),
            ("108369006".into(), "Neoplasm".into())
        ]
    );
    let cat = first(
        &segments[1],
        tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
    );
    assert_eq!(text(&cat, tags::CODE_VALUE), "49755003");
    // The annotations: the patch grid stays "Tissue"; the cell-dense regions are coded as the
    // class is.
    let ann = dicom_object::open_file(dir.join("dicom/annotations.dcm")).unwrap();
    let groups = ann
        .element(tags::ANNOTATION_GROUP_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    for g in groups {
        let label = text(g, tags::ANNOTATION_GROUP_LABEL);
        let t = first(g, tags::ANNOTATION_PROPERTY_TYPE_CODE_SEQUENCE);
        let want = if label == "cell-dense regions" {
            "108369006"
        } else {
            "85756007"
        };
        assert_eq!(text(&t, tags::CODE_VALUE), want, "{label}");
    }
    assert!(groups
        .iter()
        .any(|g| text(g, tags::ANNOTATION_GROUP_LABEL) == "cell-dense regions"));
    for (file, iod) in [
        ("dicom/segmentation.dcm", "Segmentation"),
        ("dicom/annotations.dcm", "MicroscopyBulkSimpleAnnotations"),
    ] {
        assert_dciodvfy_clean(&dir.join(file), iod);
    }
}
