//! Slow, real tests of kiln's debugging: `kiln shell` in the example's
//! cached tree, and `kiln build --on-error=shell|keep` and `--step` on a
//! spec that fails in a `[[run]]` step, driven without a terminal (a
//! `KILN_SHELL` script that prints what it sees, newlines on stdin), and
//! `kiln shell` on a terminal that util-linux `script` provides.
//!
//! The failing spec has the ovh-byol example's packages, target and
//! SOURCE_DATE_EPOCH, so its bootstrap is the example's cached one: once the
//! example's bootstrap is in the shared cache, each test takes seconds.
//! They need root (and, on a cold cache, a Debian mirror).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;
use common::*;

const EXAMPLE: &str = "debian-12-ovh-byol.toml";

/// A spec sharing the example's bootstrap whose second `[[run]]` step
/// fails after the first one left a mark.
fn failing_spec(dir: &Path) -> PathBuf {
    let spec = dir.join("fail.toml");
    std::fs::write(
        &spec,
        r#"timezone = "Etc/UTC"
locale = "C.UTF-8"

[image]
name = "debug-fail"
version = "1"

[base]
distro = "debian"
release = "bookworm"
components = ["main"]

[packages]
install = ["curl", "less", "vim-tiny"]

[[run]]
name = "leave a mark"
script = "echo marked > /root/mark"

[[run]]
name = "break on purpose"
script = """
echo about to fail
echo the-reason >&2
exit 3
"""

[cloud_init]
datasources = ["ConfigDrive", "NoCloud"]
default_user = { name = "debian", groups = ["adm", "sudo"] }

[targets.ovh-byol]
"#,
    )
    .unwrap();
    spec
}

/// `kiln build` of the failing spec on the example's epoch.
fn build_failing(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = kiln();
    cmd.env("SOURCE_DATE_EPOCH", example_epoch())
        .arg("build")
        .args(args)
        .arg("--out")
        .arg(dir.join("out"))
        .arg(failing_spec(dir));
    cmd
}

fn with_stdin(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    eprintln!("--- {cmd:?} → {}", out.status);
    out
}

/// What a build or shell left in `dir`: work directories.
fn work_dirs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".kiln-work") || n.starts_with("kiln-shell-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "slow: real Debian build of the example's bootstrap and customisation (root; cached once built)"]
fn shell_runs_commands_in_the_examples_tree_and_changes_nothing() {
    let dir = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    let shell = |args: &[&str]| {
        run(kiln()
            .arg("shell")
            .arg(example(EXAMPLE))
            .arg("--work-dir")
            .arg(dir.path())
            .args(args))
    };
    // Builds what the cache lacks, then lists the spec's packages.
    let listed = shell(&["--", "dpkg", "-l"]);
    assert!(listed.status.success(), "{}", text(&listed));
    let stdout = String::from_utf8_lossy(&listed.stdout);
    for package in ["curl", "less", "vim-tiny", "cloud-init"] {
        assert!(
            stdout.lines().any(|l| l.split_whitespace().take(2).eq(["ii", package])),
            "dpkg -l lacks {package}:\n{stdout}"
        );
    }
    let stderr = String::from_utf8_lossy(&listed.stderr);
    assert!(stderr.contains("throwaway overlay"), "{stderr}");
    assert!(stderr.contains("[[files]]") && stderr.contains("[[run]]"), "{stderr}");

    // The customised tree: the example's [[run]] step ran; /proc is there.
    let seen = shell(&[
        "--no-build",
        "--",
        "sh",
        "-c",
        "cat /etc/kiln-release; test -r /proc/1/status",
    ]);
    assert!(seen.status.success(), "{}", text(&seen));
    assert!(String::from_utf8_lossy(&seen.stdout).contains("built by kiln"));

    // The command's status is kiln's; a change is gone next time.
    let changed = shell(&["--no-build", "--", "sh", "-c", "touch /etc/kiln-shell-probe; exit 7"]);
    assert_eq!(changed.status.code(), Some(7), "{}", text(&changed));
    let gone = shell(&["--no-build", "--", "test", "-e", "/etc/kiln-shell-probe"]);
    assert_eq!(
        gone.status.code(),
        Some(1),
        "the change reached the cache: {}",
        text(&gone)
    );

    // The bootstrap's tree has no customisation.
    let boot = shell(&[
        "--no-build",
        "--stage",
        "bootstrap",
        "--",
        "test",
        "-e",
        "/etc/kiln-release",
    ]);
    assert_eq!(boot.status.code(), Some(1), "{}", text(&boot));

    assert!(work_dirs(dir.path()).is_empty(), "{:?}", work_dirs(dir.path()));
    assert!(mounts_below(dir.path()).is_empty(), "{:?}", mounts_below(dir.path()));
}

#[test]
#[ignore = "slow: real Debian build (root; the example's bootstrap, cached once built)"]
fn on_error_shell_opens_the_failed_tree_then_cleans_up() {
    let dir = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    // Runs in the chroot (at /run/kiln/shell): prints what it sees.
    let recorder = dir.path().join("record.sh");
    std::fs::write(
        &recorder,
        "#!/bin/sh\n\
         echo \"recorder: stage=$KILN_STAGE status=$KILN_FAILED_STATUS step=$KILN_FAILED_STEP\"\n\
         echo \"recorder: mark=$(cat /root/mark)\"\n\
         echo \"recorder: codename=$(. /etc/os-release; echo $VERSION_CODENAME)\"\n\
         echo \"recorder: script=$(grep -c the-reason /tmp/kiln-failed-step.sh)\"\n\
         echo \"recorder: proc=$(test -r /proc/1/status && echo yes)\"\n\
         echo \"recorder: pid1=$(cat /proc/1/comm)\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&recorder, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let res = run(build_failing(dir.path(), &["--on-error=shell"]).env("KILN_SHELL", &recorder));
    let stdout = String::from_utf8_lossy(&res.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&res.stderr).into_owned();
    assert_eq!(res.status.code(), Some(3), "{stdout}{stderr}");
    // What the shell saw: the failed stage's own tree, the failed step's
    // mark, the failed script, /proc of its own PID namespace.
    for line in [
        "recorder: stage=customise status=3 step=[[run]] \"break on purpose\"",
        "recorder: mark=marked",
        "recorder: codename=bookworm",
        "recorder: script=1",
        "recorder: proc=yes",
        "recorder: pid1=sh",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "the shell did not see {line:?}:\n{stdout}\n{stderr}"
        );
    }
    // What kiln printed before the shell: the command, its status, the tail.
    let before_shell = stderr.split("opening a shell").next().unwrap();
    assert!(
        before_shell.contains("stage customise failed: [[run]] \"break on purpose\" exited with status 3"),
        "{stderr}"
    );
    assert!(before_shell.contains("the-reason"), "{stderr}");
    assert!(
        before_shell.contains("exit 3"),
        "the failed script is not shown: {stderr}"
    );
    assert!(stderr.contains("cleaning up"), "{stderr}");
    let out = dir.path().join("out");
    assert!(work_dirs(&out).is_empty(), "{:?}", work_dirs(&out));
    assert!(mounts_below(dir.path()).is_empty(), "{:?}", mounts_below(dir.path()));
}

#[test]
#[ignore = "slow: real Debian build (root; the example's bootstrap, cached once built)"]
fn on_error_keep_prints_the_kiln_shell_line_that_reopens_the_failed_tree() {
    let dir = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    let res = run(&mut build_failing(dir.path(), &["--on-error=keep"]));
    let msg = text(&res);
    assert_eq!(res.status.code(), Some(3), "{msg}");
    let out = dir.path().join("out");
    let kept = work_dirs(&out);
    assert_eq!(kept.len(), 1, "{kept:?}\n{msg}");
    let line = msg
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("kiln shell "))
        .unwrap_or_else(|| panic!("no kiln shell line:\n{msg}"));
    assert!(line.contains("--stage customise --kept"), "{line}");
    assert!(
        line.ends_with(&out.join(&kept[0]).to_string_lossy().into_owned()),
        "{line}"
    );
    // The line reopens the failed tree: the first step's mark, the failed script.
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[..2], ["kiln", "shell"]);
    let reopened = run(kiln()
        .env("SOURCE_DATE_EPOCH", example_epoch())
        .args(&words[1..])
        .args([
            "--no-build",
            "--",
            "sh",
            "-c",
            "cat /root/mark; grep -c the-reason /tmp/kiln-failed-step.sh",
        ]));
    assert!(reopened.status.success(), "{}", text(&reopened));
    assert_eq!(String::from_utf8_lossy(&reopened.stdout), "marked\n1\n");
    std::fs::remove_dir_all(out.join(&kept[0])).unwrap();
}

#[test]
#[ignore = "slow: real Debian build (root; the example's bootstrap, cached once built)"]
fn step_waits_for_a_line_before_each_stage_that_runs() {
    let dir = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    // q: stopped before customise (the bootstrap is reused: no pause), cleanly.
    let stopped = with_stdin(&mut build_failing(dir.path(), &["--step"]), "q\n");
    let msg = text(&stopped);
    assert_eq!(stopped.status.code(), Some(3), "{msg}");
    assert_eq!(msg.matches("--step: next stage").count(), 1, "{msg}");
    assert!(msg.contains("--step: next stage customise"), "{msg}");
    assert!(msg.contains("stopped by --step before stage customise"), "{msg}");
    assert!(!msg.contains("break on purpose"), "customise ran: {msg}");
    // Enter: customise runs (and fails in its [[run]] step, as it must).
    let ran = with_stdin(&mut build_failing(dir.path(), &["--step"]), "\n");
    let msg = text(&ran);
    assert_eq!(ran.status.code(), Some(3), "{msg}");
    assert!(msg.contains("--step: next stage customise"), "{msg}");
    assert!(msg.contains("stage customise failed"), "{msg}");
    assert!(work_dirs(&dir.path().join("out")).is_empty());
}

#[test]
#[ignore = "slow: real Debian build of the example's bootstrap and customisation (root; cached once built)"]
fn shell_on_a_terminal_survives_ctrl_c_and_passes_the_exit_status_on() {
    use std::time::{Duration, Instant};
    // util-linux script gives kiln a terminal; what the test writes is typed into it.
    // script runs the line with `$SHELL -c`; `exec` makes kiln script's own
    // child whatever that shell is (dash forks, and a Ctrl-C would kill it).
    let line = format!(
        "exec {} shell {}",
        env!("CARGO_BIN_EXE_kiln"),
        example(EXAMPLE).display()
    );
    let mut child = tool("script")
        .env("KILN_CACHE_DIR", repo_root().join("target/tmp/cache"))
        .args(["-q", "-e", "-f", "-c", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut keys = child.stdin.take().unwrap();
    let started = Instant::now();
    let mut type_in = |text: &[u8], wait: u64| {
        keys.write_all(text).unwrap();
        keys.flush().unwrap();
        std::thread::sleep(Duration::from_secs(wait));
    };
    // The tree may have to be verified (or built) first.
    std::thread::sleep(Duration::from_secs(15));
    type_in(b"sleep 60\n", 2);
    type_in(b"\x03", 2);
    type_in(b"echo alive-$((40+2)); test -t 0 && echo on-a-tty\n", 2);
    type_in(b"exit 4\n", 3);
    drop(keys);
    let out = child.wait_with_output().unwrap();
    let screen = text(&out);
    assert_eq!(
        out.status.code(),
        Some(4),
        "the shell's exit status is not kiln's:\n{screen}"
    );
    assert!(
        screen.contains("alive-42"),
        "the shell did not survive Ctrl-C:\n{screen}"
    );
    assert!(screen.contains("on-a-tty"), "{screen}");
    assert!(screen.contains("(kiln customise) #"), "{screen}");
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "Ctrl-C did not stop sleep 60: {:?}",
        started.elapsed()
    );
}
