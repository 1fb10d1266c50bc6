//! The spec's types, as they are deserialised from TOML. Field docs become
//! the JSON Schema's descriptions, so they are written for users.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A kiln image spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub image: Image,
    pub base: Base,
    #[serde(default)]
    pub packages: Packages,
    #[serde(default)]
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub directories: Vec<DirectoryEntry>,
    #[serde(default)]
    pub run: Vec<RunStep>,
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub root: Root,
    /// Static hostname written to /etc/hostname (cloud-init may override it at boot).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Time zone name from the tz database, e.g. "Europe/Paris". Default "Etc/UTC".
    #[serde(default)]
    pub timezone: Option<String>,
    /// Locale, e.g. "en_US.UTF-8". Default "C.UTF-8".
    #[serde(default)]
    pub locale: Option<String>,
    #[serde(default)]
    pub services: Services,
    #[serde(default)]
    pub kernel: Kernel,
    #[serde(default)]
    pub cloud_init: CloudInit,
    /// Output targets, keyed by target kind (e.g. `ovh-byol`).
    #[serde(default)]
    pub targets: Targets,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Image name: letters, digits, '.', '_' and '-'; used in output file names.
    pub name: String,
    /// Image version, e.g. "1.0.0"; used in output file names.
    pub version: String,
    /// Seconds since the epoch used for timestamps in the image (reproducible builds).
    #[serde(default)]
    pub source_date_epoch: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Distro {
    Debian,
    Ubuntu,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Base {
    pub distro: Distro,
    /// Release code name, e.g. "bookworm".
    pub release: String,
    /// Archive URL. Default: the Debian mirror in the host's apt sources.
    #[serde(default)]
    pub mirror: Option<String>,
    /// Archive components. Default ["main"].
    #[serde(default)]
    pub components: Option<Vec<String>>,
    /// mmdebstrap variant. Default "important".
    #[serde(default)]
    pub variant: Option<String>,
    /// Architecture. Default "amd64".
    #[serde(default)]
    pub architecture: Option<String>,
    /// Extra apt sources available during the build and kept in the image.
    #[serde(default)]
    pub sources: Vec<AptSource>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AptSource {
    /// Name of the sources file: /etc/apt/sources.list.d/<name>.sources.
    pub name: String,
    pub uri: String,
    pub suites: Vec<String>,
    #[serde(default)]
    pub components: Vec<String>,
    /// ASCII-armoured or binary OpenPGP key file, relative to the spec file.
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    /// Packages to install (in addition to those the targets need).
    #[serde(default)]
    pub install: Vec<String>,
    /// Packages to purge after customisation.
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Source file, relative to the spec file's directory.
    pub src: String,
    /// Absolute destination path in the image.
    pub dest: String,
    /// Octal mode as a string, e.g. "0644". Default "0644".
    #[serde(default)]
    pub mode: Option<String>,
    /// "user:group" or "user". Default "root:root".
    #[serde(default)]
    pub owner: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectoryEntry {
    /// Absolute path in the image.
    pub path: String,
    /// Octal mode as a string. Default "0755".
    #[serde(default)]
    pub mode: Option<String>,
    /// "user:group" or "user". Default "root:root".
    #[serde(default)]
    pub owner: Option<String>,
}

/// A script run in a chroot of the image, with /proc, /sys, /dev and a working
/// resolv.conf. Exactly one of `script` (inline) or `file` must be given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunStep {
    /// A name shown in progress and errors. Default "run #N".
    #[serde(default)]
    pub name: Option<String>,
    /// Inline script; starts with a #! line or runs with /bin/sh -e.
    #[serde(default)]
    pub script: Option<String>,
    /// Script file, relative to the spec file's directory.
    #[serde(default)]
    pub file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Login shell. Default "/bin/bash".
    #[serde(default)]
    pub shell: Option<String>,
    /// Passwordless sudo (writes /etc/sudoers.d/<name>).
    #[serde(default)]
    pub sudo: bool,
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// crypt(3) password hash; omitted means the password is locked.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Lock the password (the default when no hash is given).
    #[serde(default)]
    pub locked: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Root {
    /// crypt(3) password hash for root; omitted means locked.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Lock root's password (the default when no hash is given).
    #[serde(default)]
    pub locked: Option<bool>,
    #[serde(default)]
    pub ssh_keys: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Services {
    #[serde(default)]
    pub enable: Vec<String>,
    #[serde(default)]
    pub disable: Vec<String>,
    #[serde(default)]
    pub mask: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Kernel package. Default "linux-image-amd64".
    #[serde(default)]
    pub package: Option<String>,
    /// Extra kernel command line, appended to the target's defaults.
    #[serde(default)]
    pub cmdline: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudInit {
    /// Datasources to enable, in order (e.g. ["ConfigDrive", "NoCloud"]).
    /// Default: what the targets need.
    #[serde(default)]
    pub datasources: Vec<String>,
    /// cloud-init's default user.
    #[serde(default)]
    pub default_user: Option<DefaultUser>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefaultUser {
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Login shell. Default "/bin/bash".
    #[serde(default)]
    pub shell: Option<String>,
    /// Passwordless sudo. Default true.
    #[serde(default)]
    pub sudo: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    #[serde(default, rename = "ovh-byol")]
    pub ovh_byol: Option<OvhByolTarget>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    #[default]
    Ext4,
    Xfs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PartitionTable {
    #[default]
    Gpt,
    Mbr,
}

/// An OVHcloud Bring Your Own Linux (byolinux_64) image: a qcow2 with one
/// partition and /root/.ovh/make_image_bootable.sh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OvhByolTarget {
    /// Filesystem of the single partition. Default "ext4".
    #[serde(default)]
    pub filesystem: Filesystem,
    /// Partition size, e.g. "4GiB", or "auto" (content plus headroom). Default "auto".
    #[serde(default)]
    pub size: Option<String>,
    /// Partition table. Default "gpt".
    #[serde(default)]
    pub partition_table: PartitionTable,
    /// Compress the qcow2. Default true.
    #[serde(default)]
    pub compress: Option<bool>,
    /// EFI bootloader directory name under \efi\ (grub-install --bootloader-id). Default: the distro name.
    #[serde(default)]
    pub bootloader_id: Option<String>,
    /// Extra free space in the filesystem when size is "auto", e.g. "512MiB". Default "25%" of content + 256MiB.
    #[serde(default)]
    pub headroom: Option<String>,
}
