//! Target `iso`: a hybrid live ISO. The same file boots from a CD and,
//! written with `dd`, from a USB stick: for BIOS through El Torito (GRUB's
//! `i386-pc-eltorito` image) and a hybrid MBR (GRUB's boot_hybrid.img), for
//! UEFI through an El Torito EFI image (a FAT image written by kiln holding
//! GRUB at the removable path) that is also the stick's EFI partition. The
//! ISO 9660 volume is partition 1 of the stick, so that a config drive is
//! found there too. The root tree is a squashfs compressed on every core; Debian's live-boot
//! mounts it from `/live` under a writable overlay in RAM. GRUB finds the
//! medium by a marker file, whatever the firmware calls the drive.
//!
//! With `[targets.iso.config_drive]` the volume label is `config-2` and
//! `openstack/latest/` holds `meta_data.json`, `network_data.json` and
//! `user_data`: the ISO is its own OpenStack config drive, which
//! cloud-init's ConfigDrive datasource reads to configure the live node.
//!
//! The ISO 9660 file system and its boot records are written by `xorriso`
//! (with the layout of Ubuntu's GRUB ISOs): kiln's own ISO writer leaves out El
//! Torito and hybrid tables, which xorriso has done right for years.
//! Non-goals: Secure Boot (shim), persistence, erofs roots (bookworm's
//! live-boot mounts squashfs only).

pub mod check;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kiln_disk::fat::{FatEntry, FatOptions};
use kiln_disk::grub::{self, Platform};
use kiln_spec::{Firmware, NetworkData, Spec, SquashfsCompression};
use serde::Serialize;

use super::disk::{kernels, os_name, serial_terminal, GRUB_TIMEOUT};
use super::{
    ArtifactSpec, Assembly, ImageFormat, StageContext, Target, TargetInputs, TargetKind, TargetStage, TargetStages,
};
use crate::distro::{self, packages_for, Role};
use crate::plan::StageInput;
use check::{INITRD, KERNEL, ROOT_IMAGE};

/// `path` of the ISO (absolute) inside the staging directory `dir`.
fn staged(dir: &Path, path: &str) -> std::path::PathBuf {
    dir.join(path.trim_start_matches('/'))
}

/// The `iso` kind in the registry.
pub const KIND: TargetKind = TargetKind {
    name: "iso",
    resolve,
    check: Some(check::check),
};

/// What the live system needs besides the kernel: live-boot in the
/// initramfs, GRUB's modules for both firmware (the images are made from
/// them), cloud-init and the network stack it renders for, SSH, sudo.
const ROLES: &[Role] = &[
    Role::Initramfs,
    Role::LiveBoot,
    Role::GrubCommon,
    Role::GrubBiosModules,
    Role::GrubEfiModules,
    Role::CloudInit,
    Role::SshServer,
    Role::Network,
    Role::Sudo,
];

/// ConfigDrive first: the ISO carries its own; NoCloud for `kiln boot`'s
/// seeds.
const DATASOURCES: &[&str] = &["ConfigDrive", "NoCloud"];

/// Where live-boot looks for the root image, and the files in it.
const LIVE_DIR: &str = "live";
/// GRUB's files on the ISO.
const ELTORITO_IMAGE: &str = "boot/grub/i386-pc/eltorito.img";
/// The GPT type of partition 1, the ISO 9660 volume: Microsoft basic data,
/// as for any data partition firmware should leave alone.
const ISO_PARTITION_TYPE: &str = "a2a0d0ebe5b9334487c068b6b72699c7";
const BOOT_CATALOG: &str = "boot/grub/boot.cat";
/// The config drive's directory.
const CONFIG_DRIVE_DIR: &str = "openstack/latest";

fn resolve(inputs: &TargetInputs) -> Result<Option<Arc<dyn Target>>> {
    Ok(IsoPlan::resolve(inputs)?.map(|plan| Arc::new(plan) as Arc<dyn Target>))
}

impl IsoPlan {
    /// Resolves the spec's `[targets.iso]` (already validated by `load`),
    /// reading the config drive's files.
    pub fn resolve(inputs: &TargetInputs) -> Result<Option<IsoPlan>> {
        let spec = inputs.spec;
        let Some(t) = &spec.targets.iso else {
            return Ok(None);
        };
        let console = t.console().to_owned();
        // As for the disk target: the serial console last, so that it becomes
        // /dev/console. `nonetworking`: live-boot would otherwise replace
        // /etc/network/interfaces with DHCP on every NIC, over what
        // cloud-init renders from the config drive.
        let mut cmdline = vec![
            "boot=live".to_owned(),
            "nonetworking".to_owned(),
            "console=tty0".to_owned(),
            format!("console={console}"),
        ];
        cmdline.extend(spec.kernel.cmdline.iter().cloned());
        let config_drive = match &t.config_drive {
            Some(drive) => Some(DriveContent::resolve(spec, drive, inputs.dir)?),
            None => None,
        };
        Ok(Some(IsoPlan {
            firmware: t.firmware(),
            compression: t.compression,
            console,
            cmdline,
            label: t.label().to_owned(),
            file_name: format!("{}-{}-live.iso", spec.image.name, spec.image.version),
            source_date_epoch: inputs.source_date_epoch,
            config_drive,
            regenerate_initramfs: customisation_may_change_initramfs(spec),
            distro: spec.base.distro(),
        }))
    }
}

/// Where the initramfs is made from, besides the packages: what a
/// customisation would have to write for the bootstrap's initramfs to be
/// out of date.
const INITRAMFS_INPUTS: &[&str] = &[
    "/etc/initramfs-tools",
    "/usr/share/initramfs-tools",
    "/etc/modprobe.d",
    "/lib/modprobe.d",
    "/usr/lib/modprobe.d",
    "/lib/modules",
    "/usr/lib/modules",
    "/etc/crypttab",
    "/etc/live",
    "/usr/lib/live",
];

/// Whether the spec's customisation may leave the initramfs the bootstrap
/// made (with live-boot in it) out of date: a `[[run]]` step or a package
/// removal may change anything, files and directories only what they name.
/// When it cannot, the finalisation keeps that initramfs and saves the
/// regeneration, most of a rebuild after a `[[files]]` change.
fn customisation_may_change_initramfs(spec: &Spec) -> bool {
    let touches = |path: &str| {
        INITRAMFS_INPUTS
            .iter()
            .any(|i| path == *i || path.strip_prefix(i).is_some_and(|rest| rest.starts_with('/')))
    };
    !spec.run.is_empty()
        || !spec.packages.remove.is_empty()
        || spec.files.iter().any(|f| touches(&f.dest))
        || spec.directories.iter().any(|d| touches(&d.path))
}

/// Everything resolved for the `iso` target.
#[derive(Debug, Clone, Serialize)]
pub struct IsoPlan {
    /// Firmware to boot with, sorted, without duplicates.
    pub firmware: Vec<Firmware>,
    pub compression: SquashfsCompression,
    /// `console=` value of the serial console.
    pub console: String,
    /// The kernel command line: live-boot's, the consoles, the spec's.
    pub cmdline: Vec<String>,
    /// The ISO 9660 volume id.
    pub label: String,
    /// Output file name, e.g. `debian-12-1.0.0-live.iso`.
    pub file_name: String,
    pub source_date_epoch: Option<u64>,
    /// The config drive's contents, read from the spec and its files.
    pub config_drive: Option<DriveContent>,
    /// Regenerate the initramfs even when it has live-boot already
    /// ([`customisation_may_change_initramfs`]).
    pub regenerate_initramfs: bool,
    #[serde(skip)]
    distro: kiln_spec::Distro,
}

/// A config drive's contents, resolved at plan time: what the ISO will
/// carry is an input of its stage.
#[derive(Debug, Clone, Serialize)]
pub struct DriveContent {
    pub hostname: String,
    /// `None`: derived from the spec when the ISO is assembled.
    pub instance_id: Option<String>,
    pub ssh_keys: Vec<String>,
    /// The user-data file's bytes (user data need not be text).
    #[serde(skip)]
    pub user_data: Option<Vec<u8>>,
    /// The user data's SHA-256, for plans and stage hashes.
    pub user_data_sha256: Option<String>,
    pub network_data: Option<serde_json::Value>,
}

impl DriveContent {
    fn resolve(spec: &Spec, drive: &kiln_spec::ConfigDrive, dir: &Path) -> Result<DriveContent> {
        let hostname = drive
            .hostname
            .clone()
            .or_else(|| spec.hostname.clone())
            .unwrap_or_else(|| hostname_from(&spec.image.name));
        let user_data = match &drive.user_data {
            Some(rel) => {
                let path = dir.join(rel);
                Some(std::fs::read(&path).with_context(|| format!("reading user_data {}", path.display()))?)
            }
            None => None,
        };
        let network_data = match &drive.network_data {
            None => None,
            Some(NetworkData::Inline(doc)) => Some(serde_json::Value::Object(doc.clone())),
            Some(NetworkData::File(rel)) => {
                let path = dir.join(rel);
                let bytes = std::fs::read(&path).with_context(|| format!("reading network_data {}", path.display()))?;
                Some(serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?)
            }
        };
        Ok(DriveContent {
            hostname,
            instance_id: drive.instance_id.clone(),
            ssh_keys: drive.ssh_keys.clone(),
            user_data_sha256: user_data
                .as_deref()
                .map(|b| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b))),
            user_data,
            network_data,
        })
    }

    /// `openstack/latest/meta_data.json`: what cloud-init's ConfigDrive
    /// datasource reads from it (the instance id as `uuid`, the hostname,
    /// the SSH keys).
    fn meta_data(&self, instance_id: &str) -> serde_json::Value {
        let keys: serde_json::Map<String, serde_json::Value> = self
            .ssh_keys
            .iter()
            .enumerate()
            .map(|(i, k)| (format!("key-{i}"), serde_json::Value::String(k.clone())))
            .collect();
        serde_json::json!({
            "uuid": instance_id,
            "hostname": self.hostname,
            "name": self.hostname,
            "launch_index": 0,
            "public_keys": keys,
        })
    }

    /// The files under `openstack/latest/`, by name.
    fn files(&self, instance_id: &str) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let mut files = vec![("meta_data.json", pretty(&self.meta_data(instance_id))?)];
        if let Some(doc) = &self.network_data {
            files.push(("network_data.json", pretty(doc)?));
        }
        if let Some(user_data) = &self.user_data {
            files.push(("user_data", user_data.clone()));
        }
        Ok(files)
    }
}

fn pretty(v: &serde_json::Value) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(v)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// A hostname from an image name: letters, digits and `-`.
fn hostname_from(name: &str) -> String {
    let h: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let h = h.trim_matches('-');
    if h.is_empty() {
        "live".to_owned()
    } else {
        h.chars().take(63).collect()
    }
}

impl IsoPlan {
    fn has(&self, firmware: Firmware) -> bool {
        self.firmware.contains(&firmware)
    }

    fn firmware_names(&self) -> String {
        Firmware::names(&self.firmware)
    }

    /// The marker file GRUB searches for to find its medium.
    fn marker(cx: &StageContext) -> String {
        format!("/.disk/kiln-{}", cx.derived_uuid("iso medium"))
    }

    /// The chroot script that prepares the finalised tree for a live boot.
    pub fn finalise_script(&self) -> String {
        format!(
            r#"#!/bin/sh
# Generated by kiln: prepares the tree for the iso target (a live system
# on a squashfs, booted by live-boot; serial console {console}).
set -eu

echo 'kiln: live system'
if [ ! -d /usr/share/initramfs-tools/scripts/live ] && [ ! -e /usr/share/initramfs-tools/scripts/live ]; then
    echo 'kiln: live-boot is not installed; the initramfs could not mount the squashfs' >&2
    exit 1
fi
printf '%s\n' '# Written by kiln: live-boot mounts the root (an overlay over the squashfs).' > /etc/fstab

if [ -d /etc/cloud ]; then
    mkdir -p /etc/cloud/cloud.cfg.d
    cat > /etc/cloud/cloud.cfg.d/91-kiln-iso.cfg <<'KILN_CFG'
# Written by kiln for the iso target: the root is an overlay in RAM over
# the squashfs, with no partition to grow and no GRUB package to set up.
growpart:
  mode: "off"
resize_rootfs: false
grub_dpkg:
  enabled: false
KILN_CFG
fi

echo 'kiln: network configuration'
rm -f /etc/systemd/network/*.network /etc/netplan/*.yaml /etc/network/interfaces.d/*
printf '%s\n' '# Written by kiln: cloud-init renders the real configuration at boot.' \
    'source /etc/network/interfaces.d/*' '' 'auto lo' 'iface lo inet loopback' > /etc/network/interfaces

# The bootstrap made the initramfs with live-boot in it; it is made again
# when the customisation may have changed its inputs, or lacks live-boot.
regenerate={regenerate}
for initrd in /boot/initrd.img-*; do
    if ! lsinitramfs "$initrd" | grep -qx 'scripts/live'; then
        regenerate=yes
    fi
done
if [ "$regenerate" = yes ]; then
    echo 'kiln: initramfs with live-boot'
    update-initramfs -u -k all
else
    echo 'kiln: the initramfs has live-boot, and the customisation left its inputs alone: kept'
fi
"#,
            console = self.console,
            regenerate = if self.regenerate_initramfs { "yes" } else { "no" },
        )
    }

    /// `/boot/grub/grub.cfg` on the ISO: one live entry, on the serial
    /// console as well as the screen.
    fn grub_cfg(&self, os: &str) -> String {
        let mut s = String::from("# Written by kiln for the live ISO.\n");
        if let Some(serial) = serial_terminal(&self.console) {
            s.push_str(&format!(
                "serial --unit={} --speed={}\nterminal_input serial console\nterminal_output serial console\n",
                serial.unit, serial.speed
            ));
        }
        s.push_str(&format!(
            "set default=0\nset timeout={GRUB_TIMEOUT}\n\nmenuentry '{title}' {{\n    linux {KERNEL} {cmdline}\n    initrd {INITRD}\n}}\n",
            title = format!("{os} (live)").replace('\'', ""),
            cmdline = self.cmdline.join(" "),
        ));
        s
    }

    /// Makes the squashfs root image of `tree` at `dest` on every core.
    fn squashfs(&self, tree: &Path, dest: &Path, log: Option<&Path>) -> Result<()> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut cmd = kiln_exec::Cmd::new("mksquashfs")
            .arg(tree)
            .arg(dest)
            .args(["-noappend", "-no-progress"])
            .args(self.compression.mksquashfs_args())
            .args(["-processors", &cores.to_string()]);
        if let Some(epoch) = self.source_date_epoch {
            // Clamps file times and sets the creation time: the same tree
            // gives the same bytes.
            cmd = cmd.env("SOURCE_DATE_EPOCH", epoch.to_string());
        }
        if let Some(log) = log {
            cmd = cmd.log_to(log);
        }
        cmd.run().context("making the squashfs root image")?;
        Ok(())
    }

    /// Lays out the ISO's files in `staging` and writes the hybrid ISO.
    /// The EFI boot image is written to `efi_dir`, outside the ISO's files:
    /// xorriso appends it as a partition of its own.
    fn write_iso(&self, cx: &StageContext, tree: &Path, staging: &Path, efi_dir: &Path, dest: &Path) -> Result<()> {
        let live = staging.join(LIVE_DIR);
        std::fs::create_dir_all(&live)?;
        let kernel = kernels(tree)?.into_iter().next().context("internal: no kernel")?;
        let boot = tree.join("boot");
        std::fs::copy(boot.join(format!("vmlinuz-{kernel}")), staged(staging, KERNEL)).context("copying the kernel")?;
        std::fs::copy(boot.join(format!("initrd.img-{kernel}")), staged(staging, INITRD))
            .context("copying the initramfs")?;

        let marker = Self::marker(cx);
        let marker_path = staging.join(marker.trim_start_matches('/'));
        std::fs::create_dir_all(marker_path.parent().context("internal: marker")?)?;
        std::fs::write(&marker_path, "kiln live ISO: GRUB finds its medium by this file\n")?;

        let grub_dir = staging.join("boot/grub");
        std::fs::create_dir_all(&grub_dir)?;
        std::fs::write(grub_dir.join("grub.cfg"), self.grub_cfg(&os_name(tree)))?;
        if self.has(Firmware::Bios) {
            let modules = Platform::I386Pc.modules_dir(tree);
            let image = grub::make_iso_image(Platform::I386Pc, &modules, &marker).context("building GRUB for BIOS")?;
            std::fs::create_dir_all(staging.join(ELTORITO_IMAGE).parent().context("internal")?)?;
            std::fs::write(staging.join(ELTORITO_IMAGE), image)?;
        }
        let efi_image = if self.has(Firmware::Uefi) {
            let modules = Platform::X86_64Efi.modules_dir(tree);
            let image =
                grub::make_iso_image(Platform::X86_64Efi, &modules, &marker).context("building GRUB for UEFI")?;
            let volume_id = u32::from_le_bytes(cx.derived_uuid("iso efi image").as_bytes()[..4].try_into()?);
            let opts = FatOptions::new("EFIBOOT", volume_id, self.source_date_epoch.unwrap_or(0));
            let path = efi_dir.join("efi.img");
            kiln_disk::fat::write_fat_image(&path, &opts, &[FatEntry::file(grub::EFI_REMOVABLE_PATH, image)])
                .context("writing the EFI boot image")?;
            Some(path)
        } else {
            None
        };
        let efi_image = efi_image.as_deref();

        if let Some(drive) = &self.config_drive {
            let dir = staging.join(CONFIG_DRIVE_DIR);
            std::fs::create_dir_all(&dir)?;
            let instance_id = drive
                .instance_id
                .clone()
                .unwrap_or_else(|| cx.derived_uuid("config drive instance").to_string());
            for (name, bytes) in drive.files(&instance_id)? {
                std::fs::write(dir.join(name), bytes)?;
            }
        }

        let mut cmd = kiln_exec::Cmd::new("xorriso")
            .args([
                "-as",
                "mkisofs",
                "-quiet",
                "-iso-level",
                "3",
                "-r",
                "-J",
                "-joliet-long",
            ])
            .args(["-V", &self.label, "-o"])
            .arg(dest);
        // Partition 1 starts 32 KiB in, with a copy of the superblock: on a
        // USB stick it is the ISO 9660 volume itself, which blkid (and so
        // cloud-init's ConfigDrive) finds where it skips a whole disk that
        // has partitions. As Ubuntu's GRUB ISOs are laid out.
        cmd = cmd
            .args(["-partition_offset", "16", "--mbr-force-bootable"])
            .args(["-iso_mbr_part_type", ISO_PARTITION_TYPE]);
        if self.has(Firmware::Bios) {
            let hybrid_mbr = Platform::I386Pc.modules_dir(tree).join("boot_hybrid.img");
            if !hybrid_mbr.is_file() {
                bail!("{} is missing; the image needs grub-pc-bin", hybrid_mbr.display());
            }
            cmd = cmd.arg("--grub2-mbr").arg(hybrid_mbr);
        }
        if let Some(efi) = efi_image {
            // Appended after the ISO 9660 volume as partition 2 (the ESP of a
            // USB stick), and named by the El Torito UEFI entry (for CDs).
            cmd = cmd
                .args(["-append_partition", "2", "0xef"])
                .arg(efi)
                .arg("-appended_part_as_gpt");
        }
        cmd = cmd.args(["-c", BOOT_CATALOG]);
        if self.has(Firmware::Bios) {
            cmd = cmd.args(["-b", ELTORITO_IMAGE]).args([
                "-no-emul-boot",
                "-boot-load-size",
                "4",
                "-boot-info-table",
                "--grub2-boot-info",
            ]);
        }
        if efi_image.is_some() {
            if self.has(Firmware::Bios) {
                cmd = cmd.arg("-eltorito-alt-boot");
            }
            cmd = cmd.args(["-e", "--interval:appended_partition_2:all::", "-no-emul-boot"]);
        }
        cmd = cmd.arg(staging);
        if let Some(epoch) = self.source_date_epoch {
            // xorriso takes the volume's dates from SOURCE_DATE_EPOCH, and
            // each file's and directory's from the staged files.
            crate::layers::clamp_times(staging, epoch).context("setting the ISO's file times")?;
            cmd = cmd.env("SOURCE_DATE_EPOCH", epoch.to_string());
        }
        cmd.run().context("writing the ISO with xorriso")?;
        Ok(())
    }
}

impl Target for IsoPlan {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn packages(&self) -> Vec<String> {
        packages_for(distro::family(self.distro), ROLES)
    }

    fn datasources(&self) -> &'static [&'static str] {
        DATASOURCES
    }

    fn tools(&self) -> Vec<&'static str> {
        vec!["mksquashfs", "xorriso", "grub-mkimage"]
    }

    fn stages(&self, _spec: &Spec, tools: &BTreeMap<String, String>) -> TargetStages {
        let tool = |name: &str| tools.get(name).cloned().unwrap_or_default();
        TargetStages {
            finalise: TargetStage {
                name: "finalise",
                actions: vec![
                    format!(
                        "live-boot in the initramfs ({}); cloud-init without growpart; network left to cloud-init",
                        if self.regenerate_initramfs {
                            "made again: the customisation may change its inputs"
                        } else {
                            "the bootstrap's, unless it lacks live-boot"
                        }
                    ),
                    "remove machine-id, SSH host keys, cloud-init state, logs".to_owned(),
                ],
                inputs: vec![StageInput::text("script", &self.finalise_script())],
            },
            assemble: vec![
                TargetStage {
                    name: "squashfs",
                    actions: vec![format!(
                        "mksquashfs of the tree ({}, on every core)",
                        self.compression.name()
                    )],
                    inputs: vec![
                        StageInput::json("compression", &self.compression.mksquashfs_args()),
                        StageInput::text("mksquashfs", &tool("mksquashfs")),
                    ],
                },
                TargetStage {
                    name: "iso",
                    actions: vec![format!(
                        "hybrid ISO `{}`: GRUB for {} (El Torito, hybrid MBR and ESP for USB){}",
                        self.label,
                        self.firmware_names(),
                        if self.config_drive.is_some() {
                            ", OpenStack config drive"
                        } else {
                            ""
                        }
                    )],
                    inputs: vec![
                        StageInput::json(
                            "iso",
                            &(
                                &self.firmware,
                                &self.label,
                                &self.cmdline,
                                &self.console,
                                &self.config_drive,
                            ),
                        ),
                        StageInput::text("xorriso", &tool("xorriso")),
                        StageInput::text("grub-mkimage", &tool("grub-mkimage")),
                    ],
                },
            ],
            output: TargetStage {
                name: "write",
                actions: vec![format!("write {}", self.file_name)],
                inputs: vec![StageInput::json("output", &self.file_name)],
            },
        }
    }

    fn finalise(&self, cx: &StageContext, tree: &Path) -> Result<()> {
        cx.chroot(tree, "iso finalisation", &self.finalise_script())
    }

    fn assemble(
        &self,
        cx: &StageContext,
        stage: &str,
        tree: &Path,
        scratch: &Path,
        out: &mut Assembly,
    ) -> Result<String> {
        let staging = scratch.join("iso-root");
        let root_image = staged(&staging, ROOT_IMAGE);
        match stage {
            "squashfs" => {
                std::fs::create_dir_all(staging.join(LIVE_DIR))?;
                self.squashfs(tree, &root_image, None)?;
                let size = std::fs::metadata(&root_image)?.len();
                Ok(format!("{} MiB squashfs ({})", size >> 20, self.compression.name()))
            }
            "iso" => {
                if !root_image.is_file() {
                    bail!("internal: the iso stage ran before the squashfs stage");
                }
                let iso = scratch.join("live.iso");
                self.write_iso(cx, tree, &staging, scratch, &iso)?;
                std::fs::remove_dir_all(&staging).ok();
                let size = std::fs::metadata(&iso)?.len();
                out.raw = Some(iso);
                Ok(format!(
                    "{} MiB ISO `{}`, GRUB for {}",
                    size >> 20,
                    self.label,
                    self.firmware_names()
                ))
            }
            _ => bail!("internal: the iso target has no stage {stage}"),
        }
    }

    fn artifact(&self) -> ArtifactSpec {
        ArtifactSpec {
            file_name: self.file_name.clone(),
            format: ImageFormat::Iso,
            compress: false,
        }
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(target: &str) -> IsoPlan {
        let source = format!(
            "[image]\nname = \"airship\"\nversion = \"1.0\"\n[base]\ndistro = \"debian\"\nrelease = \"bookworm\"\n[kernel]\ncmdline = [\"hugepages=64\"]\n{target}"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("user-data"), "#cloud-config\n").unwrap();
        let loaded = kiln_spec::parse_str(&source, Path::new("spec.toml"), dir.path()).unwrap();
        let inputs = TargetInputs {
            spec: &loaded.spec,
            family: distro::family(loaded.spec.base.distro()),
            source_date_epoch: Some(1),
            dir: dir.path(),
        };
        IsoPlan::resolve(&inputs).unwrap().unwrap()
    }

    #[test]
    fn defaults_and_the_kernel_command_line() {
        let p = plan("[targets.iso]\n");
        assert_eq!(p.firmware, [Firmware::Bios, Firmware::Uefi]);
        assert_eq!(p.label, "KILN-LIVE");
        assert_eq!(p.file_name, "airship-1.0-live.iso");
        assert_eq!(
            p.cmdline,
            [
                "boot=live",
                "nonetworking",
                "console=tty0",
                "console=ttyS0,115200n8",
                "hugepages=64"
            ]
        );
        let cfg = p.grub_cfg("Debian GNU/Linux 12 (bookworm)");
        assert!(cfg.contains("serial --unit=0 --speed=115200\n"), "{cfg}");
        assert!(
            cfg.contains(
                "    linux /live/vmlinuz boot=live nonetworking console=tty0 console=ttyS0,115200n8 hugepages=64\n"
            ),
            "{cfg}"
        );
        assert!(cfg.contains("    initrd /live/initrd.img\n"), "{cfg}");
        assert!(
            cfg.contains("menuentry 'Debian GNU/Linux 12 (bookworm) (live)'"),
            "{cfg}"
        );
    }

    #[test]
    fn a_config_drive_labels_the_iso_config_2() {
        let p = plan("[targets.iso.config_drive]\nhostname = \"node-0\"\nuser_data = \"user-data\"\n");
        assert_eq!(p.label, "config-2");
        let drive = p.config_drive.unwrap();
        assert_eq!(drive.hostname, "node-0");
        assert_eq!(drive.user_data.as_deref(), Some(&b"#cloud-config\n"[..]));
    }

    #[test]
    fn config_drive_files() {
        let drive = DriveContent {
            hostname: "ephemeral-0".into(),
            instance_id: None,
            ssh_keys: vec!["ssh-ed25519 AAAA k".into()],
            user_data: Some(b"#cloud-config\n".to_vec()),
            user_data_sha256: None,
            network_data: Some(serde_json::json!({"links": [], "networks": []})),
        };
        let files = drive.files("0b7c1a2e-0000-4000-8000-000000000000").unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["meta_data.json", "network_data.json", "user_data"]);
        let meta: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
        assert_eq!(meta["uuid"], "0b7c1a2e-0000-4000-8000-000000000000");
        assert_eq!(meta["hostname"], "ephemeral-0");
        assert_eq!(meta["public_keys"]["key-0"], "ssh-ed25519 AAAA k");
        assert_eq!(files[2].1, b"#cloud-config\n");
    }

    #[test]
    fn the_initramfs_is_made_again_only_when_the_customisation_may_change_it() {
        assert!(!plan("[targets.iso]\n").regenerate_initramfs);
        let with = |extra: &str| plan(&format!("{extra}\n[targets.iso]\n")).regenerate_initramfs;
        assert!(with("[[run]]\nscript = \"true\""));
        assert!(with("[packages]\nremove = [\"nano\"]"));
        assert!(with("[[directories]]\npath = \"/etc/initramfs-tools/conf.d\""));
        assert!(!with("[[directories]]\npath = \"/etc/initramfs-tools-not\""));
        assert!(!with("[[directories]]\npath = \"/srv/data\""));
        let script = plan("[targets.iso]\n").finalise_script();
        assert!(script.contains("regenerate=no\n"), "{script}");
        assert!(script.contains("grep -qx 'scripts/live'"), "{script}");
    }

    #[test]
    fn hostnames_from_image_names() {
        assert_eq!(hostname_from("Debian_12.live"), "debian-12-live");
        assert_eq!(hostname_from("__"), "live");
    }
}
