//! Importing a base image: a small GPT disk with an ext4 root, made by the
//! test (sfdisk, mke2fs -d, qemu-img convert), read back into a tree.
//! Runs as root, as the build does (owners, device nodes).

use std::os::unix::fs::{FileExt, MetadataExt};

use super::*;

fn run(tool: &str, args: &[&std::ffi::OsStr]) -> String {
    Cmd::new(tool)
        .args(args)
        .run()
        .unwrap_or_else(|e| panic!("{tool}: {e}"))
        .stdout_string()
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// A root tree with every kind of file and some machine state.
fn make_source(src: &Path) {
    let w = |p: &str, body: &str| {
        let path = src.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, body).unwrap();
    };
    w(
        "etc/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n",
    );
    fs::create_dir_all(src.join("bin")).unwrap();
    // An amd64 ELF, so that the architecture check has something to read.
    fs::copy("/bin/dash", src.join("bin/sh")).unwrap();
    w("usr/bin/sudo", "setuid");
    fs::set_permissions(src.join("usr/bin/sudo"), fs::Permissions::from_mode(0o4755)).unwrap();
    w("home/ops/notes", "mine");
    std::os::unix::fs::lchown(src.join("home/ops/notes"), Some(1000), Some(1001)).unwrap();
    std::os::unix::fs::lchown(src.join("home/ops"), Some(1000), Some(1001)).unwrap();
    fs::set_permissions(src.join("home/ops"), fs::Permissions::from_mode(0o700)).unwrap();
    w("usr/bin/ping", "ping");
    fs::hard_link(src.join("usr/bin/ping"), src.join("usr/bin/ping4")).unwrap();
    std::os::unix::fs::symlink("ping", src.join("usr/bin/ping6")).unwrap();
    run(
        "setfattr",
        &[
            os("-n"),
            os("user.kiln"),
            os("-v"),
            os("yes"),
            src.join("usr/bin/ping").as_os_str(),
        ],
    );
    run(
        "setfattr",
        &[
            os("-n"),
            os("security.capability"),
            os("-v"),
            os("0sAQAAAgAgAAAAAAAAAAAAAAAAAAA="),
            src.join("usr/bin/ping").as_os_str(),
        ],
    );
    fs::create_dir_all(src.join("dev")).unwrap();
    run("mknod", &[src.join("dev/null").as_os_str(), os("c"), os("1"), os("3")]);
    run("mknod", &[src.join("dev/initctl").as_os_str(), os("p")]);
    w("var/lib/cloud/instance/boot-finished", "x");
    w("etc/machine-id", "0123456789abcdef0123456789abcdef\n");
    w("etc/ssh/ssh_host_ed25519_key", "secret");
    w("etc/ssh/sshd_config", "PermitRootLogin no\n");
    w("var/log/apt/history.log", "log");
    fs::create_dir_all(src.join("var/log/journal")).unwrap();
}

/// A qcow2 disk: GPT, a BIOS boot partition, and the ext4 root from `src`.
fn make_disk(dir: &Path, src: &Path) -> PathBuf {
    let fs_img = dir.join("root.ext4");
    run(
        "mke2fs",
        &[
            os("-q"),
            os("-t"),
            os("ext4"),
            os("-d"),
            src.as_os_str(),
            fs_img.as_os_str(),
            os("30M"),
        ],
    );
    let raw = dir.join("disk.raw");
    File::create(&raw).unwrap().set_len(34 << 20).unwrap();
    Cmd::new("sfdisk")
        .arg(&raw)
        .stdin_bytes(
            "label: gpt\nstart=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649\nstart=4096, type=L\n",
        )
        .run()
        .unwrap();
    let bytes = fs::read(&fs_img).unwrap();
    File::options()
        .write(true)
        .open(&raw)
        .unwrap()
        .write_all_at(&bytes, 4096 * 512)
        .unwrap();
    let qcow2 = dir.join("disk.qcow2");
    run(
        "qemu-img",
        &[os("convert"), os("-O"), os("qcow2"), raw.as_os_str(), qcow2.as_os_str()],
    );
    qcow2
}

fn image(url: &str) -> BaseImage {
    BaseImage {
        url: url.to_owned(),
        checksum: Some(format!("sha256:{}", "0".repeat(64))),
        checksum_url: None,
        format: None,
        compression: None,
    }
}

const BOOKWORM: Expected<'static> = Expected {
    distro: Distro::Debian,
    release: Some("bookworm"),
    architecture: "amd64",
};

#[test]
fn an_ext4_root_comes_out_whole_and_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    let disk = make_disk(dir.path(), &src);
    let tree = dir.path().join("tree");
    let log = dir.path().join("log");
    let got = import(
        &disk,
        &image("https://example.org/disk.qcow2"),
        BOOKWORM,
        &dir.path().join("scratch"),
        &tree,
        &log,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(got.partition, Some(2));
    assert_eq!(got.fs, FsType::Ext4);
    assert_eq!(got.os, "Debian GNU/Linux 12 (bookworm)");
    let meta = |p: &str| fs::symlink_metadata(tree.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(meta("usr/bin/sudo").mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!(
        (meta("home/ops/notes").uid(), meta("home/ops/notes").gid()),
        (1000, 1001)
    );
    assert_eq!(meta("home/ops").mode() & 0o7777, 0o700);
    assert_eq!(
        meta("usr/bin/ping").ino(),
        meta("usr/bin/ping4").ino(),
        "hard link kept"
    );
    assert_eq!(fs::read_link(tree.join("usr/bin/ping6")).unwrap(), Path::new("ping"));
    assert_eq!(meta("dev/null").mode() & S_IFMT, S_IFCHR);
    assert_eq!(meta("dev/null").rdev(), libc::makedev(1, 3));
    assert_eq!(meta("dev/initctl").mode() & S_IFMT, S_IFIFO);
    let attrs = run(
        "getfattr",
        &[
            os("-d"),
            os("-m"),
            os("-"),
            os("-e"),
            os("hex"),
            tree.join("usr/bin/ping").as_os_str(),
        ],
    );
    assert!(attrs.contains("user.kiln=0x796573"), "{attrs}");
    assert!(attrs.contains("security.capability=0x0100000200200000"), "{attrs}");
    assert_eq!(
        fs::read_to_string(tree.join("etc/ssh/sshd_config")).unwrap(),
        "PermitRootLogin no\n"
    );
    // Cleaned: the image's machine state is gone.
    assert_eq!(fs::read(tree.join("etc/machine-id")).unwrap(), b"");
    assert!(!tree.join("etc/ssh/ssh_host_ed25519_key").exists());
    assert!(fs::read_dir(tree.join("var/lib/cloud")).unwrap().next().is_none());
    assert!(!tree.join("var/log/apt/history.log").exists());
    assert!(tree.join("var/log/journal").is_dir());
}

#[test]
fn a_wrong_family_release_or_architecture_fails_before_extraction() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    let disk = make_disk(dir.path(), &src);
    let tree = dir.path().join("tree");
    let attempt = |expected: Expected<'_>, img: &BaseImage| {
        let e = import(
            &disk,
            img,
            expected,
            &dir.path().join("scratch"),
            &tree,
            &dir.path().join("log"),
        )
        .unwrap_err();
        assert!(!tree.exists(), "extracted before the checks");
        format!("{e:#}")
    };
    let qcow2 = image("https://example.org/disk.qcow2");
    let e = attempt(
        Expected {
            distro: Distro::Rhel,
            release: Some("8"),
            ..BOOKWORM
        },
        &qcow2,
    );
    assert!(
        e.contains("holds Debian GNU/Linux 12 (bookworm) (family \"debian\"), but [base] distro is \"rhel\""),
        "{e}"
    );
    let e = attempt(
        Expected {
            release: Some("trixie"),
            ..BOOKWORM
        },
        &qcow2,
    );
    assert!(
        e.contains("release \"bookworm\", but [base] release is \"trixie\""),
        "{e}"
    );
    let e = attempt(
        Expected {
            architecture: "arm64",
            ..BOOKWORM
        },
        &qcow2,
    );
    assert!(
        e.contains("built for amd64 (its /bin/sh), but [base] architecture is arm64"),
        "{e}"
    );
    let mut raw = image("https://example.org/disk.raw");
    raw.format = Some(BaseImageFormat::Raw);
    let e = attempt(BOOKWORM, &raw);
    assert!(e.contains("is a qcow2 file, not a raw disk"), "{e}");
}

#[test]
fn a_disk_without_a_linux_filesystem_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("empty.raw");
    File::create(&raw).unwrap().set_len(8 << 20).unwrap();
    let e = import(
        &raw,
        &image("https://example.org/empty.raw"),
        BOOKWORM,
        &dir.path().join("scratch"),
        &dir.path().join("tree"),
        &dir.path().join("log"),
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("no ext2/3/4, XFS or btrfs filesystem on the disk"),
        "{e:#}"
    );
}

#[test]
fn xz_and_zstd_images_are_decompressed_sparsely() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; 3 << 20];
    data[5] = 1;
    data[(2 << 20) + 7] = 9;
    let xz = dir.path().join("d.raw.xz");
    {
        use std::io::Write;
        let mut e = xz2::write::XzEncoder::new(File::create(&xz).unwrap(), 1);
        e.write_all(&data).unwrap();
        e.finish().unwrap();
    }
    let zst = dir.path().join("d.raw.zst");
    fs::write(&zst, zstd::encode_all(&data[..], 1).unwrap()).unwrap();
    for (file, c) in [(xz, BaseImageCompression::Xz), (zst, BaseImageCompression::Zstd)] {
        let scratch = dir.path().join(format!("s-{c:?}"));
        fs::create_dir_all(&scratch).unwrap();
        let out = decompress(&file, c, &scratch).unwrap();
        assert_eq!(fs::read(&out).unwrap(), data);
        assert!(
            fs::metadata(&out).unwrap().blocks() * 512 < data.len() as u64 / 2,
            "not sparse"
        );
    }
}

#[test]
fn os_release_names_the_family() {
    assert_eq!(family_of("ID=debian\n"), Some(Distro::Debian));
    assert_eq!(family_of("ID=ubuntu\nID_LIKE=debian\n"), Some(Distro::Ubuntu));
    assert_eq!(family_of("ID=arch\n"), Some(Distro::Arch));
    assert_eq!(
        family_of("ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n"),
        Some(Distro::Rhel)
    );
    assert_eq!(family_of("ID=alpine\n"), None);
    assert_eq!(
        os_release_value("A=1\nVERSION_ID='8.10'\n", "VERSION_ID").as_deref(),
        Some("8.10")
    );
}
