//! Slide QC: the detectors against hand-made masks and made artefacts, no false alarms on
//! clean tissue, `--qc exclude|flag|off` end to end, and `tessera qc`.

use image::RgbImage;
use tessera::qc::{self, Kind};
use tessera::synthetic::{MadeArtefact, TileRect};

use crate::require;
use crate::util::*;

/// The HistoQC images are thumbnails at about 8 µm/px (the README: "roughly 1.25×").
const HISTOQC_UM_PX: f64 = 8.0;

fn rgb(rel: &str) -> Option<RgbImage> {
    let p = data(rel)?;
    Some(
        image::open(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .to_rgb8(),
    )
}

fn truth(rel: &str) -> Option<Vec<bool>> {
    let p = data(rel)?;
    let m = image::open(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .to_luma8();
    Some(m.pixels().map(|p| p.0[0] > 127).collect())
}

fn dice(a: &[bool], b: &[bool]) -> f64 {
    let both = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let n = a.iter().filter(|v| **v).count() + b.iter().filter(|v| **v).count();
    2.0 * both as f64 / n.max(1) as f64
}

fn share(m: &[bool]) -> f64 {
    m.iter().filter(|v| **v).count() as f64 / m.len().max(1) as f64
}

/// One ink colour of a pen mask (its bit).
fn ink(m: &[u8], bit: u8) -> Vec<bool> {
    m.iter().map(|&c| c & bit != 0).collect()
}

fn any_pen(img: &RgbImage, um_px: f64) -> Vec<bool> {
    qc::pen::detect(img, um_px, &Default::default())
        .iter()
        .map(|&c| c != 0)
        .collect()
}

/// Box-averages `img` by an integer factor (a thumbnail of a high-resolution region).
fn reduce(img: &RgbImage, f: u32) -> RgbImage {
    let (w, h) = (img.width() / f, img.height() / f);
    RgbImage::from_fn(w, h, |x, y| {
        let mut s = [0u32; 3];
        for yy in 0..f {
            for xx in 0..f {
                let p = img.get_pixel(x * f + xx, y * f + yy).0;
                for c in 0..3 {
                    s[c] += p[c] as u32;
                }
            }
        }
        image::Rgb(s.map(|v| (v / (f * f)) as u8))
    })
}

#[test]
fn pen_masks_agree_with_histoqc_hand_made_masks() {
    for (name, floor) in [("black", 0.9), ("green", 0.8), ("red", 0.8)] {
        let img = require!(rgb(&format!("qc/histoqc/pen-{name}.png")));
        let t = require!(truth(&format!("qc/histoqc/pen-{name}-mask.png")));
        let p = any_pen(&img, HISTOQC_UM_PX);
        let d = dice(&p, &t);
        println!(
            "pen-{name}: Dice {d:.3} (found {:.2}% of the image, truth {:.2}%)",
            share(&p) * 100.0,
            share(&t) * 100.0
        );
        assert!(d >= floor, "pen-{name}: Dice {d:.3} under {floor}");
    }
}

#[test]
fn edge_mask_agrees_with_the_coverslip_mask_and_is_not_pen() {
    let img = require!(rgb("qc/histoqc/coverslip-edge.png"));
    let t = require!(truth("qc/histoqc/coverslip-edge-mask.png"));
    let ink = any_pen(&img, HISTOQC_UM_PX);
    let e = qc::edge::detect(&img, &ink, HISTOQC_UM_PX, &Default::default());
    let d = dice(&e, &t);
    println!(
        "coverslip edge: Dice {d:.3} (found {:.2}%, truth {:.2}%); pen {:.2}%",
        share(&e) * 100.0,
        share(&t) * 100.0,
        share(&ink) * 100.0
    );
    assert!(d >= 0.6, "edge Dice {d:.3}");
    assert!(share(&ink) < 0.002, "the coverslip edge is not pen");
    // The pen images have no edge on their tissue or ink: only the glass's end along the top
    // of pen-green (a dark grey band 20 pixels high) and the scan's border line along the
    // bottom of pen-red, both real edges, may be found.
    for name in ["green", "red"] {
        let img = require!(rgb(&format!("qc/histoqc/pen-{name}.png")));
        let ink = any_pen(&img, HISTOQC_UM_PX);
        let e = qc::edge::detect(&img, &ink, HISTOQC_UM_PX, &Default::default());
        let (w, h) = (img.width() as usize, img.height() as usize);
        let inside: Vec<bool> = (0..w * h)
            .filter(|i| (40..h - 8).contains(&(i / w)) && (8..w - 8).contains(&(i % w)))
            .map(|i| e[i])
            .collect();
        println!(
            "pen-{name}: edge {:.3}%, away from the borders {:.3}%",
            share(&e) * 100.0,
            share(&inside) * 100.0
        );
        assert!(
            share(&inside) < 0.002,
            "pen-{name}: {:.3}% edge",
            share(&inside) * 100.0
        );
    }
}

#[test]
fn pen_found_on_pen_marked_images_and_not_on_clean_tissue() {
    // Regions and thumbnails with ink: some of each is found.
    for (rel, kind) in [
        ("images/pen-marks/tcga-red-pen.png", qc::pen::RED),
        ("images/pen-marks/wsi-blue-pen.png", qc::pen::BLUE),
        (
            "images/pen-marks/diagnostic-slide-thumb-rgb.png",
            qc::pen::BLACK,
        ),
    ] {
        let img = require!(rgb(rel));
        // The whole-slide thumbnail is about 40 µm/px (the slide's width in 468 pixels).
        let um_px = if rel.contains("diagnostic") {
            40.0
        } else {
            HISTOQC_UM_PX
        };
        let m = qc::pen::detect(&img, um_px, &Default::default());
        let [g, b, r, k] = [qc::pen::GREEN, qc::pen::BLUE, qc::pen::RED, qc::pen::BLACK]
            .map(|bit| share(&ink(&m, bit)) * 100.0);
        println!("{rel}: green {g:.2}%, blue {b:.2}%, red {r:.2}%, black {k:.2}%");
        assert!(share(&ink(&m, kind)) > 0.005, "{rel}: too little ink found");
    }
    // Clean H&E at the scale QC runs at (the 1000² TCGA regions, about 0.5 µm/px, reduced 8×
    // and 16×; the lung region reduced 4×), and the tissue beside a green stroke: no pen, and
    // on the green-pen region nothing but green.
    let green_region = reduce(&require!(rgb("images/pen-marks/tcga-green-pen.png")), 4);
    let m = qc::pen::detect(&green_region, HISTOQC_UM_PX, &Default::default());
    let green = share(&ink(&m, qc::pen::GREEN));
    let other = share(&ink(&m, !qc::pen::GREEN));
    println!(
        "tcga-green-pen /4: green {:.2}%, other ink {:.3}%",
        green * 100.0,
        other * 100.0
    );
    assert!(green > 0.02);
    assert!(other < 0.002);
    for (rel, f) in [
        ("images/tcga-regions/TCGA-HE-7130-01Z-00-DX1.png", 16),
        ("images/tcga-regions/target_image.png", 16),
        ("images/tcga-regions/TCGA-HE-7130-01Z-00-DX1.png", 8),
        ("images/tcga-regions/target_image.png", 8),
        ("images/pen-marks/tcga-lung-rgb.png", 4),
    ] {
        let img = reduce(&require!(rgb(rel)), f);
        let p = any_pen(&img, HISTOQC_UM_PX);
        println!("{rel} /{f}: pen {:.3}%", share(&p) * 100.0);
        assert!(
            share(&p) < 0.002,
            "{rel}: {:.3}% pen on clean tissue",
            share(&p) * 100.0
        );
    }
}

/// A 8192 × 6144 slide at 0.5 µm/px tiled (256-pixel tiles) from the real TCGA tissue, with
/// `artefacts` made on it.
fn made_slide(
    dir: &std::path::Path,
    name: &str,
    artefacts: Vec<MadeArtefact>,
) -> Option<std::path::PathBuf> {
    let sources = vec![
        data("images/tcga-regions/TCGA-HE-7130-01Z-00-DX1.png")?,
        data("images/tcga-regions/target_image.png")?,
    ];
    let path = dir.join(format!("{name}.svs"));
    let spec = tessera::synthetic::SyntheticSpec {
        width: 8192,
        height: 6144,
        tile: 256,
        quality: 90,
        subsampling: Default::default(),
        restart_interval: 0,
        seed: 11,
        mpp: 0.5,
        sources,
        artefacts,
    };
    tessera::synthetic::write_synthetic_slide(&path, &spec).expect("generate");
    Some(path)
}

fn tiles(cols: std::ops::Range<u64>, rows: std::ops::Range<u64>) -> TileRect {
    TileRect { cols, rows }
}

/// Runs `tessera qc` on `slides` into `out`; returns its exit code.
fn qc_cli(slides: &[&std::path::Path], out: &std::path::Path, extra: &[&str]) -> i32 {
    let mut args: Vec<&std::ffi::OsStr> = vec!["qc".as_ref()];
    args.extend(slides.iter().map(|s| s.as_os_str()));
    args.extend(["--out".as_ref(), out.as_os_str()]);
    args.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
    let o = tessera(&args, &[]);
    println!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o.status.code().unwrap_or(-1)
}

fn qc_doc(dir: &std::path::Path) -> tessera::results::QcDocument {
    tessera::results::QcDocument::read(&dir.join("qc.json")).expect("qc.json")
}

/// One kind's pixels in a folder's qc-mask.png, and the tissue mask's.
fn kind_and_tissue(dir: &std::path::Path, kind: Kind) -> (image::RgbImage, Vec<bool>, Vec<bool>) {
    let m = image::open(dir.join("qc-mask.png")).unwrap().to_rgb8();
    let t = image::open(dir.join("tissue-mask.png")).unwrap().to_luma8();
    let k: Vec<bool> = m.pixels().map(|p| p.0 == kind.color()).collect();
    let t: Vec<bool> = t.pixels().map(|p| p.0[0] > 0).collect();
    (m, k, t)
}

/// Level-0 tiles of 256 pixels as a rectangle on a raster of `ds` level-0 pixels per pixel.
fn on_raster(r: &TileRect, ds: f64) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let f = |v: u64| (v as f64 * 256.0 / ds).round() as usize;
    (
        f(r.cols.start)..f(r.cols.end),
        f(r.rows.start)..f(r.rows.end),
    )
}

#[test]
fn blur_and_folds_made_on_real_tissue_are_found_where_they_are() {
    let dir = tempfile::tempdir().unwrap();
    // Seed 11's tissue: an upper blob over tile columns 5-25, rows 1-10, a lower one over
    // columns 8-18, rows 12-21 (checked below: each rectangle is mostly tissue).
    let rects = [
        (tiles(5..10, 5..10), 2.0f32),
        (tiles(15..20, 0..5), 4.0),
        (tiles(10..15, 15..20), 6.0),
    ];
    let fold = tiles(20..25, 5..7);
    let mut arts: Vec<MadeArtefact> = rects
        .iter()
        .map(|(t, sigma)| MadeArtefact::Blur {
            tiles: t.clone(),
            sigma: *sigma,
        })
        .collect();
    arts.push(MadeArtefact::Fold {
        tiles: fold.clone(),
    });
    let p = require!(made_slide(dir.path(), "made", arts));
    let out = dir.path().join("out");
    assert_eq!(qc_cli(&[&p], &out, &[]), 0);
    let folder = out.join("made.svs");
    let doc = qc_doc(&folder);
    let ds = doc.tissue.mask_downsample;
    let (m, blur, tissue) = kind_and_tissue(&folder, Kind::Blur);
    let w = m.width() as usize;
    let mut near_any = vec![false; blur.len()];
    for (rect, sigma) in &rects {
        let (xs, ys) = on_raster(rect, ds);
        // The rectangle grown by one focus cell (320 µm) on each side: detections there
        // belong to it.
        let grow = (320.0 / 0.5 / ds).ceil() as usize;
        let (gx, gy) = (
            xs.start.saturating_sub(grow)..xs.end + grow,
            ys.start.saturating_sub(grow)..ys.end + grow,
        );
        let (mut inter, mut union, mut truth_px, mut rect_px) = (0, 0, 0, 0);
        for i in 0..blur.len() {
            let (x, y) = (i % w, i / w);
            let in_rect = xs.contains(&x) && ys.contains(&y);
            let near = gx.contains(&x) && gy.contains(&y);
            near_any[i] |= near;
            rect_px += usize::from(in_rect);
            let truth = in_rect && tissue[i];
            truth_px += usize::from(truth);
            let found = near && blur[i];
            inter += usize::from(truth && found);
            union += usize::from(truth || found);
        }
        let iou = inter as f64 / union.max(1) as f64;
        println!("blur σ = {sigma} level-0 px ({} µm): IoU {iou:.3} ({truth_px} of {rect_px} rectangle pixels are tissue)", sigma * 0.5);
        assert!(
            truth_px * 2 > rect_px,
            "σ = {sigma}: the rectangle is not mostly tissue"
        );
        assert!(iou >= 0.6, "σ = {sigma}: IoU {iou:.3}");
    }
    let tissue_px = tissue.iter().filter(|t| **t).count();
    let stray = (0..blur.len()).filter(|&i| blur[i] && !near_any[i]).count();
    println!(
        "blur away from the rectangles: {:.2}% of the tissue",
        stray as f64 * 100.0 / tissue_px as f64
    );
    assert!(stray * 100 < tissue_px, "blur found on sharp tissue");
    // The fold: found inside its band, nowhere else.
    let (_, folds, _) = kind_and_tissue(&folder, Kind::Fold);
    let (xs, ys) = on_raster(&fold, ds);
    let (mut inside, mut truth, mut outside) = (0, 0, 0);
    for i in 0..folds.len() {
        let (x, y) = (i % w, i / w);
        let in_band = xs.contains(&x) && ys.contains(&y);
        truth += usize::from(in_band && tissue[i]);
        if folds[i] {
            if (xs.start.saturating_sub(2)..xs.end + 2).contains(&x)
                && (ys.start.saturating_sub(2)..ys.end + 2).contains(&y)
            {
                inside += 1;
            } else {
                outside += 1;
            }
        }
    }
    let iou = inside as f64 / (truth + outside).max(1) as f64;
    println!("fold: {inside} pixels in the band of {truth} tissue pixels, {outside} outside");
    assert!(inside * 10 >= truth * 6, "fold band mostly missed");
    assert!(outside * 200 < tissue_px, "folds found elsewhere");
    let _ = iou;
    assert_eq!(
        doc.qc.verdict,
        tessera::qc::Verdict::Rescan,
        "{:?}",
        doc.qc.reasons
    );
}

#[test]
fn a_slide_soft_all_over_is_told_apart_from_a_sharp_one() {
    let dir = tempfile::tempdir().unwrap();
    let soft = require!(made_slide(
        dir.path(),
        "soft",
        vec![MadeArtefact::Blur {
            tiles: tiles(0..32, 0..24),
            sigma: 1.5
        }]
    ));
    let sharp = require!(made_slide(dir.path(), "sharp", vec![]));
    let out = dir.path().join("out");
    assert_eq!(qc_cli(&[&soft, &sharp], &out, &[]), 0);
    let s = qc_doc(&out.join("soft.svs"));
    println!(
        "soft: {:?} {:?} focus {:?}",
        s.qc.verdict, s.qc.reasons, s.qc.focus
    );
    assert_eq!(s.qc.verdict, tessera::qc::Verdict::Rescan);
    assert!(s.qc.tissue_pct("blur") > 60.0);
    assert!(
        s.qc.reasons.iter().any(|r| r.contains("soft")),
        "{:?}",
        s.qc.reasons
    );
    let c = qc_doc(&out.join("sharp.svs"));
    println!(
        "sharp: {:?} {:?} focus {:?}",
        c.qc.verdict, c.qc.reasons, c.qc.focus
    );
    assert_eq!(c.qc.verdict, tessera::qc::Verdict::Pass);
    for k in &c.qc.kinds {
        assert!(
            k.tissue_pct < 1.0,
            "sharp made slide: {} {:.2}%",
            k.kind,
            k.tissue_pct
        );
    }
}

/// Blue marker over a band of tissue (it looks like haematoxylin to the default model, which
/// scores it high).
fn inked(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    made_slide(
        dir,
        "inked",
        vec![MadeArtefact::Ink {
            tiles: tiles(8..22, 3..6),
            transmittance: [0.25, 0.45, 0.95],
        }],
    )
}

#[test]
fn analyze_keeps_ink_out_of_the_slide_score_and_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let slide = require!(inked(dir.path()));
    let run = |mode: &str| {
        let out = dir.path().join(mode);
        let o = tessera_str(&[
            "analyze",
            slide.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--qc",
            mode,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let folder = out.join("inked.svs");
        (
            tessera::results::SlideResult::read(&folder.join("result.json")).unwrap(),
            folder,
        )
    };
    let (ex, ex_dir) = run("exclude");
    let (off, off_dir) = run("off");
    let (flag, _) = run("flag");
    let q = ex.qc.as_ref().expect("a qc block");
    println!(
        "exclude: score {:?}, qc {:?} {:?}, {} excluded of {}",
        ex.slide_score.value, q.verdict, q.reasons, q.patches_excluded, ex.patches_analysed
    );
    println!(
        "off: score {:?}; flag: score {:?}",
        off.slide_score.value, flag.slide_score.value
    );
    assert!(off.qc.is_none());
    assert!(
        q.tissue_pct("pen") > 5.0,
        "pen share {}",
        q.tissue_pct("pen")
    );
    assert_eq!(q.verdict, tessera::qc::Verdict::Review, "{:?}", q.reasons);
    assert!(q.patches_excluded > 0);
    // The ink scored high: the top patches of `off` are inked ones.
    let table = tessera::results::PatchTable::read(&ex_dir.join("patches.csv")).unwrap();
    let col = table.column("cell-dense").unwrap();
    let (mut inked_p, mut clean_p) = (Vec::new(), Vec::new());
    for (r, p) in table.rows.iter().zip(&col) {
        let qc = r.qc.as_ref().expect("QC columns");
        if qc.excluded {
            inked_p.push(*p)
        } else {
            clean_p.push(*p)
        }
        assert_eq!(
            qc.excluded,
            qc.fractions[0] > 0.25,
            "row {} {}",
            r.col,
            r.row
        );
    }
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
    println!(
        "mean cell-dense: inked {:.3}, clean {:.3}",
        mean(&inked_p),
        mean(&clean_p)
    );
    assert!(
        mean(&inked_p) > mean(&clean_p),
        "the ink did not score high"
    );
    let (se, so) = (
        ex.slide_score.value.unwrap(),
        off.slide_score.value.unwrap(),
    );
    assert!(se <= so, "exclude {se} > off {so}");
    assert!(
        se < so,
        "the ink scored high, so leaving it out must lower the score"
    );
    assert_eq!(
        flag.slide_score.value, off.slide_score.value,
        "flag keeps every patch in"
    );
    // The excluded patches are in neither the top regions nor the figures.
    for t in &ex.top_regions {
        let row = table
            .rows
            .iter()
            .find(|r| r.col == t.patch.col && r.row == t.patch.row)
            .unwrap();
        assert!(!row.qc.as_ref().unwrap().excluded);
    }
    // Outputs: QC pictures, QuPath annotations classified Pen, the report's section.
    for f in ["qc-mask.png", "qc-overlay.png", "qc-region-1.jpg"] {
        assert!(ex_dir.join(f).is_file(), "{f}");
    }
    assert!(!off_dir.join("qc-mask.png").exists());
    let geo = std::fs::read_to_string(ex_dir.join("annotations.geojson")).unwrap();
    assert!(
        geo.contains(r#""classification":{"color":[0,160,80],"name":"Pen"}"#),
        "no Pen annotation"
    );
    let html = std::fs::read_to_string(ex_dir.join("report.html")).unwrap();
    assert!(html.contains("Slide quality") && html.contains("verdict-review"));
    assert!(html.contains("patches with pen, blur, folds or edges"));
    // The cohort summary carries the verdict.
    let csv = std::fs::read_to_string(dir.path().join("exclude/summary.csv")).unwrap();
    assert!(csv.lines().next().unwrap().contains("qc_verdict"));
    assert!(csv.contains(",review,"), "{csv}");
}

#[test]
fn clean_shared_slides_raise_no_false_alarm() {
    let cmu = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let tcga = require!(data("slides/aperio/TCGA-CR-7395-01A-01-TS1.svs"));
    require!(openslide4());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // The TCGA slide states no µm/px: 0.5 (its 20× scan) is given.
    assert_eq!(qc_cli(&[&cmu], &out, &[]), 0);
    assert_eq!(qc_cli(&[&tcga], &out, &["--mpp", "0.5"]), 0);
    for name in ["CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs"] {
        let d = qc_doc(&out.join(name));
        let shares: Vec<String> =
            d.qc.kinds
                .iter()
                .map(|k| format!("{} {:.2}%", k.kind, k.tissue_pct))
                .collect();
        println!(
            "{name}: {} ({}), focus {:?}",
            d.qc.verdict,
            shares.join(", "),
            d.qc.focus.percentiles
        );
        assert_eq!(
            d.qc.verdict,
            tessera::qc::Verdict::Pass,
            "{name}: {:?}",
            d.qc.reasons
        );
        for k in &d.qc.kinds {
            assert!(
                k.tissue_pct < 1.0,
                "{name}: {} over {:.2}% of the tissue",
                k.kind,
                k.tissue_pct
            );
        }
        assert!(d.qc.focus.not_measured.is_none());
    }
}

#[test]
fn bad_input_gets_a_verdict_or_a_typed_error() {
    let small = require!(data("slides/aperio/small.svs"));
    let lowres = require!(data("slides/dicom/camelyon-lowres"));
    let broken = require!(data("corrupt/broken.svs"));
    require!(openslide4());
    let dir = tempfile::tempdir().unwrap();
    // A slide inked all over (green marker on glass and tissue alike).
    let inked = require!(made_slide(
        dir.path(),
        "all-ink",
        vec![MadeArtefact::Ink {
            tiles: tiles(0..32, 0..24),
            transmittance: [0.3, 0.85, 0.7]
        }]
    ));
    let out = dir.path().join("out");
    // Everything readable is checked (exit 2: one slide failed), the corrupt file fails with
    // its name and reason.
    let o = tessera(
        &[
            "qc".as_ref(),
            small.as_os_str(),
            lowres.as_os_str(),
            inked.as_os_str(),
            broken.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("broken.svs") && err.contains("not a slide"),
        "{err}"
    );
    // 16 × 16 pixels, no tissue: rescan, saying so.
    let s = qc_doc(&out.join("small.svs"));
    assert_eq!(s.qc.verdict, tessera::qc::Verdict::Rescan);
    assert!(s.qc.reasons[0].contains("no tissue"), "{:?}", s.qc.reasons);
    // 29 µm/px, a thumbnail of a slide: focus cannot be judged, so review, saying why.
    let l = qc_doc(&out.join("camelyon-lowres"));
    assert_eq!(
        l.qc.verdict,
        tessera::qc::Verdict::Review,
        "{:?}",
        l.qc.reasons
    );
    assert!(l
        .qc
        .focus
        .not_measured
        .as_deref()
        .is_some_and(|w| w.contains("µm/px")));
    // All ink: rescan (clean the coverslip).
    let i = qc_doc(&out.join("all-ink.svs"));
    println!("all ink: {:?} {:?}", i.qc.verdict, i.qc.reasons);
    assert_eq!(i.qc.verdict, tessera::qc::Verdict::Rescan);
    assert!(i.qc.tissue_pct("pen") > 50.0);
    let summary = std::fs::read_to_string(out.join("qc-summary.csv")).unwrap();
    assert_eq!(summary.lines().count(), 5, "{summary}");
    assert!(
        summary.lines().nth(1).unwrap().contains("broken.svs"),
        "failures first"
    );
    // A typo in --qc-config is refused before any work (exit 64), naming the field.
    let cfg = dir.path().join("qc.json");
    std::fs::write(&cfg, r#"{"rules": {"rescan_blur_pc": 20}}"#).unwrap();
    let o = tessera(
        &[
            "qc".as_ref(),
            small.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
            "--qc-config".as_ref(),
            cfg.as_os_str(),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(64), "{err}");
    assert!(
        err.contains("qc.json") && err.contains("rescan_blur_pc"),
        "{err}"
    );
    // A QC model with QC off would silently not run: refused before any work, in `qc` and in
    // `analyze`.
    for command in ["qc", "analyze"] {
        let o = tessera(
            &[
                command.as_ref(),
                small.as_os_str(),
                "--out".as_ref(),
                out.as_os_str(),
                "--qc".as_ref(),
                "off".as_ref(),
                "--qc-model".as_ref(),
                dir.path().as_os_str(),
            ],
            &[],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(64), "{command}: {err}");
        assert!(
            err.contains("--qc off") && err.contains("--qc-model"),
            "{err}"
        );
    }
}

/// A lab's dense QC model runs through the dense machinery and feeds the artefact masks, in
/// `tessera qc` and in `analyze`. The model is a toy with hand-set weights
/// (models/qc/build_toy_qc.py: red minus blue optical density), not a trained one; with the built-in pen
/// detector switched off in --qc-config, the ink it finds can only be the model's.
#[test]
fn a_labs_qc_model_feeds_the_artefact_masks() {
    require!(python_with(&["onnx", "numpy"]));
    let dir = tempfile::tempdir().unwrap();
    let slide = require!(inked(dir.path()));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let toy = |name: &str, args: &[&str]| {
        let out = dir.path().join(name);
        let o = std::process::Command::new("python3")
            .arg(root.join("models/qc/build_toy_qc.py"))
            .arg(&out)
            .args(args)
            .output()
            .expect("python3");
        assert!(o.status.success(), "build_toy_qc.py: {}", stderr(&o));
        out
    };
    let model = toy("toy", &[]);
    let no_pen = dir.path().join("no-pen.json");
    // Ink darkens tissue: with the pen detector off, the fold detector would take the band's
    // darkest parts (qc-mask.png shows one kind per pixel), so it is off too.
    std::fs::write(
        &no_pen,
        r#"{"pen": {"seed_min_mm2": 1e9}, "stain": {"fold_min_od": 99}}"#,
    )
    .unwrap();
    let cfg = ["--qc-config", no_pen.to_str().unwrap()];
    let (without, with) = (dir.path().join("without"), dir.path().join("with"));
    assert_eq!(qc_cli(&[&slide], &without, &cfg), 0);
    let m = model.to_str().unwrap();
    assert_eq!(
        qc_cli(&[&slide], &with, &[cfg[0], cfg[1], "--qc-model", m]),
        0
    );
    let off = qc_doc(&without.join("inked.svs"));
    assert_eq!(
        off.qc.tissue_pct("pen"),
        0.0,
        "the built-in pen detector is off"
    );
    assert!(off.qc.model.is_none());
    let folder = with.join("inked.svs");
    let on = qc_doc(&folder);
    let r = on.qc.model.as_ref().expect("the QC model's record");
    println!("{}", serde_json::to_string(r).unwrap());
    assert!(r.tiles > 0);
    assert_eq!(r.name, "toy");
    assert_eq!(
        r.classes
            .iter()
            .map(|c| (c.class.as_str(), c.kind.as_str()))
            .collect::<Vec<_>>(),
        [("background", "none"), ("pen marking", "pen")]
    );
    let pen_pct = on.qc.tissue_pct("pen");
    assert!(pen_pct > 5.0, "pen {pen_pct}% of tissue");
    assert!(
        (r.tissue_pct["pen"] - pen_pct).abs() < 0.01,
        "the model's flags are the pen mask: {} vs {pen_pct}",
        r.tissue_pct["pen"]
    );
    assert_eq!(
        on.qc.verdict,
        tessera::qc::Verdict::Review,
        "{:?}",
        on.qc.reasons
    );
    // Where the ink is: the made band, and nowhere else.
    let ds = on.tissue.mask_downsample;
    let (m_img, pen, tissue) = kind_and_tissue(&folder, Kind::Pen);
    let w = m_img.width() as usize;
    let (xs, ys) = on_raster(&tiles(8..22, 3..6), ds);
    let (mut inter, mut union, mut outside) = (0, 0, 0);
    for i in 0..pen.len() {
        let (x, y) = (i % w, i / w);
        let truth = xs.contains(&x) && ys.contains(&y) && tissue[i];
        inter += usize::from(truth && pen[i]);
        union += usize::from(truth || pen[i]);
        outside += usize::from(pen[i] && !(xs.contains(&x) && ys.contains(&y)));
    }
    let iou = inter as f64 / union.max(1) as f64;
    println!("toy QC model's pen against the made band: IoU {iou:.3}, {outside} pixels outside");
    assert!(iou > 0.95, "IoU {iou}");
    // One QC pixel of blending either side of the band at most.
    assert!(
        outside <= 2 * (xs.len() + ys.len()),
        "{outside} pen pixels off the band"
    );

    // analyze: the same flags keep the inked patches out of the score; the model is in the
    // record and in the run key.
    let classifier = dir.path().join("tiny");
    build_random("tiny", &classifier, &["--side", "64", "--patch", "64"]);
    let analyse = |out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut args = vec![
            "analyze",
            slide.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--model",
            classifier.to_str().unwrap(),
            "--qc-config",
            no_pen.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = tessera_str(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        tessera::results::SlideResult::read(&out.join("inked.svs/result.json")).unwrap()
    };
    let plain = analyse("a-without", &[]);
    let learned = analyse("a-with", &["--qc-model", m]);
    let q = learned.qc.as_ref().unwrap();
    assert_eq!(
        q.model.as_ref().map(|r| r.sha256.as_str()),
        Some(r.sha256.as_str())
    );
    assert!(q.tissue_pct("pen") > 5.0);
    assert!(q.patches_excluded > plain.qc.as_ref().unwrap().patches_excluded);
    assert_ne!(
        learned.run_key, plain.run_key,
        "the QC model is in the run key"
    );
    let html = std::fs::read_to_string(dir.path().join("a-with/inked.svs/report.html")).unwrap();
    assert!(
        html.contains("The lab's QC model") && html.contains("pen marking → pen"),
        "the report names the QC model"
    );

    // Models that cannot be QC models are refused before any slide is read, naming the file
    // and the reason: a classifier (not dense), a class whose kind is unknown.
    let smudge = toy("smudge", &["--class-name", "smudge"]);
    let mapped = toy("mapped", &["--class-name", "smudge", "--map", "fold"]);
    for (bad, why) in [
        (&classifier, "must be dense"),
        (&smudge, "names no artefact kind"),
    ] {
        let out = dir.path().join("bad");
        let o = tessera_str(&[
            "qc",
            slide.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--qc-model",
            bad.to_str().unwrap(),
        ]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(3), "{err}");
        assert!(
            err.contains("config.json") && err.contains("not a QC model") && err.contains(why),
            "{err}"
        );
        assert!(!out.join("inked.svs").exists());
    }
    // Mapped in tessera.qc_classes, the same class is a fold.
    let out = dir.path().join("mapped-out");
    assert_eq!(
        qc_cli(
            &[&slide],
            &out,
            &[cfg[0], cfg[1], "--qc-model", mapped.to_str().unwrap()]
        ),
        0
    );
    let d = qc_doc(&out.join("inked.svs"));
    assert_eq!(d.qc.model.as_ref().unwrap().classes[1].kind, "fold");
    assert!(d.qc.tissue_pct("fold") > 5.0, "the made band is a fold now");
}

/// An air bubble's round outline over glass and tissue: the disc inside it is flagged (as
/// `edge`, the coverslip kind), and the slide goes to review saying so.
#[test]
fn a_bubble_is_found_by_its_round_outline() {
    let dir = tempfile::tempdir().unwrap();
    // 1 mm across (1,000 level-0 pixels of radius at 0.5 µm/px), a 30 µm ring, over the
    // lower tissue blob's right edge and the glass beside it.
    let (cx, cy, r) = (4800u64, 4300u64, 1000.0f64);
    let p = require!(made_slide(
        dir.path(),
        "bubble",
        vec![MadeArtefact::Bubble {
            centre: (cx, cy),
            radius: r,
            ring: 60.0,
        }]
    ));
    let out = dir.path().join("out");
    assert_eq!(qc_cli(&[&p], &out, &[]), 0);
    let folder = out.join("bubble.svs");
    let doc = qc_doc(&folder);
    let ds = doc.tissue.mask_downsample;
    let (m, edge, tissue) = kind_and_tissue(&folder, Kind::Edge);
    let w = m.width() as usize;
    let (mut inter, mut union, mut disc_tissue) = (0, 0, 0);
    for i in 0..edge.len() {
        let x = ((i % w) as f64 + 0.5) * ds - cx as f64;
        let y = ((i / w) as f64 + 0.5) * ds - cy as f64;
        let disc = (x * x + y * y).sqrt() <= r;
        inter += usize::from(disc && edge[i]);
        union += usize::from(disc || edge[i]);
        disc_tissue += usize::from(disc && tissue[i]);
    }
    let iou = inter as f64 / union.max(1) as f64;
    println!(
        "bubble: IoU {iou:.3} with the disc ({disc_tissue} tissue pixels in it); {:?} {:?}",
        doc.qc.verdict, doc.qc.reasons
    );
    assert!(disc_tissue > 100, "the bubble lies over tissue");
    assert!(iou > 0.8, "IoU {iou}");
    assert_eq!(doc.qc.verdict, tessera::qc::Verdict::Review);
    assert!(
        doc.qc.reasons.iter().any(|r| r.contains("air bubble")),
        "{:?}",
        doc.qc.reasons
    );
    // tessera qc crops the worst squares, as analyze crops the worst patches.
    let first = doc.qc.regions.first().expect("a crop of the bubble");
    assert!(first.reason.contains("edge"), "{}", first.reason);
    let jpeg = std::fs::read(folder.join(&first.file)).unwrap();
    assert!(jpeg.starts_with(&[0xff, 0xd8]), "a JPEG");
    // 512 µm at 0.5 µm/px.
    assert_eq!(first.crop_level0.side, 1024);
    let (x, y) = (first.patch.x as f64, first.patch.y as f64);
    let side = first.patch.side as f64;
    assert!(
        (x + side / 2.0 - cx as f64).abs() < r && (y + side / 2.0 - cy as f64).abs() < r,
        "the crop lies on the bubble: {first:?}"
    );
}

/// A dense model's class maps leave the artefacts out with `--qc exclude` as its patch
/// figures do: the inked band's cells have no value, so the classes' areas shrink by about the
/// band, and `--qc flag` keeps them.
#[test]
fn a_dense_models_class_maps_leave_the_artefacts_out() {
    require!(python_with(&["onnx", "numpy"]));
    let dir = tempfile::tempdir().unwrap();
    let slide = require!(inked(dir.path()));
    let model = dir.path().join("dense");
    build_random("tiny", &model, &DENSE_TINY);
    let area = |mode: &str| -> f64 {
        let out = dir.path().join(mode);
        let o = tessera_str(&[
            "analyze",
            slide.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--qc",
            mode,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let r = tessera::results::SlideResult::read(&out.join("inked.svs/result.json")).unwrap();
        // Two softmax classes: every valued cell is at or above 0.5 in one of them.
        r.classes.iter().map(|c| c.area_above_threshold_mm2).sum()
    };
    let (exclude, flag) = (area("exclude"), area("flag"));
    // The band: tiles 8-22 × 3-6 of 256 pixels at 0.5 µm/px, mostly tissue.
    let band_mm2 = 14.0 * 3.0 * (256.0f64 * 0.5 / 1000.0).powi(2);
    println!("class areas: exclude {exclude:.3} mm², flag {flag:.3} mm², band {band_mm2:.3} mm²");
    assert!(flag - exclude > 0.5 * band_mm2, "{flag} - {exclude}");
    // The pen mask reaches a little past the ink (its hysteresis grows up to 80 µm).
    assert!(flag - exclude < 1.5 * band_mm2, "{flag} - {exclude}");
}
