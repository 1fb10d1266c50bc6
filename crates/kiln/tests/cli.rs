//! Fast end-to-end tests of the `kiln` binary: argument handling, spec errors
//! as the user sees them, plan, schema, doctor, and check/inspect on small
//! images. No network, no bootstrap.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn kiln(args: &[&str]) -> Output {
    #[allow(clippy::disallowed_methods)] // the binary under test
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .canonicalize()
        .unwrap()
}

#[test]
fn help_teaches_with_examples() {
    let out = kiln(&["--help"]);
    assert!(out.status.success());
    let t = text(&out);
    for word in ["build", "plan", "check", "inspect", "schema", "doctor", "Examples:"] {
        assert!(t.contains(word), "--help lacks {word}: {t}");
    }
}

#[test]
fn build_reports_spec_errors_with_location_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("broken.toml");
    std::fs::write(
        &spec,
        "[image]\nname = \"x\"\nversion = \"1\"\n[base]\ndistro = \"debian\"\nrelease = \"bookworm\"\n[packages]\ninstal = [\"vim\"]\n[targets.ovh-byol]\n",
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let out = kiln(&["build", spec.to_str().unwrap(), "--out", out_dir.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("broken.toml:8:1"), "{t}");
    assert!(t.contains("did you mean `install`"), "{t}");
    assert!(
        !out_dir.exists(),
        "a spec error must stop the build before it creates anything"
    );
}

#[test]
fn missing_spec_file_is_a_clear_error() {
    let out = kiln(&["plan", "/nonexistent/spec.toml"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("/nonexistent/spec.toml"), "{t}");
}

#[test]
fn plan_lists_every_stage_with_hashes() {
    let out = kiln(&["plan", examples().join("debian-12-ovh-byol.toml").to_str().unwrap()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for stage in [
        "bootstrap",
        "customise",
        "ovh-byol/finalise",
        "ovh-byol/filesystem",
        "ovh-byol/disk",
        "ovh-byol/convert",
        "checksums",
    ] {
        assert!(t.contains(stage), "plan lacks {stage}: {t}");
    }
    assert!(t.contains("make_image_bootable.sh"), "{t}");

    let json = kiln(&[
        "plan",
        "--json",
        examples().join("debian-12-ovh-byol-xfs.toml").to_str().unwrap(),
    ]);
    let plan: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let stages = plan["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 7);
    assert!(stages.iter().all(|s| s["hash"].as_str().unwrap().len() == 64));
    assert_eq!(plan["targets"]["ovh-byol"]["filesystem"], "xfs");
}

#[test]
fn schema_is_json_with_the_spec_sections() {
    let out = kiln(&["schema"]);
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let props = &schema["properties"];
    for key in [
        "image",
        "base",
        "packages",
        "files",
        "run",
        "users",
        "targets",
        "cloud_init",
    ] {
        assert!(props.get(key).is_some(), "schema lacks {key}");
    }
}

#[test]
fn doctor_lists_tools_with_packages() {
    let out = kiln(&["doctor"]);
    let t = text(&out);
    for (tool, pkg) in [
        ("mmdebstrap", "mmdebstrap"),
        ("mke2fs", "e2fsprogs"),
        ("qemu-img", "qemu-utils"),
    ] {
        let line = t
            .lines()
            .find(|l| l.starts_with(tool))
            .unwrap_or_else(|| panic!("no {tool} line: {t}"));
        assert!(line.contains(pkg), "{line}");
    }
}

#[test]
fn check_refuses_a_file_that_is_not_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("notes.qcow2");
    std::fs::write(&f, "not an image at all").unwrap();
    let out = kiln(&["check", f.to_str().unwrap(), "--target", "ovh-byol"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("FAIL qcow2-format"), "{t}");
}

#[test]
fn check_rejects_an_unknown_target_with_the_choices() {
    let out = kiln(&["check", "x.qcow2", "--target", "aws"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("ovh-byol"), "{t}");
}

#[test]
fn boot_help_explains_the_guest_network() {
    let out = kiln(&["boot", "--help"]);
    assert!(out.status.success());
    let t = text(&out);
    for want in ["--net", "whatever the host reaches", "isolated", "--json"] {
        assert!(t.contains(want), "`kiln boot --help` lacks {want:?}: {t}");
    }
}
