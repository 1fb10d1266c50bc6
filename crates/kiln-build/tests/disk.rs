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
        let script = disk::finalise_script(&plan(target, cmdline), &ids);
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
    let script = disk::finalise_script(&p, &ids);
    insta::assert_snapshot!("finalise_script", script);
    // The values the rest of the image depends on.
    assert!(script.contains(&format!("UUID={} / ext4 errors=remount-ro 0 1", ids.root_fs)));
    assert!(script.contains(&format!("UUID={} /boot/efi vfat umask=0077 0 2", ids.esp_uuid())));
    assert!(script.contains(r#"GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8 quiet it's \"odd\" \$HOME""#));
    assert!(script.contains(r#"GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200""#));
    assert!(script.contains("\ncopy_grub_modules i386-pc\ncopy_grub_modules x86_64-efi\n"));
    // A UEFI-only image copies only the UEFI modules.
    let uefi = disk::finalise_script(&plan("firmware = [\"uefi\"]", "[]"), &ids);
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
    let root = DiskIds {
        root_fs: Uuid::from_u128(0x1234),
        ..ids()
    };
    disk::write_grub_cfg(tree, &p, &root).unwrap();
    let cfg = fs::read_to_string(tree.join("boot/grub/grub.cfg")).unwrap();
    insta::assert_snapshot!("grub_cfg", cfg);

    // A symlinked /boot/grub would redirect the write out of the tree.
    let elsewhere = dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::rename(tree.join("boot/grub"), dir.path().join("grub.moved")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, tree.join("boot/grub")).unwrap();
    let err = disk::write_grub_cfg(tree, &p, &root).unwrap_err();
    assert!(format!("{err:#}").contains("not a directory"), "{err:#}");
    assert!(!elsewhere.join("grub.cfg").exists());
    fs::remove_file(tree.join("boot/grub")).unwrap();

    // Without its initrd a kernel cannot find the root by UUID.
    fs::remove_file(tree.join("boot/initrd.img-6.1.0-9-amd64")).unwrap();
    let err = disk::write_grub_cfg(tree, &p, &root).unwrap_err();
    assert!(
        format!("{err:#}").contains("no /boot/initrd.img-6.1.0-9-amd64"),
        "{err:#}"
    );
    fs::remove_file(tree.join("boot/vmlinuz-6.1.0-9-amd64")).unwrap();
    fs::remove_file(tree.join("boot/vmlinuz-6.1.0-10-amd64")).unwrap();
    let err = disk::write_grub_cfg(tree, &p, &root).unwrap_err();
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
    let g = disk::disk_geometry(p, tree).unwrap();
    let raw = dir.join("disk.raw");
    fs::File::create(&raw).unwrap().set_len(g.disk).unwrap();
    let layout = disk::assemble(&raw, p, tree, &ids(), &g).unwrap_or_else(|e| panic!("{e:#}"));
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

    let grub_root = GrubRoot::ext4_root(ids.root_fs, 3);
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

/// A declared layout on a small tree: BIOS boot, ESP, a separate ext4
/// /boot, an XFS /var with an ext4 /var/log inside it, swap and the root
/// taking the rest. Each filesystem holds its own subtree and only that
/// (the mount points stay empty directories in the filesystem around
/// them), at the offset and with the GPT type, UUID and label the layout
/// gives it; GRUB looks for /boot's filesystem.
#[test]
fn declared_layout_assembles_and_checks() {
    for tool in [
        "sfdisk",
        "blkid",
        "e2fsck",
        "debugfs",
        "xfs_repair",
        "mkfs.xfs",
        "unshare",
        "mount",
    ] {
        if !kiln_exec::testing::require_tool_or_skip(tool) {
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    small_tree(&tree);
    fs::write(tree.join("boot/vmlinuz-6.1.0-9-amd64"), "kernel").unwrap();
    fs::create_dir_all(tree.join("boot/efi")).unwrap();
    fs::create_dir_all(tree.join("var/lib/dpkg")).unwrap();
    fs::write(tree.join("var/lib/dpkg/status"), "packages").unwrap();
    fs::create_dir_all(tree.join("var/log/apt")).unwrap();
    fs::write(tree.join("var/log/apt/history.log"), "log").unwrap();
    let p = plan(
        "size = \"1536MiB\"\n\
         [[targets.disk.partitions]]\nrole = \"bios_boot\"\nsize = \"1MiB\"\n\
         [[targets.disk.partitions]]\nrole = \"esp\"\nsize = \"40MiB\"\n\
         [[targets.disk.partitions]]\nrole = \"boot\"\nsize = \"64MiB\"\n\
         [[targets.disk.partitions]]\nrole = \"/var\"\nsize = \"300MiB\"\nfilesystem = \"xfs\"\n\
         [[targets.disk.partitions]]\nrole = \"/var/log\"\nsize = \"16MiB\"\nlabel = \"varlog\"\n\
         [[targets.disk.partitions]]\nrole = \"swap\"\nsize = \"16MiB\"\n\
         [[targets.disk.partitions]]\nrole = \"root\"\n",
        "[]",
    );
    let ids = ids();
    let (raw, layout) = assemble(dir.path(), &tree, &p);
    let raw_s = raw.to_str().unwrap();
    assert_eq!(fs::metadata(&raw).unwrap().len(), 1536 * MIB);

    run("sfdisk", &["--verify", raw_s]);
    let table: serde_json::Value = serde_json::from_str(&run("sfdisk", &["--json", raw_s])).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    let got: Vec<(u64, u64, &str, &str)> = parts
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap() / 2048,
                p["size"].as_u64().unwrap() / 2048,
                p["type"].as_str().unwrap(),
                p["name"].as_str().unwrap(),
            )
        })
        .collect();
    let root_mib = 1536 - 1 - 1 - 40 - 64 - 300 - 16 - 16 - 1;
    assert_eq!(
        got,
        [
            (1, 1, "21686148-6449-6E6F-744E-656564454649", "bios-boot"),
            (2, 40, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "esp"),
            (42, 64, "BC13C2FF-59E6-4262-A352-B275FD6F7172", "boot"),
            (106, 300, "4D21B016-B534-45C2-A9FB-5C16E091FD2D", "var"),
            (406, 16, "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "var-log"),
            (422, 16, "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "swap"),
            (438, root_mib, "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "root"),
        ]
    );

    // Every filesystem by type, UUID and label, probed at its offset.
    let probe = |i: usize| {
        let start = layout.partitions[i].start.to_string();
        run("blkid", &["-p", "-o", "export", "-O", &start, raw_s])
    };
    use kiln_spec::PartitionRole as Role;
    let uuid = |role: Role| disk::layout::fs_uuid(&ids, &role);
    for (i, fs, uuid, label) in [
        (1, "vfat", ids.esp_uuid(), "ESP"),
        (2, "ext4", uuid(Role::Boot).to_string(), "boot"),
        (3, "xfs", uuid(Role::Mount("/var".into())).to_string(), "var"),
        (4, "ext4", uuid(Role::Mount("/var/log".into())).to_string(), "varlog"),
        (5, "swap", uuid(Role::Swap).to_string(), "swap"),
        (6, "ext4", ids.root_fs.to_string(), "root"),
    ] {
        let b = probe(i);
        for want in [format!("TYPE={fs}"), format!("UUID={uuid}"), format!("LABEL={label}")] {
            assert!(b.contains(&want), "partition {}: no {want} in\n{b}", i + 1);
        }
    }

    // The reference checkers on each extracted filesystem, and what each holds.
    let extract_part = |i: usize, name: &str| {
        let q = &layout.partitions[i];
        extract(&raw, q.start, q.size, &dir.path().join(name))
    };
    let boot = extract_part(2, "boot.img");
    let var = extract_part(3, "var.img");
    let varlog = extract_part(4, "varlog.img");
    let root = extract_part(6, "root.img");
    for img in [&boot, &varlog, &root] {
        let (status, out) = Cmd::new("e2fsck").arg("-fn").arg(img).run_status().unwrap();
        assert!(status.success(), "{}\n{}", out.stdout_string(), out.tail);
    }
    let (status, out) = Cmd::new("xfs_repair").arg("-n").arg(&var).run_status().unwrap();
    assert!(status.success(), "{}\n{}", out.stdout_string(), out.tail);
    // `ls -p`: one `/inode/mode/uid/gid/name/size/` line per entry.
    let ls = |img: &Path, path: &str| run("debugfs", &["-R", &format!("ls -p {path}"), img.to_str().unwrap()]);
    let names = |listing: String| -> Vec<String> {
        let mut v: Vec<String> = listing
            .lines()
            .filter_map(|l| l.split('/').nth(5))
            .filter(|n| !matches!(*n, "." | ".." | "lost+found"))
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    };
    // /boot's filesystem has the kernel and GRUB's directory at its top,
    // and the ESP's mount point.
    assert_eq!(names(ls(&boot, "/")), ["efi", "grub", "vmlinuz-6.1.0-9-amd64"]);
    // /var/log's has its own content.
    assert_eq!(names(ls(&varlog, "/")), ["apt"]);
    // /var's (XFS, read through a private read-only mount) has /var
    // without /var/log's content.
    let script = r#"mount -t xfs -o ro,loop "$1" "$2"; cd "$2"; find . | sort; cd /; umount "$2""#;
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let listing = Cmd::in_mount_namespace("sh")
        .args(["-euc", script, "list-xfs"])
        .arg(&var)
        .arg(&mnt)
        .run_string()
        .unwrap();
    assert_eq!(listing.trim_end(), ".\n./lib\n./lib/dpkg\n./lib/dpkg/status\n./log");
    // The root has the mount points, empty, and none of their content.
    assert_eq!(names(ls(&root, "/boot")), Vec::<String>::new());
    assert_eq!(names(ls(&root, "/var")), Vec::<String>::new());
    assert!(names(ls(&root, "/etc")).contains(&"hostname".to_owned()));

    // GRUB's image searches for /boot's filesystem and reads /grub in it.
    let modules = Platform::I386Pc.modules_dir(&tree);
    let boot_root = GrubRoot {
        fs_uuid: uuid(Role::Boot),
        partition: 3,
        prefix: grub::SEPARATE_BOOT_PREFIX_DIR,
        fs_module: None,
    };
    let core = grub::make_image(Platform::I386Pc, &modules, &boot_root).unwrap();
    let bytes = fs::read(&raw).unwrap();
    assert_eq!(bytes[MIB as usize..MIB as usize + 500], core[..500]);
}

/// grub.cfg and the finalisation script for a separate /boot: GRUB finds
/// /boot's filesystem, the kernels lie at its top, the root is still named
/// by its UUID, and fstab mounts every filesystem by UUID.
#[test]
fn separate_boot_in_grub_cfg_and_fstab() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path();
    fs::create_dir_all(tree.join("boot")).unwrap();
    fs::write(tree.join("boot/vmlinuz-6.1.0-9-amd64"), "k").unwrap();
    fs::write(tree.join("boot/initrd.img-6.1.0-9-amd64"), "i").unwrap();
    let p = plan(
        "firmware = [\"uefi\"]\n\
         [[targets.disk.partitions]]\nrole = \"esp\"\nsize = \"64MiB\"\n\
         [[targets.disk.partitions]]\nrole = \"boot\"\nsize = \"512MiB\"\nfilesystem = \"xfs\"\n\
         [[targets.disk.partitions]]\nrole = \"root\"\nfilesystem = \"xfs\"\n",
        "[\"hugepages=16\"]",
    );
    let ids = ids();
    let boot_uuid = disk::layout::fs_uuid(&ids, &kiln_spec::PartitionRole::Boot);
    disk::write_grub_cfg(tree, &p, &ids).unwrap();
    let cfg = fs::read_to_string(tree.join("boot/grub/grub.cfg")).unwrap();
    assert!(
        cfg.contains(&format!("search --no-floppy --fs-uuid --set=root {boot_uuid}\n")),
        "{cfg}"
    );
    let linux = format!(
        "\tlinux /vmlinuz-6.1.0-9-amd64 root=UUID={} ro console=tty0 console=ttyS0,115200n8 hugepages=16\n\tinitrd /initrd.img-6.1.0-9-amd64\n",
        ids.root_fs
    );
    assert!(cfg.contains(&linux), "{cfg}");
    let script = disk::finalise_script(&p, &ids);
    assert!(script.contains("mkdir -p /boot /boot/efi\n"), "{script}");
    assert!(
        script.contains(&format!("UUID={} / xfs defaults 0 1\n", ids.root_fs)),
        "{script}"
    );
    assert!(
        script.contains(&format!("UUID={boot_uuid} /boot xfs defaults 0 2\n")),
        "{script}"
    );
    assert!(script.contains("'FSTYPE=xfs'"), "{script}");
    Cmd::new("sh").args(["-n", "-c", &script]).run().unwrap();
}

/// The extra output formats: a streamOptimized VMDK and a fixed VHD of
/// exactly the raw disk's size, as qemu-img reads and checks them.
#[test]
fn vmdk_and_vhd_outputs() {
    if !kiln_exec::testing::require_tool_or_skip("qemu-img") {
        return;
    }
    use kiln_build::targets::{convert_image, ImageFormat};
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let size = 64 * MIB;
    let f = fs::File::create(&raw).unwrap();
    f.set_len(size).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"kiln", 5 * MIB).unwrap();
    for (format, qemu, subformat) in [
        (ImageFormat::Vmdk, "vmdk", "streamOptimized"),
        (ImageFormat::Vhd, "vpc", "fixed"),
    ] {
        let out = dir.path().join(format!("disk.{}", format.name()));
        convert_image(&raw, &out, format, false, None).unwrap();
        // A fixed VHD has its footer only at the end, which qemu-img's
        // probe does not read: it is named, as for any user of the file.
        let out_s = out.to_str().unwrap();
        let info: serde_json::Value =
            serde_json::from_str(&run("qemu-img", &["info", "-f", qemu, "--output=json", out_s])).unwrap();
        assert_eq!(info["format"], qemu, "{info}");
        assert_eq!(info["virtual-size"], size, "{info}");
        if format == ImageFormat::Vmdk {
            assert_eq!(info["format-specific"]["data"]["create-type"], subformat, "{info}");
        } else {
            // The footer: "conectix", and disk type 2 (fixed) at byte 60.
            let bytes = fs::read(&out).unwrap();
            let footer = &bytes[size as usize..];
            assert_eq!(&footer[..8], b"conectix");
            assert_eq!(footer[60..64], 2u32.to_be_bytes(), "not a {subformat} VHD");
        }
        let (status, check) = Cmd::new("qemu-img")
            .args(["check", "-f", qemu])
            .arg(&out)
            .run_status()
            .unwrap();
        // qemu-img check exits 63 for formats it cannot check (a fixed VHD).
        assert!(
            status.success() || (format == ImageFormat::Vhd && status.code() == Some(63)),
            "{}\n{}",
            check.stdout_string(),
            check.tail
        );
        run(
            "qemu-img",
            &[
                "compare",
                "-f",
                "raw",
                "-F",
                qemu,
                raw.to_str().unwrap(),
                out.to_str().unwrap(),
            ],
        );
    }
    // A fixed VHD is its content and a 512-byte footer: nothing rounded.
    assert_eq!(fs::metadata(dir.path().join("disk.vhd")).unwrap().len(), size + 512);
    let odd = dir.path().join("odd.raw");
    fs::File::create(&odd).unwrap().set_len(size + 512).unwrap();
    let err = convert_image(&odd, &dir.path().join("odd.vhd"), ImageFormat::Vhd, false, None).unwrap_err();
    assert!(err.to_string().contains("whole number of MiB"), "{err}");
}
