//! Running commands inside the image tree.
//!
//! Each call runs `unshare --mount --propagation private --pid --fork
//! --kill-child` around a small shell wrapper that mounts /proc, /sys, /dev,
//! a tmpfs /run and the host's resolv.conf into the tree, then `chroot`s.
//! The mounts live in a private mount namespace, and the step's processes
//! in a PID namespace, that die with the wrapper, so a failure, Ctrl-C or
//! even SIGKILL of kiln leaves no mount or process behind: nothing needs to
//! be unmounted or reaped by hand. Services are kept from starting by a policy-rc.d that is
//! removed again afterwards. [`run_session`] does the same for a person
//! (`kiln shell`, `kiln build --on-error=shell`): a shell or a command on
//! kiln's terminal, in private PID, UTS and IPC namespaces as well.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_exec::Cmd;

/// The mounts that build steps and sessions both have in the tree
/// (`$root`): /proc, /sys, /dev, a tmpfs /run, and the host's resolv.conf.
/// A macro, so that the wrappers below are single literals.
macro_rules! tree_mounts {
    () => {
        r#"mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/run"
if [ -f /etc/resolv.conf ]; then
    if [ -L "$root/etc/resolv.conf" ] || [ ! -e "$root/etc/resolv.conf" ]; then
        rm -f "$root/etc/resolv.conf"
        : > "$root/etc/resolv.conf"
    fi
    mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
fi
"#
    };
}

/// The wrapper run by `sh` inside the new mount namespace. `$1` is the tree,
/// `$2` the script path inside the tree.
const WRAPPER: &str = concat!(
    r#"set -eu
root=$1
script=$2
"#,
    tree_mounts!(),
    r#"# `.` of a missing file ends a non-interactive POSIX shell before `|| true`
# can help: a tree without /etc/profile (a minimal one) must still run.
# Not exec'd: this shell stays the PID namespace's first process, outside
# the tree, so that the step sees itself in a chroot (ischroot) as it would
# without the namespace.
chroot "$root" /bin/sh -c 'if [ -r /etc/profile ]; then . /etc/profile >/dev/null 2>&1 || true; fi; exec "$0"' "$script"
"#
);

const POLICY_RC_D: &str =
    "#!/bin/sh\n# Written by kiln during the build: no service starts in the build chroot.\nexit 101\n";

/// A script to run in the tree.
pub struct ChrootScript<'a> {
    /// Shown in progress and errors, e.g. `run "harden"`.
    pub name: &'a str,
    /// The script text; one without a `#!` line runs with `/bin/sh -e`.
    pub body: &'a str,
    /// Exported as `SOURCE_DATE_EPOCH`, which dpkg, mkinitramfs, shadow
    /// and friends use instead of the clock (reproducible builds).
    pub source_date_epoch: Option<u64>,
}

/// Runs `script` inside `tree`, streaming its output to `on_line` and
/// appending it to `log`.
pub fn run_in_tree(
    tree: &Path,
    script: &ChrootScript<'_>,
    log: &Path,
    on_line: impl FnMut(&str) + Send + 'static,
) -> Result<()> {
    let guard = TreeSetup::prepare(tree)?;
    let inside = "/tmp/kiln-step.sh";
    let body = if script.body.starts_with("#!") {
        script.body.to_owned()
    } else {
        format!("#!/bin/sh\nset -e\n{}", script.body)
    };
    write_mode(&tree.join(inside.trim_start_matches('/')), &body, 0o755)?;
    let mut cmd = Cmd::in_mount_namespace("sh")
        .args(["-c", WRAPPER, "kiln-chroot"])
        .arg(tree)
        .arg(inside)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("DEBCONF_NONINTERACTIVE_SEEN", "true")
        .env("LC_ALL", "C.UTF-8")
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .log_to(log)
        .on_line(on_line);
    if let Some(epoch) = script.source_date_epoch {
        cmd = cmd.env("SOURCE_DATE_EPOCH", epoch.to_string());
    }
    let result = cmd.run();
    let _ = std::fs::remove_file(tree.join(inside.trim_start_matches('/')));
    drop(guard);
    result.map_err(|source| StepFailed {
        name: script.name.to_owned(),
        script: body,
        log: log.to_owned(),
        source,
    })?;
    Ok(())
}

/// A script that failed in the tree: which one, its text and how it
/// ended, for `kiln build --on-error` to show before it opens a shell.
/// It reads as the script's failure: the command line that ran it (the
/// chroot wrapper) says nothing the step's name does not.
#[derive(Debug)]
pub struct StepFailed {
    pub name: String,
    /// The script as it ran (with its `#!` line).
    pub script: String,
    pub log: PathBuf,
    pub source: kiln_exec::ExecError,
}

impl std::fmt::Display for StepFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "running {} in the image tree (full log: {})",
            self.name,
            self.log.display()
        )?;
        match &self.source {
            kiln_exec::ExecError::Failed { status, tail, .. } => {
                write!(f, ": the script {status}")?;
                if !tail.trim().is_empty() {
                    write!(f, "; last lines of its output:\n{}", tail.trim_end())?;
                }
                Ok(())
            }
            other => write!(f, ": {other}"),
        }
    }
}

impl std::error::Error for StepFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The failure is in the message already; an interruption stays
        // visible to those who look for it down the chain.
        match &self.source {
            kiln_exec::ExecError::Failed { .. } => None,
            other => Some(other),
        }
    }
}

/// The wrapper of a session for a person (`kiln shell`, `--on-error=shell`),
/// run by `sh` as PID 1 of new mount, PID, UTS and IPC namespaces: the
/// same mounts as a build step's, the host shell script (if any) bound at
/// /run/kiln/shell, then the command in a chroot. Not `exec`: when PID 1
/// exits, the kernel kills whatever the session left running, and PID 1
/// would ignore the Ctrl-C meant for the command. `$1` is the tree, the
/// rest the command.
const SESSION_WRAPPER: &str = concat!(
    r#"set -eu
root=$1
shift
"#,
    tree_mounts!(),
    r#"if [ -n "${KILN_HOST_SHELL:-}" ]; then
    mkdir -p "$root/run/kiln"
    : > "$root/run/kiln/shell"
    mount --bind "$KILN_HOST_SHELL" "$root/run/kiln/shell"
fi
unset KILN_HOST_SHELL
# Caught, not ignored: a Ctrl-C for the session must not end PID 1 (and
# with it the session) once the command returns, and the command must
# still get the signal's default action.
trap : INT QUIT
set +e
chroot "$root" "$@"
status=$?
exit "$status"
"#
);

/// Where a host script named by `KILN_SHELL` appears inside the tree.
pub const HOST_SHELL_PATH: &str = "/run/kiln/shell";

/// A session in a tree for a person: a shell, or one command.
#[derive(Debug, Clone, Default)]
pub struct Session<'a> {
    /// The program and its arguments (looked up on the tree's `PATH`);
    /// empty: the shell.
    pub command: &'a [String],
    /// The shell for an empty `command` (`$KILN_SHELL`): a path in the
    /// tree, a program name on the tree's `PATH`, or a script on the host
    /// (bound into the tree at [`HOST_SHELL_PATH`]); default `/bin/sh`.
    pub shell: Option<&'a str>,
    /// The stage whose tree this is: in the prompt and `$KILN_STAGE`.
    pub stage: &'a str,
    /// More environment for the session.
    pub env: Vec<(String, String)>,
}

/// Runs `session` in `tree` attached to kiln's terminal (or whatever its
/// stdin and stdout are), with /proc, /sys, /dev, /run and resolv.conf as
/// a build step has them, in private mount, PID, UTS and IPC namespaces;
/// services are kept from starting as in the build. Returns the exit
/// status of the command or shell. Nothing it started outlives it.
pub fn run_session(tree: &Path, session: &Session<'_>) -> Result<std::process::ExitStatus> {
    if !tree.join("bin/sh").exists() && !tree.join("usr/bin/sh").exists() {
        anyhow::bail!(
            "{} has no /bin/sh: the tree is not complete enough to enter (did its bootstrap fail early?)",
            tree.display()
        );
    }
    let mut host_shell: Option<PathBuf> = None;
    let command: Vec<String> = if session.command.is_empty() {
        let shell = session.shell.filter(|s| !s.trim().is_empty()).unwrap_or("/bin/sh");
        let mut command = vec![resolve_shell(tree, shell, &mut host_shell)?];
        // dash's job control gives the terminal back, on exit, to the
        // process group it found, which lies outside the PID namespace:
        // that fails and turns every exit status into 2. Without job
        // control it never takes the terminal. bash copes, and keeps it.
        if matches!(shell.rsplit('/').next(), Some("sh" | "dash")) {
            command.push("+m".to_owned());
        }
        command
    } else {
        session.command.to_vec()
    };
    let guard = TreeSetup::prepare(tree)?;
    let mut cmd = Cmd::new("unshare")
        .args([
            "--mount",
            "--uts",
            "--ipc",
            "--pid",
            "--fork",
            "--kill-child",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            SESSION_WRAPPER,
            "kiln-session",
        ])
        .arg(tree)
        .args(&command)
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .env("LC_ALL", "C.UTF-8")
        .env("KILN_STAGE", session.stage)
        .env("PS1", format!("(kiln {}) # ", session.stage))
        // Debian's bash.bashrc shows it in the prompt.
        .env("debian_chroot", format!("kiln {}", session.stage))
        .env("KILN_HOST_SHELL", host_shell.as_deref().unwrap_or(Path::new("")));
    for (k, v) in &session.env {
        cmd = cmd.env(k, v);
    }
    let status = cmd
        .run_interactive()
        .with_context(|| format!("running {} in {}", command.join(" "), tree.display()));
    drop(guard);
    status
}

/// The program that runs as the shell: `shell` itself when the tree has it
/// (or it is a bare name for the tree's `PATH`), else a host script bound
/// into the tree.
fn resolve_shell(tree: &Path, shell: &str, host_shell: &mut Option<PathBuf>) -> Result<String> {
    if !shell.contains('/') {
        return Ok(shell.to_owned());
    }
    if shell.starts_with('/') && tree.join(shell.trim_start_matches('/')).exists() {
        return Ok(shell.to_owned());
    }
    let on_host = Path::new(shell);
    if on_host.is_file() {
        *host_shell = Some(std::fs::canonicalize(on_host).with_context(|| format!("resolving {shell}"))?);
        return Ok(HOST_SHELL_PATH.to_owned());
    }
    anyhow::bail!(
        "KILN_SHELL={shell}: no such file in the image tree nor on the host; \
         name a shell of the image (/bin/bash) or a script on the host"
    )
}

/// Host-side preparation that the namespace cannot undo by itself: the
/// policy-rc.d file. Removed on drop.
struct TreeSetup {
    policy: std::path::PathBuf,
    created: bool,
}

impl TreeSetup {
    fn prepare(tree: &Path) -> Result<Self> {
        let policy = tree.join("usr/sbin/policy-rc.d");
        let created = !policy.exists();
        if created {
            write_mode(&policy, POLICY_RC_D, 0o755)?;
        }
        Ok(TreeSetup { policy, created })
    }
}

impl Drop for TreeSetup {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_file(&self.policy);
        }
    }
}

/// Writes `text` to `path` (creating its directories) with permissions `mode`.
pub fn write_mode(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(())
}
