//! `tessera analyze SLIDE... [--out DIR] [--model DIR]`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use tessera::cohort::{self, CohortOptions, SlideStatus};

use super::analysis::AnalysisArgs;
use super::batch_exit_code;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `--shard`: `I/N`, or `auto` (from the scheduler's variables, resolved when the command
/// runs).
#[derive(Debug, Clone, Copy)]
enum ShardArg {
    Fixed(usize, usize),
    Auto,
}

fn parse_shard(s: &str) -> Result<ShardArg, String> {
    if s == "auto" {
        return Ok(ShardArg::Auto);
    }
    let (i, n) = s.split_once('/').ok_or("expected I/N (e.g. 1/4) or auto")?;
    let (i, n): (usize, usize) = (
        i.parse().map_err(|_| "I is not a number")?,
        n.parse().map_err(|_| "N is not a number")?,
    );
    if n == 0 || i == 0 || i > n {
        return Err(format!("shard {i}/{n}: need 1 <= I <= N"));
    }
    Ok(ShardArg::Fixed(i, n))
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Slide files and folders (searched recursively; a DICOM series folder is one slide).
    #[arg(required = true, value_name = "PATH")]
    slides: Vec<PathBuf>,
    /// Redo slides whose results are up to date (same model and parameters).
    #[arg(long)]
    force: bool,
    /// Process shard I of N of the sorted slide list (e.g. 2/8), for job arrays; `auto` takes
    /// them from the scheduler: a Slurm array's SLURM_ARRAY_TASK_* (stepped arrays included;
    /// sparse ones refused), or a Kubernetes Indexed Job's JOB_COMPLETION_INDEX with
    /// TESSERA_SHARD_COUNT.
    #[arg(long, value_name = "I/N|auto", value_parser = parse_shard)]
    shard: Option<ShardArg>,
    /// Share the list with other workers without shards: walk every slide, largest first,
    /// and take each one no other worker holds (the lock files). Start N workers on the same
    /// list and OUT; they finish within about one slide of each other.
    #[arg(long, conflicts_with = "shard")]
    claim: bool,
    /// The exit code when the run finished but slides failed (some or all of them): by default
    /// 2 when some were read and 3 when none was. A scheduler's "after OK" dependency wants 0
    /// here, so that a cohort with unreadable slides (listed as failed in the summary) still
    /// counts as finished, while a run that could not work at all keeps its own code (3, or 64
    /// for a bad command line).
    #[arg(long, value_name = "CODE")]
    failed_slides_exit: Option<u8>,
    /// Treat another worker's lock as stale after this many hours.
    #[arg(long, default_value_t = 24.0)]
    lock_stale_hours: f64,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
    /// Per-slide lines as text or as JSON objects (one per line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Output folder; each slide gets OUT/<slide name>/.
    #[arg(long, short, default_value = "tessera-out")]
    out: PathBuf,
    /// Inference workers, one session each (a run opens at least one per device, two per GPU).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    #[command(flatten)]
    analysis: AnalysisArgs,
}

pub fn run(args: &AnalyzeArgs) -> u8 {
    let mut cfg = match args.analysis.config(args.out.clone(), args.workers) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return super::EXIT_USAGE;
        }
    };
    if args.analysis.pdf && !super::chromium_found(&args.out.join("report.html")) {
        return super::EXIT_USAGE;
    }
    let shard = match args.shard {
        None => None,
        Some(ShardArg::Fixed(i, n)) => Some((i, n)),
        Some(ShardArg::Auto) => match cohort::shard_from_scheduler(|k| std::env::var(k).ok()) {
            Ok((i, n)) => {
                if !args.quiet {
                    eprintln!("shard {i}/{n} (from the job scheduler)");
                }
                Some((i, n))
            }
            Err(e) => {
                eprintln!("error: {e}");
                return super::EXIT_USAGE;
            }
        },
    };
    let opts = CohortOptions {
        force: args.force,
        shard,
        claim: args.claim,
        stale_after: std::time::Duration::from_secs_f64(args.lock_stale_hours.max(0.0) * 3600.0),
    };
    let (quiet, format) = (args.quiet, args.log_format);
    // On a terminal: a bar for the cohort (slides, ETA) and one for the current slide
    // (patches, patches/s); in a pipe or a log, plain lines only.
    use std::io::IsTerminal;
    let bars = !quiet && matches!(format, LogFormat::Text) && std::io::stderr().is_terminal();
    let multi = indicatif::MultiProgress::new();
    let (cohort_bar, slide_bar) = if bars {
        let c = multi.add(indicatif::ProgressBar::new(0));
        c.set_style(
            indicatif::ProgressStyle::with_template(
                "slides  [{bar:30.cyan/blue}] {pos}/{len}  elapsed {elapsed}  ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let p = multi.add(indicatif::ProgressBar::new(0));
        p.set_style(
            indicatif::ProgressStyle::with_template(
                "patches [{bar:30.green/white}] {pos}/{len}  {rate}  {wide_msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .with_key(
                "rate",
                |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0} patches/s", st.per_sec());
                },
            )
            .progress_chars("=> "),
        );
        let (c2, p2) = (c.clone(), p.clone());
        let m2 = multi.clone();
        cfg.progress = tessera::pipeline::Progress::new(move |e| {
            use tessera::pipeline::ProgressEvent as E;
            match e {
                E::ModelLoaded { note } => {
                    let _ = m2.println(note);
                }
                E::SlideStarted { index, total, name } => {
                    c2.set_length(*total as u64);
                    c2.set_position(*index as u64 - 1);
                    p2.reset();
                    p2.set_length(0);
                    p2.set_message(name.clone());
                }
                E::PatchesPlanned { total } => {
                    p2.reset();
                    p2.set_length(*total as u64);
                }
                E::PatchesDone { done } => p2.set_position(*done as u64),
            }
        });
        (Some(c), Some(p))
    } else {
        // Without bars: only the line saying where inference runs (and why not on a GPU).
        if !quiet && matches!(format, LogFormat::Text) {
            cfg.progress = tessera::pipeline::Progress::new(|e| {
                if let tessera::pipeline::ProgressEvent::ModelLoaded { note } = e {
                    eprintln!("{note}");
                }
            });
        }
        (None, None)
    };
    let say = |line: String, err: bool| {
        if bars {
            let _ = multi.println(line);
        } else if err {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let report = |s: &SlideStatus, k: usize, total: usize| {
        if let Some(c) = &cohort_bar {
            c.set_position(k as u64);
        }
        if matches!(format, LogFormat::Json) {
            if let Ok(line) = serde_json::to_string(s) {
                println!("{line}");
            }
            return;
        }
        if s.status == tessera::results::Status::Failed {
            say(
                format!("[{k}/{total}] failed {}: {}", s.path.display(), s.reason),
                true,
            );
        } else if !quiet {
            let detail = match (s.patches, s.tissue_mm2) {
                (Some(p), Some(t)) => format!(
                    ": {p} patches, {t:.2} mm² tissue, {} score {} -> {}",
                    s.positive_class.as_deref().unwrap_or(""),
                    s.slide_score.map_or("n/a".into(), |m| format!("{m:.3}")),
                    s.output
                        .as_ref()
                        .map(|o| o.display().to_string())
                        .unwrap_or_default()
                ),
                _ => format!(" ({})", s.reason),
            };
            say(
                format!("[{k}/{total}] {} {}{detail}", s.status, s.path.display()),
                false,
            );
        }
    };
    let outcome = cohort::run(&args.slides, &cfg, &opts, report);
    for bar in [&cohort_bar, &slide_bar].into_iter().flatten() {
        bar.finish_and_clear();
    }
    match outcome {
        // A shard can be empty (more shards than slides): nothing to do is not a failure.
        Ok(statuses)
            if statuses.is_empty()
                && shard.is_some()
                && cohort::collect(&args.slides).is_ok_and(|all| !all.is_empty()) =>
        {
            if !quiet {
                eprintln!("this shard holds no slides");
            }
            super::EXIT_OK
        }
        Ok(statuses) if statuses.is_empty() => {
            eprintln!("error: no slides found in the paths given");
            super::EXIT_ALL_FAILED
        }
        Ok(statuses) => {
            let failed = statuses
                .iter()
                .filter(|s| s.status == tessera::results::Status::Failed)
                .count();
            if !quiet && matches!(format, LogFormat::Text) {
                println!(
                    "{} slides: {} failed; summary in {}",
                    statuses.len(),
                    failed,
                    cfg.out.join("summary.csv").display()
                );
            }
            match (failed, args.failed_slides_exit) {
                (1.., Some(code)) => code,
                _ => batch_exit_code(statuses.len() - failed, statuses.len()),
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            super::EXIT_ALL_FAILED
        }
    }
}
