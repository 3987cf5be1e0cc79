//! `tessera watch INBOX --out RESULTS` and `tessera queue list|retry|forget`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use tessera::pipeline::AnalyzeConfig;
use tessera::watch::{self, queue::Queue, WatchConfig};

use super::{InferenceArg, SlideArgs, EXIT_ALL_FAILED, EXIT_OK, EXIT_USAGE};

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The scanner's inbox (searched recursively; never modified).
    #[arg(value_name = "INBOX")]
    inbox: PathBuf,
    /// Results folder: one OUT/<slide>-<fingerprint>/ per slide version, and OUT/.watch/ with
    /// the queue.
    #[arg(long, short)]
    out: PathBuf,
    /// Seconds a slide's size and modification time must stay unchanged before it is taken.
    #[arg(long, default_value_t = 60.0)]
    settle: f64,
    /// Seconds between inbox scans.
    #[arg(long, default_value_t = 30.0)]
    rescan: f64,
    /// Process what is in the inbox, then exit (for cron).
    #[arg(long)]
    once: bool,
    /// Attempts before a failing slide is quarantined.
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    /// Seconds before the first retry (doubled for each further one).
    #[arg(long, default_value_t = 30.0)]
    backoff: f64,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
    /// Model folder (default: models/he-cellularity).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Inference runtime.
    #[arg(long, value_enum, default_value_t = InferenceArg::Auto)]
    inference: InferenceArg,
    /// µm per pixel of level 0 for slides that lack it.
    #[arg(long)]
    mpp: Option<f64>,
    /// Fingerprint whole files (default: size + first and last MiB), so that a rewrite that
    /// changes only the middle of a file is also seen as a new version.
    #[arg(long)]
    hash_full: bool,
    #[command(flatten)]
    slide: SlideArgs,
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// The watch service's results folder.
    #[arg(long, short)]
    out: PathBuf,
    #[command(subcommand)]
    what: QueueWhat,
}

#[derive(Debug, Subcommand)]
enum QueueWhat {
    /// Every slide version with its state, attempts and last error.
    List,
    /// Put a failed or quarantined slide back in the queue with fresh attempts.
    Retry {
        /// Its id (from `list`).
        id: i64,
    },
    /// Remove a slide from the queue (it is queued again if still in the inbox).
    Forget {
        /// Its id (from `list`).
        id: i64,
    },
}

pub fn run(a: &WatchArgs) -> u8 {
    let inference = a.inference.choice();
    if !(a.settle >= 0.0 && a.rescan > 0.0 && a.backoff >= 0.0) || a.attempts == 0 {
        eprintln!("error: --settle and --backoff must be ≥ 0, --rescan > 0, --attempts ≥ 1");
        return EXIT_USAGE;
    }
    let analyze = AnalyzeConfig {
        out: a.out.clone(),
        model: a.model.clone(),
        inference,
        mpp_override: a.mpp,
        hash_full: a.hash_full,
        slide: a.slide.config_with_cache(32),
        ..AnalyzeConfig::default()
    };
    let mut cfg = WatchConfig::new(a.inbox.clone(), analyze);
    cfg.settle = Duration::from_secs_f64(a.settle);
    cfg.rescan = Duration::from_secs_f64(a.rescan);
    cfg.once = a.once;
    cfg.max_attempts = a.attempts;
    cfg.backoff = Duration::from_secs_f64(a.backoff);
    // SIGINT / SIGTERM: finish the current slide, then stop.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        eprintln!("error: cannot install the signal handler: {e}");
        return EXIT_ALL_FAILED;
    }
    let quiet = a.quiet;
    let result = watch::run(&cfg, &stop, |e| {
        let failed = matches!(e["event"].as_str(), Some("failed" | "quarantined"));
        if failed {
            eprintln!("{e}");
        } else if !quiet {
            println!("{e}");
        }
    });
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ALL_FAILED
        }
    }
}

pub fn run_queue(a: &QueueArgs) -> u8 {
    let dir = watch::state_dir(&a.out);
    if !dir.join("queue.sqlite").exists() {
        eprintln!("error: {}: no watch queue here", a.out.display());
        return EXIT_ALL_FAILED;
    }
    let q = match Queue::open(&dir) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ALL_FAILED;
        }
    };
    let done = match &a.what {
        QueueWhat::List => q.list().map(|rows| {
            println!(
                "{:>5}  {:<12} {:>8}  {:<40}  error",
                "id", "state", "attempts", "slide"
            );
            for r in rows {
                println!(
                    "{:>5}  {:<12} {:>8}  {:<40}  {}",
                    r.id,
                    r.state,
                    r.attempts,
                    r.path.display(),
                    r.last_error
                );
            }
            true
        }),
        QueueWhat::Retry { id } => q.retry(*id),
        QueueWhat::Forget { id } => q.forget(*id),
    };
    match done {
        Ok(true) => EXIT_OK,
        Ok(false) => {
            eprintln!("error: no such queue entry");
            EXIT_ALL_FAILED
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ALL_FAILED
        }
    }
}
