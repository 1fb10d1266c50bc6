//! Slow, real tests of the `usb-installer` target: the example stick
//! (examples/debian-12-usb-installer.toml, its payload the `disk` target)
//! meets its contract (`kiln check`), then boots in QEMU (TCG) as a USB
//! stick (usb-storage on xHCI) beside an empty 4 GiB virtio disk, with
//! BIOS and with UEFI: the installer writes the payload, verifies it and
//! powers off (QEMU exits by itself), and the disk alone then boots with
//! `kiln boot` to a passing verdict, its root grown into the whole disk.
//! Refusals, in short boots that stop once the message shows: a disk
//! smaller than the payload (no disk to install on) and a disk that holds
//! a partition table (no kiln.force=1); the disks' bytes are unchanged.
//! A power cut: QEMU killed while the installer writes leaves a disk that
//! the next boot of the stick takes as empty and writes again.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const TARGET_SIZE: u64 = 4 << 30;

fn stick() -> PathBuf {
    example_image(
        "debian-12-usb-installer.toml",
        "debian-12-usb-installer-1.0.0-usb-installer.raw",
    )
}

fn sha512(path: &Path) -> String {
    let out = run(tool("sha512sum").arg(path));
    assert!(out.status.success());
    text(&out).split_whitespace().next().unwrap().to_owned()
}

/// A fresh qcow2 disk of `size` bytes in `dir`.
fn empty_disk(dir: &Path, name: &str, size: u64) -> PathBuf {
    let path = dir.join(name);
    let out = run(tool("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg(size.to_string()));
    assert!(out.status.success(), "{}", text(&out));
    path
}

/// How a boot of the stick ended.
struct Installed {
    console: String,
    /// QEMU exited by itself (the installer powered the machine off).
    exited: bool,
}

/// Boots the stick (snapshot mode) with `disks` as virtio disks; stops
/// when QEMU exits, or kills it once the console shows `until` or after
/// `timeout`.
fn boot_stick(firmware: &str, disks: &[&Path], until: Option<&str>, timeout: Duration, dir: &Path) -> Installed {
    let n = std::fs::read_dir(dir).unwrap().count();
    let console = dir.join(format!("{firmware}.{n}.console.log"));
    let mut qemu = tool("qemu-system-x86_64");
    qemu.args([
        "-accel",
        "tcg",
        "-m",
        "1024",
        "-display",
        "none",
        "-no-reboot",
        "-nic",
        "none",
    ])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .args(["-device", "qemu-xhci,id=xhci"])
    .arg("-drive")
    .arg(format!(
        "if=none,id=stick,format=raw,snapshot=on,file={}",
        stick().display()
    ))
    .args(["-device", "usb-storage,drive=stick,bus=xhci.0,removable=on,bootindex=0"]);
    for (i, disk) in disks.iter().enumerate() {
        qemu.arg("-drive")
            .arg(format!(
                "if=none,id=d{i},format={},file={}",
                if disk.extension().is_some_and(|e| e == "raw") {
                    "raw"
                } else {
                    "qcow2"
                },
                disk.display()
            ))
            .arg("-device")
            .arg(format!("virtio-blk-pci,drive=d{i}"));
    }
    if firmware == "uefi" {
        let ovmf = kiln_vm::firmware::find_ovmf().expect("OVMF is installed");
        let vars = dir.join("OVMF_VARS.fd");
        std::fs::copy(&ovmf.vars_template, &vars).unwrap();
        qemu.arg("-drive")
            .arg(format!(
                "if=pflash,format={},readonly=on,file={}",
                ovmf.format,
                ovmf.code.display()
            ))
            .arg("-drive")
            .arg(format!("if=pflash,format={},file={}", ovmf.format, vars.display()));
    }
    let mut child = qemu.spawn().expect("qemu starts");
    let start = Instant::now();
    // Firmware writes bytes that are not UTF-8 to the serial port.
    let read = || String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into_owned();
    let exited = loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "qemu failed ({status}):\n{}", read());
            break true;
        }
        if until.is_some_and(|u| read().contains(u)) || start.elapsed() > timeout {
            child.kill().unwrap();
            child.wait().unwrap();
            break false;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    eprintln!(
        "{firmware}: stick boot ended after {:.0} s (exited: {exited})",
        start.elapsed().as_secs_f64()
    );
    Installed {
        console: read(),
        exited,
    }
}

fn fact<'c>(console: &'c str, name: &str) -> &'c str {
    let prefix = format!("KILN-{name} ");
    console
        .lines()
        .find_map(|l| l.find(prefix.as_str()).map(|at| &l[at + prefix.len()..]))
        .unwrap_or_else(|| panic!("the guest did not report {name}"))
        .trim()
}

/// The stick installs the payload on an empty disk with `firmware`, which
/// then boots alone with its root grown into the whole disk.
fn installs_and_boots(firmware: &str) {
    let dir = tempfile::tempdir().unwrap();
    let target = empty_disk(dir.path(), "target.qcow2", TARGET_SIZE);
    let installed = boot_stick(firmware, &[&target], None, Duration::from_secs(1500), dir.path());
    let console = &installed.console;
    assert!(
        installed.exited,
        "{firmware}: the installer did not power off:\n{console}"
    );
    for line in [
        "target disk /dev/vda",
        "sha512 verified",
        "growing partition 3 of /dev/vda",
        "done; powering off",
    ] {
        assert!(
            console.contains(line),
            "{firmware}: no `{line}` on the console:\n{console}"
        );
    }
    assert!(
        console.contains("copied"),
        "{firmware}: no write progress on the console:\n{console}"
    );

    let user_data = dir.path().join("user-data");
    std::fs::write(
        &user_data,
        "#cloud-config\nruncmd:\n  - echo \"KILN-DISK $(lsblk -b -dn -o SIZE /dev/vda)\" > /dev/console\n  - echo \"KILN-ROOT $(lsblk -b -n -o SIZE $(findmnt -n -o SOURCE /))\" > /dev/console\n  - echo \"KILN-END done\" > /dev/console\n",
    )
    .unwrap();
    let out = run(kiln()
        .args([
            "boot",
            "--firmware",
            firmware,
            "--timeout",
            "600",
            "--expect",
            "KILN-END done",
        ])
        .arg("--user-data")
        .arg(&user_data)
        .arg("--console-log")
        .arg(dir.path().join("target.console.log"))
        .arg(&target));
    let t = text(&out);
    assert!(
        out.status.success(),
        "{firmware}: the installed disk did not boot:\n{t}"
    );
    let console = String::from_utf8_lossy(&std::fs::read(dir.path().join("target.console.log")).unwrap()).into_owned();
    let disk: u64 = fact(&console, "DISK").parse().unwrap();
    let root: u64 = fact(&console, "ROOT").parse().unwrap();
    assert_eq!(disk, TARGET_SIZE);
    // Before the root: 1 MiB for the GPT, the BIOS boot partition 1 MiB,
    // the ESP 128 MiB; after it the backup GPT.
    assert!(
        root + (1 + 1 + 128 + 1) * MIB >= disk,
        "{firmware}: the root was not grown into the disk: root {root} of {disk}"
    );
}

#[test]
#[ignore = "slow: builds the example stick and boots QEMU (TCG) twice"]
fn stick_installs_with_bios() {
    let out = run(kiln().args(["check", "--target", "usb-installer"]).arg(stick()));
    assert!(out.status.success(), "the stick fails its contract:\n{}", text(&out));
    installs_and_boots("bios");
}

#[test]
#[ignore = "slow: builds the example stick and boots QEMU (TCG) twice"]
fn stick_installs_with_uefi() {
    installs_and_boots("uefi");
}

/// A disk smaller than the payload, then a disk that holds a partition
/// table: the installer says why on the console and writes nothing.
#[test]
#[ignore = "slow: boots QEMU (TCG) twice, each until the installer refuses"]
fn stick_refuses_small_and_partitioned_disks() {
    let dir = tempfile::tempdir().unwrap();
    let small = empty_disk(dir.path(), "small.qcow2", 64 * MIB);
    let before = sha512(&small);
    let refused = boot_stick(
        "bios",
        &[&small],
        Some("nothing was written"),
        Duration::from_secs(900),
        dir.path(),
    );
    assert!(
        refused.console.contains("no disk to install on")
            && refused.console.contains("the payload's size")
            && refused.console.contains("nothing was written"),
        "no refusal of the small disk on the console:\n{}",
        refused.console
    );
    assert_eq!(sha512(&small), before, "the small disk was changed");

    // A GPT written by sfdisk on a 4 GiB disk, then made a qcow2.
    let raw = dir.path().join("partitioned.raw");
    std::fs::File::create(&raw).unwrap().set_len(TARGET_SIZE).unwrap();
    let mut child = tool("sfdisk")
        .arg("--quiet")
        .arg(&raw)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"label: gpt\n,512MiB,L\n").unwrap();
    assert!(child.wait().unwrap().success());
    let partitioned = dir.path().join("partitioned.qcow2");
    let out = run(tool("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&partitioned));
    assert!(out.status.success(), "{}", text(&out));
    std::fs::remove_file(&raw).unwrap();
    let before = sha512(&partitioned);
    let refused = boot_stick(
        "bios",
        &[&partitioned],
        Some("nothing was written"),
        Duration::from_secs(900),
        dir.path(),
    );
    assert!(
        refused.console.contains("already holds a partition table") && refused.console.contains("kiln.force=1"),
        "no refusal of the partitioned disk on the console:\n{}",
        refused.console
    );
    assert_eq!(sha512(&partitioned), before, "the partitioned disk was changed");
}

/// QEMU killed while the installer writes: the disk has no partition
/// table, and the next boot of the stick writes it again and finishes.
#[test]
#[ignore = "slow: boots QEMU (TCG) twice"]
fn stick_rewrites_a_disk_whose_write_was_cut() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target.raw");
    std::fs::File::create(&target).unwrap().set_len(TARGET_SIZE).unwrap();
    let cut = boot_stick(
        "bios",
        &[&target],
        Some(" copied, "),
        Duration::from_secs(1200),
        dir.path(),
    );
    assert!(!cut.exited, "the installer finished before the cut:\n{}", cut.console);
    let mut first = vec![0u8; MIB as usize];
    std::io::Read::read_exact(&mut std::fs::File::open(&target).unwrap(), &mut first).unwrap();
    assert!(
        first.iter().all(|b| *b == 0),
        "the disk's first MiB (the partition table) was written before the rest"
    );
    let installed = boot_stick("bios", &[&target], None, Duration::from_secs(1500), dir.path());
    assert!(
        installed.exited && installed.console.contains("sha512 verified"),
        "the second run did not write the disk:\n{}",
        installed.console
    );
    assert!(
        !installed.console.contains("nothing was written"),
        "{}",
        installed.console
    );
}
