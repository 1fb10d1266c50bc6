//! The replay of OVH's installer (`kiln deploy ovh --simulate`), shared by
//! real_deploy.rs (the example) and real_cloud_image.rs (an image built on
//! an imported base).

use std::path::Path;

use super::*;

/// The SSH key the replays install for the `debian` user.
pub const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKqE3PCcKwnwQkrxcL0Ydc7HQ8tjCeQHZTtJI6gPU7Yb replay@kiln";

/// `kiln deploy ovh --simulate` of `image` onto two disks (RAID1) with
/// `firmware`, keeping the work in `keep`.
pub fn replay(image: &Path, firmware: &str, keep: &Path, extra: &[&str]) -> std::process::Output {
    let _ = std::fs::remove_dir_all(keep);
    run(kiln()
        .args(["deploy", "ovh", "--simulate"])
        .arg(image)
        .args([
            "--firmware",
            firmware,
            "--disks",
            "2",
            "--hostname",
            "web1",
            "--ssh-key",
            KEY,
        ])
        .args(["--header", "Authorization: Basic a2lsbjpyZXBsYXk="])
        .arg("--keep")
        .arg(keep)
        .args(extra))
}

/// Replays OVH's installer with `image` and asserts every step ran, the
/// rescue and the first boot were isolated, and the deployed system's
/// verdict (hostname, key, user data, RAID1) passed.
pub fn assert_replay_passes(image: &Path, firmware: &str) {
    let stem = image.file_stem().unwrap().to_string_lossy();
    let keep = repo_root().join(format!("target/tmp/replay-{stem}-{firmware}"));
    let out = replay(image, firmware, &keep, &[]);
    let t = text(&out);
    eprintln!("{t}");
    assert!(out.status.success(), "replay failed:\n{t}");
    for step in [
        "partitioning 2 disk(s)",
        "writing the config drive",
        "downloading the image",
        "checking the image",
        "copying the image onto the disks",
        "running /root/.ovh/make_image_bootable.sh",
    ] {
        assert!(t.contains(step), "no progress for {step}");
    }
    // Both VMs were isolated; the rescue reached the image server (the
    // download above succeeded) only through its guest forward.
    assert!(
        t.contains("booting the rescue system (network: isolated (guest 10.0.2.100:80 → host 127.0.0.1:"),
        "{t}"
    );
    assert!(
        t.contains("first boot of the deployed disks (network: isolated (no forwards))"),
        "{t}"
    );
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verdict JSON on stdout");
    assert_eq!(verdict["login_hostname"], "web1");
    assert_eq!(verdict["hostname"], "web1");
    assert_eq!(verdict["key"], "yes");
    assert_eq!(verdict["marker"], true);
    assert!(
        verdict["active_arrays"][0].as_str().unwrap().contains("active raid1"),
        "{verdict}"
    );

    // The script ran in the replay and logged every step.
    let script_log =
        String::from_utf8_lossy(&std::fs::read(keep.join("make_image_bootable.log")).unwrap()).into_owned();
    assert!(script_log.contains("install_grub"), "{script_log}");
    // UEFI booted through efiBootloaderPath, as OVH's iPXE does.
    // The firmware writes escape sequences and stray bytes: not UTF-8.
    let boot = String::from_utf8_lossy(&std::fs::read(keep.join("boot-console.log")).unwrap()).into_owned();
    if firmware == "uefi" {
        assert!(
            boot.contains("booting efiBootloaderPath \\efi\\debian\\grubx64.efi"),
            "{boot}"
        );
    }
    // Kept for a failure's post-mortem only: the two disks and the rescue's
    // files take several GiB that the rest of the slow suite needs.
    let _ = std::fs::remove_dir_all(&keep);
}
