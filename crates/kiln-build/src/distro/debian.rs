//! Debian and Ubuntu: mmdebstrap, apt and dpkg, initramfs-tools and GRUB
//! under `/boot/grub`. The two differ in their archive (Ubuntu has no
//! default mirror on a Debian host and needs its own keyring), kernel
//! package, network stack and EFI directory name.

use std::path::Path;

use anyhow::{Context, Result};
use kiln_exec::cmd::shell_quote as q;
use kiln_exec::Cmd;
use kiln_spec::Base;

use super::{Bootloader, DistroFamily, Role, OFFLINE_REPO};
use crate::bootstrap::{self, BootstrapRequest, SourceLine};
use crate::manifest::Package;
use crate::targets::ovh_byol::script::{self, ScriptError, ScriptParams};

/// An apt-based family: what Debian and Ubuntu share is code, what differs
/// is data.
#[derive(Debug)]
pub struct AptFamily {
    name: &'static str,
    kernel: &'static [&'static str],
    network: &'static [&'static str],
    /// The archive key mmdebstrap is given, where the host's apt does not
    /// already trust the archive.
    keyring: Option<&'static str>,
}

/// Debian, bootstrapped with mmdebstrap from the host's own mirror by default.
pub static DEBIAN: AptFamily = AptFamily {
    name: "debian",
    kernel: &["linux-image-amd64"],
    // cloud-init's renderer on Debian is ifupdown.
    network: &["ifupdown", "isc-dhcp-client"],
    keyring: None,
};

/// Ubuntu, bootstrapped with mmdebstrap and ubuntu-keyring from an explicit mirror.
pub static UBUNTU: AptFamily = AptFamily {
    name: "ubuntu",
    kernel: &["linux-image-generic"],
    // cloud-init renders netplan on Ubuntu.
    network: &["netplan.io"],
    keyring: Some(UBUNTU_KEYRING),
};

/// Where Debian's `ubuntu-keyring` package puts Ubuntu's archive key.
const UBUNTU_KEYRING: &str = "/usr/share/keyrings/ubuntu-archive-keyring.gpg";

/// Roles both families fill with the same packages.
fn common_packages(role: Role) -> &'static [&'static str] {
    match role {
        Role::Kernel | Role::Network | Role::Base => &[],
        // zstd keeps update-initramfs from falling back to gzip.
        Role::Initramfs => &["initramfs-tools", "zstd"],
        Role::GrubCommon => &["grub2-common"],
        Role::GrubBiosModules => &["grub-pc-bin"],
        Role::GrubEfiModules => &["grub-efi-amd64-bin"],
        Role::GrubBiosInstaller => &["grub-pc"],
        Role::GrubEfiInstaller => &["grub-efi-amd64"],
        // A dependency of both installer packages, which may be installed offline.
        Role::GrubInstallerDeps => &["ucf"],
        Role::EfiBootManager => &["efibootmgr"],
        Role::Raid => &["mdadm"],
        Role::Lvm => &["lvm2"],
        Role::Filesystems => &["xfsprogs", "dosfstools", "btrfs-progs"],
        Role::Fat => &["dosfstools"],
        Role::Xfs => &["xfsprogs"],
        Role::CloudInit => &["cloud-init"],
        Role::GrowRoot => &["cloud-guest-utils"],
        Role::DiskWriter => &["e2fsprogs", "fdisk", "gdisk", "zstd"],
        Role::SshServer => &["openssh-server"],
        Role::Sudo => &["sudo"],
        Role::LiveBoot => &["live-boot"],
        Role::Locales => &["locales"],
        Role::TimeZones => &["tzdata"],
        Role::TimeSync => &["systemd-timesyncd"],
    }
}

impl DistroFamily for AptFamily {
    fn name(&self) -> &'static str {
        self.name
    }

    fn host_tools(&self) -> &'static [&'static str] {
        &["mmdebstrap", "dpkg-query"]
    }

    fn packages(&self, role: Role) -> &'static [&'static str] {
        match role {
            Role::Kernel => self.kernel,
            Role::Network => self.network,
            other => common_packages(other),
        }
    }

    fn bootloader_id(&self) -> &'static str {
        self.name
    }

    fn sources(&self, base: &Base, etc_apt: &Path) -> Result<Vec<SourceLine>> {
        bootstrap::resolve_sources(base, &bootstrap::host_sources(etc_apt))
    }

    fn bootstrap_command(
        &self,
        req: &BootstrapRequest,
        tree: &Path,
        scratch: &Path,
        packages: Option<&Path>,
    ) -> (&'static str, Vec<String>) {
        let keyring = self.keyring.map(|k| format!("--keyring={k}"));
        let args = keyring
            .into_iter()
            .chain(bootstrap::mmdebstrap_args(req, tree, scratch, packages))
            .collect();
        ("mmdebstrap", args)
    }

    fn bootstrap_env(&self) -> &'static [(&'static str, &'static str)] {
        bootstrap::MMDEBSTRAP_ENV
    }

    fn bootstrap_tool(&self) -> &'static str {
        "mmdebstrap"
    }

    fn bootstrap_summary(&self, req: &BootstrapRequest) -> String {
        format!(
            "mmdebstrap {} {} (variant {}, {})",
            req.release,
            req.architecture,
            req.variant,
            req.sources
                .iter()
                .map(|s| s.suite.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    fn install_script(&self, packages: &[&str]) -> String {
        apt_install(packages)
    }

    fn remove_script(&self, packages: &[String]) -> String {
        apt_purge(packages)
    }

    fn clean_downloads_script(&self) -> &'static str {
        "apt-get clean"
    }

    fn clean_script(&self) -> &'static str {
        APT_CLEAN
    }

    fn offline_repo_script(&self, packages: &[String]) -> String {
        apt_offline_repo(packages)
    }

    fn package_archive_dir(&self) -> &'static str {
        "var/cache/apt/archives"
    }

    fn installed_packages(&self, tree: &Path) -> Result<Vec<Package>> {
        dpkg_packages(tree)
    }

    fn locale_script(&self, locale: &str) -> String {
        debian_locale(locale)
    }

    fn timezone_script(&self, zone: &str) -> String {
        debian_timezone(zone)
    }

    fn bootloader(&self) -> Bootloader {
        GRUB
    }

    fn initramfs_script(&self) -> &'static str {
        UPDATE_INITRAMFS
    }

    fn initramfs_modules_script(&self, modules: &[&str]) -> String {
        initramfs_tools_modules(modules)
    }

    fn make_image_bootable(&self, params: &ScriptParams) -> Result<String, ScriptError> {
        script::try_render_debian(params)
    }
}

const GRUB: Bootloader = Bootloader {
    grub_dir: "/boot/grub",
    install: "grub-install",
    mkconfig: "grub-mkconfig",
};

const UPDATE_INITRAMFS: &str = "update-initramfs -u -k all\n";

/// initramfs-tools copies the modules listed in /etc/initramfs-tools/modules
/// (with their dependencies) into every initramfs and loads them early.
fn initramfs_tools_modules(modules: &[&str]) -> String {
    let mut s = String::from("mkdir -p /etc/initramfs-tools\ntouch /etc/initramfs-tools/modules\n");
    for m in modules {
        let m = q(m);
        s.push_str(&format!(
            "grep -qx {m} /etc/initramfs-tools/modules || echo {m} >> /etc/initramfs-tools/modules\n"
        ));
    }
    s
}

/// apt's downloaded archives and lists, and dpkg's and debconf's backups.
const APT_CLEAN: &str = "apt-get clean
find /var/lib/apt/lists -mindepth 1 -maxdepth 1 ! -name '_var_lib_kiln_offline_*' -exec rm -rf {} +
mkdir -p /var/lib/apt/lists/partial
rm -f /var/cache/debconf/*-old /var/lib/dpkg/*-old
";

/// A flat apt repository (`deb file:DIR ./`): what installing `packages`
/// would download given what the tree has (apt resolves it), plus the named
/// packages themselves even when installed; a `Packages` index as
/// dpkg-scanpackages writes it (each package's control fields, then
/// `Filename`, `Size`, `SHA256`), an unsigned `Release` with its hash, and
/// a deb822 source marked trusted, since the files came through the
/// build's authenticated apt. The lists are refreshed once more so that the
/// image carries the repository's lists (the cleanup keeps them).
fn apt_offline_repo(packages: &[String]) -> String {
    let names = packages.iter().map(|p| q(p)).collect::<Vec<_>>().join(" ");
    format!(
        r#"set -eu
export LC_ALL=C
repo={repo}
rm -rf "$repo"
mkdir -p "$repo/partial"
apt-get update
apt-get install -y --no-install-recommends --download-only -o Dir::Cache::archives="$repo" {names}
cd "$repo"
apt-get download {names}
rm -rf "$repo/partial" "$repo/lock"
: > Packages
for deb in *.deb; do
  dpkg-deb --field "$deb" >> Packages
  printf 'Filename: ./%s
Size: %s
SHA256: %s

' "$deb" "$(stat -c %s "$deb")" "$(sha256sum "$deb" | cut -d' ' -f1)" >> Packages
done
date=$(date -u -R -d "@${{SOURCE_DATE_EPOCH:-$(date +%s)}}")
{{
  printf 'Origin: kiln
Label: kiln offline packages
Date: %s
SHA256:
' "$date"
  printf ' %s %s Packages
' "$(sha256sum Packages | cut -d' ' -f1)" "$(stat -c %s Packages)"
}} > Release
cat > /etc/apt/sources.list.d/kiln-offline.sources <<'KILN_SOURCE'
# Written by kiln ([packages] offline): packages carried in the image,
# installable with apt-get without a network.
Types: deb
URIs: file:{repo}
Suites: ./
Trusted: yes
KILN_SOURCE
apt-get update
echo "kiln: offline repository: $(ls *.deb | wc -l) packages, $(du -sh . | cut -f1)"
"#,
        repo = OFFLINE_REPO,
    )
}

/// Installs from the lists the bootstrap kept, refreshing them if they are
/// stale (a package added long after the cached bootstrap).
fn apt_install(packages: &[&str]) -> String {
    let names = packages.join(" ");
    format!(
        "apt-get install -y --no-install-recommends {names} || \
         {{ apt-get update && apt-get install -y --no-install-recommends {names}; }}"
    )
}

fn apt_purge(packages: &[String]) -> String {
    if packages.is_empty() {
        return String::new();
    }
    format!(
        "apt-get purge -y {}\n",
        packages.iter().map(|p| q(p)).collect::<Vec<_>>().join(" ")
    )
}

fn debian_timezone(tz: &str) -> String {
    format!(
        "if [ ! -e /usr/share/zoneinfo/{tz} ]; then echo 'kiln: time zone {tz} is not in /usr/share/zoneinfo (is tzdata installed?)' >&2; exit 1; fi\n\
         ln -sf /usr/share/zoneinfo/{tz} /etc/localtime\necho {qtz} > /etc/timezone\n",
        tz = tz,
        qtz = q(tz)
    )
}

fn debian_locale(locale: &str) -> String {
    if locale == "C.UTF-8" || locale == "C" || locale == "POSIX" {
        format!("echo LANG={} > /etc/default/locale\n", q(locale))
    } else {
        let charset = locale.split_once('.').map(|(_, c)| c).unwrap_or("UTF-8");
        format!(
            "if ! command -v locale-gen >/dev/null; then echo 'kiln: locale {l} needs the locales package' >&2; exit 1; fi\n\
             echo {entry} >> /etc/locale.gen\nlocale-gen\nupdate-locale LANG={l}\n",
            l = q(locale),
            entry = q(&format!("{locale} {charset}"))
        )
    }
}

fn dpkg_packages(tree: &Path) -> Result<Vec<Package>> {
    let out = Cmd::new("dpkg-query")
        .arg(format!("--admindir={}", tree.join("var/lib/dpkg").display()))
        .args([
            "-W",
            "-f",
            "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n",
        ])
        .run_string()
        .context("listing the packages installed in the image")?;
    Ok(parse_dpkg_query(&out))
}

fn parse_dpkg_query(out: &str) -> Vec<Package> {
    let mut pkgs: Vec<Package> = out
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let status = f.next()?;
            let name = f.next()?;
            let version = f.next()?;
            let arch = f.next().filter(|a| !a.is_empty());
            status.starts_with("ii").then(|| Package {
                name: name.to_owned(),
                version: version.to_owned(),
                arch: arch.map(str::to_owned),
            })
        })
        .collect();
    pkgs.sort();
    pkgs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_installed_packages() {
        let out =
            "ii \tbash\t5.2.15-2+b7\tamd64\nrc \told\t1.0\tall\nii \tapt\t2.6.1\tamd64\nii \tdebconf\t1.5.82\tall\n";
        let arch = |a: &str| Some(a.to_owned());
        assert_eq!(
            parse_dpkg_query(out),
            [
                Package {
                    name: "apt".into(),
                    version: "2.6.1".into(),
                    arch: arch("amd64"),
                },
                Package {
                    name: "bash".into(),
                    version: "5.2.15-2+b7".into(),
                    arch: arch("amd64"),
                },
                Package {
                    name: "debconf".into(),
                    version: "1.5.82".into(),
                    arch: arch("all"),
                }
            ]
        );
    }

    #[test]
    fn ubuntu_bootstraps_with_its_own_keyring() {
        let req = BootstrapRequest {
            distro: kiln_spec::Distro::Ubuntu,
            release: "noble".into(),
            variant: "important".into(),
            architecture: "amd64".into(),
            sources: vec![SourceLine {
                uri: "http://archive.ubuntu.example/ubuntu".into(),
                suite: "noble".into(),
                components: vec!["main".into()],
            }],
            include: vec!["linux-image-generic".into()],
            download: vec![],
            download_dir: String::new(),
            extra_sources: vec![],
            snapshot: false,
            repos: vec![],
            image: None,
        };
        let (program, args) = UBUNTU.bootstrap_command(&req, Path::new("/t"), Path::new("/s"), None);
        assert_eq!(program, "mmdebstrap");
        assert_eq!(args[0], format!("--keyring={UBUNTU_KEYRING}"));
        assert!(args.iter().any(|a| a == "noble"));
        let (_, debian) = DEBIAN.bootstrap_command(&req, Path::new("/t"), Path::new("/s"), None);
        assert!(!debian.iter().any(|a| a.starts_with("--keyring")));
        // One initramfs, made once every package is configured.
        assert_eq!(DEBIAN.bootstrap_env(), [("INITRD", "No")]);
        let hook = debian
            .iter()
            .find(|a| a.contains("update-initramfs"))
            .expect("a hook that makes the initramfs");
        assert!(
            hook.starts_with("--customize-hook=chroot \"$1\" env -u INITRD sh -ec '"),
            "{hook}"
        );
        assert!(
            hook.contains("update-initramfs -c -k \"$v\"; linux-update-symlinks install"),
            "{hook}"
        );
        assert_eq!(UBUNTU.packages(Role::Kernel), ["linux-image-generic"]);
        assert_eq!(UBUNTU.bootloader_id(), "ubuntu");
    }

    #[test]
    fn purges_nothing_without_packages() {
        assert_eq!(apt_purge(&[]), "");
        assert_eq!(apt_purge(&["nano".into()]), "apt-get purge -y nano\n");
    }
}
