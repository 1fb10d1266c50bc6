//! The spec's types, as they are deserialised from TOML. Field docs become
//! the JSON Schema's descriptions, so they are written for users.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::size::{Headroom, Size, Written, MIB};

/// A kiln image spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Name and version of the image.
    pub image: Image,
    /// The distribution the image is bootstrapped from.
    pub base: Base,
    /// Packages to install and remove.
    #[serde(default)]
    pub packages: Packages,
    /// Files copied from the spec directory into the image.
    #[serde(default)]
    pub files: Vec<FileEntry>,
    /// Directories created in the image.
    #[serde(default)]
    pub directories: Vec<DirectoryEntry>,
    /// Scripts run in a chroot of the image, in order, after files and packages.
    #[serde(default)]
    pub run: Vec<RunStep>,
    /// Local users (not root: see `root`).
    #[serde(default)]
    pub users: Vec<User>,
    /// The root account's password and SSH keys.
    #[serde(default)]
    pub root: Root,
    /// Static hostname written to /etc/hostname (cloud-init may override it at boot).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Time zone name from the tz database, e.g. "Europe/Paris". Default "Etc/UTC".
    #[serde(default)]
    #[schemars(extend("default" = "Etc/UTC"))]
    pub timezone: Option<String>,
    /// Locale, e.g. "en_US.UTF-8". Default "C.UTF-8".
    #[serde(default)]
    #[schemars(extend("default" = "C.UTF-8"))]
    pub locale: Option<String>,
    /// systemd units to enable, disable or mask.
    #[serde(default)]
    pub services: Services,
    /// Kernel package, command line, modules loaded at boot and sysctl settings.
    #[serde(default)]
    pub kernel: Kernel,
    /// Resource limits for PAM sessions, written to /etc/security/limits.d/90-kiln.conf.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<Limit>,
    /// cloud-init settings.
    #[serde(default)]
    pub cloud_init: CloudInit,
    /// Output targets, keyed by target kind (e.g. `ovh-byol`).
    #[serde(default)]
    pub targets: Targets,
}

/// Identity of the image, used in output names and the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Image name: letters, digits, '.', '_', '+' and '-', not starting with '.' or '-'; used in output file names.
    pub name: String,
    /// Image version, e.g. "1.0.0"; used in output file names.
    pub version: String,
    /// Seconds since the epoch used for timestamps in the image (reproducible builds).
    #[serde(default)]
    pub source_date_epoch: Option<u64>,
}

/// A distribution family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Distro {
    Debian,
    Ubuntu,
    Arch,
    Rhel,
}

/// Where the root file system comes from: a table tagged by `distro`, whose
/// other keys are that family's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "distro", rename_all = "lowercase")]
pub enum Base {
    /// Debian, bootstrapped with mmdebstrap from a Debian archive.
    Debian(AptBase),
    /// Ubuntu, bootstrapped with mmdebstrap and ubuntu-keyring from an Ubuntu archive.
    Ubuntu(AptBase),
    /// Arch Linux, bootstrapped with pacstrap from a pacman mirror.
    Arch(ArchBase),
    /// The RHEL family (Rocky Linux, AlmaLinux, RHEL 8 and 9), bootstrapped
    /// with `dnf --installroot` from the repositories the spec lists.
    Rhel(RhelBase),
}

impl Base {
    /// The distribution family the table names.
    pub fn distro(&self) -> Distro {
        match self {
            Base::Debian(_) => Distro::Debian,
            Base::Ubuntu(_) => Distro::Ubuntu,
            Base::Arch(_) => Distro::Arch,
            Base::Rhel(_) => Distro::Rhel,
        }
    }

    /// The release the table names; Arch is rolling and has none.
    pub fn release(&self) -> Option<&str> {
        match self {
            Base::Debian(apt) | Base::Ubuntu(apt) => Some(&apt.release),
            Base::Arch(_) => None,
            Base::Rhel(rhel) => Some(&rhel.release),
        }
    }

    /// The architecture in Debian's spelling ("amd64", "arm64"), which is
    /// how kiln names it everywhere else; default "amd64".
    pub fn architecture(&self) -> &str {
        let given = match self {
            Base::Debian(apt) | Base::Ubuntu(apt) => apt.architecture.as_deref(),
            Base::Arch(arch) => arch.architecture.as_deref(),
            Base::Rhel(rhel) => rhel.architecture.as_deref(),
        };
        match given {
            None | Some("x86_64") => "amd64",
            Some("aarch64") => "arm64",
            Some(other) => other,
        }
    }

    /// Decodes the keys of `[base]` other than `distro` as `distro`'s own
    /// table, for error positions (see `decode`).
    pub(crate) fn decode_family<'de, D: serde::Deserializer<'de>>(distro: Distro, keys: D) -> Result<(), D::Error> {
        match distro {
            Distro::Debian | Distro::Ubuntu => AptBase::deserialize(keys).map(drop),
            Distro::Arch => ArchBase::deserialize(keys).map(drop),
            Distro::Rhel => RhelBase::deserialize(keys).map(drop),
        }
    }

    /// The distribution image the build starts from, if `[base] image` names one.
    pub fn image(&self) -> Option<&BaseImage> {
        match self {
            Base::Debian(apt) | Base::Ubuntu(apt) => apt.image.as_ref(),
            Base::Arch(arch) => arch.image.as_ref(),
            Base::Rhel(rhel) => rhel.image.as_ref(),
        }
    }

    /// The settings of an apt-based family (Debian and Ubuntu share them),
    /// or `None` for another family.
    pub fn apt(&self) -> Option<&AptBase> {
        match self {
            Base::Debian(apt) | Base::Ubuntu(apt) => Some(apt),
            Base::Arch(_) | Base::Rhel(_) => None,
        }
    }
}

/// The `[base]` keys of Arch Linux (`distro = "arch"`). Arch is rolling:
/// there is no release; what the mirror serves on the day is what is built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArchBase {
    /// pacman `Server` URL, with pacman's `$repo` and `$arch` variables.
    /// Default "https://geo.mirror.pkgbuild.com/$repo/os/$arch".
    #[serde(default)]
    #[schemars(extend("default" = "https://geo.mirror.pkgbuild.com/$repo/os/$arch"))]
    pub mirror: Option<String>,
    /// The repositories enabled from the mirror, in order. Default ["core", "extra"].
    #[serde(default)]
    #[schemars(extend("default" = ["core", "extra"]))]
    pub repos: Option<Vec<String>>,
    /// How the tree is bootstrapped: "pacstrap" runs the host's pacstrap
    /// (Debian's arch-install-scripts) with a pacman.conf kiln writes;
    /// "tarball" downloads the Arch bootstrap tarball (`tarball`), verifies
    /// it, and runs pacstrap inside it as a chroot. Default "pacstrap".
    #[serde(default)]
    #[schemars(extend("default" = "pacstrap"))]
    pub bootstrap: Option<ArchBootstrap>,
    /// The Arch bootstrap tarball, for `bootstrap = "tarball"`.
    #[serde(default)]
    pub tarball: Option<ArchTarball>,
    /// Verify package signatures against the Arch Linux keyring (Debian's
    /// archlinux-keyring). Default true; false writes `SigLevel = Never`.
    #[serde(default)]
    #[schemars(extend("default" = true))]
    pub gpgcheck: Option<bool>,
    /// Architecture: "x86_64" (the only one Arch Linux builds). Default "x86_64".
    #[serde(default)]
    #[schemars(extend("default" = "x86_64"))]
    pub architecture: Option<String>,
    /// Start from a distribution's own disk image (a cloud image) instead
    /// of bootstrapping: kiln downloads it, verifies it, and takes the tree
    /// of its root filesystem as the first stage; customisation and targets
    /// follow as after a bootstrap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<BaseImage>,
}

/// How an Arch tree is bootstrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ArchBootstrap {
    /// The host's pacstrap.
    Pacstrap,
    /// pacstrap inside the Arch bootstrap tarball, as a chroot.
    Tarball,
}

/// The Arch bootstrap tarball (archlinux-bootstrap-x86_64.tar.zst).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArchTarball {
    /// Where to download it (https, http or file).
    pub url: String,
    /// Its SHA-256, 64 hex digits; checked before it is extracted.
    pub sha256: String,
    /// Its detached OpenPGP signature (`.sig`), verified against the Arch
    /// Linux keyring when given.
    #[serde(default)]
    pub signature: Option<String>,
}

/// The `[base]` keys of the RHEL family (`distro = "rhel"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RhelBase {
    /// Which distribution of the family: "rocky", "almalinux" or "rhel".
    pub distribution: RhelDistribution,
    /// Major release, "8" or "9" (dnf's `--releasever`, `$releasever` in URLs).
    pub release: String,
    /// The repositories packages come from, each with its GPG key.
    pub repos: Vec<RhelRepo>,
    /// Architecture: "x86_64" or "aarch64". Default "x86_64".
    #[serde(default)]
    #[schemars(extend("default" = "x86_64"))]
    pub architecture: Option<String>,
    /// Start from a distribution's own disk image (a cloud image) instead
    /// of bootstrapping: kiln downloads it, verifies it, and takes the tree
    /// of its root filesystem as the first stage; customisation and targets
    /// follow as after a bootstrap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<BaseImage>,
}

/// A distribution of the RHEL family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RhelDistribution {
    Rocky,
    Almalinux,
    Rhel,
}

/// A dnf repository, written to /etc/yum.repos.d/<name>.repo in the image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RhelRepo {
    /// Repository id: letters, digits, '.', '_' and '-'.
    pub name: String,
    /// Base URL (http, https or file), may use `$releasever` and `$basearch`.
    pub baseurl: String,
    /// The repository's OpenPGP key: a file relative to the spec file.
    /// Required unless `gpgcheck = false`.
    #[serde(default)]
    pub gpgkey: Option<String>,
    /// Check package signatures. Default true; false must be explicit.
    #[serde(default)]
    #[schemars(extend("default" = true))]
    pub gpgcheck: Option<bool>,
}

/// The `[base]` keys of an apt-based family (Debian, Ubuntu).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AptBase {
    /// Release code name, e.g. "bookworm".
    pub release: String,
    /// Archive URL. Default for Debian: the Debian mirror in the host's apt
    /// sources; Ubuntu needs one (e.g. "http://archive.ubuntu.com/ubuntu").
    #[serde(default)]
    pub mirror: Option<String>,
    /// A dated snapshot of the archive instead of `mirror`, so that a build
    /// months later installs the same packages: a snapshot.debian.org time
    /// stamp like "20260101T000000Z", or the URL of a snapshot (for
    /// snapshot.debian.org's .../archive/debian/<time> the matching
    /// debian-security snapshot is used for the security suite).
    #[serde(default)]
    pub snapshot: Option<String>,
    /// Archive components. Default ["main"].
    #[serde(default)]
    #[schemars(extend("default" = ["main"]))]
    pub components: Option<Vec<String>>,
    /// mmdebstrap variant. Default "important".
    #[serde(default)]
    #[schemars(extend("default" = "important"))]
    pub variant: Option<String>,
    /// Architecture. Default "amd64".
    #[serde(default)]
    #[schemars(extend("default" = "amd64"))]
    pub architecture: Option<String>,
    /// Extra apt sources available during the build and kept in the image.
    #[serde(default)]
    pub sources: Vec<AptSource>,
    /// Start from a distribution's own disk image (a cloud image) instead
    /// of bootstrapping: kiln downloads it, verifies it, and takes the tree
    /// of its root filesystem as the first stage; customisation and targets
    /// follow as after a bootstrap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<BaseImage>,
}

/// A distribution's disk image that a build starts from (`[base] image`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BaseImage {
    /// Where to download it (https, http or file).
    pub url: String,
    /// Its checksum, "sha256:" and 64 hex digits; checked before the image
    /// is used. Give this or `checksum_url`.
    #[serde(default)]
    pub checksum: Option<String>,
    /// A `SHA256SUMS` file (sha256sum's format) that lists the image under
    /// the last path segment of `url`. Give this or `checksum`.
    #[serde(default)]
    pub checksum_url: Option<String>,
    /// "qcow2" or "raw". Default: from the file name (".qcow2", ".img" and
    /// ".raw", before any ".xz" or ".zst").
    #[serde(default)]
    pub format: Option<BaseImageFormat>,
    /// "xz", "zstd" or "none". Default: from the file name (".xz", ".zst").
    #[serde(default)]
    pub compression: Option<BaseImageCompression>,
}

/// The format of a base image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BaseImageFormat {
    Qcow2,
    Raw,
}

/// How a base image file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BaseImageCompression {
    None,
    Xz,
    Zstd,
}

impl BaseImage {
    /// The last path segment of `url`: the name a `SHA256SUMS` lists.
    pub fn file_name(&self) -> &str {
        let path = self.url.split(['?', '#']).next().unwrap_or("");
        path.rsplit('/').next().unwrap_or("")
    }

    /// `compression`, or what the file name says.
    pub fn compression(&self) -> BaseImageCompression {
        self.compression.unwrap_or_else(|| {
            let name = self.file_name();
            if name.ends_with(".xz") {
                BaseImageCompression::Xz
            } else if name.ends_with(".zst") || name.ends_with(".zstd") {
                BaseImageCompression::Zstd
            } else {
                BaseImageCompression::None
            }
        })
    }

    /// `format`, or what the file name says (`None`: it says nothing).
    pub fn format(&self) -> Option<BaseImageFormat> {
        if self.format.is_some() {
            return self.format;
        }
        let name = self.file_name();
        let name = [".xz", ".zst", ".zstd"]
            .iter()
            .find_map(|ext| name.strip_suffix(ext))
            .unwrap_or(name);
        if name.ends_with(".qcow2") {
            Some(BaseImageFormat::Qcow2)
        } else if name.ends_with(".raw") || name.ends_with(".img") {
            Some(BaseImageFormat::Raw)
        } else {
            None
        }
    }

    /// The SHA-256 `checksum` names, in lower-case hex.
    pub fn sha256(&self) -> Option<String> {
        self.checksum
            .as_deref()
            .and_then(|c| c.strip_prefix("sha256:"))
            .map(str::to_ascii_lowercase)
    }
}

/// An extra apt source, written as a deb822 .sources file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AptSource {
    /// Name of the sources file: /etc/apt/sources.list.d/<name>.sources.
    pub name: String,
    /// Archive URL (http, https or file).
    pub uri: String,
    /// Suites, e.g. ["bookworm-backports"].
    pub suites: Vec<String>,
    /// Components, e.g. ["main"].
    #[serde(default)]
    pub components: Vec<String>,
    /// ASCII-armoured or binary OpenPGP key file, relative to the spec file.
    #[serde(default)]
    pub key: Option<String>,
}

/// Packages to install and remove.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    /// Packages to install (in addition to those the targets need).
    #[serde(default)]
    pub install: Vec<String>,
    /// Packages to purge after customisation.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Packages to carry for installing later without a network: they and
    /// every dependency the image lacks go into a local repository in the
    /// image (`/var/lib/kiln/offline`), with an apt source for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offline: Vec<String>,
}

/// A file copied from the spec directory into the image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Source file, relative to the spec file's directory.
    pub src: String,
    /// Absolute destination path in the image.
    pub dest: String,
    /// Octal mode as a string, e.g. "0644". Default "0644".
    #[serde(default)]
    #[schemars(extend("default" = "0644"))]
    pub mode: Option<String>,
    /// "user:group" or "user". Default "root:root".
    #[serde(default)]
    #[schemars(extend("default" = "root:root"))]
    pub owner: Option<String>,
}

/// A directory created in the image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectoryEntry {
    /// Absolute path in the image.
    pub path: String,
    /// Octal mode as a string. Default "0755".
    #[serde(default)]
    #[schemars(extend("default" = "0755"))]
    pub mode: Option<String>,
    /// "user:group" or "user". Default "root:root".
    #[serde(default)]
    #[schemars(extend("default" = "root:root"))]
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

/// A local user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// User name: lower-case letters, digits, `_` and `-`.
    pub name: String,
    /// Supplementary groups; they must exist in the image.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Login shell. Default "/bin/bash".
    #[serde(default)]
    #[schemars(extend("default" = "/bin/bash"))]
    pub shell: Option<String>,
    /// Passwordless sudo (writes /etc/sudoers.d/<name>).
    #[serde(default)]
    pub sudo: bool,
    /// Public keys for ~/.ssh/authorized_keys, one `TYPE BASE64 [COMMENT]` line each.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// crypt(3) password hash; omitted means the password is locked.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Lock the password (the default when no hash is given).
    #[serde(default)]
    pub locked: Option<bool>,
}

/// The root account.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Root {
    /// crypt(3) password hash for root; omitted means locked.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Lock root's password (the default when no hash is given).
    #[serde(default)]
    pub locked: Option<bool>,
    /// Public keys for /root/.ssh/authorized_keys.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
}

/// systemd units.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Services {
    /// Units to enable, e.g. "ssh" or "getty@ttyS0.service".
    #[serde(default)]
    pub enable: Vec<String>,
    /// Units to disable.
    #[serde(default)]
    pub disable: Vec<String>,
    /// Units to mask (link to /dev/null).
    #[serde(default)]
    pub mask: Vec<String>,
}

/// The kernel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Kernel package. Default "linux-image-amd64".
    #[serde(default)]
    #[schemars(extend("default" = "linux-image-amd64"))]
    pub package: Option<String>,
    /// Extra kernel command line, appended to the target's defaults, e.g. ["hugepages=1024"].
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// Kernel modules loaded at every boot, written to /etc/modules-load.d/kiln.conf.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<String>,
    /// sysctl settings applied at every boot, written to /etc/sysctl.d/90-kiln.conf,
    /// e.g. `"vm.swappiness" = 10` (quote the dotted names).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctl: BTreeMap<String, SysctlValue>,
}

/// A sysctl or limit value: a whole number or a string (e.g. "4096 87380 6291456").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum SysctlValue {
    Number(i64),
    Text(String),
}

/// By hand, for an error that says what is expected (serde's untagged
/// enums only say that nothing matched).
impl<'de> Deserialize<'de> for SysctlValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SysctlValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a whole number or a string")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SysctlValue, E> {
                Ok(SysctlValue::Number(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SysctlValue, E> {
                i64::try_from(v)
                    .map(SysctlValue::Number)
                    .map_err(|_| E::custom(format!("{v} is too large; write it as a string")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SysctlValue, E> {
                Ok(SysctlValue::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl std::fmt::Display for SysctlValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SysctlValue::Number(n) => write!(f, "{n}"),
            SysctlValue::Text(t) => f.write_str(t),
        }
    }
}

/// One line of limits.conf(5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Who the limit applies to: a user name, "@group", or "*" for everyone.
    pub domain: String,
    /// "soft", "hard", or "-" for both.
    #[serde(rename = "type")]
    pub kind: String,
    /// The resource, e.g. "nofile", "memlock", "nproc".
    pub item: String,
    /// The value: a number, or "unlimited"/"infinity".
    pub value: SysctlValue,
}

/// cloud-init settings.
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

/// cloud-init's default user, created at first boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefaultUser {
    /// The default user's name.
    pub name: String,
    /// Supplementary groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Login shell. Default "/bin/bash".
    #[serde(default)]
    #[schemars(extend("default" = "/bin/bash"))]
    pub shell: Option<String>,
    /// Passwordless sudo. Default true.
    #[serde(default)]
    #[schemars(extend("default" = true))]
    pub sudo: Option<bool>,
}

/// Output targets; at least one must be defined.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    #[serde(default, rename = "ovh-byol")]
    pub ovh_byol: Option<OvhByolTarget>,
    #[serde(default)]
    pub disk: Option<DiskTarget>,
    /// Left out of the serialised spec when absent, so that adding the kind
    /// moved no existing spec's hash (and no cached stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iso: Option<IsoTarget>,
    // Left out of the serialised spec when absent, like `iso`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ami: Option<AmiTarget>,
    // Left out of the serialised spec when absent, like `iso`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tar: Option<TarTarget>,
    // Left out of the serialised spec when absent, like `iso`.
    #[serde(default, rename = "usb-installer", skip_serializing_if = "Option::is_none")]
    pub usb_installer: Option<UsbInstallerTarget>,
}

/// A file system type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    #[default]
    Ext4,
    Xfs,
}

/// A partition table type.
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
    #[schemars(extend("default" = "auto"))]
    pub size: Option<Written<Size>>,
    /// Partition table. Default "gpt".
    #[serde(default)]
    pub partition_table: PartitionTable,
    /// Compress the qcow2. Default true.
    #[serde(default)]
    #[schemars(extend("default" = true))]
    pub compress: Option<bool>,
    /// EFI bootloader directory name under \efi\ (grub-install --bootloader-id). Default: the distro name.
    #[serde(default)]
    pub bootloader_id: Option<String>,
    /// Extra free space in the filesystem when size is "auto", e.g. "512MiB". Default "25%" of content + 256MiB.
    #[serde(default)]
    pub headroom: Option<Written<Headroom>>,
}

/// Firmware a disk image boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// Legacy BIOS (or UEFI's CSM): GRUB in the MBR and the BIOS boot partition.
    Bios,
    /// UEFI: GRUB at the removable-media path of the EFI system partition.
    Uefi,
}

impl Firmware {
    /// A target's `firmware` list, sorted and without duplicates; both
    /// when the spec gives none.
    pub fn list(written: Option<&[Firmware]>) -> Vec<Firmware> {
        let mut firmware = written.map_or_else(|| vec![Firmware::Bios, Firmware::Uefi], <[Firmware]>::to_vec);
        firmware.sort_unstable();
        firmware.dedup();
        firmware
    }

    /// "bios and uefi", for progress and plans.
    pub fn names(list: &[Firmware]) -> String {
        list.iter()
            .map(|f| format!("{f:?}").to_lowercase())
            .collect::<Vec<_>>()
            .join(" and ")
    }
}

/// Disk image file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// A plain disk image, as `dd` would write it.
    Raw,
    /// QEMU's copy-on-write format: sparse, optionally compressed.
    #[default]
    Qcow2,
    /// VMware's stream-optimized VMDK (vSphere, VirtualBox), converted by qemu-img.
    Vmdk,
    /// A fixed VHD (Azure, Hyper-V), its size rounded up to whole MiB, converted by qemu-img.
    Vhd,
}

/// What a declared partition's filesystem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PartitionFilesystem {
    Ext4,
    Xfs,
    /// FAT32: the EFI system partition only.
    Vfat,
    /// A swap area: the `swap` role only.
    Swap,
}

/// A partition's size as written: a size, or "rest".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionSize {
    Bytes(u64),
    /// What the other partitions leave of the disk (last partition only).
    Rest,
}

impl crate::size::FromSpecText for PartitionSize {
    fn from_spec_text(text: &str) -> Result<Self, String> {
        if text.trim() == "rest" {
            return Ok(PartitionSize::Rest);
        }
        crate::size::parse_size(text).map(PartitionSize::Bytes)
    }
}

/// One partition of a declared `disk` layout, in disk order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskPartition {
    /// What the partition is for: "bios_boot" (GRUB's BIOS boot partition),
    /// "esp" (mounted at /boot/efi), "boot" (/boot), "root" (/), "swap", or
    /// the absolute mount point of another filesystem, e.g. "/var/log".
    pub role: String,
    /// "ext4", "xfs", "vfat" (the ESP) or "swap". Default: "vfat" for the
    /// ESP, "swap" for swap, none for bios_boot, "ext4" otherwise.
    #[serde(default)]
    pub filesystem: Option<PartitionFilesystem>,
    /// Partition size, e.g. "1GiB", in whole MiB; or "rest" for what the
    /// other partitions leave of a fixed disk size (its content plus
    /// `headroom` when the disk size is "auto"). Only the last partition may
    /// take the rest, and omitting its size means "rest".
    #[serde(default)]
    #[schemars(extend("default" = "rest"))]
    pub size: Option<Written<PartitionSize>>,
    /// fstab mount options, e.g. "nodev,noexec". Default "errors=remount-ro"
    /// for an ext4 root, "umask=0077" for the ESP, "defaults" otherwise.
    #[serde(default)]
    pub mount_options: Option<String>,
    /// Filesystem label (ext4: 16 bytes, xfs: 12, vfat: 11). Default: from the role.
    #[serde(default)]
    pub label: Option<String>,
}

/// A directly bootable disk image for virtual machines, clouds and bare
/// metal: GPT with a BIOS boot partition, an EFI system partition and the
/// root filesystem (or a declared layout), GRUB for BIOS and UEFI, a serial
/// console.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskTarget {
    /// Firmware the image boots with. Default ["bios", "uefi"].
    #[serde(default)]
    #[schemars(extend("default" = ["bios", "uefi"]))]
    pub firmware: Option<Vec<Firmware>>,
    /// Output format. Default "qcow2".
    #[serde(default)]
    pub format: DiskFormat,
    /// Virtual disk size, e.g. "8GiB" (the root partition gets what the BIOS boot partition, the ESP and the GPT leave), or "auto" (content plus headroom). Default "auto".
    #[serde(default)]
    #[schemars(extend("default" = "auto"))]
    pub size: Option<Written<Size>>,
    /// Extra free space in the root filesystem when size is "auto", e.g. "1GiB". Default "25%" of content + 256MiB.
    #[serde(default)]
    pub headroom: Option<Written<Headroom>>,
    /// Root filesystem of the default layout. Default "ext4" (the only one
    /// it supports; a declared layout names each partition's).
    #[serde(default)]
    pub filesystem: Filesystem,
    /// Size of the EFI system partition (FAT32), 36MiB to 4GiB in whole MiB. Default "128MiB".
    #[serde(default)]
    #[schemars(extend("default" = "128MiB"))]
    pub esp_size: Option<Written<u64>>,
    /// Serial console for GRUB and the kernel, as in `console=`. Default "ttyS0,115200n8".
    #[serde(default)]
    #[schemars(extend("default" = "ttyS0,115200n8"))]
    pub console: Option<String>,
    /// Compress the qcow2 (smaller, slower to write; qcow2 only). Default false.
    #[serde(default)]
    #[schemars(extend("default" = false))]
    pub compress: Option<bool>,
    /// EFI directory name: GRUB is also installed as \EFI\<bootloader_id>\grubx64.efi. Default: the distro name.
    #[serde(default)]
    pub bootloader_id: Option<String>,
    /// A declared partition layout, in disk order, instead of the default
    /// (BIOS boot, ESP, ext4 root). `esp_size` and `filesystem` then belong
    /// to the partitions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<DiskPartition>,
}

/// A hybrid live ISO: boots from a CD and from a USB stick (the same file
/// written with `dd`), with BIOS (El Torito and a hybrid MBR, GRUB) and UEFI
/// (an El Torito EFI image with GRUB, also a partition for USB). The root
/// tree is a compressed squashfs that Debian's live-boot mounts under a
/// writable overlay. With `config_drive` the ISO is also an OpenStack
/// config drive (volume label `config-2`) that configures the live system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IsoTarget {
    /// Firmware the ISO boots with. Default ["bios", "uefi"].
    #[serde(default)]
    #[schemars(extend("default" = ["bios", "uefi"]))]
    pub firmware: Option<Vec<Firmware>>,
    /// Compression of the squashfs root image, done on every core. Default "zstd".
    #[serde(default)]
    pub compression: SquashfsCompression,
    /// Serial console for GRUB and the kernel, as in `console=`. Default "ttyS0,115200n8".
    #[serde(default)]
    #[schemars(extend("default" = "ttyS0,115200n8"))]
    pub console: Option<String>,
    /// Volume label (ISO 9660 volume id), up to 32 characters. Default
    /// "KILN-LIVE", and "config-2" (the only one allowed) with a config drive.
    #[serde(default)]
    pub label: Option<String>,
    /// Make the ISO an OpenStack config drive that cloud-init's ConfigDrive
    /// datasource reads at boot.
    #[serde(default)]
    pub config_drive: Option<ConfigDrive>,
}

/// An Amazon EC2 machine image (AMI), as the raw disk an EBS snapshot is
/// made from: GPT with a BIOS boot partition, an EFI system partition and
/// the root, GRUB for BIOS and UEFI (EC2's `uefi-preferred` boot mode),
/// cloud-init with the Ec2 datasource first, growpart and resizefs, the NVMe
/// and ENA drivers in the initramfs, the serial console on ttyS0, time from
/// the Amazon Time Sync Service, and no baked network configuration, host
/// keys, machine-id or passwords.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmiTarget {
    /// Size of the disk and of the EBS volume made from it, in whole GiB
    /// (EBS sizes volumes in GiB), e.g. "4GiB". Instances may be given a
    /// larger root volume: cloud-init grows the root at first boot. Default "2GiB".
    #[serde(default)]
    #[schemars(extend("default" = "2GiB"))]
    pub size: Option<Written<u64>>,
    /// Root filesystem. Default "ext4".
    #[serde(default)]
    pub filesystem: Filesystem,
    /// The user cloud-init creates at first boot with the instance's key
    /// pair and passwordless sudo (its password locked). Default: the name
    /// of `[cloud_init] default_user`, else "admin" (as in Debian's AMIs).
    #[serde(default)]
    pub default_user: Option<String>,
}

impl AmiTarget {
    /// The default disk size.
    pub const DEFAULT_SIZE: u64 = 2 * crate::size::GIB;
    /// The default user when the spec names none.
    pub const DEFAULT_USER: &'static str = "admin";

    /// The disk size in bytes.
    pub fn disk_size(&self) -> u64 {
        self.size.as_ref().map_or(Self::DEFAULT_SIZE, |s| *s.get())
    }

    /// The default user: `default_user`, the spec's cloud-init default
    /// user, or "admin".
    pub fn default_user<'a>(&'a self, cloud_init: &'a CloudInit) -> &'a str {
        self.default_user
            .as_deref()
            .or(cloud_init.default_user.as_ref().map(|u| u.name.as_str()))
            .unwrap_or(Self::DEFAULT_USER)
    }
}

/// One raw image to write to a USB stick with `dd`, booting in BIOS and
/// UEFI mode: a small installer system of the spec's distro family and,
/// compressed with its sha512, the artifact of another target of the same
/// spec (`payload`). At boot the installer picks the machine's disk
/// (`kiln.target=/dev/...` on the kernel command line, else the only
/// non-removable disk large enough), refuses one that holds a partition
/// table unless `kiln.force=1`, writes the payload skipping zero blocks,
/// reads it back against its sha512, grows the last partition to the disk,
/// writes its log to the FAT partition `KILN-DATA`, and powers off or
/// reboots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsbInstallerTarget {
    /// The target of this spec whose artifact the stick installs: "disk"
    /// or "ami" (a bootable disk).
    pub payload: String,
    /// Size of the stick's image, e.g. "4GiB"; at least the payload's raw
    /// disk size. Default: what the installer and the compressed payload
    /// take, rounded up to whole MiB.
    #[serde(default)]
    pub size: Option<Written<u64>>,
    /// What the machine does once the disk is written. Default "poweroff".
    #[serde(default)]
    pub after: AfterInstall,
}

impl UsbInstallerTarget {
    /// The target kinds whose artifact is a bootable disk a stick can carry.
    pub const PAYLOADS: &'static [&'static str] = &["disk", "ami"];

    /// The declared stick size in bytes, if any.
    pub fn stick_size(&self) -> Option<u64> {
        self.size.as_ref().and_then(|s| s.parsed().ok().copied())
    }
}

/// What the installer does after a successful install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AfterInstall {
    #[default]
    Poweroff,
    Reboot,
}

impl AfterInstall {
    pub fn name(self) -> &'static str {
        match self {
            AfterInstall::Poweroff => "poweroff",
            AfterInstall::Reboot => "reboot",
        }
    }
}

/// The finalised root tree as one reproducible tarball (PAX, names sorted,
/// numeric owners, mtimes clamped to SOURCE_DATE_EPOCH), extended
/// attributes (file capabilities, SELinux labels) and POSIX ACLs kept: a
/// container root filesystem (`docker import`, `podman import`) or the root
/// of a PXE-booted machine (an NFS export or a tmpfs it is unpacked into).
/// Nothing is booted from it as it is, so the target installs nothing and
/// writes no boot loader; `/boot` stays in it for a PXE server to take the
/// kernel and initramfs from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TarTarget {
    /// Compression of the archive. Default "zstd" (on every core).
    #[serde(default)]
    pub compression: TarCompression,
    /// Compression level: zstd 1 to 19 (default 3), gzip 1 to 9 (default 6);
    /// not with "none".
    #[serde(default)]
    pub level: Option<u32>,
}

impl TarTarget {
    /// The compression level: the spec's or the compressor's default
    /// (`None` without compression).
    pub fn level(&self) -> Option<u32> {
        self.compression
            .levels()
            .map(|(default, _)| self.level.unwrap_or(default))
    }
}

/// Compressors for the tar target's archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TarCompression {
    /// Fast on every core; read by docker (23 and later), podman, GNU tar.
    #[default]
    Zstd,
    /// One core; for tools without zstd (busybox, older docker).
    Gzip,
    /// A plain tar.
    None,
}

impl TarCompression {
    pub fn name(self) -> &'static str {
        match self {
            TarCompression::Zstd => "zstd",
            TarCompression::Gzip => "gzip",
            TarCompression::None => "none",
        }
    }

    /// The file name's extension, e.g. `tar.zst`.
    pub fn extension(self) -> &'static str {
        match self {
            TarCompression::Zstd => "tar.zst",
            TarCompression::Gzip => "tar.gz",
            TarCompression::None => "tar",
        }
    }

    /// The default level and the allowed range; `None` for no compression.
    /// zstd's default is its own (3): on a 900 MiB Debian tree, 275 MB in
    /// 4.5 s on 2 cores, where level 9 gives 242 MB in 20 s.
    pub fn levels(self) -> Option<(u32, std::ops::RangeInclusive<u32>)> {
        match self {
            TarCompression::Zstd => Some((3, 1..=19)),
            TarCompression::Gzip => Some((6, 1..=9)),
            TarCompression::None => None,
        }
    }
}

/// Compressors for the squashfs root image (all in Debian's kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SquashfsCompression {
    /// Fast to make and to read (level 9), about gzip's size.
    #[default]
    Zstd,
    /// The smallest, the slowest to make.
    Xz,
    /// mksquashfs's own default.
    Gzip,
    /// The fastest, the largest.
    Lz4,
}

impl SquashfsCompression {
    /// mksquashfs's options for this compressor. zstd runs at level 9
    /// rather than mksquashfs's 15: on a Debian tree about 7 times faster,
    /// within 1% of the size of mksquashfs's default (gzip), about 12%
    /// larger than level 15.
    pub fn mksquashfs_args(self) -> &'static [&'static str] {
        match self {
            SquashfsCompression::Zstd => &["-comp", "zstd", "-Xcompression-level", "9"],
            SquashfsCompression::Xz => &["-comp", "xz"],
            SquashfsCompression::Gzip => &["-comp", "gzip"],
            SquashfsCompression::Lz4 => &["-comp", "lz4"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SquashfsCompression::Zstd => "zstd",
            SquashfsCompression::Xz => "xz",
            SquashfsCompression::Gzip => "gzip",
            SquashfsCompression::Lz4 => "lz4",
        }
    }
}

/// The OpenStack config drive an ISO carries: `openstack/latest/`
/// `meta_data.json`, `network_data.json` and `user_data` at its root.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigDrive {
    /// The node's hostname (meta_data.json `hostname` and `name`). Default:
    /// `hostname`, else the image name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The instance id (meta_data.json `uuid`); cloud-init runs its
    /// per-instance modules once per id. Default: a UUID derived from the spec.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// SSH public keys (meta_data.json `public_keys`) for the default user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
    /// A user-data file (e.g. `#cloud-config`), relative to the spec's directory.
    #[serde(default)]
    pub user_data: Option<String>,
    /// network_data.json: a file relative to the spec's directory, or the
    /// document inline (`links`, `networks`, `services`, as OpenStack writes it).
    #[serde(default)]
    pub network_data: Option<NetworkData>,
}

/// Where a config drive's network_data.json comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum NetworkData {
    /// A JSON file, relative to the spec's directory.
    File(String),
    /// The document, inline.
    Inline(serde_json::Map<String, serde_json::Value>),
}

impl IsoTarget {
    /// The default serial console.
    pub const DEFAULT_CONSOLE: &'static str = "ttyS0,115200n8";
    /// The default volume label.
    pub const DEFAULT_LABEL: &'static str = "KILN-LIVE";
    /// The label cloud-init's ConfigDrive datasource looks for.
    pub const CONFIG_DRIVE_LABEL: &'static str = "config-2";

    /// The firmware list, sorted and without duplicates; both by default.
    pub fn firmware(&self) -> Vec<Firmware> {
        Firmware::list(self.firmware.as_deref())
    }

    /// The `console=` value for the kernel and GRUB's serial terminal.
    pub fn console(&self) -> &str {
        self.console.as_deref().unwrap_or(Self::DEFAULT_CONSOLE)
    }

    /// The volume label: `config-2` with a config drive.
    pub fn label(&self) -> &str {
        match (&self.label, &self.config_drive) {
            (Some(label), _) => label,
            (None, Some(_)) => Self::CONFIG_DRIVE_LABEL,
            (None, None) => Self::DEFAULT_LABEL,
        }
    }
}

impl Spec {
    /// The top-level sections, in file order; the keys `section_json` takes.
    pub const SECTIONS: &'static [&'static str] = &[
        "image",
        "base",
        "packages",
        "files",
        "directories",
        "run",
        "users",
        "root",
        "hostname",
        "timezone",
        "locale",
        "services",
        "kernel",
        "limits",
        "cloud_init",
        "targets",
    ];

    /// The canonical JSON of one top-level section (`"packages"`, `"files"`,
    /// ...), for cache keys: the same spec gives the same JSON, byte for byte,
    /// because the model holds no hash maps and serde_json writes struct
    /// fields in declaration order. `Null` for a name not in [`Spec::SECTIONS`].
    pub fn section_json(&self, section: &str) -> serde_json::Value {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut sections)) => sections.remove(section).unwrap_or_default(),
            // The model is plain data and always serialises to an object.
            _ => serde_json::Value::Null,
        }
    }
}

impl Targets {
    /// Every target kind kiln knows, as written under `[targets.*]`.
    pub const KINDS: &'static [&'static str] = &["ovh-byol", "disk", "iso", "ami", "tar", "usb-installer"];

    /// The kinds this spec defines, in [`Targets::KINDS`] order.
    pub fn defined(&self) -> Vec<&'static str> {
        let Targets {
            ovh_byol,
            disk,
            iso,
            ami,
            tar,
            usb_installer,
        } = self;
        [
            ovh_byol.is_some(),
            disk.is_some(),
            iso.is_some(),
            ami.is_some(),
            tar.is_some(),
            usb_installer.is_some(),
        ]
        .into_iter()
        .zip(Self::KINDS)
        .filter_map(|(defined, kind)| defined.then_some(*kind))
        .collect()
    }
}

impl OvhByolTarget {
    /// The partition size: `Some(bytes)` when fixed, `None` for "auto".
    pub fn partition_size(&self) -> Option<u64> {
        fixed_size(self.size.as_ref())
    }

    /// The headroom the user asked for; `None` means the default, 25% of
    /// the content plus 256 MiB (see [`OvhByolTarget::resolved_size`]).
    pub fn headroom(&self) -> Option<Headroom> {
        self.headroom.as_ref().map(|h| *h.get())
    }

    /// The partition size to build for `content` bytes of files: the fixed
    /// size, or for "auto" the content plus headroom, rounded up to whole MiB
    /// so the partition stays aligned.
    pub fn resolved_size(&self, content: u64) -> u64 {
        self.partition_size()
            .unwrap_or_else(|| auto_size(content, self.headroom()))
    }
}

impl DiskTarget {
    /// The default EFI system partition size.
    pub const DEFAULT_ESP_SIZE: u64 = 128 * MIB;
    /// The default serial console.
    pub const DEFAULT_CONSOLE: &'static str = "ttyS0,115200n8";
    /// What the disk layout adds to the ESP: 1 MiB in front for the
    /// protective MBR and the GPT, the 1 MiB BIOS boot partition, and 1 MiB
    /// at the end for the backup GPT (keeping the end aligned).
    pub const LAYOUT_OVERHEAD: u64 = 3 * MIB;
    /// What a GPT takes besides the partitions: 1 MiB in front for the
    /// protective MBR and the table, 1 MiB at the end for the backup.
    pub const GPT_OVERHEAD: u64 = 2 * MIB;

    /// The firmware list, sorted and without duplicates; both by default.
    pub fn firmware(&self) -> Vec<Firmware> {
        Firmware::list(self.firmware.as_deref())
    }

    /// The virtual disk size: `Some(bytes)` when fixed, `None` for "auto".
    pub fn disk_size(&self) -> Option<u64> {
        fixed_size(self.size.as_ref())
    }

    /// The headroom the user asked for; `None` means the default, 25% of
    /// the content plus 256 MiB.
    pub fn headroom(&self) -> Option<Headroom> {
        self.headroom.as_ref().map(|h| *h.get())
    }

    /// The ESP size in bytes.
    pub fn esp_size(&self) -> u64 {
        self.esp_size.as_ref().map_or(Self::DEFAULT_ESP_SIZE, |s| *s.get())
    }

    /// The `console=` value for the kernel and GRUB's serial terminal.
    pub fn console(&self) -> &str {
        self.console.as_deref().unwrap_or(Self::DEFAULT_CONSOLE)
    }

    /// Bytes of the disk that are not the root partition.
    pub fn overhead(&self) -> u64 {
        self.esp_size().saturating_add(Self::LAYOUT_OVERHEAD)
    }

    /// The root filesystem size for `content` bytes of files: what a fixed
    /// disk size leaves after [`DiskTarget::overhead`], or for "auto" the
    /// content plus headroom, rounded up to whole MiB.
    pub fn resolved_root_size(&self, content: u64) -> u64 {
        match self.disk_size() {
            Some(disk) => disk.saturating_sub(self.overhead()),
            None => auto_size(content, self.headroom()),
        }
    }

    /// The virtual disk size for `content` bytes of files.
    pub fn resolved_disk_size(&self, content: u64) -> u64 {
        self.disk_size()
            .unwrap_or_else(|| self.resolved_root_size(content).saturating_add(self.overhead()))
    }
}

fn fixed_size(size: Option<&Written<Size>>) -> Option<u64> {
    match size.map(Written::get) {
        Some(Size::Bytes(bytes)) => Some(*bytes),
        Some(Size::Auto) | None => None,
    }
}

/// Content plus headroom (default 25% + 256 MiB), rounded up to whole MiB so
/// the partition stays aligned.
fn auto_size(content: u64, headroom: Option<Headroom>) -> u64 {
    let extra = match headroom {
        Some(headroom) => headroom.extra(content),
        None => Headroom::Percent(25).extra(content).saturating_add(256 * MIB),
    };
    content.saturating_add(extra).div_ceil(MIB).saturating_mul(MIB)
}

/// What a declared partition is for, parsed from its `role`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PartitionRole {
    /// GRUB's BIOS boot partition: core.img, no filesystem.
    BiosBoot,
    /// The EFI system partition, mounted at /boot/efi.
    Esp,
    /// /boot.
    Boot,
    /// /.
    Root,
    /// A swap area.
    Swap,
    /// Another filesystem, at this absolute mount point.
    Mount(String),
}

impl PartitionRole {
    /// The named roles, as written in a spec.
    pub const NAMES: &'static [&'static str] = &["bios_boot", "esp", "boot", "root", "swap"];

    /// The role `text` names: one of [`PartitionRole::NAMES`] or a path
    /// starting with `/` (which validation checks further).
    pub fn parse(text: &str) -> Option<PartitionRole> {
        Some(match text {
            "bios_boot" => PartitionRole::BiosBoot,
            "esp" => PartitionRole::Esp,
            "boot" => PartitionRole::Boot,
            "root" => PartitionRole::Root,
            "swap" => PartitionRole::Swap,
            path if path.starts_with('/') => PartitionRole::Mount(path.to_owned()),
            _ => return None,
        })
    }

    /// Where the filesystem is mounted; `None` for bios_boot and swap.
    pub fn mount_point(&self) -> Option<&str> {
        match self {
            PartitionRole::BiosBoot | PartitionRole::Swap => None,
            PartitionRole::Esp => Some("/boot/efi"),
            PartitionRole::Boot => Some("/boot"),
            PartitionRole::Root => Some("/"),
            PartitionRole::Mount(path) => Some(path),
        }
    }

    /// The filesystem a partition of this role has when `filesystem` is omitted.
    pub fn default_filesystem(&self) -> Option<PartitionFilesystem> {
        match self {
            PartitionRole::BiosBoot => None,
            PartitionRole::Esp => Some(PartitionFilesystem::Vfat),
            PartitionRole::Swap => Some(PartitionFilesystem::Swap),
            PartitionRole::Boot | PartitionRole::Root | PartitionRole::Mount(_) => Some(PartitionFilesystem::Ext4),
        }
    }
}

impl PartitionFilesystem {
    /// The name fstab and blkid use.
    pub fn name(self) -> &'static str {
        match self {
            PartitionFilesystem::Ext4 => "ext4",
            PartitionFilesystem::Xfs => "xfs",
            PartitionFilesystem::Vfat => "vfat",
            PartitionFilesystem::Swap => "swap",
        }
    }

    /// The longest label the filesystem holds, in bytes.
    pub fn max_label(self) -> usize {
        match self {
            PartitionFilesystem::Ext4 => 16,
            PartitionFilesystem::Xfs => 12,
            PartitionFilesystem::Vfat => 11,
            PartitionFilesystem::Swap => 15,
        }
    }
}

impl DiskPartition {
    /// The parsed role of a loaded spec's partition.
    ///
    /// # Panics
    ///
    /// If the role does not parse: `load` rejects such a spec.
    pub fn role(&self) -> PartitionRole {
        PartitionRole::parse(&self.role)
            .unwrap_or_else(|| panic!("kiln_spec::load rejects role `{}`; this spec was not loaded", self.role))
    }

    /// The filesystem, with the role's default.
    pub fn filesystem(&self) -> Option<PartitionFilesystem> {
        self.filesystem.or_else(|| self.role().default_filesystem())
    }

    /// The size in bytes, or `None` for the rest of the disk.
    pub fn fixed_size(&self) -> Option<u64> {
        match self.size.as_ref().map(Written::get) {
            Some(PartitionSize::Bytes(b)) => Some(*b),
            Some(PartitionSize::Rest) | None => None,
        }
    }
}
