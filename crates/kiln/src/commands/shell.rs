//! `kiln shell` and the terminal side of `kiln build --step` and
//! `--on-error=shell`: prompts and shells, with the spinners off the screen.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use kiln_build::chroot::{run_session, Session};
use kiln_build::debug::FAILED_STEP_PATH;
use kiln_build::{Debugger, Stage, StageFailure};

use crate::cli::ShellArgs;
use crate::exit::{usage, Exit, Usage};
use crate::progress::{self, Verbosity};

pub(crate) fn run(args: ShellArgs) -> Result<Exit> {
    let loaded = kiln_spec::load(&args.spec)?;
    let plan = kiln_build::plan(&loaded, kiln_build::tool_versions()).map_err(usage)?;
    kiln_build::debug::check_tree_stage(&plan, &args.stage).map_err(Usage::msg)?;
    if let Some(kept) = &args.kept {
        if !kept.is_dir() {
            return Err(Usage::msg(format!("--kept {}: no such directory", kept.display())).into());
        }
    }
    let opts = kiln_build::ShellOptions {
        cache_dir: args.cache_dir.clone().unwrap_or_else(kiln_build::cache::default_dir),
        work_dir: args.work_dir.clone().unwrap_or_else(std::env::temp_dir),
        no_build: args.no_build,
        kept: args.kept.clone(),
    };
    let reporter: Arc<dyn kiln_build::Reporter> = if progress::verbosity() == Verbosity::Quiet {
        Arc::new(progress::Silent)
    } else {
        Arc::new(progress::Bars::new(&plan, false))
    };
    let tree = kiln_build::stage_tree(&plan, &args.stage, &opts, reporter)?;
    let what = if args.command.is_empty() { "shell" } else { "command" };
    let from = if args.kept.is_some() {
        "the kept work directory"
    } else {
        "the stage cache"
    };
    tracing::info!(
        "kiln: {what} in the tree of stage {} of {} (from {from}).\n\
         kiln: changes go to a throwaway overlay and are lost when the {what} ends; the stage cache is not changed.\n\
         kiln: to make a change permanent, put it in the spec: [[files]] for a file, [[run]] for a command, \
         [packages] install for a package.",
        args.stage,
        args.spec.display()
    );
    let shell = std::env::var("KILN_SHELL").ok();
    let session = Session {
        command: &args.command,
        shell: shell.as_deref(),
        stage: &args.stage,
        env: Vec::new(),
    };
    let status = run_session(tree.path(), &session)?;
    drop(tree);
    Ok(Exit::of_command(status))
}

/// The terminal's side of a build's debugging: `--step` prompts and the
/// `--on-error=shell` shell. One at a time, whichever thread asks.
pub(crate) struct Console {
    step: bool,
    /// `--step`: whether the person asked to run the rest without pausing.
    run_all: Mutex<bool>,
}

impl Console {
    pub(crate) fn new(step: bool) -> Self {
        Console {
            step,
            run_all: Mutex::new(false),
        }
    }
}

fn say(line: &str) {
    // Not eprintln!: a closed stderr must not panic the build.
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn indented(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect::<String>()
}

impl Debugger for Console {
    fn before_stage(&self, stage: &Stage) -> Result<()> {
        if !self.step {
            return Ok(());
        }
        let mut run_all = self.run_all.lock().unwrap_or_else(|e| e.into_inner());
        if *run_all {
            return Ok(());
        }
        progress::off_screen(|| loop {
            let _ = write!(
                std::io::stderr(),
                "kiln: --step: next stage {} ({}). Enter runs it, c runs the rest without pausing, q stops the build: ",
                stage.id,
                stage.kind.title()
            );
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            let read = std::io::stdin().lock().read_line(&mut line)?;
            if !std::io::stdin().is_terminal() {
                // Nobody typed a newline after the prompt: end its line.
                say("");
            }
            if kiln_exec::interrupted() {
                kiln_exec::check_interrupted()?;
            }
            if read == 0 {
                say("\nkiln: --step: stdin is closed; running the remaining stages without pausing");
                *run_all = true;
                return Ok(());
            }
            match line.trim() {
                "" => return Ok(()),
                "c" => {
                    *run_all = true;
                    return Ok(());
                }
                "q" => bail!("stopped by --step before stage {}", stage.id),
                other => say(&format!("kiln: --step: {other:?} is not an answer (Enter, c or q)")),
            }
        })
    }

    fn stage_failed(&self, failure: &StageFailure<'_>) {
        // One shell at a time when targets fail together.
        let _one = self.run_all.lock().unwrap_or_else(|e| e.into_inner());
        progress::off_screen(|| {
            let id = &failure.stage.id;
            say(&format!(
                "\nkiln: stage {id} failed: {} {}",
                failure.command(),
                failure.status()
            ));
            if let Some(step) = failure.step() {
                say(&format!(
                    "kiln: the script that failed (in the tree at {FAILED_STEP_PATH}):\n{}",
                    indented(&step.script).trim_end()
                ));
            }
            let tail = failure.tail();
            if !tail.trim().is_empty() {
                say(&format!(
                    "kiln: the last lines of its output:\n{}",
                    indented(&tail).trim_end()
                ));
            }
            say(&format!(
                "kiln: opening a shell in the tree of stage {id} as the failure left it \
                 (in {}); exit the shell to clean up and end the build. Nothing changed there is kept.",
                failure.tree.display()
            ));
            let shell = std::env::var("KILN_SHELL").ok();
            let status = failure
                .exit_code()
                .map(|c| c.to_string())
                .unwrap_or_else(|| failure.status());
            let session = Session {
                command: &[],
                shell: shell.as_deref(),
                stage: id,
                env: vec![
                    ("KILN_FAILED_STEP".to_owned(), failure.command()),
                    ("KILN_FAILED_STATUS".to_owned(), status),
                ],
            };
            match run_session(failure.tree, &session) {
                Ok(status) => say(&format!("kiln: the shell ended ({status}); cleaning up")),
                Err(e) => say(&format!("kiln: cannot open a shell in the failed tree: {e:#}")),
            }
        });
    }
}
