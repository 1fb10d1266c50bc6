//! Debugging a build: what a failed stage leaves to look at, the hooks the
//! user interface plugs in (`--step`, `--on-error=shell`), and the trees a
//! person can enter with `kiln shell`.
//!
//! A failed stage is never stored in the cache, so its tree can be entered
//! and changed freely while the build waits; `kiln shell` enters a stage's
//! cached tree through a throwaway overlay, so the cache never changes.
//! Non-goals: resuming a build from a changed tree (a change is made
//! permanent in the spec, and the cache makes the rebuild cheap).

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::chroot::StepFailed;
use crate::plan::{Plan, Stage, StageKind};

/// What `kiln build` does when a stage fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Clean up and report the error.
    #[default]
    Abort,
    /// Open a shell in the failed stage's tree ([`Debugger::stage_failed`]),
    /// then clean up.
    Shell,
    /// Keep the work directory and say how to reopen the failed tree.
    Keep,
}

/// Where a failed script is left in the failed tree, to read or rerun.
pub const FAILED_STEP_PATH: &str = "/tmp/kiln-failed-step.sh";

/// Hooks of the user interface into the build.
pub trait Debugger: Send + Sync {
    /// Before a stage runs (not for one the cache provides); an error stops
    /// the build there, cleanly.
    fn before_stage(&self, _stage: &Stage) -> Result<()> {
        Ok(())
    }

    /// A stage failed under `--on-error=shell`; its tree is still mounted
    /// at `failure.tree` until this returns.
    fn stage_failed(&self, _failure: &StageFailure<'_>) {}
}

impl fmt::Debug for dyn Debugger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Debugger")
    }
}

/// A stage that failed, with its tree.
pub struct StageFailure<'a> {
    pub stage: &'a Stage,
    /// The tree as the failure left it (writable; thrown away afterwards).
    pub tree: &'a Path,
    pub error: &'a anyhow::Error,
    /// The build log.
    pub log: &'a Path,
}

impl StageFailure<'_> {
    /// The script that failed in the tree, if the failure was one.
    pub fn step(&self) -> Option<&StepFailed> {
        self.error.chain().find_map(|c| c.downcast_ref::<StepFailed>())
    }

    fn exec(&self) -> Option<&kiln_exec::ExecError> {
        self.step().map(|s| &s.source).or_else(|| {
            self.error
                .chain()
                .find_map(|c| c.downcast_ref::<kiln_exec::ExecError>())
        })
    }

    /// What failed: the step's name, or the command line of the tool.
    pub fn command(&self) -> String {
        if let Some(step) = self.step() {
            return step.name.clone();
        }
        match self.exec() {
            Some(kiln_exec::ExecError::Failed { command, .. }) => command.clone(),
            _ => format!("stage {}", self.stage.id),
        }
    }

    /// How it ended, e.g. "exited with status 3".
    pub fn status(&self) -> String {
        match self.exec() {
            Some(kiln_exec::ExecError::Failed { status, .. }) => status.clone(),
            _ => format!("{:#}", self.error),
        }
    }

    /// The exit code, if the command exited with one.
    pub fn exit_code(&self) -> Option<i32> {
        self.status()
            .strip_prefix("exited with status ")
            .and_then(|c| c.trim().parse().ok())
    }

    /// The last lines of the failing command's output, or of the build log.
    pub fn tail(&self) -> String {
        if let Some(kiln_exec::ExecError::Failed { tail, .. }) = self.exec() {
            if !tail.trim().is_empty() {
                return tail.trim_end().to_owned();
            }
        }
        log_tail(self.log, 20)
    }
}

/// The last `lines` lines of a log file (empty if unreadable).
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The stages of `plan` whose tree a person can enter: `bootstrap`,
/// `customise` and each target's `<target>/finalise`.
pub fn tree_stages(plan: &Plan) -> Vec<&str> {
    plan.stages
        .iter()
        .filter(|s| {
            matches!(
                s.kind,
                StageKind::Bootstrap | StageKind::Import | StageKind::Customise | StageKind::Finalise
            )
        })
        .map(|s| s.id.as_str())
        .collect()
}

/// Checks that `stage` is a tree stage of `plan`; the error lists the
/// valid ones (and the likely one, for a bare target name).
pub fn check_tree_stage(plan: &Plan, stage: &str) -> std::result::Result<(), String> {
    let valid = tree_stages(plan);
    if valid.contains(&stage) {
        return Ok(());
    }
    let hint = if plan.target(stage).is_some() {
        format!(" (did you mean {stage}/finalise?)")
    } else if plan.stage(stage).is_some() {
        " (that stage makes an artifact, not a tree)".to_owned()
    } else {
        String::new()
    };
    Err(format!(
        "{} has no stage {stage:?} with a tree to enter{hint}; its stages with a tree: {}",
        plan.spec_path.display(),
        valid.join(", ")
    ))
}

/// Where a stage's layer lies in a work directory (kept by
/// `--on-error=keep`).
pub fn kept_layer(work: &Path, stage: &str) -> PathBuf {
    work.join("layers").join(stage.replace('/', "_")).join("layer")
}

/// Options of `kiln shell`.
#[derive(Debug, Clone)]
pub struct ShellOptions {
    /// The stage cache's root directory.
    pub cache_dir: PathBuf,
    /// Parent of the throwaway overlay (and of stages built for it).
    pub work_dir: PathBuf,
    /// Fail instead of building a stage the cache lacks.
    pub no_build: bool,
    /// A work directory kept by `--on-error=keep`: the stage's tree is its
    /// layer there, on the cached stages below it.
    pub kept: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_the_step_its_status_and_its_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("build.log");
        std::fs::write(&log, (1..=30).map(|i| format!("line {i}\n")).collect::<String>()).unwrap();
        let stage = Stage {
            id: "customise".into(),
            kind: StageKind::Customise,
            target: None,
            parents: vec![],
            actions: vec![],
            inputs: vec![],
            hash: crate::hash::Hasher::new("t").finish(),
        };
        let exec = kiln_exec::Cmd::new("sh")
            .args(["-c", "echo the-reason >&2; exit 3"])
            .run()
            .unwrap_err();
        let error = anyhow::Error::new(StepFailed {
            name: "[[run]] break".into(),
            script: "#!/bin/sh\nexit 3\n".into(),
            log: log.clone(),
            source: exec,
        })
        .context("stage customise failed");
        let f = StageFailure {
            stage: &stage,
            tree: tmp.path(),
            error: &error,
            log: &log,
        };
        // The error reads as the script's failure, not the chroot wrapper's.
        let shown = format!("{error:#}");
        assert!(
            shown.ends_with(": the script exited with status 3; last lines of its output:\nthe-reason"),
            "{shown}"
        );
        assert!(!shown.contains("sh -c"), "{shown}");
        assert_eq!(f.command(), "[[run]] break");
        assert_eq!(f.status(), "exited with status 3");
        assert_eq!(f.exit_code(), Some(3));
        assert_eq!(f.tail(), "the-reason");
        assert!(f.step().unwrap().script.contains("exit 3"));

        // Not a tool's failure: the status is the error, the tail the log's.
        let other = anyhow::anyhow!("disk full");
        let f = StageFailure { error: &other, ..f };
        assert_eq!(f.command(), "stage customise");
        assert_eq!(f.exit_code(), None);
        assert!(
            f.tail().ends_with("line 30") && f.tail().starts_with("line 11"),
            "{}",
            f.tail()
        );
    }
}
