//! Slow, real tests of `kiln boot`: the example `disk` image, built by
//! `kiln build` (kiln's own pipeline and qcow2 writer), boots in QEMU (TCG)
//! with BIOS and with UEFI, and the verdict (login prompt, cloud-init
//! finished, --expect) passes on the default, isolated network, as the
//! report says; the image file is not changed by the boot. The UEFI boot
//! gets a disk 4 GiB larger than the image, as a cloud's would be, and user
//! data that reports from inside the guest: the root partition must have
//! been grown into the whole disk by cloud-init, and the ESP mounted from
//! fstab. (How a failed verdict is reported is covered by kiln-vm's fast
//! tests.)

mod common;
use common::*;

const GROW: u64 = 4 << 30;

fn disk_image() -> std::path::PathBuf {
    example_image("debian-12-disk.toml", "debian-12-disk-1.0.0-disk.qcow2")
}

/// Boots the example image; returns the serial console's text.
fn boots_with(firmware: &str, extra: &[&str]) -> String {
    let image = disk_image();
    let before = std::fs::read(&image).unwrap();
    let console = image.with_extension(format!("{firmware}.console.log"));
    let out = run(kiln()
        .args([
            "boot",
            "--firmware",
            firmware,
            "--timeout",
            "600",
            "--expect",
            "Debian GNU/Linux 12",
        ])
        .args(extra)
        .arg("--console-log")
        .arg(&console)
        .arg(&image));
    let t = text(&out);
    eprintln!("{t}");
    assert!(out.status.success(), "kiln boot --firmware {firmware} failed:\n{t}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\nnetwork: isolated (no forwards)\n"),
        "the report does not say the guest was isolated:\n{t}"
    );
    assert!(
        std::fs::read(&image).unwrap() == before,
        "the boot changed the image file"
    );
    String::from_utf8_lossy(&std::fs::read(&console).unwrap()).into_owned()
}

/// The value the guest reported on the console as `KILN-<name> <value>`.
fn fact<'c>(console: &'c str, name: &str) -> &'c str {
    let prefix = format!("KILN-{name} ");
    console
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("the guest did not report {name}"))
        .trim()
}

#[test]
#[ignore = "slow: builds the disk example and boots it under TCG"]
fn disk_example_boots_with_bios() {
    let console = boots_with("bios", &[]);
    assert!(console.contains("GNU GRUB"), "GRUB did not show on the serial console");
}

#[test]
#[ignore = "slow: builds the disk example and boots it under TCG"]
fn disk_example_boots_with_uefi_and_grows_into_a_larger_disk() {
    let image = disk_image();
    let info = run(tool("qemu-img").args(["info", "--output=json"]).arg(&image));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let image_size = info["virtual-size"].as_u64().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let user_data = dir.path().join("user-data");
    std::fs::write(
        &user_data,
        "#cloud-config\nruncmd:\n\
         \x20 - echo \"KILN-DISK $(lsblk -b -dn -o SIZE /dev/vda)\" > /dev/console\n\
         \x20 - echo \"KILN-ROOT $(lsblk -b -n -o SIZE $(findmnt -n -o SOURCE /))\" > /dev/console\n\
         \x20 - echo \"KILN-ESP $(findmnt -n -o FSTYPE /boot/efi)\" > /dev/console\n",
    )
    .unwrap();
    let console = boots_with(
        "uefi",
        &[
            "--disk-size",
            "+4GiB",
            "--user-data",
            user_data.to_str().unwrap(),
            "--expect",
            "KILN-ESP",
        ],
    );

    let disk: u64 = fact(&console, "DISK").parse().unwrap();
    assert_eq!(
        disk,
        image_size + GROW,
        "the guest's disk is not 4 GiB larger than the image"
    );
    let root: u64 = fact(&console, "ROOT").parse().unwrap();
    // The ESP (128 MiB), the BIOS boot partition and the GPTs take the rest.
    assert!(
        root > disk - (140 << 20),
        "cloud-init did not grow the root into the disk: root partition {root} of a {disk}-byte disk"
    );
    assert_eq!(fact(&console, "ESP"), "vfat", "the ESP is not mounted from fstab");
}
