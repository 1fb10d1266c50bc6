//! Reading files out of a filesystem inside a disk image without mounting
//! it: ext2/3/4 in Rust through `ext4-view`, straight from the
//! [`DiskImage`]; XFS through `xfs_db -r` on a sparse temporary copy of the
//! partition (deleted on drop), with file data read by kiln from the extent
//! map `xfs_db` prints.
//!
//! Paths are always resolved inside the image: an absolute symlink target
//! starts again at the image's root, `..` stops at it, and nothing on the
//! host is ever consulted. Non-goals: writing, btrfs, FAT, extended
//! attributes.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use kiln_exec::{Cmd, WorkDir};
use serde::Serialize;

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::image::DiskImage;
use crate::probe::{probe_filesystem, FsType};

/// Files larger than this are refused rather than read into memory.
pub(crate) const MAX_READ: u64 = 256 << 20;
/// Symlinks followed while resolving one path (Linux's limit).
const MAX_SYMLINKS: usize = 40;
/// Inodes read per `xfs_db` run when listing a directory with metadata.
const XFS_BATCH: usize = 256;

/// The type of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// A file's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FileMeta {
    pub kind: FileKind,
    /// Permission bits with setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Modification time in Unix seconds, where the reader exposes it
    /// (ext2/3/4; `None` for XFS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
}

/// Read-only access to a filesystem. Paths are absolute within the
/// filesystem; a missing path (or one whose parent is not a directory) is
/// `Ok(None)`, not an error.
pub trait FsRead {
    /// The contents of a file, following symlinks.
    fn read_file(&mut self, path: &str) -> Result<Option<Vec<u8>>>;
    /// Metadata, following symlinks.
    fn metadata(&mut self, path: &str) -> Result<Option<FileMeta>>;
    /// Metadata of the path itself, not of what a final symlink points to.
    fn symlink_metadata(&mut self, path: &str) -> Result<Option<FileMeta>>;
    /// Names in a directory (without `.` and `..`), sorted, following symlinks.
    fn read_dir(&mut self, path: &str) -> Result<Option<Vec<String>>>;
    /// The target of a symlink; `None` if missing or not a symlink.
    fn read_link(&mut self, path: &str) -> Result<Option<String>>;
    /// The filesystem's type.
    fn fs_type(&self) -> FsType;

    /// Each entry of a directory with its own metadata (a symlink's, not its
    /// target's), sorted by name; `None` if `path` is not a directory. Walks
    /// of a whole tree go through it, so readers override it where one
    /// listing can carry the metadata (ext4's directory entries lead
    /// straight to their inodes; XFS batches its inode reads).
    /// Reads the metadata of the whole tree ahead of a walk, for readers
    /// that pay per lookup (XFS starts `xfs_db` per call); a no-op elsewhere.
    fn prefetch_tree(&mut self) -> Result<()> {
        Ok(())
    }

    fn read_dir_meta(&mut self, path: &str) -> Result<Option<Vec<(String, FileMeta)>>> {
        let Some(names) = self.read_dir(path)? else {
            return Ok(None);
        };
        let base = path.trim_end_matches('/');
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            if let Some(meta) = self.symlink_metadata(&format!("{base}/{name}"))? {
                entries.push((name, meta));
            }
        }
        Ok(Some(entries))
    }
}

/// Opens the filesystem in the `size` bytes at `offset` of `image` (an
/// independent handle on the same file is used).
pub fn open_filesystem(image: &DiskImage, offset: u64, size: u64) -> Result<Box<dyn FsRead>> {
    let mut image = image.try_clone()?;
    let info = probe_filesystem(&mut image, offset, size)?;
    let path = image.path().to_owned();
    let at = || format!("opening the filesystem at offset {offset} of {}", path.display());
    match info.map(|i| i.fs_type) {
        Some(t) if t.is_ext() => Ok(Box::new(
            Ext4Fs::open(image, offset, size, t).map_err(|e| e.context_for(at()))?,
        )),
        Some(FsType::Xfs) => Ok(Box::new(
            XfsFs::open(&mut image, offset, size).map_err(|e| e.context_for(at()))?,
        )),
        Some(t) => Err(Error::unsupported(format!(
            "{}: kiln does not read {t} filesystems",
            at()
        ))),
        None => Err(Error::invalid(format!("{}: no filesystem found", at()))),
    }
}

fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

fn kind_of_mode(mode: u32) -> FileKind {
    match mode & 0o170000 {
        0o100000 => FileKind::File,
        0o040000 => FileKind::Dir,
        0o120000 => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

// ---------------------------------------------------------------- ext4

/// Feeds `ext4-view` the bytes of one partition of a [`DiskImage`].
struct PartitionReader {
    image: DiskImage,
    offset: u64,
    size: u64,
}

impl ext4_view::Ext4Read for PartitionReader {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if start.checked_add(dst.len() as u64).is_none_or(|end| end > self.size) {
            return Err(Box::new(Error::corrupt(format!(
                "the filesystem reads {} bytes at {start}, beyond its {}-byte partition",
                dst.len(),
                self.size
            ))));
        }
        Ok(self.image.read_exact_at(dst, self.offset + start)?)
    }
}

pub(crate) struct Ext4Fs {
    fs: ext4_view::Ext4,
    fs_type: FsType,
    /// The partition's size: no file kiln reads from it can be larger.
    size: u64,
}

/// Longest symlink target (Linux's PATH_MAX). `ext4-view` reads a target
/// into a buffer of the size its inode claims, so a corrupt inode is
/// refused before any call that reads or follows it.
const MAX_SYMLINK: u64 = 4096;

/// Most symlinks followed in one path (Linux's ELOOP limit).
const MAX_SYMLINK_HOPS: usize = 40;

impl Ext4Fs {
    fn open(mut image: DiskImage, offset: u64, size: u64, fs_type: FsType) -> Result<Self> {
        check_ext4_geometry(&mut image, offset, size)?;
        let fs = ext4_view::Ext4::load(Box::new(PartitionReader { image, offset, size }))
            .map_err(|e| ext4_error(e, "loading the ext4 superblock"))?;
        Ok(Ext4Fs { fs, fs_type, size })
    }

    /// Checks every symlink that resolving `path` would follow (each
    /// component, and the targets of those that are symlinks, recursively)
    /// for a target no longer than [`MAX_SYMLINK`]. A missing component
    /// ends the check: the call that follows reports it.
    fn check_symlinks(&mut self, path: &str, hops: usize) -> Result<()> {
        let mut prefix = String::new();
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            prefix.push('/');
            prefix.push_str(comp);
            let Ok(meta) = self.fs.symlink_metadata(prefix.as_str()) else {
                return Ok(());
            };
            if !meta.file_type().is_symlink() {
                continue;
            }
            if hops >= MAX_SYMLINK_HOPS {
                return Err(Error::corrupt(format!(
                    "{path}: more than {MAX_SYMLINK_HOPS} symlinks to follow (a loop?)"
                )));
            }
            if meta.len() > MAX_SYMLINK {
                return Err(Error::corrupt(format!(
                    "the symlink {prefix} has a {}-byte target, more than the {MAX_SYMLINK} a path can have (ext4)",
                    meta.len()
                )));
            }
            let target = self
                .fs
                .read_link(prefix.as_str())
                .map_err(|e| ext4_error(e, &format!("reading the symlink {prefix}")))?;
            let target = String::from_utf8_lossy(target.as_ref()).into_owned();
            let resolved = if target.starts_with('/') {
                target
            } else {
                let parent = prefix.rsplit_once('/').map_or("", |(p, _)| p);
                format!("{parent}/{target}")
            };
            self.check_symlinks(&resolved, hops + 1)?;
        }
        Ok(())
    }

    /// [`Self::check_symlinks`] for the directory that holds `path`.
    fn check_parent(&mut self, path: &str) -> Result<()> {
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        self.check_symlinks(parent, 0)
    }

    /// Maps "not there" to `None` and the rest to errors.
    fn found<T>(r: std::result::Result<T, ext4_view::Ext4Error>, what: &str, path: &str) -> Result<Option<T>> {
        use ext4_view::Ext4Error as E;
        match r {
            Ok(v) => Ok(Some(v)),
            Err(E::NotFound | E::NotADirectory) => Ok(None),
            Err(e) => Err(ext4_error(e, &format!("{what} {path}"))),
        }
    }
}

/// Most block groups kiln reads: 2^21 groups of 128 MiB (4 KiB blocks) is
/// 256 TiB, far beyond any image; their descriptors take 32 MiB in memory.
const MAX_EXT4_GROUPS: u64 = 1 << 21;

/// Checks the superblock's geometry before `ext4-view` loads it: the crate
/// reads the whole group descriptor table into memory, one entry per block
/// group, so a corrupt block count would make it allocate gigabytes. The
/// filesystem must fit in its partition, and so must its descriptor table.
fn check_ext4_geometry(image: &mut DiskImage, offset: u64, size: u64) -> Result<()> {
    let mut sb = [0u8; 1024];
    if size < 2048 {
        return Err(Error::corrupt(format!(
            "an ext4 filesystem needs at least 2048 bytes; the partition has {size}"
        )));
    }
    image.read_exact_at(&mut sb, offset + 1024)?;
    let le32 = |at: usize| u32::from_le_bytes(sb[at..at + 4].try_into().expect("4 bytes"));
    let incompat_64bit = le32(0x60) & 0x80 != 0;
    // The high half counts even without the 64bit feature, as ext4-view
    // reads it (a real filesystem without the feature has zero there).
    let blocks = u64::from(le32(0x4)) | (u64::from(le32(0x150)) << 32);
    let log_block_size = le32(0x18);
    let per_group = u64::from(le32(0x20));
    if log_block_size > 6 || per_group == 0 {
        return Err(Error::corrupt(format!(
            "the ext4 superblock is not valid (block size 2^{} KiB, {per_group} blocks per group)",
            log_block_size
        )));
    }
    let block_size = 1024u64 << log_block_size;
    let fs_bytes = u128::from(blocks) * u128::from(block_size);
    if fs_bytes > u128::from(size) {
        return Err(Error::corrupt(format!(
            "the ext4 superblock says the filesystem has {blocks} blocks of {block_size} bytes ({fs_bytes} bytes), \
             more than its {size}-byte partition holds"
        )));
    }
    let groups = blocks.div_ceil(per_group);
    let desc_size = if incompat_64bit {
        u64::from(u16::from_le_bytes([sb[0xfe], sb[0xff]])).max(64)
    } else {
        32
    };
    if groups > MAX_EXT4_GROUPS || groups.saturating_mul(desc_size) > size {
        return Err(Error::corrupt(format!(
            "the ext4 superblock says the filesystem has {groups} block groups ({per_group} blocks each), \
             more than its {size}-byte partition holds"
        )));
    }
    Ok(())
}

fn ext4_error(e: ext4_view::Ext4Error, context: &str) -> Error {
    use ext4_view::Ext4Error as E;
    let kind = match &e {
        E::Io(_) => ErrorKind::Io,
        E::Incompatible(_) | E::Encrypted => ErrorKind::Unsupported,
        E::Corrupt(_) | E::TooManySymlinks => ErrorKind::Corrupt,
        _ => ErrorKind::InvalidInput,
    };
    Error::with_source(kind, format!("{context} (ext4)"), e)
}

fn ext4_meta(m: &ext4_view::Metadata) -> FileMeta {
    let t = m.file_type();
    let kind = if t.is_regular_file() {
        FileKind::File
    } else if t.is_dir() {
        FileKind::Dir
    } else if t.is_symlink() {
        FileKind::Symlink
    } else {
        FileKind::Other
    };
    FileMeta {
        kind,
        mode: u32::from(m.mode()),
        uid: m.uid(),
        gid: m.gid(),
        size: m.len(),
        mtime: Some(m.modified().seconds()),
    }
}

impl FsRead for Ext4Fs {
    fn read_file(&mut self, path: &str) -> Result<Option<Vec<u8>>> {
        let path = absolute(path);
        self.check_symlinks(&path, 0)?;
        let Some(meta) = Self::found(self.fs.metadata(path.as_str()), "reading metadata of", &path)? else {
            return Ok(None);
        };
        if meta.len() > MAX_READ {
            return Err(Error::unsupported(format!(
                "{path} is {} bytes, more than kiln reads into memory",
                meta.len()
            )));
        }
        // ext4-view reads a file into a buffer of the size its inode says;
        // a file larger than its filesystem is sparse or corrupt.
        if meta.len() > self.size {
            return Err(Error::corrupt(format!(
                "{path} claims {} bytes, more than its {}-byte filesystem holds (ext4)",
                meta.len(),
                self.size
            )));
        }
        Self::found(self.fs.read(path.as_str()), "reading", &path)
    }

    fn metadata(&mut self, path: &str) -> Result<Option<FileMeta>> {
        let path = absolute(path);
        self.check_symlinks(&path, 0)?;
        Ok(Self::found(self.fs.metadata(path.as_str()), "reading metadata of", &path)?.map(|m| ext4_meta(&m)))
    }

    fn symlink_metadata(&mut self, path: &str) -> Result<Option<FileMeta>> {
        let path = absolute(path);
        self.check_parent(&path)?;
        Ok(Self::found(self.fs.symlink_metadata(path.as_str()), "reading metadata of", &path)?.map(|m| ext4_meta(&m)))
    }

    fn read_dir(&mut self, path: &str) -> Result<Option<Vec<String>>> {
        let path = absolute(path);
        self.check_symlinks(&path, 0)?;
        let Some(iter) = Self::found(self.fs.read_dir(path.as_str()), "listing", &path)? else {
            return Ok(None);
        };
        let mut names = Vec::new();
        for entry in iter {
            let entry = entry.map_err(|e| ext4_error(e, &format!("listing {path}")))?;
            let name = String::from_utf8_lossy(entry.file_name().as_ref()).into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        names.sort();
        Ok(Some(names))
    }

    fn read_link(&mut self, path: &str) -> Result<Option<String>> {
        let path = absolute(path);
        self.check_parent(&path)?;
        if let Ok(meta) = self.fs.symlink_metadata(path.as_str()) {
            if meta.file_type().is_symlink() && meta.len() > MAX_SYMLINK {
                return Err(Error::corrupt(format!(
                    "the symlink {path} has a {}-byte target, more than the {MAX_SYMLINK} a path can have (ext4)",
                    meta.len()
                )));
            }
        }
        match self.fs.read_link(path.as_str()) {
            Ok(target) => Ok(Some(String::from_utf8_lossy(target.as_ref()).into_owned())),
            Err(ext4_view::Ext4Error::NotASymlink) => Ok(None),
            Err(e) => Self::found(Err(e), "reading the symlink", &path).map(|_: Option<()>| None),
        }
    }

    fn fs_type(&self) -> FsType {
        self.fs_type
    }

    fn read_dir_meta(&mut self, path: &str) -> Result<Option<Vec<(String, FileMeta)>>> {
        let path = absolute(path);
        self.check_symlinks(&path, 0)?;
        let Some(iter) = Self::found(self.fs.read_dir(path.as_str()), "listing", &path)? else {
            return Ok(None);
        };
        let mut entries = Vec::new();
        for entry in iter {
            let entry = entry.map_err(|e| ext4_error(e, &format!("listing {path}")))?;
            let name = String::from_utf8_lossy(entry.file_name().as_ref()).into_owned();
            if name == "." || name == ".." {
                continue;
            }
            // The entry's own inode: no path lookup, and a symlink is not followed.
            let meta = entry
                .metadata()
                .map_err(|e| ext4_error(e, &format!("reading metadata of {path}/{name}")))?;
            entries.push((name, ext4_meta(&meta)));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Some(entries))
    }
}

// ---------------------------------------------------------------- XFS

#[derive(Debug, Clone)]
struct XfsInode {
    meta: FileMeta,
    /// (file block, partition byte offset, block count, unwritten)
    extents: Vec<(u64, u64, u64, bool)>,
    /// Target of a symlink stored inside the inode.
    local_target: Option<String>,
}

/// An XFS filesystem read through `xfs_db -r`.
pub(crate) struct XfsFs {
    _scratch: WorkDir,
    raw: PathBuf,
    file: File,
    block_size: u64,
    ag_blocks: u64,
    root: u64,
    inodes: HashMap<u64, XfsInode>,
    dirs: HashMap<u64, Vec<(String, u64)>>,
}

impl XfsFs {
    fn open(image: &mut DiskImage, offset: u64, size: u64) -> Result<Self> {
        let scratch =
            WorkDir::new_in(&std::env::temp_dir(), "kiln-xfs-read-").ctx(|| "creating a scratch directory".into())?;
        let raw = scratch.path().join("partition.raw");
        image.extract(offset, size, &raw)?;
        let file = File::open(&raw).ctx(|| format!("opening {}", raw.display()))?;
        let mut sb = [0u8; 512];
        file.read_exact_at(&mut sb, 0)
            .ctx(|| "reading the XFS superblock".into())?;
        let be32 = |at: usize| u64::from(u32::from_be_bytes(sb[at..at + 4].try_into().expect("4 bytes")));
        let (block_size, ag_blocks) = (be32(4), be32(84));
        let root = u64::from_be_bytes(sb[56..64].try_into().expect("8 bytes"));
        if &sb[0..4] != b"XFSB" || !(512..=65536).contains(&block_size) || ag_blocks == 0 {
            return Err(Error::invalid("the XFS superblock is not valid"));
        }
        Ok(XfsFs {
            _scratch: scratch,
            raw,
            file,
            block_size,
            ag_blocks,
            root,
            inodes: HashMap::new(),
            dirs: HashMap::new(),
        })
    }

    fn xfs_db(&self, commands: &[String]) -> Result<String> {
        let mut cmd = Cmd::new("xfs_db").arg("-r");
        for c in commands {
            cmd = cmd.args(["-c", c]);
        }
        cmd.arg(&self.raw)
            .run_string()
            .map_err(|e| Error::tool("reading XFS metadata", e))
    }

    fn inode(&mut self, ino: u64) -> Result<XfsInode> {
        if let Some(i) = self.inodes.get(&ino) {
            return Ok(i.clone());
        }
        let out = self.xfs_db(&[format!("inode {ino}"), "print".into(), "bmap".into()])?;
        let inode = self.parse_inode(ino, &out)?;
        self.inodes.insert(ino, inode.clone());
        Ok(inode)
    }

    /// Reads the inodes `inos` that are not cached yet, many per `xfs_db`
    /// run: a walk of a whole tree would otherwise start one process per file.
    fn prefetch(&mut self, inos: &[u64]) -> Result<()> {
        let missing: Vec<u64> = inos.iter().copied().filter(|i| !self.inodes.contains_key(i)).collect();
        for chunk in missing.chunks(XFS_BATCH) {
            let commands: Vec<String> = chunk
                .iter()
                .flat_map(|ino| [format!("inode {ino}"), "print".into(), "bmap".into()])
                .collect();
            let out = self.xfs_db(&commands)?;
            // Each inode's `print` starts with its magic number.
            let mut parts: Vec<String> = Vec::new();
            for line in out.lines() {
                if line.starts_with("core.magic") {
                    parts.push(String::new());
                }
                if let Some(part) = parts.last_mut() {
                    part.push_str(line);
                    part.push('\n');
                }
            }
            if parts.len() != chunk.len() {
                // Output that does not split as expected: one run per inode.
                for &ino in chunk {
                    self.inode(ino)?;
                }
                continue;
            }
            for (&ino, text) in chunk.iter().zip(&parts) {
                let inode = self.parse_inode(ino, text)?;
                self.inodes.insert(ino, inode);
            }
        }
        Ok(())
    }

    /// Lists the directories `dirs` that are not cached yet, many per
    /// `xfs_db` run; each listing is preceded by its inode's magic number,
    /// which no `ls` line starts with.
    fn list_many(&mut self, dirs: &[u64]) -> Result<()> {
        let missing: Vec<u64> = dirs.iter().copied().filter(|d| !self.dirs.contains_key(d)).collect();
        for chunk in missing.chunks(XFS_BATCH) {
            let commands: Vec<String> = chunk
                .iter()
                .flat_map(|ino| [format!("inode {ino}"), "print core.magic".into(), "ls".into()])
                .collect();
            let out = self.xfs_db(&commands)?;
            let mut parts: Vec<Vec<(String, u64)>> = Vec::new();
            for line in out.lines() {
                if line.starts_with("core.magic") {
                    parts.push(Vec::new());
                } else if let (Some(part), Some((name, child))) = (parts.last_mut(), parse_ls_line(line)) {
                    if name != "." && name != ".." {
                        part.push((name, child));
                    }
                }
            }
            if parts.len() != chunk.len() {
                for &d in chunk {
                    self.entries(d)?;
                }
                continue;
            }
            for (&d, part) in chunk.iter().zip(parts) {
                self.dirs.insert(d, part);
            }
        }
        Ok(())
    }

    /// An inode from what `xfs_db` printed for `inode N`, `print`, `bmap`.
    fn parse_inode(&self, ino: u64, out: &str) -> Result<XfsInode> {
        let mut fields = HashMap::new();
        let mut extents = Vec::new();
        let mut local_target = None;
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("data offset ") {
                extents.push(
                    self.parse_extent(rest)
                        .ok_or_else(|| Error::corrupt(format!("inode {ino}: cannot parse xfs_db extent {line:?}")))?,
                );
            } else if let Some((key, value)) = line.split_once(" = ") {
                if key.ends_with(".symlink") {
                    local_target = Some(value.trim_matches('"').to_owned());
                } else if let Some(k) = key.strip_prefix("core.") {
                    fields.insert(k.to_owned(), value.split(' ').next().unwrap_or("").to_owned());
                }
            }
        }
        let num = |k: &str| -> Result<u64> {
            let v = fields
                .get(k)
                .ok_or_else(|| Error::corrupt(format!("inode {ino}: xfs_db printed no core.{k}")))?;
            let parsed = if k == "mode" {
                u64::from_str_radix(v, 8)
            } else {
                v.parse()
            };
            parsed.map_err(|_| Error::corrupt(format!("inode {ino}: core.{k} = {v:?}")))
        };
        let mode = num("mode")? as u32;
        let meta = FileMeta {
            kind: kind_of_mode(mode),
            mode: mode & 0o7777,
            uid: num("uid")? as u32,
            gid: num("gid")? as u32,
            size: num("size")?,
            mtime: None,
        };
        Ok(XfsInode {
            meta,
            extents,
            local_target,
        })
    }

    /// Parses `0 startblock 10 (0/10) count 1 flag 0`.
    fn parse_extent(&self, s: &str) -> Option<(u64, u64, u64, bool)> {
        let words: Vec<&str> = s.split_whitespace().collect();
        let file_block = words.first()?.parse().ok()?;
        let (ag, agbno) = words.get(3)?.trim_matches(|c| c == '(' || c == ')').split_once('/')?;
        let (ag, agbno): (u64, u64) = (ag.parse().ok()?, agbno.parse().ok()?);
        let count = words.get(5)?.parse().ok()?;
        let unwritten = words.get(7)? != &"0";
        let byte = ag
            .checked_mul(self.ag_blocks)?
            .checked_add(agbno)?
            .checked_mul(self.block_size)?;
        Some((file_block, byte, count, unwritten))
    }

    fn entries(&mut self, ino: u64) -> Result<Vec<(String, u64)>> {
        if let Some(d) = self.dirs.get(&ino) {
            return Ok(d.clone());
        }
        let out = self.xfs_db(&[format!("inode {ino}"), "ls".into()])?;
        let mut entries = Vec::new();
        for line in out.lines() {
            if let Some((name, child)) = parse_ls_line(line) {
                if name != "." && name != ".." {
                    entries.push((name, child));
                }
            }
        }
        self.dirs.insert(ino, entries.clone());
        Ok(entries)
    }

    fn read_data(&mut self, ino: u64, inode: &XfsInode) -> Result<Vec<u8>> {
        let size = inode.meta.size;
        if size > MAX_READ {
            return Err(Error::unsupported(format!(
                "inode {ino} is {size} bytes, more than kiln reads into memory"
            )));
        }
        let mut data = vec![0u8; size as usize];
        let len = self
            .file
            .metadata()
            .ctx(|| "reading the extracted partition".into())?
            .len();
        for &(file_block, at, count, unwritten) in &inode.extents {
            let start = file_block.saturating_mul(self.block_size);
            if unwritten || start >= size {
                continue;
            }
            let n = count.saturating_mul(self.block_size).min(size - start) as usize;
            if at.saturating_add(n as u64) > len {
                return Err(Error::corrupt(format!(
                    "inode {ino} has an extent beyond the end of the filesystem"
                )));
            }
            self.file
                .read_exact_at(&mut data[start as usize..start as usize + n], at)
                .ctx(|| format!("reading inode {ino} data at {at}"))?;
        }
        Ok(data)
    }

    fn link_target(&mut self, ino: u64, inode: &XfsInode) -> Result<String> {
        if let Some(t) = &inode.local_target {
            return Ok(t.clone());
        }
        // A remote symlink: v5 filesystems prefix each block with a 56-byte
        // header that starts with "XSLM".
        let size = inode.meta.size as usize;
        let mut target = Vec::with_capacity(size);
        let mut extents = inode.extents.clone();
        extents.sort();
        for (_, at, count, _) in extents {
            for b in 0..count {
                let mut block = vec![0u8; self.block_size as usize];
                self.file
                    .read_exact_at(&mut block, at + b * self.block_size)
                    .ctx(|| format!("reading symlink inode {ino}"))?;
                let body = if &block[0..4] == b"XSLM" {
                    &block[56..]
                } else {
                    &block[..]
                };
                target.extend_from_slice(body);
            }
        }
        target.truncate(size);
        Ok(String::from_utf8_lossy(&target).into_owned())
    }

    /// Resolves `path` to an inode inside the filesystem.
    fn resolve(&mut self, path: &str, follow_last: bool) -> Result<Option<u64>> {
        let mut stack = vec![self.root];
        let mut queue: VecDeque<String> = path.split('/').map(str::to_owned).collect();
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            match c.as_str() {
                "" | "." => continue,
                ".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let dir = *stack.last().expect("never empty");
            if self.inode(dir)?.meta.kind != FileKind::Dir {
                return Ok(None);
            }
            let Some(child) = self.entries(dir)?.into_iter().find(|(n, _)| *n == c).map(|(_, i)| i) else {
                return Ok(None);
            };
            let inode = self.inode(child)?;
            let last = queue.iter().all(|c| c.is_empty());
            if inode.meta.kind == FileKind::Symlink && (follow_last || !last) {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(Error::corrupt(format!("{path}: too many levels of symbolic links")));
                }
                let target = self.link_target(child, &inode)?;
                if target.starts_with('/') {
                    stack.truncate(1);
                }
                for part in target.split('/').rev() {
                    queue.push_front(part.to_owned());
                }
            } else {
                stack.push(child);
            }
        }
        Ok(stack.last().copied())
    }
}

/// Parses one line of xfs_db's `ls`: `offset inode type hash namelen name
/// (good)`. The name is taken by its length, so it may contain spaces.
fn parse_ls_line(line: &str) -> Option<(String, u64)> {
    let mut rest = line;
    let mut fields = [""; 5];
    for field in &mut fields {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ')?;
        *field = &rest[..end];
        rest = &rest[end..];
    }
    let child = fields[1].parse().ok()?;
    let len: usize = fields[4].parse().ok()?;
    let name = rest.strip_prefix(' ')?.as_bytes();
    Some((String::from_utf8_lossy(name.get(..len)?).into_owned(), child))
}

impl FsRead for XfsFs {
    fn read_file(&mut self, path: &str) -> Result<Option<Vec<u8>>> {
        let Some(ino) = self.resolve(path, true)? else {
            return Ok(None);
        };
        let inode = self.inode(ino)?;
        if inode.meta.kind != FileKind::File {
            return Err(Error::input(format!("{path} is not a regular file")));
        }
        self.read_data(ino, &inode).map(Some)
    }

    fn metadata(&mut self, path: &str) -> Result<Option<FileMeta>> {
        match self.resolve(path, true)? {
            Some(ino) => Ok(Some(self.inode(ino)?.meta)),
            None => Ok(None),
        }
    }

    fn symlink_metadata(&mut self, path: &str) -> Result<Option<FileMeta>> {
        match self.resolve(path, false)? {
            Some(ino) => Ok(Some(self.inode(ino)?.meta)),
            None => Ok(None),
        }
    }

    fn read_dir(&mut self, path: &str) -> Result<Option<Vec<String>>> {
        let Some(ino) = self.resolve(path, true)? else {
            return Ok(None);
        };
        if self.inode(ino)?.meta.kind != FileKind::Dir {
            return Ok(None);
        }
        let mut names: Vec<String> = self.entries(ino)?.into_iter().map(|(n, _)| n).collect();
        names.sort();
        Ok(Some(names))
    }

    fn read_link(&mut self, path: &str) -> Result<Option<String>> {
        let Some(ino) = self.resolve(path, false)? else {
            return Ok(None);
        };
        let inode = self.inode(ino)?;
        if inode.meta.kind != FileKind::Symlink {
            return Ok(None);
        }
        self.link_target(ino, &inode).map(Some)
    }

    fn fs_type(&self) -> FsType {
        FsType::Xfs
    }

    /// Breadth first, a whole level per batch of `xfs_db` runs: about a
    /// hundred runs for a Debian system rather than one per directory.
    fn prefetch_tree(&mut self) -> Result<()> {
        let mut seen: std::collections::HashSet<u64> = std::collections::HashSet::new();
        let mut level = vec![self.root];
        self.prefetch(&level)?;
        while !level.is_empty() {
            level.retain(|d| seen.insert(*d));
            self.list_many(&level)?;
            let children: Vec<u64> = level
                .iter()
                .filter_map(|d| self.dirs.get(d))
                .flat_map(|entries| entries.iter().map(|(_, i)| *i))
                .collect();
            self.prefetch(&children)?;
            level = children
                .into_iter()
                .filter(|i| self.inodes.get(i).is_some_and(|n| n.meta.kind == FileKind::Dir))
                .collect();
        }
        Ok(())
    }

    fn read_dir_meta(&mut self, path: &str) -> Result<Option<Vec<(String, FileMeta)>>> {
        let Some(ino) = self.resolve(path, true)? else {
            return Ok(None);
        };
        if self.inode(ino)?.meta.kind != FileKind::Dir {
            return Ok(None);
        }
        let mut children = self.entries(ino)?;
        let inos: Vec<u64> = children.iter().map(|(_, i)| *i).collect();
        self.prefetch(&inos)?;
        children.sort();
        let mut entries = Vec::with_capacity(children.len());
        for (name, child) in children {
            entries.push((name, self.inode(child)?.meta));
        }
        Ok(Some(entries))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::path::Path;

    use super::*;
    use crate::testutil::{pseudo_random, sparse_file, to_qcow2};
    use crate::{
        layout, make_ext4, make_xfs, read_partition_table, write_partition_table, FsOptions, PartKind, PartitionSpec,
        TableKind,
    };

    /// A tree with symlinks that would escape to the host if resolved there.
    fn tree(root: &Path) -> Vec<u8> {
        let big = pseudo_random(11, 1_000_000);
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("etc/sub")).unwrap();
        std::fs::write(root.join("usr/bin/big"), &big).unwrap();
        std::fs::write(root.join("etc/hostname"), "kiln\n").unwrap();
        std::fs::write(root.join("etc/sub/file with space"), "spaced").unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        symlink("/etc/hostname", root.join("usr/abs-link")).unwrap();
        symlink("../../../../../etc/hostname", root.join("usr/bin/up-link")).unwrap();
        symlink("/etc/passwd", root.join("etc/host-passwd")).unwrap(); // exists on the host, not in the image
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        let long = format!("/{}/etc/hostname", "./".repeat(400)); // XFS allows 1024 bytes
        symlink(&long, root.join("long-link")).unwrap();
        std::os::unix::fs::chown(root.join("etc/hostname"), Some(42), Some(43)).unwrap();
        big
    }

    fn check(fs: &mut dyn FsRead, big: &[u8]) {
        assert_eq!(fs.read_file("/usr/bin/big").unwrap().unwrap(), big);
        assert_eq!(
            fs.read_file("/bin/big").unwrap().unwrap(),
            big,
            "via a relative dir symlink"
        );
        assert_eq!(
            fs.read_file("/usr/abs-link").unwrap().unwrap(),
            b"kiln\n",
            "absolute target from the image root"
        );
        assert_eq!(
            fs.read_file("/usr/bin/up-link").unwrap().unwrap(),
            b"kiln\n",
            ".. stops at the image root"
        );
        assert_eq!(
            fs.read_file("/long-link").unwrap().unwrap(),
            b"kiln\n",
            "a symlink stored in blocks"
        );
        assert_eq!(fs.read_file("etc/sub/file with space").unwrap().unwrap(), b"spaced");
        assert_eq!(
            fs.read_file("/etc/host-passwd").unwrap(),
            None,
            "never the host's /etc/passwd"
        );
        assert_eq!(fs.read_file("/nope").unwrap(), None);
        assert_eq!(fs.read_file("/etc/hostname/below").unwrap(), None);
        // Listing with metadata (after reading the whole tree ahead, as a
        // walk does): symlinks are not followed, and each entry matches what
        // a lookup of its own path says.
        fs.prefetch_tree().unwrap();
        let listed = fs.read_dir_meta("/usr").unwrap().unwrap();
        let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["abs-link", "bin"]);
        assert_eq!(listed[0].1.kind, FileKind::Symlink);
        assert_eq!(listed[1].1.kind, FileKind::Dir);
        for (name, meta) in fs.read_dir_meta("/etc").unwrap().unwrap() {
            assert_eq!(
                fs.symlink_metadata(&format!("/etc/{name}")).unwrap(),
                Some(meta),
                "{name}"
            );
        }
        assert_eq!(fs.read_dir_meta("/etc/hostname").unwrap(), None);
        assert_eq!(fs.read_dir_meta("/nope").unwrap(), None);
        assert!(fs.read_file("/loop1").is_err());

        let m = fs.metadata("/etc/hostname").unwrap().unwrap();
        assert_eq!(
            (m.kind, m.mode, m.uid, m.gid, m.size),
            (FileKind::File, 0o644, 42, 43, 5)
        );
        assert_eq!(fs.metadata("/bin").unwrap().unwrap().kind, FileKind::Dir);
        assert_eq!(fs.symlink_metadata("/bin").unwrap().unwrap().kind, FileKind::Symlink);
        assert_eq!(fs.read_link("/bin").unwrap().as_deref(), Some("usr/bin"));
        assert_eq!(fs.read_link("/etc").unwrap(), None);
        assert_eq!(fs.read_dir("/bin").unwrap().unwrap(), ["big", "up-link"]);
        let mut root = vec!["bin", "etc", "long-link", "loop1", "loop2", "usr"];
        if fs.fs_type() == FsType::Ext4 {
            root.push("lost+found");
            root.sort();
        }
        assert_eq!(fs.read_dir("/").unwrap().unwrap(), root);
    }

    /// Builds a one-partition GPT disk with `fs`, converts it to qcow2 and
    /// reads it back through the partition table.
    fn roundtrip(fs: FsType) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        let big = tree(&root);
        let size = if fs == FsType::Xfs { 302u64 << 20 } else { 40 << 20 };
        let disk = dir.path().join("disk.raw");
        sparse_file(&disk, size);
        let parts = [PartitionSpec {
            kind: PartKind::LinuxFs,
            size: 0,
            name: "root".into(),
            guid: uuid::Uuid::from_u128(1),
        }];
        let l = layout(size, TableKind::Gpt, &parts).unwrap();
        let p = &l.partitions[0];
        if fs == FsType::Xfs {
            make_xfs(&disk, p.start, p.size, &root, &FsOptions::default()).unwrap();
        } else {
            make_ext4(&disk, p.start, p.size, &root, &FsOptions::default()).unwrap();
        }
        write_partition_table(&disk, &l, uuid::Uuid::from_u128(2)).unwrap();
        let q = dir.path().join("disk.qcow2");
        to_qcow2(&disk, &q, &["-c"]);
        let mut image = DiskImage::open(&q).unwrap();
        let t = read_partition_table(&mut image).unwrap();
        let part = &t.partitions[0];
        let mut reader = open_filesystem(&image, part.start, part.size).unwrap();
        assert_eq!(reader.fs_type(), fs);
        check(reader.as_mut(), &big);
    }

    #[test]
    fn ext4_in_qcow2() {
        roundtrip(FsType::Ext4);
    }

    #[test]
    fn xfs_db_ls_lines() {
        assert_eq!(
            parse_ls_line("12         132                regular        0x4d09c97a  14 file with spc (good)"),
            Some(("file with spc ".to_owned(), 132))
        );
        assert_eq!(
            parse_ls_line("8          128                directory      0x0000002e   1 . (good)"),
            Some((".".into(), 128))
        );
        assert_eq!(parse_ls_line("garbage"), None);
    }

    #[test]
    fn xfs_in_qcow2() {
        roundtrip(FsType::Xfs);
    }
}
