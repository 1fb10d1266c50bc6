//! `kiln doctor`: can this host build and boot images? Every external tool
//! of the registry (found or missing, with its Debian package), then what no
//! package list shows: root, overlayfs, private mount namespaces, OVMF, and
//! whether KVM can run a guest. Ends with the exact `apt-get install` line
//! for what is missing. Non-goals: installing anything, distributions other
//! than Debian and its derivatives (the package names are Debian's).

use std::path::Path;

use anyhow::Result;
use kiln_exec::{Tool, TOOLS};

use crate::exit::Exit;
use crate::output::outln;

/// The Debian package with the OVMF firmware kiln boots UEFI guests with.
const OVMF_PACKAGE: &str = "ovmf";

/// One host check beyond the tool table.
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
    /// How to fix it when it fails: a package to install, or what to do.
    fix: Fix,
    /// A failure here stops builds or boots (a slow accelerator does not).
    required: bool,
}

enum Fix {
    Package(&'static str),
    Advice(&'static str),
}

pub(crate) fn run() -> Result<Exit> {
    let found = |name: &str| kiln_exec::which(name).is_some();

    outln!("{:<20} {:<8} {:<16} used for", "tool", "status", "package")?;
    for t in TOOLS {
        outln!(
            "{:<20} {:<8} {:<16} {}{}",
            t.name,
            if found(t.name) { "found" } else { "MISSING" },
            t.package,
            t.purpose,
            if t.test_only { " (tests only)" } else { "" }
        )?;
    }

    let checks = [root(), overlayfs(), unshare(), ovmf(), kvm()];
    outln!("\n{:<20} {:<8} detail", "host", "status")?;
    for c in &checks {
        let status = match (c.ok, c.required) {
            (true, _) => "ok",
            (false, true) => "FAIL",
            (false, false) => "note",
        };
        outln!("{:<20} {:<8} {}", c.name, status, c.detail)?;
    }

    let failed: Vec<&Check> = checks.iter().filter(|c| !c.ok).collect();
    let extra: Vec<&str> = failed
        .iter()
        .filter_map(|c| match c.fix {
            Fix::Package(p) => Some(p),
            Fix::Advice(_) => None,
        })
        .collect();
    let (build, tests) = missing_packages(TOOLS, found, &extra);
    outln!()?;
    if let Some(line) = apt_install_line(&build) {
        outln!("missing for building and booting images; install with:\n  {line}")?;
    }
    for c in &failed {
        if let Fix::Advice(advice) = c.fix {
            outln!("{}: {advice}", c.name)?;
        }
    }
    if let Some(line) = apt_install_line(&tests) {
        outln!("missing for the test suites only:\n  {line}")?;
    }
    let ready = build.is_empty() && failed.iter().all(|c| !c.required);
    if ready {
        outln!("this host has everything kiln needs")?;
    }
    Ok(Exit::verdict(ready))
}

/// The Debian packages to install: for `kiln` itself (missing tools that are
/// not test-only, plus `extra`), and for the test suites only. Each package
/// appears once, sorted, and only on the first list if both need it.
fn missing_packages<'a>(
    tools: &'a [Tool],
    found: impl Fn(&str) -> bool,
    extra: &[&'a str],
) -> (Vec<&'a str>, Vec<&'a str>) {
    let found = &found;
    let missing = |test_only: bool| tools.iter().filter(move |t| t.test_only == test_only && !found(t.name));
    let mut build: Vec<&str> = missing(false).map(|t| t.package).chain(extra.iter().copied()).collect();
    build.sort_unstable();
    build.dedup();
    let mut tests: Vec<&str> = missing(true)
        .map(|t| t.package)
        .filter(|p| !build.contains(p))
        .collect();
    tests.sort_unstable();
    tests.dedup();
    (build, tests)
}

/// `apt-get install …` for `packages`, or `None` when there is nothing to install.
fn apt_install_line(packages: &[&str]) -> Option<String> {
    (!packages.is_empty()).then(|| format!("apt-get install --no-install-recommends {}", packages.join(" ")))
}

fn root() -> Check {
    let euid = nix::unistd::geteuid();
    Check {
        name: "root",
        ok: euid.is_root(),
        detail: if euid.is_root() {
            "running as root".to_owned()
        } else {
            format!("running as uid {euid}; kiln build needs root (mmdebstrap, chroot, mounts)")
        },
        fix: Fix::Advice("run kiln build as root, e.g. with sudo"),
        required: true,
    }
}

fn overlayfs() -> Check {
    let listed = std::fs::read_to_string("/proc/filesystems")
        .is_ok_and(|f| f.lines().any(|l| l.split_whitespace().last() == Some("overlay")));
    // Not loaded yet is fine: the kernel loads the module on the first mount.
    let module = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .and_then(|release| std::fs::read_dir(format!("/lib/modules/{}/kernel/fs/overlayfs", release.trim())).ok())
        .is_some_and(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("overlay.ko"))));
    Check {
        name: "overlayfs",
        ok: listed || module,
        detail: if listed {
            "in /proc/filesystems".to_owned()
        } else if module {
            "module present, loaded on first use".to_owned()
        } else {
            "neither in /proc/filesystems nor a module of the running kernel; stage layers are overlay mounts"
                .to_owned()
        },
        fix: Fix::Advice("boot a kernel with overlayfs (CONFIG_OVERLAY_FS), or `modprobe overlay`"),
        required: true,
    }
}

fn unshare() -> Check {
    let (ok, detail) = if kiln_exec::which("unshare").is_none() {
        (false, "not tried: unshare is missing (util-linux)".to_owned())
    } else {
        match kiln_exec::Cmd::in_mount_namespace("sh").args(["-c", ":"]).run() {
            Ok(_) => (true, "private mount namespaces work".to_owned()),
            // unshare's own last words say why ("Operation not permitted").
            Err(kiln_exec::ExecError::Failed { tail, .. }) if !tail.trim().is_empty() => {
                (false, tail.trim().lines().last().unwrap_or_default().to_owned())
            }
            Err(e) => (false, first_line(&e.to_string())),
        }
    };
    Check {
        name: "unshare",
        ok,
        detail,
        fix: Fix::Advice("private mount namespaces need root (CAP_SYS_ADMIN); in a container, run it privileged"),
        required: true,
    }
}

fn ovmf() -> Check {
    let (ok, detail) = match kiln_vm::firmware::find_ovmf() {
        Ok(o) => (true, format!("{} (UEFI boots)", o.code.display())),
        Err(e) => (false, first_line(&e.to_string())),
    };
    Check {
        name: "OVMF",
        ok,
        detail,
        fix: Fix::Package(OVMF_PACKAGE),
        required: true,
    }
}

fn kvm() -> Check {
    let tcg_advice = Fix::Advice(
        "boots and replays run under TCG, several times slower; for KVM, give kiln a /dev/kvm that can run a guest",
    );
    if std::env::var_os("KILN_ACCEL").is_none() && kiln_exec::which("qemu-system-x86_64").is_none() {
        let kvm_node = Path::new("/dev/kvm").exists();
        return Check {
            name: "KVM",
            ok: false,
            detail: format!(
                "not probed: qemu-system-x86_64 is missing (/dev/kvm {})",
                if kvm_node { "exists" } else { "does not exist" }
            ),
            fix: tcg_advice,
            required: false,
        };
    }
    let chosen = std::env::var_os("KILN_ACCEL").is_some();
    let (ok, detail) = match kiln_vm::choose_accel() {
        // TCG by the user's own choice is no finding.
        Ok(c) => (
            c.accel == kiln_vm::Accel::Kvm || chosen,
            format!("{}: {}", c.accel.name(), c.reason),
        ),
        Err(e) => (false, first_line(&e.to_string())),
    };
    Check {
        name: "KVM",
        ok,
        detail,
        fix: tcg_advice,
        required: false,
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn tool(name: &'static str, package: &'static str, test_only: bool) -> Tool {
        Tool {
            name,
            package,
            purpose: "",
            test_only,
        }
    }

    const TABLE: &[Tool] = &[
        tool("mmdebstrap", "mmdebstrap", false),
        tool("mke2fs", "e2fsprogs", false),
        tool("debugfs", "e2fsprogs", false),
        tool("qemu-img", "qemu-utils", false),
        tool("e2fsck", "e2fsprogs", true),
        tool("shellcheck", "shellcheck", true),
        tool("isoinfo", "genisoimage", true),
        tool("isovfy", "genisoimage", true),
    ];

    #[test]
    fn apt_line_lists_each_missing_package_once_and_sorted() {
        let present = ["mmdebstrap", "isoinfo"];
        let (build, tests) = missing_packages(TABLE, |t| present.contains(&t), &["ovmf"]);
        assert_eq!(build, ["e2fsprogs", "ovmf", "qemu-utils"]);
        // e2fsck's package is already on the build line; isovfy still lacks genisoimage.
        assert_eq!(tests, ["genisoimage", "shellcheck"]);
        assert_eq!(
            apt_install_line(&build).unwrap(),
            "apt-get install --no-install-recommends e2fsprogs ovmf qemu-utils"
        );
    }

    #[test]
    fn nothing_missing_means_no_apt_line() {
        let (build, tests) = missing_packages(TABLE, |_| true, &[]);
        assert!(build.is_empty() && tests.is_empty());
        assert_eq!(apt_install_line(&build), None);
    }

    #[test]
    fn every_registered_tool_has_a_package() {
        let (build, tests) = missing_packages(TOOLS, |_| false, &[OVMF_PACKAGE]);
        assert!(build.contains(&"mmdebstrap") && build.contains(&"ovmf"), "{build:?}");
        assert!(tests.contains(&"shellcheck"), "{tests:?}");
        assert!(build.iter().chain(&tests).all(|p| !p.is_empty() && !p.contains(' ')));
    }
}
