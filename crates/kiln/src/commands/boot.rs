//! `kiln boot`.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::BootArgs;

pub(crate) fn run(args: BootArgs) -> Result<ExitCode> {
    let _ = args;
    anyhow::bail!("kiln boot is not implemented yet")
}
