//! `tessera region SLIDE --x X --y Y --width W --height H [--level L] -o OUT.png`.

use std::path::PathBuf;

use clap::Args;
use tessera::{output, Level0Px, Size, Slide};

use super::{SlideArgs, EXIT_ALL_FAILED, EXIT_OK};

#[derive(Debug, Args)]
pub struct RegionArgs {
    /// The slide file (or DICOM series folder).
    #[arg(value_name = "SLIDE")]
    slide_path: PathBuf,
    /// Left edge, in level-0 pixels (may be negative: outside is white).
    #[arg(long, allow_negative_numbers = true)]
    x: i64,
    /// Top edge, in level-0 pixels.
    #[arg(long, allow_negative_numbers = true)]
    y: i64,
    /// Width in pixels of the chosen level.
    #[arg(long)]
    width: u64,
    /// Height in pixels of the chosen level.
    #[arg(long)]
    height: u64,
    /// Pyramid level (0 = full resolution).
    #[arg(long, default_value_t = 0)]
    level: usize,
    /// Output PNG file.
    #[arg(short, long, value_name = "OUT.png")]
    output: PathBuf,
    #[command(flatten)]
    slide: SlideArgs,
}

pub fn run(args: &RegionArgs) -> u8 {
    let result = (|| -> tessera::Result<()> {
        let slide = Slide::open_with(&args.slide_path, &args.slide.config())?;
        let image = slide.read_region(
            Level0Px::new(args.x, args.y),
            args.level,
            Size::new(args.width, args.height),
        )?;
        output::write_png(&args.output, &image)
    })();
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ALL_FAILED
        }
    }
}
