//! The wgpu shaders against their CPU twins, on whatever adapter this machine has (Mesa's
//! lavapipe in CI: `apt-get install mesa-vulkan-drivers libvulkan1`).

use image::RgbImage;
use tessera::gpu::Gpu;
use tessera::imaging::colour::{overlay_cpu, Cmap};
use tessera::imaging::preprocess::preprocess_cpu;
use tessera::imaging::preprocess::Preprocess;
use tessera::model::config::Layout;

use crate::util::{noise, skip};

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

/// The preprocess shader and its CPU twin on the same patches: the twin's output and the
/// largest difference between the two (which must be equally long).
fn shader_vs_twin(
    g: &Gpu,
    px: &[u8],
    n: usize,
    src: (u32, u32),
    p: &Preprocess,
) -> (Vec<f32>, f32) {
    let want = preprocess_cpu(px, n, src, p);
    let got = g.preprocess(px, n, src, p).unwrap();
    assert_eq!(got.len(), want.len());
    let worst = max_diff(&got, &want);
    (want, worst)
}

/// The largest |a − b| over two equally long slices (NaNs ignored, as `f32::max` does).
fn max_diff<T: Copy + std::ops::Sub<Output = T> + PartialOrd + Default>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).fold(T::default(), |worst, (&x, &y)| {
        let d = if x > y { x - y } else { y - x };
        if d > worst {
            d
        } else {
            worst
        }
    })
}

fn pre(input: (u32, u32), layout: Layout) -> Preprocess {
    Preprocess {
        input,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        to_unit: true,
        layout,
        deferred: None,
        on_gpu: false,
        stain: None,
        geometry: Default::default(),
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
        let (_, worst) = shader_vs_twin(g, &px, n, src, &p);
        eprintln!("preprocess {src:?} -> {dst:?} {layout:?}: max |gpu - cpu| = {worst:e}");
        assert!(worst <= 1e-5, "{src:?} -> {dst:?}: {worst}");
    }
}

/// An H&E-like patch: pink and purple noise (so the stain statistics are not degenerate).
fn he_like(n: usize, seed: u64) -> Vec<u8> {
    noise(n, seed)
        .chunks(3)
        .flat_map(|c| {
            let t = c[0] as u32;
            [
                150 + (t * 90 / 255) as u8,
                60 + (c[1] as u32 * 100 / 255) as u8,
                130 + (c[2] as u32 * 80 / 255) as u8,
            ]
        })
        .take(n)
        .collect()
}

#[test]
fn the_stain_normalising_shader_matches_its_cpu_twin_within_1e_5() {
    let Some(g) = gpu() else { return };
    let target =
        tessera::imaging::stain::Reinhard::new([60.0, 25.0, -15.0], [12.0, 6.0, 5.0]).unwrap();
    for (src, dst, layout, n) in [
        ((224, 224), (224, 224), Layout::Nchw, 3),
        ((448, 448), (224, 224), Layout::Nhwc, 2),
        ((50, 70), (64, 64), Layout::Nchw, 2),
        ((1, 1), (2, 2), Layout::Nchw, 1),
    ] {
        let mut p = pre(dst, layout);
        p.stain = Some(target);
        let px = he_like(n * (src.0 * src.1 * 3) as usize, 0x5eed ^ src.1 as u64);
        let (want, worst) = shader_vs_twin(g, &px, n, src, &p);
        eprintln!("reinhard {src:?} -> {dst:?} {layout:?}: max |gpu - cpu| = {worst:e}");
        assert!(worst <= 1e-5, "{src:?} -> {dst:?}: {worst}");
        // Normalisation did something: the same patches unnormalised differ.
        p.stain = None;
        let plain = preprocess_cpu(&px, n, src, &p);
        let moved = max_diff(&plain, &want);
        assert!(
            moved > 0.1,
            "{src:?}: normalisation changed at most {moved}"
        );
    }
    // A uniform patch (glass): its standard deviations are float noise, not structure. It is
    // shifted to the target's mean colour, uniformly, on both sides alike.
    let mut p = pre((64, 64), Layout::Nchw);
    p.stain = Some(target);
    let flat: Vec<u8> = [232u8, 226, 238].repeat(2 * 100 * 100);
    let (want, worst) = shader_vs_twin(g, &flat, 2, (100, 100), &p);
    assert!(worst <= 1e-5, "uniform patch: {worst}");
    for plane in want.chunks(64 * 64) {
        let (lo, hi) = plane
            .iter()
            .fold((f32::MAX, f32::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
        assert!(hi - lo < 1e-4, "a uniform patch stays uniform: {lo}..{hi}");
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
    let resized = tessera::imaging::resize::resize(&img, dst.1, dst.0);
    let mut pipeline = vec![0f32; p.patch_len()];
    p.pack(&resized, &mut pipeline);
    let twin = preprocess_cpu(&px, 1, src, &p);
    let bound = 0.5 / 255.0 / 0.224 + 1e-4;
    let worst = max_diff(&pipeline, &twin);
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
        let a = tessera::imaging::colour::colour(Cmap::Viridis, v);
        let b = tessera::imaging::colour::viridis(v);
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
                // The last probability column (QC's columns follow the probabilities).
                (f[..6].join(","), f[8].parse().unwrap())
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

/// A model resized with torchvision's method (the WSInfer default), read at its own size, is
/// preprocessed on the GPU: every method copies a patch already at the model's size, so
/// `--gpu-preprocess on` is honoured, and the probabilities are the CPU's.
#[test]
fn a_torchvision_model_read_at_its_own_size_is_preprocessed_on_the_gpu() {
    let Some(slide) = crate::util::data("slides/aperio/CMU-1-Small-Region.svs") else {
        return;
    };
    crate::require!(crate::util::python_with(&["onnx", "numpy"]));
    if gpu().is_none() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("tiny");
    crate::util::build_random("tiny", &model, &["--calibrate"]);
    let run = |mode: &str| {
        let out = t.path().join(mode);
        let o = crate::util::tessera_str(&[
            "analyze",
            slide.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--inference",
            "tract",
            // The model's own 0.5 µm/px: 224-pixel patches read at 224.
            "--mpp",
            "0.5",
            "--gpu-preprocess",
            mode,
            "-q",
        ]);
        assert_eq!(crate::util::code(&o), 0, "{}", crate::util::stderr(&o));
        let dir = out.join("CMU-1-Small-Region.svs");
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
        assert_eq!(r["parameters"]["read_side"], 224);
        let table = tessera::results::PatchTable::read(&dir.join("patches.csv")).unwrap();
        (r, table)
    };
    let (on, rows_on) = run("on");
    let (off, rows_off) = run("off");
    let device = on["preprocessing"]["device"].as_str().unwrap_or_default();
    assert!(
        !device.is_empty() && device != "CPU",
        "{}",
        on["preprocessing"]
    );
    assert_eq!(off["preprocessing"]["device"], "CPU");
    assert_eq!(rows_on.rows.len(), rows_off.rows.len());
    assert!(!rows_on.rows.is_empty());
    let worst = rows_on
        .rows
        .iter()
        .zip(&rows_off.rows)
        .map(|(a, b)| (a.probs[0] - b.probs[0]).abs())
        .fold(0f32, f32::max);
    eprintln!("torchvision model at its own size, gpu vs cpu: max |Δp| = {worst:e}");
    assert!(worst <= 1e-4, "{worst}");
}

#[test]
fn analyze_with_reinhard_normalisation_records_it_and_agrees_on_gpu_and_cpu() {
    let Some(slide) = crate::util::data("slides/aperio/CMU-1-Small-Region.svs") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let run = |name: &str, extra: &[&str]| {
        let out = t.path().join(name);
        let mut args = vec![
            "analyze",
            slide.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--inference",
            "tract",
            "-q",
        ];
        args.extend_from_slice(extra);
        let o = crate::util::tessera_str(&args);
        assert_eq!(crate::util::code(&o), 0, "{}", crate::util::stderr(&o));
        let dir = out.join("CMU-1-Small-Region.svs");
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
        let report = std::fs::read_to_string(dir.join("report.html")).unwrap();
        assert_eq!(
            report.contains("Stain normalisation"),
            extra.contains(&"--reinhard"),
            "the report states the normalisation when there is one"
        );
        let csv = std::fs::read_to_string(dir.join("patches.csv")).unwrap();
        let probs: Vec<f64> = csv
            .lines()
            .skip(1)
            // prob_cell-dense, the last probability (QC's columns follow).
            .map(|l| l.split(',').nth(8).unwrap().parse().unwrap())
            .collect();
        (r, probs)
    };
    // A pale, low-contrast target: far from this slide's own staining.
    let target = "80,12,-6,6,3,2";
    let (plain, p0) = run("plain", &["--gpu-preprocess", "off"]);
    let (cpu, p1) = run("cpu", &["--gpu-preprocess", "off", "--reinhard", target]);
    assert!(plain["parameters"]["stain_normalisation"].is_null());
    let s = &cpu["parameters"]["stain_normalisation"];
    assert_eq!(s["method"], "reinhard");
    assert_eq!(s["lab_mean"], serde_json::json!([80.0, 12.0, -6.0]));
    assert_eq!(s["lab_std"], serde_json::json!([6.0, 3.0, 2.0]));
    assert_ne!(
        plain["run_key"], cpu["run_key"],
        "the target is part of the run key"
    );
    assert_eq!(p0.len(), p1.len());
    assert!(!p0.is_empty());
    let moved = max_diff(&p0, &p1);
    eprintln!(
        "reinhard vs none: max |Δp| = {moved:e} over {} patches",
        p0.len()
    );
    assert!(
        moved > 1e-3,
        "normalisation changed no probability: {moved}"
    );
    // A bad target is a usage error naming it.
    let o = crate::util::tessera_str(&[
        "analyze",
        slide.to_str().unwrap(),
        "--out",
        t.path().join("bad").to_str().unwrap(),
        "--reinhard",
        "80,12,-6,6,3,0",
    ]);
    assert_eq!(crate::util::code(&o), 64, "a usage error (EX_USAGE)");
    assert!(crate::util::stderr(&o).contains("standard deviations above 0"));
    if gpu().is_none() {
        return;
    }
    let (gpu_run, p2) = run("gpu", &["--gpu-preprocess", "on", "--reinhard", target]);
    assert!(gpu_run["parameters"]["gpu_preprocess"].is_string());
    let worst = max_diff(&p1, &p2);
    eprintln!("reinhard on gpu vs cpu: max |Δp| = {worst:e}");
    assert!(worst <= 1e-4, "{worst}");
}
