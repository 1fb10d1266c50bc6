//! `kiln seed`.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::SeedArgs;

pub(crate) fn run(args: SeedArgs) -> Result<ExitCode> {
    let _ = args;
    anyhow::bail!("kiln seed is not implemented yet")
}
