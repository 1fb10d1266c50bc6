//! [`Cmd`]: a builder around `std::process::Command` that every external
//! program in kiln goes through.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::interrupt::interrupted;
use crate::tools::{find_tool, which};

/// How many stderr lines an error quotes.
const TAIL_LINES: usize = 40;
/// How long a child gets between SIGTERM and SIGKILL after an interruption.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// What went wrong running an external program.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    #[error("`{tool}` is not installed (Debian package: {package}); run `kiln doctor` to see every missing tool")]
    NotFound { tool: String, package: String },
    #[error("`{tool}` is not in kiln's tool registry (kiln_exec::TOOLS); add it there so `kiln doctor` lists it")]
    Unregistered { tool: String },
    #[error("starting `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` {status}{}", tail_block(.tail))]
    Failed {
        command: String,
        status: String,
        tail: String,
    },
    #[error("interrupted{}", if .command.is_empty() { String::new() } else { format!(" while running `{}`", .command) })]
    Interrupted { command: String },
    #[error("reading output of `{command}`")]
    Io {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

impl ExecError {
    /// Whether this error is an interruption (exit code 130 at the top).
    pub fn is_interrupted(&self) -> bool {
        matches!(self, ExecError::Interrupted { .. })
    }
}

fn tail_block(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("; last lines of its output:\n{}", tail.trim_end())
    }
}

/// The captured result of a successful run.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    /// The last lines of stderr (and of stdout when it was streamed).
    pub tail: String,
}

impl Output {
    pub fn stdout_string(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

type LineSink = Box<dyn FnMut(&str) + Send>;

/// A command to run. Build it, then call [`Cmd::run`] or one of its variants.
pub struct Cmd {
    program: String,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    log: Option<PathBuf>,
    on_line: Option<LineSink>,
    capture_stdout: bool,
}

impl Cmd {
    /// A command running `program`, which must be listed in [`crate::TOOLS`].
    pub fn new(program: &str) -> Self {
        Cmd {
            program: program.to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            cwd: None,
            stdin: None,
            log: None,
            on_line: None,
            capture_stdout: true,
        }
    }

    /// A command running `program` (then the added arguments) in a new
    /// private mount namespace and a new PID namespace (`unshare --mount
    /// --propagation private --pid --fork --kill-child`): every mount it
    /// makes vanishes with it, and so does every process it starts, even if
    /// kiln is killed (SIGKILL reaches `unshare` through
    /// `PR_SET_PDEATHSIG`, `--kill-child` passes it to `program`, and the
    /// kernel kills what is left of a PID namespace whose first process
    /// died), so nothing needs unmounting or reaping by hand. `program` is
    /// the namespace's PID 1: it ignores SIGTERM unless it handles it, but
    /// the rest of its process group does not.
    pub fn in_mount_namespace(program: &str) -> Self {
        Cmd::new("unshare").args([
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--kill-child",
            "--",
            program,
        ])
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Feeds these bytes on stdin (otherwise stdin is null).
    pub fn stdin_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Appends everything the child prints (stdout and stderr) to this file.
    pub fn log_to(mut self, path: impl AsRef<Path>) -> Self {
        self.log = Some(path.as_ref().to_owned());
        self
    }

    /// Streams stdout and stderr line by line to `sink` instead of capturing
    /// stdout; the error still quotes the tail of both.
    pub fn on_line(mut self, sink: impl FnMut(&str) + Send + 'static) -> Self {
        self.on_line = Some(Box::new(sink));
        self.capture_stdout = false;
        self
    }

    /// The command line, shell-quoted, as errors and logs show it.
    pub fn display(&self) -> String {
        std::iter::once(OsStr::new(&self.program))
            .chain(self.args.iter().map(|a| a.as_os_str()))
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs to completion; a non-zero exit is an error.
    pub fn run(self) -> Result<Output, ExecError> {
        let (status, output, command) = self.run_inner()?;
        if status.success() {
            Ok(output)
        } else {
            Err(ExecError::Failed {
                command,
                status: describe(status),
                tail: output.tail,
            })
        }
    }

    /// Runs to completion and returns stdout as a string, trimmed of the
    /// final newline.
    pub fn run_string(self) -> Result<String, ExecError> {
        let out = self.run()?;
        let mut s = out.stdout_string();
        if s.ends_with('\n') {
            s.pop();
        }
        Ok(s)
    }

    /// Runs to completion and returns the exit status whatever it is (for
    /// tools whose non-zero exit is an answer, like `e2fsck -n`).
    pub fn run_status(self) -> Result<(ExitStatus, Output), ExecError> {
        let (status, output, _) = self.run_inner()?;
        Ok((status, output))
    }

    /// Runs to completion, streaming stdout into `sink` as it comes (for
    /// output too large to hold, like an archive on its way to a
    /// compressor); a non-zero exit is an error. When `sink` fails, the
    /// child's stdout is closed, so a writer child stops on a broken pipe,
    /// and the sink's error is returned.
    pub fn run_into(self, sink: &mut (dyn Write + Send)) -> Result<Output, ExecError> {
        let (status, output, command) = self.run_inner_with(Some(sink))?;
        if status.success() {
            Ok(output)
        } else {
            Err(ExecError::Failed {
                command,
                status: describe(status),
                tail: output.tail,
            })
        }
    }

    fn run_inner(self) -> Result<(ExitStatus, Output, String), ExecError> {
        self.run_inner_with(None)
    }

    fn run_inner_with(
        self,
        stdout_sink: Option<&mut (dyn Write + Send)>,
    ) -> Result<(ExitStatus, Output, String), ExecError> {
        let command = self.display();
        let path = self.resolve()?;
        if interrupted() {
            return Err(ExecError::Interrupted { command });
        }
        tracing::debug!(target: "kiln::exec", "running {command}");

        #[allow(clippy::disallowed_methods)] // this is the one sanctioned call site
        let mut std_cmd = std::process::Command::new(&path);
        std_cmd
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cwd) = &self.cwd {
            std_cmd.current_dir(cwd);
        }
        crate::cmd::sys::detach_into_group(&mut std_cmd);
        let mut child = std_cmd.spawn().map_err(|source| ExecError::Spawn {
            command: command.clone(),
            source,
        })?;

        if let Some(bytes) = self.stdin {
            let mut stdin = child.stdin.take().expect("stdin is piped");
            // A writer thread, so a child that prints before it reads cannot deadlock us.
            std::thread::spawn(move || {
                let _ = stdin.write_all(&bytes);
            });
        }

        let log = match &self.log {
            Some(p) => Some(Arc::new(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| ExecError::Io {
                        command: command.clone(),
                        source,
                    })?,
            ))),
            None => None,
        };
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let sink = self.on_line.map(|s| Arc::new(Mutex::new(s)));

        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        if let Some(sink) = stdout_sink {
            // Scoped: the sink is borrowed. It is fed on its own thread so
            // that this one can watch for an interruption meanwhile.
            let (tail2, program) = (Arc::clone(&tail), self.program.clone());
            let (status, copied, pumped) = std::thread::scope(|s| {
                let copier = s.spawn(move || {
                    let mut stdout = stdout;
                    std::io::copy(&mut stdout, sink).and_then(|_| sink.flush())
                    // stdout drops here: a child still writing gets EPIPE.
                });
                let pump = s.spawn(move || pump_lines(&program, stderr, log, tail2, None));
                let status = wait_interruptibly(&mut child, &command);
                (
                    status,
                    copier.join().expect("stdout copier panicked"),
                    pump.join().expect("stderr reader panicked"),
                )
            });
            let status = status?;
            let io = |source| ExecError::Io {
                command: command.clone(),
                source,
            };
            pumped.map_err(io)?;
            let tail: Vec<String> = tail.lock().unwrap().iter().cloned().collect();
            if interrupted() {
                return Err(ExecError::Interrupted { command });
            }
            // First: a failing sink leaves the child a broken pipe to die of.
            copied.map_err(io)?;
            return Ok((
                status,
                Output {
                    stdout: Vec::new(),
                    tail: tail.join("\n"),
                },
                command,
            ));
        }
        let out_reader = if self.capture_stdout {
            let (log, program) = (log.clone(), self.program.clone());
            std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
                let mut buf = Vec::new();
                BufReader::new(stdout).read_to_end(&mut buf)?;
                if let Some(log) = log {
                    let _ = log.lock().unwrap().write_all(&buf);
                }
                if tracing::enabled!(target: "kiln::exec", tracing::Level::TRACE) {
                    for line in String::from_utf8_lossy(&buf).lines() {
                        tracing::trace!(target: "kiln::exec", "{program}: {line}");
                    }
                }
                Ok(buf)
            })
        } else {
            let (log, tail, sink, program) = (log.clone(), Arc::clone(&tail), sink.clone(), self.program.clone());
            std::thread::spawn(move || {
                pump_lines(&program, stdout, log, tail, sink)?;
                Ok(Vec::new())
            })
        };
        let err_reader = {
            let (log, tail, sink, program) = (log.clone(), Arc::clone(&tail), sink.clone(), self.program.clone());
            std::thread::spawn(move || pump_lines(&program, stderr, log, tail, sink))
        };

        let status = wait_interruptibly(&mut child, &command)?;
        let stdout = out_reader
            .join()
            .expect("stdout reader panicked")
            .map_err(|source| ExecError::Io {
                command: command.clone(),
                source,
            })?;
        err_reader
            .join()
            .expect("stderr reader panicked")
            .map_err(|source| ExecError::Io {
                command: command.clone(),
                source,
            })?;
        let tail: Vec<String> = tail.lock().unwrap().iter().cloned().collect();
        if interrupted() {
            return Err(ExecError::Interrupted { command });
        }
        Ok((
            status,
            Output {
                stdout,
                tail: tail.join("\n"),
            },
            command,
        ))
    }
}

impl Cmd {
    /// Starts the program and returns at once, for long-lived children such
    /// as a VM. The child gets a null stdin, its own process group and
    /// `PR_SET_PDEATHSIG`; stdout and stderr are appended to the
    /// [`Cmd::log_to`] file, or discarded. `stdin_bytes` and `on_line` do not
    /// apply here. Dropping the [`Running`] stops the whole process group.
    ///
    /// `PR_SET_PDEATHSIG` fires when the *thread* that spawned the child
    /// exits, so spawn from a thread that outlives the child.
    pub fn spawn(self) -> Result<Running, ExecError> {
        debug_assert!(
            self.stdin.is_none() && self.on_line.is_none(),
            "Cmd::spawn takes no stdin bytes and no line sink"
        );
        let command = self.display();
        let path = self.resolve()?;
        if interrupted() {
            return Err(ExecError::Interrupted { command });
        }
        tracing::debug!(target: "kiln::exec", "starting {command}");

        let (stdout, stderr) = match &self.log {
            Some(p) => {
                let io = |source| ExecError::Io {
                    command: command.clone(),
                    source,
                };
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(io)?;
                let f2 = f.try_clone().map_err(io)?;
                (Stdio::from(f), Stdio::from(f2))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        #[allow(clippy::disallowed_methods)] // this is the one sanctioned call site
        let mut std_cmd = std::process::Command::new(&path);
        std_cmd
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if let Some(cwd) = &self.cwd {
            std_cmd.current_dir(cwd);
        }
        sys::detach_into_group(&mut std_cmd);
        let child = std_cmd.spawn().map_err(|source| ExecError::Spawn {
            command: command.clone(),
            source,
        })?;
        Ok(Running {
            child,
            command,
            status: None,
        })
    }

    /// Runs the program attached to kiln's own stdin, stdout and stderr, in
    /// kiln's process group (so that, on a terminal, it is in the
    /// foreground and reads the keyboard), and returns its exit status
    /// whatever it is: a shell or a command a person asked for. While it
    /// runs, Ctrl-C is the child's, not kiln's ([`crate::InteractiveWindow`]);
    /// SIGTERM or SIGHUP still stop it (SIGTERM, then SIGKILL). It dies with
    /// kiln (`PR_SET_PDEATHSIG`). Captured output, `log_to` and `on_line` do
    /// not apply.
    pub fn run_interactive(self) -> Result<ExitStatus, ExecError> {
        let command = self.display();
        let path = self.resolve()?;
        if interrupted() {
            return Err(ExecError::Interrupted { command });
        }
        tracing::debug!(target: "kiln::exec", "running {command} (interactive)");
        let _window = crate::InteractiveWindow::open();
        #[allow(clippy::disallowed_methods)] // this is the one sanctioned call site
        let mut std_cmd = std::process::Command::new(&path);
        std_cmd
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        if let Some(cwd) = &self.cwd {
            std_cmd.current_dir(cwd);
        }
        sys::die_with_parent(&mut std_cmd);
        let mut child = std_cmd.spawn().map_err(|source| ExecError::Spawn {
            command: command.clone(),
            source,
        })?;
        let io = |source| ExecError::Io {
            command: command.clone(),
            source,
        };
        let mut signalled: Option<Instant> = None;
        loop {
            if let Some(status) = child.try_wait().map_err(io)? {
                if signalled.is_some() {
                    return Err(ExecError::Interrupted { command });
                }
                return Ok(status);
            }
            match signalled {
                None if interrupted() => {
                    sys::signal_pid(child.id(), libc::SIGTERM);
                    signalled = Some(Instant::now());
                }
                Some(at) if at.elapsed() > DROP_GRACE => {
                    sys::signal_pid(child.id(), libc::SIGKILL);
                    let _ = child.wait();
                    return Err(ExecError::Interrupted { command });
                }
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Checks the registry and finds the program on `PATH`.
    fn resolve(&self) -> Result<PathBuf, ExecError> {
        locate(&self.program)
    }
}

/// Checks that `program` is in the registry and finds it on `PATH`. [`Cmd`]
/// does this itself; call it for a program that another one starts on
/// kiln's behalf (QEMU runs `socat` for each guest forward), so that its
/// absence is reported before anything runs.
pub fn locate(program: &str) -> Result<PathBuf, ExecError> {
    let tool = find_tool(program).ok_or_else(|| ExecError::Unregistered {
        tool: program.to_owned(),
    })?;
    which(tool.name).ok_or_else(|| ExecError::NotFound {
        tool: tool.name.to_owned(),
        package: tool.package.to_owned(),
    })
}

/// How long a dropped [`Running`] child gets between SIGTERM and SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(2);

/// A child started by [`Cmd::spawn`]. Dropping it sends SIGTERM to its
/// process group, then SIGKILL after a short grace, and reaps it, so no
/// child outlives its owner.
///
/// Nothing here watches for an interruption on its own: callers that poll
/// [`Running::try_wait`] check [`crate::interrupted`] in their loop (and
/// [`Running::wait`] does so itself).
#[derive(Debug)]
pub struct Running {
    child: Child,
    command: String,
    status: Option<ExitStatus>,
}

impl Running {
    /// The child's pid, which is also its process group id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The command line, shell-quoted.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The exit status if the child has exited (reaping it), else `None`.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, ExecError> {
        if self.status.is_none() {
            self.status = self.child.try_wait().map_err(|source| ExecError::Io {
                command: self.command.clone(),
                source,
            })?;
        }
        Ok(self.status)
    }

    /// Waits for the child to exit. On an interruption it stops the process
    /// group (SIGTERM, then SIGKILL) and returns [`ExecError::Interrupted`].
    pub fn wait(&mut self) -> Result<ExitStatus, ExecError> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if interrupted() {
                self.kill_group(KILL_GRACE)?;
                return Err(ExecError::Interrupted {
                    command: self.command.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Stops the whole process group: SIGTERM, then SIGKILL if the child is
    /// still there after `grace`; reaps it and returns its status.
    pub fn kill_group(&mut self, grace: Duration) -> Result<ExitStatus, ExecError> {
        // Only signal while the child is unreaped: until then its pid, and so
        // its process group id, cannot have been reused.
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        sys::signal_group(self.id(), libc::SIGTERM);
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        sys::signal_group(self.id(), libc::SIGKILL);
        let status = self.child.wait().map_err(|source| ExecError::Io {
            command: self.command.clone(),
            source,
        })?;
        self.status = Some(status);
        Ok(status)
    }

    /// The error for an exit the caller did not expect, quoting `tail` (for
    /// example the end of the log file).
    pub fn exit_error(&self, status: ExitStatus, tail: impl Into<String>) -> ExecError {
        ExecError::Failed {
            command: self.command.clone(),
            status: describe(status),
            tail: tail.into(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Err(e) = self.kill_group(DROP_GRACE) {
            tracing::error!("stopping `{}`: {e}", self.command);
        }
    }
}

/// Feeds each line of `stream` to the log file, the error tail, the sink,
/// and `tracing` at trace level (what `kiln -vv` shows), prefixed with the
/// `program`'s name.
fn pump_lines(
    program: &str,
    stream: impl Read,
    log: Option<Arc<Mutex<std::fs::File>>>,
    tail: Arc<Mutex<VecDeque<String>>>,
    sink: Option<Arc<Mutex<LineSink>>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        if reader.read_until(b'\n', &mut raw)? == 0 {
            return Ok(());
        }
        if let Some(log) = &log {
            let _ = log.lock().unwrap().write_all(&raw);
        }
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches(['\n', '\r']);
        tracing::trace!(target: "kiln::exec", "{program}: {line}");
        {
            let mut t = tail.lock().unwrap();
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line.to_owned());
        }
        if let Some(sink) = &sink {
            (sink.lock().unwrap())(line);
        }
    }
}

/// Waits for `child`; on interruption sends SIGTERM to its process group,
/// then SIGKILL after a grace period, and reaps it either way.
fn wait_interruptibly(child: &mut Child, command: &str) -> Result<ExitStatus, ExecError> {
    let io = |source| ExecError::Io {
        command: command.to_owned(),
        source,
    };
    let mut signalled: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait().map_err(io)? {
            return Ok(status);
        }
        match signalled {
            None if interrupted() => {
                sys::signal_group(child.id(), libc::SIGTERM);
                signalled = Some(Instant::now());
            }
            Some(at) if at.elapsed() > KILL_GRACE => {
                sys::signal_group(child.id(), libc::SIGKILL);
                return child.wait().map_err(io);
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "failed".to_owned(),
    }
}

/// Quotes `s` for a POSIX shell when it contains anything unusual.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[allow(unsafe_code)]
mod sys {
    //! The only unsafe code in kiln: `pre_exec` and `kill(2)`.
    use std::os::unix::process::CommandExt;

    /// Puts the child in its own process group (so an interruption can stop
    /// it and all its descendants at once) and asks the kernel to kill it if
    /// kiln dies without cleaning up.
    pub(super) fn detach_into_group(cmd: &mut std::process::Command) {
        // SAFETY: setpgid and prctl are async-signal-safe and touch no
        // memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Only `PR_SET_PDEATHSIG`: an interactive child stays in kiln's
    /// process group, which owns the terminal.
    pub(super) fn die_with_parent(cmd: &mut std::process::Command) {
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    pub(super) fn signal_pid(pid: u32, sig: libc::c_int) {
        // SAFETY: plain syscall on a child not yet reaped (its pid cannot be reused).
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }

    pub(super) fn signal_group(pid: u32, sig: libc::c_int) {
        // SAFETY: plain syscall; a stale pid group only yields ESRCH.
        unsafe {
            libc::kill(-(pid as libc::pid_t), sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interactive_returns_the_childs_status_and_keeps_sigint_for_it() {
        let st = Cmd::new("sh").args(["-c", "exit 7"]).run_interactive().unwrap();
        assert_eq!(st.code(), Some(7));
        // A window is open while the child runs: kiln is not interrupted.
        let window = crate::InteractiveWindow::open();
        assert!(!interrupted());
        drop(window);
    }

    #[test]
    fn captures_stdout() {
        let out = Cmd::new("sh").args(["-c", "echo hello; echo oops >&2"]).run().unwrap();
        assert_eq!(out.stdout_string(), "hello\n");
        assert_eq!(out.tail, "oops");
    }

    #[test]
    fn failure_quotes_command_and_stderr_tail() {
        let err = Cmd::new("sh")
            .args(["-c", "echo first >&2; echo 'the reason' >&2; exit 3"])
            .run()
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("`sh -c 'echo first >&2; echo '\\''the reason'\\'' >&2; exit 3'`"),
            "{msg}"
        );
        assert!(msg.contains("exited with status 3"), "{msg}");
        assert!(msg.ends_with("first\nthe reason"), "{msg}");
    }

    #[test]
    fn stdin_is_null_unless_given() {
        let out = Cmd::new("sh").args(["-c", "cat"]).run().unwrap();
        assert!(out.stdout.is_empty());
        let out = Cmd::new("sh").args(["-c", "cat"]).stdin_bytes("fed").run().unwrap();
        assert_eq!(out.stdout_string(), "fed");
    }

    #[test]
    fn streams_stdout_into_a_sink() {
        let mut sink = Vec::new();
        let out = Cmd::new("sh")
            .args(["-c", "head -c 300000 /dev/zero; echo done >&2"])
            .run_into(&mut sink)
            .unwrap();
        assert_eq!(sink.len(), 300_000);
        assert_eq!(out.tail, "done");
        let err = Cmd::new("sh")
            .args(["-c", "echo partial; echo broken >&2; exit 4"])
            .run_into(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("exited with status 4"), "{err}");

        /// Takes 10 bytes, then fails.
        struct Full(usize);
        impl Write for Full {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if self.0 >= 10 {
                    return Err(std::io::Error::other("disk full"));
                }
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let err = Cmd::new("sh")
            .args(["-c", "while :; do echo yes; done"])
            .run_into(&mut Full(0))
            .unwrap_err();
        let msg = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(msg.contains("disk full"), "{msg}");
    }

    #[test]
    fn unregistered_tool_is_refused() {
        let err = Cmd::new("ls").run().unwrap_err();
        assert!(matches!(err, ExecError::Unregistered { .. }), "{err}");
    }

    #[test]
    fn locate_checks_the_registry_then_path() {
        assert!(matches!(locate("ls"), Err(ExecError::Unregistered { .. })));
        assert!(locate("sh").unwrap().is_absolute());
    }

    #[test]
    fn streams_lines_and_logs() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = Arc::clone(&seen);
        Cmd::new("sh")
            .args(["-c", "echo a; echo b >&2; echo c"])
            .log_to(&log)
            .on_line(move |l| seen2.lock().unwrap().push(l.to_owned()))
            .run()
            .unwrap();
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, ["a", "b", "c"]);
        assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 3);
    }

    /// Whether `pid` is a live process (zombies count as dead: a container's
    /// init may never reap orphans).
    fn alive(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    fn wait_for_file(path: &Path) -> String {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(s) = std::fs::read_to_string(path) {
                if s.ends_with('\n') {
                    return s;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{} never appeared", path.display());
    }

    #[test]
    fn spawn_appends_output_to_log_and_reports_status() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(&log, "before\n").unwrap();
        let mut child = Cmd::new("sh")
            .args(["-c", "echo out; echo err >&2; exit 3"])
            .log_to(&log)
            .spawn()
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(child.try_wait().unwrap(), Some(status));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.starts_with("before\n"), "{text}");
        assert!(text.contains("out\n") && text.contains("err\n"), "{text}");
        let msg = child.exit_error(status, "err").to_string();
        assert!(msg.contains("exited with status 3") && msg.ends_with("err"), "{msg}");
    }

    #[test]
    fn spawn_has_null_stdin_and_refuses_unregistered_tools() {
        let mut child = Cmd::new("sh")
            .args(["-c", "read -r line && exit 1 || exit 0"])
            .spawn()
            .unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(0));
        let err = Cmd::new("ls").spawn().unwrap_err();
        assert!(matches!(err, ExecError::Unregistered { .. }), "{err}");
    }

    #[test]
    fn dropping_a_running_child_kills_its_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let child = Cmd::new("sh")
            .arg("-c")
            .arg(format!("sleep 60 & echo $$ $! > {}; wait", pids.display()))
            .spawn()
            .unwrap();
        let text = wait_for_file(&pids);
        let pids: Vec<u32> = text.split_whitespace().map(|p| p.parse().unwrap()).collect();
        assert_eq!(pids[0], child.id());
        assert!(pids.iter().all(|&p| alive(p)));
        drop(child);
        // The group has its signal when drop returns; a member reparented
        // away from the reaped leader may take a moment to act on it.
        let until = Instant::now() + Duration::from_secs(5);
        while pids.iter().any(|&p| alive(p)) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!pids.iter().any(|&p| alive(p)), "survivors among {pids:?}");
    }

    #[test]
    fn kill_group_escalates_to_sigkill_after_the_grace() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        let mut child = Cmd::new("sh")
            .arg("-c")
            .arg(format!(
                "trap '' TERM; echo > {}; while :; do sleep 1; done",
                ready.display()
            ))
            .spawn()
            .unwrap();
        wait_for_file(&ready);
        let started = Instant::now();
        let status = child.kill_group(Duration::from_millis(200)).unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("plain-arg_1.0"), "plain-arg_1.0");
        assert_eq!(shell_quote("two words"), "'two words'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
