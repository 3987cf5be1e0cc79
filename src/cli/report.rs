//! `tessera report FOLDER...`: rebuild reports from finished outputs, without the slide or
//! the model.

use std::path::PathBuf;

use clap::Args;

use super::{batch_exit_code, SlideArgs};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A slide's output folder (OUT/<slide>, holding result.json) to rebuild its report.html,
    /// or a cohort output folder (OUT, holding summary.json) to rebuild index.html.
    #[arg(required = true, value_name = "FOLDER")]
    folders: Vec<PathBuf>,
    /// Add the slide's label and macro images (patient identifiers), read from the slide named
    /// in result.json when the folder does not have them yet.
    #[arg(long)]
    include_label: bool,
    /// Also print each slide report to report.pdf with headless Chromium.
    #[arg(long)]
    pdf: bool,
    #[command(flatten)]
    slide: SlideArgs,
}

pub fn run(args: &ReportArgs) -> u8 {
    if args.pdf && !super::chromium_found(&args.folders[0].join("report.html")) {
        return super::EXIT_USAGE;
    }
    let mut ok = 0;
    for dir in &args.folders {
        match one(dir, args) {
            Ok(written) => {
                ok += 1;
                println!("{}", written.display());
            }
            Err(e) => eprintln!("error: {e}"),
        }
    }
    batch_exit_code(ok, args.folders.len())
}

fn one(dir: &std::path::Path, args: &ReportArgs) -> tessera::Result<PathBuf> {
    if !dir.join("result.json").exists() && dir.join("summary.json").exists() {
        tessera::cohort::merge_summaries(dir)?;
        return Ok(dir.join("index.html"));
    }
    if args.include_label {
        tessera::report::add_identifier_images(dir, &args.slide.config())?;
    }
    tessera::report::write_slide_report(dir)?;
    if args.pdf {
        tessera::report::pdf::print_to_pdf(&dir.join("report.html"), &dir.join("report.pdf"))?;
    }
    Ok(dir.join("report.html"))
}
