//! Slow, real tests: real Debian builds with mmdebstrap against the Debian
//! archive, checked with kiln's own `check` and `inspect` and with the
//! reference tools. They need root and network access to a Debian mirror;
//! `scripts/test.sh` runs them (`cargo test -- --ignored`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

struct OutDir(PathBuf);

impl OutDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

fn build_and_check(spec: &str, image: &str, fs: &str, extra: &[&str]) {
    // A fresh build into the shared location, which the deploy tests reuse.
    let out_dir = shared_out(spec);
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = OutDir(out_dir);
    // SHA512SUMS is signed with a throwaway SSH key, and `kiln verify`
    // checks it below.
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("release");
    let made = run(tool("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key));
    assert!(made.status.success(), "{}", text(&made));
    let started = Instant::now();
    let res = run(kiln()
        .args(["build", "--log-format", "json", "--out"])
        .arg(out.path())
        .arg("--sign-key")
        .arg(&key)
        .args(extra)
        .arg(example(spec)));
    let log = text(&res);
    assert!(res.status.success(), "build failed:\n{log}");
    eprintln!("built {spec} in {:?}", started.elapsed());

    // One JSON object per line: a start and an end per stage that ran; an
    // end with status "reused" or "skipped" for what the cache provided.
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&res.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json event"))
        .collect();
    for stage in [
        "bootstrap",
        "customise",
        "ovh-byol/finalise",
        "ovh-byol/filesystem",
        "ovh-byol/disk",
        "ovh-byol/convert",
        "checksums",
    ] {
        let end = events
            .iter()
            .find(|e| e["event"] == "stage-end" && e["stage"] == stage)
            .unwrap_or_else(|| panic!("no end for {stage}: {log}"));
        if end["status"] == "ok" {
            assert!(end["duration_s"].as_f64().is_some(), "{end}");
            assert!(
                events
                    .iter()
                    .any(|e| e["event"] == "stage-start" && e["stage"] == stage),
                "no start for {stage}: {log}"
            );
        } else {
            assert!(
                !extra.contains(&"--no-cache") && (end["status"] == "reused" || end["status"] == "skipped"),
                "{stage}: {end}"
            );
        }
    }
    let rss = events.last().unwrap()["peak_rss_kib"].as_u64().unwrap();
    eprintln!("kiln peak RSS: {} MiB", rss / 1024);

    let qcow = out.path().join(image);
    assert!(qcow.is_file());
    assert!(leftovers(out.path()).is_empty(), "{:?}", leftovers(out.path()));
    assert!(mounts_below(out.path()).is_empty());

    // Checksums verify with the reference tool.
    let sums = run(tool("sha512sum").arg("-c").arg("SHA512SUMS").current_dir(out.path()));
    assert!(sums.status.success(), "{}", text(&sums));
    let side = run(tool("sha512sum")
        .arg("-c")
        .arg(format!("{image}.sha512"))
        .current_dir(out.path()));
    assert!(side.status.success(), "{}", text(&side));

    // The manifest says what the issue asks.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("manifest.json")).unwrap()).unwrap();
    let artifact = &manifest["artifacts"][0];
    assert_eq!(artifact["path"], image);
    assert_eq!(artifact["format"], "qcow2");
    assert_eq!(
        artifact["size"].as_u64().unwrap(),
        std::fs::metadata(&qcow).unwrap().len()
    );
    assert_eq!(manifest["efiBootloaderPath"], "\\efi\\debian\\grubx64.efi");
    assert_eq!(manifest["partitions"].as_array().unwrap().len(), 1);
    assert_eq!(manifest["partitions"][0]["filesystem"], fs);
    assert!(manifest["stages"].as_array().unwrap().len() >= 7);
    assert!(
        manifest["git"]["commit"].as_str().is_some(),
        "spec is in a git repository"
    );
    let packages = manifest["packages"].as_array().unwrap();
    for p in [
        "cloud-init",
        "mdadm",
        "lvm2",
        "grub-pc-bin",
        "grub-efi-amd64-bin",
        "linux-image-amd64",
        "curl",
    ] {
        assert!(
            packages.iter().any(|x| x["name"] == p),
            "{p} missing from manifest packages"
        );
    }
    // The SBOM beside the image: one SPDX package per package of the
    // manifest (plus the image), the kernel and GRUB with the manifest's
    // versions and Debian package URLs.
    let sbom_name = format!("{image}.spdx.json");
    assert_eq!(artifact["sbom"]["path"], sbom_name.as_str());
    let sbom: serde_json::Value = serde_json::from_slice(&std::fs::read(out.path().join(&sbom_name)).unwrap()).unwrap();
    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");
    let spdx = sbom["packages"].as_array().unwrap();
    assert_eq!(spdx.len(), packages.len() + 1, "one SPDX package per installed package");
    for p in ["linux-image-amd64", "grub-pc-bin", "grub-efi-amd64-bin", "grub-common"] {
        let listed = packages.iter().find(|x| x["name"] == p).unwrap();
        let described = spdx
            .iter()
            .find(|x| x["name"] == p)
            .unwrap_or_else(|| panic!("{p} missing from the SBOM"));
        assert_eq!(described["versionInfo"], listed["version"], "{p}");
        let purl = described["externalRefs"][0]["referenceLocator"].as_str().unwrap();
        assert!(
            purl.starts_with(&format!("pkg:deb/debian/{p}@")) && purl.ends_with("?arch=amd64"),
            "{purl}"
        );
    }
    let sums = std::fs::read_to_string(out.path().join("SHA512SUMS")).unwrap();
    assert!(sums.contains(&format!("  {sbom_name}\n")), "{sums}");
    // The SPDX project's validator accepts it (a second or so).
    let pyspdxtools = std::env::var_os("KILN_PYSPDXTOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/opt/kiln-test/venv/bin/pyspdxtools".into());
    assert!(
        pyspdxtools.is_file(),
        "{} is missing: run scripts/install-deps.sh",
        pyspdxtools.display()
    );
    #[allow(clippy::disallowed_methods)] // the oracle
    let valid = run(Command::new(&pyspdxtools).arg("-i").arg(out.path().join(&sbom_name)));
    assert!(valid.status.success(), "pyspdxtools: {}", text(&valid));
    // `kiln verify` passes on the output, the signature by that key included.
    let verify = run(kiln()
        .arg("verify")
        .arg(out.path())
        .arg("--key")
        .arg(key.with_extension("pub")));
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(
        text(&verify).contains("PASS signature  SHA512SUMS.sig"),
        "{}",
        text(&verify)
    );

    let payload = &manifest["ovhReinstall"];
    assert_eq!(payload["operatingSystem"], "byolinux_64");
    assert_eq!(payload["customizations"]["imageCheckSum"], artifact["sha512"]);
    // The shape of manifest.json, with what depends on the archive's state,
    // the host's tools and the commit redacted.
    insta::assert_json_snapshot!(format!("manifest-{fs}"), manifest, {
        ".packages" => "[packages]",
        ".tools" => "[tool versions]",
        ".stages[].hash" => "[hash]",
        ".spec.hash" => "[hash]",
        ".spec.path" => "[path]",
        ".git.commit" => "[commit]",
        ".git.dirty" => "[dirty]",
        ".artifacts[].sha512" => "[sha512]",
        ".artifacts[].sbom.sha512" => "[sha512]",
        ".artifacts[].size" => "[size]",
        ".partitions[].size" => "[size]",
        ".partitions[].uuid" => "[uuid]",
        ".ovhReinstall.customizations.imageCheckSum" => "[sha512]",
    });

    // qemu-img agrees it is a sane, compressed qcow2.
    let info = run(tool("qemu-img").args(["check", "-f", "qcow2"]).arg(&qcow));
    assert!(info.status.success(), "{}", text(&info));

    // kiln's own contract check passes, also with enough RAM, and fails with too little.
    let check = run(kiln()
        .args(["check", "--target", "ovh-byol", "--json", "--ram", "32GiB"])
        .arg(&qcow));
    assert!(check.status.success(), "{}", text(&check));
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(report["passed"], true);
    let small = run(kiln()
        .args(["check", "--target", "ovh-byol", "--ram", "3GiB"])
        .arg(&qcow));
    assert_eq!(small.status.code(), Some(1), "{}", text(&small));

    let inspect = run(kiln().args(["inspect", "--json"]).arg(&qcow));
    assert!(inspect.status.success(), "{}", text(&inspect));
    let inspect = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        inspect.contains("6.1.0-"),
        "no Debian 12 kernel in inspect output: {inspect}"
    );
    assert!(inspect.contains("efiBootloaderPath"), "no embedded manifest: {inspect}");
}

#[test]
#[ignore = "slow: real Debian build (root, network to a Debian mirror)"]
fn builds_and_checks_the_ext4_example() {
    // Every stage really runs here; the XFS build may reuse the shared ones.
    build_and_check(
        "debian-12-ovh-byol.toml",
        "debian-12-byol-1.0.0.qcow2",
        "ext4",
        &["--no-cache"],
    );
}

#[test]
#[ignore = "slow: real Debian build (root, network to a Debian mirror)"]
fn builds_and_checks_the_xfs_example() {
    build_and_check(
        "debian-12-ovh-byol-xfs.toml",
        "debian-12-byol-xfs-1.0.0.qcow2",
        "xfs",
        &[],
    );
}

/// A spec in a temp dir whose `[[run]]` step fails after printing
/// something. Its packages are the BYOL example's, so that, built with
/// [`example_epoch`], its bootstrap is the example's cached one.
fn failing_spec(dir: &Path) -> PathBuf {
    let spec = dir.join("fail.toml");
    std::fs::write(
        &spec,
        "timezone = \"Etc/UTC\"\n[image]\nname = \"fail\"\nversion = \"1\"\n\
         [base]\ndistro = \"debian\"\nrelease = \"bookworm\"\ncomponents = [\"main\"]\n\
         [packages]\ninstall = [\"curl\", \"less\", \"vim-tiny\"]\n\
         [[run]]\nname = \"break on purpose\"\nscript = \"echo about to fail\\necho the-reason >&2\\nexit 3\"\n\
         [targets.ovh-byol]\n",
    )
    .unwrap();
    spec
}

#[test]
#[ignore = "slow: real Debian bootstrap (root, network to a Debian mirror)"]
fn a_failing_run_step_names_the_step_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    let spec = failing_spec(dir.path());
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // An earlier build's output must survive a failed build.
    std::fs::write(out.join("fail-1.qcow2"), "previous build").unwrap();
    let loops_before = loop_devices();

    let res = run(kiln()
        .env("SOURCE_DATE_EPOCH", example_epoch())
        .arg("build")
        .arg("--out")
        .arg(&out)
        .arg(&spec));
    let msg = text(&res);
    // 3: the run failed (2 would say that nothing ran).
    assert_eq!(res.status.code(), Some(3), "{msg}");
    assert!(msg.contains("break on purpose"), "error does not name the step: {msg}");
    assert!(
        msg.contains("the-reason"),
        "error does not show the script's output tail: {msg}"
    );
    assert!(msg.contains("exited with status 3"), "{msg}");
    assert!(msg.contains("stage customise failed"), "{msg}");

    assert_eq!(
        std::fs::read_to_string(out.join("fail-1.qcow2")).unwrap(),
        "previous build"
    );
    assert!(!out.join("manifest.json").exists());
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
    assert!(mounts_below(dir.path()).is_empty(), "{:?}", mounts_below(dir.path()));
    assert_eq!(loop_devices(), loops_before);
    assert!(processes_mentioning(&out.to_string_lossy()).is_empty());
}

#[test]
#[ignore = "slow: real Debian bootstrap (root, network to a Debian mirror)"]
fn sigint_during_bootstrap_cleans_up() {
    let dir = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    let spec = failing_spec(dir.path());
    let out = dir.path().join("out");
    let loops_before = loop_devices();

    // --no-cache: a real bootstrap even when the example's is cached.
    let mut child = kiln()
        .args(["build", "--no-cache", "--log-format", "json", "--out"])
        .arg(&out)
        .arg(&spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until mmdebstrap is busy (it has mounted things inside its tree).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let busy = processes_mentioning("mmdebstrap")
            .iter()
            .any(|p| p.contains(&*out.to_string_lossy()));
        if busy || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        child.try_wait().unwrap().is_none(),
        "build ended before it could be interrupted"
    );
    #[allow(clippy::disallowed_methods)]
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let res = child.wait_with_output().unwrap();
    let msg = text(&res);
    assert_eq!(res.status.code(), Some(130), "{msg}");
    assert!(msg.contains("interrupted"), "{msg}");

    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
    assert!(mounts_below(dir.path()).is_empty(), "{:?}", mounts_below(dir.path()));
    assert_eq!(loop_devices(), loops_before);
    assert!(
        processes_mentioning(&out.to_string_lossy()).is_empty(),
        "{:?}",
        processes_mentioning(&out.to_string_lossy())
    );
}

#[test]
#[ignore = "slow: real build preflight (root, mmdebstrap); stops before the bootstrap"]
fn a_build_whose_json_reader_is_gone_stops_as_if_interrupted() {
    let dir = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    let spec = failing_spec(dir.path());
    let out = dir.path().join("out");
    let loops_before = loop_devices();
    // The reader of the events leaves before the first one.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let res = kiln()
        .args(["build", "--no-cache", "--log-format", "json", "--out"])
        .arg(&out)
        .arg(&spec)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let msg = text(&res);
    assert_eq!(res.status.code(), Some(130), "{msg}");
    assert!(msg.contains("cannot write build events to stdout"), "{msg}");
    assert!(msg.contains("interrupted; cleaned up"), "{msg}");
    assert!(!msg.contains("panicked"), "{msg}");
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
    assert!(!out.join("manifest.json").exists());
    assert!(mounts_below(dir.path()).is_empty(), "{:?}", mounts_below(dir.path()));
    assert_eq!(loop_devices(), loops_before);
}

/// The rootfs example: a zstd tarball of the tree that `kiln check
/// --target tar` passes and GNU tar lists with ping's file capability.
#[test]
#[ignore = "slow: real Debian build of the rootfs example (root; its bootstrap is shared with the disk example's)"]
fn builds_and_checks_the_rootfs_tarball() {
    let tarball = example_image("debian-12-rootfs.toml", "debian-12-rootfs-1.0.0-rootfs.tar.zst");
    let check = run(kiln().arg("check").arg(&tarball).args(["--target", "tar"]));
    assert!(check.status.success(), "kiln check --target tar:\n{}", text(&check));
    let listing = run(tool("tar")
        .args(["--zstd", "--xattrs", "--xattrs-include=*", "-tvvf"])
        .arg(&tarball));
    assert!(listing.status.success(), "{}", text(&listing));
    let listing = String::from_utf8_lossy(&listing.stdout);
    let ping = listing
        .lines()
        .skip_while(|l| !l.ends_with("./usr/bin/ping"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        ping.contains("security.capability"),
        "ping lost its file capability in the tarball: {ping:?}"
    );
    assert!(
        // A symlink to ../usr/lib/os-release in Debian.
        listing.lines().any(|l| l.contains(" ./etc/os-release")),
        "no /etc/os-release in the tarball"
    );
}
