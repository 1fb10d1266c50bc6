//! The build's `manifest.json` as a publish reads and extends it: the
//! image's version and SHA-512 come from it, and each publish appends an
//! entry to its `published` list, written atomically (`.part`, renamed).
//!
//! The entry follows Packer's manifest post-processor, whose `builds[]`
//! record an `artifact_id` of `REGION:AMI` and a `build_time` in Unix
//! seconds; kiln's keeps those two names and says the rest plainly:
//! `{"target": "aws", "name", "region", "ami", "snapshot", "artifact_id",
//! "image", "sha512", "time", "endpoint"?}`.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// What a publish needs from the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub manifest: PathBuf,
    /// `name` of the spec's `[image]`.
    pub image_name: String,
    pub version: String,
    pub sha512: String,
    /// The artifact's `format`, if recorded.
    pub format: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("no manifest at {0}: kiln publish aws publishes an image kiln built, and records the AMI in that build's manifest.json; pass --manifest PATH")]
    Missing(String),
    #[error("reading {path}: {detail}")]
    Unreadable { path: String, detail: String },
    #[error("{manifest} lists no artifact named {file} (it lists: {listed})")]
    NotListed {
        manifest: String,
        file: String,
        listed: String,
    },
    #[error("writing {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// The manifest beside `image` unless `explicit` names one.
pub fn locate(image: &Path, explicit: Option<&Path>) -> PathBuf {
    match explicit {
        Some(p) => p.to_owned(),
        None => image.parent().unwrap_or(Path::new(".")).join("manifest.json"),
    }
}

fn load(path: &Path) -> Result<serde_json::Value, ManifestError> {
    let shown = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ManifestError::Missing(shown)),
        Err(e) => {
            return Err(ManifestError::Unreadable {
                path: shown,
                detail: e.to_string(),
            })
        }
    };
    serde_json::from_str(&text).map_err(|e| ManifestError::Unreadable {
        path: shown,
        detail: e.to_string(),
    })
}

/// Reads the version, and the artifact entry whose file name is `image`'s.
pub fn read(manifest: &Path, image: &Path) -> Result<ImageRecord, ManifestError> {
    let m = load(manifest)?;
    let unreadable = |detail: &str| ManifestError::Unreadable {
        path: manifest.display().to_string(),
        detail: detail.to_owned(),
    };
    let file = image
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let artifacts = m
        .get("artifacts")
        .and_then(|a| a.as_array())
        .cloned()
        .unwrap_or_default();
    let name_of = |a: &serde_json::Value| {
        a.get("path")
            .and_then(|p| p.as_str())
            .and_then(|p| Path::new(p).file_name())
            .map(|f| f.to_string_lossy().into_owned())
    };
    let Some(artifact) = artifacts.iter().find(|a| name_of(a).as_deref() == Some(file.as_str())) else {
        let listed: Vec<String> = artifacts.iter().filter_map(name_of).collect();
        return Err(ManifestError::NotListed {
            manifest: manifest.display().to_string(),
            file,
            listed: if listed.is_empty() {
                "nothing".into()
            } else {
                listed.join(", ")
            },
        });
    };
    let s = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    Ok(ImageRecord {
        manifest: manifest.to_owned(),
        image_name: s(&m, "name").ok_or_else(|| unreadable("no `name`"))?,
        version: s(&m, "version").ok_or_else(|| unreadable("no `version`"))?,
        sha512: s(artifact, "sha512").ok_or_else(|| unreadable(&format!("artifact {file} has no `sha512`")))?,
        format: s(artifact, "format"),
    })
}

/// One publish, as recorded in `published`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublishedEntry {
    pub target: String,
    /// The AMI's name.
    pub name: String,
    pub region: String,
    pub ami: String,
    pub snapshot: String,
    /// Packer's form: `REGION:AMI`.
    pub artifact_id: String,
    /// The image file published.
    pub image: String,
    pub sha512: String,
    /// Unix seconds.
    pub time: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// Appends `entry` to the manifest's `published` list, atomically.
pub fn record(manifest: &Path, entry: &PublishedEntry) -> Result<(), ManifestError> {
    let mut m = load(manifest)?;
    let Some(obj) = m.as_object_mut() else {
        return Err(ManifestError::Unreadable {
            path: manifest.display().to_string(),
            detail: "not a JSON object".into(),
        });
    };
    let list = obj
        .entry("published")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    if !list.is_array() {
        *list = serde_json::Value::Array(Vec::new());
    }
    list.as_array_mut()
        .expect("an array")
        .push(serde_json::to_value(entry).expect("serialisable"));
    let write = |source| ManifestError::Write {
        path: manifest.display().to_string(),
        source,
    };
    let part = kiln_exec::PartialFile::new(manifest);
    let mut text = serde_json::to_string_pretty(&m).expect("serialisable");
    text.push('\n');
    part.write_all(text.as_bytes()).map_err(write)?;
    part.commit().map_err(write)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"{
  "manifestVersion": 1,
  "name": "debian-12-ami",
  "version": "1.0.0",
  "artifacts": [
    {"target": "ami", "path": "debian-12-ami-1.0.0-ami.raw", "format": "raw", "size": 2147483648, "sha512": "ab12"},
    {"target": "disk", "path": "debian-12-ami-1.0.0-disk.qcow2", "format": "qcow2", "size": 1, "sha512": "cd34"}
  ]
}"#;

    #[test]
    fn reads_the_artifact_of_the_image_and_records_publishes() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("manifest.json");
        std::fs::write(&manifest, MANIFEST).unwrap();
        let image = dir.path().join("debian-12-ami-1.0.0-ami.raw");
        assert_eq!(locate(&image, None), manifest);
        let r = read(&manifest, &image).unwrap();
        assert_eq!((r.version.as_str(), r.sha512.as_str()), ("1.0.0", "ab12"));
        assert_eq!(r.format.as_deref(), Some("raw"));
        let err = read(&manifest, Path::new("/x/other.raw")).unwrap_err().to_string();
        assert!(
            err.contains("lists no artifact named other.raw") && err.contains("debian-12-ami-1.0.0-ami.raw"),
            "{err}"
        );
        let err = read(&dir.path().join("none.json"), &image).unwrap_err().to_string();
        assert!(err.contains("no manifest at") && err.contains("--manifest"), "{err}");

        let entry = PublishedEntry {
            target: "aws".into(),
            name: "debian-12-ami-1.0.0".into(),
            region: "eu-west-3".into(),
            ami: "ami-1".into(),
            snapshot: "snap-1".into(),
            artifact_id: "eu-west-3:ami-1".into(),
            image: "debian-12-ami-1.0.0-ami.raw".into(),
            sha512: "ab12".into(),
            time: 1_700_000_000,
            endpoint: None,
        };
        record(&manifest, &entry).unwrap();
        record(
            &manifest,
            &PublishedEntry {
                ami: "ami-2".into(),
                ..entry
            },
        )
        .unwrap();
        let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
        assert_eq!(m["published"][0]["artifact_id"], "eu-west-3:ami-1");
        assert_eq!(m["published"][1]["ami"], "ami-2");
        assert!(m["published"][0].get("endpoint").is_none());
        // The rest is kept as it was.
        assert_eq!(m["artifacts"][1]["format"], "qcow2");
        assert!(!dir.path().join("manifest.json.part").exists());
    }
}
