//! Target `usb-installer`: one raw image to write to a USB stick with `dd`,
//! booting in BIOS and UEFI mode, that installs another target's artifact
//! of the same spec (`payload`, a bootable disk) on a machine's disk.
//!
//! The stick (GPT, [`stick_layout`]):
//!
//! 1. GRUB's BIOS boot partition;
//! 2. the ESP (FAT, written by kiln) with GRUB at the removable path;
//! 3. `KILN-INST`, the installer system's ext4 root: a minimal bootstrap of
//!    the spec's family (kernel, initramfs, GRUB's modules, partition and
//!    ext4 tools, zstd, growpart, FAT tools) with [`INSTALLER`] as
//!    `init=` and GRUB's configuration (5 s menu, serial and VGA console);
//! 4. `KILN-PAYLOAD` (ext4): `payload.raw.zst`, the payload's raw disk
//!    compressed with zstd, and `payload.json` (its size, the sha512 of
//!    the raw bytes, its name and version);
//! 5. `KILN-DATA` (FAT), where the installer writes its log and users put
//!    their own files.
//!
//! The installer system depends only on the family, release, mirror and
//! sources, the installer script and `after`: it is built once
//! ([`installer_request`]) and cached under its own key, so a change of the
//! spec's tree or of the payload reuses it. The spec's own tree is not on
//! the stick: the target's finalisation changes nothing.
//!
//! [`check::check`] is `kiln check --target usb-installer`.
//! Non-goals: Secure Boot, sticks that carry several payloads, installing
//! over the network.

pub mod check;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kiln_disk::fat::{FatEntry, FatOptions};
use kiln_disk::grub::{self, GrubRoot, Platform};
use kiln_disk::partition::{self, Layout, PartKind, PartitionSpec, TableKind};
use kiln_exec::Cmd;
use kiln_spec::{AfterInstall, Spec, MIB};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    ArtifactSpec, Assembly, ImageFormat, StageContext, Target, TargetInputs, TargetKind, TargetStage, TargetStages,
};
use crate::bootstrap::BootstrapRequest;
use crate::cache::Lookup;
use crate::distro::{packages_for, Role};
use crate::hash::{Hash, Hasher};
use crate::plan::StageInput;

/// The `usb-installer` kind in the registry.
pub const KIND: TargetKind = TargetKind {
    name: "usb-installer",
    resolve,
    check: Some(check::check),
};

/// The installer, PID 1 of the installer system.
pub const INSTALLER: &str = include_str!("installer.sh");
/// Where the installer is in the installer system (`init=`).
pub const INSTALLER_PATH: &str = "/usr/local/sbin/kiln-installer";

/// Partition names and filesystem labels of the stick.
pub const INSTALL_LABEL: &str = "KILN-INST";
pub const PAYLOAD_LABEL: &str = "KILN-PAYLOAD";
pub const DATA_LABEL: &str = "KILN-DATA";
/// The files of the payload partition.
pub const PAYLOAD_FILE: &str = "payload.raw.zst";
pub const PAYLOAD_JSON: &str = "payload.json";

/// GPT partition numbers (1-based) of the stick.
pub const BIOS_BOOT_PARTITION: u32 = 1;
pub const ESP_PARTITION: u32 = 2;
pub const INSTALL_PARTITION: u32 = 3;
pub const PAYLOAD_PARTITION: u32 = 4;
pub const DATA_PARTITION: u32 = 5;

/// The ESP holds GRUB's UEFI image only (a few MiB): FAT16.
pub const ESP_SIZE: u64 = 16 * MIB;
/// The data partition when the stick's size is not declared.
pub const DATA_SIZE: u64 = 64 * MIB;
/// GRUB's menu timeout on the stick, in seconds.
pub const GRUB_TIMEOUT: u32 = 5;
/// The serial console of GRUB and the installer; the VGA console too.
pub const CONSOLE: &str = "ttyS0,115200n8";

/// What the installer system is made of besides the family's minimal
/// bootstrap: the kernel and an initramfs that finds the stick (udev),
/// GRUB's modules for both firmware (the stick's GRUB is made from them),
/// the tools of [`INSTALLER`].
const ROLES: &[Role] = &[
    Role::Kernel,
    Role::Initramfs,
    Role::GrubBiosModules,
    Role::GrubEfiModules,
    Role::DiskWriter,
    Role::GrowRoot,
    Role::Fat,
];

/// Packages every family calls the same: udev (the initramfs loads the
/// USB and disk drivers through it) and kmod.
const COMMON_PACKAGES: &[&str] = &["udev", "kmod"];

fn resolve(inputs: &TargetInputs) -> Result<Option<Arc<dyn Target>>> {
    let Some(t) = &inputs.spec.targets.usb_installer else {
        return Ok(None);
    };
    let Some(payload) = kiln_spec::UsbInstallerTarget::PAYLOADS
        .iter()
        .copied()
        .find(|p| *p == t.payload)
    else {
        bail!("payload `{}` is not a bootable disk target", t.payload);
    };
    let payload_format = match (payload, &inputs.spec.targets.disk) {
        ("disk", Some(disk)) => super::disk::DiskPlan::resolve(inputs.spec, disk).artifact_format(),
        ("disk", None) => bail!("payload `disk` names a target the spec does not define"),
        _ => ImageFormat::Raw,
    };
    let mut packages = packages_for(inputs.family, ROLES);
    packages.extend(COMMON_PACKAGES.iter().map(|p| (*p).to_owned()));
    packages.sort();
    packages.dedup();
    Ok(Some(Arc::new(UsbPlan {
        payload,
        payload_format,
        family: inputs.family.name(),
        release: inputs.spec.base.release().unwrap_or_default().to_owned(),
        size: t.stick_size(),
        after: t.after,
        packages,
        file_name: format!(
            "{}-{}-usb-installer.raw",
            inputs.spec.image.name, inputs.spec.image.version
        ),
        name: inputs.spec.image.name.clone(),
        version: inputs.spec.image.version.clone(),
        source_date_epoch: inputs.source_date_epoch,
    })))
}

/// Everything resolved for the `usb-installer` target.
#[derive(Debug, Clone, Serialize)]
pub struct UsbPlan {
    /// The target whose artifact the stick installs.
    pub payload: &'static str,
    /// The format of the payload's artifact, converted to raw for the stick.
    pub payload_format: ImageFormat,
    /// The distro family and release of the installer system.
    pub family: &'static str,
    pub release: String,
    /// The stick's declared size in bytes; `None` is what fits.
    pub size: Option<u64>,
    pub after: AfterInstall,
    /// The installer system's packages.
    pub packages: Vec<String>,
    /// Output file name, e.g. `debian-12-usb-1.0.0-usb-installer.raw`.
    pub file_name: String,
    #[serde(skip)]
    pub name: String,
    #[serde(skip)]
    pub version: String,
    #[serde(skip)]
    pub source_date_epoch: Option<u64>,
}

/// What `payload.json` says about the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadInfo {
    /// Size of the raw disk in bytes (whole MiB).
    pub size: u64,
    /// sha512 of the raw disk's bytes.
    pub sha512: String,
    pub name: String,
    pub version: String,
    /// The target the payload is the artifact of.
    pub target: String,
}

impl PayloadInfo {
    /// The JSON kiln writes, one key per line (the installer reads it
    /// with sed).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}

/// GRUB's configuration on `KILN-INST`: one entry that boots the
/// installer system with the installer as init, on serial and VGA.
pub fn grub_cfg(kernel_version: &str, after: AfterInstall) -> String {
    let serial = super::disk::serial_terminal(CONSOLE).map_or(String::new(), |t| {
        format!(
            "serial --unit={} --speed={}\nterminal_input serial console\nterminal_output serial console\n",
            t.unit, t.speed
        )
    });
    format!(
        "# Written by kiln for the usb-installer target.\n\
         {serial}set default=0\n\
         set timeout={GRUB_TIMEOUT}\n\
         \n\
         menuentry 'Install the payload on this machine (kiln)' --id kiln-install {{\n\
         \tlinux /boot/vmlinuz-{kernel_version} root=LABEL={INSTALL_LABEL} ro init={INSTALLER_PATH} \
         console=tty0 console={CONSOLE} panic=-1 kiln.after={after}\n\
         \tinitrd /boot/initrd.img-{kernel_version}\n\
         }}\n",
        after = after.name()
    )
}

/// The bootstrap of the installer system: the build's own release, mirror
/// and sources (not the spec's extra sources or downloads), the family's
/// minimal variant, [`UsbPlan::packages`].
pub fn installer_request(base: &BootstrapRequest, packages: &[String]) -> BootstrapRequest {
    let apt = matches!(base.distro, kiln_spec::Distro::Debian | kiln_spec::Distro::Ubuntu);
    BootstrapRequest {
        variant: if apt {
            "minbase".to_owned()
        } else {
            base.variant.clone()
        },
        include: packages.to_vec(),
        download: Vec::new(),
        download_dir: String::new(),
        extra_sources: Vec::new(),
        ..base.clone()
    }
}

/// The cache key of the installer system.
pub fn installer_key(req: &BootstrapRequest, after: AfterInstall) -> Hash {
    Hasher::new("usb-installer/installer")
        .json("request", req)
        .str("installer", INSTALLER)
        .str("grub.cfg", &grub_cfg("VERSION", after))
        .finish()
}

/// The UUID of the installer's root filesystem: from its key, so that the
/// cached filesystem and the GRUB made for it agree.
fn install_uuid(key: &Hash) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&key.bytes()[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// What the cached installer system holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstallerState {
    pub kernel: String,
    pub fs_uuid: Uuid,
    pub root_size: u64,
}

/// Items of the cached installer system.
const ROOT_ITEM: &str = "root.ext4";
const BIOS_MODULES_ITEM: &str = "grub-i386-pc";
const EFI_MODULES_ITEM: &str = "grub-x86_64-efi";

/// Sizes of the stick's partitions, in order; the last may be 0 ("the rest").
pub fn stick_partitions(install: u64, payload: u64, data: u64) -> Vec<(PartKind, u64, &'static str)> {
    vec![
        (PartKind::BiosBoot, MIB, "BIOS boot"),
        (PartKind::Esp, ESP_SIZE, "ESP"),
        (PartKind::LinuxFs, install, INSTALL_LABEL),
        (PartKind::LinuxFs, payload, PAYLOAD_LABEL),
        (PartKind::BasicData, data, DATA_LABEL),
    ]
}

/// The stick's layout: `size` when declared (the data partition takes the
/// rest), else what the partitions take with [`DATA_SIZE`] for the data.
pub fn stick_layout(size: Option<u64>, install: u64, payload: u64, guid: impl Fn(&str) -> Uuid) -> Result<Layout> {
    let install = install.div_ceil(MIB) * MIB;
    let payload = payload.div_ceil(MIB) * MIB;
    let fixed = kiln_spec::DiskTarget::GPT_OVERHEAD + MIB + ESP_SIZE + install + payload;
    let (disk, data) = match size {
        Some(size) => {
            if size < fixed + DATA_SIZE {
                bail!(
                    "the stick's size is {} MiB, and the installer and the compressed payload take {} MiB with {} MiB for {DATA_LABEL}: use at least \"{}MiB\"",
                    size >> 20,
                    fixed >> 20,
                    DATA_SIZE >> 20,
                    (fixed + DATA_SIZE) >> 20
                );
            }
            (size, 0)
        }
        None => (fixed + DATA_SIZE, DATA_SIZE),
    };
    let parts: Vec<PartitionSpec> = stick_partitions(install, payload, data)
        .into_iter()
        .map(|(kind, size, name)| PartitionSpec {
            kind,
            size,
            name: name.to_owned(),
            guid: guid(name),
        })
        .collect();
    partition::layout(disk, TableKind::Gpt, &parts).context("laying out the stick")
}

impl UsbPlan {
    /// The installer system, from the cache or bootstrapped and stored.
    fn installer(&self, cx: &StageContext, scratch: &Path) -> Result<(crate::cache::Hit, InstallerState, bool)> {
        let req = installer_request(cx.bootstrap, &self.packages);
        let key = installer_key(&req, self.after);
        if let Lookup::Hit(hit) = cx.cache.lookup(&key)? {
            let state = serde_json::from_value(hit.entry.state.clone()).context("reading the cached installer")?;
            return Ok((hit, state, false));
        }
        let lock = cx.cache.lock_exclusive(&key)?;
        if let Lookup::Hit(hit) = cx.cache.lookup(&key)? {
            drop(lock);
            let state = serde_json::from_value(hit.entry.state.clone()).context("reading the cached installer")?;
            return Ok((hit, state, false));
        }
        let work = scratch.join("installer");
        let tree = work.join("tree");
        let boot_scratch = work.join("scratch");
        let tmp = work.join("tmp");
        for d in [&boot_scratch, &tmp] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        cx.family
            .prepare_packages(&req, &boot_scratch)
            .context("writing the package manager's configuration")?;
        let packages = cx.cache.packages_dir();
        let (program, cmd) = crate::distro::bootstrap_cmd(cx.family, &req, &tree, &boot_scratch, Some(&packages));
        let mut cmd = cmd.env("TMPDIR", &tmp);
        if let Some(log) = cx.log {
            cmd = cmd.log_to(log);
        }
        cmd.run()
            .with_context(|| format!("bootstrapping the installer system with {program}"))?;

        let kernel = super::disk::kernels(&tree)?
            .into_iter()
            .next()
            .context("the installer system has no kernel with an initramfs in /boot")?;
        crate::chroot::write_mode(&tree.join(INSTALLER_PATH.trim_start_matches('/')), INSTALLER, 0o755)
            .context("installing the installer")?;
        let grub_dir = tree.join("boot/grub");
        std::fs::create_dir_all(&grub_dir)?;
        crate::chroot::write_mode(&grub_dir.join("grub.cfg"), &grub_cfg(&kernel, self.after), 0o644)?;

        let fs_uuid = install_uuid(&key);
        let content = kiln_disk::mkfs::tree_size(&tree).context("measuring the installer system")?;
        let root_size = (content + content / 8 + 64 * MIB).div_ceil(MIB) * MIB;
        let root = work.join(ROOT_ITEM);
        std::fs::File::create(&root)?.set_len(root_size)?;
        let opts = kiln_disk::FsOptions {
            uuid: fs_uuid,
            label: INSTALL_LABEL.to_owned(),
            hash_seed: Some(fs_uuid),
            source_date_epoch: self.source_date_epoch,
            ..Default::default()
        };
        kiln_disk::make_ext4(&root, 0, root_size, &tree, &opts).context("making the installer's filesystem")?;

        let state = InstallerState {
            kernel,
            fs_uuid,
            root_size,
        };
        let mut pending = cx.cache.begin(&key, "usb-installer/installer", &self.name)?;
        pending.adopt(ROOT_ITEM, &root)?;
        pending.adopt(BIOS_MODULES_ITEM, &Platform::I386Pc.modules_dir(&tree))?;
        pending.adopt(EFI_MODULES_ITEM, &Platform::X86_64Efi.modules_dir(&tree))?;
        pending.commit(serde_json::to_value(&state)?)?;
        let hit = cx.cache.hit_after_commit(&key, lock)?;
        crate::cache::remove_tree(&work)?;
        Ok((hit, state, true))
    }

    /// The payload's raw disk in `scratch`: the consumed artifact, converted
    /// from its format when it is not raw.
    fn payload_raw(&self, cx: &StageContext, scratch: &Path) -> Result<PathBuf> {
        let artifact = cx.consumed.get(self.payload).with_context(|| {
            format!(
                "internal: the {} artifact was not handed to usb-installer",
                self.payload
            )
        })?;
        if self.payload_format == ImageFormat::Raw {
            return Ok(artifact.clone());
        }
        let raw = scratch.join("payload.raw");
        let (format, _) = self.payload_format.qemu_img();
        Cmd::new("qemu-img")
            .args(["convert", "-f", format, "-O", "raw"])
            .arg(artifact)
            .arg(&raw)
            .run()
            .with_context(|| format!("converting the {} artifact to a raw disk", self.payload))?;
        Ok(raw)
    }
}

/// Compresses `raw` into `dest` with zstd on every core; returns the
/// sha512 of the raw bytes.
pub fn compress_payload(raw: &Path, dest: &Path, threads: u32) -> Result<String> {
    use sha2::{Digest, Sha512};
    let mut input = std::fs::File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let output = std::fs::File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut encoder = zstd::stream::Encoder::new(std::io::BufWriter::new(output), 3)?;
    encoder.multithread(threads)?;
    let mut hasher = Sha512::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        encoder.write_all(&buf[..n])?;
    }
    encoder.finish()?.flush()?;
    Ok(hex::encode(hasher.finalize()))
}

/// Copies the file `src` into `disk` at `offset`, leaving out blocks of
/// zeros (`disk` is a fresh sparse file).
fn copy_into(src: &Path, disk: &Path, offset: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut input = std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let out = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = offset;
    loop {
        let mut n = 0;
        while n < buf.len() {
            let got = input.read(&mut buf[n..])?;
            if got == 0 {
                break;
            }
            n += got;
        }
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            out.write_all_at(&buf[..n], at)
                .with_context(|| format!("writing {} into {}", src.display(), disk.display()))?;
        }
        at += n as u64;
    }
    Ok(())
}

impl Target for UsbPlan {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn packages(&self) -> Vec<String> {
        // The stick carries the payload's artifact and a system of its own.
        Vec::new()
    }

    fn datasources(&self) -> &'static [&'static str] {
        &[]
    }

    fn tools(&self) -> Vec<&'static str> {
        vec!["mke2fs", "grub-mkimage", "qemu-img", "unshare"]
    }

    fn consumes(&self) -> &'static [&'static str] {
        match self.payload {
            "ami" => &["ami"],
            _ => &["disk"],
        }
    }

    fn stages(&self, _spec: &Spec, tools: &BTreeMap<String, String>) -> TargetStages {
        let tool = |name: &str| tools.get(name).cloned().unwrap_or_default();
        TargetStages {
            finalise: TargetStage {
                name: "finalise",
                actions: vec!["nothing: the stick carries the payload's artifact, not this tree".to_owned()],
                inputs: vec![StageInput::text("usb-installer", "no finalisation")],
            },
            assemble: vec![
                TargetStage {
                    name: "installer",
                    actions: vec![format!(
                        "installer system: {} {} minimal with {} (cached apart from the spec's tree)",
                        self.family, self.release,
                        self.packages.join(", ")
                    )],
                    inputs: vec![
                        StageInput::json("packages", &self.packages),
                        StageInput::text("installer", INSTALLER),
                        StageInput::json("after", &self.after),
                    ],
                },
                TargetStage {
                    name: "stick",
                    actions: vec![format!(
                        "GPT: BIOS boot, ESP, {INSTALL_LABEL}, {PAYLOAD_LABEL} ({} artifact, zstd, sha512), {DATA_LABEL} (FAT); GRUB for BIOS and UEFI",
                        self.payload
                    )],
                    inputs: vec![
                        StageInput::json("layout", &(self.size, self.payload)),
                        StageInput::text("mkfs", &tool("mke2fs")),
                        StageInput::text("grub-mkimage", &tool("grub-mkimage")),
                    ],
                },
            ],
            output: TargetStage {
                name: "write",
                actions: vec![format!("write {} (raw)", self.file_name)],
                inputs: vec![
                    StageInput::json("output", &self.file_name),
                    StageInput::text("qemu-img", &tool("qemu-img")),
                ],
            },
        }
    }

    fn finalise(&self, _cx: &StageContext, _tree: &Path) -> Result<()> {
        Ok(())
    }

    fn assemble(
        &self,
        cx: &StageContext,
        stage: &str,
        _tree: &Path,
        scratch: &Path,
        out: &mut Assembly,
    ) -> Result<String> {
        match stage {
            "installer" => {
                let (_hit, state, built) = self.installer(cx, scratch)?;
                Ok(format!(
                    "installer system with Linux {}, {} MiB{}",
                    state.kernel,
                    state.root_size >> 20,
                    if built { "" } else { " (from the cache)" }
                ))
            }
            "stick" => self.assemble_stick(cx, scratch, out),
            other => bail!("internal: the usb-installer target has no stage {other}"),
        }
    }

    fn artifact(&self) -> ArtifactSpec {
        ArtifactSpec {
            file_name: self.file_name.clone(),
            format: ImageFormat::Raw,
            compress: false,
        }
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl UsbPlan {
    fn assemble_stick(&self, cx: &StageContext, scratch: &Path, out: &mut Assembly) -> Result<String> {
        let (hit, state, _) = self.installer(cx, scratch)?;
        let payload_dir = scratch.join("payload");
        std::fs::create_dir_all(&payload_dir)?;
        let raw = self.payload_raw(cx, scratch)?;
        let size = std::fs::metadata(&raw)?.len();
        if !size.is_multiple_of(MIB) {
            bail!("the {} artifact is {size} bytes, not whole MiB", self.payload);
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let sha512 =
            compress_payload(&raw, &payload_dir.join(PAYLOAD_FILE), threads).context("compressing the payload")?;
        if raw.starts_with(scratch) {
            std::fs::remove_file(&raw)?;
        }
        let info = PayloadInfo {
            size,
            sha512,
            name: self.name.clone(),
            version: self.version.clone(),
            target: self.payload.to_owned(),
        };
        crate::chroot::write_mode(&payload_dir.join(PAYLOAD_JSON), &info.to_json(), 0o644)?;
        let content = kiln_disk::mkfs::tree_size(&payload_dir)?;
        let payload_size = content + content / 32 + 16 * MIB;

        let layout = stick_layout(self.size, state.root_size, payload_size, |what| {
            cx.derived_uuid(&format!("partition {what}"))
        })?;
        let stick = scratch.join("stick.raw");
        std::fs::File::create(&stick)?.set_len(layout.disk_size)?;
        let part = |n: u32| &layout.partitions[n as usize - 1];

        copy_into(&hit.item(ROOT_ITEM), &stick, part(INSTALL_PARTITION).start)
            .context("writing the installer system")?;
        let payload_uuid = cx.derived_uuid("payload filesystem");
        let opts = kiln_disk::FsOptions {
            uuid: payload_uuid,
            label: PAYLOAD_LABEL.to_owned(),
            hash_seed: Some(cx.derived_uuid("payload hash seed")),
            source_date_epoch: self.source_date_epoch,
            ..Default::default()
        };
        let p = part(PAYLOAD_PARTITION);
        kiln_disk::make_ext4(&stick, p.start, p.size, &payload_dir, &opts).context("writing the payload partition")?;

        let volume_id = |what: &str| {
            let b = cx.derived_uuid(what).into_bytes();
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        };
        let epoch = self.source_date_epoch.unwrap_or(0);
        let readme = format!(
            "kiln USB installer for {} {}.\r\nThe installer writes its log here (kiln-install-*.log).\r\n",
            self.name, self.version
        );
        let d = part(DATA_PARTITION);
        kiln_disk::fat::write_fat_at(
            &stick,
            d.start,
            d.size,
            &FatOptions::new(DATA_LABEL, volume_id("data volume id"), epoch),
            &[FatEntry::file("README.TXT", readme.into_bytes())],
        )
        .context("writing the data partition")?;

        let grub_root = GrubRoot::ext4_root(state.fs_uuid, INSTALL_PARTITION);
        let efi = grub::make_image(Platform::X86_64Efi, &hit.item(EFI_MODULES_ITEM), &grub_root)
            .context("building GRUB for UEFI")?;
        let e = part(ESP_PARTITION);
        kiln_disk::fat::write_fat_at(
            &stick,
            e.start,
            e.size,
            &FatOptions::new("ESP", volume_id("esp volume id"), epoch),
            &[FatEntry::file(grub::EFI_REMOVABLE_PATH, efi)],
        )
        .context("writing the EFI system partition")?;

        partition::write_partition_table(&stick, &layout, cx.derived_uuid("disk"))
            .context("writing the stick's partition table")?;
        let modules = hit.item(BIOS_MODULES_ITEM);
        let core = grub::make_image(Platform::I386Pc, &modules, &grub_root).context("building GRUB for BIOS")?;
        grub::install_bios(&stick, &modules, &core, part(BIOS_BOOT_PARTITION))?;

        out.filesystems.insert(
            part(INSTALL_PARTITION).start,
            ("ext4".to_owned(), state.fs_uuid.to_string()),
        );
        out.filesystems
            .insert(p.start, ("ext4".to_owned(), payload_uuid.to_string()));
        out.raw = Some(stick);
        let summary = format!(
            "{} MiB stick, payload {} MiB raw in {} MiB",
            layout.disk_size >> 20,
            size >> 20,
            content >> 20
        );
        out.layout = Some(layout);
        Ok(summary)
    }
}

#[cfg(test)]
mod tests;
