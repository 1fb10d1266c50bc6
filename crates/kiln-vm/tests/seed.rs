//! Every seed combination (NoCloud, ConfigDrive × ISO 9660, FAT) written
//! through `write_seed` and read back by tools that did not write it:
//! `blkid` for the label and type, `isoinfo` (Rock Ridge and Joliet) or
//! `fsck.vfat` plus the `fatfs` crate for the names and bytes, and the
//! YAML/JSON parsed back to check what cloud-init will see. Booting a guest
//! on a seed is the boot tests' job.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use kiln_exec::Cmd;
use kiln_vm::seed::{render_seed, write_seed, Datasource, SeedConfig, SeedFs};

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdIHr7O1aF2wbCEJ2bVkLZ9JRtl3s8Hqw3A0wqWbNQd ops@example";
const USER_DATA: &[u8] = b"#cloud-config\npackages: [htop]\n";

fn blkid(image: &Path) -> BTreeMap<String, String> {
    let out = Cmd::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(image)
        .run_string()
        .unwrap();
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Every file in the image (path without leading `/` → bytes), read by an
/// independent reader for its filesystem, and the label it reports.
fn read_back(image: &Path, fs_type: SeedFs) -> (String, BTreeMap<String, Vec<u8>>) {
    match fs_type {
        SeedFs::Iso => {
            let d = Cmd::new("isoinfo").args(["-d", "-i"]).arg(image).run_string().unwrap();
            let label = d
                .lines()
                .find_map(|l| l.strip_prefix("Volume id: "))
                .unwrap()
                .to_owned();
            let find = Cmd::new("isoinfo")
                .args(["-R", "-f", "-i"])
                .arg(image)
                .run_string()
                .unwrap();
            let mut files = BTreeMap::new();
            for path in find.lines() {
                let out = Cmd::new("isoinfo")
                    .args(["-R", "-x", path, "-i"])
                    .arg(image)
                    .run()
                    .unwrap();
                // Directories extract as nothing; keep only what has a
                // Joliet twin with the same bytes.
                let joliet = Cmd::new("isoinfo")
                    .args(["-J", "-x", path, "-i"])
                    .arg(image)
                    .run()
                    .unwrap();
                assert!(out.stdout == joliet.stdout, "Rock Ridge and Joliet disagree on {path}");
                files.insert(path.trim_start_matches('/').to_owned(), out.stdout);
            }
            (label, files)
        }
        SeedFs::Vfat => {
            let (status, out) = Cmd::new("fsck.vfat").args(["-n"]).arg(image).run_status().unwrap();
            assert!(status.success(), "fsck.vfat: {}{}", out.stdout_string(), out.tail);
            let file = fs::OpenOptions::new().read(true).write(true).open(image).unwrap();
            let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new().update_accessed_date(false)).unwrap();
            let label = fs
                .read_volume_label_from_root_dir()
                .unwrap()
                .unwrap()
                .trim_end()
                .to_owned();
            let mut files = BTreeMap::new();
            let mut stack = vec![(fs.root_dir(), String::new())];
            while let Some((dir, prefix)) = stack.pop() {
                for e in dir.iter() {
                    let e = e.unwrap();
                    let name = e.file_name();
                    if name == "." || name == ".." {
                        continue;
                    }
                    let path = format!("{prefix}{name}");
                    if e.is_dir() {
                        files.insert(path.clone(), Vec::new());
                        stack.push((e.to_dir(), format!("{path}/")));
                    } else {
                        let mut bytes = Vec::new();
                        e.to_file().read_to_end(&mut bytes).unwrap();
                        files.insert(path, bytes);
                    }
                }
            }
            (label, files)
        }
    }
}

fn config(ds: Datasource, fs_type: SeedFs) -> SeedConfig {
    let mut cfg = SeedConfig::new(ds, fs_type);
    cfg.user_data = Some(USER_DATA.to_vec());
    cfg.hostname = Some("web1".into());
    cfg.instance_id = Some("i-0123".into());
    cfg.ssh_keys = vec![KEY.into(), format!("  {KEY}-2  ")];
    cfg
}

fn check_nocloud(fs_type: SeedFs) {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("seed.img");
    let mut cfg = config(Datasource::NoCloud, fs_type);
    cfg.network_config = Some(b"version: 2\nethernets:\n  eth0:\n    dhcp4: true\n".to_vec());
    write_seed(&cfg, &image).unwrap();

    let ids = blkid(&image);
    let want_type = if fs_type == SeedFs::Iso { "iso9660" } else { "vfat" };
    assert_eq!(
        (ids["TYPE"].as_str(), ids["LABEL"].as_str()),
        (want_type, "cidata"),
        "{ids:?}"
    );

    let (label, files) = read_back(&image, fs_type);
    assert_eq!(label, "cidata");
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["meta-data", "network-config", "user-data"]
    );
    assert_eq!(files["user-data"], USER_DATA);
    assert_eq!(files["network-config"], cfg.network_config.unwrap());
    let meta: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&files["meta-data"]).unwrap();
    assert_eq!(meta["instance-id"].as_str(), Some("i-0123"));
    assert_eq!(meta["local-hostname"].as_str(), Some("web1"));
    let keys: Vec<_> = meta["public-keys"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, [KEY.to_owned(), format!("{KEY}-2")]);
}

fn check_configdrive(fs_type: SeedFs) {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("config-drive.img");
    let mut cfg = config(Datasource::ConfigDrive, fs_type);
    cfg.metadata = vec![("role".into(), "webserver".into()), ("env".into(), "prod".into())];
    cfg.network_config = Some(br#"{"links": [], "networks": [], "services": []}"#.to_vec());
    write_seed(&cfg, &image).unwrap();

    let ids = blkid(&image);
    let want_type = if fs_type == SeedFs::Iso { "iso9660" } else { "vfat" };
    assert_eq!(
        (ids["TYPE"].as_str(), ids["LABEL"].as_str()),
        (want_type, "config-2"),
        "{ids:?}"
    );

    let (label, files) = read_back(&image, fs_type);
    assert_eq!(label, "config-2");
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        [
            "openstack",
            "openstack/latest",
            "openstack/latest/meta_data.json",
            "openstack/latest/network_data.json",
            "openstack/latest/user_data"
        ]
    );
    assert_eq!(files["openstack/latest/user_data"], USER_DATA);
    let meta: serde_json::Value = serde_json::from_slice(&files["openstack/latest/meta_data.json"]).unwrap();
    assert_eq!(
        meta,
        serde_json::json!({
            "uuid": "i-0123",
            "name": "web1",
            "hostname": "web1",
            "public_keys": {"key-0": KEY, "key-1": format!("{KEY}-2")},
            "meta": {"role": "webserver", "env": "prod"},
        })
    );
    let net: serde_json::Value = serde_json::from_slice(&files["openstack/latest/network_data.json"]).unwrap();
    assert!(net["links"].is_array());
}

#[test]
fn nocloud_iso() {
    check_nocloud(SeedFs::Iso);
}

#[test]
fn nocloud_vfat() {
    check_nocloud(SeedFs::Vfat);
}

#[test]
fn configdrive_iso() {
    check_configdrive(SeedFs::Iso);
}

#[test]
fn configdrive_vfat() {
    check_configdrive(SeedFs::Vfat);
}

#[test]
fn defaults_give_a_fresh_instance_id_and_empty_cloud_config() {
    let cfg = SeedConfig::new(Datasource::NoCloud, SeedFs::Iso);
    let (a, b) = (render_seed(&cfg).unwrap(), render_seed(&cfg).unwrap());
    assert_ne!(a.instance_id, b.instance_id);
    assert_eq!(uuid::Uuid::parse_str(&a.instance_id).unwrap().get_version_num(), 4);
    let files: BTreeMap<_, _> = a.files.iter().cloned().collect();
    assert_eq!(files["user-data"], b"#cloud-config\n{}\n");
    let meta: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&files["meta-data"]).unwrap();
    assert_eq!(meta["instance-id"].as_str(), Some(a.instance_id.as_str()));
    assert!(meta.get("local-hostname").is_none() && meta.get("public-keys").is_none());
}

#[test]
fn raw_meta_data_is_passed_through() {
    let mut cfg = SeedConfig::new(Datasource::ConfigDrive, SeedFs::Vfat);
    let raw = br#"{"uuid": "custom", "availability_zone": "gra"}"#.to_vec();
    cfg.meta_data = Some(raw.clone());
    let seed = render_seed(&cfg).unwrap();
    assert_eq!(seed.instance_id, "custom");
    assert_eq!(seed.files[0], ("openstack/latest/meta_data.json".to_owned(), raw));

    let mut cfg = SeedConfig::new(Datasource::NoCloud, SeedFs::Iso);
    cfg.meta_data = Some(b"local-hostname: x\n".to_vec());
    assert_eq!(render_seed(&cfg).unwrap().instance_id, "nocloud");
}

#[test]
fn same_seed_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    for fs_type in [SeedFs::Iso, SeedFs::Vfat] {
        let mut seed = render_seed(&config(Datasource::ConfigDrive, fs_type)).unwrap();
        seed.mtime = 1_700_000_000;
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        seed.write(&a).unwrap();
        seed.write(&b).unwrap();
        assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap(), "{fs_type:?}");
    }
}

#[test]
fn bad_inputs_are_clear_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seed.iso");
    type Case = (Box<dyn Fn(&mut SeedConfig)>, Datasource, &'static str);
    let cases: Vec<Case> = vec![
        (
            Box::new(|c| c.hostname = Some("web_1".into())),
            Datasource::NoCloud,
            "invalid hostname",
        ),
        (
            Box::new(|c| c.instance_id = Some("a/b".into())),
            Datasource::NoCloud,
            "invalid instance id",
        ),
        (
            Box::new(|c| c.ssh_keys = vec!["ssh-ed25519".into()]),
            Datasource::NoCloud,
            "not an SSH public key",
        ),
        (
            Box::new(|c| c.metadata = vec![("a".into(), "b".into())]),
            Datasource::NoCloud,
            "ConfigDrive's `meta`",
        ),
        (
            Box::new(|c| c.metadata = vec![(String::new(), "b".into())]),
            Datasource::ConfigDrive,
            "must not be empty",
        ),
        (
            Box::new(|c| {
                c.meta_data = Some(b"{}".to_vec());
                c.hostname = Some("x".into());
            }),
            Datasource::ConfigDrive,
            "replaces hostname",
        ),
        (
            Box::new(|c| c.meta_data = Some(b"{}".to_vec())),
            Datasource::ConfigDrive,
            "\"uuid\"",
        ),
        (
            Box::new(|c| c.meta_data = Some(b"- a".to_vec())),
            Datasource::NoCloud,
            "YAML mapping",
        ),
        (
            Box::new(|c| c.network_config = Some(b"{".to_vec())),
            Datasource::ConfigDrive,
            "network_data.json",
        ),
        (
            Box::new(|c| c.network_config = Some(b"[".to_vec())),
            Datasource::NoCloud,
            "network-config",
        ),
        (
            Box::new(|c| c.user_data = Some(b"#cloud-config\nusers: [\n".to_vec())),
            Datasource::NoCloud,
            "not valid YAML",
        ),
    ];
    for (edit, ds, want) in cases {
        let mut cfg = SeedConfig::new(ds, SeedFs::Iso);
        edit(&mut cfg);
        let err = format!("{:#}", write_seed(&cfg, &out).unwrap_err());
        assert!(err.contains(want), "want {want:?} in: {err}");
        assert!(!out.exists());
    }
    let err = write_seed(
        &SeedConfig::new(Datasource::NoCloud, SeedFs::Vfat),
        &dir.path().join("no/such/dir.img"),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("no/such/dir.img"), "{err:#}");
}
