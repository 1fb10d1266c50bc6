//! Distribution families: everything the build does differently per
//! family, behind the [`DistroFamily`] trait. The planner, the executor,
//! customisation and the targets ask the family for package names by
//! role, the bootstrap command, package installation, removal and listing,
//! locale and time zone setup, the bootloader layout, initramfs
//! regeneration and the `make_image_bootable.sh` template; none of them
//! names a package manager. Adding a family is its module and one line of
//! [`family`] (plus its value of `[base] distro` in kiln-spec).

mod arch;
mod debian;
mod rhel;

use std::fmt::Debug;
use std::path::Path;

use anyhow::Result;
use kiln_spec::{Base, Distro};

use crate::bootstrap::{BootstrapImage, BootstrapRequest, Repo, SourceLine};
use crate::manifest::Package;

pub use arch::{ArchFamily, ARCH};
pub use debian::{AptFamily, DEBIAN, UBUNTU};
pub use rhel::{RhelFamily, RHEL};

/// The family that builds `[base] distro`.
pub fn family(distro: Distro) -> &'static dyn DistroFamily {
    match distro {
        Distro::Debian => &DEBIAN,
        Distro::Ubuntu => &UBUNTU,
        Distro::Arch => &ARCH,
        Distro::Rhel => &RHEL,
    }
}

/// What a package is needed for; each family names its own packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// What every tree of the family needs beyond its bootstrap's own
    /// minimum (Arch's `base`); nothing for apt, whose variant decides it.
    Base,
    /// The kernel, when the spec names none.
    Kernel,
    /// Builds the initramfs, with its preferred compressor.
    Initramfs,
    /// GRUB's common tools (update-grub on kernel upgrades).
    GrubCommon,
    /// GRUB's BIOS modules, without a boot-device-hungry installer package.
    GrubBiosModules,
    /// GRUB's UEFI modules, likewise.
    GrubEfiModules,
    /// GRUB's BIOS installer package (conflicts with the UEFI one).
    GrubBiosInstaller,
    /// GRUB's UEFI installer package (conflicts with the BIOS one).
    GrubEfiInstaller,
    /// What the installer packages need that the modules do not.
    GrubInstallerDeps,
    /// UEFI boot entries.
    EfiBootManager,
    /// Software RAID.
    Raid,
    /// LVM.
    Lvm,
    /// Tools for the filesystems a server's installer may create.
    Filesystems,
    /// FAT tools (the ESP's fsck).
    Fat,
    /// XFS tools (fsck.xfs for the initramfs, xfs_growfs for cloud-init).
    Xfs,
    /// cloud-init.
    CloudInit,
    /// Grows the root partition at first boot.
    GrowRoot,
    /// What an installer writes a disk image with and checks it by: ext4
    /// and partition table tools (sfdisk, sgdisk), zstd.
    DiskWriter,
    /// The SSH server.
    SshServer,
    /// What cloud-init renders the network configuration for.
    Network,
    /// sudo.
    Sudo,
    /// Locales other than C.
    Locales,
    /// The time zone database.
    TimeZones,
    /// Boots the tree as a live system from a squashfs image (the initramfs part).
    LiveBoot,
    /// An SNTP client that targets point at their cloud's time server:
    /// systemd-timesyncd (configured in `/etc/systemd/timesyncd.conf.d`).
    TimeSync,
}

/// Where and how the family's GRUB lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bootloader {
    /// GRUB's directory, `/boot/grub` or `/boot/grub2`.
    pub grub_dir: &'static str,
    /// `grub-install` or `grub2-install`.
    pub install: &'static str,
    /// `grub-mkconfig` or `grub2-mkconfig`.
    pub mkconfig: &'static str,
}

/// Where `[packages] offline` puts its local package repository.
pub const OFFLINE_REPO: &str = "/var/lib/kiln/offline";

/// A distribution family.
pub trait DistroFamily: Send + Sync + Debug {
    /// The `[base] distro` value.
    fn name(&self) -> &'static str;
    /// Programs the family's bootstrap and package queries run on the host.
    fn host_tools(&self) -> &'static [&'static str];
    /// The packages that fill `role`.
    fn packages(&self, role: Role) -> &'static [&'static str];
    /// The EFI directory name (`grub-install --bootloader-id`) by default.
    fn bootloader_id(&self) -> &'static str;
    /// The EFI directory name for `base`, where the family's distributions
    /// differ (Rocky's `rocky`, AlmaLinux's `almalinux`).
    fn bootloader_id_for(&self, base: &Base) -> String {
        let _ = base;
        self.bootloader_id().to_owned()
    }
    /// The program whose version is an input of the bootstrap stage.
    fn bootstrap_tool(&self) -> &'static str;
    /// One line saying what the bootstrap does, for the plan.
    fn bootstrap_summary(&self, req: &BootstrapRequest) -> String;
    /// The package repositories of a family without apt sources; keys
    /// named by file are resolved against `spec_dir`.
    fn repositories(&self, base: &Base, spec_dir: &Path) -> Vec<Repo> {
        let _ = (base, spec_dir);
        Vec::new()
    }
    /// A tree the bootstrap runs inside, if `base` asks for one.
    fn bootstrap_image(&self, base: &Base) -> Option<BootstrapImage> {
        let _ = base;
        None
    }
    /// Writes what the bootstrap and the host-side package commands read
    /// (a pacman.conf, dnf repository files and keys) into `scratch`.
    fn prepare_packages(&self, req: &BootstrapRequest, scratch: &Path) -> Result<()> {
        let _ = (req, scratch);
        Ok(())
    }
    /// For a family whose package manager works on a root from outside
    /// (pacman `--root`, `dnf --installroot`): the program and arguments
    /// that install `packages` into `tree` from the host. `None`: the
    /// build runs [`DistroFamily::install_script`] in a chroot.
    fn host_install(
        &self,
        req: &BootstrapRequest,
        tree: &Path,
        scratch: &Path,
        packages: &[String],
    ) -> Option<(&'static str, Vec<String>)> {
        let _ = (req, tree, scratch, packages);
        None
    }
    /// Like [`DistroFamily::host_install`], removing `packages`; `None`:
    /// the removal is [`DistroFamily::remove_script`], in the chroot.
    fn host_remove(
        &self,
        req: &BootstrapRequest,
        tree: &Path,
        scratch: &Path,
        packages: &[String],
    ) -> Option<(&'static str, Vec<String>)> {
        let _ = (req, tree, scratch, packages);
        None
    }
    /// The package sources of a build: the spec's mirror or snapshot, else
    /// the host's own mirror from `etc_apt` (or the family's equivalent).
    fn sources(&self, base: &Base, etc_apt: &Path) -> Result<Vec<SourceLine>>;
    /// The program and arguments that bootstrap `req` into `tree`;
    /// `scratch` holds generated files, `packages` is the shared package
    /// download cache.
    fn bootstrap_command(
        &self,
        req: &BootstrapRequest,
        tree: &Path,
        scratch: &Path,
        packages: Option<&Path>,
    ) -> (&'static str, Vec<String>);
    /// Environment variables [`DistroFamily::bootstrap_command`] runs with.
    fn bootstrap_env(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }
    /// Shell that installs `packages` in a chroot of a bootstrapped tree.
    fn install_script(&self, packages: &[&str]) -> String;
    /// Shell that removes (purges) `packages` in a chroot.
    fn remove_script(&self, packages: &[String]) -> String;
    /// Shell that drops downloaded package files (and keeps the lists a
    /// later `[[run]]` step may install from).
    fn clean_downloads_script(&self) -> &'static str;
    /// Shell that drops downloaded packages, package lists and the package
    /// manager's backups: the finished image's part of the cleanup. The
    /// lists of the [`OFFLINE_REPO`] stay, so that its packages install
    /// without a network and without a refresh.
    fn clean_script(&self) -> &'static str;
    /// Shell that fills the [`OFFLINE_REPO`] with `packages` and every
    /// dependency the tree lacks, indexes it and adds a package source for
    /// it (`[packages] offline`); runs in a chroot with the network.
    fn offline_repo_script(&self, packages: &[String]) -> String;
    /// Where downloaded package files land in the tree (relative).
    fn package_archive_dir(&self) -> &'static str;
    /// The packages installed in `tree`, sorted by name.
    fn installed_packages(&self, tree: &Path) -> Result<Vec<Package>>;
    /// Shell that makes `locale` the system locale.
    fn locale_script(&self, locale: &str) -> String;
    /// Shell that makes `zone` the system time zone.
    fn timezone_script(&self, zone: &str) -> String;
    /// GRUB's layout and commands.
    fn bootloader(&self) -> Bootloader;
    /// Shell that regenerates the initramfs of every installed kernel.
    fn initramfs_script(&self) -> &'static str;
    /// Shell that makes every initramfs generated after it hold and load
    /// the kernel modules `modules` (it does not regenerate one).
    fn initramfs_modules_script(&self, modules: &[&str]) -> String;
    /// `/root/.ovh/make_image_bootable.sh` for this family, or why the
    /// parameters are not acceptable.
    fn make_image_bootable(
        &self,
        params: &crate::targets::ovh_byol::script::ScriptParams,
    ) -> Result<String, crate::targets::ovh_byol::script::ScriptError>;
}

/// The packages of every role in `roles`, as owned strings.
/// The command that bootstraps `req` into `tree` with `family`'s tool, in
/// a mount namespace of its own (so no mount outlives it), with the
/// family's [`DistroFamily::bootstrap_env`]; also the program's name, for
/// messages.
pub fn bootstrap_cmd(
    family: &dyn DistroFamily,
    req: &BootstrapRequest,
    tree: &Path,
    scratch: &Path,
    packages: Option<&Path>,
) -> (&'static str, kiln_exec::cmd::Cmd) {
    let (program, args) = family.bootstrap_command(req, tree, scratch, packages);
    let mut cmd = kiln_exec::cmd::Cmd::in_mount_namespace(program).args(&args);
    for (key, value) in family.bootstrap_env() {
        cmd = cmd.env(key, value);
    }
    (program, cmd)
}

pub fn packages_for(family: &dyn DistroFamily, roles: &[Role]) -> Vec<String> {
    roles
        .iter()
        .flat_map(|r| family.packages(*r))
        .map(|p| (*p).to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLES: &[Role] = &[
        Role::Base,
        Role::Kernel,
        Role::Initramfs,
        Role::GrubCommon,
        Role::GrubBiosModules,
        Role::GrubEfiModules,
        Role::GrubBiosInstaller,
        Role::GrubEfiInstaller,
        Role::GrubInstallerDeps,
        Role::EfiBootManager,
        Role::Raid,
        Role::Lvm,
        Role::Filesystems,
        Role::Fat,
        Role::Xfs,
        Role::CloudInit,
        Role::GrowRoot,
        Role::DiskWriter,
        Role::SshServer,
        Role::Network,
        Role::Sudo,
        Role::Locales,
        Role::TimeZones,
        Role::LiveBoot,
        Role::TimeSync,
    ];

    /// The roles a family fills with nothing, on purpose (see each
    /// family's `packages`).
    fn without_packages(distro: Distro) -> &'static [Role] {
        use Role::*;
        match distro {
            Distro::Debian | Distro::Ubuntu => &[Base],
            Distro::Arch => &[
                GrubBiosModules,
                GrubEfiModules,
                GrubBiosInstaller,
                GrubEfiInstaller,
                GrubInstallerDeps,
                Network,
                Locales,
                LiveBoot,
                TimeSync,
            ],
            Distro::Rhel => &[
                GrubBiosInstaller,
                GrubEfiInstaller,
                GrubInstallerDeps,
                LiveBoot,
                TimeSync,
            ],
        }
    }

    #[test]
    fn every_family_names_a_package_for_every_role_it_has() {
        for distro in [Distro::Debian, Distro::Ubuntu, Distro::Arch, Distro::Rhel] {
            let f = family(distro);
            for role in ROLES {
                let empty = without_packages(distro).contains(role);
                assert_eq!(
                    f.packages(*role).is_empty(),
                    empty,
                    "{}: {role:?} should {}have packages",
                    f.name(),
                    if empty { "not " } else { "" }
                );
            }
            assert_eq!(serde_json::to_value(distro).unwrap(), f.name());
        }
    }
}
