//! `tessera info SLIDE... [--json]`.

use std::path::PathBuf;

use clap::Args;
use tessera::info::{describe_with, render_text, InfoEntry, InfoReport, SCHEMA_VERSION};

use super::{batch_exit_code, SlideArgs};

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Slide files, or folders holding one DICOM series each.
    #[arg(required = true, value_name = "SLIDE")]
    slides: Vec<PathBuf>,
    /// Print one JSON document (with a `schema_version`) instead of text.
    #[arg(long)]
    json: bool,
    /// Show patient identifiers among the properties (DICOM patient, accession, physician,
    /// institution, specimen and date attributes; Aperio's file name). Redacted by default.
    #[arg(long)]
    show_identifiers: bool,
    #[command(flatten)]
    slide: SlideArgs,
}

pub fn run(args: &InfoArgs) -> u8 {
    let config = args.slide.config();
    let mut entries = Vec::with_capacity(args.slides.len());
    let mut ok = 0;
    for (i, path) in args.slides.iter().enumerate() {
        let result = describe_with(path, &config, args.show_identifiers);
        if !args.json {
            match &result {
                Ok(info) => {
                    if i > 0 {
                        println!();
                    }
                    print!("{}", render_text(info));
                }
                Err(e) => eprintln!("error: {e}"),
            }
        }
        ok += usize::from(result.is_ok());
        entries.push(InfoEntry::from_result(path, result));
    }
    if args.json {
        let report = InfoReport {
            schema_version: SCHEMA_VERSION,
            tessera_version: tessera::VERSION,
            slides: entries,
        };
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: cannot serialise the report: {e}");
                return super::EXIT_ALL_FAILED;
            }
        }
    }
    batch_exit_code(ok, args.slides.len())
}
