//! Target `disk`: a directly bootable GPT disk image for virtual machines
//! and clouds, raw or qcow2. Partition 1 is GRUB's BIOS boot partition
//! (1 MiB), 2 the EFI system partition (FAT, written in Rust), 3 the ext4
//! root; the layout is the same whatever the firmware list, so the root is
//! always partition 3 and an image can gain the other firmware later. GRUB
//! is installed for BIOS and UEFI without loop devices or partition nodes
//! ([`kiln_disk::grub`]), UEFI at the removable path so no NVRAM entry is
//! needed; filesystems are mounted by UUID and the kernel talks to a serial
//! console. cloud-init grows the root into whatever disk the image is
//! written to.
//!
//! What the build calls, through [`Target`]: [`DiskPlan::resolve`] at plan
//! time; [`finalise_script`] in a chroot and [`write_grub_cfg`] in the
//! finalise stage; [`disk_geometry`] to size a raw file and [`assemble`] to
//! fill it in the disk stage; the executor writes the output file.
//! Non-goals: XFS or separate /boot, Secure Boot, MBR disks.

mod config;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kiln_disk::fat::{FatEntry, FatOptions};
use kiln_disk::grub::{self, GrubRoot, Platform};
use kiln_disk::partition::{self, Layout, PartKind, PartitionSpec, TableKind};
use kiln_spec::{DiskFormat, DiskTarget, Filesystem, Firmware, Spec, MIB};
use serde::Serialize;
use uuid::Uuid;

pub use config::{finalise_script, fingerprint, write_grub_cfg};

use super::{
    ArtifactSpec, Assembly, ImageFormat, StageContext, Target, TargetInputs, TargetKind, TargetStage, TargetStages,
};
use crate::distro::{self, packages_for, Role};
use crate::plan::StageInput;

/// The `disk` kind in the registry.
pub const KIND: TargetKind = TargetKind {
    name: "disk",
    resolve,
    check: None,
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

/// GPT partition numbers (1-based) of the fixed layout.
pub const BIOS_BOOT_PARTITION: u32 = 1;
pub const ESP_PARTITION: u32 = 2;
pub const ROOT_PARTITION: u32 = 3;
/// GRUB's BIOS boot partition: core.img takes about 150 KiB, and 1 MiB
/// keeps the ESP aligned.
const BIOS_BOOT_SIZE: u64 = MIB;
/// Labels: ext4 holds 16 bytes, FAT 11.
const ROOT_LABEL: &str = "root";
const ESP_LABEL: &str = "ESP";

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
}

impl DiskPlan {
    /// Resolves the spec's `[targets.disk]` (already validated by `load`).
    pub fn resolve(spec: &Spec, t: &DiskTarget) -> DiskPlan {
        let bootloader_id = t
            .bootloader_id
            .clone()
            .unwrap_or_else(|| distro::family(spec.base.distro()).bootloader_id().to_owned());
        let console = t.console().to_owned();
        // tty0 first, the serial console last: the last console= becomes
        // /dev/console, which is where boot messages and the login prompt
        // of a headless VM belong; tty0 still gets kernel messages.
        let mut cmdline = vec!["console=tty0".to_owned(), format!("console={console}")];
        cmdline.extend(spec.kernel.cmdline.iter().cloned());
        let extension = match t.format {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        };
        DiskPlan {
            target: t.clone(),
            firmware: t.firmware(),
            format: t.format,
            filesystem: t.filesystem,
            size: t.disk_size(),
            esp_size: t.esp_size(),
            console,
            compress: t.format == DiskFormat::Qcow2 && t.compress.unwrap_or(false),
            bootloader_id,
            cmdline,
            file_name: format!("{}-{}-disk.{extension}", spec.image.name, spec.image.version),
            source_date_epoch: spec.image.source_date_epoch,
            distro: spec.base.distro(),
        }
    }

    /// "bios and uefi", for progress and plans.
    fn firmware_names(&self) -> String {
        self.firmware
            .iter()
            .map(|f| format!("{f:?}").to_lowercase())
            .collect::<Vec<_>>()
            .join(" and ")
    }

    /// `raw` or `qcow2`.
    pub fn format_name(&self) -> &'static str {
        match self.format {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
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
        }
    }

    /// The ESP's UUID as blkid and fstab write it: `XXXX-XXXX`.
    pub fn esp_uuid(&self) -> String {
        format!("{:04X}-{:04X}", self.esp_volume_id >> 16, self.esp_volume_id & 0xffff)
    }
}

/// Sizes of a disk for a given content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DiskGeometry {
    /// The root filesystem (and partition).
    pub root_size: u64,
    /// The whole disk: the raw file's length.
    pub disk_size: u64,
}

/// The disk for `content` bytes of tree (`kiln_disk::tree_size`): the
/// spec's fixed size, or the content plus headroom plus the BIOS boot
/// partition, the ESP and the GPT's two MiB.
pub fn disk_geometry(plan: &DiskPlan, content: u64) -> Result<DiskGeometry> {
    let root_size = plan.target.resolved_root_size(content);
    let disk_size = plan.target.resolved_disk_size(content);
    if root_size < content {
        bail!(
            "[targets.disk] size = {} MiB leaves {} MiB for the root filesystem, less than the content ({} MiB); raise it or use \"auto\"",
            disk_size >> 20,
            root_size >> 20,
            content.div_ceil(MIB)
        );
    }
    let geometry = DiskGeometry { root_size, disk_size };
    // The layout must agree with the spec's idea of the overhead.
    let root = layout(disk_size, plan, &DiskIds::derive(|_| Uuid::nil()))?.partitions[2].size;
    if root != root_size {
        bail!("internal: the disk layout gives the root {root} bytes, the size rules {root_size}");
    }
    Ok(geometry)
}

/// The partition layout of a `disk_size`-byte disk: BIOS boot, ESP, and
/// the root up to 1 MiB before the end (the backup GPT, kept aligned).
pub fn layout(disk_size: u64, plan: &DiskPlan, ids: &DiskIds) -> Result<Layout> {
    let root_size = disk_size
        .checked_sub(plan.esp_size + DiskTarget::LAYOUT_OVERHEAD)
        .filter(|&s| s >= MIB)
        .with_context(|| format!("a {disk_size}-byte disk is too small for the disk target's layout"))?;
    let parts = [
        PartitionSpec {
            kind: PartKind::BiosBoot,
            size: BIOS_BOOT_SIZE,
            name: "bios-boot".to_owned(),
            guid: ids.bios_boot_partition,
        },
        PartitionSpec {
            kind: PartKind::Esp,
            size: plan.esp_size,
            name: "esp".to_owned(),
            guid: ids.esp_partition,
        },
        PartitionSpec {
            kind: PartKind::LinuxFs,
            size: root_size,
            name: "root".to_owned(),
            guid: ids.root_partition,
        },
    ];
    let layout = partition::layout(disk_size, TableKind::Gpt, &parts).context("laying out the disk")?;
    let numbers: Vec<u32> = layout.partitions.iter().map(|p| p.index).collect();
    debug_assert_eq!(numbers, [BIOS_BOOT_PARTITION, ESP_PARTITION, ROOT_PARTITION]);
    Ok(layout)
}

/// Fills `disk_file`, a fresh (zeroed, sparse) raw file of
/// [`disk_geometry`]'s `disk_size`, from the finalised `tree`: the root ext4
/// at its offset, the ESP with GRUB's UEFI image, the GPT, and GRUB for
/// BIOS. GRUB's modules and boot images come from the tree, so they match
/// the image's GRUB. Reads the tree, never writes it; no loop device, no
/// mount, so targets can be assembled in parallel from one tree.
pub fn assemble(disk_file: &Path, plan: &DiskPlan, tree: &Path, ids: &DiskIds) -> Result<Layout> {
    if plan.filesystem != Filesystem::Ext4 {
        bail!("the disk target supports only ext4 for now");
    }
    let disk_size = std::fs::metadata(disk_file)
        .with_context(|| format!("reading {}", disk_file.display()))?
        .len();
    let layout = layout(disk_size, plan, ids)?;
    let [bios_boot, esp, root] = layout.partitions.as_slice() else {
        bail!("internal: the disk layout has {} partitions", layout.partitions.len());
    };

    let fs_opts = kiln_disk::FsOptions {
        uuid: ids.root_fs,
        label: ROOT_LABEL.to_owned(),
        hash_seed: Some(ids.root_hash_seed),
        source_date_epoch: plan.source_date_epoch,
        ..Default::default()
    };
    kiln_disk::make_ext4(disk_file, root.start, root.size, tree, &fs_opts).context("creating the root filesystem")?;

    let grub_root = GrubRoot {
        fs_uuid: ids.root_fs,
        partition: root.index,
    };
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
    let fat_opts = FatOptions::new(ESP_LABEL, ids.esp_volume_id, plan.source_date_epoch.unwrap_or(0));
    kiln_disk::fat::write_fat_at(disk_file, esp.start, esp.size, &fat_opts, &esp_files)
        .context("writing the EFI system partition")?;

    partition::write_partition_table(disk_file, &layout, ids.disk).context("writing the partition table")?;

    if plan.has(Firmware::Bios) {
        let modules = Platform::I386Pc.modules_dir(tree);
        let core = grub::make_image(Platform::I386Pc, &modules, &grub_root).context("building GRUB for BIOS")?;
        grub::install_bios(disk_file, &modules, &core, bios_boot)?;
    }
    Ok(layout)
}

impl Target for DiskPlan {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn packages(&self) -> Vec<String> {
        packages_for(distro::family(self.distro), ROLES)
    }

    fn datasources(&self) -> &'static [&'static str] {
        DEFAULT_DATASOURCES
    }

    fn tools(&self) -> Vec<&'static str> {
        let mut tools = vec!["mke2fs", "qemu-img"];
        if !self.firmware.is_empty() {
            tools.push("grub-mkimage");
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
                actions: vec![format!(
                    "GPT: BIOS boot, {} MiB ESP (FAT written by kiln), ext4 root; GRUB for {}",
                    self.esp_size >> 20,
                    self.firmware_names()
                )],
                inputs: vec![
                    StageInput::json(
                        "layout",
                        &(&self.target.size, &self.target.headroom, self.esp_size, &self.firmware),
                    ),
                    StageInput::text("mkfs", &tool("mke2fs")),
                ],
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
        cx.chroot(
            tree,
            "disk finalisation",
            &finalise_script(self, ids.root_fs, &ids.esp_uuid()),
        )?;
        write_grub_cfg(tree, self, ids.root_fs)
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
        let content = kiln_disk::mkfs::tree_size(tree).context("measuring the root tree")?;
        let geometry = disk_geometry(self, content)?;
        std::fs::File::create(&raw)?.set_len(geometry.disk_size)?;
        let layout = assemble(&raw, self, tree, &ids)?;
        for p in &layout.partitions {
            match p.index {
                ROOT_PARTITION => out
                    .filesystems
                    .insert(p.start, ("ext4".to_owned(), ids.root_fs.to_string())),
                ESP_PARTITION => out.filesystems.insert(p.start, ("vfat".to_owned(), ids.esp_uuid())),
                _ => None,
            };
        }
        out.raw = Some(raw);
        out.layout = Some(layout);
        Ok(format!(
            "{} MiB disk, {} MiB of content, GRUB for {}",
            geometry.disk_size >> 20,
            content >> 20,
            self.firmware_names()
        ))
    }

    fn artifact(&self) -> ArtifactSpec {
        ArtifactSpec {
            file_name: self.file_name.clone(),
            format: match self.format {
                DiskFormat::Raw => ImageFormat::Raw,
                DiskFormat::Qcow2 => ImageFormat::Qcow2,
            },
            compress: self.compress,
        }
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn geometry_and_layout_agree() {
        let ids = DiskIds::derive(|w| Uuid::new_v5(&Uuid::NAMESPACE_OID, w.as_bytes()));
        for (target, content) in [
            ("", 900 * MIB),
            ("esp_size = \"64MiB\"\nheadroom = \"1%\"", 1234 * MIB + 17),
            ("size = \"4GiB\"", 2000 * MIB),
        ] {
            let p = plan(target);
            let g = disk_geometry(&p, content).unwrap();
            assert!(
                g.root_size >= content && g.root_size.is_multiple_of(MIB),
                "{target}: {g:?}"
            );
            let l = layout(g.disk_size, &p, &ids).unwrap();
            let starts: Vec<u64> = l.partitions.iter().map(|p| p.start).collect();
            assert_eq!(starts, [MIB, 2 * MIB, 2 * MIB + p.esp_size], "{target}");
            let root = &l.partitions[2];
            assert_eq!(root.size, g.root_size);
            // 1 MiB stays free at the end for the backup GPT.
            assert_eq!(g.disk_size - (root.start + root.size), MIB, "{target}");
        }
        assert_eq!(disk_geometry(&plan("size = \"4GiB\""), 0).unwrap().disk_size, 4 << 30);
        let err = disk_geometry(&plan("size = \"2GiB\""), 3 << 30).unwrap_err();
        assert!(err.to_string().contains("less than the content"), "{err}");
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
