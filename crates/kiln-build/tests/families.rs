//! Slow and privileged: the Arch and RHEL-family backends for real, against
//! small repositories the tests build themselves, since no Arch or Rocky
//! mirror is reachable from kiln's build machines. Each test makes four
//! tiny packages (a base with /etc/os-release, `hello` that depends on
//! `kiln-libgreet`, and `kiln-extra` to remove), indexes them (makepkg and
//! repo-add; rpmbuild, rpmsign with a throwaway GPG key, createrepo_c),
//! then runs the family's own bootstrap command, host-side install and
//! removal, and package listing, exactly as the build calls them, into a
//! tree directory, and checks the files and the package list.
//!
//! Needs root (pacstrap's mounts, dnf's installroot) and the tools of
//! `scripts/install-deps.sh`. Run with
//! `cargo test -p kiln-build --test families -- --ignored --nocapture`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_build::bootstrap::{BootstrapRequest, Repo};
use kiln_build::distro::{DistroFamily, ARCH, RHEL};
use kiln_exec::{Cmd, WorkDir};

#[path = "fixtures/repos.rs"]
mod repos;

fn assert_root() {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or_default();
    assert_eq!(uid.split_whitespace().nth(1), Some("0"), "this test needs root");
}

fn request(distro: kiln_spec::Distro, release: &str, repo: Repo, include: &[&str]) -> BootstrapRequest {
    BootstrapRequest {
        distro,
        release: release.into(),
        variant: String::new(),
        architecture: "amd64".into(),
        sources: vec![],
        include: include.iter().map(|p| (*p).to_owned()).collect(),
        download: vec![],
        download_dir: String::new(),
        extra_sources: vec![],
        snapshot: false,
        repos: vec![repo],
        image: None,
    }
}

fn run(program: &str, args: &[String], what: &str) {
    Cmd::in_mount_namespace(program)
        .args(args)
        .on_line(|l| eprintln!("  | {l}"))
        .run()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

/// Bootstrap, install `hello`, remove `kiln-extra`, list: what the build
/// does with a family, through the same trait methods.
fn exercise(family: &dyn DistroFamily, req: &BootstrapRequest, work: &Path) -> PathBuf {
    let tree = work.join("tree");
    let scratch = work.join("scratch");
    family.prepare_packages(req, &scratch).unwrap();
    let started = Instant::now();
    let (program, args) = family.bootstrap_command(req, &tree, &scratch, None);
    run(program, &args, "bootstrapping");
    eprintln!("bootstrap: {:.1?}", started.elapsed());
    assert!(fs::read_to_string(tree.join("etc/os-release"))
        .unwrap()
        .contains("ID=kilntest"));
    assert!(tree.join("usr/share/kiln-extra/extra").exists());
    let names = |tree: &Path| -> Vec<String> {
        family
            .installed_packages(tree)
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect()
    };
    assert_eq!(names(&tree), ["kiln-base", "kiln-extra"]);

    let (program, args) = family.host_install(req, &tree, &scratch, &["hello".into()]).unwrap();
    run(program, &args, "installing hello");
    assert_eq!(
        fs::read_to_string(tree.join("usr/share/hello/hello")).unwrap(),
        "hello from kiln\n"
    );
    assert!(
        tree.join("usr/share/kiln-libgreet/greet").exists(),
        "the dependency was not installed"
    );

    let (program, args) = family
        .host_remove(req, &tree, &scratch, &["kiln-extra".into()])
        .unwrap();
    run(program, &args, "removing kiln-extra");
    assert!(!tree.join("usr/share/kiln-extra/extra").exists());

    let packages = family.installed_packages(&tree).unwrap();
    assert_eq!(
        packages.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["hello", "kiln-base", "kiln-libgreet"]
    );
    assert!(packages.iter().all(|p| p.version.starts_with("1.0-1")), "{packages:?}");
    tree
}

#[test]
#[ignore = "slow: root, pacstrap; see the module docs"]
fn arch_bootstrap_install_remove_list_against_a_local_repository() {
    assert_root();
    let work = WorkDir::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")), "families-arch-").unwrap();
    let mirror = repos::arch_repo(work.path());
    let req = request(
        kiln_spec::Distro::Arch,
        "rolling",
        Repo {
            name: "kilntest".into(),
            url: mirror,
            key: None,
            gpgcheck: false,
        },
        &["kiln-base", "kiln-extra"],
    );
    let tree = exercise(&ARCH, &req, work.path());
    assert!(tree.join("var/lib/pacman/local/hello-1.0-1/desc").exists());
}

#[test]
#[ignore = "slow: root, dnf --installroot; see the module docs"]
fn rhel_bootstrap_install_remove_list_against_a_local_signed_repository() {
    assert_root();
    let work = WorkDir::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")), "families-rhel-").unwrap();
    let repos::RpmRepo { dir: repo, key, top } = repos::rpm_repo(work.path());
    let req = request(
        kiln_spec::Distro::Rhel,
        "9",
        Repo {
            name: "kilntest".into(),
            url: format!("file://{}", repo.display()),
            key: Some(key.display().to_string()),
            gpgcheck: true,
        },
        &["kiln-base", "kiln-extra"],
    );
    let tree = exercise(&RHEL, &req, work.path());
    // The repository stays in the image, checked against the key it carries.
    let repo_file = fs::read_to_string(tree.join("etc/yum.repos.d/kiln-kilntest.repo")).unwrap();
    assert!(
        repo_file.contains("gpgcheck=1\n")
            && repo_file.contains("gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-kiln-kilntest"),
        "{repo_file}"
    );
    assert!(tree.join("etc/pki/rpm-gpg/RPM-GPG-KEY-kiln-kilntest").exists());
    assert!(
        tree.join("var/lib/rpm").is_dir(),
        "the rpm database is not where the image's rpm looks"
    );

    // An unsigned package in a repository that checks signatures is refused.
    let unsigned_repo = work.path().join("unsigned");
    fs::create_dir_all(&unsigned_repo).unwrap();
    Cmd::new("rpmbuild")
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .args(["--define", "_rpmdir %{_topdir}/UNSIGNED", "-bb"])
        .arg(top.join("SPECS/hello.spec"))
        .run()
        .unwrap();
    for e in fs::read_dir(top.join("UNSIGNED/noarch")).unwrap() {
        let p = e.unwrap().path();
        fs::copy(&p, unsigned_repo.join(p.file_name().unwrap())).unwrap();
    }
    Cmd::new("createrepo_c")
        .arg("--quiet")
        .arg(&unsigned_repo)
        .run()
        .unwrap();
    let mut bad = req.clone();
    bad.repos[0].url = format!("file://{}", unsigned_repo.display());
    bad.include = vec!["hello".into()];
    let scratch = work.path().join("scratch-unsigned");
    RHEL.prepare_packages(&bad, &scratch).unwrap();
    let (program, args) = RHEL.bootstrap_command(&bad, &work.path().join("tree-unsigned"), &scratch, None);
    let (status, _) = Cmd::in_mount_namespace(program).args(&args).run_status().unwrap();
    assert!(
        !status.success(),
        "dnf installed unsigned packages from a repository with gpgcheck=1"
    );
}
