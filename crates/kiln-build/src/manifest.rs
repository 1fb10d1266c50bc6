//! The build manifest: what was built, from which spec and commit, with
//! which tools and packages, and how to hand it to OVH's API. One copy is
//! embedded in the image (without the artifacts, which do not exist yet) and
//! the full one is written next to the outputs.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_exec::Cmd;
use kiln_spec::ChecksumType;
use serde::{Deserialize, Serialize};

use crate::hash::Hash;
use crate::plan::Plan;

/// Where the image carries its own manifest.
pub const EMBEDDED_PATH: &str = "/usr/share/kiln/manifest.json";

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    #[serde(rename = "manifestVersion")]
    pub manifest_version: u32,
    pub name: String,
    pub version: String,
    #[serde(rename = "kilnVersion")]
    pub kiln_version: String,
    pub spec: SpecInfo,
    pub git: Option<GitInfo>,
    pub stages: Vec<StageHash>,
    pub tools: BTreeMap<String, String>,
    pub packages: Vec<Package>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionInfo>,
    #[serde(rename = "efiBootloaderPath", skip_serializing_if = "Option::is_none")]
    pub efi_bootloader_path: Option<String>,
    #[serde(rename = "ovhReinstall", skip_serializing_if = "Option::is_none")]
    pub ovh_reinstall: Option<serde_json::Value>,
    /// What the spec grants that the security contract would otherwise
    /// refuse (passwords, SSH root login); `kiln check` reads it from the
    /// embedded copy.
    pub access: crate::targets::security::Access,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpecInfo {
    pub path: String,
    pub hash: Hash,
}

#[derive(Debug, Clone, Serialize)]
pub struct GitInfo {
    /// The commit, with `-dirty` appended when the work tree had changes.
    pub commit: String,
    pub dirty: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageHash {
    pub id: String,
    pub hash: Hash,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// The package's architecture as its package manager spells it
    /// (`amd64`, `all`, `x86_64`, `noarch`, `any`): the SBOM's purls carry
    /// it. Absent only in lists written before kiln recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Artifact {
    pub target: String,
    /// File name relative to the output directory.
    pub path: String,
    pub format: String,
    pub size: u64,
    pub sha512: String,
    /// The artifact's SBOM ([`crate::sbom`]), beside it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sbom: Option<FileRef>,
}

/// A file of the output directory and its SHA-512.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileRef {
    /// File name relative to the output directory.
    pub path: String,
    pub sha512: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionInfo {
    pub target: String,
    pub index: u32,
    pub start: u64,
    pub size: u64,
    pub filesystem: String,
    pub uuid: String,
    #[serde(rename = "partitionTable")]
    pub partition_table: String,
}

impl Manifest {
    pub fn new(plan: &Plan, git: Option<GitInfo>, packages: Vec<Package>) -> Self {
        Manifest {
            manifest_version: 1,
            name: plan.name.clone(),
            version: plan.version.clone(),
            kiln_version: env!("CARGO_PKG_VERSION").to_owned(),
            spec: SpecInfo {
                path: plan.spec_path.display().to_string(),
                hash: plan.spec_hash,
            },
            git,
            stages: plan
                .stages
                .iter()
                .map(|s| StageHash {
                    id: s.id.clone(),
                    hash: s.hash,
                })
                .collect(),
            tools: plan.tools.clone(),
            packages,
            artifacts: Vec::new(),
            partitions: Vec::new(),
            efi_bootloader_path: plan.targets.iter().find_map(|t| t.efi_bootloader_path()),
            ovh_reinstall: None,
            access: crate::targets::security::Access::of(&plan.spec),
        }
    }
}

/// The commit of the repository holding the spec, `-dirty` if it has
/// uncommitted changes; `None` outside a repository or without git.
pub fn git_info(spec_dir: &Path) -> Option<GitInfo> {
    let head = Cmd::new("git")
        .arg("-C")
        .arg(spec_dir)
        .args(["rev-parse", "HEAD"])
        .run_string()
        .ok()?;
    let status = Cmd::new("git")
        .arg("-C")
        .arg(spec_dir)
        .args(["status", "--porcelain"])
        .run_string()
        .ok()?;
    let dirty = !status.trim().is_empty();
    Some(GitInfo {
        commit: if dirty { format!("{head}-dirty") } else { head },
        dirty,
    })
}

/// A ready-to-send body for `POST /dedicated/server/{serviceName}/reinstall`
/// (reference §1.8.2); fill in `imageURL` and, optionally, the rest.
pub fn ovh_reinstall_template(efi_bootloader_path: &str, sha512: &str, file_name: &str) -> serde_json::Value {
    serde_json::json!({
        "operatingSystem": "byolinux_64",
        "customizations": {
            "imageURL": format!("https://REPLACE-WITH-WHERE-YOU-HOST-IT/{file_name}"),
            "imageCheckSum": sha512,
            "imageCheckSumType": ChecksumType::Sha512,
            "efiBootloaderPath": efi_bootloader_path,
            "hostname": "REPLACE-WITH-HOSTNAME",
            "sshKey": "REPLACE-WITH-SSH-PUBLIC-KEY (optional)",
            "configDriveUserData": "REPLACE-WITH-BASE64-CLOUD-CONFIG (optional)"
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reinstall_template_carries_checksum_and_efi_path() {
        let v = ovh_reinstall_template("\\efi\\debian\\grubx64.efi", "abc", "x.qcow2");
        assert_eq!(v["operatingSystem"], "byolinux_64");
        assert_eq!(v["customizations"]["imageCheckSumType"], "sha512");
        assert_eq!(v["customizations"]["efiBootloaderPath"], "\\efi\\debian\\grubx64.efi");
        assert!(v["customizations"]["imageURL"].as_str().unwrap().ends_with("/x.qcow2"));
    }
}
