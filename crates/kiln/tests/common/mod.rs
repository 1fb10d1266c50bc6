//! Helpers shared by the slow real tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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
