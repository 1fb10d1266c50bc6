//! A person in a booted guest: the serial console on the terminal
//! (`kiln boot --interactive`), or an SSH session with a throwaway key
//! (`kiln ssh`). Either way the guest's disk is a snapshot, and QEMU and
//! every temporary file are gone when the session ends.
//!
//! Non-goals: keeping a guest running after the session, forwarding ports
//! other than SSH's, agent or X11 forwarding.

use std::io::{IsTerminal, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln_exec::{Cmd, WorkDir};

use crate::boot::{prepare, BootEvent, BootOptions, Prepared, SeedSource, FATAL, LOGIN_PROMPT, TAIL_LINES};
use crate::console::{Console, Expect, Pattern};
use crate::network::{HostForward, Isolated, Network};
use crate::qemu::Vm;

/// The byte Ctrl-] sends: it ends an interactive console, as in telnet.
pub const ESCAPE: u8 = 0x1d;

/// `kiln boot --interactive` needs a terminal on stdin.
#[derive(Debug, thiserror::Error)]
#[error(
    "--interactive attaches the serial console to a terminal, but stdin is not one; \
     run it from a terminal, or use kiln boot without --interactive (or kiln ssh IMAGE -- COMMAND) in scripts"
)]
pub struct NotATerminal;

/// The terminal in raw mode (every key goes to the guest, Ctrl-C
/// included); the previous mode is restored on drop.
struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    fn enter() -> Result<Self> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).context("reading the terminal's mode")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).context("putting the terminal in raw mode")?;
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin().as_fd(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// How an interactive console ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleEnd {
    /// The person pressed Ctrl-].
    Escaped,
    /// QEMU exited (the guest powered off, or QEMU failed), with how.
    VmExited(String),
    /// SIGTERM or SIGHUP.
    Interrupted,
}

/// Boots `opts.image` with its serial console on this terminal until the
/// person presses Ctrl-] or the guest powers off; the terminal's mode is
/// restored and QEMU stopped whatever happens. `on_event` hears of the
/// accelerator and the start.
pub fn interactive(opts: &BootOptions, on_event: &mut dyn FnMut(BootEvent<'_>)) -> Result<ConsoleEnd> {
    if !std::io::stdin().is_terminal() {
        return Err(NotATerminal.into());
    }
    let Prepared {
        mut cfg,
        work,
        accel: _,
        imds,
    } = prepare(opts, on_event)?;
    let socket = work.path().join("console.sock");
    cfg.console_socket = Some(socket.clone());
    let mut vm = Vm::start(&cfg).with_context(|| format!("starting QEMU for {}", opts.image.display()))?;
    on_event(BootEvent::Started {
        vm: &cfg,
        command: vm.command(),
    });
    let stream = connect_console(&socket, &mut vm)?;
    let end = {
        let _raw = RawTerminal::enter()?;
        pump(stream, &mut vm)
    };
    drop(vm);
    drop(imds);
    drop(work);
    end
}

/// Connects to QEMU's console socket, which appears once QEMU has started.
fn connect_console(socket: &Path, vm: &mut Vm) -> Result<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match UnixStream::connect(socket) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("connecting to the serial console at {}", socket.display()))
            }
            Err(_) => {}
        }
        if let Some(exit) = vm.exited()? {
            bail!("QEMU stopped before its console was ready: {exit}");
        }
        kiln_exec::check_interrupted()?;
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Copies the console to stdout and the keyboard to the console until
/// Ctrl-], the VM's exit or an interruption.
fn pump(mut console: UnixStream, vm: &mut Vm) -> Result<ConsoleEnd> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // Unbuffered: a buffered reader could hold keys that poll(2) no longer sees.
    let mut keyboard = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut stdout = std::io::stdout();
    let mut buf = [0u8; 4096];
    loop {
        if kiln_exec::interrupted() {
            return Ok(ConsoleEnd::Interrupted);
        }
        if let Some(exit) = vm.exited()? {
            return Ok(ConsoleEnd::VmExited(exit.to_string()));
        }
        let (keys, screen) = {
            let mut fds = [
                PollFd::new(keyboard.as_fd(), PollFlags::POLLIN),
                PollFd::new(console.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::from(200u16)) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("waiting for the keyboard or the console"),
            }
            let ready = |f: &PollFd<'_>| {
                f.revents()
                    .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR))
            };
            (ready(&fds[0]), ready(&fds[1]))
        };
        if screen {
            let n = console.read(&mut buf).context("reading the serial console")?;
            if n == 0 {
                let why = vm
                    .exited()?
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "QEMU closed the console".into());
                return Ok(ConsoleEnd::VmExited(why));
            }
            stdout.write_all(&buf[..n])?;
            stdout.flush()?;
        }
        if keys {
            let n = keyboard.read(&mut buf).context("reading the keyboard")?;
            if n == 0 {
                return Ok(ConsoleEnd::Escaped);
            }
            let typed = &buf[..n];
            match typed.iter().position(|&b| b == ESCAPE) {
                Some(at) => {
                    console.write_all(&typed[..at])?;
                    return Ok(ConsoleEnd::Escaped);
                }
                None => console.write_all(typed).context("writing to the serial console")?,
            }
        }
    }
}

/// What `kiln ssh` runs.
#[derive(Debug, Clone, Default)]
pub struct SshOptions {
    /// Who to log in as: [`SESSION_USER`] by default, the account the
    /// seed's user data makes for the session.
    pub user: String,
    /// The command to run; empty: a login shell.
    pub command: Vec<String>,
    /// The guest's hostname in the seed.
    pub hostname: Option<String>,
    /// How long the guest gets to answer SSH after its login prompt showed.
    pub ssh_grace: Duration,
}

/// The guest has no SSH server.
#[derive(Debug, thiserror::Error)]
#[error(
    "{image}: nothing answers SSH on port 22 {waited} s after the guest's login prompt; the image has no SSH server \
     (add openssh-server to [packages] install and ssh to [services] enable), or it does not start; \
     the serial console is in {console}"
)]
pub struct NoSsh {
    pub image: PathBuf,
    pub waited: u64,
    pub console: PathBuf,
}

/// The account `kiln ssh` logs in as by default: made by the seed's user
/// data, with the session's key and password-less sudo. Not root: kiln's
/// images refuse root over SSH unless their spec allows it (the security
/// contract), and the boot must not loosen what it is there to show.
pub const SESSION_USER: &str = "kiln";

/// User data for the generated seed: cloud-init's default user as the image
/// has it, plus [`SESSION_USER`] with `key`. Root's copy of the key works
/// where the image's sshd lets root in (`disable_root: false`, else
/// Debian's cloud-init gives it a command that only names the user).
fn ssh_user_data(key: &str) -> String {
    format!(
        "#cloud-config\ndisable_root: false\nusers:\n  - default\n  - name: {SESSION_USER}\n    \
         gecos: kiln ssh session\n    lock_passwd: true\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    \
         ssh_authorized_keys:\n      - {key}\n"
    )
}

/// Boots `opts.image` in the background with a fresh ed25519 key in a
/// NoCloud seed (with `ssh.hostname`) and the guest's port 22 forwarded to
/// a free port of 127.0.0.1, waits for SSH, runs the session (or the
/// command) on kiln's terminal, then powers the guest off. Returns the
/// status of `ssh` (the command's, or 255 for ssh's own errors).
pub fn ssh(opts: &BootOptions, ssh: &SshOptions, on_event: &mut dyn FnMut(BootEvent<'_>)) -> Result<ExitStatus> {
    kiln_exec::locate("ssh")?;
    kiln_exec::locate("ssh-keygen")?;
    let keys = WorkDir::new_in(&std::env::temp_dir(), "kiln-ssh-").context("creating a directory for the key")?;
    let key = keys.path().join("id_ed25519");
    Cmd::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-ssh", "-f"])
        .arg(&key)
        .run()
        .context("generating the session's key")?;
    let public = std::fs::read_to_string(key.with_extension("pub")).context("reading the session's public key")?;
    let port = free_port()?;
    let mut opts = opts.clone();
    opts.seed = SeedSource::Generate {
        user_data: Some(ssh_user_data(public.trim()).into_bytes()),
        ssh_keys: vec![public.trim().to_owned()],
        hostname: ssh.hostname.clone(),
    };
    opts.net = Network::Isolated(Isolated::new().host_forward(HostForward {
        host_port: port,
        guest_port: 22,
    }));
    let Prepared {
        cfg,
        work,
        accel: _,
        imds,
    } = prepare(&opts, on_event)?;
    let mut vm = Vm::start(&cfg).with_context(|| format!("starting QEMU for {}", opts.image.display()))?;
    on_event(BootEvent::Started {
        vm: &cfg,
        command: vm.command(),
    });
    let client = SshClient {
        key: key.clone(),
        port,
        user: ssh.user.clone(),
    };
    wait_for_ssh(&opts, ssh, &client, &mut vm, on_event)?;
    let status = client
        .command(&ssh.command, false)
        .run_interactive()
        .context("running the SSH session")?;
    power_off(&client, &mut vm);
    drop(vm);
    drop(imds);
    drop(work);
    drop(keys);
    Ok(status)
}

/// A port of 127.0.0.1 that nothing listens on now.
fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).context("finding a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

struct SshClient {
    key: PathBuf,
    port: u16,
    user: String,
}

impl SshClient {
    /// `ssh` with the session's key to the forwarded port; no host key is
    /// remembered (each boot makes new ones).
    fn command(&self, remote: &[String], batch: bool) -> Cmd {
        Cmd::new("ssh")
            .args(if batch { &["-o", "BatchMode=yes"][..] } else { &[] })
            .arg("-i")
            .arg(&self.key)
            .args(["-p", &self.port.to_string()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "ConnectTimeout=10",
            ])
            .arg(format!("{}@127.0.0.1", self.user))
            .args(remote)
    }

    /// Whether the guest's sshd sent its banner through the forward.
    fn banner(&self) -> bool {
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port).into();
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).is_ok() && &buf == b"SSH-"
    }

    /// Whether a login with the key works now.
    fn logs_in(&self) -> bool {
        self.command(&["true".to_owned()], true)
            .run_status()
            .is_ok_and(|(status, _)| status.success())
    }
}

/// Waits until a login works, the guest shows no SSH server `ssh_grace`
/// after its login prompt, the guest fails to boot, QEMU exits, or the
/// timeout passes.
fn wait_for_ssh(
    opts: &BootOptions,
    ssh: &SshOptions,
    client: &SshClient,
    vm: &mut Vm,
    on_event: &mut dyn FnMut(BootEvent<'_>),
) -> Result<()> {
    let mut expect = Expect::new().want(Pattern::new("login prompt", LOGIN_PROMPT)?);
    for (name, regex) in FATAL {
        expect = expect.fail_on(Pattern::new(*name, regex)?);
    }
    let mut console = Console::new(vm.console_log());
    let started = vm.started();
    let deadline = started + opts.timeout;
    let mut login_at: Option<Instant> = None;
    let mut answered = false;
    let mut last_probe = Instant::now() - Duration::from_secs(60);
    let mut last_beat = Instant::now();
    let tail = |console: &Console| console.tail(TAIL_LINES).join("\n");
    loop {
        kiln_exec::check_interrupted()?;
        if let Some(exit) = vm.exited()? {
            let _ = console.poll();
            bail!(
                "the VM stopped before SSH answered: {exit}\nlast lines of the serial console:\n{}",
                tail(&console)
            );
        }
        if console.poll()? {
            let (seen, failed) = expect.scan(console.text(), started.elapsed());
            for s in &seen {
                login_at.get_or_insert_with(Instant::now);
                on_event(BootEvent::Seen(s));
            }
            if let Some(f) = failed {
                bail!(
                    "the guest failed to boot ({}: {})\nlast lines of the serial console:\n{}",
                    f.name,
                    f.line,
                    tail(&console)
                );
            }
        }
        if last_probe.elapsed() >= Duration::from_secs(2) {
            last_probe = Instant::now();
            if client.banner() {
                answered = true;
                if client.logs_in() {
                    return Ok(());
                }
            } else if !answered && login_at.is_some_and(|at| at.elapsed() > ssh.ssh_grace) {
                return Err(NoSsh {
                    image: opts.image.clone(),
                    waited: ssh.ssh_grace.as_secs(),
                    console: opts.console_log.clone(),
                }
                .into());
            }
        }
        if Instant::now() > deadline {
            if answered {
                bail!(
                    "the guest's SSH server answers but refuses kiln's key for {} after {} s \
                     (does the image let {} log in with a key? try --user)",
                    client.user,
                    opts.timeout.as_secs(),
                    client.user
                );
            }
            bail!(
                "no SSH after {} s (raise --timeout?)\nlast lines of the serial console:\n{}",
                opts.timeout.as_secs(),
                tail(&console)
            );
        }
        if last_beat.elapsed() >= Duration::from_secs(15) {
            last_beat = Instant::now();
            on_event(BootEvent::Waiting {
                elapsed: started.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Asks the guest to power off and gives it a while; QEMU is killed
/// afterwards anyway when the [`Vm`] is dropped.
fn power_off(client: &SshClient, vm: &mut Vm) {
    let _ = client
        .command(
            &["sudo -n systemctl poweroff || systemctl poweroff || poweroff".to_owned()],
            true,
        )
        .run_status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !kiln_exec::interrupted() {
        if vm.exited().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
