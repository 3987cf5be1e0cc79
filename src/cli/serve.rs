//! `tessera serve RESULTS`: the teaching viewer.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use tessera::serve::{self, ServeConfig};

use super::{SlideArgs, EXIT_ALL_FAILED, EXIT_OK, EXIT_USAGE};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Results folder of `tessera analyze` or `tessera watch` (or one slide's output folder).
    #[arg(value_name = "RESULTS")]
    results: PathBuf,
    /// Folder the slide files may be read from (searched recursively; repeat for several).
    /// Only slides inside these folders are read (without any, the viewer shows no slide).
    #[arg(long, value_name = "DIR")]
    slides: Vec<PathBuf>,
    /// Address to listen on. Anything but 127.0.0.1 or [::1] requires a token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// Access token (at least 16 characters) checked on every request; generated and printed
    /// when the address is not loopback and none is given.
    #[arg(long, env = "TESSERA_SERVE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Serve slide label images (they often carry patient identifiers).
    #[arg(long)]
    allow_label: bool,
    /// JPEG quality of the slide tiles.
    #[arg(long, default_value_t = 75, value_parser = clap::value_parser!(u8).range(1..=100))]
    jpeg_quality: u8,
    /// Memory for encoded tiles, in MiB.
    #[arg(long, default_value_t = 256)]
    tile_cache_mib: u64,
    /// The trainee's name for quiz answers (the page can also ask for it). Single-user mode
    /// only: with accounts, answers belong to the logged-in account.
    #[arg(long)]
    trainee: Option<String>,
    /// The viewer's database of accounts and answers (default RESULTS/.tessera/viewer.sqlite;
    /// `tessera users` adds accounts to it).
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
    /// Mark the session cookie Secure: for a viewer served as https by a TLS proxy.
    #[arg(long)]
    secure_cookies: bool,
    /// How long a login lasts, in hours.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=720))]
    session_hours: u32,
    #[command(flatten)]
    slide: SlideArgs,
}

pub fn run(a: &ServeArgs) -> u8 {
    if let Some(t) = &a.trainee {
        if !serve::quiz::trainee_ok(t) {
            eprintln!("error: --trainee: 1–64 letters, digits, spaces, '.', '_' or '-'");
            return EXIT_USAGE;
        }
    }
    let mut cfg = ServeConfig::new(a.results.clone());
    cfg.slides = a.slides.clone();
    cfg.bind = a.bind;
    cfg.token = a.token.clone();
    cfg.allow_label = a.allow_label;
    cfg.jpeg_quality = a.jpeg_quality;
    cfg.cache_bytes = a.tile_cache_mib.saturating_mul(1 << 20);
    cfg.trainee = a.trainee.clone();
    cfg.db = a.db.clone();
    cfg.secure_cookies = a.secure_cookies;
    cfg.session_seconds = i64::from(a.session_hours) * 3600;
    cfg.slide = a.slide.config();
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    };
    let result = serve::run(
        cfg,
        |addr, token, mode| {
            match token {
                Some(t) => println!("Tessera viewer on http://{addr}/?token={t}"),
                None => println!("Tessera viewer on http://{addr}/"),
            }
            match mode {
                serve::Mode::Accounts(n) => eprintln!(
                    "accounts mode: {n} account{} in the viewer database; every page needs a login",
                    if n == 1 { "" } else { "s" }
                ),
                serve::Mode::Token => {
                    eprintln!("single-user mode: every request needs the token")
                }
                serve::Mode::Open => eprintln!(
                    "single-user mode on loopback (add accounts with `tessera users` for a class)"
                ),
            }
            use std::io::Write;
            let _ = std::io::stdout().flush();
        },
        shutdown,
    );
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ALL_FAILED
        }
    }
}
