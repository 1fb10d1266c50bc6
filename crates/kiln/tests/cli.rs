//! Fast end-to-end tests of the `kiln` binary: argument handling, spec errors
//! as the user sees them, plan, schema, doctor, check/inspect on small
//! images, exit statuses, verbosity, a closed stdout, completions and
//! manual pages. No network, no bootstrap.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn command(args: &[&str]) -> Command {
    #[allow(clippy::disallowed_methods)] // the binary under test
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    // The KVM probe of `kiln doctor` would boot a VM; tests ask for TCG.
    c.args(args).stdin(Stdio::null()).env("KILN_ACCEL", "tcg");
    c
}

fn kiln(args: &[&str]) -> Output {
    command(args).output().unwrap()
}

/// Runs kiln with a stdout whose reader is already gone, as in
/// `kiln plan SPEC | true`.
fn kiln_into_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    command(args).stdout(writer).stderr(Stdio::piped()).output().unwrap()
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

/// A git repository in a fresh directory holding one committed spec.
fn spec_repository() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        #[allow(clippy::disallowed_methods)] // test setup
        let out = Command::new("git")
            .arg("-C")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
    };
    let spec = dir.path().join("img.toml");
    std::fs::write(
        &spec,
        "[image]\nname = \"img\"\nversion = \"1.0.0\"\n[base]\ndistro = \"debian\"\nrelease = \"bookworm\"\n[targets.ovh-byol]\n",
    )
    .unwrap();
    git(&["init", "-q"]);
    git(&["add", "img.toml"]);
    git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "spec"]);
    (dir, spec)
}

#[test]
fn a_release_from_a_dirty_tree_is_refused_with_the_changed_files_before_any_work() {
    let (dir, spec) = spec_repository();
    std::fs::write(dir.path().join("notes.txt"), "not committed").unwrap();
    let out_dir = dir.path().join("out");
    let out = kiln(&[
        "build",
        spec.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--release",
        "2.0.0",
    ]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("uncommitted changes:\n  notes.txt\n"), "{t}");
    assert!(t.contains("--allow-dirty to build 2.0.0-dirty"), "{t}");
    assert!(!out_dir.exists(), "a refused release must not create anything");
}

#[test]
fn a_release_needs_a_version_and_a_valid_record() {
    let (dir, spec) = spec_repository();
    let out = kiln(&["build", spec.to_str().unwrap(), "--release", "2.0"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("\"2.0\" is not a release version like 1.2.3"), "{t}");

    let out = kiln(&["build", spec.to_str().unwrap(), "--allow-dirty"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--release"), "{}", text(&out));

    // The output directory is ignored by git here, as a team's would be.
    std::fs::write(dir.path().join(".git/info/exclude"), "out/\n").unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::write(
        out_dir.join("releases.json"),
        "{\"releases\": [\n  {\"version\": 2}\n]}\n",
    )
    .unwrap();
    let out = kiln(&[
        "build",
        spec.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--release",
        "2.0.0",
    ]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("releases.json:2:"), "{t}");
    assert!(t.contains("not a kiln release record"), "{t}");
    let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
    assert_eq!(left.len(), 1, "the refused build wrote into the output directory");
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
    let out = kiln(&[
        "plan",
        "--offline",
        examples().join("debian-12-ovh-byol.toml").to_str().unwrap(),
    ]);
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
        "--offline",
        examples().join("debian-12-ovh-byol-xfs.toml").to_str().unwrap(),
    ]);
    let plan: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let stages = plan["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 7);
    assert!(stages.iter().all(|s| s["hash"].as_str().unwrap().len() == 64));
    assert_eq!(plan["targets"]["ovh-byol"]["filesystem"], "xfs");
}

/// The usb-installer example plans the installer's stages after the
/// disk's, and shares every stage up to the disk with the disk example
/// (its sections are kept equal, so the stage cache serves both).
#[test]
fn usb_installer_example_plans_after_the_disk_example_stages() {
    let plan = |name: &str| -> serde_json::Value {
        let out = kiln(&["plan", "--json", "--offline", examples().join(name).to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let usb = plan("debian-12-usb-installer.toml");
    let disk = plan("debian-12-disk.toml");
    let hashes = |p: &serde_json::Value| -> Vec<(String, String)> {
        p["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["id"].as_str().unwrap().to_owned(),
                    s["hash"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let (usb_stages, disk_stages) = (hashes(&usb), hashes(&disk));
    let ids: Vec<&str> = usb_stages.iter().map(|(id, _)| id.as_str()).collect();
    for stage in ["usb-installer/installer", "usb-installer/stick", "usb-installer/write"] {
        assert!(ids.contains(&stage), "the plan lacks {stage}: {ids:?}");
    }
    assert_eq!(
        usb_stages[..4],
        disk_stages[..4],
        "bootstrap, customise and the disk's stages differ from debian-12-disk.toml's"
    );
    let target = &usb["targets"]["usb-installer"];
    assert_eq!(target["payload"], "disk");
    assert_eq!(target["payload_format"], "qcow2");
    for package in ["linux-image-amd64", "zstd", "cloud-guest-utils", "gdisk"] {
        assert!(
            target["packages"].as_array().unwrap().iter().any(|p| p == package),
            "the installer system lacks {package}: {target}"
        );
    }
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
fn doctor_lists_tools_with_packages_and_checks_the_host() {
    let out = kiln(&["doctor"]);
    let t = text(&out);
    for check in ["root ", "overlayfs ", "unshare ", "OVMF ", "KVM "] {
        assert!(t.lines().any(|l| l.starts_with(check)), "no {check}line: {t}");
    }
    assert!(t.contains("tcg: set by KILN_ACCEL"), "{t}");
    let ready = t.contains("this host has everything kiln needs");
    assert_eq!(out.status.code(), Some(if ready { 0 } else { 1 }), "{t}");
    let tools_missing = t.contains("missing for building and booting images; install with:\n  apt-get install ");
    let host_missing = t
        .lines()
        .skip_while(|l| !l.starts_with("host "))
        .any(|l| l.contains(" FAIL "));
    assert_eq!(ready, !tools_missing && !host_missing, "{t}");
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
fn exit_statuses_are_in_help() {
    let t = text(&kiln(&["--help"]));
    let table = t
        .split_once("Exit status:")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("{t}"));
    for (code, meaning) in [
        ("0", "success"),
        ("1", "a negative verdict"),
        ("2", "usage or spec error"),
        ("3", "a run failed"),
        ("130", "interrupted"),
    ] {
        assert!(
            table
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{code} ")) && l.contains(meaning)),
            "exit status {code} ({meaning}) missing from --help: {table}"
        );
    }
}

#[test]
fn a_bad_flag_or_a_missing_input_is_a_usage_error() {
    for args in [
        &["plan", "--no-such-flag", "x.toml"][..],
        &["-q", "-v", "schema"],
        &["check", "/nonexistent/x.qcow2", "--target", "ovh-byol"],
        &["inspect", "/nonexistent/x.qcow2"],
        &["cache", "rm"],
    ] {
        let out = kiln(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
}

#[test]
fn a_failed_run_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("no-such-dir/seed.iso");
    let out = kiln(&["seed", "--datasource", "nocloud", "-o", seed.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(t.contains("error:"), "{t}");
}

#[test]
fn a_closed_stdout_ends_short_commands_quietly() {
    let spec = examples().join("debian-12-ovh-byol.toml");
    for args in [
        &["plan", "--offline", spec.to_str().unwrap()][..],
        &["plan", "--offline", "--json", spec.to_str().unwrap()],
        &["doctor"],
        &["schema"],
        &["completion", "bash"],
        &["man"],
    ] {
        let out = kiln_into_closed_pipe(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("error"), "{args:?}: {stderr}");
    }
}

#[test]
fn verbose_shows_every_external_command_and_quiet_hides_progress() {
    if !kiln_exec::testing::require_tool_or_skip("unshare") {
        return;
    }
    let command_line =
        "kiln: debug: running unshare --mount --propagation private --pid --fork --kill-child -- sh -c :";
    let verbose = kiln(&["-v", "doctor"]);
    let stderr = String::from_utf8_lossy(&verbose.stderr);
    assert!(stderr.contains(command_line), "{stderr}");
    assert!(!stderr.contains("kiln: trace:"), "{stderr}");
    let normal = kiln(&["doctor"]);
    assert!(!String::from_utf8_lossy(&normal.stderr).contains("running"));

    let dir = tempfile::tempdir().unwrap();
    let out = kiln(&["man", "--out", dir.path().join("a").to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrote kiln.1"),
        "{}",
        text(&out)
    );
    let out = kiln(&["-q", "man", "--out", dir.path().join("b").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert!(dir.path().join("b/kiln.1").is_file());
}

#[test]
fn very_verbose_shows_what_commands_print() {
    if !kiln_exec::testing::require_tool_or_skip("mke2fs") {
        return;
    }
    let spec = examples().join("debian-12-ovh-byol.toml");
    let out = kiln(&["-vv", "plan", "--offline", spec.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("kiln: debug: running mke2fs -V"), "{stderr}");
    // mke2fs -V prints its version on stderr.
    assert!(stderr.contains("kiln: trace: mke2fs: mke2fs 1."), "{stderr}");
}

#[test]
fn bash_completion_knows_the_subcommands() {
    let out = kiln(&["completion", "bash"]);
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    assert!(script.contains("complete -F _kiln"), "{script}");
    for sub in [
        "build",
        "plan",
        "check",
        "boot",
        "deploy",
        "doctor",
        "completion",
        "man",
    ] {
        assert!(
            script.contains(&format!("kiln,{sub})")),
            "no {sub} in the bash completion"
        );
    }
    for shell in ["zsh", "fish"] {
        let out = kiln(&["completion", shell]);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("doctor"),
            "{shell}"
        );
    }
}

#[test]
fn man_pages_render_as_roff() {
    let out = kiln(&["man"]);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    assert!(page.contains("\n.TH kiln 1 "), "{page}");
    assert!(page.contains(".SH NAME") && page.contains(".SH SUBCOMMANDS"), "{page}");
    assert!(page.contains("Exit status:"), "{page}");

    let dir = tempfile::tempdir().unwrap();
    let out = kiln(&["man", "--out", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let build = std::fs::read_to_string(dir.path().join("kiln-build.1")).unwrap();
    assert!(
        build.contains(".TH kiln-build 1") && build.contains("verify\\-reproducible"),
        "{build}"
    );
}

#[test]
fn version_names_the_commit() {
    let out = kiln(&["--version"]);
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let commit = version
        .strip_prefix(concat!("kiln ", env!("CARGO_PKG_VERSION"), " (commit "))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{version}"));
    #[allow(clippy::disallowed_methods)] // the oracle
    let git = Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "--short", "HEAD"])
        .output();
    match git {
        Ok(g) if g.status.success() => assert_eq!(commit, String::from_utf8_lossy(&g.stdout).trim()),
        _ => assert_eq!(commit, "unknown"),
    }
}

#[test]
fn validate_offline_accepts_the_examples() {
    for example in ["debian-12-ovh-byol.toml", "debian-12-disk.toml"] {
        let spec = examples().join(example);
        let out = kiln(&["validate", "--offline", spec.to_str().unwrap()]);
        let t = text(&out);
        assert!(out.status.success(), "{example}: {t}");
        assert!(
            t.contains(&format!("{}: valid (offline", spec.display())),
            "{example}: {t}"
        );
        assert!(!t.contains("warning"), "{example}: {t}");
    }
}

/// A broken spec is rejected at its places: a duplicate key at both
/// definitions; once that is fixed, a time zone that the host's tz
/// database lacks (checked offline too).
#[test]
fn validate_offline_rejects_a_broken_spec() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("broken.toml");
    let source = "timezone = \"Europe/Pariss\"\n[image]\nname = \"x\"\nversion = \"1\"\n[base]\ndistro = \"debian\"\n\
                release = \"bookworm\"\nrelease = \"trixie\"\n[packages]\ninstall = [\"vim\"]\n[targets.ovh-byol]\n";
    std::fs::write(&spec, source).unwrap();
    let out = kiln(&["validate", "--offline", spec.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("error: duplicate key `release` in [base]"), "{t}");
    assert!(t.contains("broken.toml:8:1"), "{t}");
    assert!(t.contains("::: ") && t.contains("broken.toml:7:1"), "{t}");

    std::fs::write(&spec, source.replace("release = \"trixie\"\n", "")).unwrap();
    let out = kiln(&["validate", "--offline", spec.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("error: time zone `Europe/Pariss` is not in the tz database"),
        "{t}"
    );
    assert!(t.contains("broken.toml:1:12"), "{t}");
    assert!(t.contains("did you mean `Europe/Paris`?"), "{t}");
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

#[test]
fn boot_help_shows_each_medium_with_an_example() {
    let t = text(&kiln(&["boot", "--help"]));
    for want in [
        "--cdrom",
        "--usb",
        "kiln boot --cdrom ",
        "kiln boot --usb ",
        "El Torito",
    ] {
        assert!(t.contains(want), "`kiln boot --help` lacks {want:?}: {t}");
    }
}

/// A CD-ROM or a USB stick, not both; a CD-ROM is raw and no larger than
/// its image. Refused before QEMU runs (exit 2).
#[test]
fn boot_media_conflicts_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("live.iso");
    std::fs::write(&iso, vec![0u8; 4096]).unwrap();
    let iso = iso.to_str().unwrap();
    for (args, want) in [
        (
            &["boot", iso, "--cdrom", "--usb"][..],
            "the argument '--cdrom' cannot be used with '--usb'",
        ),
        (
            &["boot", iso, "--cdrom", "--disk-size", "+1GiB"][..],
            "the argument '--cdrom' cannot be used with '--disk-size <SIZE>'",
        ),
    ] {
        let out = kiln(args);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {t}");
        assert!(t.contains(want), "{args:?}: {t}");
    }

    let qcow2 = dir.path().join("live.qcow2");
    std::fs::write(&qcow2, b"QFI\xfb\0\0\0\x03").unwrap();
    let out = kiln(&["boot", qcow2.to_str().unwrap(), "--cdrom", "--timeout", "1"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("live.qcow2 is a qcow2 image, but a CD-ROM takes a raw ISO 9660 image"),
        "{t}"
    );
    assert!(t.contains("qemu-img convert -O raw "), "{t}");
    assert!(!t.contains("booting"), "nothing may run: {t}");
}

/// A config-2 live ISO without boot records, made by kiln's own ISO writer.
fn config_drive_iso(dir: &Path) -> PathBuf {
    use kiln_disk::iso::{write_iso_image, IsoEntry, IsoOptions};
    let iso = dir.join("live.iso");
    write_iso_image(
        &iso,
        &IsoOptions::new("config-2", 0),
        &[
            IsoEntry::file("live/vmlinuz", vec![0u8; 1024]),
            IsoEntry::file("live/initrd.img", "initrd"),
            IsoEntry::file(
                "boot/grub/grub.cfg",
                "menuentry live {\n linux /live/vmlinuz boot=live quiet\n initrd /live/initrd.img\n}\n",
            ),
            IsoEntry::file(
                "openstack/latest/meta_data.json",
                r#"{"uuid": "u-1", "hostname": "node-1"}"#,
            ),
            IsoEntry::file(
                "openstack/latest/network_data.json",
                r#"{"links": [{"id": "eth0"}], "networks": [{"link": "eth0", "type": "ipv4", "ip_address": "192.0.2.5/24"}]}"#,
            ),
        ],
    )
    .unwrap();
    iso
}

/// `kiln inspect X.iso` shows the label, live files, kernel line and
/// config drive, as text and as JSON.
#[test]
fn inspect_an_iso() {
    let dir = tempfile::tempdir().unwrap();
    let iso = config_drive_iso(dir.path());
    let path = iso.to_str().unwrap();
    let out = kiln(&["inspect", path]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for needle in [
        "volume \"config-2\"",
        "no El Torito boot catalog",
        "/live/vmlinuz",
        "boot=live quiet (initrd /live/initrd.img)",
        "hostname node-1",
        "network eth0: ipv4 192.0.2.5/24",
        "/openstack/latest/meta_data.json",
    ] {
        assert!(t.contains(needle), "{needle} missing from:\n{t}");
    }
    let out = kiln(&["inspect", "--json", path]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["kind"], "iso");
    assert_eq!(json["config_drive"]["hostname"], "node-1");
}

/// The iso contract fails on the boot rules and passes the config drive's.
#[test]
fn check_an_iso() {
    let dir = tempfile::tempdir().unwrap();
    let iso = config_drive_iso(dir.path());
    let out = kiln(&["check", iso.to_str().unwrap(), "--target", "iso"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    for needle in [
        "PASS iso9660",
        "FAIL bios-eltorito",
        "FAIL kernel",
        "PASS grub-cfg",
        "PASS config-drive",
        "does NOT meet the iso contract",
    ] {
        assert!(t.contains(needle), "{needle} missing from:\n{t}");
    }
}

#[test]
fn check_a_disk_without_a_partition_table() {
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank.raw");
    std::fs::File::create(&blank).unwrap().set_len(1 << 20).unwrap();
    let out = kiln(&["check", blank.to_str().unwrap(), "--target", "disk"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("FAIL gpt") && t.contains("does NOT meet the disk contract"),
        "{t}"
    );
}

/// `kiln publish aws` refuses bad input before sending anything (exit 2),
/// each time saying what to do. The endpoint is a closed port: a request
/// would fail differently.
#[test]
fn publish_aws_refuses_bad_input_before_sending() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("x.raw");
    std::fs::write(&raw, vec![1u8; 4096]).unwrap();
    let qcow = dir.path().join("x.qcow2");
    std::fs::write(&qcow, b"QFI\xfb\0\0\0\x03").unwrap();
    let manifest = serde_json::json!({"name": "x", "version": "1", "artifacts": [
        {"path": "x.raw", "format": "raw", "size": 4096, "sha512": "00"}]});
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    let home = dir.path().to_str().unwrap();
    let publish = |image: &Path, extra: &[&str], keys: bool| {
        let mut c = command(&["publish", "aws"]);
        c.arg(image).args(["--name", "x-1"]).args(extra).env("HOME", home);
        for v in [
            "AWS_PROFILE",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL",
            "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_CONFIG_FILE",
        ] {
            c.env_remove(v);
        }
        if keys {
            c.env("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
                .env("AWS_SECRET_ACCESS_KEY", "s");
        } else {
            c.env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY");
        }
        c.output().unwrap()
    };
    for (image, extra, keys, expect) in [
        (
            &qcow,
            &["--region", "us-east-1"][..],
            true,
            "qcow2 image, not a raw disk",
        ),
        (&qcow, &["--region", "us-east-1"][..], true, "qemu-img convert -O raw"),
        (&raw, &["--region", "eu-wset-1"][..], true, "did you mean `eu-west-1`?"),
        (&raw, &[][..], true, "no AWS region: pass --region"),
        (
            &raw,
            &["--region", "us-east-1"][..],
            false,
            ".aws/credentials [default]: no such file",
        ),
        (
            &raw,
            &["--region", "us-east-1", "--profile", "ci"][..],
            true,
            ".aws/credentials [ci]: no such file",
        ),
        (
            &raw,
            &["--region", "us-east-1", "--manifest", "/nonexistent.json"][..],
            true,
            "no manifest at /nonexistent.json",
        ),
    ] {
        let out = publish(image, extra, keys);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {t}");
        assert!(t.contains(expect), "{extra:?}: expected {expect:?} in {t}");
    }
}

#[test]
fn shell_refuses_a_stage_the_spec_lacks_and_lists_the_valid_ones() {
    let spec = examples().join("debian-12-ovh-byol.toml");
    let spec = spec.to_str().unwrap();
    for (stage, hint) in [
        ("finalise", ""),
        ("ovh-byol", "did you mean ovh-byol/finalise?"),
        ("ovh-byol/disk", "makes an artifact, not a tree"),
        ("disk/finalise", ""),
    ] {
        let out = kiln(&["shell", spec, "--stage", stage, "--", "true"]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{stage}: {t}");
        assert!(t.contains(&format!("no stage \"{stage}\"")), "{t}");
        assert!(
            t.contains("its stages with a tree: bootstrap, customise, ovh-byol/finalise"),
            "{t}"
        );
        assert!(t.contains(hint), "{stage}: {t}");
    }
    let out = kiln(&["shell", spec, "--kept", "/nonexistent/kiln-work", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--kept /nonexistent/kiln-work: no such directory"),
        "{}",
        text(&out)
    );
    let out = kiln(&["shell", "/nonexistent/spec.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn shell_help_says_where_changes_go_and_how_to_keep_them() {
    let out = kiln(&["shell", "--help"]);
    assert!(out.status.success());
    let t = text(&out);
    for needle in [
        "throwaway overlay",
        "[[files]]",
        "[[run]]",
        "KILN_SHELL",
        "-- dpkg -l",
        "--kept",
    ] {
        assert!(t.contains(needle), "kiln shell --help lacks {needle}: {t}");
    }
}

#[test]
fn on_error_takes_abort_shell_or_keep_and_not_with_verify_reproducible() {
    let spec = examples().join("debian-12-ovh-byol.toml");
    let spec = spec.to_str().unwrap();
    let out = kiln(&["build", "--on-error=ask", spec]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("[possible values: abort, shell, keep]"),
        "{}",
        text(&out)
    );
    for flag in ["--on-error=shell", "--step"] {
        let out = kiln(&["build", flag, "--verify-reproducible", spec]);
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", text(&out));
        assert!(text(&out).contains("cannot be used with"), "{flag}: {}", text(&out));
    }
    let help = text(&kiln(&["build", "--help"]));
    assert!(help.contains("--on-error") && help.contains("--step"), "{help}");
}

#[test]
fn interactive_boot_needs_a_terminal_and_starts_nothing_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    // stdin is /dev/null here: not a terminal.
    let out = command(&["boot", "--interactive", image.to_str().unwrap()])
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("stdin is not one"), "{t}");
    assert!(
        t.contains("kiln ssh IMAGE -- COMMAND"),
        "the error offers no way for scripts: {t}"
    );
    // Nothing was prepared: no VM directory, no console log.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from("disk.raw")], "{left:?}");
    let out = kiln(&["boot", "--interactive", "--json", image.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn ssh_refuses_a_missing_image_and_its_help_says_what_it_does() {
    let out = kiln(&["ssh", "/nonexistent/disk.qcow2", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("/nonexistent/disk.qcow2: no such file"),
        "{}",
        text(&out)
    );
    let help = text(&kiln(&["ssh", "--help"]));
    for needle in [
        "ed25519",
        "127.0.0.1",
        "powers the guest off",
        "-- cat /etc/hostname",
        "COMMAND's status",
    ] {
        assert!(help.contains(needle), "kiln ssh --help lacks {needle}: {help}");
    }
}

/// `kiln ssh` of an image whose guest shows a login prompt but never
/// answers SSH (a stand-in QEMU on PATH prints the prompt into the console
/// log and sleeps): a clear message, and the stand-in is stopped.
#[test]
fn ssh_to_an_image_without_an_ssh_server_says_so_and_leaves_nothing_running() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let qemu = bin.join("qemu-system-x86_64");
    std::fs::write(
        &qemu,
        "#!/bin/sh\n\
         for a in \"$@\"; do case \"$a\" in file,id=console,path=*) log=\"${a#file,id=console,path=}\";; esac; done\n\
         echo $$ > \"$FAKE_QEMU_PID\"\n\
         printf 'Debian GNU/Linux 12 kiln-ssh ttyS0\\n\\nkiln-ssh login: ' >> \"$log\"\n\
         exec sleep 300\n",
    )
    .unwrap();
    std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = dir.path().join("no-sshd.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let pid_file = dir.path().join("qemu.pid");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let started = std::time::Instant::now();
    let out = command(&["ssh", "--ssh-wait", "2", image.to_str().unwrap(), "--", "true"])
        .env("PATH", path)
        .env("FAKE_QEMU_PID", &pid_file)
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(
        t.contains("nothing answers SSH on port 22 2 s after the guest's login prompt"),
        "{t}"
    );
    assert!(t.contains("has no SSH server"), "{t}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    let pid = std::fs::read_to_string(&pid_file).expect("the stand-in QEMU ran");
    assert!(
        !Path::new("/proc").join(pid.trim()).exists(),
        "the stand-in QEMU (pid {}) is still running",
        pid.trim()
    );
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

/// A sample of the broken-spec corpus (kiln-spec's tests/fixtures/broken)
/// through the binary: `kiln plan` and `kiln build` refuse each with exit 2
/// and the located message with its hint, before doing anything (the
/// output and cache directories stay empty).
#[test]
fn broken_specs_stop_plan_and_build_before_any_work() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kiln-spec/tests/fixtures/broken");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 100, "{} broken specs", files.len());
    let tmp = tempfile::tempdir().unwrap();
    let (out, cache) = (tmp.path().join("out"), tmp.path().join("cache"));
    // Every ninth: each kind of problem (syntax, keys, types, paths, users,
    // targets, URLs) is in the sample.
    for file in files.iter().step_by(9) {
        let spec = file.to_str().unwrap();
        let name = file.file_name().unwrap().to_str().unwrap();
        let build = [
            "build",
            "--out",
            out.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            spec,
        ];
        for args in [&["plan", "--offline", spec][..], &build[..]] {
            let o = kiln(args);
            let t = text(&o);
            assert_eq!(o.status.code(), Some(2), "{name} {args:?}: {t}");
            assert!(
                t.contains("error:") && t.contains(name) && t.contains("help:"),
                "{name}: {t}"
            );
            assert!(!t.contains("panicked"), "{name}: {t}");
        }
        for dir in [&out, &cache] {
            let left: Vec<_> = std::fs::read_dir(dir)
                .map(|d| d.flatten().collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "{name}: {} holds {left:?}", dir.display());
        }
    }
}

/// `kiln build --cache-max-size` (or `KILN_CACHE_MAX_SIZE`) trims the stage
/// cache after the build, a failed one too: here the build fails at once
/// (its output directory is a file), and only the trimming is at work.
#[test]
fn cache_max_size_trims_the_cache_after_a_build() {
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    let cache = kiln_build::cache::Cache::open(&cache_dir).unwrap();
    for name in ["one", "two"] {
        let key = kiln_build::hash::Hasher::new("cli test").str("entry", name).finish();
        let src = tmp.path().join(name);
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("data"), vec![b'x'; 1 << 20]).unwrap();
        let mut pending = cache.begin(&key, "customise", "cli-test").unwrap();
        pending.adopt("layer", &src).unwrap();
        pending.commit(serde_json::json!({})).unwrap();
    }
    let entries = || cache.list().unwrap().len();
    assert_eq!(entries(), 2);
    let not_a_dir = tmp.path().join("out");
    std::fs::write(&not_a_dir, "").unwrap();
    let spec = examples().join("debian-12-ovh-byol.toml");
    let build = |extra: &[&str], env: Option<&str>| {
        let mut cmd = command(&["build", "--cache-dir", cache_dir.to_str().unwrap()]);
        cmd.args(extra).arg("--out").arg(&not_a_dir).arg(&spec);
        if let Some(v) = env {
            cmd.env("KILN_CACHE_MAX_SIZE", v);
        }
        cmd.output().unwrap()
    };

    // Under the limit: nothing goes.
    let out = build(&["--cache-max-size", "10GiB"], None);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(entries(), 2, "{}", text(&out));
    // 1.5 MiB from the environment: the least recently used of the two goes.
    let out = build(&[], Some("1536KiB"));
    assert_eq!(entries(), 1, "{}", text(&out));
    assert!(
        text(&out).contains("cache: removed 1 least recently used entries"),
        "{}",
        text(&out)
    );
    // A bad size is a usage error before any work.
    let out = build(&["--cache-max-size", "lots"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(entries(), 1);
}

/// Polls `done` every 50 ms for at most `secs` seconds.
fn wait_for(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    done()
}

/// `kiln boot --interactive` on a real pseudo-terminal (util-linux's
/// `script` gives kiln one as its controlling terminal) with a stand-in
/// QEMU on PATH that plays a guest on the console socket kiln gives it:
/// it prints a banner and a login prompt, echoes what it receives and
/// records it. The console reaches the terminal, the typed bytes reach
/// the guest unchanged (Ctrl-C among them, which would kill kiln if the
/// terminal were not raw), Ctrl-] ends kiln with exit 0, the stand-in is
/// stopped, the terminal's mode is restored and TMPDIR is left empty.
#[test]
fn interactive_boot_on_a_terminal_passes_keys_through_and_quits_on_ctrl_bracket() {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bin = d.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let qemu = bin.join("qemu-system-x86_64");
    // A guest on the serial console: QEMU serves `-chardev socket,...,path=SOCKET`.
    std::fs::write(
        &qemu,
        r#"#!/usr/bin/env python3
import os, socket, sys
path = None
for a in sys.argv[1:]:
    if a.startswith("socket,id=console,"):
        for kv in a.split(","):
            if kv.startswith("path="):
                path = kv[len("path="):]
if path is None:
    sys.exit("stand-in QEMU: no console socket in " + " ".join(sys.argv[1:]))
with open(os.environ["FAKE_QEMU_PID"], "w") as f:
    f.write(str(os.getpid()))
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen(1)
conn, _ = server.accept()
conn.sendall(b"Debian GNU/Linux 12 kiln-tty ttyS0\r\n\r\nkiln-tty login: ")
with open(os.environ["FAKE_QEMU_GOT"], "ab", buffering=0) as got:
    while True:
        data = conn.recv(4096)
        if not data:
            break
        got.write(data)
        conn.sendall(data)
"#,
    )
    .unwrap();
    std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = d.join("disk.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let tmp = d.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let (pid_file, got_file) = (d.join("qemu.pid"), d.join("got"));
    // Run on the terminal: its mode before and after, and kiln's status.
    let inner = d.join("on-tty.sh");
    std::fs::write(
        &inner,
        "stty -g > \"$D/stty.before\"\n\
         \"$KILN\" boot --interactive \"$D/disk.raw\"\n\
         echo $? > \"$D/status\"\n\
         stty -g > \"$D/stty.after\"\n",
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    #[allow(clippy::disallowed_methods)] // util-linux's script: the terminal under test
    let mut script = Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!("sh {}", inner.display()))
        .arg("/dev/null")
        .env("D", d)
        .env("KILN", env!("CARGO_BIN_EXE_kiln"))
        .env("KILN_ACCEL", "tcg")
        .env("PATH", path)
        .env("TMPDIR", &tmp)
        .env("FAKE_QEMU_PID", &pid_file)
        .env("FAKE_QEMU_GOT", &got_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("util-linux script is installed");
    let screen = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let screen = Arc::clone(&screen);
        let mut stdout = script.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                screen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let shown = |needle: &[u8]| screen.lock().unwrap().windows(needle.len()).any(|w| w == needle);
    let seen = || String::from_utf8_lossy(&screen.lock().unwrap()).into_owned();
    let mut keyboard = script.stdin.take().unwrap();
    let stop = |script: &mut std::process::Child| {
        let _ = script.kill();
        let _ = script.wait();
    };

    // The guest's prompt on the terminal means kiln's console pump runs,
    // so the terminal is raw by now.
    if !wait_for(30, || shown(b"kiln-tty login: ")) {
        stop(&mut script);
        panic!("the console never reached the terminal: {:?}", seen());
    }
    let typed = b"root\x03 still here\r";
    keyboard.write_all(typed).unwrap();
    keyboard.flush().unwrap();
    let got = || std::fs::read(&got_file).unwrap_or_default();
    if !wait_for(30, || got().len() >= typed.len()) {
        stop(&mut script);
        panic!("the guest got {:?} of {typed:?}; terminal: {:?}", got(), seen());
    }
    assert_eq!(got(), typed, "the guest got other bytes than typed");
    assert!(wait_for(10, || shown(typed)), "the guest's echo: {:?}", seen());
    keyboard.write_all(&[0x1d]).unwrap();
    keyboard.flush().unwrap();
    let ended = wait_for(30, || script.try_wait().unwrap().is_some());
    if !ended {
        stop(&mut script);
    }
    drop(keyboard);
    reader.join().unwrap();
    let mut err = String::new();
    script.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let t = seen();
    assert!(ended, "kiln did not end on Ctrl-]: {t}{err}");
    assert_eq!(
        std::fs::read_to_string(d.join("status")).unwrap_or_default().trim(),
        "0",
        "kiln's status after Ctrl-]: {t}{err}"
    );
    assert!(t.contains("Ctrl-] quits"), "{t}");
    assert!(t.contains("console closed (Ctrl-])"), "{t}");
    assert_eq!(got(), typed, "the guest got more after Ctrl-]");
    let (before, after) = (
        std::fs::read_to_string(d.join("stty.before")).unwrap(),
        std::fs::read_to_string(d.join("stty.after")).unwrap(),
    );
    assert!(!before.trim().is_empty());
    assert_eq!(before, after, "the terminal's mode is not restored");
    let pid = std::fs::read_to_string(&pid_file).expect("the stand-in QEMU ran");
    assert!(
        !Path::new("/proc").join(pid.trim()).exists(),
        "the stand-in QEMU (pid {}) is still running",
        pid.trim()
    );
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"))
}

/// `kiln shell` with an empty stage cache where it may not build the tree
/// (`--no-build`, or not root): exit 3 with a message that says the tree is
/// not cached, why kiln cannot build it and what to run instead; nothing
/// is left in the work directory or TMPDIR (world-writable here, so the
/// unprivileged runs could have left something). The unprivileged runs
/// go through util-linux's setpriv (as nobody) when the tests run as root,
/// as they do in CI; the root run needs root.
#[test]
fn shell_without_a_cached_tree_and_no_way_to_build_it_says_what_to_run() {
    use std::os::unix::fs::PermissionsExt;
    let spec = examples().join("debian-12-ovh-byol.toml");
    let spec = spec.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cache, work, tmp) = (
        dir.path().join("cache"),
        dir.path().join("work"),
        dir.path().join("tmp"),
    );
    for d in [dir.path(), &cache, &work, &tmp] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let root = running_as_root();
    let not_cached = format!(
        "no cached tree: stage bootstrap of {spec} is not in the stage cache ({})",
        cache.display()
    );
    let mut cases = vec![
        (
            false,
            true,
            format!("kiln shell runs as root only (it mounts the tree and chroots into it); build it with `sudo kiln build {spec}`, then run `sudo kiln shell`"),
        ),
        (
            false,
            false,
            format!("building it needs root (mmdebstrap, chroot and mounts), as entering it does; run `sudo kiln shell {spec}` (it builds the missing stages first)"),
        ),
    ];
    if root {
        cases.push((
            true,
            true,
            format!("; build it with `kiln build {spec}`, or leave out --no-build"),
        ));
    }
    for (as_root, no_build, advice) in cases {
        let mut args = vec![
            "shell",
            spec,
            "--cache-dir",
            cache.to_str().unwrap(),
            "--work-dir",
            work.to_str().unwrap(),
        ];
        if no_build {
            args.push("--no-build");
        }
        args.extend(["--", "true"]);
        let mut c = if root && !as_root {
            #[allow(clippy::disallowed_methods)] // util-linux's setpriv: kiln as nobody
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                env!("CARGO_BIN_EXE_kiln"),
            ])
            .args(&args)
            .stdin(Stdio::null())
            .env("KILN_ACCEL", "tcg");
            c
        } else {
            command(&args)
        };
        let out = c.env("TMPDIR", &tmp).output().unwrap();
        let t = text(&out);
        let case = format!("as root: {as_root}, --no-build: {no_build}");
        assert_eq!(out.status.code(), Some(3), "{case}: {t}");
        assert!(t.contains(&not_cached), "{case}: {t}");
        assert!(t.contains(&advice), "{case}: expected {advice:?} in {t}");
        for d in [&cache, &work, &tmp] {
            let left: Vec<_> = std::fs::read_dir(d).unwrap().flatten().map(|e| e.file_name()).collect();
            assert!(left.is_empty(), "{case}: left in {}: {left:?}", d.display());
        }
    }
}
