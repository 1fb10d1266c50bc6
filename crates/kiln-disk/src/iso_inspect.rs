//! `kiln inspect X.iso`: what a bootable (live) ISO holds, read without
//! mounting it: the volume label, the El Torito boot entries with the file
//! each loads, the hybrid partition table that lets it boot from a USB
//! stick, the live system's files (kernel, initrd, root squashfs), the
//! kernel command lines of `/boot/grub/grub.cfg`, and for a `config-2`
//! volume the OpenStack config drive's files, hostname and networks.
//! Serialises to JSON for `--json` and prints as text otherwise.

use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::fsread::FileKind;
use crate::grub::{menu_entries, MenuEntry};
use crate::inspect::human_size;
use crate::isoread::{BootEntry, IsoImage, Names};
use crate::table::{read_partition_table, PartitionTable};

/// Where GRUB's configuration sits on a grub-mkrescue style ISO.
pub const GRUB_CFG: &str = "/boot/grub/grub.cfg";
/// The directory Debian's live-boot finds the system in.
pub const LIVE_DIR: &str = "/live";
/// The volume label cloud-init's ConfigDrive datasource looks for.
pub const CONFIG_DRIVE_LABEL: &str = "config-2";
/// The config drive's files.
pub const META_DATA: &str = "/openstack/latest/meta_data.json";
pub const NETWORK_DATA: &str = "/openstack/latest/network_data.json";
pub const USER_DATA: &str = "/openstack/latest/user_data";

/// Everything `inspect_iso` found.
#[derive(Debug, Clone, Serialize)]
pub struct IsoInspection {
    pub path: String,
    /// Always "iso", so JSON readers can tell this from a disk inspection.
    pub kind: &'static str,
    pub file_size: u64,
    pub volume_id: String,
    /// Which names the files are read by.
    pub names: Names,
    pub joliet: bool,
    /// The El Torito catalog's entries.
    pub boot: Vec<BootImage>,
    /// The hybrid MBR or GPT, if any.
    pub partition_table: PartitionTable,
    /// Files in `/live`.
    pub live: Vec<FileSize>,
    /// The `linux` lines of `/boot/grub/grub.cfg`.
    pub grub_entries: Vec<MenuEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_drive: Option<ConfigDrive>,
    /// Things that could not be read, without failing the inspection.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// An El Torito entry and the file it loads.
#[derive(Debug, Clone, Serialize)]
pub struct BootImage {
    #[serde(flatten)]
    pub entry: BootEntry,
    /// The file whose data starts at the entry's block, if one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The image's size: its file's, else what the entry declares.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The hybrid partition that starts where the image does, for an image
    /// appended after the ISO 9660 volume (no file holds it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
}

/// A file and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileSize {
    pub path: String,
    pub size: u64,
}

/// What the OpenStack config drive says.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigDrive {
    pub files: Vec<FileSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// One line per network: `eth0: ipv4 192.0.2.10/255.255.255.0`.
    pub networks: Vec<String>,
    /// DNS servers from the services.
    pub dns: Vec<String>,
}

/// Inspects the ISO at `path`.
pub fn inspect_iso(path: &Path) -> Result<IsoInspection> {
    let iso = IsoImage::open(path)?;
    let mut warnings = Vec::new();
    let mut boot = Vec::new();
    let mut file = std::fs::File::open(path).map_err(|e| crate::Error::io(format!("opening {}", path.display()), e))?;
    let partition_table = read_partition_table(&mut file)?;
    match iso.boot_entries() {
        Ok(entries) => {
            for entry in entries {
                let found = iso.file_at_block(entry.lba)?;
                let size = found
                    .as_ref()
                    .map(|(_, n)| n.size)
                    .or_else(|| (entry.sector_count > 1).then_some(u64::from(entry.sector_count) * 512));
                let partition = match found {
                    Some(_) => None,
                    None => partition_table
                        .partitions
                        .iter()
                        .find(|p| p.start == u64::from(entry.lba) * 2048)
                        .map(|p| p.index),
                };
                boot.push(BootImage {
                    path: found.map(|(p, _)| p),
                    size,
                    partition,
                    entry,
                });
            }
        }
        Err(e) => warnings.push(format!("reading the El Torito catalog: {}", crate::inspect::chain(&e))),
    }
    warnings.extend(partition_table.warnings.iter().cloned());

    let live = files_under(&iso, LIVE_DIR, false)?;
    let grub_entries = match iso.read_file(GRUB_CFG)? {
        Some(cfg) => menu_entries(&String::from_utf8_lossy(&cfg)),
        None => Vec::new(),
    };
    let config_drive = if iso.volume_id == CONFIG_DRIVE_LABEL {
        Some(config_drive(&iso, &mut warnings)?)
    } else {
        None
    };
    Ok(IsoInspection {
        path: path.display().to_string(),
        kind: "iso",
        file_size: iso.file_size(),
        volume_id: iso.volume_id.clone(),
        names: iso.names(),
        joliet: iso.joliet,
        boot,
        partition_table,
        live,
        grub_entries,
        config_drive,
        warnings,
    })
}

/// Regular files under `dir` with their sizes, depth first, sorted; only
/// its own files unless `recursive`.
pub fn files_under(iso: &IsoImage, dir: &str, recursive: bool) -> Result<Vec<FileSize>> {
    let mut out = Vec::new();
    let Some(top) = iso.lookup(dir)?.filter(|n| n.kind == FileKind::Dir) else {
        return Ok(out);
    };
    // Each directory once, by its first block: records that lead back to a
    // directory already listed (a corrupt image) would loop for ever.
    let mut seen = std::collections::HashSet::from([top.block()]);
    let mut stack = vec![(dir.trim_end_matches('/').to_owned(), top.extents[0])];
    while let Some((d, extent)) = stack.pop() {
        for node in iso.nodes(extent)? {
            if out.len() + stack.len() > MAX_FILES {
                return Err(crate::Error::corrupt(format!(
                    "{}: more than {MAX_FILES} entries under {dir}",
                    iso.path().display()
                )));
            }
            let path = format!("{d}/{}", node.name);
            match node.kind {
                FileKind::File => out.push(FileSize { path, size: node.size }),
                FileKind::Dir if recursive && seen.insert(node.block()) => stack.push((path, node.extents[0])),
                _ => {}
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Most entries [`files_under`] lists (a config drive has a dozen).
const MAX_FILES: usize = 100_000;

fn config_drive(iso: &IsoImage, warnings: &mut Vec<String>) -> Result<ConfigDrive> {
    let mut drive = ConfigDrive {
        files: files_under(iso, "/openstack", true)?,
        ..Default::default()
    };
    let json = |path: &str, warnings: &mut Vec<String>| -> Result<Option<serde_json::Value>> {
        Ok(match iso.read_file(path)? {
            Some(bytes) => match serde_json::from_slice(&bytes) {
                Ok(v) => Some(v),
                Err(e) => {
                    warnings.push(format!("{path} is not valid JSON: {e}"));
                    None
                }
            },
            None => None,
        })
    };
    if let Some(meta) = json(META_DATA, warnings)? {
        let text = |k: &str| meta.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        drive.uuid = text("uuid");
        drive.hostname = text("hostname").or_else(|| text("name"));
    }
    if let Some(net) = json(NETWORK_DATA, warnings)? {
        drive.networks = network_summary(&net);
        drive.dns = net
            .get("services")
            .and_then(|s| s.as_array())
            .into_iter()
            .flatten()
            .filter(|s| s.get("type").and_then(|t| t.as_str()) == Some("dns"))
            .filter_map(|s| s.get("address").and_then(|a| a.as_str()).map(str::to_owned))
            .collect();
    }
    Ok(drive)
}

/// One line per network of an OpenStack `network_data.json`.
pub fn network_summary(net: &serde_json::Value) -> Vec<String> {
    let text = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
    net.get("networks")
        .and_then(|n| n.as_array())
        .into_iter()
        .flatten()
        .map(|n| {
            let mut line = format!("{}: {}", text(n, "link"), text(n, "type"));
            let address = text(n, "ip_address");
            if !address.is_empty() {
                line.push(' ');
                line.push_str(&address);
                let mask = text(n, "netmask");
                if !mask.is_empty() && !address.contains('/') {
                    line.push('/');
                    line.push_str(&mask);
                }
            }
            let gateways: Vec<String> = n
                .get("routes")
                .and_then(|r| r.as_array())
                .into_iter()
                .flatten()
                .map(|r| text(r, "gateway"))
                .filter(|g| !g.is_empty())
                .collect();
            if !gateways.is_empty() {
                line.push_str(&format!(" via {}", gateways.join(", ")));
            }
            line
        })
        .collect()
}

impl fmt::Display for IsoInspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = match self.names {
            Names::RockRidge if self.joliet => "Rock Ridge and Joliet names",
            Names::RockRidge => "Rock Ridge names",
            Names::Joliet => "Joliet names",
            Names::Iso9660 => "plain ISO 9660 names only",
        };
        writeln!(
            f,
            "{}: ISO 9660 image, volume {:?}, {names}, {}",
            self.path,
            self.volume_id,
            human_size(self.file_size)
        )?;
        if self.boot.is_empty() {
            writeln!(f, "  no El Torito boot catalog (not bootable from a CD)")?;
        } else {
            writeln!(f, "  El Torito boot entries:")?;
            for b in &self.boot {
                let e = &b.entry;
                write!(
                    f,
                    "    {:<5} {}, {}load segment {:#06x}, {} sectors at block {}",
                    e.platform.name(),
                    e.emulation.name(),
                    if e.bootable { "" } else { "NOT bootable, " },
                    e.load_segment,
                    e.sector_count,
                    e.lba
                )?;
                match (&b.path, b.size) {
                    (Some(p), Some(s)) => writeln!(f, ": {p} ({})", human_size(s))?,
                    (None, Some(s)) if b.partition.is_some() => writeln!(
                        f,
                        ": partition {} ({} image)",
                        b.partition.unwrap_or_default(),
                        human_size(s)
                    )?,
                    (None, Some(s)) => writeln!(f, ": no file ({} image)", human_size(s))?,
                    _ => writeln!(f, ": no file")?,
                }
            }
        }
        let t = &self.partition_table;
        match t.kind {
            None => writeln!(f, "  no hybrid partition table (not bootable from a USB stick)")?,
            Some(kind) => {
                writeln!(
                    f,
                    "  hybrid partition table: {}, {} partition(s)",
                    format!("{kind:?}").to_lowercase(),
                    t.partitions.len()
                )?;
                for p in &t.partitions {
                    write!(
                        f,
                        "    {:>2}  start {:>10}  size {:>10}  {} ({})",
                        p.index,
                        human_size(p.start),
                        human_size(p.size),
                        p.type_name,
                        p.part_type
                    )?;
                    if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                        write!(f, " {name:?}")?;
                    }
                    writeln!(f)?;
                }
            }
        }
        if self.live.is_empty() {
            writeln!(f, "  no {LIVE_DIR} directory")?;
        } else {
            writeln!(f, "  live files:")?;
            for l in &self.live {
                writeln!(f, "    {:<32} {}", l.path, human_size(l.size))?;
            }
        }
        if self.grub_entries.is_empty() {
            writeln!(f, "  no kernel lines in {GRUB_CFG}")?;
        } else {
            writeln!(f, "  kernel command lines ({GRUB_CFG}):")?;
            for e in &self.grub_entries {
                if let Some(t) = &e.title {
                    write!(f, "    {t:?}: ")?;
                } else {
                    write!(f, "    ")?;
                }
                write!(f, "{} {}", e.kernel, e.args.join(" "))?;
                if !e.initrds.is_empty() {
                    write!(f, " (initrd {})", e.initrds.join(" "))?;
                }
                writeln!(f)?;
            }
        }
        if let Some(c) = &self.config_drive {
            writeln!(
                f,
                "  config drive: uuid {}, hostname {}",
                c.uuid.as_deref().unwrap_or("none"),
                c.hostname.as_deref().unwrap_or("none")
            )?;
            for n in &c.networks {
                writeln!(f, "    network {n}")?;
            }
            if !c.dns.is_empty() {
                writeln!(f, "    dns {}", c.dns.join(", "))?;
            }
            for file in &c.files {
                writeln!(f, "    {:<40} {}", file.path, human_size(file.size))?;
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

    #[test]
    fn summarises_networks() {
        let net = serde_json::json!({
            "links": [{"id": "eth0", "type": "phy"}],
            "networks": [
                {"id": "n0", "link": "eth0", "type": "ipv4", "ip_address": "192.0.2.10",
                 "netmask": "255.255.255.0", "routes": [{"network": "0.0.0.0", "gateway": "192.0.2.1"}]},
                {"id": "n1", "link": "eth0", "type": "ipv6", "ip_address": "2001:db8::10/64"},
                {"id": "n2", "link": "eth1", "type": "ipv4_dhcp"}
            ]
        });
        assert_eq!(
            network_summary(&net),
            [
                "eth0: ipv4 192.0.2.10/255.255.255.0 via 192.0.2.1",
                "eth0: ipv6 2001:db8::10/64",
                "eth1: ipv4_dhcp"
            ]
        );
        assert!(network_summary(&serde_json::json!({})).is_empty());
    }
}
