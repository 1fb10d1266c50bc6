//! The archive writer on small synthetic trees, with GNU tar as the oracle:
//! what it lists, and what survives a re-extraction (xattrs, ACLs, a file
//! capability, hard links, a fifo, a device node); and byte-identity of
//! two archives of the same tree made in different orders at different
//! times.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use kiln_exec::Cmd;

use super::*;
use crate::targets::CheckOptions;

const EPOCH: u64 = 1_700_000_000;

fn opts(compression: TarCompression) -> ArchiveOptions {
    ArchiveOptions {
        compression,
        level: None,
        source_date_epoch: Some(EPOCH),
        threads: 2,
    }
}

/// A small root tree; `reverse` creates its entries in the other order.
pub(crate) fn make_tree(root: &Path, reverse: bool) {
    let mut steps: Vec<Box<dyn Fn()>> = vec![
        Box::new(|| {
            std::fs::create_dir_all(root.join("etc/ssh")).unwrap();
            std::fs::write(root.join("etc/os-release"), "ID=debian\n").unwrap();
            std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
            std::fs::write(root.join("etc/machine-id"), "").unwrap();
        }),
        Box::new(|| {
            std::fs::create_dir_all(root.join("usr/bin")).unwrap();
            std::fs::write(root.join("usr/bin/ping"), vec![7u8; 3000]).unwrap();
            std::fs::hard_link(root.join("usr/bin/ping"), root.join("usr/bin/ping4")).unwrap();
            std::os::unix::fs::symlink("ping", root.join("usr/bin/ping6")).unwrap();
        }),
        Box::new(|| {
            std::fs::create_dir_all(root.join("srv/shared")).unwrap();
            std::fs::write(root.join("srv/shared/notes"), "x").unwrap();
            Cmd::new("setfattr")
                .args(["-n", "user.kiln", "-v", "kept"])
                .arg(root.join("srv/shared/notes"))
                .run()
                .unwrap();
            Cmd::new("setfacl")
                .args(["-m", "u:1234:rw"])
                .arg(root.join("srv/shared/notes"))
                .run()
                .unwrap();
            Cmd::new("setfacl")
                .args(["-d", "-m", "g:4321:rx"])
                .arg(root.join("srv/shared"))
                .run()
                .unwrap();
        }),
        Box::new(|| {
            std::fs::create_dir_all(root.join("run")).unwrap();
            nix_free_mkfifo(&root.join("run/initctl"));
        }),
    ];
    if reverse {
        steps.reverse();
    }
    for s in steps {
        s();
    }
    Cmd::new("setcap")
        .args(["cap_net_raw+ep"])
        .arg(root.join("usr/bin/ping"))
        .run()
        .unwrap();
    crate::layers::clamp_times(root, EPOCH + 1000).unwrap();
}

/// A fifo, made by mkfifo(1) through the shell (kiln has no mknod binding).
fn nix_free_mkfifo(path: &Path) {
    Cmd::new("sh")
        .args(["-c", "mkfifo \"$1\"", "sh"])
        .arg(path)
        .run()
        .unwrap();
}

fn listing(archive: &Path, decompress: &str) -> String {
    Cmd::new("tar")
        .args([
            decompress,
            "--xattrs",
            "--xattrs-include=*",
            "--acls",
            "--numeric-owner",
            "-tvvf",
        ])
        .arg(archive)
        .run_string()
        .unwrap()
}

#[test]
fn gnu_tar_lists_and_re_extracts_everything() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree, false);
    // A device node needs root, which the build has too.
    Cmd::new("sh")
        .args(["-c", "mknod \"$1\" c 1 3", "sh"])
        .arg(tree.join("run/null"))
        .run()
        .unwrap();
    let archive = dir.path().join("rootfs.tar.zst");
    let written = write_archive(&tree, &archive, &opts(TarCompression::Zstd)).unwrap();
    assert!(written > 0 && written.is_multiple_of(10240), "{written}");

    let list = listing(&archive, "--zstd");
    let lines: Vec<&str> = list.lines().collect();
    // Names sorted, numeric owners, mtimes clamped to the epoch.
    assert!(lines[0].starts_with("drwx") && lines[0].ends_with(" ./"), "{list}");
    assert!(list.contains("0/0"), "{list}");
    let date = Cmd::new("sh")
        .args(["-c", &format!("TZ=UTC date -d @{EPOCH} '+%Y-%m-%d %H:%M'")])
        .run_string()
        .unwrap();
    let members = lines.iter().filter(|l| l.starts_with(['-', 'd', 'l', 'h', 'p', 'c']));
    assert!(members.clone().count() >= 14, "{list}");
    assert!(members.clone().all(|l| l.contains(&date)), "{list}");
    assert!(list.contains("./usr/bin/ping4 link to ./usr/bin/ping"), "{list}");
    assert!(list.contains("./usr/bin/ping6 -> ping"), "{list}");
    assert!(list.contains("security.capability"), "{list}");
    assert!(list.contains("user.kiln"), "{list}");
    assert!(
        list.lines().any(|l| l.starts_with('p') && l.ends_with("./run/initctl")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with('c') && l.contains("1,3") && l.ends_with("./run/null")),
        "{list}"
    );
    let pos = |name: &str| lines.iter().position(|l| l.ends_with(name)).unwrap();
    assert!(pos("./etc/") < pos("./etc/os-release") && pos("./etc/passwd") < pos("./run/"));

    // Extracted again, as root: every attribute is back.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    Cmd::new("tar")
        .args([
            "--zstd",
            "--xattrs",
            "--xattrs-include=*",
            "--acls",
            "--numeric-owner",
            "-xpf",
        ])
        .arg(&archive)
        .arg("-C")
        .arg(&out)
        .run()
        .unwrap();
    let getfattr = |path: &str| {
        Cmd::new("sh")
            .args(["-c", "getfattr -d -m - --absolute-names \"$1\"", "sh"])
            .arg(out.join(path))
            .run_string()
            .unwrap()
    };
    assert!(
        getfattr("usr/bin/ping").contains("security.capability="),
        "{}",
        getfattr("usr/bin/ping")
    );
    assert!(getfattr("srv/shared/notes").contains("user.kiln=\"kept\""));
    let acl = Cmd::new("sh")
        .args(["-c", "getfacl -cp \"$1\" \"$2\"", "sh"])
        .arg(out.join("srv/shared/notes"))
        .arg(out.join("srv/shared"))
        .run_string()
        .unwrap();
    assert!(acl.contains("user:1234:rw-"), "{acl}");
    assert!(acl.contains("default:group:4321:r-x"), "{acl}");
    let meta = |p: &str| std::fs::symlink_metadata(out.join(p)).unwrap();
    assert_eq!(meta("usr/bin/ping").ino(), meta("usr/bin/ping4").ino());
    assert_eq!(meta("usr/bin/ping").mtime(), EPOCH as i64);
    assert!(meta("run/initctl").file_type().is_fifo_like());
}

/// `is_fifo` for a std file type, spelt for these tests.
trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}

impl FifoLike for std::fs::FileType {
    fn is_fifo_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_fifo()
    }
}

#[test]
fn the_same_tree_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    make_tree(&a, false);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    make_tree(&b, true);
    for compression in [TarCompression::Zstd, TarCompression::Gzip, TarCompression::None] {
        let (x, y) = (dir.path().join("x"), dir.path().join("y"));
        write_archive(&a, &x, &opts(compression)).unwrap();
        // Another thread count: zstd's workers do not change its output.
        let other = ArchiveOptions {
            threads: 1,
            ..opts(compression)
        };
        write_archive(&b, &y, &other).unwrap();
        assert!(
            std::fs::read(&x).unwrap() == std::fs::read(&y).unwrap(),
            "{} archives differ",
            compression.name()
        );
    }
}

#[test]
fn compressions_are_what_tools_read() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree, false);
    for (compression, flag) in [
        (TarCompression::Zstd, "--zstd"),
        (TarCompression::Gzip, "--gzip"),
        (TarCompression::None, "--no-auto-compress"),
    ] {
        let archive = dir.path().join(format!("rootfs.{}", compression.extension()));
        write_archive(&tree, &archive, &opts(compression)).unwrap();
        assert!(
            listing(&archive, flag).contains("./etc/passwd"),
            "{}",
            compression.name()
        );
        // And the check passes it.
        let results = check::check(&archive, &CheckOptions::default()).unwrap();
        let failed = crate::targets::contract::testing::failed(&results);
        assert!(failed.is_empty(), "{}: {failed:#?}", compression.name());
    }
}

#[test]
fn a_missing_tree_is_an_error_that_names_tar() {
    let dir = tempfile::tempdir().unwrap();
    let err = write_archive(
        &dir.path().join("nope"),
        &dir.path().join("x.tar"),
        &opts(TarCompression::None),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("GNU tar") && msg.contains("tar --create"), "{msg}");
}

#[test]
fn plan_names_and_stages() {
    let source = "[image]\nname = \"rootfs\"\nversion = \"2.0\"\n[base]\ndistro = \"debian\"\nrelease = \"bookworm\"\n[targets.tar]\ncompression = \"gzip\"\n";
    let dir = tempfile::tempdir().unwrap();
    let loaded = kiln_spec::parse_str(source, Path::new("spec.toml"), dir.path()).unwrap();
    let inputs = TargetInputs {
        spec: &loaded.spec,
        family: crate::distro::family(loaded.spec.base.distro()),
        source_date_epoch: Some(1),
        dir: dir.path(),
    };
    let plan = TarPlan::resolve(&inputs).unwrap();
    assert_eq!(plan.file_name, "rootfs-2.0-rootfs.tar.gz");
    assert_eq!(plan.level, Some(6));
    assert!(plan.packages().is_empty());
    assert_eq!(plan.artifact().format, ImageFormat::Tar);
    let stages = plan.stages(&loaded.spec, &BTreeMap::new());
    assert_eq!(stages.assemble.len(), 1);
    assert!(
        stages.assemble[0].actions[0].contains("gzip level 6"),
        "{:?}",
        stages.assemble[0].actions
    );
}

#[test]
fn the_finalise_script_writes_an_empty_fstab_only_over_none() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("finalise.sh");
    std::fs::write(&script, FINALISE_SCRIPT).unwrap();
    Cmd::new("shellcheck").arg(&script).run().unwrap();
    // Run with the fstab path pointed into the temp dir.
    let fstab = dir.path().join("fstab");
    let body = FINALISE_SCRIPT.replace("/etc/fstab", &fstab.to_string_lossy());
    let run = || Cmd::new("sh").args(["-c", &body]).run_string().unwrap();
    std::fs::write(&fstab, "# UNCONFIGURED FSTAB FOR BASE SYSTEM\n").unwrap();
    assert!(run().contains("without entries"));
    assert!(std::fs::read_to_string(&fstab).unwrap().contains("Written by kiln"));
    std::fs::write(&fstab, "server:/srv /srv nfs defaults 0 0\n").unwrap();
    assert!(run().contains("kept"));
    assert_eq!(
        std::fs::read_to_string(&fstab).unwrap(),
        "server:/srv /srv nfs defaults 0 0\n"
    );
}
