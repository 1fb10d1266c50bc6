//! Target `disk`: a directly bootable GPT disk image for virtual machines,
//! clouds and bare metal, as raw, qcow2, VMDK or VHD. By default partition
//! 1 is GRUB's BIOS boot partition (1 MiB), 2 the EFI system partition
//! (FAT, written in Rust), 3 the ext4 root; the layout is the same whatever
//! the firmware list, so the root is always partition 3 and an image can
//! gain the other firmware later. A spec may declare its own layout
//! ([`layout`]): a separate /boot, /var/log or swap, ext4 or XFS; each
//! filesystem is made from its subtree at its offset, the mount points
//! staying empty directories in the filesystem around them. GRUB
//! is installed for BIOS and UEFI without loop devices or partition nodes
//! ([`kiln_disk::grub`]), UEFI at the removable path so no NVRAM entry is
//! needed; filesystems are mounted by UUID and the kernel talks to a serial
//! console. cloud-init grows the root into whatever disk the image is
//! written to.
//!
//! What the build calls, through [`Target`]: [`DiskPlan::resolve`] at plan
//! time; [`finalise_script`] in a chroot and [`write_grub_cfg`] in the
//! finalise stage; [`disk_geometry`] to size a raw file and [`assemble`] to
//! fill it in the disk stage; the executor writes the output file;
//! [`check::check`] is `kiln check --target disk`.
//! Non-goals: Secure Boot, MBR disks, RAID or LVM layouts.

pub mod check;
mod config;
pub mod layout;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kiln_disk::fat::{FatEntry, FatOptions};
use kiln_disk::grub::{self, GrubRoot, Platform};
use kiln_disk::partition::{self, Layout, PartitionSpec, TableKind};
use kiln_spec::{DiskFormat, DiskTarget, Filesystem, Firmware, PartitionFilesystem, PartitionRole, Spec};
use serde::Serialize;
use uuid::Uuid;

pub use config::{finalise_script, fingerprint, write_grub_cfg};
pub(crate) use config::{kernels, os_name, serial_terminal, GRUB_TIMEOUT};
pub use layout::{PartitionPlan, Sizes};

use super::{
    ArtifactSpec, Assembly, ImageFormat, StageContext, Target, TargetInputs, TargetKind, TargetStage, TargetStages,
};
use crate::distro::{self, packages_for, Role};
use crate::plan::StageInput;

/// The `disk` kind in the registry.
pub const KIND: TargetKind = TargetKind {
    name: "disk",
    resolve,
    check: Some(check::check),
};

fn resolve(inputs: &TargetInputs) -> Result<Option<Arc<dyn Target>>> {
    Ok(inputs.spec.targets.disk.as_ref().map(|t| {
        let mut plan = DiskPlan::resolve(inputs.spec, t);
        plan.source_date_epoch = inputs.source_date_epoch;
        Arc::new(plan) as Arc<dyn Target>
    }))
}

/// What the image needs besides the kernel: GRUB's BIOS and UEFI modules
/// (not the installer packages, whose maintainer scripts want a boot
/// device; the common tools still run update-grub on kernel upgrades),
/// cloud-init with a way to grow the root, fsck for the ESP, SSH, the
/// network stack cloud-init renders for, sudo for the default user.
const ROLES: &[Role] = &[
    Role::Initramfs,
    Role::GrubCommon,
    Role::GrubBiosModules,
    Role::GrubEfiModules,
    Role::CloudInit,
    Role::GrowRoot,
    Role::Fat,
    Role::SshServer,
    Role::Network,
    Role::Sudo,
];

/// NoCloud for local VMs and seeds (`kiln boot`), ConfigDrive for
/// OpenStack-style clouds.
pub const DEFAULT_DATASOURCES: &[&str] = &["NoCloud", "ConfigDrive"];

/// GPT partition numbers (1-based) of the default layout.
pub const BIOS_BOOT_PARTITION: u32 = 1;
pub const ESP_PARTITION: u32 = 2;
pub const ROOT_PARTITION: u32 = 3;

/// Everything resolved for the `disk` target.
#[derive(Debug, Clone, Serialize)]
pub struct DiskPlan {
    /// The target as written in the spec (sizes resolve through it).
    pub target: DiskTarget,
    /// Firmware to install GRUB for, sorted, without duplicates.
    pub firmware: Vec<Firmware>,
    pub format: DiskFormat,
    pub filesystem: Filesystem,
    /// Virtual disk size in bytes; `None` is automatic.
    pub size: Option<u64>,
    pub esp_size: u64,
    /// `console=` value of the serial console.
    pub console: String,
    pub compress: bool,
    pub bootloader_id: String,
    /// Kernel command line after `root=UUID=… ro`: the consoles, then the
    /// spec's `[kernel] cmdline`.
    pub cmdline: Vec<String>,
    /// Output file name, e.g. `debian-12-1.0.0-disk.qcow2`.
    pub file_name: String,
    /// Timestamp for the ESP's files and the root filesystem's superblock.
    pub source_date_epoch: Option<u64>,
    /// The family, which names the packages.
    #[serde(skip)]
    pub distro: kiln_spec::Distro,
    /// The partitions, declared or the default layout.
    #[serde(skip)]
    pub partitions: Vec<PartitionPlan>,
    /// Whether the spec declares the layout (the plan shows it then).
    #[serde(skip)]
    pub declared: bool,
}

impl DiskPlan {
    /// Resolves the spec's `[targets.disk]` (already validated by `load`).
    pub fn resolve(spec: &Spec, t: &DiskTarget) -> DiskPlan {
        let bootloader_id = t
            .bootloader_id
            .clone()
            .unwrap_or_else(|| distro::family(spec.base.distro()).bootloader_id_for(&spec.base));
        let console = t.console().to_owned();
        // tty0 first, the serial console last: the last console= becomes
        // /dev/console, which is where boot messages and the login prompt
        // of a headless VM belong; tty0 still gets kernel messages.
        let mut cmdline = vec!["console=tty0".to_owned(), format!("console={console}")];
        cmdline.extend(spec.kernel.cmdline.iter().cloned());
        let extension = match t.format {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vmdk => "vmdk",
            DiskFormat::Vhd => "vhd",
        };
        DiskPlan {
            target: t.clone(),
            firmware: t.firmware(),
            format: t.format,
            filesystem: t.filesystem,
            size: t.disk_size(),
            esp_size: match t.partitions.iter().find(|p| p.role() == PartitionRole::Esp) {
                Some(esp) => esp.fixed_size().unwrap_or_default(),
                None if t.partitions.is_empty() => t.esp_size(),
                None => 0,
            },
            console,
            compress: t.format == DiskFormat::Qcow2 && t.compress.unwrap_or(false),
            bootloader_id,
            cmdline,
            file_name: format!("{}-{}-disk.{extension}", spec.image.name, spec.image.version),
            source_date_epoch: spec.image.source_date_epoch,
            distro: spec.base.distro(),
            partitions: layout::resolve(t),
            declared: !t.partitions.is_empty(),
        }
    }

    /// "bios and uefi", for progress and plans.
    fn firmware_names(&self) -> String {
        Firmware::names(&self.firmware)
    }

    /// The artifact's file format.
    pub fn artifact_format(&self) -> ImageFormat {
        match self.format {
            DiskFormat::Raw => ImageFormat::Raw,
            DiskFormat::Qcow2 => ImageFormat::Qcow2,
            DiskFormat::Vmdk => ImageFormat::Vmdk,
            DiskFormat::Vhd => ImageFormat::Vhd,
        }
    }

    /// The partition holding /boot: a separate one, or the root.
    pub fn boot_partition(&self) -> Option<(usize, &PartitionPlan)> {
        layout::find(&self.partitions, &PartitionRole::Boot)
            .or_else(|| layout::find(&self.partitions, &PartitionRole::Root))
    }

    /// Whether any filesystem of the layout is XFS.
    fn has_xfs(&self) -> bool {
        self.partitions
            .iter()
            .any(|p| p.filesystem == Some(PartitionFilesystem::Xfs))
    }

    pub fn has(&self, firmware: Firmware) -> bool {
        self.firmware.contains(&firmware)
    }
}

/// The identifiers of one disk, derived by the build from the spec hash so
/// that the same spec gives the same disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DiskIds {
    /// GPT disk GUID.
    pub disk: Uuid,
    pub bios_boot_partition: Uuid,
    pub esp_partition: Uuid,
    pub root_partition: Uuid,
    /// The root filesystem's UUID: `root=UUID=`, fstab and GRUB's search.
    pub root_fs: Uuid,
    /// ext4 directory-index hash seed (random otherwise).
    pub root_hash_seed: Uuid,
    /// The ESP's FAT volume id (its fstab UUID, see [`DiskIds::esp_uuid`]).
    pub esp_volume_id: u32,
    /// What the identifiers of a declared layout's other partitions and
    /// filesystems derive from ([`DiskIds::derived`]).
    pub seed: Uuid,
}

impl DiskIds {
    /// Derives every identifier from `derive("what")`, e.g. a hash of the
    /// spec and the name.
    pub fn derive(mut derive: impl FnMut(&str) -> Uuid) -> DiskIds {
        let volume = derive("disk: ESP volume id");
        let b = volume.as_bytes();
        DiskIds {
            disk: derive("disk: GPT disk"),
            bios_boot_partition: derive("disk: BIOS boot partition"),
            esp_partition: derive("disk: ESP partition"),
            root_partition: derive("disk: root partition"),
            root_fs: derive("disk: root filesystem"),
            root_hash_seed: derive("disk: root hash seed"),
            esp_volume_id: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            seed: derive("disk: seed"),
        }
    }

    /// An identifier derived from the seed and `what`.
    pub fn derived(&self, what: &str) -> Uuid {
        Uuid::new_v5(&self.seed, what.as_bytes())
    }

    /// The ESP's UUID as blkid and fstab write it: `XXXX-XXXX`.
    pub fn esp_uuid(&self) -> String {
        format!("{:04X}-{:04X}", self.esp_volume_id >> 16, self.esp_volume_id & 0xffff)
    }
}

/// The bytes of tree each partition holds, in layout order: its subtree
/// without the subtrees other partitions hold (0 for those whose content
/// kiln makes: BIOS boot, ESP, swap).
pub fn measure(plan: &DiskPlan, tree: &Path) -> Result<Vec<u64>> {
    let size = |dir: &Path| -> Result<u64> {
        match std::fs::symlink_metadata(dir) {
            Ok(_) => kiln_disk::mkfs::tree_size(dir).with_context(|| format!("measuring {}", dir.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
        }
    };
    layout::contents(&plan.partitions)
        .into_iter()
        .map(|content| {
            let Some(content) = content else { return Ok(0) };
            let dir = tree.join(&content.dir);
            let mut bytes = size(&dir)?;
            for hidden in &content.hide {
                bytes = bytes.saturating_sub(size(&dir.join(hidden))?);
            }
            Ok(bytes)
        })
        .collect()
}

/// The partition and disk sizes for `tree`: [`measure`], then
/// [`layout::sizes`].
pub fn disk_geometry(plan: &DiskPlan, tree: &Path) -> Result<Sizes> {
    let content = measure(plan, tree)?;
    layout::sizes(&plan.target, &plan.partitions, &content)
}

/// The partition layout for `sizes`: each partition 1 MiB aligned after the
/// previous one, 1 MiB left at the end for the backup GPT.
pub fn layout(sizes: &Sizes, plan: &DiskPlan, ids: &DiskIds) -> Result<Layout> {
    let parts: Vec<PartitionSpec> = plan
        .partitions
        .iter()
        .zip(&sizes.partitions)
        .map(|(p, &size)| PartitionSpec {
            kind: p.kind,
            size,
            name: p.name.clone(),
            guid: layout::partition_guid(ids, &p.role),
        })
        .collect();
    partition::layout(sizes.disk, TableKind::Gpt, &parts).context("laying out the disk")
}

/// Fills `disk_file`, a fresh (zeroed, sparse) raw file of `sizes.disk`
/// bytes ([`disk_geometry`]), from the finalised `tree`: each filesystem at
/// its offset (its subtree of the tree, other partitions' mount points left
/// empty), the ESP with GRUB's UEFI image, swap areas, the GPT, and GRUB for
/// BIOS. GRUB's modules and boot images come from the tree, so they match
/// the image's GRUB. Reads the tree, never writes it; no partition node, so
/// targets can be assembled in parallel from one tree (XFS alone needs a
/// loop device, and hidden mount points a private mount namespace).
pub fn assemble(disk_file: &Path, plan: &DiskPlan, tree: &Path, ids: &DiskIds, sizes: &Sizes) -> Result<Layout> {
    let layout = layout(sizes, plan, ids)?;
    let contents = layout::contents(&plan.partitions);
    let mut esp = None;
    let mut bios_boot = None;
    for ((p, placed), content) in plan.partitions.iter().zip(&layout.partitions).zip(&contents) {
        let what = match p.role.mount_point() {
            Some(m) => format!("the filesystem for {m}"),
            None => format!("the {} partition", layout::role_name(&p.role)),
        };
        match (&p.role, p.filesystem) {
            (PartitionRole::BiosBoot, _) => bios_boot = Some(placed),
            (PartitionRole::Esp, _) => esp = Some(placed),
            (_, Some(PartitionFilesystem::Swap)) => write_swap(
                disk_file,
                placed.start,
                placed.size,
                layout::fs_uuid(ids, &p.role),
                &p.label,
            )
            .with_context(|| format!("writing {what}"))?,
            (_, Some(fs @ (PartitionFilesystem::Ext4 | PartitionFilesystem::Xfs))) => {
                let content = content
                    .as_ref()
                    .with_context(|| format!("internal: {what} has no content"))?;
                let opts = kiln_disk::FsOptions {
                    uuid: layout::fs_uuid(ids, &p.role),
                    label: p.label.clone(),
                    hash_seed: Some(match p.role {
                        PartitionRole::Root => ids.root_hash_seed,
                        _ => ids.derived(&format!("hash seed {}", layout::role_name(&p.role))),
                    }),
                    source_date_epoch: plan.source_date_epoch,
                    hide: content.hide.clone(),
                    ..Default::default()
                };
                let source = tree.join(&content.dir);
                let made = if fs == PartitionFilesystem::Ext4 {
                    kiln_disk::make_ext4(disk_file, placed.start, placed.size, &source, &opts)
                } else {
                    kiln_disk::mkfs::make_xfs(disk_file, placed.start, placed.size, &source, &opts)
                };
                made.with_context(|| format!("creating {what}"))?;
            }
            (_, fs) => bail!("internal: {what} has filesystem {fs:?}"),
        }
    }

    let (boot_index, boot) = plan.boot_partition().context("internal: the disk layout has no root")?;
    let grub_root = GrubRoot {
        fs_uuid: layout::fs_uuid(ids, &boot.role),
        partition: layout.partitions[boot_index].index,
        prefix: if boot.role == PartitionRole::Boot {
            grub::SEPARATE_BOOT_PREFIX_DIR
        } else {
            grub::PREFIX_DIR
        },
        fs_module: (boot.filesystem == Some(PartitionFilesystem::Xfs)).then_some("xfs"),
    };
    if let Some(esp) = esp {
        let mut esp_files = Vec::new();
        if plan.has(Firmware::Uefi) {
            let image = grub::make_image(Platform::X86_64Efi, &Platform::X86_64Efi.modules_dir(tree), &grub_root)
                .context("building GRUB for UEFI")?;
            esp_files.push(FatEntry::file(
                grub::efi_vendor_path(&plan.bootloader_id),
                image.clone(),
            ));
            esp_files.push(FatEntry::file(grub::EFI_REMOVABLE_PATH, image));
        } else {
            // An empty but valid ESP: fstab mounts it, and UEFI can be added later.
            esp_files.push(FatEntry::dir("EFI"));
        }
        let label = layout::find(&plan.partitions, &PartitionRole::Esp).map_or("ESP", |(_, p)| p.label.as_str());
        let fat_opts = FatOptions::new(label, ids.esp_volume_id, plan.source_date_epoch.unwrap_or(0));
        kiln_disk::fat::write_fat_at(disk_file, esp.start, esp.size, &fat_opts, &esp_files)
            .context("writing the EFI system partition")?;
    } else if plan.has(Firmware::Uefi) {
        bail!("UEFI firmware needs an EFI system partition, and the layout has none");
    }

    partition::write_partition_table(disk_file, &layout, ids.disk).context("writing the partition table")?;

    if plan.has(Firmware::Bios) {
        let bios_boot = bios_boot.context("BIOS firmware needs a BIOS boot partition, and the layout has none")?;
        let modules = Platform::I386Pc.modules_dir(tree);
        let core = grub::make_image(Platform::I386Pc, &modules, &grub_root).context("building GRUB for BIOS")?;
        grub::install_bios(disk_file, &modules, &core, bios_boot)?;
    }
    Ok(layout)
}

/// Writes a Linux swap area's header (version 1, as mkswap(8) writes it)
/// into the `size` bytes at `offset` of `disk`: the page is 4 KiB, so the
/// area has `size / 4096` pages and its signature ends the first one.
fn write_swap(disk: &Path, offset: u64, size: u64, uuid: Uuid, label: &str) -> Result<()> {
    use std::os::unix::fs::FileExt;
    const PAGE: u64 = 4096;
    let pages = size / PAGE;
    if pages < 10 {
        bail!("a swap area of {size} bytes is too small");
    }
    let mut header = vec![0u8; PAGE as usize];
    header[1024..1028].copy_from_slice(&1u32.to_le_bytes());
    let last_page = u32::try_from(pages - 1).context("the swap area is larger than 16 TiB")?;
    header[1028..1032].copy_from_slice(&last_page.to_le_bytes());
    // nr_badpages stays 0.
    header[1036..1052].copy_from_slice(uuid.as_bytes());
    let name = label.as_bytes();
    header[1052..1052 + name.len().min(16)].copy_from_slice(&name[..name.len().min(16)]);
    header[4086..4096].copy_from_slice(b"SWAPSPACE2");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    file.write_all_at(&header, offset)
        .with_context(|| format!("writing a swap header into {}", disk.display()))
}

impl Target for DiskPlan {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn packages(&self) -> Vec<String> {
        let family = distro::family(self.distro);
        let mut packages = packages_for(family, ROLES);
        if self.has_xfs() {
            packages.extend(packages_for(family, &[Role::Xfs]));
        }
        packages
    }

    fn datasources(&self) -> &'static [&'static str] {
        DEFAULT_DATASOURCES
    }

    fn tools(&self) -> Vec<&'static str> {
        let mut tools = vec!["mke2fs", "qemu-img"];
        if !self.firmware.is_empty() {
            tools.push("grub-mkimage");
        }
        if self.declared {
            // Mount points are hidden by bind mounts in a private namespace.
            tools.extend(["unshare", "mount"]);
        }
        if self.has_xfs() {
            tools.extend(["mkfs.xfs", "losetup"]);
        }
        tools
    }

    fn stages(&self, _spec: &Spec, tools: &BTreeMap<String, String>) -> TargetStages {
        let tool = |name: &str| tools.get(name).cloned().unwrap_or_default();
        TargetStages {
            finalise: TargetStage {
                name: "finalise",
                actions: vec![
                    "fstab by UUID, GRUB defaults and grub.cfg with the serial console".to_owned(),
                    "regenerate the initramfs; remove machine-id, SSH host keys, cloud-init state, logs".to_owned(),
                ],
                inputs: vec![
                    StageInput::json(
                        "disk target",
                        &(&self.bootloader_id, &self.cmdline, &self.firmware, &self.console),
                    ),
                    StageInput::text("script", &fingerprint(self)),
                ],
            },
            assemble: vec![TargetStage {
                name: "disk",
                actions: vec![if self.declared {
                    format!(
                        "GPT: {} (FAT written by kiln); GRUB for {}",
                        self.partitions
                            .iter()
                            .map(|p| {
                                let size = p.size.map_or("rest".to_owned(), |b| format!("{} MiB", b >> 20));
                                match p.filesystem {
                                    Some(fs) => format!("{} {} {size}", layout::role_name(&p.role), fs.name()),
                                    None => format!("{} {size}", layout::role_name(&p.role)),
                                }
                            })
                            .collect::<Vec<_>>()
                            .join(", "),
                        self.firmware_names()
                    )
                } else {
                    format!(
                        "GPT: BIOS boot, {} MiB ESP (FAT written by kiln), ext4 root; GRUB for {}",
                        self.esp_size >> 20,
                        self.firmware_names()
                    )
                }],
                inputs: {
                    let mut inputs = vec![
                        StageInput::json(
                            "layout",
                            &(&self.target.size, &self.target.headroom, self.esp_size, &self.firmware),
                        ),
                        StageInput::text("mkfs", &tool("mke2fs")),
                    ];
                    if self.declared {
                        inputs.push(StageInput::json("partitions", &self.target.partitions));
                    }
                    if self.has_xfs() {
                        inputs.push(StageInput::text("mkfs.xfs", &tool("mkfs.xfs")));
                    }
                    inputs
                },
            }],
            output: TargetStage {
                name: "convert",
                actions: vec![format!("write {} ({:?})", self.file_name, self.format).to_lowercase()],
                inputs: vec![
                    StageInput::json("output", &(self.format, self.compress, &self.file_name)),
                    StageInput::text("qemu-img", &tool("qemu-img")),
                ],
            },
        }
    }

    fn finalise(&self, cx: &StageContext, tree: &Path) -> Result<()> {
        let ids = DiskIds::derive(|what| cx.derived_uuid(what));
        cx.chroot(tree, "disk finalisation", &finalise_script(self, &ids))?;
        write_grub_cfg(tree, self, &ids)
    }

    fn assemble(
        &self,
        cx: &StageContext,
        stage: &str,
        tree: &Path,
        scratch: &Path,
        out: &mut Assembly,
    ) -> Result<String> {
        if stage != "disk" {
            bail!("internal: the disk target has no stage {stage}");
        }
        let ids = DiskIds::derive(|what| cx.derived_uuid(what));
        let raw = scratch.join("disk.raw");
        let content = measure(self, tree).context("measuring the tree")?;
        let sizes = layout::sizes(&self.target, &self.partitions, &content)?;
        std::fs::File::create(&raw)?.set_len(sizes.disk)?;
        let layout = assemble(&raw, self, tree, &ids, &sizes)?;
        for (p, placed) in self.partitions.iter().zip(&layout.partitions) {
            if let Some(fs) = p.filesystem {
                out.filesystems
                    .insert(placed.start, (fs.name().to_owned(), layout::fstab_uuid(&ids, p)));
            }
        }
        out.raw = Some(raw);
        out.layout = Some(layout);
        Ok(format!(
            "{} MiB disk, {} MiB of content, GRUB for {}",
            sizes.disk >> 20,
            content.iter().sum::<u64>() >> 20,
            self.firmware_names()
        ))
    }

    fn artifact(&self) -> ArtifactSpec {
        ArtifactSpec {
            file_name: self.file_name.clone(),
            format: self.artifact_format(),
            compress: self.compress,
        }
    }

    fn describe(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if self.declared {
            v["partitions"] = serde_json::to_value(&self.partitions).unwrap_or_default();
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_disk::partition::PartKind;
    use kiln_spec::MIB;

    fn spec(target: &str) -> Spec {
        let text = format!(
            "[image]\nname = \"t\"\nversion = \"1\"\n[base]\ndistro = \"debian\"\nrelease = \"bookworm\"\n[kernel]\ncmdline = [\"quiet\"]\n[targets.disk]\n{target}"
        );
        match kiln_spec::parse_str(&text, Path::new("spec.toml"), Path::new("/")) {
            Ok(loaded) => loaded.spec,
            Err(e) => panic!("{e}"),
        }
    }

    fn plan(target: &str) -> DiskPlan {
        let spec = spec(target);
        DiskPlan::resolve(&spec, spec.targets.disk.as_ref().unwrap())
    }

    #[test]
    fn resolves_defaults_and_options() {
        let p = plan("");
        assert_eq!(p.firmware, [Firmware::Bios, Firmware::Uefi]);
        assert_eq!(p.file_name, "t-1-disk.qcow2");
        assert_eq!(p.cmdline, ["console=tty0", "console=ttyS0,115200n8", "quiet"]);
        assert_eq!(
            (p.bootloader_id.as_str(), p.compress, p.esp_size),
            ("debian", false, 128 * MIB)
        );
        let p = plan("format = \"raw\"\nfirmware = [\"uefi\"]\nconsole = \"hvc0\"\nbootloader_id = \"k\"\n");
        assert_eq!(p.file_name, "t-1-disk.raw");
        assert_eq!(p.firmware, [Firmware::Uefi]);
        assert_eq!(p.cmdline[1], "console=hvc0");
        assert_eq!(p.bootloader_id, "k");
        assert!(plan("compress = true").compress);
    }

    fn test_ids() -> DiskIds {
        DiskIds::derive(|w| Uuid::new_v5(&Uuid::NAMESPACE_OID, w.as_bytes()))
    }

    /// `contents`: the whole tree in the root (the default layout's third).
    fn sizes_for(p: &DiskPlan, root_content: u64) -> Result<Sizes> {
        let content: Vec<u64> = p
            .partitions
            .iter()
            .map(|q| if q.role == PartitionRole::Root { root_content } else { 0 })
            .collect();
        layout::sizes(&p.target, &p.partitions, &content)
    }

    #[test]
    fn geometry_and_layout_agree() {
        let ids = test_ids();
        for (target, content) in [
            ("", 900 * MIB),
            ("esp_size = \"64MiB\"\nheadroom = \"1%\"", 1234 * MIB + 17),
            ("size = \"4GiB\"", 2000 * MIB),
        ] {
            let p = plan(target);
            let g = sizes_for(&p, content).unwrap();
            let root_size = g.partitions[2];
            assert!(root_size >= content && root_size.is_multiple_of(MIB), "{target}: {g:?}");
            let l = layout(&g, &p, &ids).unwrap();
            let starts: Vec<u64> = l.partitions.iter().map(|p| p.start).collect();
            assert_eq!(starts, [MIB, 2 * MIB, 2 * MIB + p.esp_size], "{target}");
            let root = &l.partitions[2];
            assert_eq!(root.size, root_size);
            // 1 MiB stays free at the end for the backup GPT.
            assert_eq!(g.disk - (root.start + root.size), MIB, "{target}");
            // The spec's idea of the overhead agrees.
            assert_eq!(g.disk, p.target.resolved_disk_size(content), "{target}");
            let kinds: Vec<PartKind> = l.partitions.iter().map(|p| p.kind).collect();
            assert_eq!(kinds, [PartKind::BiosBoot, PartKind::Esp, PartKind::LinuxFs]);
        }
        assert_eq!(sizes_for(&plan("size = \"4GiB\""), 0).unwrap().disk, 4 << 30);
        let err = sizes_for(&plan("size = \"2GiB\""), 3 << 30).unwrap_err();
        assert!(err.to_string().contains("less than the content"), "{err}");
    }

    const METAL3: &str = r#"
[[partitions]]
role = "bios_boot"
size = "1MiB"
[[partitions]]
role = "esp"
size = "512MiB"
[[partitions]]
role = "boot"
size = "1GiB"
mount_options = "nodev"
[[partitions]]
role = "/var/log"
size = "1GiB"
filesystem = "xfs"
[[partitions]]
role = "swap"
size = "64MiB"
[[partitions]]
role = "root"
"#;

    fn declared(target: &str) -> DiskPlan {
        plan(&target.replace("[[partitions]]", "[[targets.disk.partitions]]"))
    }

    /// A declared layout: 1 MiB aligned one after the other, each role with
    /// its Discoverable Partitions type, the root taking the rest.
    #[test]
    fn declared_layout_offsets_and_types() {
        let p = declared(&format!("size = \"8GiB\"{METAL3}"));
        let g = sizes_for(&p, 2 << 30).unwrap();
        let l = layout(&g, &p, &test_ids()).unwrap();
        let got: Vec<(u64, u64, String)> = l
            .partitions
            .iter()
            .map(|q| (q.start >> 20, q.size >> 20, q.kind.gpt_type().to_string()))
            .collect();
        let rest = 8192 - 1 - 1 - 512 - 1024 - 1024 - 64 - 1;
        let want = [
            (1, 1, "21686148-6449-6e6f-744e-656564454649"),
            (2, 512, "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
            (514, 1024, "bc13c2ff-59e6-4262-a352-b275fd6f7172"),
            (1538, 1024, "0fc63daf-8483-4772-8e79-3d69d8477de4"),
            (2562, 64, "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"),
            (2626, rest, "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
        ];
        let want: Vec<(u64, u64, String)> = want.iter().map(|(a, b, c)| (*a, *b, (*c).to_owned())).collect();
        assert_eq!(got, want);
        assert!(l.partitions.iter().all(|q| q.start % MIB == 0 && q.size % MIB == 0));
        assert_eq!(l.partitions[5].start + l.partitions[5].size, (8 << 30) - MIB);
        // /var gets its own type; other mount points the generic one.
        for (path, kind) in [
            ("/var", PartKind::Var),
            ("/var/tmp", PartKind::VarTmp),
            ("/home", PartKind::Home),
            ("/srv", PartKind::Srv),
            ("/opt", PartKind::LinuxFs),
        ] {
            assert_eq!(
                layout::declared_kind(&PartitionRole::Mount(path.into())),
                kind,
                "{path}"
            );
        }

        // "auto": the root's content plus headroom, the others as declared.
        let p = declared(&format!("headroom = \"100MiB\"{METAL3}"));
        let g = sizes_for(&p, 1000 * MIB).unwrap();
        assert_eq!(g.partitions[5], 1100 * MIB);
        assert_eq!(g.disk, (2 + 512 + 1024 + 1024 + 64 + 1100 + 1) * MIB);
        // A fixed partition smaller than its content fails before any work.
        let content = [0, 0, 2 << 30, 0, 0, MIB];
        let err = layout::sizes(&p.target, &p.partitions, &content).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the /boot partition is 1 GiB, less than its content (2 GiB); raise its size"
        );
    }

    /// fstab: by UUID, parents first, options and pass numbers per role.
    #[test]
    fn declared_fstab_lines() {
        let p = declared(METAL3);
        let ids = test_ids();
        let uuid = |role: PartitionRole| layout::fs_uuid(&ids, &role);
        let want = format!(
            "UUID={} / ext4 errors=remount-ro 0 1\n\
             UUID={} /boot ext4 nodev 0 2\n\
             UUID={} /boot/efi vfat umask=0077 0 2\n\
             UUID={} /var/log xfs defaults 0 2\n\
             UUID={} none swap sw 0 0\n",
            ids.root_fs,
            uuid(PartitionRole::Boot),
            ids.esp_uuid(),
            uuid(PartitionRole::Mount("/var/log".into())),
            uuid(PartitionRole::Swap),
        );
        assert_eq!(layout::fstab_lines(&p.partitions, &ids), want);
        // Every filesystem has its own UUID.
        let mut all: Vec<String> = p.partitions.iter().map(|q| layout::fstab_uuid(&ids, q)).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), p.partitions.len());
        // The default layout's two lines, as they always were.
        let d = plan("");
        assert_eq!(
            layout::fstab_lines(&d.partitions, &ids),
            format!(
                "UUID={} / ext4 errors=remount-ro 0 1\nUUID={} /boot/efi vfat umask=0077 0 2\n",
                ids.root_fs,
                ids.esp_uuid()
            )
        );
    }

    /// What each filesystem is made from: its subtree, without the
    /// subtrees of the filesystems mounted inside it.
    #[test]
    fn contents_leave_out_nested_mount_points() {
        let p = declared(&METAL3.replace("\"/var/log\"", "\"/var\"").replace(
            "[[partitions]]\nrole = \"swap\"",
            "[[partitions]]\nrole = \"/var/log\"\nsize = \"1GiB\"\n[[partitions]]\nrole = \"swap\"",
        ));
        let got: Vec<Option<(String, Vec<String>)>> = layout::contents(&p.partitions)
            .into_iter()
            .map(|c| {
                c.map(|c| {
                    (
                        c.dir.display().to_string(),
                        c.hide.iter().map(|h| h.display().to_string()).collect(),
                    )
                })
            })
            .collect();
        let some = |d: &str, h: &[&str]| Some((d.to_owned(), h.iter().map(|s| (*s).to_owned()).collect()));
        assert_eq!(
            got,
            [
                None,
                None,
                some("boot", &[]),
                some("var", &["log"]),
                some("var/log", &[]),
                None,
                some("", &["boot", "var"]),
            ]
        );
    }

    #[test]
    fn ids_are_derived_and_formatted() {
        let ids = DiskIds::derive(|w| Uuid::new_v5(&Uuid::NAMESPACE_OID, w.as_bytes()));
        let again = DiskIds::derive(|w| Uuid::new_v5(&Uuid::NAMESPACE_OID, w.as_bytes()));
        assert_eq!(ids, again);
        let all = [
            ids.disk,
            ids.bios_boot_partition,
            ids.esp_partition,
            ids.root_partition,
            ids.root_fs,
            ids.root_hash_seed,
            ids.seed,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(all[i + 1..].iter().all(|b| a != b));
        }
        let fixed = DiskIds {
            esp_volume_id: 0x1234_abcd,
            ..ids
        };
        assert_eq!(fixed.esp_uuid(), "1234-ABCD");
    }
}
