//! The `kiln` command line: clap types, dispatch to the libraries, progress
//! rendering and exit codes. No build logic lives here.

pub mod cli;
mod commands;
pub mod exit;
mod output;
mod progress;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use exit::Exit;

/// Parses argv and runs the command.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    progress::init_logging(progress::Verbosity::from_flags(cli.quiet, cli.verbose));
    if let Err(e) = kiln_exec::install_signal_handlers() {
        tracing::warn!("cannot handle signals: {e}");
    }
    let exit = match commands::run(cli) {
        Ok(exit) => exit,
        Err(e) => {
            let exit = exit::classify(&e);
            match exit {
                Exit::Interrupted => {
                    let _ = writeln!(std::io::stderr(), "kiln: interrupted; cleaned up");
                }
                Exit::Success => {} // stdout closed: the reader has what it wanted
                _ => report(&e),
            }
            exit
        }
    };
    exit.into()
}

/// Prints the error and its causes on stderr (without panicking if stderr
/// is closed too).
fn report(e: &anyhow::Error) {
    let mut err = std::io::stderr().lock();
    if let Some(spec_err) = e.downcast_ref::<kiln_spec::SpecError>() {
        let _ = writeln!(err, "{spec_err}");
    } else {
        let _ = writeln!(err, "error: {e}");
        for cause in e.chain().skip(1) {
            let _ = writeln!(err, "  caused by: {cause}");
        }
    }
}
