//! The `tessera` command: parses flags into library configuration and calls the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
