//! Arch Linux: pacstrap and pacman (Debian's `arch-install-scripts` and
//! `pacman-package-manager`), mkinitcpio, GRUB under `/boot/grub`.
//!
//! kiln writes the pacman.conf from `[base]` (mirror, repositories,
//! signature checking against Debian's `archlinux-keyring`) into the build's
//! scratch directory; the host's pacstrap bootstraps with it, and the host's
//! pacman installs and removes with `--root` on the tree afterwards, so the
//! tree's own pacman is never needed during the build. With
//! `bootstrap = "tarball"` the verified Arch bootstrap tarball is the
//! chroot that runs pacstrap (seed 002's way), for hosts whose pacstrap is
//! unsuitable.
//!
//! No Arch mirror is reachable from kiln's build machines: the mechanics
//! (pacstrap, install, remove, listing) are tested against a local pacman
//! repository that the tests build with makepkg and repo-add
//! (`tests/families.rs`); a real Arch image has not been built here.
//! Non-goals for now: `[packages] offline`, a package download cache
//! shared between builds, initialising the image's own pacman keyring
//! (a per-machine secret: it belongs to first boot, `pacman-key --init`).

use std::path::Path;

use anyhow::{Context, Result};
use kiln_exec::cmd::shell_quote as q;
use kiln_exec::Cmd;
use kiln_spec::{ArchBootstrap, Base};

use super::{Bootloader, DistroFamily, Role};
use crate::bootstrap::{BootstrapImage, BootstrapRequest, Repo, SourceLine};
use crate::manifest::Package;
use crate::targets::ovh_byol::script::{self, ScriptError, ScriptParams};

/// The Arch family.
#[derive(Debug)]
pub struct ArchFamily;

/// Arch Linux.
pub static ARCH: ArchFamily = ArchFamily;

/// pacman's mirror when `[base] mirror` is not given.
pub const DEFAULT_MIRROR: &str = "https://geo.mirror.pkgbuild.com/$repo/os/$arch";
/// The repositories enabled by default.
pub const DEFAULT_REPOS: &[&str] = &["core", "extra"];
/// The pacman.conf kiln writes in the scratch directory.
pub const PACMAN_CONF: &str = "pacman.conf";
/// The keyring directory pacman verifies signatures with, in scratch.
const GNUPG_DIR: &str = "pacman-gnupg";

impl ArchFamily {
    /// The pacman.conf for `req`'s repositories, verifying signatures with
    /// the keyring at `gpgdir`.
    pub fn pacman_conf(req: &BootstrapRequest, gpgdir: &str) -> String {
        let gpgcheck = req.repos.iter().all(|r| r.gpgcheck);
        let arch = match req.architecture.as_str() {
            "amd64" => "x86_64",
            other => other,
        };
        let mut s = format!(
            "# Written by kiln from [base] (distro = \"arch\").\n[options]\nArchitecture = {arch}\n\
             SigLevel = {}\nLocalFileSigLevel = Optional\n",
            if gpgcheck { "Required DatabaseOptional" } else { "Never" }
        );
        if gpgcheck {
            s.push_str(&format!("GPGDir = {gpgdir}\n"));
        }
        s.push_str("ParallelDownloads = 5\n");
        for r in &req.repos {
            s.push_str(&format!("\n[{}]\nServer = {}\n", r.name, r.url));
        }
        s
    }

    fn pacman_args(tree: &Path, scratch: &Path) -> Vec<String> {
        vec![
            "--root".into(),
            tree.display().to_string(),
            "--config".into(),
            scratch.join(PACMAN_CONF).display().to_string(),
            "--dbpath".into(),
            tree.join("var/lib/pacman").display().to_string(),
            "--cachedir".into(),
            tree.join("var/cache/pacman/pkg").display().to_string(),
            "--noconfirm".into(),
        ]
    }
}

impl DistroFamily for ArchFamily {
    fn name(&self) -> &'static str {
        "arch"
    }

    fn host_tools(&self) -> &'static [&'static str] {
        &[
            "bash",
            "pacstrap",
            "pacman",
            "pacman-key",
            "arch-chroot",
            "curl",
            "sha256sum",
            "tar",
            "mount",
        ]
    }

    fn packages(&self, role: Role) -> &'static [&'static str] {
        match role {
            Role::Base => &["base"],
            Role::Kernel => &["linux"],
            Role::Initramfs => &["mkinitcpio"],
            // One package holds GRUB for BIOS and UEFI, its modules and its
            // installer; nothing conflicts, nothing is kept aside.
            Role::GrubCommon => &["grub"],
            Role::GrubBiosModules
            | Role::GrubEfiModules
            | Role::GrubBiosInstaller
            | Role::GrubEfiInstaller
            | Role::GrubInstallerDeps => &[],
            Role::EfiBootManager => &["efibootmgr"],
            Role::Raid => &["mdadm"],
            Role::Lvm => &["lvm2"],
            Role::Filesystems => &["xfsprogs", "dosfstools", "btrfs-progs"],
            Role::Fat => &["dosfstools"],
            Role::Xfs => &["xfsprogs"],
            Role::CloudInit => &["cloud-init"],
            Role::GrowRoot => &["cloud-guest-utils"],
            Role::DiskWriter => &["e2fsprogs", "util-linux", "gptfdisk", "zstd"],
            Role::SshServer => &["openssh"],
            // cloud-init renders systemd-networkd, part of systemd.
            Role::Network => &[],
            Role::Sudo => &["sudo"],
            // glibc carries locale-gen and the locale sources.
            Role::Locales => &[],
            Role::TimeZones => &["tzdata"],
            // Debian's live-boot has no Arch package (archiso is another design).
            Role::LiveBoot => &[],
            // systemd-timesyncd is part of systemd.
            Role::TimeSync => &[],
        }
    }

    fn bootloader_id(&self) -> &'static str {
        "arch"
    }

    fn bootstrap_tool(&self) -> &'static str {
        "pacstrap"
    }

    fn bootstrap_summary(&self, req: &BootstrapRequest) -> String {
        let how = match &req.image {
            Some(image) => format!("pacstrap inside the bootstrap tarball {}", image.url),
            None => "pacstrap".to_owned(),
        };
        format!(
            "{how}: Arch Linux {} ({})",
            req.architecture,
            req.repos.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
        )
    }

    fn repositories(&self, base: &Base, _spec_dir: &Path) -> Vec<Repo> {
        let Base::Arch(arch) = base else {
            return Vec::new();
        };
        let mirror = arch.mirror.as_deref().unwrap_or(DEFAULT_MIRROR);
        let gpgcheck = arch.gpgcheck.unwrap_or(true);
        let names: Vec<String> = match &arch.repos {
            Some(r) => r.clone(),
            None => DEFAULT_REPOS.iter().map(|r| (*r).to_owned()).collect(),
        };
        names
            .into_iter()
            .map(|name| Repo {
                name,
                url: mirror.trim_end_matches('/').to_owned(),
                key: None,
                gpgcheck,
            })
            .collect()
    }

    fn bootstrap_image(&self, base: &Base) -> Option<BootstrapImage> {
        match base {
            Base::Arch(arch) if arch.bootstrap == Some(ArchBootstrap::Tarball) => {
                arch.tarball.as_ref().map(|t| BootstrapImage {
                    url: t.url.clone(),
                    sha256: t.sha256.to_ascii_lowercase(),
                    signature: t.signature.clone(),
                })
            }
            _ => None,
        }
    }

    fn sources(&self, _base: &Base, _etc_apt: &Path) -> Result<Vec<SourceLine>> {
        Ok(Vec::new())
    }

    fn prepare_packages(&self, req: &BootstrapRequest, scratch: &Path) -> Result<()> {
        std::fs::create_dir_all(scratch)?;
        let gpgdir = scratch.join(GNUPG_DIR);
        std::fs::write(
            scratch.join(PACMAN_CONF),
            Self::pacman_conf(req, &gpgdir.display().to_string()),
        )?;
        if req.repos.iter().all(|r| r.gpgcheck) && !gpgdir.join("pubring.gpg").exists() {
            // Debian's archlinux-keyring puts the keys where Debian's
            // pacman-key looks for them (/usr/share/keyrings).
            for step in [&["--init"][..], &["--populate", "archlinux"][..]] {
                Cmd::new("pacman-key")
                    .arg("--gpgdir")
                    .arg(&gpgdir)
                    .args(step)
                    .run()
                    .with_context(|| format!("preparing the Arch keyring in {}", gpgdir.display()))?;
            }
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
        let mut args = match &req.image {
            None => vec![
                "-c".to_owned(),
                PACSTRAP_SCRIPT.to_owned(),
                "kiln-pacstrap".to_owned(),
                scratch.join(PACMAN_CONF).display().to_string(),
                tree.display().to_string(),
            ],
            Some(image) => {
                // Inside the tarball pacman's keyring is its own.
                let conf = Self::pacman_conf(req, "/etc/pacman.d/gnupg");
                vec![
                    "-c".to_owned(),
                    TARBALL_SCRIPT.to_owned(),
                    "kiln-arch-tarball".to_owned(),
                    scratch.display().to_string(),
                    tree.display().to_string(),
                    image.url.clone(),
                    image.sha256.clone(),
                    image.signature.clone().unwrap_or_default(),
                    conf,
                ]
            }
        };
        args.extend(req.include.iter().cloned());
        ("bash", args)
    }

    fn host_install(
        &self,
        _req: &BootstrapRequest,
        tree: &Path,
        scratch: &Path,
        packages: &[String],
    ) -> Option<(&'static str, Vec<String>)> {
        let mut args = Self::pacman_args(tree, scratch);
        args.extend(["--needed".into(), "-Sy".into()]);
        args.extend(packages.iter().cloned());
        Some(("pacman", args))
    }

    fn host_remove(
        &self,
        _req: &BootstrapRequest,
        tree: &Path,
        scratch: &Path,
        packages: &[String],
    ) -> Option<(&'static str, Vec<String>)> {
        if packages.is_empty() {
            return None;
        }
        let mut args = Self::pacman_args(tree, scratch);
        // -s: also the dependencies nothing else needs, like apt's autoremove.
        args.push("-Rns".into());
        args.extend(packages.iter().cloned());
        Some(("pacman", args))
    }

    fn install_script(&self, packages: &[&str]) -> String {
        // What a [[run]] step would write; the build installs from the host.
        format!(
            "pacman -S --noconfirm --needed {}\n",
            packages.iter().map(|p| q(p)).collect::<Vec<_>>().join(" ")
        )
    }

    fn remove_script(&self, _packages: &[String]) -> String {
        // Removed from the host ([`DistroFamily::host_remove`]).
        String::new()
    }

    fn clean_downloads_script(&self) -> &'static str {
        "rm -rf /var/cache/pacman/pkg/*\n"
    }

    fn clean_script(&self) -> &'static str {
        "rm -rf /var/cache/pacman/pkg/* /var/lib/pacman/sync/*\n"
    }

    fn offline_repo_script(&self, _packages: &[String]) -> String {
        "echo 'kiln: [packages] offline is not implemented for distro = \"arch\"' >&2\nexit 1\n".to_owned()
    }

    fn package_archive_dir(&self) -> &'static str {
        "var/cache/pacman/pkg"
    }

    fn installed_packages(&self, tree: &Path) -> Result<Vec<Package>> {
        pacman_packages(&tree.join("var/lib/pacman/local"))
    }

    fn locale_script(&self, locale: &str) -> String {
        if matches!(locale, "C.UTF-8" | "C" | "POSIX") {
            return format!("echo LANG={} > /etc/locale.conf\n", q(locale));
        }
        let charset = locale.split_once('.').map(|(_, c)| c).unwrap_or("UTF-8");
        format!(
            "echo {entry} >> /etc/locale.gen\nlocale-gen\necho LANG={l} > /etc/locale.conf\n",
            entry = q(&format!("{locale} {charset}")),
            l = q(locale)
        )
    }

    fn timezone_script(&self, zone: &str) -> String {
        zoneinfo_link(zone)
    }

    fn bootloader(&self) -> Bootloader {
        Bootloader {
            grub_dir: "/boot/grub",
            install: "grub-install",
            mkconfig: "grub-mkconfig",
        }
    }

    fn initramfs_script(&self) -> &'static str {
        "mkinitcpio -P\n"
    }

    fn initramfs_modules_script(&self, modules: &[&str]) -> String {
        // mkinitcpio reads drop-ins from /etc/mkinitcpio.conf.d (v36 and later).
        let list = modules.iter().map(|m| q(m)).collect::<Vec<_>>().join(" ");
        format!("mkdir -p /etc/mkinitcpio.conf.d\necho 'MODULES+=({list})' > /etc/mkinitcpio.conf.d/kiln.conf\n")
    }

    fn make_image_bootable(&self, params: &ScriptParams) -> Result<String, ScriptError> {
        script::try_render_arch(params)
    }
}

/// `/etc/localtime`, with a clear error when the zone is missing.
pub(super) fn zoneinfo_link(tz: &str) -> String {
    format!(
        "if [ ! -e /usr/share/zoneinfo/{tz} ]; then echo 'kiln: time zone {tz} is not in /usr/share/zoneinfo (is tzdata installed?)' >&2; exit 1; fi\n\
         ln -sf /usr/share/zoneinfo/{tz} /etc/localtime\n"
    )
}

/// pacstrap with kiln's pacman.conf: `-M` keeps the host's mirror list
/// out, `-G` the host's keyring (the signatures were checked with the
/// keyring in the config). `$1` config, `$2` tree, then the packages.
const PACSTRAP_SCRIPT: &str = r#"set -euo pipefail
conf=$1 tree=$2
shift 2
mkdir -p "$tree"
pacstrap -C "$conf" -G -M "$tree" "$@"
"#;

/// Seed 002's way: the Arch bootstrap tarball, checked against its
/// SHA-256 (and signature), extracted, given kiln's pacman.conf and used
/// as the chroot that runs pacstrap into the tree (bound at /mnt).
/// `$1` scratch, `$2` tree, `$3` URL, `$4` SHA-256, `$5` signature URL or
/// empty, `$6` the pacman.conf, then the packages.
pub const TARBALL_SCRIPT: &str = r#"set -euo pipefail
scratch=$1 tree=$2 url=$3 sha256=$4 sig=$5 conf=$6
shift 6
tarball=$scratch/archlinux-bootstrap.tar.zst
root=$scratch/arch-bootstrap
curl -fL --retry 3 -o "$tarball.part" "$url"
if ! printf '%s  %s\n' "$sha256" "$tarball.part" | sha256sum -c --quiet -; then
    echo "kiln: $url does not match [base] tarball.sha256 $sha256" >&2
    rm -f "$tarball.part"
    exit 1
fi
mv "$tarball.part" "$tarball"
if [ -n "$sig" ]; then
    curl -fL --retry 3 -o "$tarball.sig" "$sig"
    gnupg=$scratch/tarball-gnupg
    pacman-key --gpgdir "$gnupg" --init
    pacman-key --gpgdir "$gnupg" --populate archlinux
    pacman-key --gpgdir "$gnupg" --verify "$tarball.sig" "$tarball"
fi
rm -rf "$root"
mkdir -p "$root" "$tree"
tar --numeric-owner --xattrs -xf "$tarball" -C "$root" --strip-components=1
printf '%s' "$conf" > "$root/etc/pacman.conf"
mount --bind "$root" "$root"
mount --bind "$tree" "$root/mnt"
arch-chroot "$root" /bin/bash -c 'pacman-key --init && pacman-key --populate archlinux && pacstrap -G -M /mnt "$@"' kiln-pacstrap "$@"
umount "$root/mnt" "$root"
rm -rf "$root" "$tarball"
"#;

/// The packages of pacman's local database: one directory per package
/// with a `desc` file of `%KEY%` sections.
pub(crate) fn pacman_packages(local: &Path) -> Result<Vec<Package>> {
    let mut pkgs = Vec::new();
    let entries =
        std::fs::read_dir(local).with_context(|| format!("reading the pacman database {}", local.display()))?;
    for e in entries {
        let e = e?;
        let desc = e.path().join("desc");
        if !desc.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&desc).with_context(|| format!("reading {}", desc.display()))?;
        if let Some(p) = parse_desc(&text) {
            pkgs.push(p);
        }
    }
    pkgs.sort();
    Ok(pkgs)
}

fn parse_desc(text: &str) -> Option<Package> {
    let mut lines = text.lines();
    let (mut name, mut version, mut arch) = (None, None, None);
    while let Some(l) = lines.next() {
        match l {
            "%NAME%" => name = lines.next(),
            "%VERSION%" => version = lines.next(),
            "%ARCH%" => arch = lines.next(),
            _ => {}
        }
    }
    Some(Package {
        name: name?.to_owned(),
        version: version?.to_owned(),
        arch: arch.filter(|a| !a.is_empty()).map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(gpgcheck: bool) -> BootstrapRequest {
        BootstrapRequest {
            distro: kiln_spec::Distro::Arch,
            release: "rolling".into(),
            variant: String::new(),
            architecture: "amd64".into(),
            sources: vec![],
            include: vec!["base".into(), "linux".into()],
            download: vec![],
            download_dir: String::new(),
            extra_sources: vec![],
            snapshot: false,
            repos: ["core", "extra"]
                .iter()
                .map(|n| Repo {
                    name: (*n).into(),
                    url: DEFAULT_MIRROR.into(),
                    key: None,
                    gpgcheck,
                })
                .collect(),
            image: None,
        }
    }

    #[test]
    fn pacman_conf_names_the_mirror_and_the_keyring() {
        let conf = ArchFamily::pacman_conf(&req(true), "/s/gnupg");
        insta::assert_snapshot!(conf, @r#"
        # Written by kiln from [base] (distro = "arch").
        [options]
        Architecture = x86_64
        SigLevel = Required DatabaseOptional
        LocalFileSigLevel = Optional
        GPGDir = /s/gnupg
        ParallelDownloads = 5

        [core]
        Server = https://geo.mirror.pkgbuild.com/$repo/os/$arch

        [extra]
        Server = https://geo.mirror.pkgbuild.com/$repo/os/$arch
        "#);
        let never = ArchFamily::pacman_conf(&req(false), "/s/gnupg");
        assert!(
            never.contains("SigLevel = Never\n") && !never.contains("GPGDir"),
            "{never}"
        );
    }

    #[test]
    fn bootstrap_runs_pacstrap_or_the_tarball() {
        let mut r = req(true);
        let (program, args) = ARCH.bootstrap_command(&r, Path::new("/t"), Path::new("/s"), None);
        assert_eq!(program, "bash");
        assert!(args[1].contains("pacstrap -C \"$conf\" -G -M"));
        assert_eq!(&args[3..], ["/s/pacman.conf", "/t", "base", "linux"]);
        r.image = Some(BootstrapImage {
            url: "https://m.example/archlinux-bootstrap-x86_64.tar.zst".into(),
            sha256: "ab".repeat(32),
            signature: None,
        });
        let (_, args) = ARCH.bootstrap_command(&r, Path::new("/t"), Path::new("/s"), None);
        assert_eq!(args[1], TARBALL_SCRIPT);
        assert_eq!(args[6], "ab".repeat(32));
        assert!(args[8].contains("GPGDir = /etc/pacman.d/gnupg"));
        assert!(ARCH.bootstrap_summary(&r).contains("bootstrap tarball"));
    }

    #[test]
    fn tarball_script_is_shellcheck_clean() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tarball.sh");
        std::fs::write(&path, format!("#!/bin/bash\n{TARBALL_SCRIPT}{PACSTRAP_SCRIPT}")).unwrap();
        let (status, out) = Cmd::new("shellcheck").arg(&path).run_status().unwrap();
        assert!(status.success(), "{}{}", out.stdout_string(), out.tail);
    }

    #[test]
    fn reads_the_pacman_database() {
        let dir = tempfile::tempdir().unwrap();
        for (n, v) in [("zlib", "1:1.3.1-2"), ("bash", "5.2.037-1")] {
            let d = dir.path().join(format!("{n}-{v}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("desc"),
                format!("%NAME%\n{n}\n\n%VERSION%\n{v}\n\n%DESC%\nx\n\n%ARCH%\nx86_64\n"),
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("ALPM_DB_VERSION"), "9\n").unwrap();
        let p = pacman_packages(dir.path()).unwrap();
        assert_eq!(p[0].name, "bash");
        assert_eq!(p[1].version, "1:1.3.1-2");
        assert_eq!(p[1].arch.as_deref(), Some("x86_64"));
    }
}
