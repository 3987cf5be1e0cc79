//! Command-line interface: clap types, their conversion into library configuration, and the
//! exit codes. No slide logic lives here.

mod analysis;
mod analyze;
mod bench;
mod generate;
mod info;
mod qc;
mod region;
mod report;
mod serve;
mod users;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tessera::{BackendChoice, DicomWebAuth, DicomWebConfig, Limits, SlideConfig};

/// Exit status: every input succeeded.
pub const EXIT_OK: u8 = 0;
/// Exit status: some inputs failed, others succeeded.
pub const EXIT_SOME_FAILED: u8 = 2;
/// Exit status: nothing succeeded.
pub const EXIT_ALL_FAILED: u8 = 3;
/// Exit status: the command line itself was wrong.
pub const EXIT_USAGE: u8 = 64;
/// Exit status of `summary`: a shard of a sharded run never reported, so its slides are
/// missing from the summary (before the failed-slide codes: it is the graver news).
pub const EXIT_SHARD_MISSING: u8 = 4;

const EXIT_CODES: &str = "Exit codes:\n  0   every slide was read\n  2   some slides failed, \
    others were read\n  3   no slide was read\n  64  invalid command line";

/// Tessera: whole-slide pathology inference. Decision support — findings require review by a
/// pathologist.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Analyse slides: tissue, patch grid, model inference, heatmaps, QuPath GeoJSON, CSV.
    #[command(after_help = EXIT_CODES)]
    Analyze(analyze::AnalyzeArgs),
    /// Slide quality control alone (no model): pen, blur, folds, faint tissue and edges, and a
    /// verdict (pass, review, rescan) per slide.
    #[command(after_help = EXIT_CODES)]
    Qc(qc::QcCommandArgs),
    /// Describe slides: format, reader, dimensions, levels, µm/px, objective, associated images.
    #[command(after_help = EXIT_CODES)]
    Info(info::InfoArgs),
    /// Write one region of a slide as a PNG (like openslide-write-png).
    #[command(
        after_help = "Exit codes:\n  0   the PNG was written\n  3   it was not (nothing \
        is left at the output path)\n  64  invalid command line"
    )]
    Region(region::RegionArgs),
    /// Write a synthetic pyramidal JPEG TIFF tiled from real tissue, for benchmarks.
    Generate(generate::GenerateArgs),
    /// Rebuild report.html from a slide's output folder (or index.html from a cohort folder)
    /// without rerunning the model.
    #[command(after_help = EXIT_CODES)]
    Report(report::ReportArgs),
    /// Watch an inbox and analyse every slide once it is completely written, exactly once,
    /// through crashes and restarts (queue in OUT/.watch/).
    #[command(
        after_help = "Exit codes:\n  0   stopped cleanly (SIGTERM/Ctrl-C, or --once \
        finished)\n  3   the service could not run (inbox missing, results folder in use, queue \
        unreadable, metrics address taken)\n  64  invalid command line\n\nSee docs/watch.md."
    )]
    Watch(watch::WatchArgs),
    /// Inspect or repair the watch service's queue.
    Queue(watch::QueueArgs),
    /// A web viewer over analysed slides for teaching: the slide and its AI heatmap, and a quiz
    /// mode that scores a trainee's marks.
    #[command(
        after_help = "Exit codes:\n  0   stopped (SIGTERM/Ctrl-C)\n  3   could not start \
        (no analysed slide, address in use, short token)\n  64  invalid command line"
    )]
    Serve(serve::ServeArgs),
    /// The teaching viewer's accounts: add instructors and trainees, set passwords, disable.
    /// With one account in a results folder, `tessera serve` there requires logins.
    #[command(
        after_help = "Exit codes:\n  0   done\n  3   not done (no such account, name taken, \
        password too short, database unreadable)\n  64  invalid command line"
    )]
    Users(users::UsersArgs),
    /// Internal: the watch service's isolated analysis worker (reads requests on stdin).
    #[command(hide = true)]
    WatchWorker(watch::WatchArgs),
    /// Merge the summaries of (sharded) runs into OUT/summary.csv, OUT/summary.json and OUT/index.html.
    #[command(
        after_help = "Exit codes:\n  0   every slide in the summaries was done\n  2   some \
        failed, others were done\n  3   none was done, or no summary could be read\n  4   a \
        shard never reported (--shard I/N runs: its slides are missing)\n  64  invalid \
        command line"
    )]
    Summary {
        /// The output folder of the runs.
        out: PathBuf,
    },
    /// Measure: `bench read` (native reader vs OpenSlide), `bench inference` (the model alone).
    Bench(bench::BenchArgs),
}

/// Which inference runtime to use (analyze, watch, bench inference).
#[derive(Debug, Clone, Copy, ValueEnum)]
enum InferenceArg {
    /// ONNX Runtime when installed (pip install onnxruntime), tract otherwise.
    Auto,
    /// ONNX Runtime, loaded at run time.
    Ort,
    /// tract: pure Rust, always available.
    Tract,
}

impl InferenceArg {
    fn choice(self) -> tessera::model::InferenceChoice {
        use tessera::model::InferenceChoice;
        match self {
            InferenceArg::Auto => InferenceChoice::Auto,
            InferenceArg::Ort => InferenceChoice::Ort,
            InferenceArg::Tract => InferenceChoice::Tract,
        }
    }
}

/// Where inference runs (analyze, watch, bench inference).
#[derive(Debug, Clone, Args)]
struct DeviceArgs {
    /// auto (TensorRT, then CUDA, then CPU: each fallback is recorded in result.json), cpu,
    /// cuda[:N] or tensorrt[:N]; several GPUs share a slide's patches with cuda:0,1 (one copy
    /// of the model and at least one session per GPU). A GPU named explicitly that cannot be
    /// used is an error.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: DeviceList,
    /// TensorRT in FP16.
    #[arg(long)]
    fp16: bool,
    /// Folder for TensorRT's built engines, so that the next run starts fast.
    #[arg(long, value_name = "DIR")]
    trt_cache: Option<PathBuf>,
    /// Resize, stain-normalise and normalise patches, and blend the overlay PNGs, with wgpu
    /// compute shaders: auto (the CPU: on an NVIDIA H200 the shaders were slower end to end,
    /// their output returning through host memory; the reason is recorded), on (any adapter,
    /// Mesa's lavapipe included; an error if none), off (the CPU code; the same within
    /// rounding).
    #[arg(long, value_enum, default_value_t = GpuPreprocessArg::Auto)]
    gpu_preprocess: GpuPreprocessArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum GpuPreprocessArg {
    Auto,
    On,
    Off,
}

/// `--device`'s devices, in order.
#[derive(Debug, Clone)]
struct DeviceList(Vec<tessera::model::Device>);

fn parse_device(s: &str) -> Result<DeviceList, String> {
    tessera::model::Device::parse_list(s)
        .map(DeviceList)
        .ok_or_else(|| {
            format!(
                "{s:?}: expected auto, cpu, cuda, cuda:N, tensorrt or tensorrt:N, \
             or several different GPUs as cuda:0,1 or tensorrt:0,1"
            )
        })
}

impl DeviceArgs {
    fn gpu_preprocess(&self) -> tessera::gpu::GpuPreprocess {
        use tessera::gpu::GpuPreprocess as G;
        match self.gpu_preprocess {
            GpuPreprocessArg::Auto => G::Auto,
            GpuPreprocessArg::On => G::On,
            GpuPreprocessArg::Off => G::Off,
        }
    }

    fn options(&self) -> tessera::model::DeviceOptions {
        tessera::model::DeviceOptions {
            device: self.device.0.first().copied().unwrap_or_default(),
            more: self.device.0.iter().skip(1).copied().collect(),
            fp16: self.fp16,
            trt_cache: self.trt_cache.clone(),
        }
    }
}

/// Which slide reader to use.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    /// The native reader for Aperio SVS and tiled TIFF, OpenSlide for everything else.
    Auto,
    /// Tessera's own pure-Rust reader (Aperio SVS, generic tiled TIFF).
    Native,
    /// OpenSlide, loaded at run time.
    Openslide,
}

/// Options shared by every command that opens slides.
#[derive(Debug, Args)]
struct SlideArgs {
    /// Slide reader.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// OpenSlide library to load (default: $TESSERA_OPENSLIDE, then the openslide-bin Python
    /// package, then the system's libopenslide).
    #[arg(long, value_name = "LIBRARY")]
    openslide: Option<PathBuf>,
    /// Largest region one read may return, in pixels.
    #[arg(long, value_name = "PIXELS", default_value_t = Limits::default().max_region_pixels)]
    max_region_pixels: u64,
    /// Largest level-0 width or height a slide may claim.
    #[arg(long, value_name = "PIXELS", default_value_t = Limits::default().max_level0_width)]
    max_slide_dimension: u64,
    /// Convert pixels from the slide's ICC profile to sRGB (off by default, as OpenSlide).
    #[arg(long)]
    icc: bool,
    /// Decoded-tile cache of the native reader, in MiB (default: 32 for analyze, whose reads
    /// walk the slide in narrow strips, 256 otherwise).
    #[arg(long, value_name = "MIB")]
    cache_mib: Option<u64>,
    /// User name for a DICOMweb server's basic authentication (slides given as
    /// dicomweb+http(s)://…); the password comes from $TESSERA_DICOMWEB_PASSWORD or
    /// --dicomweb-password-file, never from the command line.
    #[arg(long, value_name = "USER", env = "TESSERA_DICOMWEB_USER")]
    dicomweb_user: Option<String>,
    /// File whose first line is the basic-authentication password.
    #[arg(long, value_name = "FILE")]
    dicomweb_password_file: Option<PathBuf>,
    /// File whose first line is a bearer token for the DICOMweb server, read as each slide is
    /// opened (else $TESSERA_DICOMWEB_TOKEN).
    #[arg(long, value_name = "FILE", conflicts_with = "dicomweb_user")]
    dicomweb_token_file: Option<PathBuf>,
    /// PEM file of CA certificates trusted besides the system's roots (a hospital's own CA).
    #[arg(long, value_name = "FILE")]
    dicomweb_ca: Option<PathBuf>,
    /// Frames asked for in one DICOMweb request.
    #[arg(long, value_name = "N", default_value_t = DicomWebConfig::default().batch_frames,
          value_parser = clap::value_parser!(u64).range(1..=256))]
    dicomweb_batch: u64,
    /// Largest WADO-RS metadata answer read for one series, in MiB (every instance's
    /// attributes; a series of many concatenated instances may need more).
    #[arg(long, value_name = "MIB", default_value_t = DicomWebConfig::default().max_metadata_bytes >> 20,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    dicomweb_max_metadata_mib: u64,
}

impl SlideArgs {
    fn config(&self) -> SlideConfig {
        self.config_with_cache(256)
    }

    /// The configuration, with `default_mib` of tile cache unless `--cache-mib` says otherwise.
    fn config_with_cache(&self, default_mib: u64) -> SlideConfig {
        SlideConfig {
            backend: match self.backend {
                BackendArg::Auto => BackendChoice::Auto,
                BackendArg::Native => BackendChoice::Native,
                BackendArg::Openslide => BackendChoice::OpenSlide,
            },
            openslide_library: self.openslide.clone(),
            limits: Limits {
                max_region_pixels: self.max_region_pixels,
                max_level0_width: self.max_slide_dimension,
                max_level0_height: self.max_slide_dimension,
                ..Limits::default()
            },
            cache_bytes: self
                .cache_mib
                .unwrap_or(default_mib)
                .saturating_mul(1024 * 1024),
            apply_icc: self.icc,
            dicomweb: self.dicomweb(),
        }
    }

    /// The DICOMweb settings: credentials from the flags and the environment (the password
    /// and token only from the environment or a file, so they never sit in a process list).
    fn dicomweb(&self) -> DicomWebConfig {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let auth = match (&self.dicomweb_user, &self.dicomweb_token_file) {
            (Some(user), _) => match &self.dicomweb_password_file {
                Some(file) => DicomWebAuth::BasicPasswordFile {
                    user: user.clone(),
                    file: file.clone(),
                },
                None => DicomWebAuth::Basic {
                    user: user.clone(),
                    password: env("TESSERA_DICOMWEB_PASSWORD").unwrap_or_default(),
                },
            },
            (None, Some(file)) => DicomWebAuth::BearerFile(file.clone()),
            (None, None) => match env("TESSERA_DICOMWEB_TOKEN") {
                Some(token) => DicomWebAuth::Bearer(token),
                None => DicomWebAuth::None,
            },
        };
        DicomWebConfig {
            auth,
            ca_file: self.dicomweb_ca.clone(),
            batch_frames: self.dicomweb_batch,
            max_metadata_bytes: self.dicomweb_max_metadata_mib << 20,
            ..DicomWebConfig::default()
        }
    }
}

/// `--version`'s text: the version, the git commit it was built from (`unknown` outside a
/// git checkout) and the engine's features.
fn long_version() -> String {
    let features = tessera::features();
    format!(
        "{} (commit {}; features: {})",
        tessera::VERSION,
        env!("TESSERA_GIT_COMMIT"),
        if features.is_empty() {
            "none".to_string()
        } else {
            features.join(", ")
        }
    )
}

/// Parses the command line and runs the command.
pub fn run() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    // Made once per process; clap keeps version strings for the program's lifetime.
    let version: &'static str = Box::leak(long_version().into_boxed_str());
    let command = Cli::command().version(version);
    let cli = match command
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    // rayon's shared pool (reads outside the decode pool, packing, tissue) sized to this
    // process's CPUs, as every other pool is: a Slurm task's share, not the node's cores.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(tessera::sys::cpus())
        .build_global();
    let code = match cli.command {
        Command::Analyze(args) => analyze::run(&args),
        Command::Info(args) => info::run(&args),
        Command::Qc(args) => qc::run(&args),
        Command::Region(args) => region::run(&args),
        Command::Report(args) => report::run(&args),
        Command::Watch(args) => watch::run(&args),
        Command::Queue(args) => watch::run_queue(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Users(args) => users::run(&args),
        Command::WatchWorker(args) => watch::run_worker(&args),
        Command::Generate(args) => generate::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Summary { out } => match tessera::cohort::merge_summaries(&out) {
            Ok(rows) => {
                let failed = rows
                    .iter()
                    .filter(|s| s.status == tessera::results::Status::Failed)
                    .count();
                println!(
                    "{} slides, {failed} failed: {}",
                    rows.len(),
                    out.join("summary.csv").display()
                );
                let missing = tessera::cohort::missing_shards(&out);
                if missing.is_empty() {
                    batch_exit_code(rows.len() - failed, rows.len())
                } else {
                    let list: Vec<String> =
                        missing.iter().map(|(i, n)| format!("{i}/{n}")).collect();
                    eprintln!(
                        "warning: shard {} never reported (no record under {}): its slides are \
                         missing from the summary; run it again",
                        list.join(", "),
                        out.join(".runs").display()
                    );
                    EXIT_SHARD_MISSING
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                EXIT_ALL_FAILED
            }
        },
    };
    ExitCode::from(code)
}

/// For `--pdf`: is Chromium installed? If not, says so (naming `report`) and how to fix it,
/// before any work is done.
fn chromium_found(report: &std::path::Path) -> bool {
    let found = tessera::report::pdf::find_chromium().is_some();
    if !found {
        eprintln!("error: {}", tessera::report::pdf::missing(report));
    }
    found
}

/// The exit code for a batch with `ok` successes out of `total` inputs.
fn batch_exit_code(ok: usize, total: usize) -> u8 {
    if ok == total {
        EXIT_OK
    } else if ok == 0 {
        EXIT_ALL_FAILED
    } else {
        EXIT_SOME_FAILED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(batch_exit_code(2, 2), EXIT_OK);
        assert_eq!(batch_exit_code(1, 2), EXIT_SOME_FAILED);
        assert_eq!(batch_exit_code(0, 2), EXIT_ALL_FAILED);
    }

    #[test]
    fn cli_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
