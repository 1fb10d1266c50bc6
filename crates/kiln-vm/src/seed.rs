//! cloud-init seeds: NoCloud (`cidata`) and ConfigDrive (`config-2`) as
//! ISO 9660 or FAT images, written in Rust by `kiln_disk::{iso, fat}`.
//!
//! NoCloud puts `user-data`, `meta-data` (YAML: `instance-id`,
//! `local-hostname`, `public-keys`) and an optional `network-config` at the
//! root. ConfigDrive (OpenStack's layout, also what OVHcloud writes on
//! bare metal) puts `meta_data.json` (`uuid`, `name`, `hostname`,
//! `public_keys`, `meta`), `user_data` and an optional `network_data.json`
//! under `openstack/latest/`. Inputs are checked before anything is
//! written (hostname syntax, key shape, YAML/JSON that cloud-init would
//! reject), because cloud-init itself fails silently on a bad seed.
//!
//! File times come from `SOURCE_DATE_EPOCH` when it is set, so a seed with
//! an explicit instance id is reproducible; the default instance id is a
//! fresh UUID, so that cloud-init treats every boot of a new seed as a first
//! boot. Non-goals: vendor data, EC2 metadata (that is [`crate::imds`]),
//! `openstack/content/` files.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use kiln_disk::{fat, iso};
use serde::Serialize;

/// Which cloud-init datasource reads the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datasource {
    NoCloud,
    ConfigDrive,
}

impl Datasource {
    /// The filesystem label cloud-init looks for.
    pub fn label(self) -> &'static str {
        match self {
            Datasource::NoCloud => "cidata",
            Datasource::ConfigDrive => "config-2",
        }
    }
}

/// The seed image's filesystem; cloud-init reads both for both datasources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedFs {
    Iso,
    Vfat,
}

/// What to put in a seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedConfig {
    pub datasource: Datasource,
    pub fs: SeedFs,
    /// User data (`#cloud-config`, a script, MIME...). Default: an empty
    /// `#cloud-config`.
    pub user_data: Option<Vec<u8>>,
    /// Raw `meta-data` (NoCloud YAML) or `meta_data.json` (ConfigDrive),
    /// instead of `hostname`, `instance_id`, `ssh_keys` and `metadata`.
    pub meta_data: Option<Vec<u8>>,
    pub hostname: Option<String>,
    /// Default: a fresh UUID v4.
    pub instance_id: Option<String>,
    /// OpenSSH public keys (`ssh-ed25519 AAAA... comment`).
    pub ssh_keys: Vec<String>,
    /// NoCloud `network-config` (v1/v2 YAML) or ConfigDrive
    /// `network_data.json`.
    pub network_config: Option<Vec<u8>>,
    /// ConfigDrive `meta` entries (OVHcloud's `configDriveMetadata`).
    pub metadata: Vec<(String, String)>,
}

impl SeedConfig {
    pub fn new(datasource: Datasource, fs: SeedFs) -> Self {
        SeedConfig {
            datasource,
            fs,
            user_data: None,
            meta_data: None,
            hostname: None,
            instance_id: None,
            ssh_keys: Vec::new(),
            network_config: None,
            metadata: Vec::new(),
        }
    }
}

/// A seed rendered from a [`SeedConfig`]: its files, ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub datasource: Datasource,
    pub fs: SeedFs,
    /// Filesystem label (`cidata` or `config-2`).
    pub label: &'static str,
    /// The instance id in the metadata (`nocloud` when raw NoCloud meta-data
    /// has none, as cloud-init assumes).
    pub instance_id: String,
    /// Paths inside the image and their contents, in writing order.
    pub files: Vec<(String, Vec<u8>)>,
    /// Timestamp of every file (Unix seconds).
    pub mtime: u64,
}

/// Writes the seed `cfg` describes to `out`, atomically (the image is
/// written to `out.part` and renamed when complete).
pub fn write_seed(cfg: &SeedConfig, out: &Path) -> Result<()> {
    render_seed(cfg)?.write(out)
}

/// Validates `cfg` and renders the seed's files, without writing anything.
pub fn render_seed(cfg: &SeedConfig) -> Result<Seed> {
    let raw = cfg.meta_data.is_some();
    if raw
        && (cfg.hostname.is_some() || cfg.instance_id.is_some() || !cfg.ssh_keys.is_empty() || !cfg.metadata.is_empty())
    {
        bail!("raw meta data replaces hostname, instance id, SSH keys and metadata entries; put them in the meta data file instead");
    }
    if let Some(h) = &cfg.hostname {
        check_hostname(h)?;
    }
    if let Some(id) = &cfg.instance_id {
        check_instance_id(id)?;
    }
    for key in &cfg.ssh_keys {
        check_ssh_key(key)?;
    }
    if !cfg.metadata.is_empty() && cfg.datasource == Datasource::NoCloud {
        bail!("metadata KEY=VALUE entries are ConfigDrive's `meta`; NoCloud has no equivalent (use raw meta-data or user data)");
    }
    let mut seen = std::collections::HashSet::new();
    for (k, _) in &cfg.metadata {
        ensure!(!k.is_empty(), "metadata keys must not be empty");
        ensure!(seen.insert(k), "metadata key {k:?} is given twice");
    }

    let user_data = cfg.user_data.clone().unwrap_or_else(|| b"#cloud-config\n{}\n".to_vec());
    check_user_data(&user_data)?;
    let instance_id = cfg
        .instance_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());

    let (instance_id, files) = match cfg.datasource {
        Datasource::NoCloud => {
            let (id, meta) = match &cfg.meta_data {
                Some(raw) => (check_nocloud_meta(raw)?, raw.clone()),
                None => (instance_id.clone(), nocloud_meta(cfg, &instance_id)?),
            };
            let mut files = vec![("user-data".to_owned(), user_data), ("meta-data".to_owned(), meta)];
            if let Some(net) = &cfg.network_config {
                yaml_mapping(net).context("checking the network config (NoCloud network-config, YAML v1 or v2)")?;
                files.push(("network-config".to_owned(), net.clone()));
            }
            (id, files)
        }
        Datasource::ConfigDrive => {
            let (id, meta) = match &cfg.meta_data {
                Some(raw) => (check_configdrive_meta(raw)?, raw.clone()),
                None => (instance_id.clone(), configdrive_meta(cfg, &instance_id)?),
            };
            let dir = "openstack/latest";
            let mut files = vec![
                (format!("{dir}/meta_data.json"), meta),
                (format!("{dir}/user_data"), user_data),
            ];
            if let Some(net) = &cfg.network_config {
                json_object(net).context("checking the network config (ConfigDrive network_data.json)")?;
                files.push((format!("{dir}/network_data.json"), net.clone()));
            }
            (id, files)
        }
    };
    Ok(Seed {
        datasource: cfg.datasource,
        fs: cfg.fs,
        label: cfg.datasource.label(),
        instance_id,
        files,
        mtime: source_date_epoch()?,
    })
}

impl Seed {
    /// Writes the image to `out`, atomically: the filesystem writers build
    /// it in `out.part` (a `kiln_exec::PartialFile`) and rename it.
    pub fn write(&self, out: &Path) -> Result<()> {
        let what = || format!("writing {} seed to {}", self.label, out.display());
        match self.fs {
            SeedFs::Iso => {
                let entries: Vec<_> = self
                    .files
                    .iter()
                    .map(|(path, bytes)| iso::IsoEntry::file(path, bytes.clone()))
                    .collect();
                iso::write_iso_image(out, &iso::IsoOptions::new(self.label, self.mtime), &entries).with_context(what)
            }
            SeedFs::Vfat => {
                let entries: Vec<_> = self
                    .files
                    .iter()
                    .map(|(path, bytes)| fat::FatEntry::file(path, bytes.clone()))
                    .collect();
                // The serial number follows the instance id: reproducible,
                // yet different for every new instance.
                let opts = fat::FatOptions::new(self.label, fnv1a(self.instance_id.as_bytes()), self.mtime);
                fat::write_fat_image(out, &opts, &entries).with_context(what)
            }
        }
    }
}

fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => s
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds")),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())),
    }
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

// ---------------------------------------------------------------------------
// Metadata.

fn nocloud_meta(cfg: &SeedConfig, instance_id: &str) -> Result<Vec<u8>> {
    // serde_yaml_ng quotes whatever YAML would read as another type (`yes`,
    // `0123`, `null`, `: `), so hostnames and keys come back as strings.
    #[derive(Serialize)]
    struct Meta<'a> {
        #[serde(rename = "instance-id")]
        instance_id: &'a str,
        #[serde(rename = "local-hostname", skip_serializing_if = "Option::is_none")]
        local_hostname: Option<&'a str>,
        #[serde(rename = "public-keys", skip_serializing_if = "<[_]>::is_empty")]
        public_keys: Vec<&'a str>,
    }
    let meta = Meta {
        instance_id,
        local_hostname: cfg.hostname.as_deref(),
        public_keys: cfg.ssh_keys.iter().map(|k| k.trim()).collect(),
    };
    let yaml = serde_yaml_ng::to_string(&meta).context("rendering NoCloud meta-data")?;
    Ok(yaml.into_bytes())
}

fn configdrive_meta(cfg: &SeedConfig, instance_id: &str) -> Result<Vec<u8>> {
    let mut meta = serde_json::Map::new();
    meta.insert("uuid".into(), instance_id.into());
    // OpenStack's `name` is the server's display name; the hostname is the
    // natural one, the instance id the fallback.
    meta.insert("name".into(), cfg.hostname.as_deref().unwrap_or(instance_id).into());
    if let Some(h) = &cfg.hostname {
        meta.insert("hostname".into(), h.as_str().into());
    }
    if !cfg.ssh_keys.is_empty() {
        let keys = cfg
            .ssh_keys
            .iter()
            .enumerate()
            .map(|(i, k)| (format!("key-{i}"), serde_json::Value::from(k.trim())))
            .collect();
        meta.insert("public_keys".into(), serde_json::Value::Object(keys));
    }
    if !cfg.metadata.is_empty() {
        let entries = cfg
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
            .collect();
        meta.insert("meta".into(), serde_json::Value::Object(entries));
    }
    let mut json = serde_json::to_vec_pretty(&meta).context("rendering meta_data.json")?;
    json.push(b'\n');
    Ok(json)
}

/// Checks raw NoCloud meta-data and returns its instance id.
fn check_nocloud_meta(raw: &[u8]) -> Result<String> {
    let map = yaml_mapping(raw).context("checking the meta data (NoCloud meta-data, YAML)")?;
    Ok(match map.get("instance-id") {
        None => "nocloud".to_owned(),
        Some(serde_yaml_ng::Value::String(s)) => s.clone(),
        Some(v) => bail!("meta-data's instance-id must be a string, not {v:?}"),
    })
}

/// Checks raw ConfigDrive meta_data.json and returns its uuid.
fn check_configdrive_meta(raw: &[u8]) -> Result<String> {
    let obj = json_object(raw).context("checking the meta data (ConfigDrive meta_data.json)")?;
    match obj.get("uuid") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        // cloud-init refuses such a drive: "No 'uuid' entry in metadata".
        _ => bail!("meta_data.json needs a non-empty string \"uuid\" (cloud-init's instance id)"),
    }
}

fn yaml_mapping(bytes: &[u8]) -> Result<serde_yaml_ng::Mapping> {
    match serde_yaml_ng::from_slice(bytes).context("not valid YAML")? {
        serde_yaml_ng::Value::Mapping(m) => Ok(m),
        other => bail!("expected a YAML mapping, got {other:?}"),
    }
}

fn json_object(bytes: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_slice(bytes).context("not valid JSON")? {
        serde_json::Value::Object(m) => Ok(m),
        _ => bail!("expected a JSON object"),
    }
}

/// `#cloud-config` must be a YAML mapping (or empty); other formats
/// (scripts, MIME, `#include`, gzip) are passed through unchecked.
fn check_user_data(bytes: &[u8]) -> Result<()> {
    if bytes.starts_with(b"#cloud-config") {
        match serde_yaml_ng::from_slice::<serde_yaml_ng::Value>(bytes) {
            Ok(serde_yaml_ng::Value::Mapping(_) | serde_yaml_ng::Value::Null) => {}
            Ok(_) => bail!("the user data is #cloud-config but not a YAML mapping"),
            Err(e) => bail!("the user data is #cloud-config but not valid YAML: {e}"),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Input checks.

/// RFC 1123: dot-separated labels of 1-63 letters, digits and hyphens,
/// not starting or ending with a hyphen, 253 characters in all.
fn check_hostname(h: &str) -> Result<()> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    ensure!(
        ok,
        "invalid hostname {h:?}: use dot-separated labels of letters, digits and inner hyphens (RFC 1123)"
    );
    Ok(())
}

/// cloud-init names a directory after the instance id
/// (`/var/lib/cloud/instances/<id>`), so it must be a plain file name.
fn check_instance_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 255
        && id != "."
        && id != ".."
        && id.chars().all(|c| !c.is_whitespace() && !c.is_control() && c != '/');
    ensure!(
        ok,
        "invalid instance id {id:?}: cloud-init uses it as a directory name, so no `/`, spaces or control characters"
    );
    Ok(())
}

const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// An OpenSSH public key line: `TYPE BASE64 [COMMENT]`, whose decoded blob
/// starts with the same type name (catches truncated or mangled pastes).
pub(crate) fn check_ssh_key(key: &str) -> Result<()> {
    let key = key.trim();
    let shown: String = key.chars().take(40).collect();
    ensure!(
        !key.contains("PRIVATE KEY"),
        "{shown:?}... is a private key; pass the public one (the .pub file)"
    );
    ensure!(
        !key.contains('\n'),
        "one SSH key per entry, without line breaks: {shown:?}..."
    );
    let mut parts = key.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        bail!("{shown:?} is not an SSH public key: expected `TYPE BASE64 [COMMENT]`");
    };
    let known = SSH_KEY_TYPES.contains(&kind) || kind.ends_with("-cert-v01@openssh.com");
    ensure!(
        known,
        "{shown:?} is not an SSH public key: unknown key type {kind:?} (expected one of {})",
        SSH_KEY_TYPES.join(", ")
    );
    let decoded = BASE64
        .decode(blob)
        .with_context(|| format!("{shown:?}: the key data is not valid base64"))?;
    let embedded = decoded
        .get(..4)
        .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .and_then(|n| decoded.get(4..4 + n));
    ensure!(
        embedded == Some(kind.as_bytes()),
        "{shown:?}: the key data does not match its type {kind:?} (truncated or mangled?)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdIHr7O1aF2wbCEJ2bVkLZ9JRtl3s8Hqw3A0wqWbNQd ops@example";

    #[test]
    fn hostnames() {
        for ok in ["web1", "web-1.example.com", "A", &"a".repeat(63)] {
            check_hostname(ok).unwrap();
        }
        for bad in ["", "-web", "web-", "web_1", "a..b", "web 1", &"a".repeat(64), "é"] {
            assert!(check_hostname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn instance_ids() {
        check_instance_id("i-0123").unwrap();
        check_instance_id("0b6a0d6e-1f53-4c1d-8c8e-5c2a5b8f2a11").unwrap();
        for bad in ["", "a/b", "a b", "..", "a\nb"] {
            assert!(check_instance_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ssh_keys() {
        check_ssh_key(ED25519).unwrap();
        check_ssh_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdIHr7O1aF2wbCEJ2bVkLZ9JRtl3s8Hqw3A0wqWbNQd").unwrap();
        for (bad, want) in [
            ("ssh-ed25519", "not an SSH public key"),
            ("ssh-foo AAAA", "unknown key type"),
            (
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIGdIHr7O1aF2wbCEJ2bVkLZ9JRtl3s8Hqw3A0wqWbNQd",
                "does not match",
            ),
            ("ssh-ed25519 AAAAC3Nz!", "base64"),
            ("ssh-ed25519 AAAAC3NzaC1lZDI1", "does not match"),
            ("-----BEGIN OPENSSH PRIVATE KEY-----", "private key"),
        ] {
            let err = format!("{:#}", check_ssh_key(bad).unwrap_err());
            assert!(err.contains(want), "{bad}: {err}");
        }
    }

    #[test]
    fn nocloud_yaml_quotes_what_needs_it() {
        let mut cfg = SeedConfig::new(Datasource::NoCloud, SeedFs::Iso);
        cfg.hostname = Some("0123".into());
        cfg.ssh_keys = vec![ED25519.into()];
        let yaml = nocloud_meta(&cfg, "yes").unwrap();
        let back: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&yaml).unwrap();
        assert_eq!(
            back["instance-id"].as_str(),
            Some("yes"),
            "{}",
            String::from_utf8_lossy(&yaml)
        );
        assert_eq!(back["local-hostname"].as_str(), Some("0123"));
        assert_eq!(back["public-keys"][0].as_str(), Some(ED25519));
    }

    #[test]
    fn cloud_config_must_parse() {
        check_user_data(b"#cloud-config\n{}\n").unwrap();
        check_user_data(b"#cloud-config\n").unwrap();
        check_user_data(b"#!/bin/sh\n: [ unbalanced\n").unwrap();
        assert!(check_user_data(b"#cloud-config\nusers: [\n").is_err());
        assert!(check_user_data(b"#cloud-config\n- a list\n").is_err());
    }
}
