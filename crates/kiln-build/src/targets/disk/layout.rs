//! The disk target's partitions: the default layout (BIOS boot, ESP, ext4
//! root) or the one the spec declares, resolved into what the build needs
//! of each partition (GPT type, size or "the rest", filesystem, label,
//! mount point and options), the sizes for a given tree, and the fstab
//! lines. Pure computation: nothing here touches a disk.
//!
//! The default layout keeps the types and names it always had (the root is
//! a generic Linux filesystem), so images of specs without `partitions`
//! stay what they were. A declared layout types its partitions after the
//! Discoverable Partitions Specification (x86-64 root, /boot as XBOOTLDR,
//! /var, /var/tmp, /home, /srv, swap), which tools such as
//! systemd-gpt-auto-generator and `kiln inspect` read; fstab still names
//! every filesystem by UUID.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_disk::partition::PartKind;
use kiln_spec::{format_size, DiskTarget, PartitionFilesystem, PartitionRole, MIB};
use serde::Serialize;
use uuid::Uuid;

use super::DiskIds;

/// GRUB's BIOS boot partition in the default layout: core.img takes about
/// 150 KiB, and 1 MiB keeps the ESP aligned.
const BIOS_BOOT_SIZE: u64 = MIB;

/// One partition as the build makes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionPlan {
    #[serde(serialize_with = "role_text")]
    pub role: PartitionRole,
    /// `None` for the BIOS boot partition.
    pub filesystem: Option<PartitionFilesystem>,
    /// Bytes, or `None` for the rest of the disk.
    pub size: Option<u64>,
    /// fstab options.
    pub mount_options: String,
    /// Filesystem label; empty for none.
    pub label: String,
    /// GPT partition name.
    pub name: String,
    pub kind: PartKind,
}

fn role_text<S: serde::Serializer>(role: &PartitionRole, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&role_name(role))
}

/// The role as a spec writes it.
pub fn role_name(role: &PartitionRole) -> String {
    match role {
        PartitionRole::BiosBoot => "bios_boot".into(),
        PartitionRole::Esp => "esp".into(),
        PartitionRole::Boot => "boot".into(),
        PartitionRole::Root => "root".into(),
        PartitionRole::Swap => "swap".into(),
        PartitionRole::Mount(path) => path.clone(),
    }
}

/// The GPT type of a declared partition.
pub fn declared_kind(role: &PartitionRole) -> PartKind {
    match role {
        PartitionRole::BiosBoot => PartKind::BiosBoot,
        PartitionRole::Esp => PartKind::Esp,
        PartitionRole::Boot => PartKind::Xbootldr,
        PartitionRole::Root => PartKind::RootX86_64,
        PartitionRole::Swap => PartKind::Swap,
        PartitionRole::Mount(path) => match path.as_str() {
            "/var" => PartKind::Var,
            "/var/tmp" => PartKind::VarTmp,
            "/home" => PartKind::Home,
            "/srv" => PartKind::Srv,
            _ => PartKind::LinuxFs,
        },
    }
}

/// The fstab options of a partition that names none.
fn default_options(role: &PartitionRole, fs: Option<PartitionFilesystem>) -> &'static str {
    match (role, fs) {
        (PartitionRole::Root, Some(PartitionFilesystem::Ext4)) => "errors=remount-ro",
        (PartitionRole::Esp, _) => "umask=0077",
        (PartitionRole::Swap, _) => "sw",
        (PartitionRole::BiosBoot, _) => "",
        _ => "defaults",
    }
}

/// The partitions of `t`: declared, or the default layout.
pub fn resolve(t: &DiskTarget) -> Vec<PartitionPlan> {
    if t.partitions.is_empty() {
        let root = PartitionRole::Root;
        let ext4 = Some(PartitionFilesystem::Ext4);
        return vec![
            PartitionPlan {
                role: PartitionRole::BiosBoot,
                filesystem: None,
                size: Some(BIOS_BOOT_SIZE),
                mount_options: String::new(),
                label: String::new(),
                name: "bios-boot".into(),
                kind: PartKind::BiosBoot,
            },
            PartitionPlan {
                role: PartitionRole::Esp,
                filesystem: Some(PartitionFilesystem::Vfat),
                size: Some(t.esp_size()),
                mount_options: default_options(&PartitionRole::Esp, None).into(),
                label: "ESP".into(),
                name: "esp".into(),
                kind: PartKind::Esp,
            },
            PartitionPlan {
                mount_options: default_options(&root, ext4).into(),
                role: root,
                filesystem: ext4,
                size: None,
                label: "root".into(),
                name: "root".into(),
                kind: PartKind::LinuxFs,
            },
        ];
    }
    t.partitions
        .iter()
        .map(|p| {
            let role = p.role();
            let fs = p.filesystem();
            let name = match &role {
                PartitionRole::BiosBoot => "bios-boot".to_owned(),
                PartitionRole::Mount(path) => path.trim_start_matches('/').replace('/', "-"),
                other => role_name(other),
            };
            let label = p.label.clone().unwrap_or_else(|| match (&role, fs) {
                (PartitionRole::BiosBoot, _) => String::new(),
                (PartitionRole::Esp, _) => "ESP".into(),
                // The partition's name, cut to what the filesystem holds.
                (_, fs) => name
                    .chars()
                    .take(fs.map_or(0, PartitionFilesystem::max_label))
                    .collect(),
            });
            PartitionPlan {
                kind: declared_kind(&role),
                mount_options: p
                    .mount_options
                    .clone()
                    .unwrap_or_else(|| default_options(&role, fs).into()),
                filesystem: fs,
                size: p.fixed_size(),
                label,
                name,
                role,
            }
        })
        .collect()
}

/// Where a partition's content comes from in the tree, and what of it
/// stays out because another partition holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// The directory of the tree, relative (empty for the root).
    pub dir: PathBuf,
    /// Directories under `dir`, relative to it, that other filesystems hold.
    pub hide: Vec<PathBuf>,
}

/// The content of every partition, in layout order (`None` for those
/// without a mounted filesystem, whose content kiln makes: the ESP, BIOS
/// boot and swap).
pub fn contents(parts: &[PartitionPlan]) -> Vec<Option<Content>> {
    let mounts: Vec<&str> = parts
        .iter()
        .filter(|p| p.role != PartitionRole::Esp)
        .filter_map(|p| p.role.mount_point())
        .collect();
    parts
        .iter()
        .map(|p| {
            if p.role == PartitionRole::Esp {
                return None;
            }
            let mount = p.role.mount_point()?;
            let dir = PathBuf::from(mount.trim_start_matches('/'));
            // Nested mount points, only the outermost: hiding /var hides
            // /var/log with it.
            let inside = |m: &str| m != mount && (mount == "/" || m.starts_with(&format!("{mount}/")));
            let nested: Vec<&str> = mounts.iter().copied().filter(|m| inside(m)).collect();
            let hide = nested
                .iter()
                .filter(|m| !nested.iter().any(|o| o != *m && m.starts_with(&format!("{o}/"))))
                .map(|m| {
                    Path::new(m.trim_start_matches('/'))
                        .strip_prefix(&dir)
                        .map(Path::to_path_buf)
                })
                .collect::<std::result::Result<Vec<_>, _>>()
                .unwrap_or_default();
            Some(Content { dir, hide })
        })
        .collect()
}

/// Sizes of a disk for a given content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sizes {
    /// Each partition's size, in layout order.
    pub partitions: Vec<u64>,
    /// The whole disk: the raw file's length.
    pub disk: u64,
}

/// Sizes every partition for `content` (bytes of tree each one holds, in
/// layout order; 0 for those whose content kiln makes): fixed sizes as
/// declared, the rest of a fixed disk or, for an "auto" disk, the rest
/// partition's content plus headroom. Fails when a content does not fit.
pub fn sizes(t: &DiskTarget, parts: &[PartitionPlan], content: &[u64]) -> Result<Sizes> {
    let fixed: u64 = parts.iter().filter_map(|p| p.size).sum();
    let overhead = fixed + DiskTarget::GPT_OVERHEAD;
    let rest = |content: u64| match t.disk_size() {
        Some(disk) => disk.saturating_sub(overhead),
        None => t.resolved_root_size(content),
    };
    let mut out = Vec::with_capacity(parts.len());
    for (p, &bytes) in parts.iter().zip(content) {
        let size = p.size.unwrap_or_else(|| rest(bytes));
        if size < bytes {
            let what = match p.role.mount_point() {
                Some(m) => format!("the {m} partition"),
                None => format!("the {} partition", role_name(&p.role)),
            };
            if p.size.is_none() && t.partitions.is_empty() {
                bail!(
                    "[targets.disk] size = {} MiB leaves {} MiB for the root filesystem, less than the content ({} MiB); raise it or use \"auto\"",
                    t.disk_size().unwrap_or_default() >> 20,
                    size >> 20,
                    bytes.div_ceil(MIB)
                );
            }
            bail!(
                "{what} is {}, less than its content ({}); raise its size{}",
                format_size(size),
                format_size(bytes),
                if p.size.is_none() { " or the disk's" } else { "" }
            );
        }
        out.push(size);
    }
    let disk = t
        .disk_size()
        .unwrap_or_else(|| out.iter().sum::<u64>() + DiskTarget::GPT_OVERHEAD);
    Ok(Sizes { partitions: out, disk })
}

/// The identifiers of the filesystem of `role`: the default layout's for
/// the root and the ESP, the others derived from the disk's seed.
pub fn fs_uuid(ids: &DiskIds, role: &PartitionRole) -> Uuid {
    match role {
        PartitionRole::Root => ids.root_fs,
        other => ids.derived(&format!("filesystem {}", role_name(other))),
    }
}

/// The GPT unique GUID of the partition of `role`.
pub fn partition_guid(ids: &DiskIds, role: &PartitionRole) -> Uuid {
    match role {
        PartitionRole::BiosBoot => ids.bios_boot_partition,
        PartitionRole::Esp => ids.esp_partition,
        PartitionRole::Root => ids.root_partition,
        other => ids.derived(&format!("partition {}", role_name(other))),
    }
}

/// The UUID fstab and blkid give the filesystem of `p`.
pub fn fstab_uuid(ids: &DiskIds, p: &PartitionPlan) -> String {
    match p.role {
        PartitionRole::Esp => ids.esp_uuid(),
        _ => fs_uuid(ids, &p.role).to_string(),
    }
}

/// The lines of /etc/fstab, parents before the filesystems mounted in them
/// (a path sorts before its descendants), swap last.
pub fn fstab_lines(parts: &[PartitionPlan], ids: &DiskIds) -> String {
    let mut mounted: Vec<(&str, &PartitionPlan)> = parts
        .iter()
        .filter_map(|p| p.role.mount_point().map(|m| (m, p)))
        .collect();
    mounted.sort_by_key(|(m, _)| *m);
    let mut s = String::new();
    for (mount, p) in mounted {
        let fs = p.filesystem.map_or("auto", PartitionFilesystem::name);
        let pass = if mount == "/" { 1 } else { 2 };
        let _ = writeln!(
            s,
            "UUID={} {mount} {fs} {} 0 {pass}",
            fstab_uuid(ids, p),
            p.mount_options
        );
    }
    for p in parts.iter().filter(|p| p.role == PartitionRole::Swap) {
        let _ = writeln!(s, "UUID={} none swap {} 0 0", fstab_uuid(ids, p), p.mount_options);
    }
    s
}

/// The partition of `role`, if the layout has one.
pub fn find<'a>(parts: &'a [PartitionPlan], role: &PartitionRole) -> Option<(usize, &'a PartitionPlan)> {
    parts.iter().enumerate().find(|(_, p)| p.role == *role)
}

/// The layout's root filesystem type, for the initramfs' fsck hook.
pub fn root_filesystem(parts: &[PartitionPlan]) -> Result<PartitionFilesystem> {
    find(parts, &PartitionRole::Root)
        .and_then(|(_, p)| p.filesystem)
        .context("internal: the disk layout has no root filesystem")
}
