//! Slow, real tests: `kiln build` of a small spec per non-Debian family
//! (`distro = "arch"`, `distro = "rhel"`) into a `tar` target, against a
//! local repository the test builds itself (no Arch or Rocky mirror is
//! reachable from kiln's build machines), then `kiln check --target tar`
//! and GNU tar's own listing of the archive.
//!
//! The repositories are those of `crates/kiln-build/tests/families.rs`
//! (`crates/kiln-build/tests/fixtures/repos.rs`): their `kiln-base`
//! carries a static busybox (Debian's `busybox-static`) with the applets
//! the build's chroot steps run, the mount points and passwd/shadow/group,
//! so every stage runs as it does for a real tree: bootstrap (pacstrap;
//! `dnf --installroot`), the host-side install and removal, the
//! customisation script (time zone, locale, `passwd -l root`), the `tar`
//! finalisation, the cleanup, the package listing into `manifest.json`,
//! and the archive.
//!
//! Needs root and the tools of `scripts/install-deps.sh`. Run with
//! `cargo test -p kiln --test real_families -- --ignored --nocapture`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_exec::WorkDir;

mod common;
use common::*;

#[path = "../../kiln-build/tests/fixtures/repos.rs"]
mod repos;

fn assert_root() {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or_default();
    assert_eq!(uid.split_whitespace().nth(1), Some("0"), "this test needs root");
}

const PACKAGES: &str = r#"
[packages]
install = ["hello"]
remove = ["kiln-extra"]

[targets.tar]
"#;

/// Builds `spec` (written into `work`), checks the tarball with `kiln
/// check` and GNU tar, and returns the archive's member names.
fn build_and_check(work: &Path, name: &str, spec: &str) -> Vec<String> {
    let spec_path = work.join(format!("{name}.toml"));
    fs::write(&spec_path, spec).unwrap();
    let out = work.join("out");
    let started = Instant::now();
    // A stage cache of its own, deleted with `work`: the repository's
    // path, new at every run, is part of the stage keys, so the shared
    // cache would only gather entries no later run can use.
    let res = run(kiln()
        .args(["build", "--out"])
        .arg(&out)
        .arg("--cache-dir")
        .arg(work.join("cache"))
        .arg("--work-dir")
        .arg(work.join("build-work"))
        .arg(&spec_path));
    if !res.status.success() {
        let log = fs::read_to_string(out.join(format!("{name}-1.build.log"))).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "kiln build failed:\n{}\nend of the build log:\n{}",
            text(&res),
            tail.join("\n")
        );
    }
    eprintln!("{name}: kiln build took {:.1?}", started.elapsed());

    let tarball = out.join(format!("{name}-1-rootfs.tar.zst"));
    assert!(tarball.is_file(), "no {}:\n{}", tarball.display(), text(&res));
    let check = run(kiln().args(["check", "--target", "tar"]).arg(&tarball));
    assert!(check.status.success(), "kiln check failed:\n{}", text(&check));

    // The package list, exactly: kiln-extra came with the base set and was removed.
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let packages: Vec<(&str, &str)> = manifest["packages"]
        .as_array()
        .expect("manifest.json has no packages list")
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["version"].as_str().unwrap()))
        .collect();
    assert_eq!(
        packages.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        ["hello", "kiln-base", "kiln-libgreet"],
        "{packages:?}"
    );
    assert!(packages.iter().all(|(_, v)| v.starts_with("1.0-1")), "{packages:?}");

    // GNU tar, an oracle independent of kiln's reader.
    let list = run(tool("tar").arg("--zstd").arg("-tf").arg(&tarball));
    assert!(list.status.success(), "{}", text(&list));
    let names: Vec<String> = String::from_utf8(list.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_owned())
        .collect();
    let has = |p: &str| names.iter().any(|n| n == p);
    for present in [
        "usr/share/hello/hello",
        "usr/share/kiln-libgreet/greet",
        "usr/bin/busybox",
        "etc/os-release",
    ] {
        assert!(has(present), "{present} missing from the archive");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("usr/share/kiln-extra")),
        "the removed package's files are in the archive"
    );
    let hello = run(tool("tar")
        .arg("--zstd")
        .arg("-xOf")
        .arg(&tarball)
        .arg("./usr/share/hello/hello"));
    assert_eq!(String::from_utf8_lossy(&hello.stdout), "hello from kiln\n");
    // The customisation ran in the tree.
    let localtime = run(tool("tar")
        .arg("--zstd")
        .arg("-tvf")
        .arg(&tarball)
        .arg("./etc/localtime"));
    assert!(
        String::from_utf8_lossy(&localtime.stdout).contains("-> /usr/share/zoneinfo/Etc/UTC"),
        "{}",
        text(&localtime)
    );
    names
}

fn scratch(prefix: &str) -> WorkDir {
    WorkDir::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")), prefix).unwrap()
}

#[test]
#[ignore = "slow: root, pacstrap, a full kiln build; see the module docs"]
fn arch_spec_builds_into_a_tar_target_from_a_local_repository() {
    assert_root();
    let work = scratch("real-families-arch-");
    let mirror = repos::arch_repo(&work.path().join("repo"));
    let spec = format!(
        "[image]\nname = \"kilntest-arch\"\nversion = \"1\"\n\n[base]\ndistro = \"arch\"\n\
         mirror = \"{mirror}\"\nrepos = [\"kilntest\"]\ngpgcheck = false\n{PACKAGES}"
    );
    let names = build_and_check(work.path(), "kilntest-arch", &spec);
    assert!(names.iter().any(|n| n == "var/lib/pacman/local/hello-1.0-1/desc"));
    // The cleanup emptied pacman's sync databases.
    assert!(
        !names.iter().any(|n| n.starts_with("var/lib/pacman/sync/")),
        "{names:?}"
    );
}

#[test]
#[ignore = "slow: root, dnf --installroot, a full kiln build; see the module docs"]
fn rhel_spec_builds_into_a_tar_target_from_a_local_signed_repository() {
    assert_root();
    let work = scratch("real-families-rhel-");
    let repo = repos::rpm_repo(&work.path().join("repo"));
    let key: PathBuf = work.path().join("RPM-GPG-KEY-kilntest");
    fs::copy(&repo.key, &key).unwrap();
    let spec = format!(
        "[image]\nname = \"kilntest-rhel\"\nversion = \"1\"\n\n[base]\ndistro = \"rhel\"\n\
         distribution = \"rocky\"\nrelease = \"9\"\n\n[[base.repos]]\nname = \"kilntest\"\n\
         baseurl = \"file://{}\"\ngpgkey = \"RPM-GPG-KEY-kilntest\"\n{PACKAGES}",
        repo.dir.display()
    );
    let names = build_and_check(work.path(), "kilntest-rhel", &spec);
    // The repository and its key stay in the image; first boot relabels.
    for present in [
        "etc/yum.repos.d/kiln-kilntest.repo",
        "etc/pki/rpm-gpg/RPM-GPG-KEY-kiln-kilntest",
        ".autorelabel",
    ] {
        assert!(names.iter().any(|n| n == present), "{present} missing from the archive");
    }
}
