//! `tessera generate OUT.svs --width W --height H --source IMG...`: a synthetic benchmark slide.

use std::path::PathBuf;

use clap::Args;
use tessera::synthetic::{write_synthetic_slide, Subsampling, SyntheticSpec};

use super::{EXIT_ALL_FAILED, EXIT_OK};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Output file (Aperio-style pyramidal JPEG TIFF).
    #[arg(value_name = "OUT")]
    output: PathBuf,
    /// Level-0 width in pixels.
    #[arg(long)]
    width: u64,
    /// Level-0 height in pixels (default: the width).
    #[arg(long)]
    height: Option<u64>,
    /// Tile side in pixels.
    #[arg(long, default_value_t = 256)]
    tile: u32,
    /// JPEG quality (1–100).
    #[arg(long, default_value_t = 80)]
    quality: u8,
    /// Chroma subsampling of the JPEG tiles: 420 (2×2, Aperio's usual), 422 (2×1) or 444 (none).
    #[arg(long, value_enum, default_value = "420")]
    subsampling: SubsamplingArg,
    /// MCUs between JPEG restart markers (0: none).
    #[arg(long, default_value_t = 0)]
    restart_interval: u16,
    /// Seed for tile choice and tissue layout.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// µm/px recorded in the file.
    #[arg(long, default_value_t = 0.5)]
    mpp: f64,
    /// Images of real tissue to tile from (PNG/JPEG, at least one tile in size).
    #[arg(long = "source", value_name = "IMAGE", required = true)]
    sources: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SubsamplingArg {
    #[value(name = "420")]
    S420,
    #[value(name = "422")]
    S422,
    #[value(name = "444")]
    S444,
}

pub fn run(args: &GenerateArgs) -> u8 {
    let spec = SyntheticSpec {
        width: args.width,
        height: args.height.unwrap_or(args.width),
        tile: args.tile,
        quality: args.quality,
        subsampling: match args.subsampling {
            SubsamplingArg::S420 => Subsampling::S420,
            SubsamplingArg::S422 => Subsampling::S422,
            SubsamplingArg::S444 => Subsampling::S444,
        },
        restart_interval: args.restart_interval,
        seed: args.seed,
        mpp: args.mpp,
        sources: args.sources.clone(),
        artefacts: Vec::new(),
    };
    let start = std::time::Instant::now();
    match write_synthetic_slide(&args.output, &spec) {
        Ok(r) => {
            println!(
                "{}: {} levels {:?}, {:.0}% tissue tiles, {:.1} MiB{}, {:.1} s",
                args.output.display(),
                r.levels.len(),
                r.levels,
                r.tissue_fraction * 100.0,
                r.bytes as f64 / 1048576.0,
                if r.bigtiff { " (BigTIFF)" } else { "" },
                start.elapsed().as_secs_f64()
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ALL_FAILED
        }
    }
}
