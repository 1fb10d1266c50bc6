//! Helpers shared by the test binaries (mostly the slow real tests).

#![allow(dead_code)]

pub mod replay;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn kiln() -> Command {
    #[allow(clippy::disallowed_methods)] // the binary under test
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.stdin(Stdio::null());
    // One cache (the rescue system) for every slow test of the run.
    c.env("KILN_CACHE_DIR", repo_root().join("target/tmp/cache"));
    // The examples' trees would hold about 10 GiB by the end of the run:
    // keep the most recently used (the BYOL example's, which most tests
    // share) and let the rest go, on a disk that the run shares.
    c.env("KILN_CACHE_MAX_SIZE", "6GiB");
    c
}

#[allow(clippy::disallowed_methods)] // test oracles
pub fn tool(name: &str) -> Command {
    let mut c = Command::new(name);
    c.stdin(Stdio::null());
    c
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn example(name: &str) -> PathBuf {
    repo_root().join("examples").join(name)
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("command starts");
    eprintln!("--- {:?} → {}", cmd, out.status);
    out
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Where the slow tests keep built example images, so that one build
/// serves every test that needs the image.
pub fn shared_out(spec: &str) -> PathBuf {
    repo_root()
        .join("target/tmp/examples")
        .join(spec.trim_end_matches(".toml"))
}

/// An exclusive lock on the shared output `out` (a file beside it), held
/// until the returned file is dropped, also when the test panics.
pub fn lock_shared(out: &Path) -> std::fs::File {
    let lock = out.with_extension("lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let file = std::fs::File::create(&lock).unwrap();
    file.lock().unwrap();
    file
}

/// The spec hash `kiln plan` computes for `spec` today.
fn spec_hash(spec: &Path) -> String {
    let out = run(kiln().args(["plan", "--json", "--offline"]).arg(spec));
    assert!(out.status.success(), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    plan["spec_hash"].as_str().unwrap().to_owned()
}

/// A built image of example `spec`: reused from an earlier test of this run
/// (or an earlier run) when its manifest has today's spec hash, else built.
/// Tests that share it may run at once (real_boot runs two at a time): the
/// first builds while the others wait, then reuse its output.
pub fn example_image(spec: &str, image: &str) -> PathBuf {
    let out = shared_out(spec);
    let _lock = lock_shared(&out);
    let want = spec_hash(&example(spec));
    let manifest = std::fs::read(out.join("manifest.json")).ok();
    let have = manifest
        .and_then(|m| serde_json::from_slice::<serde_json::Value>(&m).ok())
        .and_then(|m| m["spec"]["hash"].as_str().map(str::to_owned));
    if have.as_deref() != Some(want.as_str()) || !out.join(image).is_file() {
        let _ = std::fs::remove_dir_all(&out);
        let res = run(kiln().args(["build", "--out"]).arg(&out).arg(example(spec)));
        assert!(res.status.success(), "building {spec} failed:\n{}", text(&res));
    }
    out.join(image)
}

/// The SOURCE_DATE_EPOCH kiln plans the BYOL example with. A test spec
/// built on it, with the example's packages, shares the example's cached
/// bootstrap instead of storing another ~1 GiB tree.
pub fn example_epoch() -> String {
    let out = run(kiln()
        .args(["plan", "--json", "--offline"])
        .arg(example("debian-12-ovh-byol.toml")));
    assert!(out.status.success(), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    plan["source_date_epoch"]
        .as_u64()
        .expect("the example has a SOURCE_DATE_EPOCH")
        .to_string()
}

/// Mount points at or below `dir`, as this process sees them.
pub fn mounts_below(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_string_lossy().into_owned();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir))
        .map(str::to_owned)
        .collect()
}

/// Every attached loop device and its backing file (`losetup -a`).
pub fn loop_devices() -> String {
    String::from_utf8_lossy(&run(tool("losetup").arg("-a")).stdout).into_owned()
}

/// Loop devices whose backing file is below one of `dirs`.
pub fn loops_backed_below(dirs: &[&Path]) -> Vec<String> {
    let out = run(tool("losetup").args(["--json", "--list"]));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    listed["loopdevices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| {
            let file = l["back-file"].as_str().unwrap_or("");
            dirs.iter().any(|d| file.starts_with(&*d.to_string_lossy()))
        })
        .map(|l| l.to_string())
        .collect()
}

/// Other processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    processes(|cmdline, _| cmdline.contains(needle))
}

/// Other processes that work in `dir`: their command line names it, or
/// their current or root directory is in it (a chroot into a tree there).
pub fn processes_in(dir: &Path) -> Vec<String> {
    processes(|cmdline, proc_dir| {
        cmdline.contains(&*dir.to_string_lossy())
            || ["cwd", "root"]
                .iter()
                .any(|l| std::fs::read_link(proc_dir.join(l)).is_ok_and(|p| p.starts_with(dir)))
    })
}

/// `pid: cmdline` of the live processes (not this one, nor zombies) that
/// `pick` (given the command line and the /proc directory) chooses.
fn processes(pick: impl Fn(&str, &Path) -> bool) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.chars().all(|c| c.is_ascii_digit()) || pid == me {
            continue;
        }
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if zombie {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if pick(&cmdline, &entry.path()) {
                found.push(format!("{pid}: {cmdline}"));
            }
        }
    }
    found
}

/// What a build may not leave in its output directory: work directories
/// and partial files.
pub fn leftovers(out: &Path) -> Vec<String> {
    std::fs::read_dir(out)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".kiln-work") || n.starts_with(".kiln-reproducible") || n.ends_with(".part"))
                .collect()
        })
        .unwrap_or_default()
}

/// A running `kiln serve` on a free port; interrupted (SIGINT) when stopped.
pub struct Served {
    child: Option<Child>,
    pub base: String,
    pub stdout: Vec<String>,
    stderr: PathBuf,
}

impl Served {
    pub fn start(dir: &Path, extra: &[&str], log: &Path) -> Served {
        let mut child = kiln()
            .args(["serve", "--bind", "127.0.0.1:0"])
            .arg(dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let base = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {first:?}"))
            .trim_end_matches('/')
            .to_owned();
        let mut stdout = vec![first];
        // The artifact URLs, then (with --auth) the header: read until the
        // output stops growing, which it does once the server is ready.
        let want = if extra.contains(&"--auth") { 2 } else { 0 };
        let mut headers = 0;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line.contains("Authorization") || line.contains("--http-header") {
                headers += 1;
            }
            let last = line.ends_with(".sha512") && want == 0 || headers == want && want > 0;
            stdout.push(line);
            if last {
                break;
            }
        }
        Served {
            child: Some(child),
            base,
            stdout,
            stderr: log.to_owned(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops it with SIGINT, as Ctrl-C does; its access log.
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        let out = tool("kill").args(["-INT", &child.id().to_string()]).output().unwrap();
        assert!(out.status.success());
        let status = child.wait().unwrap();
        assert!(status.success(), "kiln serve ended with {status} after Ctrl-C");
        std::fs::read_to_string(&self.stderr).unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The user and password of a [`Registry`] started with `auth`.
pub const REGISTRY_USER: &str = "kiln-ci";
pub const REGISTRY_PASS: &str = "pw-Zt7q";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A docker-registry on 127.0.0.1, killed when dropped.
pub struct Registry {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    /// With `auth`, Basic authentication from an htpasswd file (bcrypt).
    pub fn start(auth: bool) -> Registry {
        Registry::start_with(auth, false)
    }

    /// With `read_only`, in distribution's read-only maintenance mode.
    pub fn start_with(auth: bool, read_only: bool) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let maintenance = if read_only {
            "  maintenance:\n    readonly:\n      enabled: true\n"
        } else {
            ""
        };
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n{maintenance}  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: kiln-test-secret\n",
            dir.path().join("data").display()
        );
        if auth {
            let out = run(tool("htpasswd").args(["-Bbn", REGISTRY_USER, REGISTRY_PASS]));
            assert!(out.status.success(), "{}", text(&out));
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = tool("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry starts");
        wait_listening(port, "docker-registry");
        Registry { child, port, dir }
    }

    pub fn reference(&self, tag: &str) -> String {
        format!("127.0.0.1:{}/kiln/debian-12-byol:{tag}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
