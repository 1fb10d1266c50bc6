//! Tree layers: the root tree of a build as a stack of directories joined
//! by overlayfs, so that a stage stores only what it changed and a cached
//! stage is reused without copying a tree.
//!
//! The bootstrap layer is a whole tree; customisation and each target's
//! finalisation are overlay upper directories (whiteouts included) on top of
//! the layers below them. Every overlay is mounted in kiln's own private
//! mount namespace, entered once per build: if kiln dies, even by SIGKILL,
//! the namespace and its mounts die with it, and nothing shows on the host.
//! Non-goals: overlay options beyond what a build needs, unprivileged use.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Moves the calling thread (and every thread and process it starts from
/// now on) into a new mount namespace with private propagation, so mounts
/// made by the build never reach the host. Calling it again is harmless.
pub fn enter_private_mount_namespace() -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("entering a private mount namespace (kiln build needs root)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making the build's mounts private")?;
    Ok(())
}

/// An overlay mount; unmounted on drop.
#[derive(Debug)]
pub struct Overlay {
    merged: PathBuf,
    mounted: bool,
}

impl Overlay {
    /// Mounts `lowers` (top first) at `merged`, writable through `upper`
    /// (with `work` as overlayfs's scratch directory on the same
    /// filesystem), or read-only when `upper` is `None`.
    pub fn mount(lowers: &[&Path], upper: Option<(&Path, &Path)>, merged: &Path) -> Result<Self> {
        if lowers.is_empty() || (upper.is_none() && lowers.len() < 2) {
            bail!("internal: an overlay needs an upper directory or two lower ones");
        }
        let mut all: Vec<&Path> = lowers.to_vec();
        if let Some((u, w)) = upper {
            std::fs::create_dir_all(u).with_context(|| format!("creating {}", u.display()))?;
            std::fs::create_dir_all(w).with_context(|| format!("creating {}", w.display()))?;
            all.extend([u, w]);
        }
        for p in &all {
            let s = p.to_string_lossy();
            if s.contains([',', ':', '\\']) {
                bail!(
                    "{} contains ',', ':' or '\\', which overlayfs options cannot carry; \
                     use a --work-dir and --cache-dir without them",
                    p.display()
                );
            }
        }
        std::fs::create_dir_all(merged).with_context(|| format!("creating {}", merged.display()))?;
        let lower = lowers
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":");
        // index and metacopy off: a stored layer must mean the same thing
        // whatever it is later stacked on.
        let mut options = format!("lowerdir={lower},index=off,metacopy=off");
        if let Some((u, w)) = upper {
            options.push_str(&format!(",upperdir={},workdir={}", u.display(), w.display()));
        }
        let flags = if upper.is_some() {
            MsFlags::empty()
        } else {
            MsFlags::MS_RDONLY
        };
        mount(Some("overlay"), merged, Some("overlay"), flags, Some(options.as_str()))
            .with_context(|| format!("mounting the image tree at {} (overlay {options})", merged.display()))?;
        Ok(Overlay {
            merged: merged.to_owned(),
            mounted: true,
        })
    }

    pub fn path(&self) -> &Path {
        &self.merged
    }

    /// Unmounts now, reporting failure (drop only logs it).
    pub fn unmount(mut self) -> Result<()> {
        self.mounted = false;
        umount2(&self.merged, MntFlags::empty()).with_context(|| format!("unmounting {}", self.merged.display()))
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = umount2(&self.merged, MntFlags::MNT_DETACH) {
                tracing::warn!("unmounting {}: {e}", self.merged.display());
            }
        }
    }
}

/// Sets the modification time (and the access time with it) of every entry
/// of `dir` modified after `epoch` to `epoch` (symlinks themselves, not
/// their targets), so a layer built today carries no trace of when it was
/// built. Access times alone are left alone: reading a layer (digesting it,
/// say) moves them, touching them through an overlay would copy every file
/// up, and the ext4 writer resets them in the image anyway.
pub fn clamp_times(dir: &Path, epoch: u64) -> Result<usize> {
    fn walk(path: &Path, epoch: u64, count: &mut usize) -> Result<()> {
        let meta = std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
        if meta.is_dir() {
            for e in std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
                walk(&e?.path(), epoch, count)?;
            }
        }
        *count += usize::from(clamp_meta(path, &meta, epoch)?);
        Ok(())
    }
    let mut count = 0;
    walk(dir, epoch, &mut count)?;
    Ok(count)
}

/// [`clamp_times`] of `path` alone (not what a directory holds); whether
/// it was newer.
pub fn clamp_path(path: &Path, epoch: u64) -> Result<bool> {
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    clamp_meta(path, &meta, epoch)
}

fn clamp_meta(path: &Path, meta: &std::fs::Metadata, epoch: u64) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    if meta.mtime() <= epoch as i64 {
        return Ok(false);
    }
    let t = filetime::FileTime::from_unix_time(epoch as i64, 0);
    filetime::set_symlink_file_times(path, t, t).with_context(|| format!("setting the times of {}", path.display()))?;
    Ok(true)
}

/// Every path of the overlay upper directory `dir` (relative to it): where
/// the merged tree may differ from the layers below, for
/// [`kiln_disk::ext4_patch`]. A directory that hides the lower ones
/// (opaque) or stands for one moved from elsewhere (redirect) makes its
/// whole subtree a candidate; a whiteout is a path like any other.
pub fn upper_candidates(dir: &Path) -> Result<Vec<kiln_disk::ext4_patch::Candidate>> {
    fn has_xattr(path: &Path, name: &str) -> bool {
        rustix::fs::lgetxattr(path, name, &mut [0u8; 16][..]).is_ok()
    }
    fn walk(root: &Path, rel: &Path, out: &mut Vec<kiln_disk::ext4_patch::Candidate>) -> Result<()> {
        let dir = root.join(rel);
        for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e.with_context(|| format!("listing {}", dir.display()))?;
            let rel = rel.join(e.file_name());
            let is_dir = e
                .file_type()
                .with_context(|| format!("reading {}", e.path().display()))?
                .is_dir();
            let subtree = is_dir
                && (has_xattr(&e.path(), "trusted.overlay.opaque") || has_xattr(&e.path(), "trusted.overlay.redirect"));
            out.push(kiln_disk::ext4_patch::Candidate {
                path: rel.clone(),
                subtree,
            });
            if is_dir && !subtree {
                walk(root, &rel, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, Path::new(""), &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn clamping_only_touches_newer_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/new"), "x").unwrap();
        std::fs::write(d.join("old"), "y").unwrap();
        let old = filetime::FileTime::from_unix_time(1_000_000, 0);
        filetime::set_file_times(d.join("old"), old, old).unwrap();
        std::os::unix::fs::symlink("/nonexistent", d.join("link")).unwrap();
        let epoch = 1_600_000_000;
        clamp_times(d, epoch).unwrap();
        let m = |p: &str| std::fs::symlink_metadata(d.join(p)).unwrap();
        assert_eq!(m("sub/new").mtime(), epoch as i64);
        assert_eq!(m("sub").mtime(), epoch as i64);
        assert_eq!(m("link").mtime(), epoch as i64);
        assert_eq!(m("old").mtime(), 1_000_000);
        assert_eq!(m("sub/new").atime(), epoch as i64);
    }

    #[test]
    fn overlay_paths_with_separators_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let bad = tmp.path().join("a,b");
        let err = Overlay::mount(&[&bad, tmp.path()], None, &tmp.path().join("m")).unwrap_err();
        assert!(format!("{err:#}").contains("overlayfs options"), "{err:#}");
    }
}
