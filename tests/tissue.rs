//! Tissue detection and the patch grid on real slides.

use tessera::grid::{GridSpec, PatchGrid};
use tessera::tissue::{detect, TissueParams};
use tessera::Slide;

use crate::require;
use crate::util::*;

#[test]
fn tissue_fractions_fall_in_the_ranges_the_test_data_gives() {
    // testdata README: CMU-1 ~38% (U-Net) / ~35% (saturation > 20); TCGA 62–64%.
    for (rel, lo, hi) in [
        ("slides/aperio/CMU-1-Small-Region.svs", 0.28, 0.45),
        ("slides/aperio/TCGA-CR-7395-01A-01-TS1.svs", 0.55, 0.72),
    ] {
        let path = require!(data(rel));
        let slide = Slide::open(&path).unwrap();
        let mask = detect(&slide, &TissueParams::default()).unwrap();
        let f = mask.fraction();
        assert!((lo..=hi).contains(&f), "{rel}: tissue fraction {f:.3}");
        // The mask keeps its scale: it covers the whole slide.
        let d = slide.dimensions();
        assert!(mask.size.width as f64 * mask.downsample >= d.width as f64);
        assert!(((mask.size.width - 1) as f64 * mask.downsample) < d.width as f64);
        // And writes a PNG of its own size.
        let tmp = tempfile::tempdir().unwrap();
        let png = tmp.path().join("tissue-mask.png");
        tessera::output::write_gray_png(&png, &mask.to_image()).unwrap();
        let back = image::open(&png).unwrap().to_luma8();
        assert_eq!(
            back.dimensions(),
            (mask.size.width as u32, mask.size.height as u32)
        );
    }
}

#[test]
fn a_blank_slide_has_no_tissue_and_no_patches() {
    // sm-image is nearly blank (testdata README).
    let path = require!(data_and_openslide("slides/dicom/sm-image"));
    let slide = Slide::open(&path).unwrap();
    let mask = detect(&slide, &TissueParams::default()).unwrap();
    assert!(mask.fraction() < 0.05, "{}", mask.fraction());
}

#[test]
fn the_grid_on_cmu1_keeps_only_tissue_patches() {
    let path = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let slide = Slide::open(&path).unwrap();
    let mask = detect(&slide, &TissueParams::default()).unwrap();
    let spec = GridSpec {
        patch_pixels: 224,
        spacing_um_px: 0.5,
        stride_pixels: 224,
        min_tissue: 0.5,
    };
    let mpp = slide.mpp().unwrap().x;
    let grid = PatchGrid::plan(slide.dimensions(), mpp, &spec, &mask);
    // 2220 × 2967 at 0.499 µm/px: patches of 224 × 0.5/0.499 ≈ 224.4 level-0 pixels.
    assert_eq!((grid.cols, grid.rows), (9, 13));
    assert_eq!(grid.patches.len() + grid.skipped, 9 * 13);
    let kept = grid.patches.len() as f64 / (9.0 * 13.0);
    assert!(kept > 0.15 && kept < 0.6, "{kept}");
    assert!(grid.patches.iter().all(|p| p.tissue_fraction >= 0.5));
}
