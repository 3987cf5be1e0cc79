//! The analysis settings `analyze` and `watch` share: declared once, so both commands take the
//! same flags with the same defaults and make the same [`AnalyzeConfig`] from them.

use std::path::PathBuf;

use clap::Args;
use tessera::pipeline::AnalyzeConfig;

use super::{DeviceArgs, InferenceArg, SlideArgs};

/// Flags that decide how a slide is analysed (model, inference, patches, outputs).
#[derive(Debug, Args)]
pub struct AnalysisArgs {
    /// Model folder (model.onnx + config.json). Default: models/he-cellularity.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Inference runtime.
    #[arg(long, value_enum, default_value_t = InferenceArg::Auto)]
    pub inference: InferenceArg,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Reinhard stain normalisation of every patch towards TARGET: the Lab means and standard
    /// deviations `L,a,b,sL,sa,sb` (L 0-100), or a reference image whose statistics become the
    /// target. Runs in the preprocessing shader on a GPU, on the CPU otherwise. Off by default.
    #[arg(long, value_name = "TARGET", value_parser = tessera::imaging::stain::Reinhard::parse)]
    pub reinhard: Option<tessera::imaging::stain::Reinhard>,
    /// Patches per inference batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Stride between patches in model pixels (default: the patch size, no overlap).
    #[arg(long)]
    pub stride: Option<u32>,
    /// Skip patches with less tissue than this fraction.
    #[arg(long, default_value_t = 0.5)]
    pub min_tissue: f64,
    /// Probability threshold for regions and areas.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f32,
    /// µm per pixel of level 0, when the file lacks it or is wrong (recorded as user-given).
    #[arg(long)]
    pub mpp: Option<f64>,
    /// Threads reading and decoding patches (default: half the cores).
    #[arg(long)]
    pub decode_threads: Option<usize>,
    /// Threads per inference session (default: all cores, divided among inference workers).
    #[arg(long)]
    pub inference_threads: Option<usize>,
    /// ONNX tissue segmentation model (file or folder) with the tissue U-Net's contract,
    /// instead of the classical detector.
    #[arg(long, value_name = "MODEL")]
    pub tissue_model: Option<PathBuf>,
    /// Fingerprint whole files (default: size + first and last MiB), so that a rewrite that
    /// changes only the middle of a file is also seen as a new version.
    #[arg(long)]
    pub hash_full: bool,
    /// Store each slide's DICOM outputs (OUT/<slide>/dicom/) on this DICOMweb server with
    /// STOW-RS once the slide's folder is complete, e.g. http://pacs/dicom-web (credentials as
    /// for reading: --dicomweb-user, --dicomweb-token-file…). A failed store fails the slide; its
    /// folder stays.
    #[arg(long, value_name = "URL")]
    pub dicomweb_store: Option<String>,
    /// Slide-level score of the positive class: `max`, or `mean-top-K` (mean of the K highest
    /// patch probabilities).
    #[arg(long, value_name = "METHOD", default_value = "mean-top-10")]
    pub slide_score: tessera::stitch::ScoreMethod,
    /// Top-scoring regions cropped into the report.
    #[arg(long, value_name = "K", default_value_t = 6)]
    pub top_regions: usize,
    /// Side of each region crop, in pixels at the model's µm/px.
    #[arg(long, value_name = "PIXELS", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(16..=4096))]
    pub region_pixels: u32,
    /// Write the slide's label and macro images (they carry patient identifiers) and show them
    /// in the report. Off by default.
    #[arg(long)]
    pub include_label: bool,
    /// Also print each report to report.pdf with headless Chromium.
    #[arg(long)]
    pub pdf: bool,
    #[command(flatten)]
    pub qc: QcArgs,
    #[command(flatten)]
    pub slide: SlideArgs,
}

/// Slide QC's flags.
#[derive(Debug, Args)]
pub struct QcArgs {
    /// Slide QC: `exclude` keeps patches with pen, blur, folds or edges out of the slide score,
    /// the top regions, the regions and the per-class figures (they stay in patches.csv,
    /// marked); `flag` only marks them; `off` runs no QC.
    #[arg(long, value_name = "MODE", default_value = "exclude")]
    pub qc: tessera::qc::QcMode,
    /// JSON file overriding QC thresholds and verdict rules (see docs/qc.md), e.g.
    /// {"rules": {"rescan_blur_pct": 20}}.
    #[arg(long, value_name = "FILE")]
    pub qc_config: Option<PathBuf>,
    /// A lab's own QC model: a dense model folder whose classes are artefact kinds (pen, blur,
    /// fold, faint, edge; see docs/qc.md). Its flags join the built-in detectors'.
    #[arg(long, value_name = "DIR")]
    pub qc_model: Option<PathBuf>,
}

impl QcArgs {
    /// The QC parameters: the file's, or the defaults, with `--qc`'s mode. `--qc off` with
    /// `--qc-model` is refused: the model would silently not run.
    pub fn params(&self) -> Result<tessera::qc::QcParams, tessera::Error> {
        if let (tessera::qc::QcMode::Off, Some(model)) = (self.qc, &self.qc_model) {
            return Err(tessera::Error::InvalidInput {
                path: model.clone(),
                reason: "--qc off runs no slide QC, so this QC model would not run: drop \
                         --qc-model, or use --qc flag or --qc exclude"
                    .into(),
            });
        }
        let mut p = match &self.qc_config {
            Some(f) => tessera::qc::QcParams::read(f)?,
            None => tessera::qc::QcParams::default(),
        };
        p.mode = self.qc;
        Ok(p)
    }
}

impl AnalysisArgs {
    /// The analysis configuration writing into `out`, with `workers` inference workers (each
    /// session's threads default to the cores divided among them). Fails only on an
    /// unreadable `--qc-config`.
    pub fn config(&self, out: PathBuf, workers: usize) -> Result<AnalyzeConfig, tessera::Error> {
        let mut cfg = AnalyzeConfig {
            out,
            model: self.model.clone(),
            inference: self.inference.choice(),
            device: self.device.options(),
            gpu_preprocess: self.device.gpu_preprocess(),
            stain: self.reinhard,
            batch_size: self.batch_size,
            stride_pixels: self.stride,
            min_tissue: self.min_tissue,
            threshold: self.threshold,
            mpp_override: self.mpp,
            workers,
            hash_full: self.hash_full,
            dicomweb_store: self.dicomweb_store.clone(),
            tissue_model: self.tissue_model.clone(),
            qc_model: self.qc.qc_model.clone(),
            slide: self.slide.config_with_cache(32),
            slide_score: self.slide_score,
            top_regions: self.top_regions,
            region_pixels: self.region_pixels,
            include_label: self.include_label,
            pdf: self.pdf,
            qc: self.qc.params()?,
            ..AnalyzeConfig::default()
        };
        cfg.inference_threads = self
            .inference_threads
            .unwrap_or((cfg.inference_threads / workers.max(1)).max(1));
        if let Some(n) = self.decode_threads {
            cfg.decode_threads = n;
        }
        Ok(cfg)
    }
}
