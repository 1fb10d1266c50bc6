//! The first stage of a build from a distribution's disk image
//! (`[base] image`): open the verified download (xz or zstd decompressed,
//! raw or qcow2 through kiln-disk's reader), find the root filesystem (the
//! one with `/etc/os-release`, else the largest Linux one), check that it
//! is the family, release and architecture the spec names, extract its
//! tree, and remove what belongs to the machine the image came from.
//!
//! How a tree is extracted, by filesystem:
//!
//! - ext2/3/4, without mounting: `debugfs -R 'rdump / TREE'` writes files,
//!   directories and symlinks with their owners, permissions and times.
//!   It is not the whole truth, so a second `debugfs` pass lists every
//!   directory (`ls -p`: inode, full mode, owner) and every file's
//!   extended attributes (`ea_list`) and kiln repairs what rdump loses:
//!   setuid/setgid bits (rdump sets the mode before the owner, and Linux
//!   clears them on chown), hard links (rdump writes copies), FIFOs and
//!   device nodes (rdump skips them; their numbers come from `stat`), and
//!   extended attributes such as file capabilities and SELinux labels
//!   (their values come from `ea_get`, applied with `setfattr --restore`).
//!   kiln's own ext4 reader (`ext4-view`) shows neither extended
//!   attributes, device numbers nor inode numbers, so it cannot make a
//!   faithful tree. Directory times may differ from the image's where the
//!   repairs touched a directory (builds clamp times anyway).
//! - XFS and btrfs: kiln has no reader for whole trees of them (XFS's
//!   `xfs_db` walks one inode per command; btrfs has no offline dumper
//!   that keeps owners), so the partition is loop-mounted read-only
//!   (`norecovery` for XFS) inside the build's private mount namespace and
//!   copied with `cp -a`, which keeps owners, modes, times, links, device
//!   nodes and extended attributes. A guard unmounts it on every path.
//!
//! Non-goals: LVM or RAID inside the image, encrypted roots, more than one
//! filesystem making up the root (a separate `/usr` or `/boot` partition
//! is left behind: the image's `/boot` partition is not read).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_disk::{open_filesystem, probe_filesystem, read_partition_table, DiskImage, Format, FsType};
use kiln_exec::Cmd;
use kiln_spec::{BaseImage, BaseImageCompression, BaseImageFormat, Distro};

/// What the import removes from the image's tree: state that belongs to
/// the machine the image was made on, not to the machines made from it.
/// Part of the import stage's cache key.
pub const CLEAN_RECIPE: &[(&str, &str)] = &[
    (
        "/var/lib/cloud",
        "cloud-init's state (its instance and semaphores): cloud-init runs again on first boot",
    ),
    ("/etc/machine-id", "emptied: systemd makes a new one on first boot"),
    (
        "/var/lib/dbus/machine-id",
        "removed where it is a file (a copy of the machine-id)",
    ),
    ("/etc/ssh/ssh_host_*", "the SSH host keys: each machine makes its own"),
    ("/var/log", "log files (directories stay)"),
    ("/root/.bash_history", "root's shell history"),
    ("/var/lib/systemd/random-seed", "the random seed"),
];

/// What the image turned out to be.
#[derive(Debug, Clone)]
pub struct Imported {
    /// `/etc/os-release`'s PRETTY_NAME (or NAME).
    pub os: String,
    pub fs: FsType,
    /// The partition number, `None` for a disk without a table.
    pub partition: Option<u32>,
}

/// What the spec expects the image to hold.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub distro: Distro,
    /// The release the spec names (`None`: Arch, rolling).
    pub release: Option<&'a str>,
    /// Debian's spelling: amd64, arm64.
    pub architecture: &'a str,
}

/// Imports the image at `file` (as downloaded) into `tree` (created),
/// using `scratch` for the decompressed image and the extracted partition.
pub fn import(
    file: &Path,
    image: &BaseImage,
    expected: Expected<'_>,
    scratch: &Path,
    tree: &Path,
    log: &Path,
) -> Result<Imported> {
    fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let disk = decompress(file, image.compression(), scratch)?;
    let mut disk_image =
        DiskImage::open(&disk).with_context(|| format!("opening the base image {}", disk.display()))?;
    match (image.format(), disk_image.format()) {
        (Some(BaseImageFormat::Qcow2), Format::Raw) => bail!(
            "the base image {} is not a qcow2 file (no qcow2 header); set `format = \"raw\"` in [base] image if it is a raw disk",
            image.url
        ),
        (Some(BaseImageFormat::Raw), Format::Qcow2(_)) => bail!(
            "the base image {} is a qcow2 file, not a raw disk; set `format = \"qcow2\"` in [base] image",
            image.url
        ),
        _ => {}
    }
    let root = find_root(&mut disk_image).with_context(|| format!("finding the root filesystem of {}", image.url))?;
    // The checks that need no extraction come first: a wrong image fails
    // in seconds, not after the copy.
    let os = check_identity(&root, expected, &image.url)?;
    fs::create_dir_all(tree).with_context(|| format!("creating {}", tree.display()))?;
    let part = scratch.join("root.fs");
    disk_image
        .extract(root.start, root.size, &part)
        .with_context(|| format!("extracting the root filesystem of {}", image.url))?;
    if disk != file {
        // The decompressed disk is no longer needed; free its space early.
        let _ = fs::remove_file(&disk);
    }
    match root.fs {
        t if t.is_ext() => extract_ext(&part, tree, scratch, log)?,
        FsType::Xfs | FsType::Btrfs => extract_mounted(&part, root.fs, tree, scratch, log)?,
        other => bail!(
            "the root filesystem of {} is {}, which kiln cannot read",
            image.url,
            other.name()
        ),
    }
    let _ = fs::remove_file(&part);
    clean(tree)?;
    Ok(Imported {
        os,
        fs: root.fs,
        partition: root.partition,
    })
}

/// `file` decompressed into `scratch`, or `file` itself.
fn decompress(file: &Path, compression: BaseImageCompression, scratch: &Path) -> Result<PathBuf> {
    let open = || File::open(file).with_context(|| format!("opening {}", file.display()));
    let out = scratch.join("base-image");
    let copied = match compression {
        BaseImageCompression::None => return Ok(file.to_owned()),
        BaseImageCompression::Xz => copy_sparse(&mut xz2::read::XzDecoder::new_multi_decoder(open()?), &out),
        BaseImageCompression::Zstd => copy_sparse(
            &mut zstd::stream::read::Decoder::new(open()?).context("starting zstd")?,
            &out,
        ),
    };
    copied.with_context(|| format!("decompressing {} ({compression:?})", file.display()))?;
    Ok(out)
}

/// Copies `r` into a new file at `out`, leaving runs of zeros as holes
/// (a raw cloud image is mostly empty).
fn copy_sparse(r: &mut dyn io::Read, out: &Path) -> Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        kiln_exec::check_interrupted()?;
        let mut filled = 0;
        while filled < buf.len() {
            match r.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if filled == 0 {
            break;
        }
        for block in buf[..filled].chunks(4096) {
            if block.iter().all(|&b| b == 0) {
                f.seek(SeekFrom::Current(block.len() as i64))?;
            } else {
                f.write_all(block)?;
            }
        }
        len += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    f.set_len(len)?;
    Ok(())
}

/// The root filesystem found on a disk.
#[derive(Debug)]
struct Root {
    partition: Option<u32>,
    start: u64,
    size: u64,
    fs: FsType,
    /// `/etc/os-release`, where kiln could read it before extraction.
    os_release: Option<String>,
    /// The ELF machine of `/bin/sh`, where readable.
    machine: Option<u16>,
}

/// The partition with `/etc/os-release` (read without mounting, for ext
/// and XFS), else the largest ext/XFS/btrfs one.
fn find_root(image: &mut DiskImage) -> Result<Root> {
    let table = read_partition_table(image)?;
    let spans = table.filesystem_spans(image.virtual_size());
    let mut seen = Vec::new();
    let mut linux: Vec<Root> = Vec::new();
    for (partition, start, size) in spans {
        let Some(info) = probe_filesystem(image, start, size)? else {
            continue;
        };
        seen.push(format!(
            "{} {}",
            partition.map_or_else(|| "disk".to_owned(), |i| format!("partition {i}:")),
            info.fs_type.name()
        ));
        if !(info.fs_type.is_ext() || matches!(info.fs_type, FsType::Xfs | FsType::Btrfs)) {
            continue;
        }
        let mut root = Root {
            partition,
            start,
            size,
            fs: info.fs_type,
            os_release: None,
            machine: None,
        };
        if info.fs_type != FsType::Btrfs {
            let mut fs = open_filesystem(image, start, size)?;
            if let Some(text) = fs
                .read_file("/etc/os-release")?
                .or(fs.read_file("/usr/lib/os-release")?)
            {
                root.os_release = Some(String::from_utf8_lossy(&text).into_owned());
                root.machine = fs
                    .read_file("/bin/sh")?
                    .filter(|elf| elf.len() >= 20 && elf.starts_with(b"\x7fELF"))
                    .map(|elf| u16::from_le_bytes([elf[18], elf[19]]));
                return Ok(root);
            }
        }
        linux.push(root);
    }
    linux.sort_by_key(|r| std::cmp::Reverse(r.size));
    linux.into_iter().next().with_context(|| {
        format!(
            "no ext2/3/4, XFS or btrfs filesystem on the disk (found: {}); kiln reads the root of a base image from one of those",
            if seen.is_empty() { "none".to_owned() } else { seen.join(", ") }
        )
    })
}

/// The value of `key` in an os-release text.
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches(['"', '\'']).to_owned())
    })
}

/// The family an os-release text describes.
pub fn family_of(text: &str) -> Option<Distro> {
    let id = os_release_value(text, "ID").unwrap_or_default();
    let like = os_release_value(text, "ID_LIKE").unwrap_or_default();
    let ids: Vec<&str> = std::iter::once(id.as_str()).chain(like.split_whitespace()).collect();
    let is = |names: &[&str]| ids.iter().any(|i| names.contains(i));
    if id == "ubuntu" {
        Some(Distro::Ubuntu)
    } else if id == "debian" || is(&["debian"]) {
        Some(Distro::Debian)
    } else if is(&["arch", "archlinux"]) {
        Some(Distro::Arch)
    } else if is(&["rhel", "rocky", "almalinux", "centos", "fedora"]) {
        Some(Distro::Rhel)
    } else {
        None
    }
}

/// Checks the image's family, release and architecture against the spec's.
fn check_identity(root: &Root, expected: Expected<'_>, url: &str) -> Result<String> {
    let name = |d: Distro| {
        serde_json::to_value(d)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let Some(text) = &root.os_release else {
        // btrfs: read after extraction would be too late to be cheap; the
        // family's package tools fail clearly on a wrong tree anyway.
        return Ok("unknown (btrfs root, os-release read after extraction)".to_owned());
    };
    let pretty = os_release_value(text, "PRETTY_NAME")
        .or_else(|| os_release_value(text, "NAME"))
        .unwrap_or_else(|| "an unnamed distribution".to_owned());
    match family_of(text) {
        Some(found) if found == expected.distro => {}
        Some(found) => bail!(
            "the base image {url} holds {pretty} (family \"{}\"), but [base] distro is \"{}\"; \
             set `distro = \"{}\"` or use an image of {}",
            name(found),
            name(expected.distro),
            name(found),
            name(expected.distro)
        ),
        None => bail!(
            "the base image {url} holds {pretty} (ID={}), which is no family kiln knows; \
             kiln builds on debian, ubuntu, arch and rhel-family images",
            os_release_value(text, "ID").unwrap_or_default()
        ),
    }
    if let Some(release) = expected.release {
        let found = match expected.distro {
            Distro::Debian | Distro::Ubuntu => os_release_value(text, "VERSION_CODENAME"),
            Distro::Rhel => os_release_value(text, "VERSION_ID"),
            Distro::Arch => None,
        };
        let same = |found: &str| match expected.distro {
            // "8" in the spec accepts 8.10 in the image; "8.10" needs it.
            Distro::Rhel => found == release || found.split('.').next() == Some(release),
            _ => found == release,
        };
        if let Some(found) = found.filter(|f| !same(f)) {
            bail!(
                "the base image {url} holds {pretty}, release \"{found}\", but [base] release is \"{release}\"; \
                 set `release = \"{found}\"` or use an image of {release}"
            );
        }
    }
    if let Some(machine) = root.machine {
        let found = match machine {
            0x3e => "amd64",
            0xb7 => "arm64",
            0x03 => "i386",
            0x28 => "armhf",
            0xf3 => "riscv64",
            0x15 => "ppc64el",
            0x16 => "s390x",
            _ => "an unknown architecture",
        };
        if found != expected.architecture {
            bail!(
                "the base image {url} is built for {found} (its /bin/sh), but [base] architecture is {}; \
                 use an image of {} or set `architecture` to match it",
                expected.architecture,
                expected.architecture
            );
        }
    }
    Ok(pretty)
}

/// One inode as `debugfs ls -p` lists it.
#[derive(Debug, Clone)]
struct Entry {
    inode: u64,
    mode: u32,
    uid: u32,
    gid: u32,
}

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFIFO: u32 = 0o010000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;

/// debugfs takes a path in double quotes; a name with a quote or a line
/// break cannot be written in its command language.
fn dq(path: &str) -> Result<String> {
    if path.contains(['"', '\n', '\r']) {
        bail!("cannot extract {path:?} with debugfs: its name holds a quote or a line break");
    }
    Ok(format!("\"{path}\""))
}

/// Runs the commands `cmds` in one debugfs session on `fs`; its stdout.
fn debugfs(fs: &Path, scratch: &Path, name: &str, cmds: &str, log: &Path) -> Result<String> {
    let file = scratch.join(name);
    fs::write(&file, cmds).with_context(|| format!("writing {}", file.display()))?;
    let out = Cmd::new("debugfs")
        .arg("-f")
        .arg(&file)
        .arg(fs)
        .log_to(log)
        .run()
        .context("reading the image's ext4 filesystem with debugfs")?;
    let _ = fs::remove_file(&file);
    Ok(out.stdout_string())
}

/// ext2/3/4 without mounting: rdump, then the repairs (see the module doc).
fn extract_ext(part: &Path, tree: &Path, scratch: &Path, log: &Path) -> Result<()> {
    Cmd::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", dq(&tree.to_string_lossy())?))
        .arg(part)
        .log_to(log)
        .run()
        .context("copying the image's ext4 tree out with debugfs rdump")?;
    // Every directory rdump made, image paths ("/", "/etc", ...).
    let mut dirs = vec!["/".to_owned()];
    let mut i = 0;
    while i < dirs.len() {
        let host = host_path(tree, &dirs[i]);
        let mut names: Vec<String> = fs::read_dir(&host)
            .with_context(|| format!("listing {}", host.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let parent = dirs[i].clone();
        dirs.extend(names.into_iter().map(|n| join(&parent, &n)));
        i += 1;
    }
    let mut cmds = String::new();
    for d in &dirs {
        writeln!(cmds, "ls -p {}", dq(d)?)?;
    }
    let listing = debugfs(part, scratch, "ls.cmds", &cmds, log)?;
    // Path → entry, in listing order.
    let mut entries: Vec<(String, Entry)> = Vec::new();
    let mut current: Option<String> = None;
    for line in listing.lines() {
        if let Some(cmd) = line.strip_prefix("debugfs: ls -p ") {
            current = Some(cmd.trim_matches('"').to_owned());
            continue;
        }
        let Some(dir) = &current else { continue };
        let fields: Vec<&str> = line.split('/').collect();
        // "/inode/mode/uid/gid/name/size/": a name holds no '/'.
        if fields.len() != 8 || !fields[0].is_empty() {
            continue;
        }
        let (Ok(inode), Ok(mode), Ok(uid), Ok(gid)) = (
            fields[1].parse::<u64>(),
            u32::from_str_radix(fields[2], 8),
            fields[3].parse::<u32>(),
            fields[4].parse::<u32>(),
        ) else {
            continue;
        };
        let path = match fields[5] {
            ".." => continue,
            "." if dir == "/" => "/".to_owned(),
            "." => continue,
            name => join(dir, name),
        };
        entries.push((path, Entry { inode, mode, uid, gid }));
    }
    if entries.is_empty() {
        bail!("debugfs listed no files in the image's root filesystem");
    }
    // Special files and hard links first, so that the owner and mode
    // pass below covers them.
    let mut first_of: HashMap<u64, String> = HashMap::new();
    let mut devices = Vec::new();
    for (path, e) in &entries {
        let host = host_path(tree, path);
        match e.mode & S_IFMT {
            S_IFREG => match first_of.get(&e.inode) {
                Some(first) => {
                    let _ = fs::remove_file(&host);
                    fs::hard_link(host_path(tree, first), &host)
                        .with_context(|| format!("linking {path} to {first}"))?;
                }
                None => {
                    first_of.insert(e.inode, path.clone());
                }
            },
            S_IFIFO => {
                Cmd::new("mknod")
                    .arg(&host)
                    .arg("p")
                    .run()
                    .with_context(|| format!("making the FIFO {path}"))?;
            }
            S_IFCHR | S_IFBLK => devices.push((path.clone(), e.mode & S_IFMT)),
            _ => {}
        }
    }
    if !devices.is_empty() {
        let mut cmds = String::new();
        for (path, _) in &devices {
            writeln!(cmds, "stat {}", dq(path)?)?;
        }
        let stats = debugfs(part, scratch, "stat.cmds", &cmds, log)?;
        let numbers: Vec<&str> = stats
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Device major/minor number: "))
            .map(|v| v.split_whitespace().next().unwrap_or(""))
            .collect();
        if numbers.len() != devices.len() {
            bail!(
                "debugfs gave {} device numbers for {} device nodes",
                numbers.len(),
                devices.len()
            );
        }
        for ((path, kind), number) in devices.iter().zip(numbers) {
            let (major, minor) = number.split_once(':').context("a device number without ':'")?;
            let kind = if *kind == S_IFCHR { "c" } else { "b" };
            Cmd::new("mknod")
                .arg(host_path(tree, path))
                .args(
                    [kind, major.trim_start_matches('0'), minor.trim_start_matches('0')].map(|s| {
                        if s.is_empty() {
                            "0"
                        } else {
                            s
                        }
                    }),
                )
                .run()
                .with_context(|| format!("making the device node {path}"))?;
        }
    }
    // Owners, then modes: chown clears setuid and setgid bits, so the
    // mode goes last.
    for (path, e) in &entries {
        let host = host_path(tree, path);
        let kind = e.mode & S_IFMT;
        if !matches!(kind, S_IFDIR | S_IFREG | S_IFLNK | S_IFIFO | S_IFCHR | S_IFBLK) {
            continue;
        }
        std::os::unix::fs::lchown(&host, Some(e.uid), Some(e.gid))
            .with_context(|| format!("setting the owner of {path}"))?;
        if kind != S_IFLNK {
            fs::set_permissions(&host, fs::Permissions::from_mode(e.mode & 0o7777))
                .with_context(|| format!("setting the mode of {path}"))?;
        }
    }
    restore_xattrs(part, tree, scratch, &entries, log)
}

/// Lists every inode's extended attributes and applies them to the tree.
fn restore_xattrs(part: &Path, tree: &Path, scratch: &Path, entries: &[(String, Entry)], log: &Path) -> Result<()> {
    let mut cmds = String::new();
    let mut seen = HashMap::new();
    for (path, e) in entries {
        if e.mode & S_IFMT != S_IFLNK && seen.insert(e.inode, ()).is_none() {
            writeln!(cmds, "ea_list {}", dq(path)?)?;
        }
    }
    let listing = debugfs(part, scratch, "ea.cmds", &cmds, log)?;
    let mut wanted: Vec<(String, String)> = Vec::new();
    let mut current = None;
    for line in listing.lines() {
        if let Some(p) = line.strip_prefix("debugfs: ea_list ") {
            current = Some(p.trim_matches('"').to_owned());
            continue;
        }
        let Some(path) = &current else { continue };
        // "  NAME (LEN) = VALUE"
        let Some(rest) = line.strip_prefix("  ") else { continue };
        let Some((name, _)) = rest.split_once(" (") else {
            continue;
        };
        // Inline file data is ext4's business, not an attribute.
        if name == "system.data" || name.is_empty() || name.contains(char::is_whitespace) {
            continue;
        }
        wanted.push((path.clone(), name.to_owned()));
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let values = scratch.join("xattr-values");
    fs::create_dir_all(&values)?;
    let mut cmds = String::new();
    for (i, (path, name)) in wanted.iter().enumerate() {
        writeln!(
            cmds,
            "ea_get -f {} {} {name}",
            values.join(i.to_string()).display(),
            dq(path)?
        )?;
    }
    debugfs(part, scratch, "ea-get.cmds", &cmds, log)?;
    // setfattr's --restore format: one "# file:" block per file, values
    // in hex, paths relative to the directory it runs in.
    let dump = scratch.join("xattrs.dump");
    {
        use std::io::Write;
        let mut w = BufWriter::new(File::create(&dump)?);
        for (i, (path, name)) in wanted.iter().enumerate() {
            let value = fs::read(values.join(i.to_string()))
                .with_context(|| format!("reading the attribute {name} of {path} that debugfs wrote"))?;
            writeln!(
                w,
                "# file: {}\n{name}=0x{}\n",
                escape_dump_path(path.trim_start_matches('/')),
                hex::encode(value)
            )?;
        }
        w.flush()?;
    }
    Cmd::new("setfattr")
        .arg(format!("--restore={}", dump.display()))
        .current_dir(tree)
        .log_to(log)
        .run()
        .context("applying the image's extended attributes with setfattr")?;
    let _ = fs::remove_dir_all(&values);
    let _ = fs::remove_file(&dump);
    Ok(())
}

/// getfattr's escaping of a path in a dump (octal for unusual bytes).
fn escape_dump_path(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        if b.is_ascii_graphic() && b != b'\\' || b >= 0x80 {
            out.push(b as char);
        } else {
            let _ = write!(out, "\\{b:03o}");
        }
    }
    if path.is_empty() {
        ".".to_owned()
    } else {
        out
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn host_path(tree: &Path, path: &str) -> PathBuf {
    tree.join(path.trim_start_matches('/'))
}

/// A read-only loop mount, unmounted when dropped.
struct ReadOnlyMount {
    dir: PathBuf,
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        // Lazy: a process still in it (none should be) cannot keep the
        // mount alive; the loop device goes with it (autoclear).
        if let Err(e) = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH) {
            tracing::error!("unmounting {}: {e}", self.dir.display());
        }
    }
}

/// XFS and btrfs: a read-only loop mount, copied with `cp -a`. The build
/// runs in a private mount namespace, so the mount is invisible outside
/// and dies with the build even if the guard never runs.
fn extract_mounted(part: &Path, fs_type: FsType, tree: &Path, scratch: &Path, log: &Path) -> Result<()> {
    let dir = scratch.join("mnt");
    fs::create_dir_all(&dir)?;
    let options = match fs_type {
        FsType::Xfs => "ro,loop,norecovery",
        _ => "ro,loop",
    };
    Cmd::new("mount")
        .args(["-t", fs_type.name(), "-o", options])
        .arg(part)
        .arg(&dir)
        .log_to(log)
        .run()
        .with_context(|| format!("mounting the image's {} root read-only", fs_type.name()))?;
    let guard = ReadOnlyMount { dir: dir.clone() };
    Cmd::new("cp")
        .args(["-a", "--"])
        .arg(format!("{}/.", dir.display()))
        .arg(tree)
        .log_to(log)
        .run()
        .with_context(|| format!("copying the image's {} root", fs_type.name()))?;
    drop(guard);
    Ok(())
}

/// Applies [`CLEAN_RECIPE`] to `tree`.
pub fn clean(tree: &Path) -> Result<()> {
    let rm = |p: &Path| -> Result<()> {
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(p).with_context(|| format!("removing {}", p.display())),
            Ok(_) => fs::remove_file(p).with_context(|| format!("removing {}", p.display())),
            Err(_) => Ok(()),
        }
    };
    let cloud = tree.join("var/lib/cloud");
    if cloud.is_dir() {
        for e in fs::read_dir(&cloud)?.filter_map(|e| e.ok()) {
            rm(&e.path())?;
        }
    }
    let machine_id = tree.join("etc/machine-id");
    if fs::symlink_metadata(&machine_id).is_ok_and(|m| m.is_file()) {
        fs::write(&machine_id, "").context("emptying /etc/machine-id")?;
    }
    let dbus_id = tree.join("var/lib/dbus/machine-id");
    if fs::symlink_metadata(&dbus_id).is_ok_and(|m| m.is_file()) {
        rm(&dbus_id)?;
    }
    if let Ok(dir) = fs::read_dir(tree.join("etc/ssh")) {
        for e in dir.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                rm(&e.path())?;
            }
        }
    }
    remove_files_below(&tree.join("var/log"))?;
    rm(&tree.join("root/.bash_history"))?;
    rm(&tree.join("var/lib/systemd/random-seed"))?;
    Ok(())
}

/// Removes every non-directory below `dir`, keeping the directories (and
/// their owners and modes, which services expect).
fn remove_files_below(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.filter_map(|e| e.ok()) {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_files_below(&p)?;
        } else {
            fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
