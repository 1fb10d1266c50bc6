//! The `kiln` command line: clap types, dispatch to the libraries, progress
//! rendering and exit codes. No build logic lives here.

pub mod cli;
mod commands;
mod progress;

use std::process::ExitCode;

use clap::Parser;

/// Exit status for an interrupted run, as shells report SIGINT.
const EXIT_INTERRUPTED: u8 = 130;

/// Parses argv and runs the command.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    progress::init_logging(cli.verbose);
    if let Err(e) = kiln_exec::install_signal_handlers() {
        eprintln!("kiln: warning: cannot handle signals: {e}");
    }
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            if kiln_exec::interrupted()
                || e.chain().any(|c| {
                    c.downcast_ref::<kiln_exec::ExecError>()
                        .is_some_and(|x| x.is_interrupted())
                })
            {
                eprintln!("kiln: interrupted; cleaned up");
                return ExitCode::from(EXIT_INTERRUPTED);
            }
            if let Some(spec_err) = e.downcast_ref::<kiln_spec::SpecError>() {
                eprintln!("{spec_err}");
            } else {
                eprintln!("error: {e}");
                for cause in e.chain().skip(1) {
                    eprintln!("  caused by: {cause}");
                }
            }
            ExitCode::from(2)
        }
    }
}
