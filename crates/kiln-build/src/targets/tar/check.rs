//! `kiln check --target tar`: reads a root-filesystem tarball from end to
//! end, streaming (nothing is unpacked to disk, so it needs neither root
//! nor space), and says, rule by rule, whether it unpacks into a root tree
//! that a container runtime or a PXE-booted machine can use: every header
//! and every byte of data read (zstd's content checksum verified), relative
//! names without `..`, what an extraction needs (known member types,
//! directories before what they hold, nothing below a symlink, hard links
//! to files already unpacked, no name twice), a root tree owned by root,
//! extended attributes and ACLs kept, no disks in fstab, and no baked
//! machine-id or SSH host keys, and the security contract every image
//! meets ([`crate::targets::security`], on the members' modes and the
//! contents kept while streaming). It lists what it read: members by type,
//! sizes, attributes.
//!
//! The tar reader is kiln's own and small (ustar headers, PAX and GNU long
//! name records): the bytes are untrusted, so every length it takes from
//! them is bounded (extended headers, kept files, member count), and it
//! never panics. Like the other contract checks, a rule that cannot be
//! evaluated FAILs and says why; only failing to open the file aborts.
//! Non-goals: GNU sparse and multi-volume archives (read, not interpreted),
//! comparing the archive with a tree.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{Context, Result};

use crate::targets::contract::{
    fail, machine_id_baked, machine_id_verdict, pass, ssh_keys_verdict, Results, Verdict, MACHINE_ID_PATHS,
};
use crate::targets::{security, CheckOptions, RuleResult};
use kiln_disk::{FileKind, FileMeta, FsRead};

/// The rules, in order, for callers that list them.
pub const RULES: &[(&str, &str)] = &[
    (
        "archive",
        "a tar archive (zstd, gzip or plain) read to its end, every header and byte",
    ),
    ("paths", "member names are relative, without `..`"),
    (
        "unpacks",
        "unpacks: known types, directories first, nothing below a symlink, hard links to earlier files, no name twice",
    ),
    ("root-tree", "a root tree: /etc/os-release, /etc/passwd, /usr/bin"),
    ("owners", "the root tree is owned by root (uid and gid 0)"),
    (
        "xattrs",
        "extended attributes and ACLs kept (file capabilities where Debian sets them)",
    ),
    (
        "fstab",
        "/etc/fstab mounts no disk that a container or a diskless machine lacks",
    ),
    ("machine-id", "no baked machine-id"),
    ("ssh-host-keys", "no baked SSH host keys"),
];

fn title(id: &str) -> &'static str {
    RULES.iter().find(|(i, _)| *i == id).map_or("", |(_, t)| t)
}

/// The longest extended header (PAX records, GNU long name) read.
const MAX_EXTENDED: u64 = 1 << 20;
/// The largest file whose content the rules keep.
const MAX_KEPT: u64 = 1 << 20;
/// More members than any root tree has; beyond it the reader stops.
const MAX_MEMBERS: usize = 4_000_000;
/// How many problems a rule names before it counts the rest.
const NAMED: usize = 5;
const BLOCK: usize = 512;

/// The files whose content the rules read.
const KEPT: &[&str] = &["etc/fstab", "etc/machine-id", "var/lib/dbus/machine-id"];

/// Member types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    HardLink,
    Symlink,
    CharDevice,
    BlockDevice,
    Dir,
    Fifo,
    /// A type tar does not unpack as such (the typeflag).
    Other(u8),
}

/// One member of the archive, its extended headers applied.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// The name as stored.
    pub name: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    /// A link's target.
    pub link: String,
    /// Extended attributes' names (`SCHILY.xattr.NAME`).
    pub xattrs: Vec<String>,
    /// A POSIX ACL as text (`SCHILY.acl.access` or `.default`).
    pub acl: bool,
}

/// Reads a tar stream member by member, with bounded lengths.
pub(crate) struct TarReader<R> {
    r: R,
    offset: u64,
    ended: bool,
}

fn octal_or_binary(field: &[u8], what: &str) -> Result<u64, String> {
    match field.first() {
        // base-256 (GNU): the high bit set, big-endian after it.
        Some(b) if b & 0x80 != 0 => {
            if *b == 0xff {
                return Err(format!("negative {what}"));
            }
            let mut v: u64 = u64::from(b & 0x7f);
            for b in &field[1..] {
                v = v
                    .checked_mul(256)
                    .and_then(|v| v.checked_add(u64::from(*b)))
                    .ok_or_else(|| format!("{what} out of range"))?;
            }
            Ok(v)
        }
        _ => {
            let text = field
                .iter()
                .copied()
                .skip_while(|b| *b == b' ')
                .take_while(|b| *b != 0 && *b != b' ')
                .collect::<Vec<u8>>();
            if text.is_empty() {
                return Ok(0);
            }
            let s = std::str::from_utf8(&text).map_err(|_| format!("{what} is not octal"))?;
            u64::from_str_radix(s, 8).map_err(|_| format!("{what} {s:?} is not octal"))
        }
    }
}

fn c_string(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    &field[..end]
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// PAX records: `LEN KEY=VALUE\n`, LEN counting the whole record.
fn pax_records(data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut records = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest
            .iter()
            .take(20)
            .position(|b| *b == b' ')
            .ok_or("a PAX record without a length")?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("a PAX record with a bad length")?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err("a PAX record whose length does not match it".into());
        }
        let record = &rest[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|b| *b == b'=')
            .ok_or("a PAX record without `=`")?;
        records.push((text(&record[..eq]), record[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(records)
}

impl<R: Read> TarReader<R> {
    pub(crate) fn new(r: R) -> Self {
        TarReader {
            r,
            offset: 0,
            ended: false,
        }
    }

    /// Bytes of the tar stream read so far.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), String> {
        self.r.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                format!("the archive ends inside a member, at byte {}: truncated", self.offset)
            } else {
                format!("reading at byte {}: {e}", self.offset)
            }
        })?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// Reads `size` bytes of data plus the padding to the next block,
    /// handing the data to `sink`.
    fn data(&mut self, size: u64, sink: &mut dyn FnMut(&[u8])) -> Result<(), String> {
        let mut buf = [0u8; 64 * 1024];
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        let mut left = padded;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            self.read_exact(&mut buf[..n])?;
            let data_left = size.saturating_sub(padded - left);
            sink(&buf[..n.min(data_left as usize)]);
            left -= n as u64;
        }
        Ok(())
    }

    /// An extended header's data, at most [`MAX_EXTENDED`] bytes.
    fn extended(&mut self, size: u64, what: &str) -> Result<Vec<u8>, String> {
        if size > MAX_EXTENDED {
            return Err(format!(
                "a {what} of {size} bytes at byte {}: more than kiln reads ({MAX_EXTENDED})",
                self.offset
            ));
        }
        let mut v = Vec::with_capacity(size as usize);
        self.data(size, &mut |d| v.extend_from_slice(d))?;
        Ok(v)
    }

    /// The next member, its data handed to `sink`; `None` at the
    /// end-of-archive block. A stream that ends without one is truncated.
    pub(crate) fn next(&mut self, sink: &mut dyn FnMut(&Member, &[u8])) -> Result<Option<Member>, String> {
        if self.ended {
            return Ok(None);
        }
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let at = self.offset;
            let mut h = [0u8; BLOCK];
            match self.r.read(&mut h[..1]) {
                Ok(0) => {
                    return Err(format!(
                        "the archive ends at byte {at} without its end-of-archive block: truncated"
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(format!("reading at byte {at}: {e}")),
            }
            self.offset += 1;
            self.read_exact(&mut h[1..])?;
            if h.iter().all(|b| *b == 0) {
                if !pax.is_empty() || long_name.is_some() || long_link.is_some() {
                    return Err(format!("extended headers at byte {at} describe no member"));
                }
                self.ended = true;
                return Ok(None);
            }
            let stored = octal_or_binary(&h[148..156], "header checksum")
                .map_err(|e| format!("the header at byte {at}: {e}: not a tar archive, or corrupt"))?;
            let unsigned: u64 = h
                .iter()
                .enumerate()
                .map(|(i, b)| if (148..156).contains(&i) { 32 } else { u64::from(*b) })
                .sum();
            let signed: i64 = h
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        i64::from(*b as i8)
                    }
                })
                .sum();
            if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
                return Err(format!(
                    "the header at byte {at} has a wrong checksum: not a tar archive, or corrupt"
                ));
            }
            if &h[257..262] != b"ustar" {
                return Err(format!(
                    "the header at byte {at} is not ustar or PAX (no `ustar` magic)"
                ));
            }
            let field = |range: std::ops::Range<usize>, what: &str| {
                octal_or_binary(&h[range], what).map_err(|e| format!("the header at byte {at}: {e}"))
            };
            let mut size = field(124..136, "size")?;
            let typeflag = h[156];
            match typeflag {
                b'x' | b'g' => {
                    let data = self.extended(size, "PAX header")?;
                    let records = pax_records(&data).map_err(|e| format!("the PAX header at byte {at}: {e}"))?;
                    // A global header ('g') sets defaults that GNU tar never
                    // writes; its records are read, not applied.
                    if typeflag == b'x' {
                        pax.extend(records);
                    }
                    continue;
                }
                b'L' => {
                    long_name = Some(c_string(&self.extended(size, "GNU long name")?).to_vec());
                    continue;
                }
                b'K' => {
                    long_link = Some(c_string(&self.extended(size, "GNU long link name")?).to_vec());
                    continue;
                }
                _ => {}
            }
            let kind = match typeflag {
                b'0' | 0 | b'7' => Kind::File,
                b'1' => Kind::HardLink,
                b'2' => Kind::Symlink,
                b'3' => Kind::CharDevice,
                b'4' => Kind::BlockDevice,
                b'5' => Kind::Dir,
                b'6' => Kind::Fifo,
                other => Kind::Other(other),
            };
            let mut name = c_string(&h[0..100]).to_vec();
            let prefix = c_string(&h[345..500]);
            if &h[257..263] == b"ustar\0" && !prefix.is_empty() {
                name = [prefix, b"/", &name].concat();
            }
            let mut m = Member {
                name: text(long_name.as_deref().unwrap_or(&name)),
                kind,
                mode: (field(100..108, "mode")? & 0o7777) as u32,
                uid: field(108..116, "uid")?,
                gid: field(116..124, "gid")?,
                size: 0,
                link: text(long_link.as_deref().unwrap_or(c_string(&h[157..257]))),
                xattrs: Vec::new(),
                acl: false,
            };
            for (key, value) in pax {
                let number = || -> Result<u64, String> {
                    std::str::from_utf8(&value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| format!("the PAX record {key} of the member at byte {at} is not a number"))
                };
                match key.as_str() {
                    "path" => m.name = text(&value),
                    "linkpath" => m.link = text(&value),
                    "size" => size = number()?,
                    "uid" => m.uid = number()?,
                    "gid" => m.gid = number()?,
                    "SCHILY.acl.access" | "SCHILY.acl.default" => m.acl = true,
                    k => {
                        if let Some(x) = k
                            .strip_prefix("SCHILY.xattr.")
                            .or_else(|| k.strip_prefix("LIBARCHIVE.xattr."))
                        {
                            m.xattrs.push(x.to_owned());
                        }
                    }
                }
            }
            // No data blocks follow links, devices and fifos, whatever
            // their size field says (POSIX).
            let has_data = !matches!(
                kind,
                Kind::HardLink | Kind::Symlink | Kind::CharDevice | Kind::BlockDevice | Kind::Fifo
            );
            if has_data {
                m.size = size;
                let member = m.clone();
                self.data(size, &mut |d| sink(&member, d))?;
            }
            return Ok(Some(m));
        }
    }
}

/// The stream inside the file: zstd and gzip by their magic, else plain.
fn open(path: &Path) -> Result<(Box<dyn Read>, &'static str)> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut magic = [0u8; 4];
    let n = file
        .read(&mut magic)
        .with_context(|| format!("reading {}", path.display()))?;
    let file = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    Ok(match &magic[..n] {
        [0x28, 0xb5, 0x2f, 0xfd] => (
            Box::new(zstd::stream::read::Decoder::with_buffer(file).context("starting zstd")?),
            "zstd",
        ),
        [0x1f, 0x8b, ..] => (Box::new(flate2::read::MultiGzDecoder::new(file)), "gzip"),
        _ => (Box::new(file), "uncompressed"),
    })
}

/// A member's name as a path below the root: `./etc/` → `etc`, `.` → ``.
/// `Err` says why it is not one (absolute, `..`).
fn normalise(name: &str) -> Result<String, &'static str> {
    if name.starts_with('/') {
        return Err("absolute");
    }
    let mut parts = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("`..`"),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

fn parent(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

/// What the rules keep of a member.
#[derive(Debug, Clone)]
struct Entry {
    kind: Kind,
    mode: u32,
    size: u64,
    uid: u64,
    gid: u64,
    link: String,
    xattrs: Vec<String>,
}

/// What one pass over the archive found.
#[derive(Debug, Default)]
struct Listing {
    entries: BTreeMap<String, Entry>,
    kept: BTreeMap<String, Vec<u8>>,
    /// Bytes in `kept`.
    kept_bytes: u64,
    counts: BTreeMap<&'static str, u64>,
    bytes: u64,
    bad_paths: Vec<String>,
    unpack: Vec<String>,
    acls: u64,
    xattrs: BTreeMap<String, u64>,
    with_xattrs: u64,
}

impl Listing {
    fn add(&mut self, m: Member) {
        let what = match m.kind {
            Kind::File => "files",
            Kind::Dir => "directories",
            Kind::Symlink => "symlinks",
            Kind::HardLink => "hard links",
            Kind::CharDevice | Kind::BlockDevice => "devices",
            Kind::Fifo => "fifos",
            Kind::Other(_) => "others",
        };
        *self.counts.entry(what).or_default() += 1;
        self.bytes += m.size;
        if m.acl {
            self.acls += 1;
        }
        if !m.xattrs.is_empty() {
            self.with_xattrs += 1;
        }
        for x in &m.xattrs {
            *self.xattrs.entry(x.clone()).or_default() += 1;
        }
        let path = match normalise(&m.name) {
            Ok(p) => p,
            Err(why) => {
                self.bad_paths.push(format!("{} ({why})", m.name));
                return;
            }
        };
        if let Kind::Other(t) = m.kind {
            self.unpack.push(format!(
                "{} has type {:?}, which tar does not unpack as such",
                m.name, t as char
            ));
        }
        if self.entries.contains_key(&path) {
            self.unpack.push(format!("{} comes twice", m.name));
        }
        if !path.is_empty() {
            // Directories come before what they hold, and nothing lies
            // below a symlink; the direct parent decides, its own parents
            // were checked when it came.
            let dir = parent(&path);
            match self.entries.get(dir).map(|e| e.kind) {
                Some(Kind::Dir) => {}
                None if dir.is_empty() => {}
                Some(Kind::Symlink) => self.unpack.push(format!(
                    "{} lies below the symlink {dir}: unpacking would write through it",
                    m.name
                )),
                Some(_) => self
                    .unpack
                    .push(format!("{} lies below {dir}, which is not a directory", m.name)),
                None => self.unpack.push(format!("{} comes before its directory {dir}", m.name)),
            }
        }
        if m.kind == Kind::HardLink {
            match normalise(&m.link).map(|t| self.entries.get(&t).map(|e| e.kind)) {
                Ok(Some(Kind::File)) => {}
                Ok(Some(_)) => self
                    .unpack
                    .push(format!("{} is a hard link to {}, which is not a file", m.name, m.link)),
                Ok(None) => self.unpack.push(format!(
                    "{} is a hard link to {}, which no member before it is",
                    m.name, m.link
                )),
                Err(why) => self
                    .bad_paths
                    .push(format!("{} (a hard link to an {why} path {})", m.name, m.link)),
            }
        }
        self.entries.insert(
            path,
            Entry {
                kind: m.kind,
                mode: m.mode,
                size: m.size,
                uid: m.uid,
                gid: m.gid,
                link: m.link,
                xattrs: m.xattrs,
            },
        );
    }

    /// The entry at `path`, following symlinks (at most 16).
    fn resolve(&self, path: &str) -> Option<(&str, &Entry)> {
        let mut path = normalise(path).ok()?;
        for _ in 0..16 {
            let (key, e) = self.entries.get_key_value(&path)?;
            if e.kind != Kind::Symlink {
                return Some((key.as_str(), e));
            }
            path = if e.link.starts_with('/') {
                // An absolute target starts again at the archive's root.
                normalise(e.link.trim_start_matches('/')).ok()?
            } else {
                let joined = format!("{}/{}", parent(&path), e.link);
                // Resolve `..` against the path, as the kernel would.
                let mut parts: Vec<&str> = Vec::new();
                for c in joined.split('/') {
                    match c {
                        "" | "." => {}
                        ".." => {
                            parts.pop();
                        }
                        c => parts.push(c),
                    }
                }
                parts.join("/")
            };
        }
        None
    }

    fn summary(&self, compression: &str, compressed: u64, tar_bytes: u64) -> String {
        let total: u64 = self.counts.values().sum();
        let kinds = self
            .counts
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{compression}, {total} members ({kinds}), {} of data in a {} tar, {} file",
            kiln_spec::format_size(self.bytes),
            kiln_spec::format_size(tar_bytes),
            kiln_spec::format_size(compressed)
        )
    }
}

fn named(problems: &[String]) -> String {
    let mut s = problems.iter().take(NAMED).cloned().collect::<Vec<_>>().join("; ");
    if problems.len() > NAMED {
        s.push_str(&format!(" (and {} more)", problems.len() - NAMED));
    }
    s
}

/// Checks the tarball at `path` against the tar target's contract.
pub fn check(path: &Path, _opts: &CheckOptions) -> Result<Vec<RuleResult>> {
    let mut r = Results::default();
    let mut push = |id: &'static str, v: Verdict| r.push(id, title(id), v);
    let compressed = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let (stream, compression) = open(path)?;
    let mut reader = TarReader::new(stream);
    let mut listing = Listing::default();
    let mut read_error = None;
    loop {
        if listing.entries.len() >= MAX_MEMBERS {
            read_error = Some(format!("more than {MAX_MEMBERS} members: kiln stops reading"));
            break;
        }
        let kept = &mut listing.kept;
        let kept_bytes = &mut listing.kept_bytes;
        let mut sink = |m: &Member, data: &[u8]| {
            if m.kind != Kind::File || m.size > MAX_KEPT {
                return;
            }
            if let Ok(p) = normalise(&m.name) {
                // The security contract's files, within its budget.
                let secure = *kept_bytes + m.size <= security::SCAN_BUDGET && security::wanted_content(&p, m.size);
                if KEPT.contains(&p.as_str()) || secure {
                    *kept_bytes += data.len() as u64;
                    kept.entry(p).or_default().extend_from_slice(data);
                }
            }
        };
        match reader.next(&mut sink) {
            Ok(Some(m)) => listing.add(m),
            Ok(None) => break,
            Err(e) => {
                read_error = Some(e);
                break;
            }
        }
    }
    if read_error.is_none() {
        // What follows the end-of-archive block (zstd's checksum among it)
        // must still decompress.
        if let Err(e) = std::io::copy(&mut reader.r, &mut std::io::sink()) {
            read_error = Some(format!("after the end-of-archive block: {e}"));
        }
    }
    let summary = listing.summary(compression, compressed, reader.offset());
    push(
        "archive",
        match &read_error {
            None => pass(summary),
            Some(e) => fail(format!("{e} (read so far: {summary})")),
        },
    );
    if listing.entries.is_empty() {
        // Nothing to judge the other rules on.
        for (id, _) in &RULES[1..] {
            push(id, fail("no member could be read"));
        }
        security::push_unchecked(&mut r, "no member could be read", &[]);
        return Ok(r.0);
    }
    push(
        "paths",
        if listing.bad_paths.is_empty() {
            pass(format!("{} names, all relative", listing.entries.len()))
        } else {
            fail(format!(
                "names that would unpack outside the target directory: {}",
                named(&listing.bad_paths)
            ))
        },
    );
    push(
        "unpacks",
        if listing.unpack.is_empty() {
            pass("every member unpacks in order")
        } else {
            fail(named(&listing.unpack))
        },
    );
    push("root-tree", root_tree_rule(&listing));
    push("owners", owners_rule(&listing));
    push("xattrs", xattrs_rule(&listing));
    push(
        "fstab",
        match listing.kept.get("etc/fstab") {
            Some(text) => fstab_verdict(&String::from_utf8_lossy(text)),
            None => pass("no /etc/fstab"),
        },
    );
    let baked: Vec<&str> = MACHINE_ID_PATHS
        .iter()
        .copied()
        .filter(|p| {
            listing
                .kept
                .get(p.trim_start_matches('/'))
                .is_some_and(|c| machine_id_baked(c))
        })
        .collect();
    push("machine-id", machine_id_verdict(&baked));
    let ssh: Vec<String> = listing
        .entries
        .keys()
        .filter(|p| parent(p) == "etc/ssh")
        .map(|p| p["etc/ssh/".len()..].to_owned())
        .collect();
    push("ssh-host-keys", ssh_keys_verdict(&ssh));
    security::push_rules(&mut ListingFs(&listing), &mut r, &[]);
    Ok(r.0)
}

/// The archive's tree as a read-only filesystem, for the security contract
/// that every image meets: the metadata of every member, and the content of
/// the files kept while streaming ([`security::wanted_content`]); a file
/// whose content was not kept reads as missing.
struct ListingFs<'a>(&'a Listing);

impl ListingFs<'_> {
    fn key(path: &str) -> Option<String> {
        normalise(path.trim_start_matches('/')).ok()
    }

    /// A hard link is the file it links to: the header's own mode is not
    /// what extraction gives it, and the data came with the first member.
    fn target<'b>(&'b self, key: &str, e: &'b Entry) -> (String, &'b Entry) {
        if e.kind == Kind::HardLink {
            if let Some((k, t)) = normalise(&e.link).ok().and_then(|k| self.0.entries.get_key_value(&k)) {
                return (k.clone(), t);
            }
        }
        (key.to_owned(), e)
    }

    fn meta(e: &Entry) -> FileMeta {
        FileMeta {
            kind: match e.kind {
                Kind::File | Kind::HardLink => FileKind::File,
                Kind::Dir => FileKind::Dir,
                Kind::Symlink => FileKind::Symlink,
                _ => FileKind::Other,
            },
            mode: e.mode & 0o7777,
            uid: u32::try_from(e.uid).unwrap_or(u32::MAX),
            gid: u32::try_from(e.gid).unwrap_or(u32::MAX),
            size: e.size,
            mtime: None,
        }
    }
}

impl FsRead for ListingFs<'_> {
    fn read_file(&mut self, path: &str) -> kiln_disk::Result<Option<Vec<u8>>> {
        let Some(key) = Self::key(path) else { return Ok(None) };
        let Some((at, e)) = self.0.resolve(&key) else {
            return Ok(None);
        };
        let (at, _) = self.target(at, e);
        Ok(self.0.kept.get(&at).cloned())
    }

    fn metadata(&mut self, path: &str) -> kiln_disk::Result<Option<FileMeta>> {
        let Some(key) = Self::key(path) else { return Ok(None) };
        if key.is_empty() {
            return Ok(Some(Self::meta(&ROOT_DIR)));
        }
        Ok(self
            .0
            .resolve(&key)
            .map(|(at, e)| self.target(at, e).1)
            .filter(|e| e.kind != Kind::HardLink)
            .map(Self::meta))
    }

    fn symlink_metadata(&mut self, path: &str) -> kiln_disk::Result<Option<FileMeta>> {
        let Some(key) = Self::key(path) else { return Ok(None) };
        if key.is_empty() {
            return Ok(Some(Self::meta(&ROOT_DIR)));
        }
        Ok(self
            .0
            .entries
            .get(&key)
            .map(|e| self.target(&key, e).1)
            // A hard link to nothing unpacks to nothing (the `unpacks` rule says so).
            .filter(|e| e.kind != Kind::HardLink)
            .map(Self::meta))
    }

    fn read_dir(&mut self, path: &str) -> kiln_disk::Result<Option<Vec<String>>> {
        let Some(key) = Self::key(path) else { return Ok(None) };
        let dir = if key.is_empty() {
            String::new()
        } else {
            match self.0.resolve(&key) {
                Some((at, e)) if e.kind == Kind::Dir => at.to_owned(),
                _ => return Ok(None),
            }
        };
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        Ok(Some(
            self.0
                .entries
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .filter_map(|(k, _)| k.strip_prefix(&prefix))
                .filter(|rest| !rest.is_empty() && !rest.contains('/'))
                .map(str::to_owned)
                .collect(),
        ))
    }

    fn read_link(&mut self, path: &str) -> kiln_disk::Result<Option<String>> {
        let Some(key) = Self::key(path) else { return Ok(None) };
        Ok(self
            .0
            .entries
            .get(&key)
            .filter(|e| e.kind == Kind::Symlink)
            .map(|e| e.link.clone()))
    }

    fn fs_type(&self) -> kiln_disk::FsType {
        // Not a filesystem: no rule asks a tree's type.
        kiln_disk::FsType::Ext4
    }
}

/// The archive's root, which a tar need not hold as a member.
const ROOT_DIR: Entry = Entry {
    kind: Kind::Dir,
    mode: 0o755,
    size: 0,
    uid: 0,
    gid: 0,
    link: String::new(),
    xattrs: Vec::new(),
};

fn root_tree_rule(l: &Listing) -> Verdict {
    let mut missing = Vec::new();
    for (path, kind) in [
        ("etc/os-release", Kind::File),
        ("etc/passwd", Kind::File),
        ("usr/bin", Kind::Dir),
    ] {
        match l.resolve(path) {
            Some((_, e)) if e.kind == kind => {}
            Some((at, _)) => missing.push(format!(
                "/{path} ({at} is not a {})",
                if kind == Kind::Dir { "directory" } else { "file" }
            )),
            None => missing.push(format!("/{path}")),
        }
    }
    if missing.is_empty() {
        pass("/etc/os-release, /etc/passwd and /usr/bin are there")
    } else {
        fail(format!(
            "not a root tree: {} missing (was the archive made from the tree's root?)",
            missing.join(", ")
        ))
    }
}

fn owners_rule(l: &Listing) -> Verdict {
    let mut wrong = Vec::new();
    for path in ["", "etc", "etc/passwd", "usr", "usr/bin"] {
        if let Some(e) = l.entries.get(path) {
            if (e.uid, e.gid) != (0, 0) {
                wrong.push(format!("/{path} is {}:{}", e.uid, e.gid));
            }
        }
    }
    if wrong.is_empty() {
        pass("/, /etc, /usr and what they hold are 0:0")
    } else {
        fail(format!(
            "{}: the tree's owners were not kept (an archive made without root or without --numeric-owner)",
            wrong.join(", ")
        ))
    }
}

/// Programs that Debian gives a file capability instead of setuid.
const CAPABLE: &[&str] = &["usr/bin/ping"];

fn xattrs_rule(l: &Listing) -> Verdict {
    let count = |name: &str| l.xattrs.get(name).copied().unwrap_or(0);
    let user: u64 = l
        .xattrs
        .iter()
        .filter(|(k, _)| k.starts_with("user."))
        .map(|(_, n)| n)
        .sum();
    let listing = format!(
        "{} members with extended attributes: {} security.capability, {} security.selinux, {} POSIX ACLs ({} system.posix_acl_*), {} user.*",
        l.with_xattrs,
        count("security.capability"),
        count("security.selinux"),
        l.acls,
        count("system.posix_acl_access") + count("system.posix_acl_default"),
        user
    );
    let lost: Vec<&str> = CAPABLE
        .iter()
        .copied()
        .filter(|p| {
            l.entries.get(*p).is_some_and(|e| {
                e.kind == Kind::File && e.mode & 0o4000 == 0 && !e.xattrs.iter().any(|x| x == "security.capability")
            })
        })
        .collect();
    if lost.is_empty() {
        pass(listing)
    } else {
        fail(format!(
            "/{} has neither a file capability nor setuid, which Debian gives it: extended attributes were lost (archive with tar --xattrs --xattrs-include='*'); {listing}",
            lost.join(", /")
        ))
    }
}

/// fstab entries that mount a disk by UUID, label or device, unless
/// `nofail` or `noauto`: a container or a diskless machine waits for it.
fn fstab_verdict(text: &str) -> Verdict {
    let mut disks = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(spec), Some(dir)) = (fields.first(), fields.get(1)) else {
            continue;
        };
        let options = fields.get(3).copied().unwrap_or("defaults");
        let disk = ["UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=", "/dev/"]
            .iter()
            .any(|p| spec.starts_with(p));
        let optional = options.split(',').any(|o| o == "nofail" || o == "noauto");
        if disk && !optional {
            disks.push(format!("{spec} on {dir}"));
        }
    }
    if disks.is_empty() {
        pass("no disk mounts")
    } else {
        fail(format!(
            "/etc/fstab mounts {}: a container or a PXE-booted machine has no such disk (add nofail, or leave fstab to the [[files]] of a disk target)",
            disks.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests;
