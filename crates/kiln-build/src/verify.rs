//! `kiln verify DIR`: checks a build's output directory as whoever receives
//! it would, rule by rule: every line of `SHA512SUMS` against its file,
//! every `<file>.sha512` against its file, every artifact and SBOM that
//! `manifest.json` names (present, with the recorded SHA-512), each SBOM's
//! description of its artifact, and, when a key is given, the signature of
//! `SHA512SUMS`.
//!
//! Every rule is reported, passed or not, so one run names every problem.
//! Without a key the signature is not checked (and the report says so); with
//! one, a missing signature fails. Non-goals: fetching keys, checking the
//! contents of images (that is `kiln check`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha512};

use crate::sbom;
use crate::sign::{self, Trust, SUMS};

/// One rule's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What is checked: `sums`, `checksum`, `sidecar`, `manifest`, `sbom`, `signature`.
    pub rule: &'static str,
    /// The file concerned.
    pub file: String,
    pub passed: bool,
    /// Why, and on failure what to do.
    pub reason: String,
}

/// The verdicts on `dir`, and notes that are no verdict (an unchecked
/// signature).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.findings.iter().all(|f| f.passed)
    }

    fn add(&mut self, rule: &'static str, file: impl Into<String>, passed: bool, reason: impl Into<String>) {
        self.findings.push(Finding {
            rule,
            file: file.into(),
            passed,
            reason: reason.into(),
        });
    }
}

const REFETCH: &str = "the file changed or is damaged since the build: fetch or build it again";

/// Checks `dir` (see the module's description). `Err` only when a check
/// could not run at all (an unreadable key, a missing tool).
pub fn verify(dir: &Path, trust: Option<&Trust>) -> Result<Report> {
    let mut report = Report::default();
    let mut hashes = Hashes::new(dir);
    let sums_path = dir.join(SUMS);
    let sums_bytes = std::fs::read(&sums_path).ok();
    let listed = match &sums_bytes {
        None => {
            report.add(
                "sums",
                SUMS,
                false,
                format!(
                    "{SUMS} is missing from {}: is this a kiln build's --out directory?",
                    dir.display()
                ),
            );
            BTreeMap::new()
        }
        Some(bytes) => match parse_sums(&String::from_utf8_lossy(bytes)) {
            Ok(listed) if !listed.is_empty() => {
                report.add("sums", SUMS, true, format!("lists {} files", listed.len()));
                listed
            }
            Ok(_) => {
                report.add("sums", SUMS, false, format!("{SUMS} lists no file"));
                BTreeMap::new()
            }
            Err(e) => {
                report.add("sums", SUMS, false, e);
                BTreeMap::new()
            }
        },
    };
    for (name, want) in &listed {
        let (ok, reason) = hashes.compare(name, want, SUMS);
        report.add("checksum", name.clone(), ok, reason);
    }

    for side in sidecars(dir)? {
        let name = side.trim_end_matches(".sha512").to_owned();
        let text = std::fs::read_to_string(dir.join(&side)).unwrap_or_default();
        match parse_sums(&text).ok().and_then(|m| m.into_iter().next()) {
            Some((named, want)) if named == name => {
                let (ok, reason) = hashes.compare(&name, &want, &side);
                report.add("sidecar", side, ok, reason);
            }
            Some((named, _)) => report.add(
                "sidecar",
                side.clone(),
                false,
                format!("{side} names {named}, not {name}: it was renamed; rename it back or rebuild"),
            ),
            None => report.add(
                "sidecar",
                side.clone(),
                false,
                format!("{side} is not a `SHA512  FILE` line; rebuild or fetch it again"),
            ),
        }
    }

    check_manifest(dir, &listed, &mut hashes, &mut report);

    let signatures: Vec<&str> = [sign::SSH_SIGNATURE, sign::GPG_SIGNATURE]
        .into_iter()
        .filter(|s| dir.join(s).exists())
        .collect();
    match trust {
        None => {
            if signatures.is_empty() {
                report
                    .notes
                    .push(format!("{SUMS} is not signed (build with --sign-key to sign it)"));
            } else {
                report.notes.push(format!(
                    "{} not checked: give --key, --allowed-signers or --gpg-keyring to check it",
                    signatures.join(" and ")
                ));
            }
        }
        Some(trust) => {
            let name = trust.signature_name();
            let signature = dir.join(name);
            match (&sums_bytes, signature.exists()) {
                (_, false) => {
                    let other = signatures
                        .first()
                        .map(|s| format!(" (there is {s}: {})", other_trust(s)))
                        .unwrap_or_default();
                    report.add(
                        "signature",
                        name,
                        false,
                        format!(
                            "{SUMS} is not signed: {name} is missing{other}; sign it with `kiln build --sign-key`, \
                             or do not trust this directory"
                        ),
                    );
                }
                (None, true) => report.add("signature", name, false, format!("nothing to check: {SUMS} is missing")),
                (Some(data), true) => match trust.verify(data, &signature)? {
                    Ok(said) => report.add("signature", name, true, format!("good signature of {SUMS}: {said}")),
                    Err(said) => report.add(
                        "signature",
                        name,
                        false,
                        format!(
                            "the signature does not match {SUMS} or was not made by a trusted key ({said}): \
                             {SUMS} was changed after signing, or the key is not the one given; do not trust \
                             this directory"
                        ),
                    ),
                },
            }
        }
    }
    Ok(report)
}

fn other_trust(signature: &str) -> &'static str {
    if signature == sign::GPG_SIGNATURE {
        "an OpenPGP signature, checked with --gpg-keyring"
    } else {
        "an SSH signature, checked with --key or --allowed-signers"
    }
}

/// Every artifact and SBOM of `manifest.json`: present, with the recorded
/// SHA-512, listed in `SHA512SUMS`; each SBOM describes its artifact by the
/// same SHA-512.
fn check_manifest(dir: &Path, listed: &BTreeMap<String, String>, hashes: &mut Hashes, report: &mut Report) {
    let path = dir.join("manifest.json");
    let doc: serde_json::Value = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(doc) => doc,
        Err(e) => {
            report.add(
                "manifest",
                "manifest.json",
                false,
                format!("manifest.json cannot be read ({e}); fetch the whole output directory"),
            );
            return;
        }
    };
    let artifacts = doc["artifacts"].as_array().cloned().unwrap_or_default();
    if artifacts.is_empty() {
        report.add("manifest", "manifest.json", false, "manifest.json names no artifact");
    }
    for a in &artifacts {
        let mut files = vec![(a["path"].as_str(), a["sha512"].as_str(), "artifact")];
        if !a["sbom"].is_null() {
            files.push((a["sbom"]["path"].as_str(), a["sbom"]["sha512"].as_str(), "SBOM"));
        }
        for (file, sha, what) in files {
            let (Some(file), Some(sha)) = (file, sha) else {
                report.add(
                    "manifest",
                    "manifest.json",
                    false,
                    format!("an {what} entry lacks its path or sha512: {a}"),
                );
                continue;
            };
            let (mut ok, mut reason) = hashes.compare(file, sha, "manifest.json");
            if ok && !listed.contains_key(file) {
                ok = false;
                reason = format!("{file} is not listed in {SUMS}, so no signature covers it; rebuild the directory");
            }
            report.add("manifest", file.to_owned(), ok, format!("{what}: {reason}"));
        }
        if let (Some(artifact), Some(sbom_file), Some(sha)) =
            (a["path"].as_str(), a["sbom"]["path"].as_str(), a["sha512"].as_str())
        {
            let (ok, reason) = sbom_describes(&dir.join(sbom_file), artifact, sha);
            report.add("sbom", sbom_file.to_owned(), ok, reason);
        }
    }
}

fn sbom_describes(path: &Path, artifact: &str, sha512: &str) -> (bool, String) {
    let doc: sbom::Document = match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(d) => d,
        Err(e) => return (false, format!("not an SPDX document kiln can read ({e})")),
    };
    let described = doc
        .relationships
        .iter()
        .filter(|r| r.relationship_type == "DESCRIBES" && r.spdx_element_id == doc.spdx_id)
        .filter_map(|r| doc.packages.iter().find(|p| p.spdx_id == r.related_spdx_element))
        .find(|p| p.name == artifact);
    match described {
        None => (
            false,
            format!("does not describe {artifact}; it belongs to another artifact"),
        ),
        Some(p)
            if p.checksums
                .iter()
                .any(|c| c.algorithm == "SHA512" && c.checksum_value == sha512) =>
        {
            (
                true,
                format!(
                    "describes {artifact} by its SHA-512, {} packages",
                    doc.packages.len().saturating_sub(1)
                ),
            )
        }
        Some(_) => (
            false,
            format!("describes {artifact} with another SHA-512: it is the SBOM of another build"),
        ),
    }
}

/// `<file>.sha512` files of `dir`, sorted.
fn sidecars(dir: &Path) -> Result<Vec<String>> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sha512") && !n.starts_with('.'))
        .collect();
    out.sort();
    Ok(out)
}

/// `SHA512  FILE` lines (sha512sum's text and binary forms), by file.
pub fn parse_sums(text: &str) -> std::result::Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || format!("line {} is not `SHA512  FILE`: {line:?}", n + 1);
        let (hash, name) = line.split_once(' ').ok_or_else(bad)?;
        let name = name.strip_prefix([' ', '*']).ok_or_else(bad)?;
        if hash.len() != 128 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || name.is_empty() {
            return Err(bad());
        }
        if name.contains('/') || name == ".." {
            return Err(format!("line {} names {name:?}, outside the directory", n + 1));
        }
        out.insert(name.to_owned(), hash.to_ascii_lowercase());
    }
    Ok(out)
}

/// SHA-512s of the directory's files, each computed once.
struct Hashes {
    dir: PathBuf,
    known: BTreeMap<String, std::result::Result<String, String>>,
}

impl Hashes {
    fn new(dir: &Path) -> Self {
        Hashes {
            dir: dir.to_owned(),
            known: BTreeMap::new(),
        }
    }

    fn get(&mut self, name: &str) -> std::result::Result<String, String> {
        let dir = &self.dir;
        self.known
            .entry(name.to_owned())
            .or_insert_with(|| {
                if name.contains('/') {
                    return Err(format!("{name} is outside the directory"));
                }
                let path = dir.join(name);
                let mut f = std::fs::File::open(&path).map_err(|e| format!("{name}: {e}"))?;
                let mut h = Sha512::new();
                std::io::copy(&mut f, &mut h).map_err(|e| format!("reading {name}: {e}"))?;
                Ok(hex::encode(h.finalize()))
            })
            .clone()
    }

    /// Whether `name`'s SHA-512 is `want` (as `source` records it).
    fn compare(&mut self, name: &str, want: &str, source: &str) -> (bool, String) {
        match self.get(name) {
            Err(e) => (
                false,
                format!("{e}: {source} names it but it cannot be read; fetch the whole directory"),
            ),
            Ok(got) if got.eq_ignore_ascii_case(want) => (true, format!("matches {source}")),
            Ok(got) => (
                false,
                format!(
                    "SHA-512 {}… does not match {source}'s {}…: {REFETCH}",
                    &got[..16],
                    &want[..16.min(want.len())]
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_lines_take_both_forms_and_refuse_paths() {
        let h = "a".repeat(128);
        let m = parse_sums(&format!("{h}  x.qcow2\n{h} *y.iso\n\n")).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m["y.iso"], h);
        assert!(parse_sums(&format!("{h}  ../etc/passwd\n")).is_err());
        assert!(parse_sums("abc  x\n").unwrap_err().contains("line 1"));
        assert!(parse_sums(&format!("{h}x.qcow2\n")).is_err());
    }
}
