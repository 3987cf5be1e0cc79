//! Every shared slide opens through OpenSlide 4 and reports what the test data's README lists.

use tessera::slide::MppSource;
use tessera::{BackendChoice, Level0Px, Size, Slide};

use crate::require;
use crate::util::*;

struct Expect {
    path: &'static str,
    vendor: &'static str,
    size: (u64, u64),
    downsamples: &'static [f64],
    mpp: Option<f64>,
    objective: Option<f64>,
    associated: &'static [(&'static str, u64, u64)],
}

const SLIDES: &[Expect] = &[
    Expect {
        path: "slides/aperio/CMU-1-Small-Region.svs",
        vendor: "aperio",
        size: (2220, 2967),
        downsamples: &[1.0],
        mpp: Some(0.499),
        objective: Some(20.0),
        associated: &[
            ("label", 387, 463),
            ("macro", 1280, 431),
            ("thumbnail", 574, 768),
        ],
    },
    Expect {
        path: "slides/aperio/TCGA-CR-7395-01A-01-TS1.svs",
        vendor: "aperio",
        size: (4443, 3567),
        downsamples: &[1.0, 2.0005],
        mpp: None,
        objective: None,
        associated: &[("thumbnail", 956, 768)],
    },
    Expect {
        path: "slides/aperio/small.svs",
        vendor: "aperio",
        size: (16, 16),
        downsamples: &[1.0],
        mpp: Some(0.499),
        objective: Some(20.0),
        associated: &[("thumbnail", 16, 16)],
    },
    Expect {
        path: "slides/generic-tiff/boxes.tiff",
        vendor: "generic-tiff",
        size: (300, 250),
        downsamples: &[1.0, 2.0, 4.016, 8.086],
        mpp: Some(352.78),
        objective: None,
        associated: &[],
    },
    Expect {
        path: "slides/generic-tiff/boxes-deflate-levels.tiff",
        vendor: "generic-tiff",
        size: (300, 250),
        downsamples: &[1.0, 2.0, 4.016, 8.086],
        mpp: Some(352.86),
        objective: None,
        associated: &[],
    },
    Expect {
        path: "slides/dicom/boxes/boxes_0.dcm",
        vendor: "dicom",
        size: (16, 16),
        downsamples: &[1.0],
        mpp: Some(0.499),
        objective: Some(20.0),
        associated: &[("thumbnail", 16, 16)],
    },
    Expect {
        path: "slides/dicom/boxes/boxes_1.dcm",
        vendor: "dicom",
        size: (16, 16),
        downsamples: &[1.0],
        mpp: Some(0.499),
        objective: Some(20.0),
        associated: &[("thumbnail", 16, 16)],
    },
    Expect {
        path: "slides/dicom/cmu-1-small-region",
        vendor: "dicom",
        size: (2220, 2967),
        downsamples: &[
            1.0, 2.0003, 4.002, 8.0167, 16.0624, 32.212, 64.8971, 129.7941, 273.6136, 574.2,
            1296.75, 2593.5,
        ],
        mpp: Some(0.499),
        objective: None,
        associated: &[],
    },
    Expect {
        path: "slides/dicom/camelyon-lowres",
        vendor: "dicom",
        size: (1152, 700),
        downsamples: &[1.0],
        mpp: Some(28.969),
        objective: None,
        associated: &[],
    },
    Expect {
        path: "slides/dicom/sm-image",
        vendor: "dicom",
        size: (50, 50),
        downsamples: &[1.0],
        mpp: Some(0.499),
        objective: None,
        associated: &[],
    },
    Expect {
        path: "slides/dicom/concat",
        vendor: "dicom",
        size: (64, 32),
        downsamples: &[1.0],
        mpp: None,
        objective: None,
        associated: &[],
    },
];

/// The two readers of Aperio and generic TIFF files.
const BOTH: [BackendChoice; 2] = [BackendChoice::OpenSlide, BackendChoice::Native];

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-9)
}

#[test]
fn every_shared_slide_reports_its_listed_metadata() {
    require!(data_and_openslide("slides"));
    for (e, backend) in SLIDES
        .iter()
        .flat_map(|e| [(e, BackendChoice::Auto), (e, BackendChoice::OpenSlide)])
    {
        let path = data(e.path).unwrap();
        let slide = open_as(&path, backend);
        // Auto reads Aperio, generic TIFF and DICOM natively, everything else through
        // OpenSlide.
        let expected_backend = match (backend, e.vendor) {
            (BackendChoice::Auto, "aperio" | "generic-tiff" | "dicom") => "native",
            _ => "openslide",
        };
        assert_eq!(slide.backend().name, expected_backend, "{}", e.path);
        assert_eq!(slide.vendor(), Some(e.vendor), "{}", e.path);
        assert_eq!(
            slide.dimensions(),
            Size::new(e.size.0, e.size.1),
            "{}",
            e.path
        );
        let ds: Vec<f64> = slide.levels().iter().map(|l| l.downsample).collect();
        assert_eq!(ds.len(), e.downsamples.len(), "{}: levels {ds:?}", e.path);
        for (got, want) in ds.iter().zip(e.downsamples) {
            assert!(close(*got, *want, 1e-3), "{}: downsamples {ds:?}", e.path);
        }
        match (slide.mpp(), e.mpp) {
            (Some(m), Some(want)) => {
                assert!(
                    close(m.x, want, 1e-4) && close(m.y, want, 1e-4),
                    "{}: {m:?}",
                    e.path
                )
            }
            (None, None) => {}
            (got, want) => panic!("{}: MPP {got:?}, expected {want:?}", e.path),
        }
        assert_eq!(slide.objective_power(), e.objective, "{}", e.path);
        let assoc: Vec<(&str, u64, u64)> = slide
            .associated_images()
            .iter()
            .map(|a| (a.name.as_str(), a.size.width, a.size.height))
            .collect();
        assert_eq!(assoc, e.associated, "{}", e.path);
    }
}

#[test]
fn mpp_sources_are_recorded() {
    let svs = require!(data_and_openslide("slides/aperio/CMU-1-Small-Region.svs"));
    let slide = Slide::open(&svs).unwrap();
    assert!(matches!(&slide.mpp().unwrap().source,
        MppSource::SlideMetadata { field } if field.contains("aperio.MPP")));
    let tiff = Slide::open(data("slides/generic-tiff/boxes.tiff").unwrap()).unwrap();
    assert!(
        matches!(&tiff.mpp().unwrap().source, MppSource::TiffResolution { unit } if unit == "centimeter")
    );
    let dcm = Slide::open(data("slides/dicom/sm-image").unwrap()).unwrap();
    assert!(matches!(&dcm.mpp().unwrap().source,
        MppSource::SlideMetadata { field } if field.contains("DICOM")));
}

#[test]
fn a_dicom_series_opens_the_same_through_its_folder_or_any_file() {
    let dir = require!(data_and_openslide("slides/dicom/cmu-1-small-region"));
    let by_dir = Slide::open(&dir).unwrap();
    let by_file = Slide::open(dir.join("level-7-frames-0-1.dcm")).unwrap();
    assert_eq!(by_dir.levels(), by_file.levels());
    assert_eq!(
        by_dir.properties().get("openslide.quickhash-1"),
        by_file.properties().get("openslide.quickhash-1")
    );
}

#[test]
fn best_level_for_downsample_follows_openslide() {
    let dir = require!(data_and_openslide("slides/dicom/cmu-1-small-region"));
    let slide = Slide::open(&dir).unwrap();
    let ds1 = slide.levels()[1].downsample;
    for (ds, want) in [
        (0.5, 0),
        (1.0, 0),
        (1.99, 0),
        (ds1 - 1e-9, 0),
        (ds1, 1),
        (3.9, 1),
        (4.01, 2),
        (600.0, 9),
        (2593.5, 11),
        (1e9, 11),
        (f64::NAN, 0),
    ] {
        assert_eq!(slide.best_level_for_downsample(ds), want, "downsample {ds}");
    }
}

#[test]
fn icc_profiles_are_read_under_openslide_4() {
    let tcga = require!(data_and_openslide(
        "slides/aperio/TCGA-CR-7395-01A-01-TS1.svs"
    ));
    for backend in BOTH {
        let icc = open_as(&tcga, backend).icc_profile().unwrap().unwrap();
        assert_eq!(icc.len(), 3144);
        assert_eq!(
            &icc[36..40],
            b"acsp",
            "ICC profiles carry 'acsp' at byte 36"
        );
        let cmu = open_as(
            data("slides/aperio/CMU-1-Small-Region.svs").unwrap(),
            backend,
        );
        assert_eq!(cmu.icc_profile().unwrap(), None);
    }
}

#[test]
fn associated_images_decode_on_request_only() {
    let svs = require!(data_and_openslide("slides/aperio/CMU-1-Small-Region.svs"));
    for backend in BOTH {
        let slide = open_as(&svs, backend);
        let thumb = slide.read_associated_image("thumbnail").unwrap();
        assert_eq!(thumb.dimensions(), (574, 768));
        // A real thumbnail: not one flat colour.
        let first = thumb.get_pixel(0, 0);
        assert!(thumb.pixels().any(|p| p != first));
        let err = slide.read_associated_image("barcode").unwrap_err();
        assert!(
            matches!(err, tessera::SlideError::AssociatedImageNotFound { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("label, macro, thumbnail"), "{err}");
    }
}

#[test]
fn regions_are_white_outside_the_slide_and_consistent_inside() {
    let svs = require!(data_and_openslide("slides/aperio/CMU-1-Small-Region.svs"));
    for backend in BOTH {
        let slide = open_as(&svs, backend);
        // Straddling the bottom-left corner: 100 columns left of the slide, 50 rows below.
        let r = slide
            .read_region(Level0Px::new(-100, 2967 - 150), 0, Size::new(400, 200))
            .unwrap();
        for (x, y, p) in r.enumerate_pixels() {
            if x < 100 || y >= 150 {
                assert_eq!(
                    p.0,
                    [255, 255, 255],
                    "{backend:?}: outside pixel ({x}, {y})"
                );
            }
        }
        // The inside part equals the same pixels read as their own (unaligned) region.
        let inside = slide
            .read_region(Level0Px::new(0, 2967 - 150), 0, Size::new(300, 150))
            .unwrap();
        for (x, y, p) in inside.enumerate_pixels() {
            assert_eq!(r.get_pixel(x + 100, y), p, "{backend:?}: ({x}, {y})");
        }
        // And is not blank: this corner of CMU-1 holds slide background, not pure white.
        assert!(inside.pixels().any(|p| p.0 != [255, 255, 255]));
    }
}

#[test]
fn boxes_level_0_matches_openslides_own_rendering() {
    let tiff = require!(data_and_openslide("slides/generic-tiff/boxes.tiff"));
    let reference = image::open(data("slides/generic-tiff/boxes.png").unwrap())
        .unwrap()
        .to_rgb8();
    for backend in BOTH {
        let ours = open_as(&tiff, backend)
            .read_region(Level0Px::new(0, 0), 0, Size::new(300, 250))
            .unwrap();
        assert_eq!(ours.dimensions(), reference.dimensions());
        assert!(
            ours == reference,
            "{backend:?}: boxes.tiff level 0 differs from boxes.png"
        );
    }
}

#[test]
fn the_icc_option_converts_to_srgb_and_is_off_by_default() {
    let tcga = require!(data_and_openslide(
        "slides/aperio/TCGA-CR-7395-01A-01-TS1.svs"
    ));
    let plain = open_as(&tcga, BackendChoice::Native);
    assert!(!plain.applies_icc());
    let config = tessera::SlideConfig {
        backend: BackendChoice::Native,
        apply_icc: true,
        ..tessera::SlideConfig::default()
    };
    let managed = Slide::open_with(&tcga, &config).unwrap();
    assert!(managed.applies_icc());
    let at = (Level0Px::new(1000, 1000), 0, Size::new(128, 128));
    let a = plain.read_region(at.0, at.1, at.2).unwrap();
    let b = managed.read_region(at.0, at.1, at.2).unwrap();
    // The TCGA profile is sRGB ("IEC 61966-2.1"), so sRGB -> sRGB changes pixels by rounding
    // at most.
    let max = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap();
    assert!(max <= 2, "{max}");
    // A slide without a profile reads the same with the option on.
    let cmu = data("slides/aperio/CMU-1-Small-Region.svs").unwrap();
    assert!(!Slide::open_with(&cmu, &config).unwrap().applies_icc());
}
