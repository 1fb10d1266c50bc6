//! Target `ovh-byol`: an OVHcloud Bring Your Own Linux (`byolinux_64`)
//! image, reference §7: a qcow2 with exactly one ext4 or XFS partition
//! holding `/root/.ovh/make_image_bootable.sh`, which OVH's installer runs
//! chrooted and offline after it has partitioned the disks and copied the
//! tree in. So the image carries everything that script installs, GRUB is
//! not installed at build time, and nothing host-specific is baked in.

pub mod check;
pub mod script;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kiln_disk::partition::{self, PartKind, PartitionSpec, TableKind};
use kiln_spec::{Filesystem, OvhByolTarget, PartitionTable, Spec, Written};
use serde::Serialize;

use super::{
    ArtifactSpec, Assembly, ImageFormat, StageContext, Target, TargetInputs, TargetKind, TargetStage, TargetStages,
};
use crate::chroot::write_mode;
use crate::distro::{packages_for, DistroFamily, Role};
use crate::plan::StageInput;

/// The `ovh-byol` kind in the registry.
pub const KIND: TargetKind = TargetKind {
    name: "ovh-byol",
    resolve,
    check: Some(check::check_image),
};

/// What the contract needs in the image (reference §7, items 5, 7, 9),
/// plus what first boot on a bare-metal server needs: SSH, the network
/// stack cloud-init renders for, sudo for the default user. GRUB's
/// installer packages conflict, so the script installs one of them offline
/// ([`OvhByol::kept_packages`]); what they depend on is installed.
const ROLES: &[Role] = &[
    Role::Initramfs,
    Role::GrubCommon,
    Role::GrubBiosModules,
    Role::GrubEfiModules,
    Role::GrubInstallerDeps,
    Role::EfiBootManager,
    Role::Raid,
    Role::Lvm,
    Role::Filesystems,
    Role::CloudInit,
    Role::SshServer,
    Role::Network,
    Role::Sudo,
];

/// Where the kept `.deb` files live; the script removes `/root/.ovh` at the end.
pub const DEBS_DIR: &str = "/root/.ovh/debs";

/// OVH's config drive is ConfigDrive; NoCloud lets the same image boot with
/// a `cidata` seed in local tests.
pub const DEFAULT_DATASOURCES: &[&str] = &["ConfigDrive", "NoCloud"];

/// OVH's recommended kernel parameters (reference §1.6, §7 item 8):
/// `nomodeset` for KVM displays on some boards, `iommu=pt` against AMD panics.
pub const DEFAULT_CMDLINE: &[&str] = &["nomodeset", "iommu=pt"];

/// Offset of the single partition: 1 MiB in front for the table.
const PARTITION_START: u64 = 1 << 20;

/// Everything resolved for the `ovh-byol` target.
#[derive(Debug, Clone, Serialize)]
pub struct OvhByol {
    pub filesystem: Filesystem,
    /// The target as written in the spec (sizes resolve through it).
    pub target: OvhByolTarget,
    /// Partition size in bytes; `None` is automatic.
    pub size: Option<u64>,
    pub partition_table: PartitionTable,
    pub compress: bool,
    pub bootloader_id: String,
    /// `efiBootloaderPath` as the OVH API wants it.
    pub efi_bootloader_path: String,
    /// Kernel command line for GRUB (target defaults plus the spec's).
    pub cmdline: Vec<String>,
    /// Output file name, e.g. `debian-12-byol-1.0.0.qcow2`.
    pub file_name: String,
    #[serde(skip)]
    family: &'static dyn DistroFamily,
}

fn resolve(inputs: &TargetInputs) -> Result<Option<Arc<dyn Target>>> {
    let spec = inputs.spec;
    let Some(t) = &spec.targets.ovh_byol else {
        return Ok(None);
    };
    let bootloader_id = t
        .bootloader_id
        .clone()
        .unwrap_or_else(|| inputs.family.bootloader_id_for(&spec.base));
    let mut cmdline: Vec<String> = DEFAULT_CMDLINE.iter().map(|s| s.to_string()).collect();
    cmdline.extend(spec.kernel.cmdline.iter().cloned());
    Ok(Some(Arc::new(OvhByol {
        filesystem: t.filesystem,
        target: t.clone(),
        size: t.partition_size(),
        partition_table: t.partition_table,
        compress: t.compress.unwrap_or(true),
        efi_bootloader_path: script::efi_bootloader_path(&bootloader_id),
        bootloader_id,
        cmdline,
        file_name: format!("{}-{}.qcow2", spec.image.name, spec.image.version),
        family: inputs.family,
    })))
}

impl OvhByol {
    /// `make_image_bootable.sh` for this image.
    pub fn script(&self) -> Result<String> {
        self.family
            .make_image_bootable(&script::ScriptParams::new(&self.bootloader_id))
            .context("generating make_image_bootable.sh")
    }

    fn fs_name(&self) -> &'static str {
        match self.filesystem {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        }
    }

    /// The filesystem stage: the filesystem straight into a fresh raw disk
    /// at the partition's offset.
    fn make_filesystem(&self, cx: &StageContext, tree: &Path, scratch: &Path, out: &mut Assembly) -> Result<String> {
        let content = kiln_disk::mkfs::tree_size(tree).context("measuring the root tree")?;
        let fs_size = match self.size {
            Some(s) if s < content => bail!(
                "[targets.ovh-byol] size = {} MiB is smaller than the content ({} MiB); raise it or use \"auto\"",
                s >> 20,
                content.div_ceil(1 << 20)
            ),
            Some(s) => s,
            None => self.target.resolved_size(content),
        };
        // 1 MiB in front for the table, 1 MiB behind for the GPT backup.
        let disk_size = PARTITION_START + fs_size + (1 << 20);
        let summary = format!("{} MiB of content in a {} MiB filesystem", content >> 20, fs_size >> 20);
        let not_patched = match self.patch_previous(cx, tree, disk_size, out) {
            Ok(None) => return Ok(format!("{summary}; the previous disk patched")),
            Ok(Some(why)) => why,
            Err(e) => format!("patching it failed ({e:#})"),
        };
        let raw = scratch.join("disk.raw");
        std::fs::File::create(&raw)?.set_len(disk_size)?;
        let uuid = cx.derived_uuid("root filesystem");
        let fs_opts = kiln_disk::mkfs::FsOptions {
            uuid,
            label: "root".to_owned(),
            hash_seed: Some(cx.derived_uuid("root hash seed")),
            source_date_epoch: cx.source_date_epoch,
            ..Default::default()
        };
        match self.filesystem {
            Filesystem::Ext4 => kiln_disk::mkfs::make_ext4(&raw, PARTITION_START, fs_size, tree, &fs_opts),
            Filesystem::Xfs => kiln_disk::mkfs::make_xfs(&raw, PARTITION_START, fs_size, tree, &fs_opts),
        }
        .context("creating the root filesystem")?;
        out.raw = Some(raw);
        out.filesystems
            .insert(PARTITION_START, (self.fs_name().to_owned(), uuid.to_string()));
        Ok(match cx.previous_disk {
            Some(_) => format!("{summary}; made from scratch: {not_patched}"),
            None => summary,
        })
    }

    /// Patches the previous build's disk, when there is one of the same
    /// size holding an ext4 filesystem, into the new tree. `Ok(Some(why))`
    /// when it cannot. The patched filesystem keeps the previous one's
    /// UUID and hash seed: a build from scratch (`--no-cache`) derives
    /// them anew.
    fn patch_previous(
        &self,
        cx: &StageContext,
        tree: &Path,
        disk_size: u64,
        out: &mut Assembly,
    ) -> Result<Option<String>> {
        let Some(prev) = cx.previous_disk else {
            return Ok(Some("no previous disk".to_owned()));
        };
        let Some(epoch) = cx.source_date_epoch else {
            return Ok(Some("no SOURCE_DATE_EPOCH".to_owned()));
        };
        let Some((fs, uuid)) = prev.filesystems.get(&PARTITION_START) else {
            return Ok(Some("the previous disk has no root filesystem".to_owned()));
        };
        if self.filesystem != Filesystem::Ext4 || fs != "ext4" {
            return Ok(Some("only ext4 is patched".to_owned()));
        }
        let len = std::fs::metadata(&prev.raw)?.len();
        if len != disk_size {
            return Ok(Some(format!(
                "the filesystem's size changed ({} MiB to {} MiB)",
                len >> 20,
                disk_size >> 20
            )));
        }
        match kiln_disk::ext4_patch::patch_ext4(&prev.raw, PARTITION_START, &prev.tree, tree, &prev.candidates, epoch)?
        {
            kiln_disk::ext4_patch::Patch::Applied { .. } => {
                out.raw = Some(prev.raw.clone());
                out.filesystems.insert(PARTITION_START, (fs.clone(), uuid.clone()));
                Ok(None)
            }
            kiln_disk::ext4_patch::Patch::Refused(why) => Ok(Some(why)),
        }
    }

    /// The disk stage: a table with one partition around the filesystem.
    fn write_table(&self, cx: &StageContext, out: &mut Assembly) -> Result<String> {
        let raw = out.raw.clone().context("the filesystem stage made no disk")?;
        let disk_size = std::fs::metadata(&raw)?.len();
        let fs_size = disk_size - PARTITION_START - (1 << 20);
        let table = match self.partition_table {
            PartitionTable::Gpt => TableKind::Gpt,
            PartitionTable::Mbr => TableKind::Mbr,
        };
        let layout = partition::layout(
            disk_size,
            table,
            &[PartitionSpec {
                kind: PartKind::LinuxFs,
                size: fs_size,
                name: "root".to_owned(),
                guid: cx.derived_uuid("root partition"),
            }],
        )?;
        if layout.partitions[0].start != PARTITION_START {
            bail!(
                "internal: partition placed at {} but the filesystem is at {PARTITION_START}",
                layout.partitions[0].start
            );
        }
        partition::write_partition_table(&raw, &layout, cx.derived_uuid("disk"))?;
        out.layout = Some(layout);
        Ok(format!(
            "{}, 1 partition",
            if table == TableKind::Gpt { "GPT" } else { "MBR" }
        ))
    }
}

impl Target for OvhByol {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn packages(&self) -> Vec<String> {
        packages_for(self.family, ROLES)
    }

    fn kept_packages(&self) -> Option<(&'static str, Vec<String>)> {
        Some((
            DEBS_DIR,
            packages_for(self.family, &[Role::GrubBiosInstaller, Role::GrubEfiInstaller]),
        ))
    }

    fn datasources(&self) -> &'static [&'static str] {
        DEFAULT_DATASOURCES
    }

    fn tools(&self) -> Vec<&'static str> {
        match self.filesystem {
            Filesystem::Ext4 => vec!["mke2fs", "debugfs"],
            Filesystem::Xfs => vec!["mkfs.xfs", "mount"],
        }
    }

    fn stages(&self, spec: &Spec, tools: &BTreeMap<String, String>) -> TargetStages {
        let tool = |name: &str| tools.get(name).cloned().unwrap_or_default();
        TargetStages {
            finalise: TargetStage {
                name: "finalise",
                actions: vec![
                    format!("write {} (EFI path {})", script::SCRIPT_PATH, self.efi_bootloader_path),
                    format!("GRUB defaults: {}", self.cmdline.join(" ")),
                    "cloud-init: disable growpart, resizefs, grub-dpkg".to_owned(),
                    "remove machine-id, SSH host keys, network config, cloud-init state, apt lists, logs".to_owned(),
                    format!("embed the build manifest at {}", crate::manifest::EMBEDDED_PATH),
                ],
                inputs: vec![
                    StageInput::json(
                        "bootloader and kernel command line",
                        &(&self.bootloader_id, &self.cmdline),
                    ),
                    StageInput::json("[kernel]", &spec.kernel),
                    // A script the family cannot render fails the finalise stage.
                    StageInput::text("script template", &self.script().unwrap_or_default()),
                ],
            },
            assemble: vec![
                TargetStage {
                    name: "filesystem",
                    actions: vec![format!(
                        "{} filesystem of {}",
                        self.fs_name(),
                        match self.size {
                            Some(s) => format!("{} MiB", s >> 20),
                            None => format!(
                                "automatic size (content + {})",
                                self.target.headroom.as_ref().map_or("25% + 256 MiB", Written::text)
                            ),
                        }
                    )],
                    inputs: vec![
                        StageInput::json(
                            "filesystem",
                            &(self.filesystem, &self.target.size, &self.target.headroom),
                        ),
                        StageInput::text(
                            "mkfs",
                            &tool(if self.filesystem == Filesystem::Ext4 {
                                "mke2fs"
                            } else {
                                "mkfs.xfs"
                            }),
                        ),
                    ],
                },
                TargetStage {
                    name: "disk",
                    actions: vec![format!(
                        "{} partition table with one partition at 1 MiB",
                        match self.partition_table {
                            PartitionTable::Gpt => "GPT",
                            PartitionTable::Mbr => "MBR",
                        }
                    )],
                    inputs: vec![StageInput::json("partition table", &self.partition_table)],
                },
            ],
            output: TargetStage {
                name: "convert",
                actions: vec![format!(
                    "qemu-img convert to {}qcow2 → {}",
                    if self.compress { "compressed " } else { "" },
                    self.file_name
                )],
                inputs: vec![
                    StageInput::json("output", &(self.compress, &self.file_name)),
                    StageInput::text("qemu-img", &tool("qemu-img")),
                ],
            },
        }
    }

    fn finalise(&self, cx: &StageContext, tree: &Path) -> Result<()> {
        write_mode(
            &tree.join(script::SCRIPT_PATH.trim_start_matches('/')),
            &self.script()?,
            0o755,
        )
        .with_context(|| format!("installing {}", script::SCRIPT_PATH))?;
        cx.chroot(tree, "ovh-byol finalisation", &finalise_script(self))
    }

    fn assemble(
        &self,
        cx: &StageContext,
        stage: &str,
        tree: &Path,
        scratch: &Path,
        out: &mut Assembly,
    ) -> Result<String> {
        match stage {
            "filesystem" => self.make_filesystem(cx, tree, scratch, out),
            "disk" => self.write_table(cx, out),
            other => bail!("internal: ovh-byol has no stage {other}"),
        }
    }

    fn artifact(&self) -> ArtifactSpec {
        ArtifactSpec {
            file_name: self.file_name.clone(),
            format: ImageFormat::Qcow2,
            compress: self.compress,
        }
    }

    fn efi_bootloader_path(&self) -> Option<String> {
        Some(self.efi_bootloader_path.clone())
    }

    fn manifest_extras(&self, artifact: &crate::manifest::Artifact) -> Vec<(&'static str, serde_json::Value)> {
        vec![(
            "ovhReinstall",
            crate::manifest::ovh_reinstall_template(&self.efi_bootloader_path, &artifact.sha512, &artifact.path),
        )]
    }

    fn patches_previous_disk(&self) -> bool {
        self.filesystem == Filesystem::Ext4
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// The chroot script that prepares the tree for OVH's installer.
fn finalise_script(plan: &OvhByol) -> String {
    let cmdline = plan.cmdline.join(" ");
    format!(
        r#"#!/bin/sh
# Generated by kiln: prepares the tree for OVHcloud's BYOLinux installer.
set -eu

echo 'kiln: GRUB defaults'
# A cloud drop-in forcing root=PARTUUID= makes bare metal unbootable (OVH PUBM-37334).
rm -f /etc/default/grub.d/10_cloud.cfg /etc/default/grub.d/50-cloudimg-settings.cfg
if [ ! -e /etc/default/grub ]; then
    cp /usr/share/grub/default/grub /etc/default/grub
fi
sed -i -e 's|^GRUB_CMDLINE_LINUX=.*|GRUB_CMDLINE_LINUX="{cmdline}"|' \
       -e 's|^GRUB_CMDLINE_LINUX_DEFAULT=.*|GRUB_CMDLINE_LINUX_DEFAULT=""|' /etc/default/grub
grep -q '^GRUB_GFXPAYLOAD_LINUX=' /etc/default/grub || echo 'GRUB_GFXPAYLOAD_LINUX=text' >> /etc/default/grub
# Never touch the server's NVRAM boot order: OVH boots through iPXE.
echo 'grub-efi-amd64 grub2/update_nvram boolean false' | debconf-set-selections

echo 'kiln: cloud-init modules'
# growpart and resizefs fight custom storage layouts; grub-dpkg records a
# wrong GRUB boot disk (OVH's own images disable all three).
for module in growpart resizefs grub-dpkg; do
    if ! grep -Eq "^ *- *$module\$" /etc/cloud/cloud.cfg; then
        echo "kiln: cloud-init module $module not found in /etc/cloud/cloud.cfg" >&2
        exit 1
    fi
    sed -Ei "/^ *- *$module\$/d" /etc/cloud/cloud.cfg
done
cat > /etc/cloud/cloud.cfg.d/91-kiln-ovh-byol.cfg <<'KILN_CFG'
# Written by kiln for OVHcloud BYOLinux.
growpart:
  mode: "off"
resize_rootfs: false
grub_dpkg:
  enabled: false
KILN_CFG
rm -f /etc/ssh/sshd_config.d/50-cloud-init.conf

echo 'kiln: network configuration'
rm -f /etc/systemd/network/*.network /etc/netplan/*.yaml /etc/network/interfaces.d/*
printf '%s\n' '# Written by kiln: cloud-init renders the real configuration at first boot.' \
    'source /etc/network/interfaces.d/*' '' 'auto lo' 'iface lo inet loopback' > /etc/network/interfaces
"#
    )
}
