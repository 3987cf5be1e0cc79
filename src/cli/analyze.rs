//! `tessera analyze SLIDE... [--out DIR] [--model DIR]`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use tessera::model::InferenceChoice;
use tessera::pipeline::{analyze, AnalyzeConfig};

use super::{batch_exit_code, SlideArgs};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum InferenceArg {
    /// ONNX Runtime when installed (pip install onnxruntime), tract otherwise.
    Auto,
    /// ONNX Runtime, loaded at run time.
    Ort,
    /// tract: pure Rust, always available.
    Tract,
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Slide files (or DICOM series folders).
    #[arg(required = true, value_name = "SLIDE")]
    slides: Vec<PathBuf>,
    /// Output folder; each slide gets OUT/<slide name>/.
    #[arg(long, short, default_value = "tessera-out")]
    out: PathBuf,
    /// Model folder (model.onnx + config.json). Default: models/he-cellularity.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Inference runtime.
    #[arg(long, value_enum, default_value_t = InferenceArg::Auto)]
    inference: InferenceArg,
    /// Patches per inference batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Stride between patches in model pixels (default: the patch size, no overlap).
    #[arg(long)]
    stride: Option<u32>,
    /// Skip patches with less tissue than this fraction.
    #[arg(long, default_value_t = 0.5)]
    min_tissue: f64,
    /// Probability threshold for regions and areas.
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
    /// µm per pixel of level 0, when the file lacks it or is wrong (recorded as user-given).
    #[arg(long)]
    mpp: Option<f64>,
    /// Inference workers (one session each).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Threads reading and decoding patches (default: half the cores).
    #[arg(long)]
    decode_threads: Option<usize>,
    /// Threads per inference session (default: all cores, divided among workers).
    #[arg(long)]
    inference_threads: Option<usize>,
    /// ONNX tissue segmentation model (file or folder) with the tissue U-Net's contract,
    /// instead of the classical detector.
    #[arg(long, value_name = "MODEL")]
    tissue_model: Option<PathBuf>,
    /// Fingerprint whole files (default: size + first and last MiB).
    #[arg(long)]
    hash_full: bool,
    #[command(flatten)]
    slide: SlideArgs,
}

pub fn run(args: &AnalyzeArgs) -> u8 {
    let mut cfg = AnalyzeConfig {
        out: args.out.clone(),
        model: args.model.clone(),
        inference: match args.inference {
            InferenceArg::Auto => InferenceChoice::Auto,
            InferenceArg::Ort => InferenceChoice::Ort,
            InferenceArg::Tract => InferenceChoice::Tract,
        },
        batch_size: args.batch_size,
        stride_pixels: args.stride,
        min_tissue: args.min_tissue,
        threshold: args.threshold,
        mpp_override: args.mpp,
        workers: args.workers,
        hash_full: args.hash_full,
        tissue_model: args.tissue_model.clone(),
        slide: args.slide.config(),
        ..AnalyzeConfig::default()
    };
    cfg.inference_threads = args
        .inference_threads
        .unwrap_or((cfg.inference_threads / cfg.workers.max(1)).max(1));
    if let Some(n) = args.decode_threads {
        cfg.decode_threads = n;
    }
    let mut ok = 0;
    for path in &args.slides {
        match analyze(path, &cfg) {
            Ok(s) => {
                ok += 1;
                println!(
                    "{}: {} patches, {:.2} mm² tissue -> {} ({})",
                    path.display(),
                    s.patches,
                    s.tissue_mm2,
                    s.folder.display(),
                    s.backend_note
                );
                for w in &s.warnings {
                    println!("  warning: {w}");
                }
            }
            Err(e) => eprintln!("error: {e}"),
        }
    }
    batch_exit_code(ok, args.slides.len())
}
