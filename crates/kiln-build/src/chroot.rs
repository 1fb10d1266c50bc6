//! Running commands inside the image tree.
//!
//! Each call runs `unshare --mount --propagation private --fork --kill-child`
//! around a small shell wrapper that mounts /proc, /sys, /dev, a tmpfs /run
//! and the host's resolv.conf into the tree, then `chroot`s. The mounts live
//! in a private mount namespace that dies with the wrapper, so a failure,
//! Ctrl-C or even SIGKILL of kiln leaves no mount behind: nothing needs to be
//! unmounted by hand. Services are kept from starting by a policy-rc.d that is
//! removed again afterwards.

use std::path::Path;

use anyhow::{Context, Result};
use kiln_exec::Cmd;

/// The wrapper run by `sh` inside the new mount namespace. `$1` is the tree,
/// `$2` the script path inside the tree.
const WRAPPER: &str = r#"set -eu
root=$1
script=$2
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/run"
if [ -f /etc/resolv.conf ]; then
    if [ -L "$root/etc/resolv.conf" ] || [ ! -e "$root/etc/resolv.conf" ]; then
        rm -f "$root/etc/resolv.conf"
        : > "$root/etc/resolv.conf"
    fi
    mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
fi
# `.` of a missing file ends a non-interactive POSIX shell before `|| true`
# can help: a tree without /etc/profile (a minimal one) must still run.
exec chroot "$root" /bin/sh -c 'if [ -r /etc/profile ]; then . /etc/profile >/dev/null 2>&1 || true; fi; exec "$0"' "$script"
"#;

const POLICY_RC_D: &str =
    "#!/bin/sh\n# Written by kiln during the build: no service starts in the build chroot.\nexit 101\n";

/// A script to run in the tree.
pub struct ChrootScript<'a> {
    /// Shown in progress and errors, e.g. `run "harden"`.
    pub name: &'a str,
    /// The script text; one without a `#!` line runs with `/bin/sh -e`.
    pub body: &'a str,
    /// Exported as `SOURCE_DATE_EPOCH`, which dpkg, mkinitramfs, shadow
    /// and friends use instead of the clock (reproducible builds).
    pub source_date_epoch: Option<u64>,
}

/// Runs `script` inside `tree`, streaming its output to `on_line` and
/// appending it to `log`.
pub fn run_in_tree(
    tree: &Path,
    script: &ChrootScript<'_>,
    log: &Path,
    on_line: impl FnMut(&str) + Send + 'static,
) -> Result<()> {
    let guard = TreeSetup::prepare(tree)?;
    let inside = "/tmp/kiln-step.sh";
    let body = if script.body.starts_with("#!") {
        script.body.to_owned()
    } else {
        format!("#!/bin/sh\nset -e\n{}", script.body)
    };
    write_mode(&tree.join(inside.trim_start_matches('/')), &body, 0o755)?;
    let mut cmd = Cmd::in_mount_namespace("sh")
        .args(["-c", WRAPPER, "kiln-chroot"])
        .arg(tree)
        .arg(inside)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("DEBCONF_NONINTERACTIVE_SEEN", "true")
        .env("LC_ALL", "C.UTF-8")
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .log_to(log)
        .on_line(on_line);
    if let Some(epoch) = script.source_date_epoch {
        cmd = cmd.env("SOURCE_DATE_EPOCH", epoch.to_string());
    }
    let result = cmd.run();
    let _ = std::fs::remove_file(tree.join(inside.trim_start_matches('/')));
    drop(guard);
    result.with_context(|| {
        format!(
            "running {} in the image tree (full log: {})",
            script.name,
            log.display()
        )
    })?;
    Ok(())
}

/// Host-side preparation that the namespace cannot undo by itself: the
/// policy-rc.d file. Removed on drop.
struct TreeSetup {
    policy: std::path::PathBuf,
    created: bool,
}

impl TreeSetup {
    fn prepare(tree: &Path) -> Result<Self> {
        let policy = tree.join("usr/sbin/policy-rc.d");
        let created = !policy.exists();
        if created {
            write_mode(&policy, POLICY_RC_D, 0o755)?;
        }
        Ok(TreeSetup { policy, created })
    }
}

impl Drop for TreeSetup {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_file(&self.policy);
        }
    }
}

/// Writes `text` to `path` (creating its directories) with permissions `mode`.
pub fn write_mode(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(())
}
