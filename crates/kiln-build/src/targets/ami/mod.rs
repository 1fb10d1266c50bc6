//! Target `ami`: the raw disk an Amazon EC2 machine image is registered
//! from (an EBS snapshot of it). It is the `disk` target's default layout
//! and bootloaders, resolved with fixed settings ([`AmiPlan::disk`]):
//! GPT with GRUB's BIOS boot partition, the ESP and the root, GRUB for BIOS
//! and for UEFI at the removable path, so the image boots in both of
//! EC2's boot modes (`uefi-preferred`: UEFI on instance types that have
//! it, BIOS on the others). What the ami adds, in its own finalisation
//! before the disk's ([`finalise_script`]):
//!
//! - cloud-init with `datasource_list: [ Ec2, None ]` (ds-identify and the
//!   Ec2 datasource recognise EC2 by its DMI data), the default user
//!   (passwordless sudo, password locked, the key pair from the metadata),
//!   no SSH password logins; growpart and resizefs (the disk's own
//!   finalisation requires and configures them);
//! - the NVMe and ENA drivers forced into the initramfs, which the disk's
//!   finalisation then regenerates, so the root is found on Nitro
//!   instances whatever udev loads;
//! - `console=ttyS0,115200` last (EC2's serial console and
//!   get-console-output) and `nvme_core.io_timeout=4294967295` (EBS
//!   volumes on NVMe must not time out), before the spec's `[kernel] cmdline`;
//! - time from the Amazon Time Sync Service, `169.254.169.123`, with
//!   systemd-timesyncd and no other server;
//! - no baked network configuration (cloud-init renders the instance's),
//!   host keys or machine-id (the common cleanup), and no password for any
//!   account: the finalisation fails if one has a password hash.
//!
//! The manifest gets what `aws ec2 register-image` needs under `ami`.
//! [`check::check`] is `kiln check --target ami`.
//! Non-goals: arm64 (Graviton) images, Secure Boot, uploading (`kiln
//! publish aws`).

pub mod check;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Result};
use kiln_spec::{
    AmiTarget, DiskFormat, DiskPartition, DiskTarget, Filesystem, PartitionFilesystem, Spec, Written, GIB,
};
use serde::Serialize;

use super::disk::DiskPlan;
use super::{
    ArtifactSpec, Assembly, ImageFormat, StageContext, Target, TargetInputs, TargetKind, TargetStage, TargetStages,
};
use crate::distro::{self, packages_for, DistroFamily, Role};
use crate::plan::StageInput;

/// The `ami` kind in the registry.
pub const KIND: TargetKind = TargetKind {
    name: "ami",
    resolve,
    check: Some(check::check),
};

/// cloud-init's EC2 datasource.
const DATASOURCES: &[&str] = &["Ec2"];

/// EC2's serial console (`get-console-output`, the EC2 serial console).
pub const CONSOLE: &str = "ttyS0,115200";

/// How long the kernel waits for an NVMe command: the largest value, as
/// AWS asks, so that an EBS volume that stalls is not taken offline.
pub const NVME_TIMEOUT_ARG: &str = "nvme_core.io_timeout=4294967295";

/// The Amazon Time Sync Service, link-local on every instance.
pub const TIME_SERVER: &str = "169.254.169.123";

/// The drivers of Nitro instances: EBS and instance-store volumes are NVMe
/// devices, the network card is an Elastic Network Adapter.
pub const INITRAMFS_MODULES: &[&str] = &["nvme", "ena"];

/// Where the ami's cloud-init settings go: after the customisation's
/// `90-kiln-*` and the disk's `91-kiln-disk.cfg`, so they win.
pub const CLOUD_CFG: &str = "/etc/cloud/cloud.cfg.d/95-kiln-ami.cfg";

/// Where the ami's systemd-timesyncd settings go.
pub const TIMESYNCD_CONF: &str = "/etc/systemd/timesyncd.conf.d/50-kiln-ami.conf";

/// What `aws ec2 register-image` is given, recorded in the manifest.
pub const ARCHITECTURE: &str = "x86_64";
pub const BOOT_MODE: &str = "uefi-preferred";
pub const ROOT_DEVICE: &str = "/dev/xvda";
pub const IMDS_SUPPORT: &str = "v2.0";

fn resolve(inputs: &TargetInputs) -> Result<Option<Arc<dyn Target>>> {
    let Some(t) = &inputs.spec.targets.ami else {
        return Ok(None);
    };
    Ok(Some(Arc::new(AmiPlan::resolve(inputs, t)?)))
}

/// Everything resolved for the `ami` target.
#[derive(Debug, Clone, Serialize)]
pub struct AmiPlan {
    /// The disk it is made as: the disk target's default layout, raw, GRUB
    /// for BIOS and UEFI, the EC2 console and command line.
    #[serde(skip)]
    pub disk: DiskPlan,
    /// The disk's size in bytes, whole GiB.
    pub size: u64,
    pub filesystem: Filesystem,
    /// cloud-init's default user.
    pub default_user: String,
    /// Kernel command line after `root=UUID=… ro`.
    pub cmdline: Vec<String>,
    /// Output file name, e.g. `debian-12-ami-1.0.0-ami.raw`.
    pub file_name: String,
}

impl AmiPlan {
    /// Resolves the spec's `[targets.ami]` (already validated by `load`).
    pub fn resolve(inputs: &TargetInputs, t: &AmiTarget) -> Result<AmiPlan> {
        let spec = inputs.spec;
        let arch = spec.base.architecture();
        if arch != "amd64" {
            bail!("the ami target makes x86_64 images, and [base] architecture is {arch}");
        }
        let size = t.disk_size();
        let disk_target = disk_target(t);
        let mut disk = DiskPlan::resolve(spec, &disk_target);
        disk.source_date_epoch = inputs.source_date_epoch;
        // The serial console last: it becomes /dev/console, which is what
        // EC2's console output shows.
        let mut cmdline = vec![
            "console=tty0".to_owned(),
            format!("console={CONSOLE}"),
            NVME_TIMEOUT_ARG.to_owned(),
        ];
        cmdline.extend(spec.kernel.cmdline.iter().cloned());
        disk.cmdline.clone_from(&cmdline);
        let file_name = format!("{}-{}-ami.raw", spec.image.name, spec.image.version);
        disk.file_name.clone_from(&file_name);
        Ok(AmiPlan {
            disk,
            size,
            filesystem: t.filesystem,
            default_user: t.default_user(&spec.cloud_init).to_owned(),
            cmdline,
            file_name,
        })
    }
}

/// The disk target an ami is made as: both firmware, raw, the EC2 console,
/// the default layout (with an XFS root, declared: the default layout is
/// ext4 only), whole GiB.
fn disk_target(t: &AmiTarget) -> DiskTarget {
    let partitions = match t.filesystem {
        Filesystem::Ext4 => Vec::new(),
        Filesystem::Xfs => [
            ("bios_boot", None, Some("1MiB")),
            ("esp", None, Some("128MiB")),
            ("root", Some(PartitionFilesystem::Xfs), None),
        ]
        .into_iter()
        .map(|(role, filesystem, size)| DiskPartition {
            role: role.to_owned(),
            filesystem,
            size: size.map(Written::new),
            mount_options: None,
            label: None,
        })
        .collect(),
    };
    DiskTarget {
        firmware: None,
        format: DiskFormat::Raw,
        size: Some(Written::new(format!("{}GiB", t.disk_size() / GIB))),
        headroom: None,
        filesystem: Filesystem::Ext4,
        esp_size: None,
        console: Some(CONSOLE.to_owned()),
        compress: None,
        bootloader_id: None,
        partitions,
    }
}

/// The chroot script that makes the tree EC2's (run before the disk
/// target's finalisation, which regenerates the initramfs).
pub fn finalise_script(plan: &AmiPlan, family: &dyn DistroFamily) -> String {
    let modules = family.initramfs_modules_script(INITRAMFS_MODULES);
    let user = &plan.default_user;
    format!(
        r#"#!/bin/sh
# Generated by kiln: prepares the tree for the ami target (Amazon EC2).
set -eu

echo 'kiln: NVMe and ENA drivers in the initramfs'
# Nitro instances' volumes are NVMe devices and their network cards ENA:
# both in every initramfs, loaded early (the disk finalisation regenerates it).
{modules}
echo 'kiln: cloud-init for EC2'
if [ ! -e /etc/cloud/cloud.cfg ]; then
    echo 'kiln: cloud-init is not installed; an AMI gets its user, key and network from it' >&2
    exit 1
fi
mkdir -p /etc/cloud/cloud.cfg.d
cat > {CLOUD_CFG} <<'KILN_CFG'
# Written by kiln for the ami target.
# Ec2 first (ds-identify recognises EC2 by its DMI data); None lets an
# instance without metadata boot all the same.
datasource_list: [ Ec2, None ]
# The key pair's user; no password, so none is ever set or asked for.
system_info:
  default_user:
    name: {user}
    lock_passwd: true
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
ssh_pwauth: false
disable_root: true
KILN_CFG

echo 'kiln: time from the Amazon Time Sync Service'
if [ ! -e /lib/systemd/systemd-timesyncd ] && [ ! -e /usr/lib/systemd/systemd-timesyncd ]; then
    echo 'kiln: systemd-timesyncd is not installed' >&2
    exit 1
fi
mkdir -p /etc/systemd/timesyncd.conf.d
cat > {TIMESYNCD_CONF} <<'KILN_TIME'
# Written by kiln for the ami target: the Amazon Time Sync Service, which
# every instance reaches at a link-local address; no other server.
[Time]
NTP={TIME_SERVER}
FallbackNTP=
KILN_TIME
systemctl enable systemd-timesyncd.service

echo 'kiln: no passwords'
# Every instance would share a baked password: fail rather than ship one.
with_password=$(awk -F: '$2 == "" || $2 !~ /^[!*]+$/ {{ print $1 }}' /etc/shadow)
if [ -n "$with_password" ]; then
    echo "kiln: accounts with a password in /etc/shadow: $with_password; an AMI bakes none" >&2
    exit 1
fi
"#
    )
}

/// A stable text for the stage hash: what the ami generates, then the disk's.
fn fingerprint(plan: &AmiPlan, family: &dyn DistroFamily) -> String {
    let mut s = finalise_script(plan, family);
    s.push_str(&super::disk::fingerprint(&plan.disk));
    s
}

impl Target for AmiPlan {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn packages(&self) -> Vec<String> {
        let mut packages = self.disk.packages();
        packages.extend(packages_for(distro::family(self.disk.distro), &[Role::TimeSync]));
        packages
    }

    fn datasources(&self) -> &'static [&'static str] {
        DATASOURCES
    }

    fn tools(&self) -> Vec<&'static str> {
        self.disk.tools()
    }

    fn stages(&self, spec: &Spec, tools: &BTreeMap<String, String>) -> TargetStages {
        let mut stages = self.disk.stages(spec, tools);
        let family = distro::family(self.disk.distro);
        let fin = &mut stages.finalise;
        fin.actions.insert(
            0,
            format!(
                "EC2: cloud-init Ec2 first, default user {}, nvme and ena in the initramfs, time from {TIME_SERVER}, no passwords",
                self.default_user
            ),
        );
        // The disk's own inputs describe the disk it wraps; these, the ami.
        fin.inputs = vec![
            StageInput::json("ami target", &(&self.default_user, &self.cmdline, self.filesystem)),
            StageInput::text("script", &fingerprint(self, family)),
        ];
        stages.assemble = stages
            .assemble
            .into_iter()
            .map(|s| TargetStage {
                actions: vec![format!(
                    "GPT: BIOS boot, {} MiB ESP (FAT written by kiln), {} root, {} GiB; GRUB for bios and uefi",
                    self.disk.esp_size >> 20,
                    match self.filesystem {
                        Filesystem::Ext4 => "ext4",
                        Filesystem::Xfs => "xfs",
                    },
                    self.size / GIB
                )],
                ..s
            })
            .collect();
        stages
    }

    fn finalise(&self, cx: &StageContext, tree: &Path) -> Result<()> {
        cx.chroot(tree, "ami finalisation", &finalise_script(self, cx.family))?;
        self.disk.finalise(cx, tree)
    }

    fn assemble(
        &self,
        cx: &StageContext,
        stage: &str,
        tree: &Path,
        scratch: &Path,
        out: &mut Assembly,
    ) -> Result<String> {
        self.disk.assemble(cx, stage, tree, scratch, out)
    }

    fn artifact(&self) -> ArtifactSpec {
        ArtifactSpec {
            file_name: self.file_name.clone(),
            format: ImageFormat::Raw,
            compress: false,
        }
    }

    fn manifest_extras(&self, artifact: &crate::manifest::Artifact) -> Vec<(&'static str, serde_json::Value)> {
        vec![("ami", register_image(self, artifact))]
    }

    fn describe(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["datasources"] = serde_json::json!(["Ec2", "None"]);
        v["initramfs_modules"] = serde_json::json!(INITRAMFS_MODULES);
        v["time_server"] = serde_json::json!(TIME_SERVER);
        v
    }
}

/// What `aws ec2 register-image` (and `kiln publish aws`) needs to make an
/// AMI of the artifact's snapshot.
fn register_image(plan: &AmiPlan, artifact: &crate::manifest::Artifact) -> serde_json::Value {
    serde_json::json!({
        "image": artifact.path,
        "sha512": artifact.sha512,
        "architecture": ARCHITECTURE,
        "bootMode": BOOT_MODE,
        "enaSupport": true,
        "imdsSupport": IMDS_SUPPORT,
        "rootDeviceName": ROOT_DEVICE,
        "virtualizationType": "hvm",
        "volumeSizeGiB": artifact.size.max(plan.size).div_ceil(GIB),
        "defaultUser": plan.default_user,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_spec::PartitionRole;

    fn plan(target: &str, extra: &str) -> AmiPlan {
        let text = format!(
            "[image]\nname = \"t\"\nversion = \"1\"\n[base]\ndistro = \"debian\"\nrelease = \"bookworm\"\n[kernel]\ncmdline = [\"quiet\"]\n{extra}[targets.ami]\n{target}"
        );
        let spec = match kiln_spec::parse_str(&text, Path::new("spec.toml"), Path::new("/")) {
            Ok(loaded) => loaded.spec,
            Err(e) => panic!("{e}"),
        };
        let inputs = TargetInputs {
            spec: &spec,
            family: distro::family(spec.base.distro()),
            source_date_epoch: Some(1),
            dir: Path::new("/"),
        };
        AmiPlan::resolve(&inputs, spec.targets.ami.as_ref().unwrap()).unwrap()
    }

    #[test]
    fn resolves_the_disk_it_is_made_as() {
        let p = plan("", "");
        assert_eq!(p.file_name, "t-1-ami.raw");
        assert_eq!((p.size, p.default_user.as_str()), (2 * GIB, "admin"));
        assert_eq!(
            p.cmdline,
            ["console=tty0", "console=ttyS0,115200", NVME_TIMEOUT_ARG, "quiet"]
        );
        let d = &p.disk;
        assert_eq!(d.cmdline, p.cmdline);
        assert_eq!(d.file_name, p.file_name);
        assert_eq!(d.firmware, [kiln_spec::Firmware::Bios, kiln_spec::Firmware::Uefi]);
        assert_eq!(
            (d.format, d.size, d.console.as_str()),
            (DiskFormat::Raw, Some(2 * GIB), CONSOLE)
        );
        assert_eq!(d.source_date_epoch, Some(1));
        let roles: Vec<PartitionRole> = d.partitions.iter().map(|p| p.role.clone()).collect();
        assert_eq!(
            roles,
            [PartitionRole::BiosBoot, PartitionRole::Esp, PartitionRole::Root]
        );
        assert_eq!(p.artifact().format, ImageFormat::Raw);
        // The disk's packages and a time client; the Ec2 datasource.
        let packages = p.packages();
        assert!(packages.contains(&"systemd-timesyncd".to_owned()), "{packages:?}");
        assert!(packages.contains(&"cloud-guest-utils".to_owned()), "{packages:?}");
        assert_eq!(p.datasources(), ["Ec2"]);

        let x = plan(
            "size = \"8GiB\"\nfilesystem = \"xfs\"\n",
            "[cloud_init]\ndefault_user = { name = \"debian\" }\n",
        );
        assert_eq!((x.size, x.default_user.as_str()), (8 * GIB, "debian"));
        let root = x.disk.partitions.last().unwrap();
        assert_eq!(root.filesystem, Some(PartitionFilesystem::Xfs));
        assert_eq!(x.disk.partitions[1].size, Some(128 << 20));
        assert!(x.packages().contains(&"xfsprogs".to_owned()));
        assert_eq!(plan("default_user = \"ops\"\n", "").default_user, "ops");
    }

    #[test]
    fn the_manifest_says_how_to_register_it() {
        let p = plan("size = \"3GiB\"\n", "");
        let artifact = crate::manifest::Artifact {
            target: "ami".into(),
            path: "t-1-ami.raw".into(),
            format: "raw".into(),
            size: 3 * GIB,
            sha512: "ab".into(),
            sbom: None,
        };
        let extras = p.manifest_extras(&artifact);
        assert_eq!(extras.len(), 1);
        assert_eq!(extras[0].0, "ami");
        assert_eq!(
            extras[0].1,
            serde_json::json!({
                "image": "t-1-ami.raw",
                "sha512": "ab",
                "architecture": "x86_64",
                "bootMode": "uefi-preferred",
                "enaSupport": true,
                "imdsSupport": "v2.0",
                "rootDeviceName": "/dev/xvda",
                "virtualizationType": "hvm",
                "volumeSizeGiB": 3,
                "defaultUser": "admin",
            })
        );
    }

    #[test]
    fn finalise_script_is_valid_sh() {
        let p = plan("default_user = \"ops\"\n", "");
        let s = finalise_script(&p, &crate::distro::DEBIAN);
        for needle in [
            "datasource_list: [ Ec2, None ]\n",
            "    name: ops\n",
            "grep -qx nvme /etc/initramfs-tools/modules || echo nvme >> /etc/initramfs-tools/modules\n",
            "grep -qx ena /etc/initramfs-tools/modules",
            "NTP=169.254.169.123\nFallbackNTP=\n",
        ] {
            assert!(s.contains(needle), "{needle:?} not in\n{s}");
        }
        if !kiln_exec::testing::require_tool_or_skip("shellcheck") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ami.sh");
        std::fs::write(&f, &s).unwrap();
        kiln_exec::Cmd::new("shellcheck").arg(&f).run().unwrap();
    }

    /// The finalisation's password check, run by sh on shadow lines.
    #[test]
    fn accounts_with_a_password_fail_the_finalisation() {
        let script = finalise_script(&plan("", ""), &crate::distro::DEBIAN);
        let check = &script[script.find("with_password=").unwrap()..];
        let dir = tempfile::tempdir().unwrap();
        for (shadow, ok) in [
            ("root:*:19000:0:99999:7:::\nadmin:!:19000::::::\nx:!*:1::::::\n", true),
            ("root:!$6$salt$hash:19000:0:99999:7:::\n", false),
            ("root::19000:0:99999:7:::\n", false),
            ("root:*:1::::::\nops:$y$j9T$abc:1::::::\n", false),
        ] {
            let f = dir.path().join("shadow");
            std::fs::write(&f, shadow).unwrap();
            let body = check.replace("/etc/shadow", &f.display().to_string());
            let run = kiln_exec::Cmd::new("sh").args(["-c", &body]).run();
            assert_eq!(run.is_ok(), ok, "{shadow}");
        }
    }
}
