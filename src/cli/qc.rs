//! `tessera qc SLIDE... [--out DIR]`: slide quality control alone, without the analysis's
//! model (a lab's QC model runs when `--qc-model` names one).

use std::path::PathBuf;

use clap::Args;
use tessera::cohort;
use tessera::pipeline::AnalyzeConfig;
use tessera::results::Status;

use super::analysis::QcArgs;
use super::{batch_exit_code, SlideArgs};

#[derive(Debug, Args)]
pub struct QcCommandArgs {
    /// Slide files and folders (searched recursively; a DICOM series folder is one slide).
    #[arg(required = true, value_name = "PATH")]
    slides: Vec<PathBuf>,
    /// Output folder; each slide gets OUT/<slide name>/ (qc.json, qc-mask.png,
    /// qc-overlay.png, annotations.geojson…) and OUT/qc-summary.csv lists every slide. Use a
    /// folder of its own: a slide's folder is replaced.
    #[arg(long, short, default_value = "tessera-qc")]
    out: PathBuf,
    /// µm per pixel of level 0, when the file lacks it or is wrong (recorded as user-given).
    #[arg(long)]
    mpp: Option<f64>,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    qc: QcArgs,
    #[command(flatten)]
    slide: SlideArgs,
}

pub fn run(args: &QcCommandArgs) -> u8 {
    let qc = match args.qc.params() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return super::EXIT_USAGE;
        }
    };
    let cfg = AnalyzeConfig {
        out: args.out.clone(),
        mpp_override: args.mpp,
        // Focus tiles are read once each, scattered: a small tile cache, as analyze.
        slide: args.slide.config_with_cache(32),
        qc,
        qc_model: args.qc.qc_model.clone(),
        ..AnalyzeConfig::default()
    };
    let quiet = args.quiet;
    let outcome = cohort::run_qc(&args.slides, &cfg, |s, k, total| {
        if s.status == Status::Failed {
            eprintln!("[{k}/{total}] failed {}: {}", s.path.display(), s.reason);
        } else if !quiet {
            println!(
                "[{k}/{total}] {} {}: {}{}",
                s.qc_verdict.map_or("?".into(), |v| v.to_string()),
                s.path.display(),
                s.qc_reasons
                    .as_deref()
                    .filter(|r| !r.is_empty())
                    .unwrap_or("no artefact over the rules"),
                s.output
                    .as_ref()
                    .map(|o| format!(" -> {}", o.display()))
                    .unwrap_or_default()
            );
        }
    });
    match outcome {
        Ok(statuses) if statuses.is_empty() => {
            eprintln!("error: no slides found in the paths given");
            super::EXIT_ALL_FAILED
        }
        Ok(statuses) => {
            let failed = statuses
                .iter()
                .filter(|s| s.status == Status::Failed)
                .count();
            if !quiet {
                println!(
                    "{} slides: {} failed; summary in {}",
                    statuses.len(),
                    failed,
                    cfg.out.join("qc-summary.csv").display()
                );
            }
            batch_exit_code(statuses.len() - failed, statuses.len())
        }
        Err(e) => {
            eprintln!("error: {e}");
            super::EXIT_ALL_FAILED
        }
    }
}
