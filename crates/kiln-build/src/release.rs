//! Release builds (`kiln build SPEC --release X.Y.Z`): the version every
//! artifact carries, the refusal of a dirty git tree, and `releases.json`,
//! the record of every release build beside the outputs, which a team can
//! commit next to its specs.
//!
//! The version replaces `[image] version` before planning, so it reaches the
//! artifact names, the manifest and the copy of the manifest inside the
//! image through the ordinary paths; stages before the targets' do not
//! depend on it and come from the cache.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_exec::guard::PartialFile;
use kiln_exec::Cmd;
use serde::{Deserialize, Serialize};

/// The record's file name, in the output directory.
pub const RELEASES_FILE: &str = "releases.json";

/// The suffix of a release built from a tree with uncommitted changes.
pub const DIRTY_SUFFIX: &str = "-dirty";

/// A release version: semantic versioning (`1.2.3`, `1.2.3-rc.1`), which
/// also keeps it usable in file names.
pub fn parse_version(s: &str) -> std::result::Result<semver::Version, String> {
    semver::Version::parse(s).map_err(|e| format!("{s:?} is not a release version like 1.2.3 ({e})"))
}

/// The spec's git repository as a release sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// `HEAD`'s commit.
    pub commit: String,
    /// Paths (relative to the repository's top) with uncommitted changes,
    /// untracked files included, outputs excluded.
    pub changed: Vec<String>,
}

/// The repository holding `spec_dir`, ignoring changes under `out_dir`
/// (a build's own outputs do not make a tree dirty); `None` outside a
/// repository or without git.
pub fn tree(spec_dir: &Path, out_dir: &Path) -> Option<Tree> {
    let git = |args: &[&str]| Cmd::new("git").arg("-C").arg(spec_dir).args(args).run_string().ok();
    let commit = git(&["rev-parse", "HEAD"])?.trim().to_owned();
    let top = PathBuf::from(git(&["rev-parse", "--show-toplevel"])?.trim());
    let status = git(&["status", "--porcelain=v1", "-z"])?;
    let outputs = existing_prefix(out_dir).strip_prefix(&top).ok().map(Path::to_owned);
    let changed = porcelain_paths(&status)
        .into_iter()
        .filter(|p| {
            !outputs
                .as_deref()
                .is_some_and(|o| !o.as_os_str().is_empty() && Path::new(p).starts_with(o))
        })
        .collect();
    Some(Tree { commit, changed })
}

/// `path` made absolute through its nearest existing ancestor, so that an
/// output directory not yet created still compares with git's paths.
fn existing_prefix(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut rest = Vec::new();
    let mut at = abs.as_path();
    loop {
        if let Ok(real) = at.canonicalize() {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                at = parent;
            }
            _ => return abs,
        }
    }
}

/// The paths of `git status --porcelain=v1 -z`: `XY PATH\0`, and for a
/// rename or copy `XY NEW\0OLD\0` (the new name is the one listed).
fn porcelain_paths(status: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut fields = status.split('\0');
    while let Some(entry) = fields.next() {
        if entry.len() < 4 {
            continue;
        }
        let (xy, path) = entry.split_at(3);
        if xy.starts_with('R') || xy.starts_with('C') {
            fields.next();
        }
        paths.push(path.to_owned());
    }
    paths
}

/// The version a release build gets: `version`, with `-dirty` when the
/// tree has changes and the user allowed them; a dirty tree without
/// `allow_dirty` is refused with the list of changed files.
pub fn release_version(version: &semver::Version, tree: Option<&Tree>, allow_dirty: bool) -> Result<String> {
    let changed = tree.map(|t| t.changed.as_slice()).unwrap_or_default();
    if changed.is_empty() {
        return Ok(version.to_string());
    }
    if !allow_dirty {
        const SHOWN: usize = 20;
        let mut list: Vec<String> = changed.iter().take(SHOWN).map(|p| format!("  {p}")).collect();
        if changed.len() > SHOWN {
            list.push(format!("  … and {} more", changed.len() - SHOWN));
        }
        bail!(
            "release {version}: the spec's git tree has uncommitted changes:\n{}\n\
             commit them (a release records its commit), or pass --allow-dirty to build {version}{DIRTY_SUFFIX}",
            list.join("\n")
        );
    }
    Ok(format!("{version}{DIRTY_SUFFIX}"))
}

/// `releases.json`: every release build, oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Releases {
    pub releases: Vec<Release>,
}

/// One release build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// The image's name (`[image] name`).
    pub name: String,
    /// The version as in the artifact names, `-dirty` included.
    pub version: String,
    /// The spec repository's commit; `null` outside git.
    pub commit: Option<String>,
    pub dirty: bool,
    /// When the build finished, RFC 3339 in UTC.
    pub date: String,
    pub artifacts: Vec<ReleaseArtifact>,
    /// Fields this version of kiln does not know, kept as they were.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseArtifact {
    pub target: String,
    /// File name in the output directory.
    pub path: String,
    pub size: u64,
    pub sha512: String,
}

impl Releases {
    /// The record in `out_dir`; empty when there is none yet. A file that is
    /// not a valid record is an error naming its line and column, so that
    /// no build starts that could not be recorded.
    pub fn load(out_dir: &Path) -> Result<Releases> {
        let path = out_dir.join(RELEASES_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Releases::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}:{}: not a kiln release record: {e}\n\
                 kiln appends one entry per release build to this file and keeps the earlier ones; \
                 repair it (for example from git), or move it away to start a new record",
                path.display(),
                e.line(),
                e.column()
            )
        })
    }

    /// Adds `release` and writes the record in `out_dir` atomically (a
    /// `.part` file, synced, renamed over the old one).
    pub fn append(out_dir: &Path, release: Release) -> Result<PathBuf> {
        // One record, many builds into one directory: read, add and write
        // under an exclusive lock on the directory.
        let dir = std::fs::File::open(out_dir).with_context(|| format!("opening {}", out_dir.display()))?;
        dir.lock().with_context(|| format!("locking {}", out_dir.display()))?;
        let mut record = Releases::load(out_dir)?;
        record.releases.push(release);
        let file = PartialFile::new(out_dir.join(RELEASES_FILE));
        let mut text = serde_json::to_string_pretty(&record)?;
        text.push('\n');
        file.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", file.path().display()))?;
        let path = file.commit().context("renaming the release record into place")?;
        dir.sync_all().ok();
        Ok(path)
    }
}

/// What a release entry takes from the build's `manifest.json`.
#[derive(Deserialize)]
struct ManifestArtifacts {
    name: String,
    version: String,
    #[serde(default)]
    artifacts: Vec<ReleaseArtifact>,
}

/// The entry for the build whose manifest is `manifest`, finished now.
pub fn entry(manifest: &Path, tree: Option<&Tree>) -> Result<Release> {
    let m: ManifestArtifacts =
        serde_json::from_slice(&std::fs::read(manifest).with_context(|| format!("reading {}", manifest.display()))?)
            .with_context(|| format!("reading {}", manifest.display()))?;
    Ok(Release {
        name: m.name,
        dirty: m.version.ends_with(DIRTY_SUFFIX),
        version: m.version,
        commit: tree.map(|t| t.commit.clone()),
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        artifacts: m.artifacts,
        other: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(version: &str) -> Release {
        Release {
            name: "img".into(),
            version: version.into(),
            commit: Some("abc".into()),
            dirty: false,
            date: "2026-12-06T00:00:00Z".into(),
            artifacts: vec![ReleaseArtifact {
                target: "disk".into(),
                path: format!("img-{version}-disk.qcow2"),
                size: 1,
                sha512: "00".into(),
            }],
            other: BTreeMap::new(),
        }
    }

    #[test]
    fn versions_are_semantic() {
        assert_eq!(parse_version("1.2.3").unwrap().to_string(), "1.2.3");
        assert_eq!(parse_version("1.2.3-rc.1").unwrap().to_string(), "1.2.3-rc.1");
        for bad in ["1.2", "v1.2.3", "1.2.3 ", "", "1.2.x"] {
            let e = parse_version(bad).unwrap_err();
            assert!(e.contains("not a release version like 1.2.3"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_dirty_tree_is_refused_with_its_files_unless_allowed() {
        let v = parse_version("2.0.0").unwrap();
        let clean = Tree {
            commit: "abc".into(),
            changed: vec![],
        };
        assert_eq!(release_version(&v, Some(&clean), false).unwrap(), "2.0.0");
        assert_eq!(release_version(&v, None, false).unwrap(), "2.0.0");
        let dirty = Tree {
            commit: "abc".into(),
            changed: vec!["files/motd".into(), "notes.txt".into()],
        };
        let e = release_version(&v, Some(&dirty), false).unwrap_err().to_string();
        assert!(e.contains("  files/motd\n  notes.txt\n"), "{e}");
        assert!(e.contains("--allow-dirty to build 2.0.0-dirty"), "{e}");
        assert_eq!(release_version(&v, Some(&dirty), true).unwrap(), "2.0.0-dirty");
    }

    #[test]
    fn porcelain_lists_new_names_of_renames_and_untracked_directories() {
        let status = " M files/motd\0R  new.toml\0old.toml\0?? out/\0?? notes.txt\0";
        assert_eq!(porcelain_paths(status), ["files/motd", "new.toml", "out/", "notes.txt"]);
    }

    #[test]
    fn the_record_keeps_earlier_entries_and_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(RELEASES_FILE),
            r#"{"releases": [{"name": "img", "version": "1.0.0", "commit": null, "dirty": false,
                "date": "2026-01-01T00:00:00Z", "artifacts": [], "approvedBy": "ops"}]}"#,
        )
        .unwrap();
        Releases::append(dir.path(), release("1.1.0")).unwrap();
        let record = Releases::load(dir.path()).unwrap();
        assert_eq!(record.releases.len(), 2);
        assert_eq!(record.releases[0].version, "1.0.0");
        assert_eq!(record.releases[0].other["approvedBy"], "ops");
        assert_eq!(record.releases[1], release("1.1.0"));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [RELEASES_FILE], "the write left something behind");
    }

    #[test]
    fn an_invalid_record_is_an_error_at_its_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(RELEASES_FILE),
            "{\"releases\": [\n  {\"name\": 1}\n]}\n",
        )
        .unwrap();
        let e = format!("{:#}", Releases::load(dir.path()).unwrap_err());
        assert!(e.contains("releases.json:2:"), "{e}");
        assert!(e.contains("not a kiln release record"), "{e}");
        std::fs::write(dir.path().join(RELEASES_FILE), "[]").unwrap();
        assert!(Releases::load(dir.path()).is_err());
    }

    #[test]
    fn a_missing_record_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Releases::load(dir.path()).unwrap().releases.is_empty());
    }

    #[test]
    fn outputs_inside_the_repository_do_not_make_it_dirty() {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            Cmd::new("git")
                .arg("-C")
                .arg(dir.path())
                .args(args)
                .run_string()
                .unwrap();
        };
        git(&["init", "-q"]);
        std::fs::write(dir.path().join("spec.toml"), "x").unwrap();
        git(&["add", "spec.toml"]);
        git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "spec"]);
        std::fs::create_dir(dir.path().join("out")).unwrap();
        std::fs::write(dir.path().join("out/img.qcow2"), "x").unwrap();
        let t = tree(dir.path(), &dir.path().join("out")).unwrap();
        assert!(t.changed.is_empty(), "{:?}", t.changed);
        assert_eq!(t.commit.len(), 40);
        // An output directory not made yet, named relatively.
        let t = tree(dir.path(), &dir.path().join("new/out")).unwrap();
        assert_eq!(t.changed, ["out/"]);
        std::fs::write(dir.path().join("spec.toml"), "y").unwrap();
        let t = tree(dir.path(), &dir.path().join("out")).unwrap();
        assert_eq!(t.changed, ["spec.toml"]);
    }
}
