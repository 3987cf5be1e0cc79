//! The `tessera` binary: output, JSON, exit codes, and the OpenSlide search.

use std::ffi::OsStr;

use crate::require;
use crate::util::*;

#[test]
fn info_reports_the_main_slide_through_both_readers() {
    let svs = require!(data_and_openslide("slides/aperio/CMU-1-Small-Region.svs"));
    for (backend, reader) in [
        ("auto", "native"),
        ("native", "native"),
        ("openslide", "openslide 4."),
    ] {
        let out = tessera(
            &[
                OsStr::new("info"),
                OsStr::new("--backend"),
                OsStr::new(backend),
                svs.as_os_str(),
            ],
            &[],
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let text = String::from_utf8(out.stdout).unwrap();
        for want in [
            "2220 × 2967",
            "0.499 × 0.499",
            "20×",
            "Aperio SVS",
            reader,
            "label 387 × 463",
            "macro 1280 × 431",
            "thumbnail 574 × 768",
            "levels       1",
        ] {
            assert!(
                text.contains(want),
                "--backend {backend}: missing {want:?} in:\n{text}"
            );
        }
    }
}

#[test]
fn info_json_is_stable_and_parses() {
    let svs = require!(data_and_openslide("slides/aperio/CMU-1-Small-Region.svs"));
    let broken = data("corrupt/broken.svs").unwrap();
    let out = tessera(
        &[
            OsStr::new("info"),
            OsStr::new("--json"),
            svs.as_os_str(),
            broken.as_os_str(),
        ],
        &[],
    );
    assert_eq!(code(&out), 2, "one good, one bad: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema_version"], 1);
    let s = &v["slides"][0];
    assert_eq!(s["status"], "ok");
    assert_eq!(s["dimensions"]["width"], 2220);
    assert_eq!(s["dimensions"]["height"], 2967);
    assert_eq!(s["levels"].as_array().unwrap().len(), 1);
    assert_eq!(s["mpp"]["x"], 0.499);
    assert_eq!(s["mpp"]["source"]["kind"], "slide-metadata");
    assert_eq!(s["objective_power"], 20.0);
    assert_eq!(s["vendor"], "aperio");
    assert_eq!(s["backend"]["name"], "native");
    assert_eq!(s["associated_images"][0]["name"], "label");
    assert_eq!(s["properties"]["aperio.AppMag"], "20");
    let e = &v["slides"][1];
    assert_eq!(e["status"], "error");
    assert_eq!(e["kind"], "not_a_slide");
    assert!(e["message"].as_str().unwrap().contains("broken.svs"));
}

#[test]
fn every_corrupt_and_unsupported_file_fails_cleanly() {
    let dir = require!(data_and_openslide("corrupt"));
    let unsupported = data("unsupported").unwrap();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .chain(std::fs::read_dir(&unsupported).unwrap())
        .map(|e| e.unwrap().path())
        // Read as a pyramid since OrthancWSIDicomizer's series (no ImageType) are (tests/dicom.rs).
        .filter(|p| !p.ends_with("dicom-no-image-type.dcm"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 10);
    for p in &paths {
        let out = tessera(&[OsStr::new("info"), p.as_os_str()], &[]);
        let err = stderr(&out);
        assert_eq!(code(&out), 3, "{}: {err}", p.display());
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(
            err.contains(name),
            "{name}: message does not name the file: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // All together: nothing read.
    let mut args = vec![OsStr::new("info")];
    args.extend(paths.iter().map(|p| p.as_os_str()));
    assert_eq!(code(&tessera(&args, &[])), 3);
}

#[test]
fn region_writes_a_png_and_refuses_bad_requests_without_output() {
    let svs = require!(data_and_openslide("slides/aperio/CMU-1-Small-Region.svs"));
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("r.png");
    let ok = tessera(
        &[
            OsStr::new("region"),
            svs.as_os_str(),
            OsStr::new("--x"),
            OsStr::new("1000"),
            OsStr::new("--y"),
            OsStr::new("1200"),
            OsStr::new("--width"),
            OsStr::new("300"),
            OsStr::new("--height"),
            OsStr::new("200"),
            OsStr::new("-o"),
            png.as_os_str(),
        ],
        &[],
    );
    assert_eq!(code(&ok), 0, "{}", stderr(&ok));
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (300, 200));
    let direct = tessera::Slide::open(&svs)
        .unwrap()
        .read_region(
            tessera::Level0Px::new(1000, 1200),
            0,
            tessera::Size::new(300, 200),
        )
        .unwrap();
    assert!(img == direct);

    let bad = tmp.path().join("bad.png");
    let (svs, bad_str) = (svs.to_str().unwrap(), bad.to_str().unwrap());
    for (x, width, level, why) in [
        ("0", "10", "3", "does not exist"),
        ("5000", "10", "0", "entirely outside"),
        ("0", "0", "0", "empty"),
        ("0", "100000", "0", "over the limit"),
    ] {
        let out = tessera_str(&[
            "region", svs, "--x", x, "--y", "0", "--width", width, "--height", "1000", "--level",
            level, "-o", bad_str,
        ]);
        assert_eq!(code(&out), 3, "{why}: {}", stderr(&out));
        assert!(stderr(&out).contains(why), "{why}: {}", stderr(&out));
        assert!(!bad.exists(), "a failed region left {}", bad.display());
    }
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "no temporaries left"
    );
}

#[test]
fn usage_errors_and_help_have_their_own_exit_codes() {
    let out = tessera_str(&["info"]);
    assert_eq!(code(&out), 64);
    let out = tessera_str(&["frobnicate"]);
    assert_eq!(code(&out), 64);
    let out = tessera_str(&["info", "--help"]);
    assert_eq!(code(&out), 0);
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("Exit codes") && help.contains("2   some slides failed"));
}

#[test]
fn without_openslide_svs_still_reads_and_dicom_names_both_installs() {
    let svs = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let dicom = data("slides/dicom/cmu-1-small-region").unwrap();
    let none = [("TESSERA_OPENSLIDE", OsStr::new("none"))];
    // The README's main job on a machine with only Rust: the native reader needs nothing.
    let out = tessera(&[OsStr::new("info"), svs.as_os_str()], &none);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("native"));
    // DICOM too, since the native DICOM reader.
    let out = tessera(&[OsStr::new("info"), dicom.as_os_str()], &none);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("native"));
    // Asking for OpenSlide by name, without it, names both ways to install it.
    let out = tessera(
        &[
            OsStr::new("info"),
            OsStr::new("--backend"),
            OsStr::new("openslide"),
            dicom.as_os_str(),
        ],
        &none,
    );
    assert_eq!(code(&out), 3);
    let err = stderr(&out);
    for want in [
        "cmu-1-small-region",
        "DICOM",
        "pip install openslide-bin",
        "apt-get install libopenslide0",
    ] {
        assert!(err.contains(want), "missing {want:?}: {err}");
    }
    let out = tessera(
        &[
            OsStr::new("info"),
            OsStr::new("--backend"),
            OsStr::new("openslide"),
            svs.as_os_str(),
        ],
        &none,
    );
    assert_eq!(code(&out), 3);
    assert!(stderr(&out).contains("Aperio SVS"), "{}", stderr(&out));
}

#[test]
fn a_named_library_that_does_not_load_is_an_error_not_a_fallback() {
    let dicom = require!(data("slides/dicom/sm-image"));
    let out = tessera(
        &[
            OsStr::new("info"),
            OsStr::new("--backend"),
            OsStr::new("openslide"),
            dicom.as_os_str(),
        ],
        &[(
            "TESSERA_OPENSLIDE",
            OsStr::new("/nonexistent/libopenslide.so.1"),
        )],
    );
    assert_eq!(code(&out), 3);
    assert!(
        stderr(&out).contains("cannot load OpenSlide"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn debian_openslide_3_reads_svs_and_refuses_dicom_clearly() {
    let svs = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let lib = require!(system_openslide_3());
    let dicom = data("slides/dicom/cmu-1-small-region").unwrap();
    let env = [("TESSERA_OPENSLIDE", lib.as_os_str())];
    let out = tessera(
        &[
            OsStr::new("info"),
            OsStr::new("--backend"),
            OsStr::new("openslide"),
            svs.as_os_str(),
        ],
        &env,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("openslide 3.4.1") && text.contains("2220 × 2967"),
        "{text}"
    );

    // DICOM through OpenSlide 3.4.1 is refused clearly; the native reader needs neither.
    let by_openslide = [
        OsStr::new("info"),
        OsStr::new("--backend"),
        OsStr::new("openslide"),
        dicom.as_os_str(),
    ];
    let out = tessera(&by_openslide, &env);
    assert_eq!(code(&out), 3);
    let err = stderr(&out);
    assert!(
        err.contains("needs OpenSlide 4.0 or newer") && err.contains("3.4.1"),
        "{err}"
    );
    assert!(err.contains("pip install openslide-bin"), "{err}");
    let out = tessera(&[OsStr::new("info"), dicom.as_os_str()], &env);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    let out = tessera(
        &[
            OsStr::new("info"),
            OsStr::new("--backend"),
            OsStr::new("openslide"),
            svs.as_os_str(),
            dicom.as_os_str(),
        ],
        &env,
    );
    assert_eq!(code(&out), 2);
}

#[test]
fn generate_then_bench_read_runs_both_readers_on_the_same_regions() {
    let src = require!(data_and_openslide("images/tcga-regions/target_image.png"));
    let tmp = tempfile::tempdir().unwrap();
    let slide = tmp.path().join("synthetic.svs");
    let out = tessera(
        &[
            OsStr::new("generate"),
            slide.as_os_str(),
            OsStr::new("--width"),
            OsStr::new("4000"),
            OsStr::new("--height"),
            OsStr::new("3000"),
            OsStr::new("--source"),
            src.as_os_str(),
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // OpenSlide reads the generated file as Aperio too.
    let info = tessera(
        &[
            OsStr::new("info"),
            OsStr::new("--backend"),
            OsStr::new("openslide"),
            slide.as_os_str(),
        ],
        &[],
    );
    assert_eq!(code(&info), 0, "{}", stderr(&info));
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        text.contains("Aperio SVS") && text.contains("4000 × 3000"),
        "{text}"
    );
    // `bench read SLIDE ARGS…`: exits 0; its report.
    let bench = |args: &[&str]| {
        let mut all = vec!["bench", "read", slide.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = tessera_str(&all);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = bench(&["--regions", "40", "--repeats", "1", "--threads", "1,2"]);
    assert!(
        text.contains("ratio native/openslide at 1 thread(s)"),
        "{text}"
    );
    assert!(
        text.contains("ratio native/openslide at 2 thread(s)"),
        "{text}"
    );

    // Analysis order: both readers read the same patches (the same mean pixel value, up to
    // JPEG decoders' rounding); naming a backend measures only that one.
    let walk = |backend: &str| {
        bench(&[
            "--walk",
            "--side",
            "224",
            "--regions",
            "200",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--backend",
            backend,
        ])
    };
    let text = walk("auto");
    assert!(
        text.contains("200 analysis-order regions of 224²"),
        "{text}"
    );
    let means = text
        .split_once("(mean pixel value ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(m, _)| {
            m.split(" vs ")
                .map(|v| v.parse::<f64>().unwrap())
                .collect::<Vec<_>>()
        })
        .unwrap_or_else(|| panic!("no mean pixel values in {text}"));
    assert!(
        means.len() == 2 && means[0] > 100.0 && (means[0] - means[1]).abs() < 0.5,
        "{text}"
    );
    let text = walk("native");
    assert!(
        text.contains(" native ") && !text.contains("openslide ") && !text.contains("ratio"),
        "{text}"
    );
}

#[test]
fn an_explicit_gpu_device_that_cannot_be_used_is_an_error_and_auto_records_why() {
    let slide = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let t = tempfile::tempdir().unwrap();
    let s = slide.to_str().unwrap();
    let out = |n: &str| t.path().join(n).to_string_lossy().into_owned();
    // tract has no GPU: a named GPU is refused, naming what runs instead.
    let o = tessera_str(&[
        "analyze",
        s,
        "--out",
        &out("a"),
        "--inference",
        "tract",
        "--device",
        "cuda:1",
        "-q",
    ]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--device CUDA:1") && stderr(&o).contains("tract"),
        "{}",
        stderr(&o)
    );
    assert!(
        !t.path().join("a/CMU-1-Small-Region.svs").exists(),
        "no output for a refused device"
    );
    // An unknown device, or a list that repeats a GPU or names the CPU, is a usage error.
    for bad in ["gpu", "cuda:0,0", "cpu:0,1"] {
        let o = tessera_str(&["analyze", s, "--out", &out("b"), "--device", bad]);
        assert_eq!(code(&o), 64, "{bad}");
    }
    // Several GPUs: each is loaded, so the first that cannot be used is the error.
    let o = tessera_str(&[
        "analyze",
        s,
        "--out",
        &out("b"),
        "--inference",
        "tract",
        "--device",
        "cuda:0,1",
        "-q",
    ]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("--device CUDA:0"), "{}", stderr(&o));
    // auto on tract: the CPU, with the reason recorded; `--fp16` (TensorRT's) changes nothing
    // there and is not recorded as if it had.
    let o = tessera_str(&[
        "analyze",
        s,
        "--out",
        &out("c"),
        "--inference",
        "tract",
        "--fp16",
        "-q",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(t.path().join("c/CMU-1-Small-Region.svs/result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(r["inference"]["device"], "CPU");
    assert_eq!(r["inference"]["device_requested"], "auto");
    assert_eq!(r["inference"]["fallbacks"].as_array().unwrap().len(), 1);
    assert_eq!(r["inference"]["fp16"], false);
    // ONNX Runtime: the CPU package has neither provider. Asked for explicitly: an error that
    // names the library found; auto: TensorRT and CUDA recorded as not used, and why.
    if tessera::model::ort_backend::OnnxRuntime::find().is_err() {
        skip("ONNX Runtime not available (pip install onnxruntime)");
        return;
    }
    let o = tessera_str(&[
        "analyze",
        s,
        "--out",
        &out("d"),
        "--inference",
        "ort",
        "--device",
        "tensorrt",
        "-q",
    ]);
    let gpu_package = code(&o) == 0;
    if gpu_package {
        skip("this ONNX Runtime has TensorRT: the CPU-only checks do not apply");
        return;
    }
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no TensorRT execution provider"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("libonnxruntime"), "{}", stderr(&o));
    let o = tessera_str(&["analyze", s, "--out", &out("e"), "--inference", "ort"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // One short line for the GPUs a CPU-only package cannot have (every cohort task prints
    // it); the full reasons are in result.json.
    let e = stderr(&o);
    assert!(
        e.contains("on CPU")
            && e.contains("not used: TensorRT:0, CUDA:0 (this ONNX Runtime is the CPU-only")
            && !e.contains("pip install onnxruntime-gpu"),
        "{e}"
    );
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(t.path().join("e/CMU-1-Small-Region.svs/result.json")).unwrap(),
    )
    .unwrap();
    let f = r["inference"]["fallbacks"].as_array().unwrap();
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(
        f[0].as_str().unwrap().starts_with("TensorRT:0: ")
            && f[1].as_str().unwrap().starts_with("CUDA:0: ")
            && f[1]
                .as_str()
                .unwrap()
                .contains("pip install onnxruntime-gpu"),
        "{f:?}"
    );
    let o = tessera_str(&[
        "analyze",
        s,
        "--out",
        &out("f"),
        "--inference",
        "ort",
        "--device",
        "cpu",
        "-q",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(t.path().join("f/CMU-1-Small-Region.svs/result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(r["inference"]["fallbacks"], serde_json::json!([]));
}

/// Patient identifiers among a slide's properties (DICOM patient attributes, Aperio's file
/// name) are redacted by `tessera info` unless `--show-identifiers` is given, in text and JSON.
#[test]
fn info_redacts_patient_identifiers_unless_asked() {
    let concat = require!(data_and_openslide("slides/dicom/concat"));
    let svs = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let run = |path: &std::path::Path, extra: &[&str]| -> (String, serde_json::Value) {
        let p = path.to_str().unwrap();
        let text = tessera_str(&[&["info", p], extra].concat());
        assert!(text.status.success(), "{}", stderr(&text));
        let json = tessera_str(&[&["info", "--json", p], extra].concat());
        assert!(json.status.success(), "{}", stderr(&json));
        (
            String::from_utf8_lossy(&text.stdout).into_owned(),
            serde_json::from_slice(&json.stdout).unwrap(),
        )
    };
    let (text, json) = run(&concat, &[]);
    let slide = &json["slides"][0];
    assert_eq!(slide["properties"]["dicom.PatientName"], "[redacted]");
    assert_eq!(slide["properties"]["dicom.PatientID"], "[redacted]");
    assert_eq!(slide["identifiers_redacted"], 2);
    assert!(!json.to_string().contains("Synthetic^Concatenation"));
    assert!(!json.to_string().contains("FASTSLIDE-TEST"));
    assert!(
        text.contains("2 patient identifier properties redacted"),
        "{text}"
    );
    let (_, shown) = run(&concat, &["--show-identifiers"]);
    assert_eq!(
        shown["slides"][0]["properties"]["dicom.PatientName"],
        "Synthetic^Concatenation"
    );
    assert_eq!(shown["slides"][0]["identifiers_redacted"], 0);
    // Aperio's file name, date, time and user fields, in their own properties and inside the
    // description (the native reader reports both the description and its copy).
    let (_, json) = run(&svs, &[]);
    let props = &json["slides"][0]["properties"];
    assert_eq!(props["aperio.Filename"], "[redacted]");
    assert_eq!(props["aperio.Date"], "[redacted]");
    for key in ["tiff.ImageDescription", "openslide.comment"] {
        let d = props[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing: {props}"));
        assert!(
            d.contains("Filename = [redacted]") && d.contains("Date = [redacted]"),
            "{key}: {d}"
        );
        assert!(
            !d.contains("CMU-1") && !d.contains("12/29/09") && !d.contains("b414003d"),
            "{key}: {d}"
        );
    }
}

#[test]
fn version_names_the_commit_and_the_features() {
    let out = tessera(&[OsStr::new("--version")], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let commit = head.unwrap_or_else(|| "unknown".into());
    assert!(
        text.starts_with(&format!(
            "tessera {} (commit {commit}; features: ",
            tessera::VERSION
        )),
        "{text}"
    );
    assert!(text.contains("ort, tract, gpu"), "{text}");
}

/// A binary copied elsewhere (shared storage, an install prefix) finds the default model
/// beside it, before the copy built into it; without one beside it, it unpacks the built-in
/// copy into its cache folder; TESSERA_MODELS naming a folder without the model is an error.
#[test]
fn a_copied_binary_finds_the_default_model_beside_it_or_built_in() {
    let svs = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    let models = bin.join("models/he-cellularity");
    std::fs::create_dir_all(&models).unwrap();
    let exe = bin.join("tessera");
    std::fs::copy(env!("CARGO_BIN_EXE_tessera"), &exe).unwrap();
    let source = tessera::pipeline::default_model_dir().unwrap();
    for f in ["model.onnx", "config.json"] {
        std::fs::copy(source.join(f), models.join(f)).unwrap();
    }
    // The copy beside the binary, told apart by its description.
    let cfg = models.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    config["tessera"]["description"] = "the copy beside the binary".into();
    std::fs::write(&cfg, config.to_string()).unwrap();
    let cache = tmp.path().join("cache");
    let analyze = |out: &std::path::Path, models_env: Option<&std::path::Path>| {
        let mut c = std::process::Command::new(&exe);
        c.args([OsStr::new("analyze"), svs.as_os_str(), OsStr::new("--out")])
            .arg(out)
            .args(["--inference", "tract", "--quiet"])
            .env("XDG_CACHE_HOME", &cache)
            .env_remove("TESSERA_MODELS");
        if let Some(m) = models_env {
            c.env("TESSERA_MODELS", m);
        }
        c.output().unwrap()
    };
    let out = tmp.path().join("out");
    let o = analyze(&out, None);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let result: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("CMU-1-Small-Region.svs/result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        result["model"]["config"]["tessera"]["description"],
        "the copy beside the binary"
    );
    assert!(!cache.exists(), "nothing unpacked when a folder is found");
    // No folder beside it: the built-in copy, unpacked under XDG_CACHE_HOME.
    std::fs::remove_dir_all(bin.join("models")).unwrap();
    let o = analyze(&tmp.path().join("built-in"), None);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let result: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            tmp.path()
                .join("built-in/CMU-1-Small-Region.svs/result.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(result["model"]["name"], "he-cellularity");
    let committed = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/he-cellularity/model.onnx"),
    )
    .unwrap();
    let unpacked: Vec<_> = std::fs::read_dir(cache.join("tessera"))
        .unwrap()
        .map(|e| e.unwrap().path().join("he-cellularity"))
        .collect();
    assert_eq!(unpacked.len(), 1, "{unpacked:?}");
    assert_eq!(
        std::fs::read(unpacked[0].join("model.onnx")).unwrap(),
        committed
    );
    assert_eq!(
        result["model"]["config"]["tessera"]["description"],
        serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(unpacked[0].join("config.json")).unwrap()
        )
        .unwrap()["tessera"]["description"]
    );
    // TESSERA_MODELS names a folder without the model: an error saying where it looked.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = analyze(&tmp.path().join("out2"), Some(&empty));
    assert_ne!(code(&o), 0);
    let err = stderr(&o);
    assert!(
        err.contains("default model was not found") && err.contains("TESSERA_MODELS"),
        "{err}"
    );
}
