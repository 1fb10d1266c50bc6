//! `kiln completion SHELL` and `kiln man`: shell completions and manual
//! pages generated from the same clap types that parse argv, so they cannot
//! drift from the command line.

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::{Cli, CompletionArgs, ManArgs};
use crate::exit::Exit;
use crate::output::write_stdout_bytes;

pub(crate) fn completion(args: CompletionArgs) -> Result<Exit> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "kiln", &mut script);
    write_stdout_bytes(&script)?;
    Ok(Exit::Success)
}

pub(crate) fn man(args: ManArgs) -> Result<Exit> {
    let cmd = Cli::command();
    match args.out {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("writing manual pages to {}", dir.display()))?;
            tracing::info!("wrote kiln.1 and a page per subcommand to {}", dir.display());
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            write_stdout_bytes(&page)?;
        }
    }
    Ok(Exit::Success)
}
