//! One function per fuzz target: it hands the bytes to kiln's reader the way
//! kiln does with bytes from a file or the network, and uses what comes
//! back. A target may return any error; it must not panic, hang or make an
//! allocation over [`crate::alloc::LIMIT`].

use std::cell::RefCell;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_disk::{DiskImage, FileKind, FsRead};

/// A fuzz target: its name (the corpus directory) and its function.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// Longest input the fuzzer makes for it.
    pub max_len: usize,
    /// Tokens the mutator inserts (keywords, magic numbers).
    pub tokens: &'static [&'static [u8]],
}

const IMAGE_MAX: usize = 4 << 20;
const TEXT_MAX: usize = 64 << 10;

/// Every target, in the order `bench/fuzz.sh` runs them (network-facing first).
pub const TARGETS: &[Target] = &[
    Target {
        name: "qcow2",
        run: qcow2,
        max_len: IMAGE_MAX,
        tokens: &[
            b"QFI\xfb",
            b"\x00\x00\x00\x03",
            b"\x00\x00\x00\x02",
            b"\x80\x00\x00\x00\x00\x00\x00\x00",
        ],
    },
    Target {
        name: "table",
        run: table,
        max_len: IMAGE_MAX,
        tokens: &[
            b"EFI PART",
            b"\x55\xaa",
            b"\xee",
            b"\x05",
            b"\x0f",
            b"\x85",
            b"\x00\x00\x01\x00",
        ],
    },
    Target {
        name: "ext4",
        run: ext4,
        max_len: IMAGE_MAX,
        tokens: &[b"\x53\xef", b"\x0a\xf3", b"\x00\x00\x08\x00", b"\xff\xff\xff\xff"],
    },
    Target {
        name: "probe",
        run: probe,
        max_len: IMAGE_MAX,
        tokens: &[
            b"\x53\xef",
            b"XFSB",
            b"hsqs",
            b"CD001",
            b"FAT32   ",
            b"FAT16   ",
            b"SWAPSPACE2",
            b"_BHRfS_M",
        ],
    },
    Target {
        name: "checksums",
        run: checksums,
        max_len: TEXT_MAX,
        tokens: &[b"  ", b" *", b"\n", b"\\", b"SHA512 (", b") = "],
    },
    Target {
        name: "http",
        run: http,
        max_len: TEXT_MAX,
        tokens: &[
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"",
            b":",
            b",",
            b"null",
            b"bytes=",
            b"-",
            b"%",
            b"%2e%2e",
            b"/../",
            b"Bearer realm=\"",
            b"\",service=\"",
            b"<Item>",
            b"</Item>",
            b"<imageId>",
            b"[default]",
            b" = ",
            b"\"layers\"",
            b"\"annotations\"",
            b"\"org.opencontainers.image.title\"",
            b"\"errors\"",
            b"\"taskId\"",
        ],
    },
    Target {
        name: "inspect",
        run: inspect,
        max_len: IMAGE_MAX,
        tokens: &[b"QFI\xfb", b"EFI PART", b"\x55\xaa", b"\x53\xef"],
    },
    Target {
        name: "xfs",
        run: xfs,
        // The XFS seed is 5.4 MiB: mkfs.xfs makes no smaller filesystem.
        max_len: 8 << 20,
        tokens: &[b"XFSB", b"IN", b"XD2B", b"XDD3", b"\x00\x00\x10\x00"],
    },
    Target {
        name: "iso",
        run: iso,
        max_len: IMAGE_MAX,
        tokens: &[
            b"CD001",
            b"EL TORITO SPECIFICATION",
            b"RR",
            b"PX",
            b"NM",
            b"SL",
            b"CE",
            b"\x55\xaa",
        ],
    },
    Target {
        name: "fat",
        run: fat,
        max_len: IMAGE_MAX,
        tokens: &[
            b"\x55\xaa",
            b"FAT32   ",
            b"FAT16   ",
            b"FAT12   ",
            b"MZ",
            b"PE\x00\x00",
            b"\x0f",
        ],
    },
    Target {
        name: "spec",
        run: spec,
        max_len: TEXT_MAX,
        tokens: &[
            b"[image]\n",
            b"[base]\n",
            b"[[files]]\n",
            b"[[run]]\n",
            b"[[users]]\n",
            b"[targets.disk]\n",
            b"[targets.ovh-byol]\n",
            b"[packages]\n",
            b" = ",
            b"\"",
            b"'''",
            b"[",
            b"]",
            b"{",
            b"}",
            b"size = ",
            b"\"4GiB\"",
            b"mode = \"0644\"",
            b"\n",
        ],
    },
    Target {
        name: "ovh_storage",
        run: ovh_storage,
        max_len: TEXT_MAX,
        tokens: &[
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"",
            b":",
            b",",
            b"\"partitioning\"",
            b"\"layout\"",
            b"\"mountPoint\"",
            b"\"fileSystem\"",
            b"\"size\"",
            b"\"raidLevel\"",
            b"\"disks\"",
            b"\"extras\"",
            b"\"lv\"",
            b"\"zp\"",
            b"18446744073709551615",
            b"-1",
            b"0",
        ],
    },
    Target {
        name: "console",
        run: console,
        max_len: TEXT_MAX,
        tokens: &[
            b"\x1b[",
            b"\x1b]",
            b"\x07",
            b"\x1b\\",
            b"\r\n",
            b"login: ",
            b"KILN-VERDICT ",
            b"hostname=",
            b"\xe2\x82",
            b"KILN-IMDS ",
            b"=",
            b"md0 : active raid1",
        ],
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

// ------------------------------------------------------------ scratch files

thread_local! {
    /// Readers that open a path get the bytes through this file, in
    /// /dev/shm when there is one (a write per run).
    static SCRATCH: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

/// Writes `data` to this thread's scratch file and gives its path. The
/// directory is `$KILN_FUZZ_SCRATCH` when set (bench/fuzz.sh sets it and
/// removes it after each session, even one that aborted), else a temporary
/// one that [`remove_scratch`] removes.
fn scratch_file(data: &[u8]) -> PathBuf {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let dir = s.get_or_insert_with(|| {
            let shm = Path::new("/dev/shm");
            let base = match std::env::var_os("KILN_FUZZ_SCRATCH") {
                Some(dir) => PathBuf::from(dir),
                None if shm.is_dir() => shm.to_owned(),
                None => std::env::temp_dir(),
            };
            std::fs::create_dir_all(&base).expect("creating the fuzzer's scratch directory");
            tempfile::Builder::new()
                .prefix("kiln-fuzz-")
                .tempdir_in(base)
                .expect("creating the fuzzer's scratch directory")
        });
        let path = dir.path().join("input");
        std::fs::write(&path, data).expect("writing the fuzzer's scratch file");
        path
    })
}

/// Removes this thread's scratch directory (thread-locals of the main
/// thread are not dropped at exit).
pub fn remove_scratch() {
    SCRATCH.with(|s| drop(s.borrow_mut().take()));
}

// ------------------------------------------------------------ disk images

fn qcow2(data: &[u8]) {
    let path = scratch_file(data);
    let Ok(mut image) = DiskImage::open(&path) else {
        return;
    };
    let size = image.virtual_size();
    let _ = serde_json::to_string(image.format());
    // Reads at the start, at cluster boundaries and across the end.
    let mut buf = vec![0u8; 8192];
    for pos in [
        0,
        512,
        65536 - 100,
        1 << 20,
        size / 2,
        size.saturating_sub(4096),
        size.saturating_sub(10),
    ] {
        let _ = image.read_exact_at(&mut buf, pos);
    }
    let _ = read_partitions(&mut image);
}

fn read_partitions(image: &mut DiskImage) -> kiln_disk::Result<()> {
    let table = kiln_disk::read_partition_table(image)?;
    for p in table.partitions.iter().take(8) {
        let _ = kiln_disk::probe_filesystem(image, p.start, p.size);
    }
    Ok(())
}

fn table(data: &[u8]) {
    if let Ok(t) = kiln_disk::read_partition_table(&mut Cursor::new(data)) {
        let _ = serde_json::to_string(&t);
        for p in &t.partitions {
            let _ = (p.part_type.name(), p.part_type.is_esp(), p.part_type.to_string());
        }
    }
}

fn probe(data: &[u8]) {
    let len = data.len() as u64;
    let mut r = Cursor::new(data);
    let _ = kiln_disk::probe_filesystem(&mut r, 0, len);
    // At an offset, and with a size larger than the bytes (a truncated image).
    let _ = kiln_disk::probe_filesystem(&mut r, 512, len.saturating_mul(4));
}

/// Walks a filesystem the way `kiln check` and `kiln inspect` do, bounded.
fn walk(fs: &mut dyn FsRead) {
    let _ = fs.prefetch_tree();
    let mut dirs = vec![("/".to_owned(), 0)];
    let mut seen = 0;
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(Some(entries)) = fs.read_dir_meta(&dir) else {
            continue;
        };
        for (name, meta) in entries {
            seen += 1;
            if seen > 200 {
                return;
            }
            let path = format!("{}/{name}", dir.trim_end_matches('/'));
            match meta.kind {
                FileKind::Dir if depth < 6 => dirs.push((path, depth + 1)),
                FileKind::File => {
                    let _ = fs.read_file(&path);
                }
                FileKind::Symlink => {
                    let _ = fs.read_link(&path);
                    let _ = fs.metadata(&path);
                }
                _ => {}
            }
        }
    }
    for path in ["/etc/os-release", "/boot", "/etc/../etc/passwd", "/lost+found/x"] {
        let _ = fs.read_file(path);
        let _ = fs.read_dir(path);
        let _ = fs.symlink_metadata(path);
    }
}

fn filesystem(data: &[u8]) {
    let path = scratch_file(data);
    let Ok(image) = DiskImage::open(&path) else {
        return;
    };
    let size = image.virtual_size();
    if let Ok(mut fs) = kiln_disk::open_filesystem(&image, 0, size) {
        let _ = fs.fs_type();
        walk(fs.as_mut());
    }
}

fn ext4(data: &[u8]) {
    filesystem(data)
}

fn xfs(data: &[u8]) {
    filesystem(data)
}

fn inspect(data: &[u8]) {
    let path = scratch_file(data);
    if let Ok(found) = kiln_disk::inspect(&path) {
        let _ = found.to_string();
        let _ = serde_json::to_string(&found);
    }
}

fn iso(data: &[u8]) {
    use kiln_disk::isoread::IsoImage;
    let path = scratch_file(data);
    if let Ok(found) = kiln_disk::inspect_iso(&path) {
        let _ = found.to_string();
    }
    let Ok(image) = IsoImage::open(&path) else {
        return;
    };
    let _ = image.boot_entries();
    let mut dirs = vec![("/".to_owned(), 0)];
    let mut seen = 0;
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(Some(nodes)) = image.read_dir(&dir) else {
            continue;
        };
        for node in nodes {
            seen += 1;
            if seen > 200 {
                return;
            }
            let path = format!("{}/{}", dir.trim_end_matches('/'), node.name);
            let _ = image.contiguous_offset(&node);
            let _ = image.file_at_block(node.block());
            match node.kind {
                FileKind::Dir if depth < 6 => dirs.push((path, depth + 1)),
                FileKind::File => {
                    let _ = image.read_node(&node, 1 << 20);
                    let _ = image.lookup(&path);
                }
                _ => {}
            }
        }
    }
}

fn fat(data: &[u8]) {
    use kiln_disk::fatread::{pe_kind, FatReader};
    let _ = pe_kind(data);
    let Ok(fs) = FatReader::open(Cursor::new(data), 0, data.len() as u64) else {
        return;
    };
    let mut dirs = vec![("/".to_owned(), 0)];
    let mut seen = 0;
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(Some(names)) = fs.read_dir(&dir) else {
            continue;
        };
        for name in names {
            seen += 1;
            if seen > 200 {
                return;
            }
            let path = format!("{}/{name}", dir.trim_end_matches('/'));
            match fs.read_file(&path) {
                Ok(Some(bytes)) => {
                    let _ = pe_kind(&bytes);
                }
                _ if depth < 6 => dirs.push((path, depth + 1)),
                _ => {}
            }
        }
    }
}

// ------------------------------------------------------------ text

fn spec(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // A directory that does not exist: the loader must not touch files.
    let dir = Path::new("/nonexistent/kiln-fuzz");
    match kiln_spec::parse_str(&text, &dir.join("kiln.toml"), dir) {
        Ok(loaded) => {
            let _ = serde_json::to_string(&loaded.spec);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fn ovh_storage(data: &[u8]) {
    use kiln_deploy::ovh::storage::{parse_storage, plan_disks, select_layout, validate_layout};
    let text = String::from_utf8_lossy(data);
    let Ok(storage) = parse_storage(&text) else {
        return;
    };
    for disks in [1, 2, 4] {
        if let Ok((wanted, layout)) = select_layout(&storage, disks) {
            let _ = validate_layout(&layout);
            for boot in [kiln_spec::Firmware::Bios, kiln_spec::Firmware::Uefi] {
                let _ = plan_disks(&layout, wanted, boot);
            }
        }
    }
}

fn checksums(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = kiln_deploy::oci::sidecar_sha512(&text, Path::new("image.qcow2.sha512"));
    // A `checksum_url` list of a `[base] image`, fetched from the network.
    let _ = kiln_build::download::lookup_sha256(&text, "debian-12-genericcloud-amd64.qcow2");
}

/// The first byte picks the response reader; the rest is the response.
fn http(data: &[u8]) {
    use kiln_deploy::{aws, oci, ovh, serve};
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(body);
    match which % 12 {
        // OVH API: error bodies, tasks and install progress.
        0 => {
            let _ = ovh::api::client::error_fields(&text);
        }
        1 => {
            if let Ok(task) = serde_json::from_str::<ovh::api::install::Task>(&text) {
                let _ = ovh::api::install::advice(&task, None);
            }
            if let Ok(steps) = serde_json::from_str::<Vec<ovh::api::install::Step>>(&text) {
                let task = ovh::api::install::Task {
                    task_id: 1,
                    function: None,
                    status: "error".into(),
                    comment: None,
                };
                for step in steps.iter().take(16) {
                    let _ = ovh::api::install::advice(&task, Some(step));
                }
            }
        }
        // OCI registry: challenges, error bodies, manifests, references.
        2 => {
            let _ = oci::client::parse_challenge(&text);
        }
        3 => {
            let _ = oci::client::error_message(body);
        }
        4 => {
            if let Ok(m) = serde_json::from_slice::<oci::Manifest>(body) {
                for layer in &m.layers {
                    let _ = layer.title().map(oci::safe_title);
                }
            }
        }
        5 => {
            if let Ok(r) = oci::Reference::parse(&text) {
                let _ = r.to_string();
            }
        }
        // AWS: EC2's XML, EBS's JSON, the config and credentials files.
        6 => {
            let _ = aws::ec2::parse_images(&text);
        }
        7 => {
            let _ = aws::ec2::parse_snapshots(&text);
        }
        8 => {
            let _ = aws::ebs::parse_started(body);
        }
        9 => {
            let _ = aws::config::parse_ini(&text);
        }
        // kiln serve: Range and Authorization headers, request targets.
        10 => {
            let (header, len) = text.split_once('\n').unwrap_or((&text, ""));
            let len = len.trim().parse().unwrap_or(body.len() as u64);
            let _ = serve::parse_range(Some(header), len);
            let _ = serve::parse_range(Some(header), 0);
            let _ = serve::parse_range(Some(header), u64::MAX);
        }
        _ => {
            if let Ok(auth) = serve::Auth::parse(&text) {
                let _ = auth.header_value();
            }
            let root = std::env::temp_dir();
            let _ = serve::resolve_target(&root, &text);
        }
    }
}

/// The serial console as it streams in (cut into reads at the bytes'
/// own choosing), and the readers of console text: the boot expectations,
/// the IMDS guest report and the OVH simulation's verdict.
fn console(data: &[u8]) {
    use kiln_vm::console::{Console, Expect, Pattern};
    let mut console = Console::new("/nonexistent/console.log");
    let mut expect = Expect::new();
    for (name, re) in [
        ("login", r"login: $"),
        ("panic", r"Kernel panic"),
        ("verdict", r"KILN-VERDICT .*ok"),
    ] {
        if let Ok(p) = Pattern::new(name, re) {
            expect = if name == "panic" {
                expect.fail_on(p)
            } else {
                expect.want(p)
            };
        }
    }
    let mut rest = data;
    let mut at = 0;
    while !rest.is_empty() {
        let cut = usize::from(rest[0] % 64).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(cut);
        console.push(chunk);
        at += 1;
        let _ = expect.scan(console.text(), Duration::from_millis(at));
        rest = tail;
    }
    let _ = console.tail(10);
    let text = console.text();
    let report = kiln_vm::imds::guest::Report::read(text);
    let _ = report.problems("ssh-ed25519 AAAA", "i-0123", 1 << 30);
    let _ = kiln_deploy::ovh::simulate::probe::Verdict::parse(text);
}
