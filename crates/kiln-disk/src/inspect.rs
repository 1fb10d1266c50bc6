//! `kiln inspect`: what an image file holds, read without mounting it:
//! container format, partition table, filesystems, and for the root
//! filesystem its kernels, initramfs images, installed packages and the
//! build manifest kiln embedded. Serialises to JSON for `--json` and prints
//! as text otherwise.

use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::dpkg::installed_packages;
use crate::error::Result;
use crate::fsread::{open_filesystem, FileKind, FsRead};
use crate::image::{DiskImage, Format};
use crate::probe::{probe_filesystem, FsInfo};
use crate::table::{read_partition_table, PartitionTable};

/// Where kiln embeds the build manifest in an image.
pub const MANIFEST_PATH: &str = "/usr/share/kiln/manifest.json";

/// Everything `inspect` found.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub path: String,
    pub format: Format,
    pub file_size: u64,
    pub virtual_size: u64,
    pub partition_table: PartitionTable,
    /// One entry per partition (or one for the whole disk when there is no
    /// table), with the filesystem found there.
    pub volumes: Vec<Volume>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<RootInfo>,
    /// Things that could not be read, without failing the inspection.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A partition, or the whole disk, and its filesystem.
#[derive(Debug, Clone, Serialize)]
pub struct Volume {
    /// Partition number; `None` for a whole-disk filesystem.
    pub partition: Option<u32>,
    pub start: u64,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FsInfo>,
}

/// What the root filesystem contains.
#[derive(Debug, Clone, Serialize)]
pub struct RootInfo {
    pub partition: Option<u32>,
    /// `PRETTY_NAME` from `/etc/os-release`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// Versions of `/boot/vmlinuz-*`.
    pub kernels: Vec<String>,
    /// Directories in `/lib/modules`.
    pub module_dirs: Vec<String>,
    /// `/boot/initrd.img-*` and `/boot/initramfs-*`.
    pub initramfs: Vec<String>,
    /// Packages dpkg lists as installed; `None` without a dpkg database.
    pub installed_packages: Option<usize>,
    /// The embedded build manifest, as it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<serde_json::Value>,
}

/// Inspects the image at `path`.
pub fn inspect(path: &Path) -> Result<Inspection> {
    let mut image = DiskImage::open(path)?;
    let table = read_partition_table(&mut image)?;
    let mut warnings = table.warnings.clone();
    let spans = table.filesystem_spans(image.virtual_size());
    let mut volumes = Vec::new();
    let mut root = None;
    for (partition, start, size) in spans {
        let filesystem = probe_filesystem(&mut image, start, size)?;
        if root.is_none()
            && filesystem
                .as_ref()
                .is_some_and(|f| f.fs_type.is_ext() || f.fs_type == crate::FsType::Xfs)
        {
            match open_filesystem(&image, start, size).and_then(|mut fs| root_info(fs.as_mut(), partition)) {
                Ok(found) => root = found,
                Err(e) => warnings.push(format!(
                    "reading the filesystem of {}: {}",
                    name_of(partition),
                    chain(&e)
                )),
            }
        }
        volumes.push(Volume {
            partition,
            start,
            size,
            filesystem,
        });
    }
    Ok(Inspection {
        path: path.display().to_string(),
        format: image.format().clone(),
        file_size: image.file_size(),
        virtual_size: image.virtual_size(),
        partition_table: table,
        volumes,
        root,
        warnings,
    })
}

fn name_of(partition: Option<u32>) -> String {
    partition.map_or_else(|| "the whole disk".to_owned(), |i| format!("partition {i}"))
}

pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s = format!("{s}: {c}");
        cur = c.source();
    }
    s
}

/// Root-filesystem facts, or `None` when `fs` has no `/etc`.
fn root_info(fs: &mut dyn FsRead, partition: Option<u32>) -> Result<Option<RootInfo>> {
    if fs.metadata("/etc")?.map(|m| m.kind) != Some(FileKind::Dir) {
        return Ok(None);
    }
    let boot = fs.read_dir("/boot")?.unwrap_or_default();
    let kernels = boot
        .iter()
        .filter_map(|n| n.strip_prefix("vmlinuz-"))
        .map(str::to_owned)
        .collect();
    let initramfs = boot
        .iter()
        .filter(|n| n.starts_with("initrd.img-") || n.starts_with("initramfs-"))
        .cloned()
        .collect();
    let module_dirs = fs.read_dir("/lib/modules")?.unwrap_or_default();
    let installed_packages = fs
        .read_file("/var/lib/dpkg/status")?
        .map(|s| installed_packages(&String::from_utf8_lossy(&s)).len());
    let manifest = fs.read_file(MANIFEST_PATH)?.map(|bytes| {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    });
    let os = fs.read_file("/etc/os-release")?.and_then(|b| {
        String::from_utf8_lossy(&b)
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_owned()))
    });
    Ok(Some(RootInfo {
        partition,
        os,
        kernels,
        module_dirs,
        initramfs,
        installed_packages,
        manifest,
    }))
}

/// Bytes as "1.5 GiB".
pub(crate) fn human_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.format {
            Format::Raw => writeln!(f, "{}: raw disk image", self.path)?,
            Format::Qcow2(h) => {
                write!(
                    f,
                    "{}: qcow2 v{}, {} clusters, {:?} compression",
                    self.path,
                    h.version,
                    human_size(h.cluster_size),
                    h.compression
                )?;
                if h.dirty {
                    write!(f, ", dirty")?;
                }
                if h.corrupt {
                    write!(f, ", marked corrupt")?;
                }
                writeln!(f)?;
            }
        }
        writeln!(
            f,
            "  file size {}, virtual size {}",
            human_size(self.file_size),
            human_size(self.virtual_size)
        )?;
        let t = &self.partition_table;
        match t.kind {
            None => writeln!(f, "  no partition table")?,
            Some(kind) => writeln!(
                f,
                "  partition table: {} ({}), {} partition(s)",
                format!("{kind:?}").to_lowercase(),
                t.disk_id.as_deref().unwrap_or("no id"),
                t.partitions.len()
            )?,
        }
        for p in &t.partitions {
            write!(
                f,
                "    {:>2}  start {:>10}  size {:>10}  {}",
                p.index,
                human_size(p.start),
                human_size(p.size),
                p.type_name
            )?;
            if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                write!(f, " {name:?}")?;
            }
            writeln!(f)?;
        }
        for v in &self.volumes {
            let Some(fs) = &v.filesystem else { continue };
            write!(f, "  {}: {}", name_of(v.partition), fs.fs_type)?;
            if let Some(u) = &fs.uuid {
                write!(f, " uuid={u}")?;
            }
            if let Some(l) = &fs.label {
                write!(f, " label={l:?}")?;
            }
            if let Some(s) = fs.size {
                write!(f, " size={}", human_size(s))?;
            }
            writeln!(f)?;
        }
        if let Some(r) = &self.root {
            writeln!(
                f,
                "  root filesystem ({}): {}",
                name_of(r.partition),
                r.os.as_deref().unwrap_or("unknown OS")
            )?;
            let list = |v: &[String]| if v.is_empty() { "none".to_owned() } else { v.join(", ") };
            writeln!(f, "    kernels: {}", list(&r.kernels))?;
            writeln!(f, "    module dirs: {}", list(&r.module_dirs))?;
            writeln!(f, "    initramfs: {}", list(&r.initramfs))?;
            match r.installed_packages {
                Some(n) => writeln!(f, "    packages: {n} installed")?,
                None => writeln!(f, "    packages: no dpkg database")?,
            }
            match &r.manifest {
                Some(m) => writeln!(
                    f,
                    "    build manifest: {MANIFEST_PATH} ({} bytes of JSON)",
                    m.to_string().len()
                )?,
                None => writeln!(f, "    build manifest: none")?,
            }
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{sparse_file, to_qcow2};
    use crate::{layout, make_ext4, write_partition_table, FsOptions, PartKind, PartitionSpec, TableKind};

    #[test]
    fn inspects_a_small_debian_like_image() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        for d in [
            "etc",
            "boot",
            "usr/lib/modules/6.1.0-18-amd64",
            "var/lib/dpkg",
            "usr/share/kiln",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::fs::write(root.join("boot/vmlinuz-6.1.0-18-amd64"), "kernel").unwrap();
        std::fs::write(root.join("boot/initrd.img-6.1.0-18-amd64"), "initrd").unwrap();
        std::fs::write(
            root.join("etc/os-release"),
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
        )
        .unwrap();
        std::fs::write(
            root.join("var/lib/dpkg/status"),
            "Package: a\nStatus: install ok installed\n\nPackage: b\nStatus: install ok installed\n",
        )
        .unwrap();
        std::fs::write(
            root.join("usr/share/kiln/manifest.json"),
            r#"{"image":"t","version":"1.0.0"}"#,
        )
        .unwrap();

        let disk = dir.path().join("disk.raw");
        sparse_file(&disk, 48 << 20);
        let parts = [
            PartitionSpec {
                kind: PartKind::Esp,
                size: 4 << 20,
                name: "esp".into(),
                guid: uuid::Uuid::from_u128(1),
            },
            PartitionSpec {
                kind: PartKind::LinuxFs,
                size: 0,
                name: "root".into(),
                guid: uuid::Uuid::from_u128(2),
            },
        ];
        let l = layout(48 << 20, TableKind::Gpt, &parts).unwrap();
        let p = &l.partitions[1];
        let opts = FsOptions {
            uuid: uuid::Uuid::from_u128(3),
            label: "root".into(),
            ..Default::default()
        };
        make_ext4(&disk, p.start, p.size, &root, &opts).unwrap();
        write_partition_table(&disk, &l, uuid::Uuid::from_u128(4)).unwrap();
        let q = dir.path().join("disk.qcow2");
        to_qcow2(&disk, &q, &[]);

        let i = inspect(&q).unwrap();
        let r = i.root.as_ref().unwrap();
        assert_eq!(r.partition, Some(2));
        assert_eq!(r.kernels, ["6.1.0-18-amd64"]);
        assert_eq!(r.module_dirs, ["6.1.0-18-amd64"]);
        assert_eq!(r.initramfs, ["initrd.img-6.1.0-18-amd64"]);
        assert_eq!(r.installed_packages, Some(2));
        assert_eq!(r.os.as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
        assert_eq!(r.manifest.as_ref().unwrap()["version"], "1.0.0");
        assert_eq!(i.volumes.len(), 2);
        assert_eq!(i.volumes[0].filesystem, None);
        assert_eq!(i.volumes[1].filesystem.as_ref().unwrap().label.as_deref(), Some("root"));

        let json = serde_json::to_value(&i).unwrap();
        assert_eq!(json["format"]["name"], "qcow2");
        assert_eq!(json["partition_table"]["kind"], "gpt");
        assert_eq!(
            json["partition_table"]["partitions"][1]["type"],
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
        );
        assert_eq!(json["volumes"][1]["filesystem"]["type"], "ext4");

        let text = i.to_string();
        for needle in [
            "qcow2 v3",
            "gpt",
            "EFI System",
            "ext4 uuid=00000000-0000-0000-0000-000000000003",
            "6.1.0-18-amd64",
            "2 installed",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
