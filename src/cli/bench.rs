//! `tessera bench read SLIDE`: native reader against OpenSlide on the same random regions.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use tessera::bench::{bench_read, ReadBench, ReadBenchRow, ReadPattern};

use super::{InferenceArg, SlideArgs, EXIT_ALL_FAILED, EXIT_OK};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Debug, Subcommand)]
enum BenchWhat {
    /// Regions/s of 256 × 256 level-0 reads, native vs OpenSlide, 1 thread and all threads.
    Read(ReadArgs),
    /// Patches/s of the model alone on batches of the slide's tissue decoded and packed beforehand.
    Inference(InferenceArgs),
}

#[derive(Debug, Args)]
struct InferenceArgs {
    /// The slide whose tissue patches feed the model.
    #[arg(value_name = "SLIDE")]
    slide_path: PathBuf,
    /// Model folder (default: models/he-cellularity).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Inference runtime.
    #[arg(long, value_enum, default_value_t = InferenceArg::Auto)]
    inference: InferenceArg,
    /// Patches per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Threads of the inference session (default: all cores, as analyze).
    #[arg(long)]
    threads: Option<usize>,
    /// Batches held in memory.
    #[arg(long, default_value_t = 16)]
    batches: usize,
    /// Passes over the batches (the median is printed).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// µm/px of level 0 when the file lacks it.
    #[arg(long)]
    mpp: Option<f64>,
    #[command(flatten)]
    device: super::DeviceArgs,
    #[command(flatten)]
    slide: SlideArgs,
}

fn run_inference(a: &InferenceArgs) -> u8 {
    let inference = a.inference.choice();
    let all = tessera::sys::cpus();
    if !a.device.options().more.is_empty() {
        eprintln!("tessera bench inference: one device at a time (measures one session)");
        return super::EXIT_USAGE;
    }
    let spec = tessera::bench::InferenceBench {
        model: a.model.clone(),
        inference,
        device: a.device.options(),
        batch_size: a.batch_size,
        threads: a.threads.unwrap_or(all),
        batches: a.batches,
        repeats: a.repeats,
        mpp: a.mpp,
    };
    match tessera::bench::bench_inference(&a.slide_path, &spec, &a.slide.config()) {
        Ok(r) => {
            let runs: Vec<String> = r.runs.iter().map(|v| format!("{v:.1}")).collect();
            println!(
                "pure inference: {:.1} patches/s (median of {} passes over {} pre-decoded \
                 patches; batch {}, {} threads; runs {}) — {}",
                r.patches_per_s,
                r.runs.len(),
                r.patches,
                spec.batch_size,
                spec.threads,
                runs.join(" "),
                r.backend
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ALL_FAILED
        }
    }
}

#[derive(Debug, Args)]
struct ReadArgs {
    /// The slide to read (a large pyramidal JPEG TIFF: see `tessera generate`).
    #[arg(value_name = "SLIDE")]
    slide_path: PathBuf,
    /// Regions per run.
    #[arg(long, default_value_t = 2000)]
    regions: usize,
    /// Region side in pixels.
    #[arg(long, default_value_t = 256)]
    side: u64,
    /// Seed for the region locations.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Runs per configuration (the median is printed).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Thread counts to measure (default: 1 and all cores).
    #[arg(long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Snap locations to multiples of the side (whole-tile reads when side = tile size).
    #[arg(long, conflicts_with = "walk")]
    aligned: bool,
    /// Read a patch grid (stride = side) in analyze's order, vertical strips of about 2048 px
    /// ending on tile boundaries, each top to bottom, 32 patches at a time in parallel, from a
    /// seeded strip: neighbouring patches share tiles.
    #[arg(long)]
    walk: bool,
    /// Native tile cache for the runs, in MiB (OpenSlide's default cache is 32 MiB).
    #[arg(long, default_value_t = 32)]
    bench_cache_mib: u64,
    #[command(flatten)]
    slide: SlideArgs,
}

pub fn run(args: &BenchArgs) -> u8 {
    let a = match &args.what {
        BenchWhat::Read(a) => a,
        BenchWhat::Inference(a) => return run_inference(a),
    };
    let all = tessera::sys::cpus();
    let threads = if a.threads.is_empty() {
        if all > 1 {
            vec![1, all]
        } else {
            vec![1]
        }
    } else {
        a.threads.clone()
    };
    let spec = ReadBench {
        regions: a.regions,
        side: a.side,
        seed: a.seed,
        threads,
        repeats: a.repeats,
        cache_bytes: a.bench_cache_mib * 1024 * 1024,
        pattern: if a.walk {
            ReadPattern::Walk
        } else if a.aligned {
            ReadPattern::Aligned
        } else {
            ReadPattern::Random
        },
    };
    match bench_read(&a.slide_path, &spec, &a.slide.config()) {
        Ok(rows) => {
            println!(
                "slide {}; {} {}regions of {}² at level 0, seed {}, median of {} runs, cores {all}",
                a.slide_path.display(),
                spec.regions,
                match spec.pattern {
                    ReadPattern::Random => "random ",
                    ReadPattern::Aligned => "aligned ",
                    ReadPattern::Walk => "analysis-order ",
                },
                spec.side,
                spec.seed,
                spec.repeats
            );
            println!(
                "{:>7}  {:>9}  {:>11}  runs",
                "threads", "backend", "regions/s"
            );
            for r in &rows {
                let runs: Vec<String> = r.runs.iter().map(|v| format!("{v:.0}")).collect();
                println!(
                    "{:>7}  {:>9}  {:>11.0}  {}",
                    r.threads,
                    r.backend,
                    r.regions_per_s,
                    runs.join(" ")
                );
            }
            let bytes = (spec.regions as u64 * spec.side * spec.side * 3).div_ceil(61) as f64;
            for n in rows.iter().filter(|r| r.backend == "native") {
                let same = |o: &&ReadBenchRow| o.backend == "openslide" && o.threads == n.threads;
                if let Some(o) = rows.iter().find(same) {
                    println!(
                        "ratio native/openslide at {} thread(s): {:.2}× (mean pixel value {:.3} \
                         vs {:.3})",
                        n.threads,
                        n.regions_per_s / o.regions_per_s,
                        n.checksum as f64 / bytes,
                        o.checksum as f64 / bytes
                    );
                }
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ALL_FAILED
        }
    }
}
