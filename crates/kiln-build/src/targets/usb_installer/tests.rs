use super::*;
use kiln_exec::Cmd;

fn guid(what: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, what.as_bytes())
}

#[test]
fn stick_layout_without_a_size_fits_what_it_holds() {
    let layout = stick_layout(None, 300 * MIB + 5, 700 * MIB, guid).unwrap();
    let sizes: Vec<u64> = layout.partitions.iter().map(|p| p.size >> 20).collect();
    // The installer's filesystem is rounded up to whole MiB.
    assert_eq!(sizes, [1, 16, 301, 700, 64]);
    let names: Vec<&str> = layout.partitions.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, check::PARTITION_NAMES);
    assert_eq!(layout.partitions[0].start, MIB);
    // 1 MiB in front, 1 MiB behind for the backup GPT.
    assert_eq!(layout.disk_size, (1 + 1 + 16 + 301 + 700 + 64 + 1) * MIB);
    assert_eq!(
        layout.partitions.iter().map(|p| p.kind).collect::<Vec<_>>(),
        [
            PartKind::BiosBoot,
            PartKind::Esp,
            PartKind::LinuxFs,
            PartKind::LinuxFs,
            PartKind::BasicData
        ]
    );
}

#[test]
fn stick_layout_with_a_size_gives_the_rest_to_the_data_partition() {
    let layout = stick_layout(Some(4096 * MIB), 300 * MIB, 700 * MIB, guid).unwrap();
    assert_eq!(layout.disk_size, 4096 * MIB);
    let data = layout.partitions.last().unwrap();
    assert_eq!(data.name, DATA_LABEL);
    assert_eq!(data.start + data.size, 4095 * MIB);
}

#[test]
fn stick_layout_refuses_a_size_that_cannot_hold_the_payload() {
    let err = stick_layout(Some(1024 * MIB), 300 * MIB, 700 * MIB, guid).unwrap_err();
    assert!(err.to_string().contains("use at least \"1083MiB\""), "{err:#}");
}

#[test]
fn grub_cfg_boots_the_installer_on_serial_and_vga() {
    insta::assert_snapshot!("grub_cfg_poweroff", grub_cfg("6.1.0-28-amd64", AfterInstall::Poweroff));
    let reboot = grub_cfg("6.1.0-28-amd64", AfterInstall::Reboot);
    assert!(reboot.contains(" kiln.after=reboot\n"), "{reboot}");
    let entries = kiln_disk::grub::menu_entries(&reboot);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].kernel, "/boot/vmlinuz-6.1.0-28-amd64");
    assert!(entries[0].args.contains(&format!("init={INSTALLER_PATH}")));
}

/// CI installs shellcheck; a missing one fails the test instead of
/// silently skipping the lint.
#[test]
fn installer_is_shellcheck_clean() {
    let (status, out) = Cmd::new("shellcheck")
        .args(["--shell=bash", "--severity=style", "--format=gcc", "-"])
        .stdin_bytes(INSTALLER)
        .run_status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        status.success(),
        "shellcheck findings ({status}):\n{}{}",
        out.stdout_string(),
        out.tail
    );
}

/// The installer reads payload.json with sed: every field it reads must
/// come out of what kiln writes.
#[test]
fn installer_reads_every_field_of_payload_json() {
    let info = PayloadInfo {
        size: 2048 * MIB,
        sha512: "ab".repeat(64),
        name: "debian-12-usb".to_owned(),
        version: "1.2.3-dirty".to_owned(),
        target: "disk".to_owned(),
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("payload")).unwrap();
    std::fs::write(dir.path().join("payload").join(PAYLOAD_JSON), info.to_json()).unwrap();
    // The function as the installer has it, run on the file.
    let start = INSTALLER.find("payload_field() {").unwrap();
    let end = start + INSTALLER[start..].find("\n}\n").unwrap() + 3;
    let function = &INSTALLER[start..end];
    for (field, want) in [
        ("size", info.size.to_string()),
        ("sha512", info.sha512.clone()),
        ("name", info.name.clone()),
        ("version", info.version.clone()),
    ] {
        let out = Cmd::new("bash")
            .args(["-c", &format!("{function}\npayload_field {field}\n")])
            .env("RUN", dir.path())
            .run_string()
            .unwrap();
        assert_eq!(out.trim(), want, "{field}");
    }
}

#[test]
fn compressed_payload_round_trips_with_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let mut bytes = vec![0u8; 3 << 20];
    bytes[MIB as usize..MIB as usize + 11].copy_from_slice(b"kiln stick!");
    std::fs::write(&raw, &bytes).unwrap();
    let zst = dir.path().join(PAYLOAD_FILE);
    let sha512 = compress_payload(&raw, &zst, 2).unwrap();
    let (size, digest) = check::raw_digest(&std::fs::read(&zst).unwrap()).unwrap();
    assert_eq!(size, 3 << 20);
    assert_eq!(digest, sha512);
    let expected = {
        use sha2::{Digest, Sha512};
        hex::encode(Sha512::digest(&bytes))
    };
    assert_eq!(sha512, expected);
    // zstd(1), which the installer runs, reads it too.
    let out = dir.path().join("back.raw");
    Cmd::new("zstd")
        .args(["-q", "-d", "-o"])
        .arg(&out)
        .arg(&zst)
        .run()
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
}

#[test]
fn copy_into_leaves_zero_blocks_as_holes_and_writes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("fs");
    let mut bytes = vec![0u8; (2 << 20) + 100];
    bytes[(2 << 20) + 50] = 7;
    bytes[10] = 1;
    std::fs::write(&src, &bytes).unwrap();
    let disk = dir.path().join("disk");
    std::fs::File::create(&disk).unwrap().set_len(8 << 20).unwrap();
    copy_into(&src, &disk, 4 << 20).unwrap();
    let back = std::fs::read(&disk).unwrap();
    assert_eq!(&back[4 << 20..(4 << 20) + bytes.len()], &bytes[..]);
    assert!(back[..4 << 20].iter().all(|b| *b == 0));
}
