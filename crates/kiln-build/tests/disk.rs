//! The `disk` target without a Debian tree: the generated finalisation
//! script (snapshot, `sh -n`, shellcheck), `grub.cfg` for a tree's kernels,
//! and `assemble` on a small tree carrying the host's GRUB modules, checked
//! by the reference tools (sfdisk, blkid, fsck.vfat, e2fsck) and against
//! GRUB's own images. The real build and boot is `crates/kiln/tests/real_boot.rs`.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_build::targets::disk::{self, DiskIds, DiskPlan};
use kiln_disk::grub::{self, GrubRoot, Platform};
use kiln_exec::Cmd;
use uuid::Uuid;

const MIB: u64 = 1 << 20;

fn plan(target: &str, cmdline: &str) -> DiskPlan {
    let text = format!(
        "[image]\nname = \"t\"\nversion = \"1\"\nsource_date_epoch = 1700000000\n\
         [base]\ndistro = \"debian\"\nrelease = \"bookworm\"\n\
         [kernel]\ncmdline = {cmdline}\n[targets.disk]\n{target}"
    );
    let spec = match kiln_spec::parse_str(&text, Path::new("spec.toml"), Path::new("/")) {
        Ok(loaded) => loaded.spec,
        Err(e) => panic!("{e}"),
    };
    DiskPlan::resolve(&spec, spec.targets.disk.as_ref().unwrap())
}

fn ids() -> DiskIds {
    DiskIds::derive(|what| Uuid::new_v5(&Uuid::NAMESPACE_OID, what.as_bytes()))
}

fn run(tool: &str, args: &[&str]) -> String {
    Cmd::new(tool).args(args).run_string().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn finalise_script_is_clean_shell() {
    let ids = ids();
    for (target, cmdline) in [
        ("", r#"["quiet", "it's \"odd\" $HOME `x`"]"#),
        ("firmware = [\"uefi\"]\nconsole = \"hvc0\"", "[]"),
    ] {
        let script = disk::finalise_script(&plan(target, cmdline), ids.root_fs, &ids.esp_uuid());
        Cmd::new("sh")
            .args(["-n", "-c", &script])
            .run()
            .unwrap_or_else(|e| panic!("sh -n: {e}\n{script}"));
        let (status, out) = Cmd::new("shellcheck")
            .args(["--shell=sh", "--severity=style", "--enable=all", "--format=gcc", "-"])
            .stdin_bytes(script.clone())
            .run_status()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            status.success(),
            "shellcheck findings:\n{}{}\n{script}",
            out.stdout_string(),
            out.tail
        );
    }
}

#[test]
fn finalise_script_snapshot() {
    let ids = ids();
    let p = plan("", r#"["quiet", "it's \"odd\" $HOME"]"#);
    let script = disk::finalise_script(&p, ids.root_fs, &ids.esp_uuid());
    insta::assert_snapshot!("finalise_script", script);
    // The values the rest of the image depends on.
    assert!(script.contains(&format!("UUID={} / ext4 errors=remount-ro 0 1", ids.root_fs)));
    assert!(script.contains(&format!("UUID={} /boot/efi vfat umask=0077 0 2", ids.esp_uuid())));
    assert!(script.contains(r#"GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8 quiet it's \"odd\" \$HOME""#));
    assert!(script.contains(r#"GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200""#));
    assert!(script.contains("\ncopy_grub_modules i386-pc\ncopy_grub_modules x86_64-efi\n"));
    // A UEFI-only image copies only the UEFI modules.
    let uefi = disk::finalise_script(&plan("firmware = [\"uefi\"]", "[]"), ids.root_fs, &ids.esp_uuid());
    assert!(uefi.contains("\ncopy_grub_modules x86_64-efi\n") && !uefi.contains("copy_grub_modules i386-pc"));
}

/// A tree with two kernels, newest first in the menu.
#[test]
fn grub_cfg_lists_the_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path();
    fs::create_dir_all(tree.join("boot")).unwrap();
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(
        tree.join("etc/os-release"),
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n",
    )
    .unwrap();
    for v in ["6.1.0-9-amd64", "6.1.0-10-amd64"] {
        fs::write(tree.join(format!("boot/vmlinuz-{v}")), "k").unwrap();
        fs::write(tree.join(format!("boot/initrd.img-{v}")), "i").unwrap();
    }
    fs::write(tree.join("boot/config-6.1.0-10-amd64"), "c").unwrap();
    let p = plan("", r#"["quiet", "a b"]"#);
    let root = Uuid::from_u128(0x1234);
    disk::write_grub_cfg(tree, &p, root).unwrap();
    let cfg = fs::read_to_string(tree.join("boot/grub/grub.cfg")).unwrap();
    insta::assert_snapshot!("grub_cfg", cfg);

    // A symlinked /boot/grub would redirect the write out of the tree.
    let elsewhere = dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::rename(tree.join("boot/grub"), dir.path().join("grub.moved")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, tree.join("boot/grub")).unwrap();
    let err = disk::write_grub_cfg(tree, &p, root).unwrap_err();
    assert!(format!("{err:#}").contains("not a directory"), "{err:#}");
    assert!(!elsewhere.join("grub.cfg").exists());
    fs::remove_file(tree.join("boot/grub")).unwrap();

    // Without its initrd a kernel cannot find the root by UUID.
    fs::remove_file(tree.join("boot/initrd.img-6.1.0-9-amd64")).unwrap();
    let err = disk::write_grub_cfg(tree, &p, root).unwrap_err();
    assert!(
        format!("{err:#}").contains("no /boot/initrd.img-6.1.0-9-amd64"),
        "{err:#}"
    );
    fs::remove_file(tree.join("boot/vmlinuz-6.1.0-9-amd64")).unwrap();
    fs::remove_file(tree.join("boot/vmlinuz-6.1.0-10-amd64")).unwrap();
    let err = disk::write_grub_cfg(tree, &p, root).unwrap_err();
    assert!(format!("{err:#}").contains("no kernel"), "{err:#}");
}

/// A small tree standing in for a finalised image: the host's GRUB module
/// directories where the image keeps them, and a grub.cfg.
fn small_tree(root: &Path) {
    for platform in [Platform::I386Pc, Platform::X86_64Efi] {
        let to = platform.modules_dir(root);
        fs::create_dir_all(&to).unwrap();
        for entry in fs::read_dir(platform.modules_dir(Path::new("/"))).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    fs::create_dir_all(root.join("boot/grub")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("boot/grub/grub.cfg"), "echo hello\n").unwrap();
    fs::write(root.join("etc/hostname"), "kiln\n").unwrap();
}

/// Assembles a disk from `tree` into `dir/disk.raw`.
fn assemble(dir: &Path, tree: &Path, p: &DiskPlan) -> (PathBuf, kiln_disk::Layout) {
    let content = kiln_disk::tree_size(tree).unwrap();
    let g = disk::disk_geometry(p, content).unwrap();
    let raw = dir.join("disk.raw");
    fs::File::create(&raw).unwrap().set_len(g.disk_size).unwrap();
    let layout = disk::assemble(&raw, p, tree, &ids()).unwrap();
    (raw, layout)
}

fn extract(disk: &Path, start: u64, size: u64, to: &Path) -> PathBuf {
    let bytes = fs::read(disk).unwrap();
    fs::write(to, &bytes[start as usize..(start + size) as usize]).unwrap();
    to.to_owned()
}

#[test]
fn assembled_disk_passes_the_reference_tools() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    small_tree(&tree);
    let p = plan("esp_size = \"40MiB\"\nheadroom = \"16MiB\"", "[]");
    let ids = ids();
    let (raw, layout) = assemble(dir.path(), &tree, &p);
    let raw_s = raw.to_str().unwrap();

    // The table: BIOS boot, ESP, root, 1 MiB aligned, as sfdisk reads it.
    run("sfdisk", &["--verify", raw_s]);
    let table: serde_json::Value = serde_json::from_str(&run("sfdisk", &["--json", raw_s])).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    let got: Vec<(u64, u64, &str)> = parts
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
                p["type"].as_str().unwrap(),
            )
        })
        .collect();
    let root_sectors = layout.partitions[2].size / 512;
    assert_eq!(
        got,
        [
            (2048, 2048, "21686148-6449-6E6F-744E-656564454649"),
            (4096, 40 * 2048, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
            (4096 + 40 * 2048, root_sectors, "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        ]
    );
    assert_eq!(table["partitiontable"]["id"], ids.disk.to_string().to_uppercase());

    // The filesystems, by the UUIDs fstab and GRUB use.
    let esp = &layout.partitions[1];
    let root = &layout.partitions[2];
    let probe = |offset: u64| run("blkid", &["-p", "-o", "export", "-O", &offset.to_string(), raw_s]);
    let b = probe(esp.start);
    assert!(
        b.contains("TYPE=vfat") && b.contains(&format!("UUID={}", ids.esp_uuid())),
        "{b}"
    );
    assert!(b.contains("VERSION=FAT32") && b.contains("LABEL=ESP"), "{b}");
    let b = probe(root.start);
    assert!(
        b.contains("TYPE=ext4") && b.contains(&format!("UUID={}", ids.root_fs)),
        "{b}"
    );

    // fsck.vfat -l lists every file it checks.
    let esp_img = extract(&raw, esp.start, esp.size, &dir.path().join("esp.img"));
    let (status, out) = Cmd::new("fsck.vfat")
        .args(["-n", "-l"])
        .arg(&esp_img)
        .run_status()
        .unwrap();
    let listing = out.stdout_string();
    assert!(status.success(), "{listing}\n{}", out.tail);
    // UEFI: GRUB at the removable path and the vendor path.
    for path in ["/EFI/BOOT/BOOTX64.EFI", "/EFI/debian/grubx64.efi"] {
        assert!(listing.contains(path), "{path} missing:\n{listing}");
    }
    let root_img = extract(&raw, root.start, root.size, &dir.path().join("root.img"));
    let (status, out) = Cmd::new("e2fsck").arg("-fn").arg(&root_img).run_status().unwrap();
    assert!(status.success(), "{}\n{}", out.stdout_string(), out.tail);

    let grub_root = GrubRoot {
        fs_uuid: ids.root_fs,
        partition: 3,
    };
    // BIOS: boot.img's code in the MBR pointing at core.img in partition 1.
    let bytes = fs::read(&raw).unwrap();
    let boot = fs::read(Platform::I386Pc.modules_dir(&tree).join("boot.img")).unwrap();
    assert_eq!(bytes[..0x5c], boot[..0x5c]);
    assert_eq!(bytes[0x5c..0x64], 2048u64.to_le_bytes());
    assert_eq!(bytes[0x68..440], boot[0x68..440]);
    let core = grub::make_image(Platform::I386Pc, &Platform::I386Pc.modules_dir(&tree), &grub_root).unwrap();
    assert_eq!(bytes[MIB as usize..MIB as usize + 500], core[..500]);
    assert_eq!(bytes[MIB as usize + 500..MIB as usize + 508], 2049u64.to_le_bytes());
}

/// Sets every timestamp under `path` so that reading the tree changes
/// nothing: mke2fs copies atimes, and relatime would update an atime that
/// is not newer than the mtime. (The build's job, not the target's.)
fn freeze_times(path: &Path) {
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let atime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(4_000_000_000);
    if path.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            freeze_times(&entry.unwrap().path());
        }
    }
    let times = fs::FileTimes::new().set_accessed(atime).set_modified(mtime);
    fs::File::open(path).unwrap().set_times(times).unwrap();
}

#[test]
fn same_tree_same_disk() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    small_tree(&tree);
    freeze_times(&tree);
    let p = plan(
        "esp_size = \"40MiB\"\nheadroom = \"16MiB\"\nfirmware = [\"bios\"]",
        "[]",
    );
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    let (da, _) = assemble(&a, &tree, &p);
    let (db, _) = assemble(&b, &tree, &p);
    let (a, b) = (fs::read(da).unwrap(), fs::read(db).unwrap());
    let differ: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).take(20).collect();
    assert!(differ.is_empty(), "two assemblies differ at {differ:x?}");
}
