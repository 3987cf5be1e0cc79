//! `tessera analyze` end to end: outputs, their formats, determinism, failures.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use tessera::model::InferenceChoice;
use tessera::pipeline::{analyze, AnalyzeConfig};
use tessera::Error;

use crate::require;
use crate::util::*;

const OUTPUTS: [&str; 13] = [
    "result.json",
    "report.html",
    "region-1.jpg",
    "patches.csv",
    "annotations.geojson",
    "heatmap-other.png",
    "heatmap-cell-dense.png",
    "overlay-other.png",
    "overlay-cell-dense.png",
    "tissue-mask.png",
    "thumbnail.png",
    "qc-mask.png",
    "qc-overlay.png",
];

fn config(out: &Path, inference: InferenceChoice) -> AnalyzeConfig {
    AnalyzeConfig {
        out: out.into(),
        inference,
        ..AnalyzeConfig::default()
    }
}

/// patches.csv as (col,row) -> probabilities.
fn csv_probs(dir: &Path) -> BTreeMap<(u32, u32), Vec<f64>> {
    let text = std::fs::read_to_string(dir.join("patches.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(&header[..4], ["minx", "miny", "width", "height"]);
    // The probability columns by name (QC's columns follow them).
    let probs: Vec<usize> = (0..header.len())
        .filter(|&i| header[i].starts_with("prob_"))
        .collect();
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), header.len(), "{l}");
            let key = (f[4].parse().unwrap(), f[5].parse().unwrap());
            (key, probs.iter().map(|&i| f[i].parse().unwrap()).collect())
        })
        .collect()
}

#[test]
fn cmu1_writes_every_output_in_the_formats_lab_tools_read() {
    let svs = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let tmp = tempfile::tempdir().unwrap();
    let s = analyze(
        &svs,
        &config(tmp.path(), InferenceChoice::Auto),
        Default::default(),
    )
    .unwrap();
    let dir = tmp.path().join("CMU-1-Small-Region.svs");
    assert_eq!(s.folder, dir);
    for f in OUTPUTS {
        assert!(dir.join(f).is_file(), "missing {f}");
    }
    // Nothing else left behind (no temporary folders or files).
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("result.json")).unwrap()).unwrap();
    // Besides the fixed outputs, one crop per top region (region-1.jpg is among them).
    let regions = r["top_regions"].as_array().unwrap();
    assert!((1..=6).contains(&regions.len()));
    for (k, reg) in regions.iter().enumerate() {
        assert_eq!(reg["file"], format!("region-{}.jpg", k + 1));
        assert!(dir.join(format!("region-{}.jpg", k + 1)).is_file());
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        OUTPUTS.len() + regions.len() - 1
    );
    assert_eq!(r["schema_version"], 3);
    // CMU-1-Small-Region is clean: QC passes it and excludes nothing.
    assert_eq!(r["qc"]["verdict"], "pass", "{}", r["qc"]);
    assert_eq!(r["qc"]["patches_excluded"], 0);
    assert_eq!(r["slide"]["mpp"]["x"], 0.499);
    assert_eq!(r["slide"]["mpp"]["source"]["kind"], "slide-metadata");
    assert_eq!(r["model"]["name"], "he-cellularity");
    assert_eq!(r["model"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(
        r["slide"]["fingerprint"]["sha256"].as_str().unwrap().len(),
        64
    );
    assert_eq!(r["slide"]["file_size_bytes"], 1938955);
    let fraction = r["tissue_fraction"].as_f64().unwrap();
    assert!((0.28..=0.45).contains(&fraction), "{fraction}");
    let analysed = r["patches_analysed"].as_u64().unwrap() as usize;
    assert!(analysed > 10);

    // One CSV row per analysed patch; softmax probabilities in [0, 1] summing to 1.
    let probs = csv_probs(&dir);
    assert_eq!(probs.len(), analysed);
    for p in probs.values() {
        assert!(p.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{p:?}");
    }
    // A tissue-dense model on tissue: not every patch the same.
    let dense: Vec<f64> = probs.values().map(|p| p[1]).collect();
    assert!(
        dense.iter().cloned().fold(0.0, f64::max) - dense.iter().cloned().fold(1.0, f64::min) > 0.3
    );
    // The slide score is the mean of the 10 highest cell-dense probabilities in the CSV, and
    // the first top region is the highest-scoring patch.
    let mut sorted = dense.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let top10 = sorted[..10].iter().sum::<f64>() / 10.0;
    assert_eq!(r["slide_score"]["method"], "mean-top-10");
    assert_eq!(r["slide_score"]["class"], "cell-dense");
    let score = r["slide_score"]["value"].as_f64().unwrap();
    assert!((score - top10).abs() < 1e-5, "{score} vs {top10}");
    let first = &regions[0];
    let key = (
        first["patch"]["col"].as_u64().unwrap() as u32,
        first["patch"]["row"].as_u64().unwrap() as u32,
    );
    assert!((probs[&key][1] - sorted[0]).abs() < 1e-6);
    assert!((first["score"].as_f64().unwrap() - sorted[0]).abs() < 1e-5);
    let scores: Vec<f64> = regions
        .iter()
        .map(|g| g["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");

    // GeoJSON as QuPath reads it.
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("annotations.geojson")).unwrap())
            .unwrap();
    assert_eq!(g["type"], "FeatureCollection");
    let features = g["features"].as_array().unwrap();
    let tiles: Vec<_> = features
        .iter()
        .filter(|f| f["properties"]["objectType"] == "tile")
        .collect();
    assert_eq!(tiles.len(), analysed);
    for f in features {
        assert_eq!(f["type"], "Feature");
        assert_eq!(f["id"].as_str().unwrap().len(), 36);
        let geom = &f["geometry"];
        let polygons: Vec<&serde_json::Value> = match geom["type"].as_str().unwrap() {
            "Polygon" => vec![&geom["coordinates"]],
            "MultiPolygon" => geom["coordinates"].as_array().unwrap().iter().collect(),
            other => panic!("unexpected geometry {other}"),
        };
        for poly in polygons {
            for ring in poly.as_array().unwrap() {
                let pts = ring.as_array().unwrap();
                assert!(pts.len() >= 4, "a ring needs 4 points or more");
                assert_eq!(pts.first(), pts.last(), "rings are closed");
                for p in pts {
                    let (x, y) = (p[0].as_f64().unwrap(), p[1].as_f64().unwrap());
                    assert!((0.0..=2220.0).contains(&x) && (0.0..=2967.0).contains(&y));
                }
            }
        }
        if f["properties"]["objectType"] == "annotation" {
            let c = &f["properties"]["classification"];
            assert_eq!(c["name"], "cell-dense");
            assert_eq!(c["color"].as_array().unwrap().len(), 3);
        } else {
            assert_eq!(f["properties"]["isLocked"], true);
            assert!(f["properties"]["measurements"]["prob_cell-dense"].is_number());
        }
    }
    // Images open and have the expected shapes.
    let heat = image::open(dir.join("heatmap-cell-dense.png"))
        .unwrap()
        .to_luma8();
    assert!(heat.width() >= 9 && heat.height() >= 13);
    let overlay = image::open(dir.join("overlay-cell-dense.png"))
        .unwrap()
        .to_rgb8();
    let thumb = image::open(dir.join("thumbnail.png")).unwrap().to_rgb8();
    assert_eq!(overlay.width(), thumb.width());
    assert!(
        overlay.height() > thumb.height(),
        "the legend sits below the image"
    );
}

/// result.json without its timings.
fn result_without_timings(dir: &Path) -> serde_json::Value {
    let mut r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("result.json")).unwrap()).unwrap();
    r.as_object_mut().unwrap().remove("timings_s");
    r.as_object_mut().unwrap().remove("analysed_at");
    r
}

#[test]
fn two_runs_write_identical_files() {
    let svs = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut cfg = config(a.path(), InferenceChoice::Tract);
    analyze(&svs, &cfg, Default::default()).unwrap();
    // A different batch size and two workers: a different schedule, the same bytes.
    cfg.out = b.path().into();
    cfg.batch_size = 5;
    cfg.workers = 2;
    analyze(&svs, &cfg, Default::default()).unwrap();
    let (da, db) = (
        a.path().join("CMU-1-Small-Region.svs"),
        b.path().join("CMU-1-Small-Region.svs"),
    );
    // result.json and report.html carry the date and timings; everything else is identical.
    for f in OUTPUTS
        .iter()
        .filter(|f| !["result.json", "report.html"].contains(*f))
    {
        assert!(
            std::fs::read(da.join(f)).unwrap() == std::fs::read(db.join(f)).unwrap(),
            "{f} differs between runs"
        );
    }
    let (mut ra, mut rb) = (result_without_timings(&da), result_without_timings(&db));
    for r in [&mut ra, &mut rb] {
        r["parameters"]
            .as_object_mut()
            .unwrap()
            .remove("batch_size");
    }
    assert_eq!(ra, rb);
}

#[test]
fn onnx_runtime_and_tract_agree() {
    let svs = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    require!(onnxruntime());
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sa = analyze(
        &svs,
        &config(a.path(), InferenceChoice::Ort),
        Default::default(),
    )
    .unwrap();
    analyze(
        &svs,
        &config(b.path(), InferenceChoice::Tract),
        Default::default(),
    )
    .unwrap();
    assert!(
        sa.backend_note.contains("ONNX Runtime"),
        "{}",
        sa.backend_note
    );
    let pa = csv_probs(&a.path().join("CMU-1-Small-Region.svs"));
    let pb = csv_probs(&b.path().join("CMU-1-Small-Region.svs"));
    assert_eq!(pa.keys().collect::<Vec<_>>(), pb.keys().collect::<Vec<_>>());
    for (k, va) in &pa {
        for (x, y) in va.iter().zip(&pb[k]) {
            assert!((x - y).abs() <= 1e-4, "patch {k:?}: {x} vs {y}");
        }
    }
}

#[test]
fn a_slide_without_mpp_is_refused_unless_given() {
    let tcga = require!(data("slides/aperio/TCGA-CR-7395-01A-01-TS1.svs"));
    let tmp = tempfile::tempdir().unwrap();
    let e = analyze(
        &tcga,
        &config(tmp.path(), InferenceChoice::Tract),
        Default::default(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::MissingMpp { .. }), "{e}");
    assert!(e.to_string().contains("--mpp"));
    assert_eq!(
        std::fs::read_dir(tmp.path())
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
    let out = tessera(
        &[
            OsStr::new("analyze"),
            tcga.as_os_str(),
            OsStr::new("--out"),
            tmp.path().as_os_str(),
        ],
        &[],
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));

    let mut cfg = config(tmp.path(), InferenceChoice::Tract);
    cfg.mpp_override = Some(0.5);
    let s = analyze(&tcga, &cfg, Default::default()).unwrap();
    assert!(s.patches > 10);
    assert!(
        s.warnings.iter().any(|w| w.contains("given by the user")),
        "{:?}",
        s.warnings
    );
    let r = result_without_timings(&s.folder);
    assert_eq!(r["slide"]["mpp"]["source"]["kind"], "user");
    let f = r["tissue_fraction"].as_f64().unwrap();
    assert!((0.55..=0.72).contains(&f), "{f}");
}

/// A model folder holding `onnx` as model.onnx and the default model's config.
fn model_folder(onnx: &Path) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("broken-model");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(onnx, dir.join("model.onnx")).unwrap();
    std::fs::copy(
        tessera::pipeline::default_model_dir()
            .unwrap()
            .join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    (tmp, dir)
}

#[test]
fn malformed_and_mismatched_models_fail_cleanly_leaving_nothing() {
    let svs = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let malformed = data("models/malformed/missing-opset.onnx").unwrap();
    let tiny = data("models/tiny/single-conv-random.onnx").unwrap();
    let mut backends = vec![InferenceChoice::Tract];
    if tessera::model::ort_backend::OnnxRuntime::find().is_ok() {
        backends.push(InferenceChoice::Ort);
    }
    for onnx in [&malformed, &tiny] {
        let (_keep, model) = model_folder(onnx);
        for &b in &backends {
            let out = tempfile::tempdir().unwrap();
            let mut cfg = config(out.path(), b);
            cfg.model = Some(model.clone());
            let e = analyze(&svs, &cfg, Default::default()).unwrap_err();
            assert!(
                matches!(e, Error::Model { .. }),
                "{b:?} {}: {e}",
                onnx.display()
            );
            assert!(e.to_string().contains("model.onnx"), "{e}");
            assert_eq!(
                std::fs::read_dir(out.path())
                    .map(|d| d.count())
                    .unwrap_or(0),
                0
            );
        }
    }
    // A config that does not parse names itself.
    let (_keep, model) = model_folder(&tiny);
    std::fs::write(model.join("config.json"), "{\"spec_version\": \"1.0\"}").unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut cfg = config(out.path(), InferenceChoice::Tract);
    cfg.model = Some(model);
    let e = analyze(&svs, &cfg, Default::default()).unwrap_err();
    assert!(
        matches!(e, Error::ModelConfig { .. }) && e.to_string().contains("config.json"),
        "{e}"
    );
}

#[test]
fn a_run_killed_midway_leaves_no_folder_that_looks_complete() {
    let src = require!(data("images/tcga-regions/TCGA-HE-7130-01Z-00-DX1.png"));
    let tmp = tempfile::tempdir().unwrap();
    let slide = tmp.path().join("big.svs");
    let gen = tessera(
        &[
            OsStr::new("generate"),
            slide.as_os_str(),
            OsStr::new("--width"),
            OsStr::new("12000"),
            OsStr::new("--source"),
            src.as_os_str(),
        ],
        &[],
    );
    assert_eq!(code(&gen), 0, "{}", stderr(&gen));
    let out = tmp.path().join("out");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            OsStr::new("analyze"),
            slide.as_os_str(),
            OsStr::new("--out"),
            out.as_os_str(),
        ])
        .args(["--inference", "tract", "--batch-size", "4"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the run has started writing (its output root exists), then kill it.
    let t = std::time::Instant::now();
    while !out.exists() && t.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let finished_already = child.try_wait().unwrap().is_some();
    child.kill().ok();
    child.wait().unwrap();
    if finished_already {
        skip("the run finished before it could be killed; nothing to check");
        return;
    }
    assert!(
        !out.join("big.svs").exists(),
        "a killed run left a complete-looking folder"
    );
    assert!(!out.join("big.svs").join("result.json").exists());
}

#[test]
fn the_tissue_unet_path_runs_and_agrees_with_the_classical_mask() {
    let svs = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let unet = data("models/tissue-unet").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), InferenceChoice::Tract);
    cfg.tissue_model = Some(unet);
    let s = analyze(&svs, &cfg, Default::default()).unwrap();
    let r = result_without_timings(&s.folder);
    assert!(r["parameters"]["tissue"]["method"]
        .as_str()
        .unwrap()
        .contains("best_unet.onnx"));
    // testdata README: the U-Net finds ~38% tissue on CMU-1.
    let f = r["tissue_fraction"].as_f64().unwrap();
    assert!((0.28..=0.48).contains(&f), "{f}");
    assert!(s.patches > 10);
}

/// Runs models/he-cellularity/build.py with `args`, if python3 has the onnx package; the
/// script must then succeed.
fn build_model(args: &[&std::ffi::OsStr]) -> Option<()> {
    python_with(&["onnx"])?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/he-cellularity/build.py");
    let o = std::process::Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .expect("python3");
    assert!(o.status.success(), "build.py: {}", stderr(&o));
    Some(())
}

#[test]
fn the_committed_default_model_is_what_its_script_builds() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model.onnx");
    require!(build_model(&[OsStr::new("--out"), out.as_os_str()]));
    let committed = tessera::pipeline::default_model_dir()
        .unwrap()
        .join("model.onnx");
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&committed).unwrap(),
        "models/he-cellularity/model.onnx differs from build.py's output: rebuild it"
    );
}

#[test]
fn a_fixed_batch_model_is_fed_padded_batches() {
    let svs = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let tmp = tempfile::tempdir().unwrap();
    let (_keep, model) = model_folder(
        &tessera::pipeline::default_model_dir()
            .unwrap()
            .join("model.onnx"),
    );
    require!(build_model(&[
        OsStr::new("--batch"),
        OsStr::new("3"),
        OsStr::new("--out"),
        model.join("model.onnx").as_os_str(),
    ]));
    let mut backends = vec![InferenceChoice::Tract];
    if tessera::model::ort_backend::OnnxRuntime::find().is_ok() {
        backends.push(InferenceChoice::Ort);
    } else {
        skip("ONNX Runtime not available (pip install onnxruntime)");
    }
    let reference = tempfile::tempdir().unwrap();
    analyze(
        &svs,
        &config(reference.path(), InferenceChoice::Tract),
        Default::default(),
    )
    .unwrap();
    let want = csv_probs(&reference.path().join("CMU-1-Small-Region.svs"));
    for b in backends {
        let out = tmp.path().join(format!("{b:?}"));
        let mut cfg = config(&out, b);
        cfg.model = Some(model.clone());
        cfg.batch_size = 8; // 8 patches per batch into a batch-of-3 graph: 3 + 3 + 2 padded
        analyze(&svs, &cfg, Default::default()).unwrap_or_else(|e| panic!("{b:?}: {e}"));
        let got = csv_probs(&out.join("CMU-1-Small-Region.svs"));
        assert_eq!(got.len(), want.len());
        for (k, v) in &got {
            for (x, y) in v.iter().zip(&want[k]) {
                assert!((x - y).abs() <= 1e-4, "{b:?} patch {k:?}: {x} vs {y}");
            }
        }
    }
}

#[test]
fn large_geojson_is_written_gzip_compressed() {
    let svs = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), InferenceChoice::Tract);
    cfg.geojson_gzip_bytes = 1000;
    let s = analyze(&svs, &cfg, Default::default()).unwrap();
    assert!(!s.folder.join("annotations.geojson").exists());
    let gz = std::fs::read(s.folder.join("annotations.geojson.gz")).unwrap();
    // A standard gzip member: magic, deflate, then the JSON.
    assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
    let out = std::process::Command::new("gzip")
        .args([
            "-dc",
            s.folder.join("annotations.geojson.gz").to_str().unwrap(),
        ])
        .output();
    if let Ok(o) = out {
        assert!(o.status.success(), "gzip -t rejects the file");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["type"], "FeatureCollection");
    }
}

#[test]
fn progress_events_count_every_patch_once() {
    use std::sync::{Arc, Mutex};
    use tessera::pipeline::{Progress, ProgressEvent};
    let svs = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let tmp = tempfile::tempdir().unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let mut cfg = config(tmp.path(), InferenceChoice::Tract);
    cfg.batch_size = 8;
    cfg.workers = 2;
    cfg.progress = Progress::new(move |e| sink.lock().unwrap().push(e.clone()));
    let s = analyze(&svs, &cfg, Default::default()).unwrap();
    let events = events.lock().unwrap();
    // First where inference runs, then the plan, then one event per batch.
    match &events[0] {
        ProgressEvent::ModelLoaded { note } => assert!(note.contains("tract"), "{note}"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        events[1],
        ProgressEvent::PatchesPlanned { total: s.patches }
    );
    let done: Vec<usize> = events[2..]
        .iter()
        .map(|e| match e {
            ProgressEvent::PatchesDone { done } => *done,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    // One event per batch of 8, counts rising to the total.
    assert_eq!(done.len(), s.patches.div_ceil(8));
    assert!(done.windows(2).all(|w| w[0] < w[1]), "{done:?}");
    assert_eq!(done.last(), Some(&s.patches));
}

#[test]
fn patches_shared_between_two_devices_give_the_same_results_as_one() {
    // Two copies of the model (here both on the CPU, which only the library allows: the CLI
    // takes lists of GPUs) with a session each; the queue hands batches to whichever is free.
    let svs = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let tmp = tempfile::tempdir().unwrap();
    let one = config(&tmp.path().join("one"), InferenceChoice::Tract);
    let mut two = config(&tmp.path().join("two"), InferenceChoice::Tract);
    two.batch_size = 4; // ~11 batches, so both sessions get some
    two.device.device = tessera::model::Device::Cpu;
    two.device.more = vec![tessera::model::Device::Cpu];
    analyze(&svs, &one, Default::default()).unwrap();
    analyze(&svs, &two, Default::default()).unwrap();
    let (a, b) = (
        tmp.path().join("one/CMU-1-Small-Region.svs"),
        tmp.path().join("two/CMU-1-Small-Region.svs"),
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("result.json")).unwrap()).unwrap();
    assert_eq!(r["inference"]["device"], "CPU + CPU");
    assert_eq!(r["inference"]["device_requested"], "CPU,CPU");
    let (pa, pb) = (csv_probs(&a), csv_probs(&b));
    assert!(pa.len() > 20);
    assert_eq!(pa, pb);
}

/// result.json says what actually ran: without ONNX Runtime `auto` runs tract and records why,
/// and preprocessing records where it ran and why not on a GPU. Forced here by pointing
/// ORT_DYLIB_PATH at a library that does not exist.
#[test]
fn provenance_records_every_fallback_with_its_reason() {
    let slide = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("no-such-dir/libonnxruntime.so.1.99.0");
    let run = |out: &str, extra: &[&str]| -> serde_json::Value {
        let out = t.path().join(out);
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("analyze"),
            slide.as_os_str(),
            OsStr::new("--out"),
            out.as_os_str(),
            OsStr::new("-q"),
        ];
        args.extend(extra.iter().map(OsStr::new));
        let o = tessera(&args, &[("ORT_DYLIB_PATH", missing.as_os_str())]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let text = std::fs::read(out.join("CMU-1-Small-Region.svs/result.json")).unwrap();
        serde_json::from_slice(&text).unwrap()
    };
    let r = run("auto", &[]);
    let inference = &r["inference"];
    assert_eq!(inference["backend"], "tract", "{inference}");
    let fallbacks: Vec<&str> = inference["fallbacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        fallbacks[0].starts_with("ONNX Runtime:")
            && fallbacks[0].contains("no-such-dir")
            && fallbacks[0].ends_with("tract ran instead"),
        "{fallbacks:?}"
    );
    let pre = &r["preprocessing"];
    assert_eq!(pre["requested"], "auto");
    let device = pre["device"].as_str().unwrap();
    let reasons = pre["fallbacks"].as_array().unwrap();
    if device == "CPU" {
        // `auto` passed the GPU over: the record says why.
        assert_eq!(reasons.len(), 1, "{pre}");
        assert!(r["parameters"]["gpu_preprocess"].is_null());
    } else {
        assert!(reasons.is_empty(), "{pre}");
        assert_eq!(r["parameters"]["gpu_preprocess"], device);
    }
    // Asked for the CPU: nothing fell back.
    let r = run("off", &["--gpu-preprocess", "off", "--inference", "tract"]);
    assert_eq!(r["preprocessing"]["device"], "CPU");
    assert_eq!(r["preprocessing"]["requested"], "off");
    assert_eq!(r["preprocessing"]["fallbacks"], serde_json::json!([]));
    assert_eq!(r["inference"]["backend"], "tract");
    assert!(
        r["inference"]["fallbacks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| !f.as_str().unwrap().starts_with("ONNX Runtime:")),
        "tract was asked for: no ONNX Runtime fallback"
    );
}

/// The typed results contract writes what the single-crate Tessera wrote: every output of
/// CMU-1-Small-Region is byte-identical to the files made by the last release's main
/// (`tests/golden/`: their SHA-256 and its result.json), and result.json differs only where the
/// schema moved (version 2: the `preprocessing` block; 3: the `qc` block, absent here), in what
/// issue 19 added (the resize method, the default model's `resize` and model card) and in what
/// changes from run to run. tract makes the probabilities, so they do not depend on which ONNX
/// Runtime is installed. `--qc off`: without QC every output is the previous release's, byte
/// for byte (with QC on, patches.csv gains its columns; on this clean slide nothing else
/// changes: see `cmu1_writes_every_output_in_the_formats_lab_tools_read`).
#[test]
fn outputs_are_byte_identical_to_the_previous_release() {
    use sha2::{Digest, Sha256};
    let slide = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let golden: serde_json::Value =
        serde_json::from_str(include_str!("golden/cmu1-small-region-tract.json")).unwrap();
    let t = tempfile::tempdir().unwrap();
    let o = tessera(
        &[
            OsStr::new("analyze"),
            slide.as_os_str(),
            OsStr::new("--out"),
            t.path().as_os_str(),
            OsStr::new("--inference"),
            OsStr::new("tract"),
            OsStr::new("--gpu-preprocess"),
            OsStr::new("off"),
            OsStr::new("--qc"),
            OsStr::new("off"),
            OsStr::new("-q"),
        ],
        &[],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let dir = t.path().join("CMU-1-Small-Region.svs");
    for (file, want) in golden["sha256"].as_object().unwrap() {
        let got = format!(
            "{:x}",
            Sha256::digest(std::fs::read(dir.join(file)).unwrap())
        );
        assert_eq!(&got, want, "{file} differs from the previous release's");
    }
    let mut r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(r["schema_version"], 3);
    assert!(r.get("qc").is_none(), "--qc off writes no qc block");
    assert_eq!(r["preprocessing"]["device"], "CPU");
    let o = r.as_object_mut().unwrap();
    for k in ["analysed_at", "timings_s", "run_key", "preprocessing"] {
        o.remove(k).unwrap();
    }
    o.insert("schema_version".into(), 1.into());
    r["slide"].as_object_mut().unwrap().remove("path");
    for k in ["fallbacks", "device"] {
        r["inference"].as_object_mut().unwrap().remove(k);
    }
    // Added since (issue 19): the resize method in force, and the default model's config says
    // it keeps area resizing and carries its model card.
    assert_eq!(r["parameters"]["resize_method"], "area");
    r["parameters"]
        .as_object_mut()
        .unwrap()
        .remove("resize_method");
    let card = r["model"]["config"]["tessera"].as_object_mut().unwrap();
    assert_eq!(card.remove("resize").unwrap(), "area");
    for k in ["intended_use", "training_data"] {
        card.remove(k).unwrap();
    }
    assert_eq!(r, golden["result"]);
}
