//! Reading a squashfs (a live ISO's root tree) without mounting it, through
//! `unsquashfs`: one `-lln` listing gives every path with its type, mode,
//! owner, size and symlink target; files are read with `-cat`. The
//! squashfs may sit inside a larger file (an ISO) at a byte offset, which
//! `unsquashfs -o` reads in place, so nothing is copied.
//!
//! Symlinks are resolved here, inside the image (`unsquashfs -cat` does not
//! follow absolute ones). Non-goals: extended attributes, names with
//! newlines (the listing is line based), hard-link identity.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use kiln_exec::Cmd;

use crate::error::{Error, Result};
use crate::fsread::{FileKind, FileMeta, FsRead, MAX_READ};
use crate::probe::FsType;

/// The magic at the start of a squashfs superblock.
pub const MAGIC: &[u8; 4] = b"hsqs";
const MAX_SYMLINKS: usize = 40;
/// The directory `unsquashfs -lln` prefixes every path with (its `-d`).
const LIST_ROOT: &str = "squashfs-root";

#[derive(Debug, Clone)]
struct Entry {
    meta: FileMeta,
    target: Option<String>,
}

/// A squashfs read through `unsquashfs`.
#[derive(Debug)]
pub struct SquashFs {
    file: PathBuf,
    offset: u64,
    /// Every path ("" is the root), without a leading `/`.
    entries: BTreeMap<String, Entry>,
}

impl SquashFs {
    /// Lists the squashfs at byte `offset` of `file`.
    pub fn open(file: &Path, offset: u64) -> Result<Self> {
        let what = || format!("listing the squashfs at offset {offset} of {}", file.display());
        let out = Cmd::new("unsquashfs")
            .args(["-lln", "-o", &offset.to_string()])
            .arg(file)
            .run()
            .map_err(|e| Error::tool(what(), e))?;
        let entries = parse_listing(&out.stdout_string());
        if !entries.contains_key("") {
            return Err(Error::invalid(format!("{}: unsquashfs listed no root", what())));
        }
        Ok(SquashFs {
            file: file.to_owned(),
            offset,
            entries,
        })
    }

    /// Resolves `path` to a listed path, following symlinks inside the image.
    fn resolve(&self, path: &str, follow_last: bool) -> Result<Option<String>> {
        let mut stack: Vec<String> = Vec::new();
        let mut queue: VecDeque<String> = path.split('/').map(str::to_owned).collect();
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            match c.as_str() {
                "" | "." => continue,
                ".." => {
                    stack.pop();
                    continue;
                }
                _ => {}
            }
            let dir = stack.join("/");
            if self.entries.get(&dir).map(|e| e.meta.kind) != Some(FileKind::Dir) {
                return Ok(None);
            }
            let candidate = if dir.is_empty() {
                c.clone()
            } else {
                format!("{dir}/{c}")
            };
            let Some(entry) = self.entries.get(&candidate) else {
                return Ok(None);
            };
            let last = queue.iter().all(|c| c.is_empty());
            match &entry.target {
                Some(target) if follow_last || !last => {
                    hops += 1;
                    if hops > MAX_SYMLINKS {
                        return Err(Error::corrupt(format!("{path}: too many levels of symbolic links")));
                    }
                    if target.starts_with('/') {
                        stack.clear();
                    }
                    for part in target.split('/').rev() {
                        queue.push_front(part.to_owned());
                    }
                }
                _ => stack.push(c),
            }
        }
        Ok(Some(stack.join("/")))
    }

    fn entry(&self, path: &str, follow: bool) -> Result<Option<(String, &Entry)>> {
        Ok(self
            .resolve(path, follow)?
            .and_then(|p| self.entries.get(&p).map(|e| (p, e))))
    }
}

impl FsRead for SquashFs {
    fn read_file(&mut self, path: &str) -> Result<Option<Vec<u8>>> {
        let Some((resolved, entry)) = self.entry(path, true)? else {
            return Ok(None);
        };
        if entry.meta.kind != FileKind::File {
            return Ok(None);
        }
        if entry.meta.size > MAX_READ {
            return Err(Error::unsupported(format!(
                "{path} has {} bytes, more than the {MAX_READ} kiln reads into memory",
                entry.meta.size
            )));
        }
        let out = Cmd::new("unsquashfs")
            .args(["-o", &self.offset.to_string(), "-cat"])
            .arg(&self.file)
            .arg(&resolved)
            .run()
            .map_err(|e| {
                Error::tool(
                    format!("reading /{resolved} from the squashfs in {}", self.file.display()),
                    e,
                )
            })?;
        Ok(Some(out.stdout))
    }

    fn metadata(&mut self, path: &str) -> Result<Option<FileMeta>> {
        Ok(self.entry(path, true)?.map(|(_, e)| e.meta))
    }

    fn symlink_metadata(&mut self, path: &str) -> Result<Option<FileMeta>> {
        Ok(self.entry(path, false)?.map(|(_, e)| e.meta))
    }

    fn read_dir(&mut self, path: &str) -> Result<Option<Vec<String>>> {
        let Some((dir, entry)) = self.entry(path, true)? else {
            return Ok(None);
        };
        if entry.meta.kind != FileKind::Dir {
            return Ok(None);
        }
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        Ok(Some(
            self.entries
                .range(prefix.clone()..)
                .take_while(|(p, _)| p.starts_with(&prefix))
                .filter_map(|(p, _)| {
                    let rest = &p[prefix.len()..];
                    (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_owned())
                })
                .collect(),
        ))
    }

    fn read_link(&mut self, path: &str) -> Result<Option<String>> {
        Ok(self.entry(path, false)?.and_then(|(_, e)| e.target.clone()))
    }

    fn fs_type(&self) -> FsType {
        FsType::Squashfs
    }
}

/// Parses `unsquashfs -lln`: `perms uid/gid size date time squashfs-root/path[ -> target]`
/// (a device's size is `major, minor`).
fn parse_listing(text: &str) -> BTreeMap<String, Entry> {
    let mut entries = BTreeMap::new();
    for line in text.lines() {
        let Some(at) = line.find(&format!(" {LIST_ROOT}")) else {
            continue;
        };
        let (head, path) = (&line[..at], &line[at + 1 + LIST_ROOT.len()..]);
        let fields: Vec<&str> = head.split_whitespace().collect();
        let [perms, owner, ..] = fields.as_slice() else {
            continue;
        };
        let kind = match perms.as_bytes().first() {
            Some(b'-') => FileKind::File,
            Some(b'd') => FileKind::Dir,
            Some(b'l') => FileKind::Symlink,
            Some(_) => FileKind::Other,
            None => continue,
        };
        let size = fields.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
        let (uid, gid) = owner.split_once('/').unwrap_or(("0", "0"));
        let (path, target) = match (kind, path.split_once(" -> ")) {
            (FileKind::Symlink, Some((p, t))) => (p, Some(t.to_owned())),
            _ => (path, None),
        };
        let path = path.trim_start_matches('/').to_owned();
        entries.insert(
            path,
            Entry {
                meta: FileMeta {
                    kind,
                    mode: mode_bits(perms),
                    uid: uid.parse().unwrap_or(0),
                    gid: gid.parse().unwrap_or(0),
                    size,
                    mtime: None,
                },
                target,
            },
        );
    }
    entries
}

/// `-rwsr-xr-t` → 0o5755.
fn mode_bits(perms: &str) -> u32 {
    let p = perms.as_bytes();
    if p.len() < 10 {
        return 0;
    }
    let mut mode = 0;
    for (i, &c) in p[1..10].iter().enumerate() {
        let bit = 1 << (8 - i);
        if !matches!(c, b'-' | b'S' | b'T') {
            mode |= bit;
        }
    }
    for (at, special) in [(3, 0o4000), (6, 0o2000), (9, 0o1000)] {
        if matches!(p[at], b's' | b'S' | b't' | b'T') {
            mode |= special;
        }
    }
    mode
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::testutil::run;

    #[test]
    fn parses_a_listing() {
        let text = "drwxr-xr-x 0/0                      48 2026-12-06 20:39 squashfs-root\n\
            lrwxrwxrwx 0/0                       7 2026-12-06 20:39 squashfs-root/bin -> usr/bin\n\
            -rwsr-xr-x 0/0                       1 2026-12-06 20:38 squashfs-root/usr/bin/with space\n\
            crw-rw-rw- 0/5                  1,   3 2026-12-06 20:38 squashfs-root/dev/null\n";
        let e = parse_listing(text);
        assert_eq!(e[""].meta.kind, FileKind::Dir);
        assert_eq!(e["bin"].target.as_deref(), Some("usr/bin"));
        assert_eq!(
            (e["usr/bin/with space"].meta.mode, e["usr/bin/with space"].meta.size),
            (0o4755, 1)
        );
        assert_eq!((e["dev/null"].meta.kind, e["dev/null"].meta.gid), (FileKind::Other, 5));
        assert_eq!(mode_bits("drwxrwxrwt"), 0o1777);
    }

    /// mksquashfs is the oracle's writer; the squashfs sits at an offset in
    /// a larger file, as in an ISO.
    #[test]
    fn reads_files_through_symlinks_at_an_offset() {
        for tool in ["mksquashfs", "unsquashfs"] {
            if !kiln_exec::testing::require_tool_or_skip(tool) {
                return;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/lib/os")).unwrap();
        std::fs::create_dir_all(tree.join("etc/ssh")).unwrap();
        std::fs::write(tree.join("usr/lib/os/release"), "ID=debian\n").unwrap();
        std::fs::write(tree.join("etc/ssh/ssh_host_ed25519_key"), "k").unwrap();
        symlink("usr/lib", tree.join("lib")).unwrap();
        symlink("/lib/os/release", tree.join("etc/os-release")).unwrap();
        let sq = dir.path().join("root.squashfs");
        run(
            "mksquashfs",
            [
                tree.as_os_str(),
                sq.as_os_str(),
                "-noappend".as_ref(),
                "-quiet".as_ref(),
            ],
        );
        let mut outer = vec![7u8; 8192];
        outer.extend(std::fs::read(&sq).unwrap());
        let file = dir.path().join("outer");
        std::fs::write(&file, outer).unwrap();

        let mut fs = SquashFs::open(&file, 8192).unwrap();
        assert_eq!(fs.read_file("/etc/os-release").unwrap().unwrap(), b"ID=debian\n");
        assert_eq!(
            fs.read_link("/etc/os-release").unwrap().as_deref(),
            Some("/lib/os/release")
        );
        assert_eq!(fs.symlink_metadata("/lib").unwrap().unwrap().kind, FileKind::Symlink);
        assert_eq!(fs.metadata("/lib").unwrap().unwrap().kind, FileKind::Dir);
        assert_eq!(fs.read_dir("/etc/ssh").unwrap().unwrap(), ["ssh_host_ed25519_key"]);
        assert_eq!(fs.read_dir("/").unwrap().unwrap(), ["etc", "lib", "usr"]);
        assert_eq!(fs.read_file("/etc/none").unwrap(), None);
        assert_eq!(fs.read_file("/etc").unwrap(), None);
        assert!(SquashFs::open(&file, 0).is_err());
    }
}
