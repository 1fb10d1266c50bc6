//! The registry of every external program kiln may run, with the Debian
//! package that provides it. `kiln doctor` prints this table, and [`crate::Cmd`]
//! refuses programs that are not listed, so the table cannot drift from the code.

use std::path::PathBuf;

/// An external program kiln calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    /// Name looked up on `PATH`.
    pub name: &'static str,
    /// Debian package that ships it.
    pub package: &'static str,
    /// What kiln uses it for, shown by `kiln doctor`.
    pub purpose: &'static str,
    /// Needed only by the test suites, not by `kiln build`.
    pub test_only: bool,
}

const fn tool(name: &'static str, package: &'static str, purpose: &'static str) -> Tool {
    Tool {
        name,
        package,
        purpose,
        test_only: false,
    }
}

const fn test_tool(name: &'static str, package: &'static str, purpose: &'static str) -> Tool {
    Tool {
        name,
        package,
        purpose,
        test_only: true,
    }
}

/// Every program kiln runs. Keep sorted by purpose group, then name.
pub const TOOLS: &[Tool] = &[
    tool("mmdebstrap", "mmdebstrap", "bootstrap Debian/Ubuntu root trees"),
    tool(
        "unshare",
        "util-linux",
        "private mount namespaces for chroots and mounts",
    ),
    tool("chroot", "coreutils", "run customisation steps inside the image tree"),
    tool("sh", "dash", "run generated helper scripts"),
    tool("dpkg-query", "dpkg", "list the packages installed in the image"),
    tool("mke2fs", "e2fsprogs", "create ext4 filesystems populated from the tree"),
    tool(
        "debugfs",
        "e2fsprogs",
        "read ext4 without mounting; normalise inode times for reproducible images",
    ),
    tool("mkfs.xfs", "xfsprogs", "create XFS filesystems"),
    tool("xfs_db", "xfsprogs", "read XFS filesystems without mounting them"),
    tool(
        "mount",
        "mount",
        "loop-mount filesystems that cannot be populated from a directory",
    ),
    tool("losetup", "mount", "attach disk files to loop devices"),
    tool("qemu-img", "qemu-utils", "convert and compress disk images"),
    tool(
        "grub-mkimage",
        "grub-common",
        "build GRUB's BIOS core.img and UEFI image without a device",
    ),
    tool(
        "qemu-system-x86_64",
        "qemu-system-x86",
        "boot images to test them (BIOS, or UEFI with ovmf)",
    ),
    tool(
        "socat",
        "socat",
        "connect a booted guest's forwarded address to a service on the host's loopback (QEMU runs it)",
    ),
    tool("ssh", "openssh-client", "log in to a booted guest (kiln ssh)"),
    tool(
        "ssh-keygen",
        "openssh-client",
        "make the throwaway key kiln ssh puts in the guest's seed; sign SHA512SUMS (--sign-key FILE) and check it (kiln verify)",
    ),
    tool(
        "ssh-add",
        "openssh-client",
        "check that ssh-agent holds a --sign-key SSH key that has a passphrase",
    ),
    tool(
        "gpg",
        "gpg",
        "sign SHA512SUMS with an OpenPGP key (--sign-key ID); tests: sign the local test repositories",
    ),
    tool(
        "gpgv",
        "gpgv",
        "check an OpenPGP signature of SHA512SUMS against a keyring (kiln verify --gpg-keyring)",
    ),
    tool(
        "git",
        "git",
        "record the commit of the spec's repository and its time (SOURCE_DATE_EPOCH)",
    ),
    test_tool("sfdisk", "fdisk", "oracle: verify partition tables"),
    test_tool("e2fsck", "e2fsprogs", "oracle: verify ext4 filesystems"),
    test_tool("xfs_repair", "xfsprogs", "oracle: verify XFS filesystems"),
    test_tool("blkid", "util-linux", "oracle: read filesystem labels and UUIDs"),
    test_tool("partx", "util-linux", "tests: create partition nodes for loop devices"),
    test_tool("shellcheck", "shellcheck", "tests: lint generated shell scripts"),
    test_tool("zstd", "zstd", "tests: the usb-installer's zstd reads the payload kiln compresses"),
    tool(
        "bash",
        "bash",
        "run the Arch and RHEL-family bootstrap scripts; tests: run functions of generated bash scripts",
    ),
    tool(
        "cp",
        "coreutils",
        "copy the tree into a loop-mounted XFS filesystem (inside a private mount namespace)",
    ),
    tool(
        "umount",
        "mount",
        "unmount a loop-mounted filesystem before its loop device is detached",
    ),
    tool(
        "unsquashfs",
        "squashfs-tools",
        "read a live ISO's root squashfs for `kiln check --target iso`",
    ),
    tool(
        "mksquashfs",
        "squashfs-tools",
        "make the iso target's root image, compressed on every core",
    ),
    tool(
        "xorriso",
        "xorriso",
        "write the iso target's hybrid ISO: El Torito for BIOS and UEFI, MBR and GPT for USB",
    ),
    tool(
        "tar",
        "tar",
        "write the tar target's archive (PAX, sorted, xattrs and ACLs kept, mtimes clamped); extract the Arch bootstrap tarball",
    ),
    test_tool("setfacl", "acl", "tests: give files of a synthetic tree POSIX ACLs"),
    tool(
        "setfattr",
        "attr",
        "restore the extended attributes of a base image's ext4 tree; tests: give files of a synthetic tree extended attributes",
    ),
    test_tool("getfattr", "attr", "tests: read the extended attributes of an imported tree"),
    tool(
        "mknod",
        "coreutils",
        "recreate the FIFOs and device nodes of a base image's ext4 tree",
    ),
    test_tool(
        "setcap",
        "libcap2-bin",
        "tests: give a file of a synthetic tree a file capability",
    ),
    test_tool("fsck.vfat", "dosfstools", "oracle: verify FAT filesystems"),
    test_tool("isoinfo", "genisoimage", "oracle: read ISO 9660 images"),
    test_tool("isovfy", "genisoimage", "oracle: verify ISO 9660 images"),
    test_tool(
        "modprobe",
        "kmod",
        "tests: load the iso9660 driver for the loop-mount oracle",
    ),
    test_tool(
        "as",
        "binutils",
        "tests: assemble the KVM probe's boot sector from its source",
    ),
    test_tool("ld", "binutils", "tests: link the KVM probe's boot sector"),
    tool("pacstrap", "arch-install-scripts", "bootstrap Arch Linux root trees"),
    tool(
        "arch-chroot",
        "arch-install-scripts",
        "run pacstrap inside the Arch bootstrap tarball",
    ),
    tool(
        "pacman",
        "pacman-package-manager",
        "install and remove packages in Arch trees (--root)",
    ),
    tool(
        "pacman-key",
        "pacman-package-manager",
        "Arch package signatures, with archlinux-keyring's keys",
    ),
    tool("curl", "curl", "download the Arch bootstrap tarball"),
    tool("sha256sum", "coreutils", "verify the Arch bootstrap tarball"),
    tool(
        "dnf",
        "dnf",
        "bootstrap, install and remove packages in RHEL-family trees (--installroot)",
    ),
    tool("rpm", "rpm", "list the packages installed in RHEL-family trees"),
    test_tool("makepkg", "makepkg", "tests: build the local Arch test packages"),
    test_tool(
        "repo-add",
        "pacman-package-manager",
        "tests: index the local Arch test repository",
    ),
    test_tool("rpmbuild", "rpm", "tests: build the local RPM test packages"),
    test_tool(
        "createrepo_c",
        "createrepo-c",
        "tests: index the local RPM test repository",
    ),
    test_tool("rpmsign", "rpm", "tests: sign the local RPM test packages"),
    test_tool(
        "setpriv",
        "util-linux",
        "tests: run makepkg, which refuses root, as nobody",
    ),
    test_tool("chown", "coreutils", "tests: give makepkg's build directory to nobody"),
    test_tool(
        "docker-registry",
        "docker-registry",
        "tests: the OCI registry on 127.0.0.1 that `kiln publish oci` pushes to",
    ),
    test_tool(
        "skopeo",
        "skopeo",
        "tests: read pushed OCI artifacts back, independently of kiln",
    ),
    test_tool(
        "htpasswd",
        "apache2-utils",
        "tests: the bcrypt password file of the test registry's Basic authentication",
    ),
];

/// Looks a program up in [`TOOLS`].
pub fn find_tool(name: &str) -> Option<&'static Tool> {
    TOOLS.iter().find(|t| t.name == name)
}

/// Finds `name` on `PATH` (plus the sbin directories, which a non-root
/// `PATH` often lacks although root runs kiln).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = TOOLS.iter().map(|t| t.name).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a tool is listed twice");
    }

    #[test]
    fn finds_sh_on_path() {
        assert!(which("sh").is_some());
        assert!(which("kiln-no-such-tool").is_none());
    }
}
