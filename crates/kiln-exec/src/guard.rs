//! RAII guards for the side effects of a build. Dropping a guard undoes its
//! effect, so an error or an interruption anywhere leaves nothing behind.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::Cmd;

/// A scratch directory that is deleted, contents and all, when dropped.
///
/// Before deleting it checks that nothing is mounted below it: deleting
/// through a leftover bind mount of `/dev` or `/proc` would damage the host,
/// so in that case the directory is left in place and the problem reported.
///
/// While it lives its owner holds an flock(2) on the directory, which the
/// kernel releases however the owner ends: [`WorkDir::sweep_stale`] tells
/// by it the directory of a kiln that was killed (SIGKILL, a power cut)
/// from one in use, and deletes the former.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    keep: bool,
    _owner: fs::File,
}

/// A file in a kept work directory: [`WorkDir::sweep_stale`] leaves it be.
const KEPT_MARK: &str = ".kiln-kept";

impl WorkDir {
    /// Creates a fresh directory `<parent>/<prefix>XXXXXX`.
    pub fn new_in(parent: &Path, prefix: &str) -> io::Result<Self> {
        fs::create_dir_all(parent)?;
        let dir = tempfile::Builder::new().prefix(prefix).tempdir_in(parent)?;
        let owner = fs::File::open(dir.path())?;
        owner.lock()?;
        Ok(WorkDir {
            path: dir.keep(),
            keep: false,
            _owner: owner,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory after drop (for `--keep-work` debugging), and
    /// from later sweeps.
    pub fn keep(&mut self) {
        self.keep = true;
        if let Err(e) = fs::write(self.path.join(KEPT_MARK), "kept for debugging: delete it when done\n") {
            tracing::warn!("marking {} as kept: {e}", self.path.display());
        }
    }

    /// Deletes the directories `<parent>/<prefix>*` that a process which
    /// died without cleaning up left behind: those nobody holds the lock of
    /// and that were not kept on purpose. A directory with something still
    /// mounted below it is left alone and reported. Returns what it deleted.
    pub fn sweep_stale(parent: &Path, prefix: &str) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        let Ok(entries) = fs::read_dir(parent) else {
            return removed;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let stale = entry.file_name().to_string_lossy().starts_with(prefix)
                && entry.file_type().is_ok_and(|t| t.is_dir())
                && !path.join(KEPT_MARK).exists()
                && fs::File::open(&path).is_ok_and(|f| f.try_lock().is_ok());
            if !stale {
                continue;
            }
            let mounts = mounts_under(&path);
            if !mounts.is_empty() {
                tracing::error!(
                    "not deleting {}, left by a build that was killed: still mounted below it: {:?}",
                    path.display(),
                    mounts
                );
                continue;
            }
            match fs::remove_dir_all(&path) {
                Ok(()) => removed.push(path),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("deleting {}, left by a build that was killed: {e}", path.display()),
            }
        }
        removed
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let mounts = mounts_under(&self.path);
        if !mounts.is_empty() {
            tracing::error!(
                "not deleting {}: still mounted below it: {:?}",
                self.path.display(),
                mounts
            );
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("deleting {}: {e}", self.path.display());
            }
        }
    }
}

/// Mount points at or below `path`, from `/proc/self/mountinfo`.
pub fn mounts_under(path: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let root = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(&root))
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.by_ref().take(3).collect();
            if let Ok(v) = u8::from_str_radix(&oct, 8) {
                out.push(v as char);
                continue;
            }
            out.push('\\');
            out.push_str(&oct);
        } else {
            out.push(c);
        }
    }
    out
}

/// An output file written as `<path>.part` and renamed into place by
/// [`PartialFile::commit`]; dropped uncommitted, the partial file is deleted,
/// so a failed build never leaves a file that looks complete.
#[derive(Debug)]
pub struct PartialFile {
    part: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl PartialFile {
    /// Claims `dest`; the caller writes to [`PartialFile::path`].
    pub fn new(dest: impl Into<PathBuf>) -> Self {
        let dest = dest.into();
        let mut part = dest.clone().into_os_string();
        part.push(".part");
        PartialFile {
            part: PathBuf::from(part),
            dest,
            committed: false,
        }
    }

    /// Where to write.
    pub fn path(&self) -> &Path {
        &self.part
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Writes `bytes` to the partial file.
    pub fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        fs::write(&self.part, bytes)
    }

    /// Flushes the file to disk and renames it to its final name.
    pub fn commit(mut self) -> io::Result<PathBuf> {
        fs::File::open(&self.part)?.sync_all()?;
        fs::rename(&self.part, &self.dest)?;
        self.committed = true;
        Ok(self.dest.clone())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = fs::remove_file(&self.part) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("deleting partial output {}: {e}", self.part.display());
                }
            }
        }
    }
}

/// A loop device attached to a file, detached when dropped.
#[derive(Debug)]
pub struct LoopDevice {
    device: PathBuf,
}

impl LoopDevice {
    /// Attaches `file` (optionally from a byte offset, for a partition of a
    /// disk image) to a free loop device.
    pub fn attach(file: &Path, offset: Option<u64>, size: Option<u64>) -> Result<Self, crate::ExecError> {
        let mut cmd = Cmd::new("losetup").args(["--find", "--show"]);
        if let Some(off) = offset {
            cmd = cmd.arg("--offset").arg(off.to_string());
        }
        if let Some(size) = size {
            cmd = cmd.arg("--sizelimit").arg(size.to_string());
        }
        let device = cmd.arg(file).run_string()?;
        Ok(LoopDevice {
            device: PathBuf::from(device.trim()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.device
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // Not interruptible on purpose: the interruption flag is already set
        // when most guards drop, and detaching must still happen.
        if let Err(e) = detach_loop(&self.device) {
            tracing::error!("detaching {}: {e}", self.device.display());
        }
    }
}

fn detach_loop(dev: &Path) -> io::Result<()> {
    // losetup through Cmd would refuse to start once interrupted; the ioctl
    // needs no tool: LOOP_CLR_FD on the device.
    use std::os::fd::AsRawFd;
    let f = fs::File::open(dev)?;
    sys::loop_clr_fd(f.as_raw_fd())
}

#[allow(unsafe_code)]
mod sys {
    const LOOP_CLR_FD: libc::c_ulong = 0x4C01;

    pub(super) fn loop_clr_fd(fd: libc::c_int) -> std::io::Result<()> {
        // SAFETY: the ioctl takes no argument pointer and fd is open.
        let rc = unsafe { libc::ioctl(fd, LOOP_CLR_FD, 0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workdir_is_removed_on_drop() {
        let parent = tempfile::tempdir().unwrap();
        let path = {
            let w = WorkDir::new_in(parent.path(), "kiln-").unwrap();
            fs::create_dir_all(w.path().join("a/b")).unwrap();
            fs::write(w.path().join("a/b/c"), "x").unwrap();
            w.path().to_owned()
        };
        assert!(!path.exists());
    }

    #[test]
    fn only_dead_owners_work_dirs_are_swept() {
        let parent = tempfile::tempdir().unwrap();
        let live = WorkDir::new_in(parent.path(), ".kiln-work-").unwrap();
        let mut kept = WorkDir::new_in(parent.path(), ".kiln-work-").unwrap();
        kept.keep();
        // A directory whose owner died: nobody holds its lock.
        let dead = parent.path().join(".kiln-work-dead");
        fs::create_dir_all(dead.join("layers/x")).unwrap();
        fs::write(dead.join("layers/x/f"), "x").unwrap();
        let other = parent.path().join("unrelated");
        fs::create_dir(&other).unwrap();
        let removed = WorkDir::sweep_stale(parent.path(), ".kiln-work-");
        assert_eq!(removed, std::slice::from_ref(&dead));
        assert!(!dead.exists());
        assert!(live.path().is_dir() && kept.path().is_dir() && other.is_dir());
        let kept_path = kept.path().to_owned();
        drop(kept);
        assert!(kept_path.is_dir(), "a kept directory is deleted on drop");
        // Once its owner is gone the live one is stale too; a kept one never is.
        let live_path = live.path().to_owned();
        let owner = std::mem::replace(
            &mut std::mem::ManuallyDrop::new(live)._owner,
            fs::File::open("/").unwrap(),
        );
        drop(owner);
        assert_eq!(WorkDir::sweep_stale(parent.path(), ".kiln-work-"), [live_path]);
        assert!(kept_path.is_dir());
    }

    #[test]
    fn partial_file_is_removed_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.qcow2");
        {
            let p = PartialFile::new(&dest);
            p.write_all(b"half").unwrap();
            assert!(p.path().exists());
        }
        assert!(!dest.exists());
        assert!(!dir.path().join("out.qcow2.part").exists());

        let p = PartialFile::new(&dest);
        p.write_all(b"whole").unwrap();
        p.commit().unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"whole");
        assert!(!dir.path().join("out.qcow2.part").exists());
    }

    #[test]
    fn mountinfo_unescaping() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn proc_is_a_mount() {
        assert!(mounts_under(Path::new("/proc")).iter().any(|m| m == Path::new("/proc")));
    }
}
