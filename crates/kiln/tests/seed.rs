//! `kiln seed` end to end: the binary writes NoCloud and ConfigDrive seeds
//! that `blkid` labels correctly and `isoinfo`/`fsck.vfat` read back, prints
//! what it wrote, and refuses bad input with a clear message and no file.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use kiln_exec::Cmd;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdIHr7O1aF2wbCEJ2bVkLZ9JRtl3s8Hqw3A0wqWbNQd ops@example";

fn kiln(args: &[&str]) -> Output {
    #[allow(clippy::disallowed_methods)] // the binary under test
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn blkid(image: &Path) -> String {
    Cmd::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(image)
        .run_string()
        .unwrap()
}

#[test]
fn nocloud_iso_with_user_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let user_data = dir.path().join("user-data.yaml");
    std::fs::write(&user_data, "#cloud-config\nruncmd: [[touch, /kiln-was-here]]\n").unwrap();
    let image = dir.path().join("seed.iso");
    let out = kiln(&[
        "seed",
        "--datasource",
        "nocloud",
        "-o",
        image.to_str().unwrap(),
        "--user-data",
        user_data.to_str().unwrap(),
        "--hostname",
        "web1",
        "--ssh-key",
        KEY,
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for want in ["NoCloud seed, ISO 9660, label cidata", "user-data", "meta-data"] {
        assert!(t.contains(want), "output lacks {want:?}: {t}");
    }

    let ids = blkid(&image);
    assert!(ids.contains("TYPE=iso9660") && ids.contains("LABEL=cidata"), "{ids}");
    let meta = Cmd::new("isoinfo")
        .args(["-R", "-x", "/meta-data", "-i"])
        .arg(&image)
        .run_string()
        .unwrap();
    assert!(meta.contains("local-hostname: web1") && meta.contains(KEY), "{meta}");
    let ud = Cmd::new("isoinfo")
        .args(["-R", "-x", "/user-data", "-i"])
        .arg(&image)
        .run_string()
        .unwrap();
    assert!(ud.contains("kiln-was-here"), "{ud}");
}

#[test]
fn configdrive_vfat_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("config-2.img");
    let out = kiln(&[
        "seed",
        "--datasource",
        "configdrive",
        "--fs",
        "vfat",
        "-o",
        image.to_str().unwrap(),
        "--instance-id",
        "i-42",
        "--metadata",
        "role=webserver",
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for want in [
        "ConfigDrive seed, FAT, label config-2, instance-id i-42",
        "openstack/latest/meta_data.json",
        "openstack/latest/user_data",
    ] {
        assert!(t.contains(want), "output lacks {want:?}: {t}");
    }
    let ids = blkid(&image);
    assert!(ids.contains("TYPE=vfat") && ids.contains("LABEL=config-2"), "{ids}");
    let (status, fsck) = Cmd::new("fsck.vfat")
        .args(["-n", "-l"])
        .arg(&image)
        .run_status()
        .unwrap();
    let listing = fsck.stdout_string();
    assert!(status.success(), "{listing}");
    assert!(listing.contains("/openstack/latest/meta_data.json"), "{listing}");
}

#[test]
fn bad_input_fails_clearly_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("seed.iso");
    let o = image.to_str().unwrap();
    for (args, want) in [
        (vec!["--hostname", "bad_host"], "invalid hostname"),
        (vec!["--ssh-key", "not-a-key"], "not an SSH public key"),
        (
            vec!["--user-data", "/nonexistent/user-data"],
            "reading user data from /nonexistent/user-data",
        ),
    ] {
        let mut argv = vec!["seed", "--datasource", "nocloud", "-o", o];
        argv.extend(args);
        let out = kiln(&argv);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{t}");
        assert!(t.contains(want), "want {want:?}: {t}");
        assert!(!image.exists());
    }
}
