//! The software bill of materials written beside each artifact: an SPDX 2.3
//! JSON document (`<artifact>.spdx.json`) listing every package installed in
//! the image, each with its package URL, and describing the artifact by its
//! SHA-512.
//!
//! The document is deterministic: its creation time is the build's
//! SOURCE_DATE_EPOCH and its namespace is derived from a hash of its own
//! content, so byte-identical rebuilds give byte-identical SBOMs.
//!
//! Written with serde structs rather than the `spdx-rs` crate: kiln emits
//! one small, fixed shape of document and never parses SPDX, and spdx-rs
//! models all of SPDX (files, snippets, licence expressions, tag-value) with
//! a dependency tree to match; the fields used here are few and plain. The
//! package URLs come from the `packageurl` crate (the spec's encoding rules).
//! Non-goals: licences (the package databases do not hold SPDX
//! expressions), files, and CycloneDX.

use std::time::{Duration, SystemTime};

use anyhow::Result;
use kiln_spec::{Base, RhelDistribution};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::Package;

/// The SBOM's file name for artifact `artifact` (a file name).
pub fn file_name(artifact: &str) -> String {
    format!("{artifact}.spdx.json")
}

/// Where the packages of an image come from, for their package URLs and
/// the SBOM's supplier field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Distribution {
    /// The purl type: `deb`, `rpm`, `alpm`.
    pub purl_type: &'static str,
    /// The purl namespace (the vendor): `debian`, `ubuntu`, `arch`, ...
    pub namespace: &'static str,
    /// Who distributes the packages (SPDX `supplier`, an organisation).
    pub supplier: &'static str,
}

impl Distribution {
    /// The distribution that `[base]` builds from.
    pub fn of(base: &Base) -> Distribution {
        let d = |purl_type, namespace, supplier| Distribution {
            purl_type,
            namespace,
            supplier,
        };
        match base {
            Base::Debian(_) => d("deb", "debian", "Debian"),
            Base::Ubuntu(_) => d("deb", "ubuntu", "Canonical Ltd."),
            Base::Arch(_) => d("alpm", "arch", "Arch Linux"),
            Base::Rhel(r) => match r.distribution {
                RhelDistribution::Rocky => d("rpm", "rocky", "Rocky Enterprise Software Foundation"),
                RhelDistribution::Almalinux => d("rpm", "almalinux", "AlmaLinux OS Foundation"),
                RhelDistribution::Rhel => d("rpm", "redhat", "Red Hat, Inc."),
            },
        }
    }
}

/// What an SBOM is made from.
#[derive(Debug, Clone)]
pub struct SbomInput<'a> {
    /// The artifact's file name.
    pub artifact: &'a str,
    /// The artifact's SHA-512, hex.
    pub sha512: &'a str,
    /// `[image] version`.
    pub version: &'a str,
    pub distribution: Distribution,
    /// The packages installed in the artifact's tree.
    pub packages: &'a [Package],
    /// SOURCE_DATE_EPOCH; `None`: now (the build is not reproducible then).
    pub created: Option<u64>,
}

/// The package URL of `p`: `pkg:deb/debian/NAME@VERSION?arch=ARCH`,
/// `pkg:rpm/rocky/NAME@VERSION-RELEASE?arch=ARCH&epoch=E`,
/// `pkg:alpm/arch/NAME@VERSION?arch=ARCH`. An rpm epoch is a qualifier
/// (the purl spec's rule for rpm); a Debian or Arch epoch stays in the
/// version, as their package managers write it.
pub fn purl(d: &Distribution, p: &Package) -> Result<String> {
    let bad = |e: packageurl::Error| anyhow::anyhow!("package {} {}: no package URL: {e}", p.name, p.version);
    let (epoch, version) = match (d.purl_type, p.version.split_once(':')) {
        ("rpm", Some((epoch, rest))) => (Some(epoch), rest),
        _ => (None, p.version.as_str()),
    };
    let mut purl = packageurl::PackageUrl::new(d.purl_type, p.name.as_str()).map_err(bad)?;
    purl.with_namespace(d.namespace)
        .map_err(bad)?
        .with_version(version)
        .map_err(bad)?;
    if let Some(arch) = &p.arch {
        purl.add_qualifier("arch", arch.as_str()).map_err(bad)?;
    }
    if let Some(epoch) = epoch {
        purl.add_qualifier("epoch", epoch).map_err(bad)?;
    }
    Ok(purl.to_string())
}

/// The SPDX 2.3 document, pretty-printed JSON with a final newline.
pub fn spdx_json(input: &SbomInput) -> Result<String> {
    let mut doc = document(input)?;
    // The namespace must be unique per document: a hash of everything
    // else in it is, and keeps rebuilds byte-identical.
    let digest = Sha256::digest(serde_json::to_vec(&doc)?);
    doc.document_namespace = format!(
        "https://kiln.invalid/spdx/{}-{}",
        input.artifact,
        &hex::encode(digest)[..32]
    );
    let mut text = serde_json::to_string_pretty(&doc)?;
    text.push('\n');
    Ok(text)
}

/// The SPDXID of the artifact's package.
pub const ARTIFACT_ID: &str = "SPDXRef-Artifact";

fn document(input: &SbomInput) -> Result<Document> {
    let created = match input.created {
        Some(epoch) => SystemTime::UNIX_EPOCH + Duration::from_secs(epoch),
        None => SystemTime::now(),
    };
    let mut packages = vec![SpdxPackage {
        name: input.artifact.to_owned(),
        spdx_id: ARTIFACT_ID.to_owned(),
        version_info: Some(input.version.to_owned()),
        supplier: None,
        download_location: NOASSERTION.to_owned(),
        files_analyzed: false,
        checksums: vec![Checksum {
            algorithm: "SHA512".to_owned(),
            checksum_value: input.sha512.to_owned(),
        }],
        primary_package_purpose: Some("OPERATING-SYSTEM".to_owned()),
        external_refs: vec![],
    }];
    let mut relationships = vec![Relationship {
        spdx_element_id: "SPDXRef-DOCUMENT".to_owned(),
        relationship_type: "DESCRIBES".to_owned(),
        related_spdx_element: ARTIFACT_ID.to_owned(),
    }];
    let mut ids = std::collections::BTreeSet::new();
    for p in input.packages {
        let id = unique_id(&mut ids, p);
        packages.push(SpdxPackage {
            name: p.name.clone(),
            spdx_id: id.clone(),
            version_info: Some(p.version.clone()),
            supplier: Some(format!("Organization: {}", input.distribution.supplier)),
            download_location: NOASSERTION.to_owned(),
            files_analyzed: false,
            checksums: vec![],
            primary_package_purpose: None,
            external_refs: vec![ExternalRef {
                reference_category: "PACKAGE-MANAGER".to_owned(),
                reference_type: "purl".to_owned(),
                reference_locator: purl(&input.distribution, p)?,
            }],
        });
        relationships.push(Relationship {
            spdx_element_id: ARTIFACT_ID.to_owned(),
            relationship_type: "CONTAINS".to_owned(),
            related_spdx_element: id,
        });
    }
    Ok(Document {
        spdx_version: "SPDX-2.3".to_owned(),
        data_license: "CC0-1.0".to_owned(),
        spdx_id: "SPDXRef-DOCUMENT".to_owned(),
        name: input.artifact.to_owned(),
        document_namespace: String::new(),
        creation_info: CreationInfo {
            created: humantime::format_rfc3339_seconds(created).to_string(),
            creators: vec![format!("Tool: kiln-{}", env!("CARGO_PKG_VERSION"))],
        },
        packages,
        relationships,
    })
}

/// `SPDXRef-Package-NAME-ARCH` with the characters SPDX ids do not allow
/// replaced, made unique with a counter (two names may sanitise alike).
fn unique_id(taken: &mut std::collections::BTreeSet<String>, p: &Package) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' })
            .collect()
    };
    let mut base = format!("SPDXRef-Package-{}", clean(&p.name));
    if let Some(arch) = &p.arch {
        base = format!("{base}-{}", clean(arch));
    }
    let mut id = base.clone();
    let mut n = 2;
    while !taken.insert(id.clone()) {
        id = format!("{base}-{n}");
        n += 1;
    }
    id
}

const NOASSERTION: &str = "NOASSERTION";

/// The parts of SPDX 2.3's JSON form that kiln writes (and that tests and
/// `kiln verify` read back).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    pub spdx_version: String,
    pub data_license: String,
    #[serde(rename = "SPDXID")]
    pub spdx_id: String,
    pub name: String,
    pub document_namespace: String,
    pub creation_info: CreationInfo,
    pub packages: Vec<SpdxPackage>,
    pub relationships: Vec<Relationship>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreationInfo {
    pub created: String,
    pub creators: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpdxPackage {
    pub name: String,
    #[serde(rename = "SPDXID")]
    pub spdx_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_info: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supplier: Option<String>,
    pub download_location: String,
    pub files_analyzed: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checksums: Vec<Checksum>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_package_purpose: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_refs: Vec<ExternalRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checksum {
    pub algorithm: String,
    pub checksum_value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRef {
    pub reference_category: String,
    pub reference_type: String,
    pub reference_locator: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Relationship {
    pub spdx_element_id: String,
    pub relationship_type: String,
    pub related_spdx_element: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn pkg(name: &str, version: &str, arch: &str) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            arch: Some(arch.into()),
        }
    }

    fn debian() -> Distribution {
        Distribution::of(&base("[base]\ndistro='debian'\nrelease='bookworm'\n"))
    }

    fn base(toml_base: &str) -> Base {
        let spec: kiln_spec::Spec = toml::from_str(&format!("[image]\nname='x'\nversion='1'\n{toml_base}")).unwrap();
        spec.base
    }

    fn packages() -> Vec<Package> {
        vec![
            pkg("grub-pc-bin", "2.06-13+deb12u1", "amd64"),
            pkg("libstdc++6", "12.2.0-14", "amd64"),
            pkg("linux-image-amd64", "6.1.119-1", "amd64"),
            pkg("debconf", "1.5.82", "all"),
            pkg("perl-base", "1:5.36.0-7+deb12u1", "amd64"),
        ]
    }

    const ARTIFACT_SHA512: &str = "abababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababab";

    fn input(packages: &[Package]) -> SbomInput<'_> {
        SbomInput {
            artifact: "debian-12-byol-1.0.0.qcow2",
            sha512: ARTIFACT_SHA512,
            version: "1.0.0",
            distribution: debian(),
            packages,
            created: Some(1_764_979_200),
        }
    }

    #[test]
    fn purls_follow_each_family_and_parse_back() {
        let rocky = Distribution::of(&base(
            "[base]\ndistro='rhel'\ndistribution='rocky'\nrelease='9'\nrepos=[]\n",
        ));
        let arch = Distribution::of(&base("[base]\ndistro='arch'\n"));
        let ubuntu = Distribution::of(&base("[base]\ndistro='ubuntu'\nrelease='noble'\n"));
        for (d, p, want) in [
            (
                debian(),
                pkg("libstdc++6", "12.2.0-14+deb12u1", "amd64"),
                "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14%2Bdeb12u1?arch=amd64",
            ),
            (
                debian(),
                pkg("perl-base", "1:5.36.0-7", "amd64"),
                "pkg:deb/debian/perl-base@1:5.36.0-7?arch=amd64",
            ),
            (
                ubuntu,
                pkg("bash", "5.2.21-2ubuntu4", "amd64"),
                "pkg:deb/ubuntu/bash@5.2.21-2ubuntu4?arch=amd64",
            ),
            (
                rocky,
                pkg("shim-x64", "1:15.8-3", "x86_64"),
                "pkg:rpm/rocky/shim-x64@15.8-3?arch=x86_64&epoch=1",
            ),
            (
                arch,
                pkg("zlib", "1:1.3.1-2", "x86_64"),
                "pkg:alpm/arch/zlib@1:1.3.1-2?arch=x86_64",
            ),
        ] {
            let got = purl(&d, &p).unwrap();
            assert_eq!(got, want);
            // The crate's parser is the oracle of well-formedness: the
            // purl reads back as the package it was made from.
            let parsed = packageurl::PackageUrl::from_str(&got).unwrap();
            assert_eq!(parsed.ty(), d.purl_type);
            assert_eq!(parsed.namespace(), Some(d.namespace));
            assert_eq!(parsed.name(), p.name);
            assert_eq!(parsed.qualifiers().get("arch").map(|a| a.as_ref()), p.arch.as_deref());
            assert!(p.version.ends_with(parsed.version().unwrap()), "{got}");
        }
    }

    #[test]
    fn the_document_parses_back_with_every_package_and_the_artifact_checksum() {
        let pkgs = packages();
        let text = spdx_json(&input(&pkgs)).unwrap();
        let doc: Document = serde_json::from_str(&text).unwrap();
        assert_eq!(doc.spdx_version, "SPDX-2.3");
        assert_eq!(doc.creation_info.created, "2025-12-06T00:00:00Z");
        let describes: Vec<_> = doc
            .relationships
            .iter()
            .filter(|r| r.relationship_type == "DESCRIBES")
            .collect();
        assert_eq!(describes.len(), 1);
        assert_eq!(describes[0].spdx_element_id, "SPDXRef-DOCUMENT");
        let artifact = doc
            .packages
            .iter()
            .find(|p| p.spdx_id == describes[0].related_spdx_element)
            .unwrap();
        assert_eq!(artifact.name, "debian-12-byol-1.0.0.qcow2");
        assert_eq!(artifact.checksums[0].algorithm, "SHA512");
        assert_eq!(artifact.checksums[0].checksum_value, ARTIFACT_SHA512);
        for p in &pkgs {
            let found = doc
                .packages
                .iter()
                .find(|s| s.name == p.name)
                .unwrap_or_else(|| panic!("{} missing", p.name));
            assert_eq!(found.version_info.as_deref(), Some(p.version.as_str()));
            assert_eq!(found.supplier.as_deref(), Some("Organization: Debian"));
            let purl = &found.external_refs[0].reference_locator;
            assert!(packageurl::PackageUrl::from_str(purl).is_ok(), "{purl}");
            assert!(
                doc.relationships
                    .iter()
                    .any(|r| r.relationship_type == "CONTAINS" && r.related_spdx_element == found.spdx_id),
                "{} is not contained in the artifact",
                p.name
            );
        }
        let mut ids: Vec<&str> = doc.packages.iter().map(|p| p.spdx_id.as_str()).collect();
        assert!(ids.iter().all(|id| id
            .strip_prefix("SPDXRef-")
            .is_some_and(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric() || "-.".contains(c)))));
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), pkgs.len() + 1, "SPDX ids are not unique");
    }

    #[test]
    fn the_same_input_gives_the_same_bytes_and_any_change_a_new_namespace() {
        let pkgs = packages();
        let a = spdx_json(&input(&pkgs)).unwrap();
        assert_eq!(a, spdx_json(&input(&pkgs)).unwrap());
        let ns = |text: &str| serde_json::from_str::<Document>(text).unwrap().document_namespace;
        let mut other = input(&pkgs);
        other.sha512 = "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd";
        assert_ne!(ns(&a), ns(&spdx_json(&other).unwrap()));
        let fewer = &pkgs[1..];
        assert_ne!(ns(&a), ns(&spdx_json(&input(fewer)).unwrap()));
        assert!(ns(&a).starts_with("https://kiln.invalid/spdx/debian-12-byol-1.0.0.qcow2-"));
    }

    #[test]
    fn two_packages_of_one_name_get_distinct_ids() {
        let pkgs = vec![pkg("libc6", "2.36-9", "amd64"), pkg("libc6", "2.36-9", "i386")];
        let doc: Document = serde_json::from_str(&spdx_json(&input(&pkgs)).unwrap()).unwrap();
        assert_eq!(doc.packages[1].spdx_id, "SPDXRef-Package-libc6-amd64");
        assert_eq!(doc.packages[2].spdx_id, "SPDXRef-Package-libc6-i386");
    }

    /// The SPDX project's validator (PyPI `spdx-tools`, which
    /// scripts/install-deps.sh puts in the test venv) accepts the document:
    /// SPDX ids, relationships, purls, dates, the namespace.
    #[test]
    fn the_spdx_validator_accepts_the_document() {
        let tool = std::env::var_os("KILN_PYSPDXTOOLS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/opt/kiln-test/venv/bin/pyspdxtools".into());
        if !kiln_exec::testing::require_or_skip(
            tool.is_file(),
            &format!(
                "{} is missing (PyPI spdx-tools; scripts/install-deps.sh installs it)",
                tool.display()
            ),
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut pkgs = packages();
        pkgs.push(pkg("libc6", "2.36-9", "i386"));
        pkgs.push(Package {
            name: "no-arch".into(),
            version: "1".into(),
            arch: None,
        });
        let validate = |text: &str| {
            let file = dir.path().join("x.spdx.json");
            std::fs::write(&file, text).unwrap();
            #[allow(clippy::disallowed_methods)] // the oracle, not a tool of kiln's
            let out = std::process::Command::new(&tool)
                .arg("-i")
                .arg(&file)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            (
                out.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        };
        let (ok, said) = validate(&spdx_json(&input(&pkgs)).unwrap());
        assert!(ok, "pyspdxtools rejects kiln's SBOM:\n{said}");
        // The oracle can say no: an id SPDX forbids.
        let broken = spdx_json(&input(&pkgs))
            .unwrap()
            .replace("SPDXRef-Package-debconf-all", "SPDXRef-Package-debconf+all");
        let (ok, said) = validate(&broken);
        assert!(!ok, "pyspdxtools accepted an invalid id:\n{said}");
    }

    #[test]
    fn snapshot() {
        let pkgs = packages();
        insta::assert_snapshot!(spdx_json(&input(&pkgs)).unwrap());
    }
}
