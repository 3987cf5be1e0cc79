//! Shared helpers: locating test data and libraries, skipping outside CI, running the binary.

use std::path::PathBuf;
use std::process::{Command, Output};

use tessera::slide::openslide::{self, Discovery};
use tessera::{BackendChoice, Slide, SlideConfig};

/// Opens a slide with the given backend.
pub fn open_as(path: impl AsRef<std::path::Path>, backend: BackendChoice) -> Slide {
    let path = path.as_ref();
    let config = SlideConfig {
        backend,
        ..SlideConfig::default()
    };
    Slide::open_with(path, &config).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// True when running under CI, where missing prerequisites are failures, not skips.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Skips the current test (returns `false`) with a printed reason, or panics under CI.
pub fn skip(reason: &str) -> bool {
    if in_ci() {
        panic!("required under CI=true: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    false
}

/// Returns early from a test when a prerequisite is missing.
#[macro_export]
macro_rules! require {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return,
        }
    };
}

/// The shared test data folder, if present.
pub fn testdata() -> Option<PathBuf> {
    let dir = std::env::var_os("TESSERA_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // `cargo test` sets CARGO_MANIFEST_DIR when it runs tests; prefer it over the
            // compile-time value so a moved checkout finds its own ../shared.
            let root = std::env::var_os("CARGO_MANIFEST_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
            root.join("../shared/testdata")
        });
    if dir.join("slides").is_dir() {
        Some(dir)
    } else {
        skip(&format!("no shared test data at {}", dir.display()));
        None
    }
}

/// A path under the shared test data.
pub fn data(rel: &str) -> Option<PathBuf> {
    testdata().map(|d| d.join(rel))
}

/// OpenSlide 4 as Tessera finds it, if present.
pub fn openslide4() -> Option<()> {
    match openslide::discover() {
        Discovery::Found(lib) if lib.is_v4() => Some(()),
        Discovery::Found(lib) => {
            skip(&format!(
                "OpenSlide 4 needed, found {} at {} (pip install openslide-bin)",
                lib.version,
                lib.path.display()
            ));
            None
        }
        other => {
            skip(&format!(
                "OpenSlide not found ({other:?}); pip install openslide-bin"
            ));
            None
        }
    }
}

/// Both the shared data and OpenSlide 4.
pub fn data_and_openslide(rel: &str) -> Option<PathBuf> {
    let p = data(rel)?;
    openslide4()?;
    Some(p)
}

/// Debian's OpenSlide 3.4.1 (`apt-get install libopenslide0`), if installed.
pub fn system_openslide_3() -> Option<PathBuf> {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/libopenslide.so.0",
        "/usr/lib/aarch64-linux-gnu/libopenslide.so.0",
        "/usr/lib/libopenslide.so.0",
    ];
    match candidates.iter().map(PathBuf::from).find(|p| p.exists()) {
        Some(p) => Some(p),
        None => {
            skip("Debian's OpenSlide 3.4.1 is not installed (apt-get install libopenslide0)");
            None
        }
    }
}

/// Runs the `tessera` binary with `args` and extra environment variables.
pub fn tessera(args: &[&std::ffi::OsStr], env: &[(&str, &std::ffi::OsStr)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run tessera")
}

/// `tessera` with string arguments.
pub fn tessera_str(args: &[&str]) -> Output {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    tessera(&args, &[])
}

/// Exit code of a finished process (-1 when killed by a signal, e.g. a panic's abort).
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// ONNX Runtime, if Tessera can load it.
pub fn onnxruntime() -> Option<()> {
    match tessera::model::ort_backend::OnnxRuntime::find() {
        Ok(_) => Some(()),
        Err(e) => {
            skip(&format!(
                "ONNX Runtime not available (pip install onnxruntime): {e}"
            ));
            None
        }
    }
}

/// python3 with every module in `modules` importable, or a skip naming what is missing.
pub fn python_with(modules: &[&str]) -> Option<()> {
    let code = format!("import {}", modules.join(", "));
    match Command::new("python3").args(["-c", &code]).output() {
        Ok(o) if o.status.success() => Some(()),
        Ok(o) => {
            skip(&format!(
                "python3 cannot import {}: {}",
                modules.join(", "),
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ));
            None
        }
        Err(e) => {
            skip(&format!("python3: {e}"));
            None
        }
    }
}

/// Runs `models/random/build_random.py ARCH DIR ARGS…` (random-weight test models), which must
/// succeed.
pub fn build_random(arch: &str, dir: &std::path::Path, args: &[&str]) {
    let o = Command::new("python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/random/build_random.py"))
        .arg(arch)
        .arg(dir)
        .args(args)
        .output()
        .expect("python3");
    assert!(o.status.success(), "build_random.py: {}", stderr(&o));
}

/// build_random.py's arguments for the dense test model: 128-pixel tiles overlapping by 32.
pub const DENSE_TINY: [&str; 7] = [
    "--side",
    "128",
    "--patch",
    "128",
    "--dense",
    "--overlap",
    "32",
];

/// `tessera generate PATH --width WIDTH --mpp 0.5` from the shared TCGA H&E region: a synthetic
/// Aperio slide of real tissue (None, having printed why, without the shared data).
pub fn generate(path: &std::path::Path, width: u32) -> Option<()> {
    let source = data("images/tcga-regions/TCGA-HE-7130-01Z-00-DX1.png")?;
    let o = tessera_str(&[
        "generate",
        path.to_str().unwrap(),
        "--width",
        &width.to_string(),
        "--mpp",
        "0.5",
        "--source",
        source.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    Some(())
}

/// Deterministic pseudo-random bytes (xorshift; `x` must not be 0).
pub fn noise(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// dciodvfy (dicom3tools) finds no error in `file`, which it reads as `iod`; skipped (failing in
/// CI) without dicom3tools. Debian 12's dicom3tools (2022-06) says of every annotation group
/// "Only valid for AnnotationCoordinateType of 3D - attribute <CommonZCoordinateValue> = <>"
/// although the attribute is absent; it says the same of highdicom's own annotations, so that
/// line alone is let through.
pub fn assert_dciodvfy_clean(file: &std::path::Path, iod: &str) {
    match Command::new("dciodvfy").arg(file).output() {
        Ok(v) => {
            let report = String::from_utf8_lossy(&v.stderr).into_owned();
            let errors: Vec<&str> = report
                .lines()
                .filter(|l| l.starts_with("Error"))
                .filter(|l| !l.contains("attribute <CommonZCoordinateValue> = <>"))
                .collect();
            assert!(errors.is_empty(), "dciodvfy {}: {report}", file.display());
            assert!(report.contains(iod), "{report}");
        }
        Err(_) => {
            skip("dciodvfy is not installed (apt-get install dicom3tools)");
        }
    }
}
