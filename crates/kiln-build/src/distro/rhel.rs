//! The RHEL family (Rocky Linux, AlmaLinux, RHEL 8 and 9): the host's dnf
//! (Debian's `dnf` and `rpm`) with `--installroot` and `--releasever`,
//! dracut, GRUB 2 under `/boot/grub2` with BLS entries, and an SELinux
//! relabel at first boot (`/.autorelabel`: the tree is built without
//! labels).
//!
//! The repositories and their keys come from `[[base.repos]]` only: kiln
//! writes a dnf.conf and one `.repo` file per repository into the build's
//! scratch directory (with signature checking, keys copied beside them),
//! runs dnf from the host against the tree for the bootstrap, installs and
//! removals, and leaves the same repositories in the image
//! (`/etc/yum.repos.d/kiln-<name>.repo`, keys in `/etc/pki/rpm-gpg`).
//! Debian's rpm keeps its database in `~/.rpmdb`; dnf runs with a HOME
//! whose `.rpmmacros` puts it at `/var/lib/rpm` in the tree, where the
//! image's own rpm looks.
//!
//! No Rocky, AlmaLinux or RHEL mirror is reachable from kiln's build
//! machines: the mechanics are tested against a local, signed repository
//! that the tests build with rpmbuild and createrepo_c
//! (`tests/families.rs`); a real image has not been built here. The host's
//! rpm writes a sqlite rpm database, which EL 9's rpm reads; EL 8's
//! rpm 4.14 is not known to, so an EL 8 image's database is unverified.
//! Non-goals for now: `[packages] offline`, a shared package cache.

use std::path::Path;

use anyhow::{Context, Result};
use kiln_exec::cmd::shell_quote as q;
use kiln_exec::Cmd;
use kiln_spec::{Base, RhelDistribution};

use super::arch::zoneinfo_link;
use super::{Bootloader, DistroFamily, Role};
use crate::bootstrap::{BootstrapRequest, Repo, SourceLine};
use crate::manifest::Package;
use crate::targets::ovh_byol::script::{self, ScriptError, ScriptParams};

/// The RHEL family.
#[derive(Debug)]
pub struct RhelFamily;

/// Rocky Linux, AlmaLinux and RHEL.
pub static RHEL: RhelFamily = RhelFamily;

/// Where kiln's dnf configuration lives in the scratch directory.
const DNF_DIR: &str = "dnf";

impl RhelFamily {
    /// The `.repo` text of `repo`, its key at `key` (a file: URL or the
    /// spec's own URL).
    pub fn repo_file(repo: &Repo, key: Option<&str>) -> String {
        let mut s = format!(
            "# Written by kiln from [[base.repos]].\n[{name}]\nname={name}\nbaseurl={url}\nenabled=1\ngpgcheck={check}\nrepo_gpgcheck=0\n",
            name = repo.name,
            url = repo.url,
            check = u8::from(repo.gpgcheck),
        );
        if let Some(key) = key {
            s.push_str(&format!("gpgkey={key}\n"));
        }
        s
    }

    /// Where the image keeps the key of `repo`.
    fn image_key(repo: &Repo) -> String {
        format!("/etc/pki/rpm-gpg/RPM-GPG-KEY-kiln-{}", repo.name)
    }

    fn dnf(req: &BootstrapRequest, tree: &Path, scratch: &Path, action: &[&str], packages: &[String]) -> Vec<String> {
        let mut args = vec![
            "-c".to_owned(),
            DNF_SCRIPT.to_owned(),
            "kiln-dnf".to_owned(),
            scratch.display().to_string(),
            tree.display().to_string(),
            req.release.clone(),
            match req.architecture.as_str() {
                "amd64" => "x86_64".to_owned(),
                "arm64" => "aarch64".to_owned(),
                other => other.to_owned(),
            },
        ];
        args.extend(action.iter().map(|a| (*a).to_owned()));
        args.extend(packages.iter().cloned());
        args
    }
}

/// dnf from the host on the tree. `$1` scratch, `$2` tree, `$3` release,
/// `$4` architecture, then dnf's command and the packages. The image's
/// repository files and keys (`$1/dnf/image`) are copied in afterwards.
pub const DNF_SCRIPT: &str = r#"set -euo pipefail
scratch=$1 tree=$2 release=$3 arch=$4
shift 4
export HOME=$scratch/dnf/home
mkdir -p "$tree"
dnf -y --installroot="$tree" --releasever="$release" --forcearch="$arch" \
    --config="$scratch/dnf/dnf.conf" --setopt=reposdir="$scratch/dnf/repos" \
    --setopt=install_weak_deps=False --setopt=cachedir=/var/cache/dnf \
    --setopt=keepcache=False "$@"
cp -a "$scratch/dnf/image/." "$tree/"
"#;

impl DistroFamily for RhelFamily {
    fn name(&self) -> &'static str {
        "rhel"
    }

    fn host_tools(&self) -> &'static [&'static str] {
        &["bash", "dnf", "rpm"]
    }

    fn packages(&self, role: Role) -> &'static [&'static str] {
        match role {
            // `system-release` is provided by rocky-release,
            // almalinux-release and redhat-release alike.
            Role::Base => &["basesystem", "system-release", "dnf", "systemd", "passwd", "rootfiles"],
            Role::Kernel => &["kernel"],
            Role::Initramfs => &["dracut"],
            Role::GrubCommon => &["grub2-tools"],
            // BIOS and UEFI GRUB do not conflict here: both are installed,
            // nothing is kept aside for the deploy-time install.
            Role::GrubBiosModules => &["grub2-pc", "grub2-pc-modules"],
            Role::GrubEfiModules => &["grub2-efi-x64", "grub2-efi-x64-modules", "shim-x64"],
            Role::GrubBiosInstaller | Role::GrubEfiInstaller | Role::GrubInstallerDeps => &[],
            Role::EfiBootManager => &["efibootmgr"],
            Role::Raid => &["mdadm"],
            Role::Lvm => &["lvm2"],
            // No btrfs in the RHEL family.
            Role::Filesystems => &["xfsprogs", "dosfstools"],
            Role::Fat => &["dosfstools"],
            Role::Xfs => &["xfsprogs"],
            Role::CloudInit => &["cloud-init"],
            Role::GrowRoot => &["cloud-utils-growpart"],
            Role::DiskWriter => &["e2fsprogs", "util-linux", "gdisk", "zstd"],
            Role::SshServer => &["openssh-server"],
            // cloud-init renders NetworkManager (EL 9) or ifcfg files (EL 8).
            Role::Network => &["NetworkManager"],
            Role::Sudo => &["sudo"],
            Role::Locales => &["glibc-all-langpacks"],
            Role::TimeZones => &["tzdata"],
            // Debian's live-boot has no counterpart here (dracut's dmsquash-live is another design).
            Role::LiveBoot => &[],
            // The family ships chrony, not systemd-timesyncd.
            Role::TimeSync => &[],
        }
    }

    fn bootloader_id(&self) -> &'static str {
        "rocky"
    }

    fn bootloader_id_for(&self, base: &Base) -> String {
        match base {
            Base::Rhel(r) => match r.distribution {
                RhelDistribution::Rocky => "rocky",
                RhelDistribution::Almalinux => "almalinux",
                RhelDistribution::Rhel => "redhat",
            },
            _ => self.bootloader_id(),
        }
        .to_owned()
    }

    fn bootstrap_tool(&self) -> &'static str {
        "dnf"
    }

    fn bootstrap_summary(&self, req: &BootstrapRequest) -> String {
        format!(
            "dnf --installroot {} {} {} ({})",
            req.variant,
            req.release,
            req.architecture,
            req.repos.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
        )
    }

    fn repositories(&self, base: &Base, spec_dir: &Path) -> Vec<Repo> {
        let Base::Rhel(rhel) = base else {
            return Vec::new();
        };
        rhel.repos
            .iter()
            .map(|r| Repo {
                name: r.name.clone(),
                url: r.baseurl.clone(),
                key: r.gpgkey.as_ref().map(|k| {
                    if k.contains("://") {
                        k.clone()
                    } else {
                        spec_dir.join(k).display().to_string()
                    }
                }),
                gpgcheck: r.gpgcheck.unwrap_or(true),
            })
            .collect()
    }

    fn sources(&self, _base: &Base, _etc_apt: &Path) -> Result<Vec<SourceLine>> {
        Ok(Vec::new())
    }

    fn prepare_packages(&self, req: &BootstrapRequest, scratch: &Path) -> Result<()> {
        let dir = scratch.join(DNF_DIR);
        let keys = dir.join("keys");
        let repos = dir.join("repos");
        let image_repos = dir.join("image/etc/yum.repos.d");
        let image_keys = dir.join("image/etc/pki/rpm-gpg");
        for d in [&keys, &repos, &image_repos, &image_keys, &dir.join("home")] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        std::fs::write(
            dir.join("dnf.conf"),
            "# Written by kiln.\n[main]\ngpgcheck=1\ninstallonly_limit=3\nclean_requirements_on_remove=True\n\
             best=True\nskip_if_unavailable=False\n",
        )?;
        // Debian's rpm keeps its database in ~/.rpmdb; the image's rpm
        // looks in /var/lib/rpm.
        std::fs::write(dir.join("home/.rpmmacros"), "%_dbpath /var/lib/rpm\n")?;
        for repo in &req.repos {
            let (host_key, image_key) = match &repo.key {
                Some(k) if k.contains("://") => (Some(k.clone()), Some(k.clone())),
                Some(file) => {
                    let text = std::fs::read(file)
                        .with_context(|| format!("reading the key of repository {}: {file}", repo.name))?;
                    let host = keys.join(&repo.name);
                    std::fs::write(&host, &text)?;
                    let image = Self::image_key(repo);
                    std::fs::write(dir.join("image").join(image.trim_start_matches('/')), &text)?;
                    (
                        Some(format!("file://{}", host.display())),
                        Some(format!("file://{image}")),
                    )
                }
                None => (None, None),
            };
            std::fs::write(
                repos.join(format!("{}.repo", repo.name)),
                Self::repo_file(repo, host_key.as_deref()),
            )?;
            std::fs::write(
                image_repos.join(format!("kiln-{}.repo", repo.name)),
                Self::repo_file(repo, image_key.as_deref()),
            )?;
        }
        Ok(())
    }

    fn bootstrap_command(
        &self,
        req: &BootstrapRequest,
        tree: &Path,
        scratch: &Path,
        _packages: Option<&Path>,
    ) -> (&'static str, Vec<String>) {
        ("bash", Self::dnf(req, tree, scratch, &["install"], &req.include))
    }

    fn host_install(
        &self,
        req: &BootstrapRequest,
        tree: &Path,
        scratch: &Path,
        packages: &[String],
    ) -> Option<(&'static str, Vec<String>)> {
        Some(("bash", Self::dnf(req, tree, scratch, &["install"], packages)))
    }

    fn host_remove(
        &self,
        req: &BootstrapRequest,
        tree: &Path,
        scratch: &Path,
        packages: &[String],
    ) -> Option<(&'static str, Vec<String>)> {
        if packages.is_empty() {
            return None;
        }
        Some(("bash", Self::dnf(req, tree, scratch, &["remove"], packages)))
    }

    fn install_script(&self, packages: &[&str]) -> String {
        // What a [[run]] step would write; the build installs from the host.
        format!(
            "dnf -y install {}\n",
            packages.iter().map(|p| q(p)).collect::<Vec<_>>().join(" ")
        )
    }

    fn remove_script(&self, _packages: &[String]) -> String {
        String::new()
    }

    fn clean_downloads_script(&self) -> &'static str {
        "rm -rf /var/cache/dnf/*\n"
    }

    fn clean_script(&self) -> &'static str {
        // Files written in the build carry no SELinux labels: relabel at
        // first boot (selinux-autorelabel), then reboot once.
        "rm -rf /var/cache/dnf/* /var/cache/yum/*\ntouch /.autorelabel\n"
    }

    fn offline_repo_script(&self, _packages: &[String]) -> String {
        "echo 'kiln: [packages] offline is not implemented for distro = \"rhel\"' >&2\nexit 1\n".to_owned()
    }

    fn package_archive_dir(&self) -> &'static str {
        "var/cache/dnf"
    }

    fn installed_packages(&self, tree: &Path) -> Result<Vec<Package>> {
        let out = Cmd::new("rpm")
            .arg("--root")
            .arg(tree)
            .args(["--dbpath", "/var/lib/rpm", "-qa", "--qf"])
            .arg("%{NAME}\\t%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\\t%{ARCH}\\n")
            .run_string()
            .context("listing the packages installed in the image")?;
        Ok(parse_rpm_query(&out))
    }

    fn locale_script(&self, locale: &str) -> String {
        format!("echo LANG={} > /etc/locale.conf\n", q(locale))
    }

    fn timezone_script(&self, zone: &str) -> String {
        zoneinfo_link(zone)
    }

    fn bootloader(&self) -> Bootloader {
        Bootloader {
            grub_dir: "/boot/grub2",
            install: "grub2-install",
            mkconfig: "grub2-mkconfig",
        }
    }

    fn initramfs_script(&self) -> &'static str {
        "dracut --regenerate-all --force\n"
    }

    fn initramfs_modules_script(&self, modules: &[&str]) -> String {
        let list = modules.join(" ");
        format!(
            "mkdir -p /etc/dracut.conf.d\necho {} > /etc/dracut.conf.d/90-kiln.conf\n",
            q(&format!("force_drivers+=\" {list} \""))
        )
    }

    fn make_image_bootable(&self, params: &ScriptParams) -> Result<String, ScriptError> {
        script::try_render_rhel(params)
    }
}

/// rpm's query output; the keys dnf imported (`gpg-pubkey`) are not packages.
fn parse_rpm_query(out: &str) -> Vec<Package> {
    let mut pkgs: Vec<Package> = out
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some((
                f.next()?,
                f.next()?,
                f.next().filter(|a| !a.is_empty() && *a != "(none)"),
            ))
        })
        .filter(|(name, _, _)| *name != "gpg-pubkey")
        .map(|(name, version, arch)| Package {
            name: name.to_owned(),
            version: version.to_owned(),
            arch: arch.map(str::to_owned),
        })
        .collect();
    pkgs.sort();
    pkgs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_files_check_signatures_with_the_given_key() {
        let repo = Repo {
            name: "baseos".into(),
            url: "https://dl.rockylinux.org/pub/rocky/$releasever/BaseOS/$basearch/os/".into(),
            key: Some("/spec/RPM-GPG-KEY-Rocky-8".into()),
            gpgcheck: true,
        };
        insta::assert_snapshot!(RhelFamily::repo_file(&repo, Some("file:///etc/pki/rpm-gpg/RPM-GPG-KEY-kiln-baseos")), @r"
        # Written by kiln from [[base.repos]].
        [baseos]
        name=baseos
        baseurl=https://dl.rockylinux.org/pub/rocky/$releasever/BaseOS/$basearch/os/
        enabled=1
        gpgcheck=1
        repo_gpgcheck=0
        gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-kiln-baseos
        ");
    }

    #[test]
    fn lists_packages_without_keys() {
        let out = "zlib\t1.2.11-25.el8\tx86_64\ngpg-pubkey\t6d745a60-60287f36\t(none)\n\
                   bash\t4.4.20-5.el8\tx86_64\nshim-x64\t0:15.8-3\tx86_64\ntzdata\t2024a-1.el8\tnoarch\n";
        let p = parse_rpm_query(out);
        assert_eq!(
            p.iter()
                .map(|p| (p.name.as_str(), p.arch.as_deref().unwrap_or("?")))
                .collect::<Vec<_>>(),
            [
                ("bash", "x86_64"),
                ("shim-x64", "x86_64"),
                ("tzdata", "noarch"),
                ("zlib", "x86_64")
            ]
        );
    }

    #[test]
    fn the_distribution_names_the_efi_directory() {
        let base: kiln_spec::Spec = toml::from_str(
            "[image]\nname='x'\nversion='1'\n[base]\ndistro='rhel'\ndistribution='almalinux'\nrelease='9'\nrepos=[]\n",
        )
        .unwrap();
        assert_eq!(RHEL.bootloader_id_for(&base.base), "almalinux");
        assert_eq!(RHEL.bootloader().mkconfig, "grub2-mkconfig");
    }

    #[test]
    fn dnf_script_is_shellcheck_clean() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dnf.sh");
        std::fs::write(&path, format!("#!/bin/bash\n{DNF_SCRIPT}")).unwrap();
        let (status, out) = Cmd::new("shellcheck").arg(&path).run_status().unwrap();
        assert!(status.success(), "{}{}", out.stdout_string(), out.tail);
    }
}
