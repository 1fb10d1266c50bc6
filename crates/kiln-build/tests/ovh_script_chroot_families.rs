//! Slow and privileged: the Arch and RHEL-family `make_image_bootable.sh`
//! run for real in a chroot, the way OVH's installer runs them, for legacy
//! BIOS and UEFI, on one disk and on an md RAID1 pair, with recording stubs
//! for every program that would touch a disk, the NVRAM or the kernel
//! image: `grub-install`/`grub2-install`, `grub-mkconfig`/`grub2-mkconfig`,
//! `grub2-probe`, `mkinitcpio`/`dracut`, `kernel-install`, `efibootmgr`,
//! `mdadm`, `systemd-machine-id-setup`, and `findmnt`/`lsblk` (which replay
//! the recorded rescue-system outputs of `src/targets/ovh_byol/testdata`).
//!
//! The chroot is the host's Debian `/usr` (bash, coreutils, awk, sed, grep:
//! what the script itself runs) under a private overlay, so nothing is
//! copied or built; the stubs sit in the overlay's `/usr/local/sbin`, first
//! on the script's own PATH. The rescue system's inputs are files at their
//! real paths, not the scripts' test hooks: `/proc` is a plain directory
//! holding `cmdline` and `mdstat` (this host has no md driver, so a real
//! `/proc/mdstat` could not say RAID1), `/sys/firmware/efi` exists only in
//! the UEFI runs, `/dev/disk/by-id` holds the recorded links of
//! `ls-by-id-md-raid1.txt`. The real procfs is mounted at `/.hostproc` only
//! for bash's `/dev/fd` (the log's process substitution).
//!
//! Needs root (mounts, chroot). Run with
//! `cargo test -p kiln-build --test ovh_script_chroot_families -- --ignored --nocapture`.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_build::targets::ovh_byol::script::{try_render_arch, try_render_rhel, ScriptParams};
use kiln_exec::{Cmd, WorkDir};

const KERNEL: &str = "6.9.9-kilntest";
const RESCUE_CMDLINE: &str = "BOOT_IMAGE=/boot/vmlinuz root=/dev/ram0 console=tty0 console=ttyS1,115200n8 -- quiet\n";
const LOG: &str = "/var/log/kiln-make-image-bootable.log";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Family {
    Arch,
    Rhel,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Firmware {
    Bios,
    Uefi,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Disks {
    One,
    Raid1,
}

/// Runs in a private mount namespace: the overlay and the mounts vanish
/// with it. `$1` is the chroot, `$2` and `$3` the overlay's upper and work
/// directories.
const NAMESPACE_SCRIPT: &str = r#"set -eu
root=$1 upper=$2 work=$3
mount -t overlay overlay -o "lowerdir=/usr,upperdir=$upper,workdir=$work" "$root/usr"
mount -t proc proc "$root/.hostproc"
mount --bind /dev/null "$root/dev/null"
status=0
env -i "$(command -v chroot)" "$root" /root/.ovh/make_image_bootable.sh || status=$?
echo "$status" > "$root/kiln-test/status"
"#;

/// Every stub appends its name and arguments to /kiln-test/calls.
fn stubs(family: Family) -> Vec<(&'static str, String)> {
    let id = match family {
        Family::Arch => "arch",
        Family::Rhel => "rocky",
    };
    let mut s = vec![
        (
            "findmnt",
            r#"case "$*" in
    *SOURCE,FSTYPE*) cat /kiln-test/findmnt ;;
    *"-o TARGET -T"*) echo / ;;
    *"--mountpoint /boot/efi"*) [ -d /sys/firmware/efi ] ;;
esac"#
                .to_owned(),
        ),
        (
            "lsblk",
            "case \"$*\" in *TYPE,NAME*) cat /kiln-test/lsblk ;; esac".to_owned(),
        ),
        (
            "mdadm",
            "echo 'ARRAY /dev/md2 metadata=1.2 name=rescue:2 UUID=145e4923:3c740bb8:1fc32a24:2654046a'".to_owned(),
        ),
        ("efibootmgr", "exit 0".to_owned()),
        (
            "systemd-machine-id-setup",
            "printf '%s\\n' 0123456789abcdef0123456789abcdef > /etc/machine-id".to_owned(),
        ),
    ];
    let efi_binary = format!(
        r#"case "$*" in *--target=x86_64-efi*) mkdir -p /boot/efi/EFI/{id} && : > /boot/efi/EFI/{id}/grubx64.efi ;; esac"#
    );
    let mkconfig =
        r#"out=; while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done; echo '# grub.cfg by the stub' > "$out""#;
    match family {
        Family::Arch => {
            s.push(("grub-install", efi_binary));
            s.push(("grub-mkconfig", mkconfig.to_owned()));
            s.push((
                "mkinitcpio",
                ": > /boot/initramfs-linux.img && echo image > /boot/initramfs-linux.img".to_owned(),
            ));
        }
        Family::Rhel => {
            s.push(("grub2-install", efi_binary));
            s.push(("grub2-mkconfig", mkconfig.to_owned()));
            s.push(("grub2-probe", "echo 5d3ba1c9-0000-4000-8000-00000000beef".to_owned()));
            s.push(("dracut", "eval \"out=\\${$#}\"; echo image > \"$out\"".to_owned()));
            s.push((
                "kernel-install",
                "mkdir -p /boot/loader/entries && echo \"linux $3\" > \"/boot/loader/entries/$(cat /etc/machine-id)-$2.conf\"".to_owned(),
            ));
        }
    }
    s
}

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/targets/ovh_byol/testdata")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn write(path: &Path, text: &str, mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// What one run left behind.
struct Outcome {
    status: i32,
    calls: String,
    log: String,
    root: PathBuf,
    _work: WorkDir,
}

impl Outcome {
    fn read(&self, path: &str) -> String {
        fs::read_to_string(self.root.join(path.trim_start_matches('/'))).unwrap_or_default()
    }
}

fn assert_root() {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or_default();
    assert_eq!(
        uid.split_whitespace().nth(1),
        Some("0"),
        "this test needs root (mounts, chroot)"
    );
}

fn run_script(family: Family, firmware: Firmware, disks: Disks) -> Outcome {
    assert_root();
    let work = WorkDir::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")), "ovh-chroot-families-").unwrap();
    let root = work.path().join("root");
    let upper = work.path().join("usr-upper");
    let overlay_work = work.path().join("usr-work");
    for dir in [
        "usr",
        "etc/default",
        "root/.ovh",
        "boot",
        "tmp",
        "var/log",
        "proc",
        "sys",
        "dev/disk/by-id",
        ".hostproc",
        "kiln-test",
    ] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::create_dir_all(&overlay_work).unwrap();
    for link in ["bin", "sbin", "lib", "lib64"] {
        symlink(format!("usr/{link}"), root.join(link)).unwrap();
    }
    symlink("/.hostproc/self/fd", root.join("dev/fd")).unwrap();
    // Debian's /usr/bin/awk goes through the alternatives in /etc.
    fs::create_dir_all(root.join("etc/alternatives")).unwrap();
    symlink(
        fs::read_link("/etc/alternatives/awk").unwrap(),
        root.join("etc/alternatives/awk"),
    )
    .unwrap();
    write(&root.join("dev/null"), "", 0o666);

    // The image: GRUB's defaults, the installer's mdadm.conf, a kernel.
    write(
        &root.join("etc/default/grub"),
        "GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX=\"\"\n",
        0o644,
    );
    write(&root.join("etc/mdadm.conf"), "# from the installer\n", 0o644);
    write(
        &root.join("etc/machine-id"),
        "ffffffffffffffffffffffffffffffff\n",
        0o444,
    );
    write(&upper.join(format!("lib/modules/{KERNEL}/vmlinuz")), "kernel", 0o644);
    write(&upper.join(format!("lib/modules/{KERNEL}/pkgbase")), "linux\n", 0o644);
    // GRUB's directory, which the image's GRUB package ships.
    fs::create_dir_all(root.join(match family {
        Family::Arch => "boot/grub",
        Family::Rhel => "boot/grub2",
    }))
    .unwrap();
    if firmware == Firmware::Uefi {
        fs::create_dir_all(root.join("sys/firmware/efi")).unwrap();
        fs::create_dir_all(root.join("boot/efi")).unwrap();
    }

    // The rescue system: its kernel command line, its arrays, its disks.
    write(&root.join("proc/cmdline"), RESCUE_CMDLINE, 0o444);
    let (findmnt, lsblk, mdstat) = match disks {
        Disks::One => (
            "/dev/nvme0n1p2 ext4\n".to_owned(),
            "part /dev/nvme0n1p2\ndisk /dev/nvme0n1\n".to_owned(),
            "Personalities : \nunused devices: <none>\n",
        ),
        Disks::Raid1 => (
            fixture("findmnt-md-raid1.txt"),
            fixture("lsblk-md-raid1.txt"),
            "Personalities : [raid1]\nmd2 : active raid1 nvme0n1p2[0] nvme1n1p2[1]\n      \
             20954112 blocks super 1.2 [2/2] [UU]\n\nunused devices: <none>\n",
        ),
    };
    write(&root.join("proc/mdstat"), mdstat, 0o444);
    write(&root.join("kiln-test/findmnt"), &findmnt, 0o644);
    write(&root.join("kiln-test/lsblk"), &lsblk, 0o644);
    for line in fixture("ls-by-id-md-raid1.txt").lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [.., name, "->", target] = words[..] {
            let device = root.join("dev").join(target.trim_start_matches("../../"));
            write(&device, "", 0o660);
            symlink(target, root.join("dev/disk/by-id").join(name)).unwrap();
        }
    }

    for (name, body) in stubs(family) {
        let text = format!("#!/bin/sh\nprintf '%s\\n' \"{name} $*\" >> /kiln-test/calls\n{body}\n");
        write(&upper.join("local/sbin").join(name), &text, 0o755);
    }
    let params = ScriptParams::new(match family {
        Family::Arch => "arch",
        Family::Rhel => "rocky",
    });
    let script = match family {
        Family::Arch => try_render_arch(&params),
        Family::Rhel => try_render_rhel(&params),
    }
    .unwrap();
    assert_eq!(params.log_path, LOG);
    write(&root.join("root/.ovh/make_image_bootable.sh"), &script, 0o755);

    let started = Instant::now();
    let what = format!("{family:?} {firmware:?} {disks:?}");
    let prefix = format!("  {what} |");
    Cmd::in_mount_namespace("sh")
        .args(["-c", NAMESPACE_SCRIPT, "kiln-ovh-chroot-families"])
        .arg(&root)
        .arg(&upper)
        .arg(&overlay_work)
        .on_line(move |line| eprintln!("{prefix} {line}"))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{what}: the script ran in {:.1?}", started.elapsed());
    let read = |p: &str| fs::read_to_string(root.join(p)).unwrap_or_default();
    Outcome {
        status: read("kiln-test/status").trim().parse().expect("no status"),
        calls: read("kiln-test/calls"),
        log: read(LOG.trim_start_matches('/')),
        root,
        _work: work,
    }
}

const DISK_A: &str = "/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_S4EWNX0R123456A";
const DISK_B: &str = "/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_S4EWNX0R654321B";

/// Runs one scenario and checks what every scenario must show; returns the
/// outcome for the scenario's own checks.
fn check(family: Family, firmware: Firmware, disks: Disks) -> Outcome {
    let o = run_script(family, firmware, disks);
    let (log, calls) = (&o.log, &o.calls);
    assert_eq!(o.status, 0, "the script failed; calls:\n{calls}\nlog:\n{log}");
    assert!(log.contains("all steps done: the image is bootable"), "{log}");
    for step in ["configure_console", "configure_mdadm", "install_grub", "finalize"] {
        assert!(
            log.contains(&format!("==> step {step}: done")),
            "{step} did not finish:\n{log}"
        );
    }
    assert!(!o.root.join("root/.ovh").exists(), "/root/.ovh was not removed");
    assert!(!calls.contains("efibootmgr"), "efibootmgr ran: {calls}");

    // Console parameters from the rescue's /proc/cmdline, not those after `--`.
    let grub = o.read("/etc/default/grub");
    assert!(
        grub.contains("GRUB_CMDLINE_LINUX=\"console=tty0 console=ttyS1,115200n8\""),
        "{grub}"
    );
    assert!(
        grub.contains("GRUB_SERIAL_COMMAND=\"serial --unit=1 --speed=115200 --parity=no --word=8\""),
        "{grub}"
    );
    assert_eq!(o.read("/etc/machine-id").trim(), "0123456789abcdef0123456789abcdef");

    let (install, mkconfig, cfg) = match family {
        Family::Arch => (
            "grub-install",
            "grub-mkconfig -o /boot/grub/grub.cfg",
            "/boot/grub/grub.cfg",
        ),
        Family::Rhel => (
            "grub2-install",
            "grub2-mkconfig -o /boot/grub2/grub.cfg",
            "/boot/grub2/grub.cfg",
        ),
    };
    let installs: Vec<&str> = calls
        .lines()
        .filter(|l| l.starts_with(&format!("{install} ")))
        .collect();
    match firmware {
        Firmware::Bios => {
            let mut want = vec![format!("{install} --target=i386-pc {DISK_A}")];
            if disks == Disks::Raid1 {
                want.push(format!("{install} --target=i386-pc {DISK_B}"));
            }
            assert_eq!(installs, want, "{calls}");
        }
        Firmware::Uefi => {
            let id = if family == Family::Arch { "arch" } else { "rocky" };
            assert_eq!(installs.len(), 1, "{calls}");
            assert!(
                installs[0].contains("--target=x86_64-efi --efi-directory=/boot/efi")
                    && installs[0].contains(&format!("--bootloader-id={id}"))
                    && installs[0].contains("--no-nvram"),
                "{calls}"
            );
            assert!(o.root.join(format!("boot/efi/EFI/{id}/grubx64.efi")).exists());
        }
    }
    // The configuration is made last, after the initramfs.
    assert_eq!(calls.lines().last(), Some(mkconfig), "{calls}");
    assert!(!o.read(cfg).is_empty(), "{cfg} not written");

    let mdadm_conf = o.read("/etc/mdadm.conf");
    match disks {
        Disks::One => {
            assert!(!calls.contains("mdadm"), "{calls}");
            assert_eq!(
                mdadm_conf, "# from the installer\n",
                "the installer's mdadm.conf was replaced"
            );
        }
        Disks::Raid1 => {
            assert!(calls.lines().any(|l| l == "mdadm --detail --scan"), "{calls}");
            assert!(
                mdadm_conf.contains("ARRAY /dev/md2 metadata=1.2 name=rescue:2 UUID=145e4923:"),
                "{mdadm_conf}"
            );
        }
    }
    o
}

fn check_arch(firmware: Firmware, disks: Disks) {
    let o = check(Family::Arch, firmware, disks);
    assert!(o.calls.lines().any(|l| l == "mkinitcpio -P"), "{}", o.calls);
    assert!(!o.calls.contains("dracut"), "{}", o.calls);
}

fn check_rhel(firmware: Firmware, disks: Disks) {
    let o = check(Family::Rhel, firmware, disks);
    let calls = &o.calls;
    assert!(
        calls
            .lines()
            .any(|l| l == format!("dracut --force --kver {KERNEL} /boot/initramfs-{KERNEL}.img")),
        "{calls}"
    );
    // A BLS entry named after the new machine-id.
    assert!(
        calls
            .lines()
            .any(|l| l == format!("kernel-install add {KERNEL} /lib/modules/{KERNEL}/vmlinuz")),
        "{calls}"
    );
    assert!(o
        .root
        .join(format!(
            "boot/loader/entries/0123456789abcdef0123456789abcdef-{KERNEL}.conf"
        ))
        .exists());
    assert!(o.read("/etc/default/grub").contains("GRUB_ENABLE_BLSCFG=\"true\""));
    assert!(o.root.join(".autorelabel").exists(), "no /.autorelabel");
    if firmware == Firmware::Uefi {
        let esp_cfg = o.read("/boot/efi/EFI/rocky/grub.cfg");
        assert!(
            esp_cfg.contains("--set=dev 5d3ba1c9-0000-4000-8000-00000000beef")
                && esp_cfg.contains("set prefix=($dev)/boot/grub2"),
            "{esp_cfg}"
        );
    }
}

#[test]
#[ignore = "slow: root, mounts and chroot; see the module docs"]
fn arch_bios_one_disk() {
    check_arch(Firmware::Bios, Disks::One);
}

#[test]
#[ignore = "slow: root, mounts and chroot; see the module docs"]
fn arch_bios_raid1() {
    check_arch(Firmware::Bios, Disks::Raid1);
}

#[test]
#[ignore = "slow: root, mounts and chroot; see the module docs"]
fn arch_uefi_one_disk() {
    check_arch(Firmware::Uefi, Disks::One);
}

#[test]
#[ignore = "slow: root, mounts and chroot; see the module docs"]
fn arch_uefi_raid1() {
    check_arch(Firmware::Uefi, Disks::Raid1);
}

#[test]
#[ignore = "slow: root, mounts and chroot; see the module docs"]
fn rhel_bios_one_disk() {
    check_rhel(Firmware::Bios, Disks::One);
}

#[test]
#[ignore = "slow: root, mounts and chroot; see the module docs"]
fn rhel_bios_raid1() {
    check_rhel(Firmware::Bios, Disks::Raid1);
}

#[test]
#[ignore = "slow: root, mounts and chroot; see the module docs"]
fn rhel_uefi_one_disk() {
    check_rhel(Firmware::Uefi, Disks::One);
}

#[test]
#[ignore = "slow: root, mounts and chroot; see the module docs"]
fn rhel_uefi_raid1() {
    check_rhel(Firmware::Uefi, Disks::Raid1);
}
