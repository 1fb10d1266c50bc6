//! Oracle tests of the FAT writer: `fsck.vfat` must find nothing to fix,
//! `blkid` must see the label and volume id, and the files must read back
//! with their long names and bytes through an independent implementation
//! (the `fatfs` crate) and `fsck.vfat -l`. Also: determinism, writing
//! inside a disk at a partition offset, and trees taken from a directory.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use kiln_disk::fat::{entries_from_dir, write_fat_at, write_fat_image, Content, FatEntry, FatOptions, FatType};
use kiln_exec::Cmd;

/// What `fatfs` reads back from a volume.
struct Volume {
    fat_type: FatType,
    label: String,
    volume_id: u32,
    cluster_size: u32,
    /// Every directory and file, sorted by path.
    entries: Vec<FatEntry>,
}

/// A byte range of a file, so `fatfs` can read a partition of a disk.
struct Slice {
    file: fs::File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Slice {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.len - self.pos.min(self.len)) as usize;
        let n = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Slice {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("read-only"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for Slice {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::End(d) => self.len.checked_add_signed(d).unwrap(),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d).unwrap(),
        };
        Ok(self.pos)
    }
}

fn read_fat(disk: &Path, offset: u64, size: u64) -> Volume {
    fn walk(dir: &fatfs::Dir<Slice>, prefix: &str, out: &mut Vec<FatEntry>) {
        for e in dir.iter() {
            let e = e.unwrap();
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if e.is_dir() {
                out.push(FatEntry::dir(&path));
                walk(&e.to_dir(), &path, out);
            } else {
                let mut bytes = Vec::new();
                e.to_file().read_to_end(&mut bytes).unwrap();
                out.push(FatEntry::file(path, bytes));
            }
        }
    }
    let slice = Slice {
        file: fs::File::open(disk).unwrap(),
        start: offset,
        len: size,
        pos: 0,
    };
    let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new().update_accessed_date(false)).unwrap();
    let mut entries = Vec::new();
    walk(&fs.root_dir(), "", &mut entries);
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let label = fs.read_volume_label_from_root_dir().unwrap().unwrap_or_default();
    Volume {
        fat_type: match fs.fat_type() {
            fatfs::FatType::Fat12 => FatType::Fat12,
            fatfs::FatType::Fat16 => FatType::Fat16,
            fatfs::FatType::Fat32 => FatType::Fat32,
        },
        label: label.trim_end().to_owned(),
        volume_id: fs.volume_id(),
        cluster_size: fs.cluster_size(),
        entries,
    }
}

const MIB: u64 = 1 << 20;

fn seed_files() -> Vec<FatEntry> {
    vec![
        FatEntry::file("openstack/latest/meta_data.json", br#"{"uuid": "i-1"}"#.to_vec()),
        FatEntry::file("openstack/latest/user_data", b"#cloud-config\n{}\n".to_vec()),
        FatEntry::file("openstack/latest/network_data.json", b"{}".to_vec()),
        FatEntry::file("user-data", b"#cloud-config\n".to_vec()),
        FatEntry::file("EMPTY", Vec::new()),
        FatEntry::file("a name with spaces and ünïcode.txt", b"x".repeat(5000)),
        FatEntry::dir("empty-dir"),
    ]
}

/// `fsck.vfat -n` (never repairs) must exit 0 and report nothing but its
/// banner and summary; returns its `-l -v` listing.
fn fsck(image: &Path) -> String {
    let (status, out) = Cmd::new("fsck.vfat")
        .args(["-n", "-l", "-v"])
        .arg(image)
        .run_status()
        .unwrap();
    let text = format!("{}{}", out.stdout_string(), out.tail);
    assert!(status.success(), "fsck.vfat failed: {text}");
    for bad in [
        "differ",
        "wrong",
        "Free cluster summary",
        "invalid",
        "Dirty bit",
        "Correct",
    ] {
        assert!(!text.contains(bad), "fsck.vfat complains ({bad}): {text}");
    }
    text
}

fn blkid(args: &[&str], image: &Path) -> String {
    Cmd::new("blkid")
        .args(["-p", "-o", "export"])
        .args(args)
        .arg(image)
        .run_string()
        .unwrap()
}

/// An error and its causes, as `anyhow`'s `{:#}` prints them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s = format!("{s}: {c}");
        cur = c.source();
    }
    s
}

fn files_of(entries: &[FatEntry]) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = entries
        .iter()
        .filter_map(|e| match &e.content {
            Content::Bytes(b) => Some((e.path.clone(), b.clone())),
            Content::HostFile(p) => Some((e.path.clone(), fs::read(p).unwrap())),
            Content::Dir => None,
        })
        .collect();
    v.sort();
    v
}

#[test]
fn seed_image_passes_fsck_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("seed.img");
    let opts = FatOptions::new("config-2", 0x1234_abcd, 1_700_000_000);
    write_fat_image(&image, &opts, &seed_files()).unwrap();
    assert!(!dir.path().join("seed.img.part").exists());
    assert_eq!(
        fs::metadata(&image).unwrap().len(),
        MIB,
        "a small seed gets the 1 MiB minimum"
    );

    let listing = fsck(&image);
    for name in [
        "/openstack/latest/meta_data.json",
        "/openstack/latest/network_data.json",
        "/openstack/latest/user_data",
        "/user-data",
        "/empty-dir",
    ] {
        assert!(listing.contains(name), "fsck.vfat -l lacks {name}: {listing}");
    }

    let ids = blkid(&[], &image);
    for want in ["TYPE=vfat", "LABEL=config-2", "UUID=1234-ABCD"] {
        assert!(ids.lines().any(|l| l == want), "blkid lacks {want}: {ids}");
    }

    let vol = read_fat(&image, 0, MIB);
    assert_eq!(vol.label, "config-2");
    assert_eq!(vol.volume_id, 0x1234_abcd);
    assert_eq!(vol.fat_type, FatType::Fat12);
    assert_eq!(files_of(&vol.entries), files_of(&seed_files()));
    let dirs: Vec<_> = vol
        .entries
        .iter()
        .filter(|e| e.content == Content::Dir)
        .map(|e| e.path.as_str())
        .collect();
    assert_eq!(dirs, ["empty-dir", "openstack", "openstack/latest"]);
}

#[test]
fn output_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    let opts = FatOptions::new("cidata", 7, 1_700_000_000);
    write_fat_image(&a, &opts, &seed_files()).unwrap();
    write_fat_image(&b, &opts, &seed_files()).unwrap();
    assert!(
        fs::read(&a).unwrap() == fs::read(&b).unwrap(),
        "same inputs, different bytes"
    );
    let later = FatOptions {
        mtime: 1_800_000_000,
        ..opts
    };
    write_fat_image(&c, &later, &seed_files()).unwrap();
    assert!(fs::read(&a).unwrap() != fs::read(&c).unwrap(), "mtime is not recorded");
}

#[test]
fn esp_inside_a_disk_is_fat32_and_stays_in_its_partition() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    let (offset, size) = (MIB, 64 * MIB);
    fs::File::create(&disk).unwrap().set_len(offset + size + MIB).unwrap();
    // Sentinels just outside the partition must survive.
    let f = fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(&[0xa5; 512], offset - 512).unwrap();
    f.write_all_at(&[0x5a; 512], offset + size).unwrap();
    drop(f);

    let tree = dir.path().join("esp");
    fs::create_dir_all(tree.join("EFI/BOOT")).unwrap();
    fs::create_dir_all(tree.join("EFI/debian")).unwrap();
    fs::create_dir_all(tree.join("loader/entries")).unwrap();
    let big: Vec<u8> = (0..3 * MIB as usize).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(tree.join("EFI/BOOT/BOOTX64.EFI"), &big).unwrap();
    fs::write(tree.join("EFI/debian/grub.cfg"), "search --fs-uuid x\n").unwrap();
    let entries = entries_from_dir(&tree).unwrap();
    assert_eq!(
        entries.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
        [
            "EFI",
            "EFI/BOOT",
            "EFI/BOOT/BOOTX64.EFI",
            "EFI/debian",
            "EFI/debian/grub.cfg",
            "loader",
            "loader/entries"
        ]
    );

    let opts = FatOptions::new("ESP", 0xdead_beef, 0);
    write_fat_at(&disk, offset, size, &opts, &entries).unwrap();

    let bytes = fs::read(&disk).unwrap();
    assert!(bytes[(offset - 512) as usize..offset as usize]
        .iter()
        .all(|&b| b == 0xa5));
    assert!(bytes[(offset + size) as usize..][..512].iter().all(|&b| b == 0x5a));
    // The boot sector records the partition's first LBA (hidden sectors).
    assert_eq!(bytes[offset as usize + 0x1c..][..4], 2048u32.to_le_bytes());

    let ids = blkid(&["-O", &offset.to_string()], &disk);
    for want in ["TYPE=vfat", "LABEL=ESP", "VERSION=FAT32"] {
        assert!(ids.lines().any(|l| l == want), "blkid lacks {want}: {ids}");
    }
    let vol = read_fat(&disk, offset, size);
    assert_eq!(vol.fat_type, FatType::Fat32);
    assert_eq!(files_of(&vol.entries), files_of(&entries));

    let part = dir.path().join("part.img");
    fs::write(&part, &bytes[offset as usize..(offset + size) as usize]).unwrap();
    let listing = fsck(&part);
    assert!(listing.contains("/EFI/BOOT/BOOTX64.EFI"), "{listing}");
}

#[test]
fn large_esp_image_uses_4k_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("esp.img");
    let opts = FatOptions {
        size: Some(512 * MIB),
        ..FatOptions::new("EFI", 1, 0)
    };
    write_fat_image(
        &image,
        &opts,
        &[FatEntry::file("EFI/BOOT/BOOTX64.EFI", vec![1; 100_000])],
    )
    .unwrap();
    fsck(&image);
    let vol = read_fat(&image, 0, 512 * MIB);
    assert_eq!((vol.fat_type, vol.cluster_size), (FatType::Fat32, 4096));
}

#[test]
fn auto_size_grows_with_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("big.img");
    let files: Vec<_> = (0..40)
        .map(|i| FatEntry::file(format!("dir{}/file-number-{i}.bin", i % 3), vec![i as u8; 100_000]))
        .collect();
    write_fat_image(&image, &FatOptions::new("BIG", 1, 0), &files).unwrap();
    let len = fs::metadata(&image).unwrap().len();
    assert!((5 * MIB..=8 * MIB).contains(&len), "{len}");
    fsck(&image);
    assert_eq!(files_of(&read_fat(&image, 0, len).entries), files_of(&files));
}

#[test]
fn too_small_and_bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("x.img");
    let small = FatOptions {
        size: Some(MIB),
        ..FatOptions::new("X", 1, 0)
    };
    let err = write_fat_image(&image, &small, &[FatEntry::file("big", vec![0; 2 * MIB as usize])]).unwrap_err();
    assert!(chain(&err).contains("need"), "{err}");
    assert!(!image.exists() && !dir.path().join("x.img.part").exists());

    let err = write_fat_image(&image, &FatOptions::new("lowercase label too long", 1, 0), &[]).unwrap_err();
    assert!(chain(&err).contains("11 ASCII"), "{err}");

    fs::File::create(&image).unwrap().set_len(4 * MIB).unwrap();
    let err = write_fat_at(&image, MIB, 4 * MIB, &FatOptions::new("X", 1, 0), &[]).unwrap_err();
    assert!(chain(&err).contains("does not fit"), "{err}");

    let tree = dir.path().join("tree");
    fs::create_dir(&tree).unwrap();
    std::os::unix::fs::symlink("x", tree.join("link")).unwrap();
    let err = entries_from_dir(&tree).unwrap_err();
    assert!(chain(&err).contains("symlink"), "{err}");
}
