//! Exit statuses: every command ends in one of these, and `--help` and the
//! README list them. Scripts branch on them, so a number never changes
//! meaning: 1 is an answer ("the image fails a rule"), 2 means nothing ran,
//! 3 means something ran and broke.

use std::fmt;
use std::process::ExitCode;

/// How `kiln` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command did what was asked, and any verdict was positive.
    Success,
    /// The command ran and its answer is no: a `check` rule failed, a boot or
    /// replay FAILed, a build is not reproducible, `doctor` found something
    /// missing, `cache rm` matched nothing.
    Negative,
    /// Bad arguments or an invalid spec; nothing was run.
    Usage,
    /// A run failed: a tool exited non-zero, a file could not be written.
    Failed,
    /// Interrupted (SIGINT, SIGTERM, SIGHUP, or the reader of `--log-format
    /// json` went away); every guard cleaned up.
    Interrupted,
    /// The exit status of the command kiln ran for the user (`kiln shell
    /// SPEC -- COMMAND`), passed on; 128+N when a signal N killed it.
    Command(u8),
}

impl Exit {
    /// The status number.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Negative => 1,
            Exit::Usage => 2,
            Exit::Failed => 3,
            Exit::Interrupted => 130,
            Exit::Command(code) => code,
        }
    }

    /// Success for a positive verdict, [`Exit::Negative`] otherwise.
    pub fn verdict(passed: bool) -> Self {
        if passed {
            Exit::Success
        } else {
            Exit::Negative
        }
    }
}

impl Exit {
    /// The status of a command run for the user, passed on.
    pub fn of_command(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Command(code.clamp(0, 255) as u8),
            (None, Some(sig)) => Exit::Command(128u8.saturating_add(sig.clamp(0, 127) as u8)),
            _ => Exit::Failed,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e.code())
    }
}

/// The table `--help` shows; a test holds it to [`Exit::code`].
pub(crate) const HELP: &str = "Exit status:
  0    success
  1    a negative verdict: a check or verify rule failed, boot or replay FAIL, not reproducible,
       doctor found something missing, cache rm matched nothing
  2    usage or spec error; nothing was run
  3    a run failed
  130  interrupted (Ctrl-C, SIGTERM, or the reader of --log-format json went away)
  kiln shell SPEC -- COMMAND and kiln ssh IMAGE -- COMMAND exit with COMMAND's status
       (128+N if signal N killed it).";

/// An error found before anything ran (exit 2): a bad argument, an input
/// file that does not exist or does not make sense. It prints as the error
/// it wraps.
#[derive(Debug)]
pub(crate) struct Usage(anyhow::Error);

impl Usage {
    pub(crate) fn msg(message: impl fmt::Display + fmt::Debug + Send + Sync + 'static) -> Self {
        Usage(anyhow::Error::msg(message))
    }
}

/// Marks `e` as a usage error.
pub(crate) fn usage(e: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(Usage(e.into()))
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Usage {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Stdout was closed under us (`kiln plan SPEC | head -1`). Not a failure
/// of the command: `main` exits quietly with status 0.
#[derive(Debug)]
pub(crate) struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Which status an error ends the command with.
pub(crate) fn classify(e: &anyhow::Error) -> Exit {
    if kiln_exec::interrupted()
        || e.chain().any(|c| {
            c.downcast_ref::<kiln_exec::ExecError>()
                .is_some_and(|x| x.is_interrupted())
        })
    {
        Exit::Interrupted
    } else if e.downcast_ref::<StdoutClosed>().is_some() {
        Exit::Success
    } else if e.downcast_ref::<Usage>().is_some() || e.downcast_ref::<kiln_spec::SpecError>().is_some() {
        Exit::Usage
    } else {
        Exit::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn help_table_matches_the_codes() {
        for exit in [
            Exit::Success,
            Exit::Negative,
            Exit::Usage,
            Exit::Failed,
            Exit::Interrupted,
        ] {
            let code = exit.code().to_string();
            assert!(
                HELP.lines().any(|l| l.trim_start().starts_with(&format!("{code} "))),
                "{exit:?} ({code}) is not in the help table"
            );
        }
    }

    #[test]
    fn errors_map_to_statuses() {
        let io = || anyhow::Error::new(std::io::Error::other("disk full"));
        assert_eq!(classify(&io()), Exit::Failed);
        assert_eq!(classify(&io().context("writing out/x.qcow2")), Exit::Failed);
        assert_eq!(classify(&Usage::msg("no keys").into()), Exit::Usage);
        let wrapped = usage(io().context("reading user data")).context("outer");
        assert_eq!(classify(&wrapped), Exit::Usage);
        // A usage error prints as the error it wraps, causes and all.
        let printed: Vec<String> = wrapped.chain().map(|c| c.to_string()).collect();
        assert_eq!(printed, ["outer", "reading user data", "disk full"]);
        let spec = kiln_spec::SpecError::Read {
            path: "x.toml".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(classify(&anyhow::Error::new(spec)), Exit::Usage);
        assert_eq!(
            classify(&Err::<(), _>(StdoutClosed).context("printing the plan").unwrap_err()),
            Exit::Success
        );
        let interrupted = kiln_exec::ExecError::Interrupted {
            command: "mmdebstrap".into(),
        };
        assert_eq!(
            classify(&anyhow::Error::new(interrupted).context("stage bootstrap")),
            Exit::Interrupted
        );
    }
}
