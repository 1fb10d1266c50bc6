//! Slow, real tests of `kiln boot`: the example `disk` image, built by
//! `kiln build`, boots in QEMU (TCG) with BIOS and with UEFI, and the
//! verdict (login prompt, cloud-init finished, --expect) passes on the
//! default, isolated network, as the report says; the image file is not
//! changed by the boot. (How a failed verdict is reported is
//! covered by kiln-vm's fast tests.)

mod common;
use common::*;

fn disk_image() -> std::path::PathBuf {
    example_image("debian-12-disk.toml", "debian-12-disk-1.0.0-disk.qcow2")
}

fn boots_with(firmware: &str) {
    let image = disk_image();
    let before = std::fs::read(&image).unwrap();
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
}

#[test]
#[ignore = "slow: builds the disk example and boots it under TCG"]
fn disk_example_boots_with_bios() {
    boots_with("bios");
}

#[test]
#[ignore = "slow: builds the disk example and boots it under TCG"]
fn disk_example_boots_with_uefi() {
    boots_with("uefi");
}
