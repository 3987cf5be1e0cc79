//! The wgpu shaders against their CPU twins, on whatever adapter this machine has (Mesa's
//! lavapipe in CI: `apt-get install mesa-vulkan-drivers libvulkan1`).

use image::RgbImage;
use tessera::batch::Preprocess;
use tessera::gpu::{overlay_cpu, preprocess_cpu, Cmap, Gpu};
use tessera::model::config::Layout;

use crate::util::skip;

fn gpu() -> Option<&'static Gpu> {
    match Gpu::shared() {
        Ok(g) => {
            eprintln!("adapter: {}", g.adapter);
            Some(g)
        }
        Err(e) => {
            skip(&format!("no wgpu adapter: {e}"));
            None
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift).
fn noise(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn pre(input: (u32, u32), layout: Layout) -> Preprocess {
    Preprocess {
        input,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        to_unit: true,
        layout,
        gpu_from: None,
    }
}

#[test]
fn the_preprocess_shader_matches_its_cpu_twin_within_1e_5() {
    let Some(g) = gpu() else { return };
    // Shrinking by 2 and by a non-integer factor, enlarging, identity; both layouts.
    for (src, dst, layout, n) in [
        ((448, 448), (224, 224), Layout::Nchw, 3),
        ((300, 310), (224, 224), Layout::Nhwc, 2),
        ((100, 90), (224, 224), Layout::Nchw, 2),
        ((224, 224), (224, 224), Layout::Nhwc, 4),
        ((7, 5), (3, 2), Layout::Nchw, 1),
    ] {
        let p = pre(dst, layout);
        let px = noise(n * (src.0 * src.1 * 3) as usize, 0x9e37_79b9 ^ src.0 as u64);
        let want = preprocess_cpu(&px, n, src, &p);
        let got = g.preprocess(&px, n, src, &p).unwrap();
        assert_eq!(got.len(), want.len());
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("preprocess {src:?} -> {dst:?} {layout:?}: max |gpu - cpu| = {worst:e}");
        assert!(worst <= 1e-5, "{src:?} -> {dst:?}: {worst}");
    }
}

#[test]
fn the_cpu_twin_resizes_as_the_pipeline_does() {
    // The pipeline resizes to 8 bits, then normalises; the twin does both in f32. They differ
    // by the rounding to 8 bits at most (half a grey level, divided by the std).
    let (src, dst) = ((300u32, 300u32), (224u32, 224u32));
    let p = pre(dst, Layout::Nchw);
    let px = noise((src.0 * src.1 * 3) as usize, 42);
    let img = RgbImage::from_raw(src.1, src.0, px.clone()).unwrap();
    let resized = tessera::batch::resize(&img, dst.1, dst.0);
    let mut pipeline = vec![0f32; p.patch_len()];
    p.pack(&resized, &mut pipeline);
    let twin = preprocess_cpu(&px, 1, src, &p);
    let bound = 0.5 / 255.0 / 0.224 + 1e-4;
    let worst = pipeline
        .iter()
        .zip(&twin)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= bound, "{worst} > {bound}");
}

#[test]
fn the_overlay_shader_matches_its_cpu_twin_within_one_grey_level() {
    let Some(g) = gpu() else { return };
    let (w, h) = (301u32, 203u32);
    let base = RgbImage::from_raw(w, h, noise((w * h * 3) as usize, 7)).unwrap();
    let (gw, gh) = (13u32, 9u32);
    let grid: Vec<f32> = noise((gw * gh) as usize, 11)
        .into_iter()
        .map(|b| if b < 40 { -1.0 } else { b as f32 / 255.0 })
        .collect();
    for cmap in [Cmap::Viridis, Cmap::Jet, Cmap::Coolwarm] {
        for (threshold, alpha) in [(0.0, 0.5), (0.5, 0.8)] {
            let want = overlay_cpu(&base, &grid, (gw, gh), 23.4, threshold, alpha, cmap);
            let got = g
                .overlay(&base, &grid, (gw, gh), 23.4, threshold, alpha, cmap)
                .unwrap();
            let worst = got
                .as_raw()
                .iter()
                .zip(want.as_raw())
                .map(|(a, b)| (*a as i32 - *b as i32).abs())
                .max()
                .unwrap();
            let changed = want
                .as_raw()
                .iter()
                .zip(base.as_raw())
                .filter(|(a, b)| a != b)
                .count();
            eprintln!("overlay {cmap:?} t={threshold} a={alpha}: max diff {worst}, {changed} values blended");
            assert!(worst <= 1, "{cmap:?}: {worst}");
            assert!(
                changed > (w * h) as usize,
                "the overlay changed too little: {changed}"
            );
        }
    }
    // A grid with no patch leaves the image as it was.
    let empty = vec![-1.0; (gw * gh) as usize];
    assert_eq!(
        g.overlay(&base, &empty, (gw, gh), 23.4, 0.0, 0.5, Cmap::Viridis)
            .unwrap(),
        base
    );
}

#[test]
fn overlay_colours_are_the_viewers() {
    // The shader's viridis is the one the viewer's tiles and the report's overlays use.
    for i in 0..=100 {
        let v = i as f32 / 100.0;
        let a = tessera::gpu::colour(Cmap::Viridis, v);
        let b = tessera::output::overlay::viridis(v);
        for c in 0..3 {
            assert!(
                (a[c] - b[c] as f32).abs() <= 0.5 + 1e-3,
                "{v}: {a:?} vs {b:?}"
            );
        }
    }
}

#[test]
fn analyze_with_gpu_preprocessing_gives_the_cpus_probabilities() {
    let Some(slide) = crate::util::data("slides/aperio/CMU-1-Small-Region.svs") else {
        return;
    };
    if gpu().is_none() {
        return;
    }
    // --mpp 0.25 makes the model (0.5 µm/px) read 448-pixel patches and shrink them to 224:
    // the shader resizes, not only normalises.
    let t = tempfile::tempdir().unwrap();
    let run = |mode: &str| {
        let out = t.path().join(mode);
        let o = crate::util::tessera_str(&[
            "analyze",
            slide.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--inference",
            "tract",
            "--mpp",
            "0.25",
            "--gpu-preprocess",
            mode,
            "-q",
        ]);
        assert_eq!(crate::util::code(&o), 0, "{}", crate::util::stderr(&o));
        let dir = out.join("CMU-1-Small-Region.svs");
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
        assert_eq!(r["parameters"]["read_side"], 448);
        let csv = std::fs::read_to_string(dir.join("patches.csv")).unwrap();
        (r["parameters"]["gpu_preprocess"].clone(), csv)
    };
    let (on, csv_on) = run("on");
    let (off, csv_off) = run("off");
    assert!(on.as_str().is_some_and(|a| !a.is_empty()), "{on}");
    assert!(off.is_null());
    let probs = |csv: &str| -> Vec<(String, f64)> {
        csv.lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[..6].join(","), f[f.len() - 1].parse().unwrap())
            })
            .collect()
    };
    let (a, b) = (probs(&csv_on), probs(&csv_off));
    assert_eq!(a.len(), b.len());
    assert!(!a.is_empty());
    let mut worst = 0f64;
    for ((ka, pa), (kb, pb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb, "the same patches");
        worst = worst.max((pa - pb).abs());
    }
    // The CPU path rounds the resized patch to 8 bits first: half a grey level at most.
    eprintln!(
        "gpu vs cpu preprocessing: max |Δp| = {worst:e} over {} patches",
        a.len()
    );
    assert!(worst <= 5e-3, "{worst}");
}
