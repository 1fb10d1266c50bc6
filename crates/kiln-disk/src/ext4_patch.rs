//! Patching an ext4 filesystem that [`make_ext4`](crate::make_ext4) made
//! from one tree so that it holds another, in place, instead of making it
//! again: a rebuild after a small change rewrites a few blocks, and every
//! other block stays where it was, so the qcow2 writer can reuse almost
//! every cluster of the previous image.
//!
//! The caller names the paths that may differ (the upper layers of both
//! trees); [`patch_ext4`] compares each in the old and the new tree (type,
//! mode, owner, mtime, size, contents, link target, device number) and
//! turns each difference into `debugfs` commands: `rm`/`rmdir` (whole
//! subtrees), `write` (the same create-inode code `mke2fs -d` runs),
//! `mkdir`, `symlink`, `mknod`, then `sif` for the mode, owner and mtime and
//! to pin ctime, atime and crtime to `SOURCE_DATE_EPOCH` as
//! [`make_ext4`](crate::make_ext4) does. The patched filesystem holds the
//! same tree as one made from scratch (the tests compare both, times
//! included); its block and inode placement, and so its bytes, differ.
//!
//! Written by hand because no kept tool or library updates an ext4 image
//! from a tree: e2fsprogs has each primitive (`debugfs`), not the diff.
//!
//! It refuses (and the caller builds the filesystem from scratch) what
//! `debugfs` cannot reproduce exactly: extended attributes, hard links
//! (a non-directory with more than one link), sockets, and names that its
//! command parser cannot quote. Non-goals: resizing, XFS.

use std::collections::BTreeSet;
use std::fs::{self, Metadata};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::mkfs::run_debugfs;

/// What [`patch_ext4`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Patch {
    /// The filesystem now holds the new tree; `changed` paths were
    /// removed, written or had their metadata set.
    Applied { changed: usize },
    /// Nothing was written: the difference holds something `debugfs`
    /// cannot reproduce exactly (the reason says what), so the filesystem
    /// must be made from scratch.
    Refused(String),
}

/// A path that may differ between the trees, relative to their roots.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Candidate {
    pub path: PathBuf,
    /// Everything under `path` may differ too (an overlay directory that
    /// hides or moves what lies below it).
    pub subtree: bool,
}

/// One change, in the order it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Remove { path: PathBuf, dir: bool },
    Create { path: PathBuf, kind: Create },
    SetMeta { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Create {
    File,
    Dir,
    Symlink(String),
    Device { block: bool, major: u64, minor: u64 },
    Fifo,
}

/// Makes the ext4 filesystem at byte `offset` of `disk`, which holds
/// `old_tree` as [`make_ext4`](crate::make_ext4) wrote it, hold `new_tree`,
/// where only `candidates` (and what lies under a subtree candidate) may
/// differ. `epoch` is the `SOURCE_DATE_EPOCH` the filesystem was made with:
/// ctime, atime and crtime of what the patch writes are set to it, as
/// [`make_ext4`](crate::make_ext4) sets them; without one they are what
/// `mke2fs -d` would copy (the new tree's ctime and atime) and now.
/// On an error the filesystem may be half patched: the caller throws it
/// away.
pub fn patch_ext4(
    disk: &Path,
    offset: u64,
    old_tree: &Path,
    new_tree: &Path,
    candidates: &[Candidate],
    epoch: Option<u64>,
) -> Result<Patch> {
    let ops = match plan(old_tree, new_tree, candidates)? {
        Ok(ops) => ops,
        Err(reason) => return Ok(Patch::Refused(reason)),
    };
    if ops.is_empty() {
        return Ok(Patch::Applied { changed: 0 });
    }
    let script = match render(&ops, new_tree, epoch)? {
        Ok(script) => script,
        Err(reason) => return Ok(Patch::Refused(reason)),
    };
    run_debugfs(disk, offset, epoch, script).map_err(|e| {
        e.context_for(format!(
            "patching the ext4 filesystem at offset {offset} of {}",
            disk.display()
        ))
    })?;
    let changed: BTreeSet<&PathBuf> = ops
        .iter()
        .map(|op| match op {
            Op::Remove { path, .. } | Op::Create { path, .. } | Op::SetMeta { path } => path,
        })
        .collect();
    Ok(Patch::Applied { changed: changed.len() })
}

/// The type of an entry, as far as the patch cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

fn kind_of(meta: &Metadata) -> Kind {
    let ft = meta.file_type();
    if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_char_device() {
        Kind::Char
    } else if ft.is_block_device() {
        Kind::Block
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else {
        Kind::File
    }
}

/// One side of the comparison: a tree and which of its paths are
/// directories (so a path under a symlink is never followed on the host).
struct Side<'a> {
    root: &'a Path,
    dirs: BTreeSet<PathBuf>,
}

impl Side<'_> {
    /// The entry at `rel`, or `None` if it or a parent is missing or a
    /// parent is not a directory. Parents must have been looked up first.
    fn lookup(&mut self, rel: &Path) -> Result<Option<Metadata>> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        if !parent.as_os_str().is_empty() && !self.dirs.contains(parent) {
            return Ok(None);
        }
        let path = self.root.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(meta) => {
                if meta.is_dir() {
                    self.dirs.insert(rel.to_owned());
                }
                Ok(Some(meta))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }
}

/// The changes that turn `old` into `new`, or why they cannot be made.
fn plan(old: &Path, new: &Path, candidates: &[Candidate]) -> Result<Result<Vec<Op>, String>> {
    let mut paths = BTreeSet::new();
    for c in candidates {
        if c.path.is_absolute()
            || c.path
                .components()
                .any(|p| !matches!(p, std::path::Component::Normal(_)))
        {
            return Err(Error::input(format!("{}: not a plain relative path", c.path.display())));
        }
        paths.extend(
            c.path
                .ancestors()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_owned),
        );
        if c.subtree {
            for root in [old, new] {
                walk(root, &c.path, &mut |rel, _| {
                    paths.insert(rel.to_owned());
                })?;
            }
        }
    }
    let mut old_side = Side {
        root: old,
        dirs: BTreeSet::new(),
    };
    let mut new_side = Side {
        root: new,
        dirs: BTreeSet::new(),
    };
    let mut ops = Vec::new();
    // Parents whose entries change: their metadata is set again.
    let mut touched_dirs = BTreeSet::new();
    // Subtrees already removed or created whole.
    let mut done: Vec<PathBuf> = Vec::new();
    for rel in &paths {
        if done.iter().any(|d| rel.starts_with(d)) {
            continue;
        }
        let (o, n) = (old_side.lookup(rel)?, new_side.lookup(rel)?);
        for (meta, root) in [(&o, old), (&n, new)] {
            if let Some(meta) = meta {
                if let Some(reason) = unpatchable(&root.join(rel), meta)? {
                    return Ok(Err(reason));
                }
            }
        }
        let parent = rel.parent().unwrap_or(Path::new("")).to_owned();
        match (o, n) {
            (None, None) => {}
            (Some(o), None) => {
                remove(old, rel, &o, &mut ops)?;
                done.push(rel.clone());
                touched_dirs.insert(parent);
            }
            (None, Some(n)) => {
                if let Err(reason) = create(new, rel, &n, &mut ops)? {
                    return Ok(Err(reason));
                }
                done.push(rel.clone());
                touched_dirs.insert(parent);
            }
            (Some(o), Some(n)) => {
                let (ko, kn) = (kind_of(&o), kind_of(&n));
                let same_object = ko == kn
                    && match kn {
                        Kind::File => o.len() == n.len() && same_contents(&old.join(rel), &new.join(rel))?,
                        Kind::Symlink => fs::read_link(old.join(rel)).ok() == fs::read_link(new.join(rel)).ok(),
                        Kind::Char | Kind::Block => o.rdev() == n.rdev(),
                        _ => true,
                    };
                if !same_object {
                    remove(old, rel, &o, &mut ops)?;
                    if let Err(reason) = create(new, rel, &n, &mut ops)? {
                        return Ok(Err(reason));
                    }
                    touched_dirs.insert(parent);
                    if ko == Kind::Dir || kn == Kind::Dir {
                        done.push(rel.clone());
                    }
                } else if !same_meta(&o, &n) {
                    ops.push(Op::SetMeta { path: rel.clone() });
                }
            }
        }
    }
    for dir in touched_dirs {
        if !ops.iter().any(|op| matches!(op, Op::SetMeta { path } if *path == dir)) {
            ops.push(Op::SetMeta { path: dir });
        }
    }
    Ok(Ok(ops))
}

/// Why `meta` (at `path`) cannot be patched in, if it cannot.
fn unpatchable(path: &Path, meta: &Metadata) -> Result<Option<String>> {
    let what = path.display();
    if kind_of(meta) == Kind::Socket {
        return Ok(Some(format!("{what} is a socket")));
    }
    if !meta.is_dir() && meta.nlink() > 1 {
        return Ok(Some(format!("{what} has {} hard links", meta.nlink())));
    }
    // Any name at all is a refusal; a list too long for the buffer too.
    let mut names = [0u8; 256];
    let listed = match rustix::fs::llistxattr(path, &mut names[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::RANGE) => names.len(),
        Err(e) => {
            return Err(Error::io(
                format!("listing the extended attributes of {what}"),
                e.into(),
            ))
        }
    };
    if listed > 0 {
        return Ok(Some(format!("{what} has extended attributes")));
    }
    Ok(None)
}

/// Whether the two entries have the same mode, owner and mtime (what
/// `mke2fs -d` copies; sizes of directories are the filesystem's own).
fn same_meta(a: &Metadata, b: &Metadata) -> bool {
    a.mode() == b.mode() && a.uid() == b.uid() && a.gid() == b.gid() && a.mtime() == b.mtime()
}

fn same_contents(a: &Path, b: &Path) -> Result<bool> {
    let open = |p: &Path| fs::File::open(p).ctx(|| format!("opening {}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let na = read_full(&mut fa, &mut ba).ctx(|| format!("reading {}", a.display()))?;
        let nb = read_full(&mut fb, &mut bb).ctx(|| format!("reading {}", b.display()))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Calls `f` for every path under `rel` in `root` (not `rel` itself),
/// parents before children, without following symlinks.
fn walk(root: &Path, rel: &Path, f: &mut dyn FnMut(&Path, &Metadata)) -> Result<()> {
    let dir = root.join(rel);
    match fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        _ => return Ok(()),
    }
    let mut names: Vec<_> = fs::read_dir(&dir)
        .ctx(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .ctx(|| format!("listing {}", dir.display()))?;
    names.sort();
    for name in names {
        let child = rel.join(name);
        let path = root.join(&child);
        let meta = fs::symlink_metadata(&path).ctx(|| format!("reading {}", path.display()))?;
        f(&child, &meta);
        if meta.is_dir() {
            walk(root, &child, f)?;
        }
    }
    Ok(())
}

/// Removal of `rel` (of type `meta`) from the old tree, children first.
fn remove(old: &Path, rel: &Path, meta: &Metadata, ops: &mut Vec<Op>) -> Result<()> {
    if meta.is_dir() {
        let mut below = Vec::new();
        walk(old, rel, &mut |p, m| below.push((p.to_owned(), m.is_dir())))?;
        for (path, dir) in below.into_iter().rev() {
            ops.push(Op::Remove { path, dir });
        }
    }
    ops.push(Op::Remove {
        path: rel.to_owned(),
        dir: meta.is_dir(),
    });
    Ok(())
}

/// Creation of `rel` as the new tree has it, with everything under it.
fn create(new: &Path, rel: &Path, meta: &Metadata, ops: &mut Vec<Op>) -> Result<Result<(), String>> {
    let mut entries = vec![(rel.to_owned(), meta.clone())];
    if meta.is_dir() {
        walk(new, rel, &mut |p, m| entries.push((p.to_owned(), m.clone())))?;
    }
    for (path, meta) in entries {
        let host = new.join(&path);
        if let Some(reason) = unpatchable(&host, &meta)? {
            return Ok(Err(reason));
        }
        let kind = match kind_of(&meta) {
            Kind::File => Create::File,
            Kind::Dir => Create::Dir,
            Kind::Symlink => {
                let target = fs::read_link(&host).ctx(|| format!("reading the link {}", host.display()))?;
                match target.to_str() {
                    Some(t) => Create::Symlink(t.to_owned()),
                    None => return Ok(Err(format!("{}: its target is not UTF-8", host.display()))),
                }
            }
            Kind::Char | Kind::Block => Create::Device {
                block: kind_of(&meta) == Kind::Block,
                major: rustix::fs::major(meta.rdev()).into(),
                minor: rustix::fs::minor(meta.rdev()).into(),
            },
            Kind::Fifo => Create::Fifo,
            Kind::Socket => unreachable!("refused above"),
        };
        ops.push(Op::Create {
            path: path.clone(),
            kind,
        });
        ops.push(Op::SetMeta { path });
    }
    Ok(Ok(()))
}

/// A path as one quoted `debugfs` argument, if its parser can carry it.
fn quoted(path: &str) -> Option<String> {
    (!path.contains(['"', '\n', '\r', '\\']) && !path.chars().any(char::is_control)).then(|| format!("\"{path}\""))
}

/// `rel` as `debugfs` resolves it from the root directory: relative (its
/// `mkdir` and `rm` cannot split the parent off `/name`), or `/` itself.
fn fs_path(rel: &Path) -> Option<String> {
    let r = rel.to_str()?;
    Some(if r.is_empty() { "/".to_owned() } else { r.to_owned() })
}

/// The `debugfs` commands for `ops`, or why a name cannot be written.
fn render(ops: &[Op], new: &Path, epoch: Option<u64>) -> Result<Result<String, String>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut script = String::new();
    for op in ops {
        let path = match op {
            Op::Remove { path, .. } | Op::Create { path, .. } | Op::SetMeta { path } => path,
        };
        let Some(at) = fs_path(path).as_deref().and_then(quoted) else {
            return Ok(Err(format!("{}: debugfs cannot name it", path.display())));
        };
        match op {
            Op::Remove { dir: true, .. } => script.push_str(&format!("rmdir {at}\n")),
            Op::Remove { dir: false, .. } => script.push_str(&format!("rm {at}\n")),
            Op::Create { kind, .. } => match kind {
                Create::File => {
                    // `write` names its file in the current directory.
                    let parent = path
                        .parent()
                        .and_then(Path::to_str)
                        .and_then(|p| quoted(&format!("/{p}")));
                    let name = path.file_name().and_then(|n| n.to_str()).and_then(quoted);
                    let host = new.join(path);
                    let host = host.to_str().and_then(quoted);
                    let (Some(parent), Some(name), Some(host)) = (parent, name, host) else {
                        return Ok(Err(format!("{}: debugfs cannot name it", path.display())));
                    };
                    script.push_str(&format!("cd {parent}\nwrite {host} {name}\ncd /\n"));
                }
                Create::Dir => script.push_str(&format!("mkdir {at}\n")),
                Create::Symlink(target) => {
                    let Some(target) = quoted(target) else {
                        return Ok(Err(format!("{}: debugfs cannot write its target", path.display())));
                    };
                    script.push_str(&format!("symlink {at} {target}\n"));
                }
                Create::Device { block, major, minor } => {
                    let t = if *block { 'b' } else { 'c' };
                    script.push_str(&format!("mknod {at} {t} {major} {minor}\n"));
                }
                Create::Fifo => script.push_str(&format!("mknod {at} p\n")),
            },
            Op::SetMeta { path } => {
                let host = new.join(path);
                let meta = fs::symlink_metadata(&host).ctx(|| format!("reading {}", host.display()))?;
                script.push_str(&format!(
                    "sif {at} mode 0{:o}\nsif {at} uid {}\nsif {at} gid {}\nsif {at} mtime @{}\n",
                    meta.mode(),
                    meta.uid(),
                    meta.gid(),
                    meta.mtime()
                ));
                let times = match epoch {
                    Some(t) => [t as i64; 3],
                    None => [meta.ctime(), meta.atime(), now as i64],
                };
                for (field, t) in ["ctime", "atime", "crtime"].into_iter().zip(times) {
                    script.push_str(&format!("sif {at} {field} @{t}\n"));
                }
            }
        }
    }
    Ok(Ok(script))
}

/// Every path of the ext4 filesystem at `offset` of the raw `disk` but
/// `lost+found`, one line each and sorted: type, mode, owner, size (not of
/// directories), times (modification, change, access, birth), link
/// target, device numbers, extended attributes and a digest of the
/// contents. Two filesystems hold the same tree exactly when their
/// listings are equal: it is what the tests compare a patched filesystem
/// with one made from scratch by. Reads a read-only loop mount made in a
/// mount namespace of its own (root only).
pub fn tree_listing(disk: &Path, offset: u64) -> Result<String> {
    let mnt = tempfile_dir()?;
    let script = r#"mount -o ro,noload,loop,offset=$3 "$1" "$2"; cd "$2"
        find . -path ./lost+found -prune -o \( -type d -printf '%y %p %m %U %G %T@ %C@ %A@ %B@\n' \) \
          -o -printf '%y %p %m %U %G %s %T@ %C@ %A@ %B@ %l\n'
        find . -path ./lost+found -prune -o -type f -exec sha256sum {} +
        find . \( -type c -o -type b \) -exec stat -c '%n %t %T' {} +
        getfattr -R -h -d -m - . 2>/dev/null || true"#;
    let out = kiln_exec::Cmd::new("unshare")
        .args(["-m", "sh", "-euc", script, "kiln-listing"])
        .arg(disk)
        .arg(mnt.path())
        .arg(offset.to_string())
        .run()
        .map_err(|e| Error::tool(format!("listing the tree of {}", disk.display()), e))?;
    let text = out.stdout_string();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    Ok(lines.join("\n"))
}

fn tempfile_dir() -> Result<kiln_exec::WorkDir> {
    kiln_exec::WorkDir::new_in(&std::env::temp_dir(), "kiln-listing-").ctx(|| "creating a mount point".to_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use kiln_exec::Cmd;
    use uuid::Uuid;

    use super::*;
    use crate::mkfs::{make_ext4, FsOptions};
    use crate::testutil::{pseudo_random, sparse_file};

    const EPOCH: u64 = 1_700_000_000;
    const OFFSET: u64 = 1 << 20;
    const SIZE: u64 = 48 << 20;

    fn opts() -> FsOptions {
        FsOptions {
            uuid: Uuid::from_u128(0x1234),
            label: "root".into(),
            hash_seed: Some(Uuid::from_u128(0x5678)),
            source_date_epoch: Some(EPOCH),
            ..FsOptions::default()
        }
    }

    fn sh(script: &str, args: &[&Path]) {
        Cmd::new("sh").args(["-euc", script, "sh"]).args(args).run().unwrap();
    }

    /// A tree with a bit of everything a root filesystem holds; mtimes
    /// vary (one has nanoseconds), as a clamped build tree's do.
    fn old_tree(root: &Path) {
        for d in ["etc/ssh", "usr/lib/big", "var/log/old/deep", "opt/gone"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("etc/motd"), "hello\n").unwrap();
        fs::write(root.join("etc/hostname"), "kiln\n").unwrap();
        fs::write(root.join("etc/ssh/sshd_config"), "PermitRootLogin no\n").unwrap();
        for i in 0..60 {
            fs::write(root.join(format!("usr/lib/big/f{i:02}")), pseudo_random(i, 20_000)).unwrap();
        }
        fs::write(root.join("var/log/old/deep/x.log"), "x").unwrap();
        fs::write(root.join("opt/gone/file"), "gone").unwrap();
        symlink("/etc/motd", root.join("etc/motd.link")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        sh(r#"mkfifo "$1/etc/fifo"; mknod "$1/etc/null" c 1 3"#, &[root]);
        fs::set_permissions(root.join("etc/ssh"), fs::Permissions::from_mode(0o700)).unwrap();
    }

    /// `old_tree` with one change of every kind.
    fn change(root: &Path) {
        fs::write(root.join("etc/motd"), "hello again, longer than before\n").unwrap();
        fs::write(root.join("etc/added"), pseudo_random(7, 70_000)).unwrap();
        fs::create_dir_all(root.join("srv/new/sub")).unwrap();
        fs::write(root.join("srv/new/sub/file"), "new").unwrap();
        fs::remove_file(root.join("etc/hostname")).unwrap();
        fs::remove_dir_all(root.join("var/log/old")).unwrap();
        fs::remove_dir_all(root.join("opt/gone")).unwrap();
        fs::write(root.join("opt/gone"), "a file where a directory was").unwrap();
        fs::remove_file(root.join("etc/motd.link")).unwrap();
        symlink("/etc/added", root.join("etc/motd.link")).unwrap();
        fs::remove_file(root.join("lib")).unwrap();
        fs::create_dir(root.join("lib")).unwrap();
        fs::set_permissions(root.join("etc/ssh/sshd_config"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(root.join("usr/lib/big/f07"), Some(1234), Some(5678)).unwrap();
        fs::write(root.join("usr/lib/big/f08"), pseudo_random(8, 20_000)).unwrap();
    }

    /// Times as a build leaves them: clamped to the epoch, one file older
    /// with nanoseconds, one older directory.
    fn set_times(root: &Path) {
        sh(
            r#"find "$1" -exec touch -h -d "@$2" {} +
               touch -h -d "@$(($2 - 86400)).123456789" "$1/usr/lib/big/f03"
               touch -h -d "@$(($2 - 3600))" "$1/usr/lib/big" "$1/etc/motd""#,
            &[root, Path::new(&EPOCH.to_string())],
        );
    }

    fn listing(disk: &Path) -> String {
        tree_listing(disk, OFFSET).unwrap()
    }

    fn fsck(disk: &Path) {
        let part = disk.with_extension("part");
        let bytes = fs::read(disk).unwrap();
        fs::write(&part, &bytes[OFFSET as usize..(OFFSET + SIZE) as usize]).unwrap();
        let (status, out) = Cmd::new("e2fsck").arg("-fn").arg(&part).run_status().unwrap();
        assert!(status.success(), "e2fsck -fn: {}\n{}", out.tail, out.stdout_string());
    }

    fn candidates(paths: &[&str]) -> Vec<Candidate> {
        paths
            .iter()
            .map(|p| Candidate {
                path: p.into(),
                subtree: false,
            })
            .collect()
    }

    /// In `dir`: `old_tree` as `old`, a copy changed by `change` as
    /// `new`, and a disk made from each (`patched` from old, `scratch`
    /// from new).
    struct Pair {
        old: PathBuf,
        new: PathBuf,
        patched: PathBuf,
        scratch: PathBuf,
    }

    fn pair(dir: &Path, change: impl FnOnce(&Path)) -> Pair {
        let (old, new) = (dir.join("old"), dir.join("new"));
        old_tree(&old);
        set_times(&old);
        sh(r#"cp -a "$1" "$2""#, &[&old, &new]);
        change(&new);
        set_times(&new);
        let (patched, scratch) = (dir.join("patched.raw"), dir.join("scratch.raw"));
        for (disk, tree) in [(&patched, &old), (&scratch, &new)] {
            sparse_file(disk, SIZE + (2 << 20));
            make_ext4(disk, OFFSET, SIZE, tree, &opts()).unwrap();
        }
        Pair {
            old,
            new,
            patched,
            scratch,
        }
    }

    #[test]
    fn a_patched_filesystem_holds_the_same_tree_as_one_made_from_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let Pair {
            old,
            new,
            patched,
            scratch,
        } = pair(dir.path(), change);
        assert_ne!(listing(&patched), listing(&scratch), "the change changed nothing");

        // What the overlay uppers would name: every changed path, some
        // unchanged ones, one that exists in neither tree.
        let names = candidates(&[
            "etc/motd",
            "etc/added",
            "etc/hostname",
            "etc/motd.link",
            "etc/fifo",
            "etc/ssh/sshd_config",
            "srv/new",
            "var/log/old",
            "opt/gone",
            "lib",
            "usr/lib/big/f07",
            "usr/lib/big/f08",
            "usr/lib/big/f03",
            "nowhere/at/all",
        ]);
        let outcome = patch_ext4(&patched, OFFSET, &old, &new, &names, Some(EPOCH)).unwrap();
        assert!(
            matches!(outcome, Patch::Applied { changed } if changed > 10),
            "{outcome:?}"
        );
        fsck(&patched);
        assert_eq!(listing(&patched), listing(&scratch));

        // Patching again with the same trees changes nothing.
        let again = patch_ext4(&patched, OFFSET, &new, &new, &names, Some(EPOCH)).unwrap();
        assert_eq!(again, Patch::Applied { changed: 0 });
    }

    #[test]
    fn a_subtree_candidate_covers_what_lies_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let Pair {
            old,
            new,
            patched,
            scratch,
        } = pair(dir.path(), |new| {
            fs::remove_file(new.join("usr/lib/big/f10")).unwrap();
            fs::write(new.join("usr/lib/big/f11"), "edited").unwrap();
        });

        let whole = [Candidate {
            path: "usr/lib".into(),
            subtree: true,
        }];
        patch_ext4(&patched, OFFSET, &old, &new, &whole, Some(EPOCH)).unwrap();
        fsck(&patched);
        assert_eq!(listing(&patched), listing(&scratch));
    }

    #[test]
    fn what_debugfs_cannot_reproduce_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let Pair { old, new, patched, .. } = pair(dir.path(), |new| {
            fs::hard_link(new.join("etc/motd"), new.join("etc/motd.hard")).unwrap();
            fs::write(new.join("etc/attr"), "x").unwrap();
            sh(r#"setfattr -n user.kiln -v 1 "$1/etc/attr""#, &[new]);
            fs::write(new.join("etc/quote\"d"), "x").unwrap();
        });
        let bytes = fs::read(&patched).unwrap();
        for (path, why) in [
            ("etc/motd", "hard links"),
            ("etc/attr", "extended attributes"),
            ("etc/quote\"d", "debugfs cannot name it"),
        ] {
            let outcome = patch_ext4(&patched, OFFSET, &old, &new, &candidates(&[path]), Some(EPOCH)).unwrap();
            assert!(
                matches!(&outcome, Patch::Refused(r) if r.contains(why)),
                "{path}: {outcome:?}"
            );
        }
        assert!(
            fs::read(&patched).unwrap() == bytes,
            "a refused patch wrote to the disk"
        );
    }
}
