//! Helpers shared by the test binaries (mostly the slow real tests).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub fn kiln() -> Command {
    #[allow(clippy::disallowed_methods)] // the binary under test
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.stdin(Stdio::null());
    // One cache (the rescue system) for every slow test of the run.
    c.env("KILN_CACHE_DIR", repo_root().join("target/tmp/cache"));
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

/// The spec hash `kiln plan` computes for `spec` today.
fn spec_hash(spec: &Path) -> String {
    let out = run(kiln().args(["plan", "--json", "--offline"]).arg(spec));
    assert!(out.status.success(), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    plan["spec_hash"].as_str().unwrap().to_owned()
}

/// A built image of example `spec`: reused from an earlier test of this run
/// (or an earlier run) when its manifest has today's spec hash, else built.
pub fn example_image(spec: &str, image: &str) -> PathBuf {
    let out = shared_out(spec);
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
