//! The raw disk of a target's last image, kept in the cache so that the
//! next build of the same spec can patch its filesystem (see
//! [`kiln_disk::ext4_patch`]) instead of making it again: after a small
//! change, only the blocks of what changed are written, and the qcow2
//! writer reuses every other cluster of the previous image.
//!
//! One disk is kept per spec and target, under `disks/<spec>/<target>/` in
//! the cache: `disk.raw` and `disk.json`, which names the cached layers
//! its tree was made of, the manifest embedded in it, its filesystems and
//! the file's identity (size, inode, mtime). A build *takes* the disk (a
//! rename into its work directory, so two builds never patch the same
//! file and nothing cached is ever changed in place), patches it or throws
//! it away, and keeps its own raw disk in its place once the image is
//! stored. A disk whose file no longer matches its record, or whose layers
//! are gone from the cache, is thrown away and the filesystem made from
//! scratch; `--explain` says why. `--no-cache` builds neither take nor
//! keep one: byte-identity is their promise, and a patched filesystem
//! places blocks differently from a fresh one.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_disk::ext4_patch::Candidate;
use serde::{Deserialize, Serialize};

use crate::cache::Cache;

/// Bumped when the record changes; older disks are thrown away.
const FORMAT: u32 = 1;
const RAW: &str = "disk.raw";
const RECORD: &str = "disk.json";

/// What a kept disk holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DiskRecord {
    format: u32,
    /// Cache keys (hex) of the layers the disk's tree is made of, top
    /// first: the target's finalisation, customisation, the bootstrap.
    pub layers: Vec<String>,
    /// The build manifest embedded in the tree (not in any layer).
    pub manifest: String,
    /// Filesystems by partition start: type and UUID.
    pub filesystems: BTreeMap<u64, (String, String)>,
    /// The raw file as it was kept: size, inode and mtime (ns). A disk
    /// written to since then is not trusted.
    identity: (u64, u64, i128),
}

/// A previous disk taken for this build, with the tree it holds mounted
/// read-only: what a target's filesystem stage may patch.
#[derive(Debug)]
pub struct PreviousDisk {
    /// The raw disk, in the build's work directory: the stage may change
    /// it, and must make a fresh one if it does not use it.
    pub raw: PathBuf,
    /// The tree the disk's filesystems hold.
    pub tree: PathBuf,
    /// The paths where that tree and the new one may differ.
    pub candidates: Vec<Candidate>,
    /// Filesystems by partition start: type and UUID.
    pub filesystems: BTreeMap<u64, (String, String)>,
}

fn identity(path: &Path) -> Result<(u64, u64, i128)> {
    let m = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((
        m.len(),
        m.ino(),
        i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    ))
}

/// Takes the disk kept for `target` of `spec` into `into` (a file path in
/// the work directory). `Ok(Err(reason))` when there is none to use; a
/// damaged one is deleted.
pub(crate) fn take(cache: &Cache, spec: &str, target: &str, into: &Path) -> Result<Result<DiskRecord, String>> {
    let slot = cache.disk_slot(spec, target);
    let record: Option<DiskRecord> = std::fs::read(slot.join(RECORD))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let Some(record) = record.filter(|r| r.format == FORMAT) else {
        let _ = std::fs::remove_dir_all(&slot);
        return Ok(Err(format!(
            "no previous disk of {spec}/{target} is kept (the first build since the cache was made or cleared, \
             or another build holds it)"
        )));
    };
    // The record goes first: from here on the slot is empty, and the disk
    // is this build's alone.
    let _ = std::fs::remove_file(slot.join(RECORD));
    if std::fs::rename(slot.join(RAW), into).is_err() {
        return Ok(Err(format!("the previous disk of {spec}/{target} is missing")));
    }
    if identity(into)? != record.identity {
        std::fs::remove_file(into).with_context(|| format!("removing {}", into.display()))?;
        return Ok(Err(format!(
            "the previous disk of {spec}/{target} was changed or damaged since it was kept"
        )));
    }
    Ok(Ok(record))
}

/// Keeps `raw` (moved, not copied) as the disk of `target` of `spec`, made
/// from `layers` with `manifest` embedded.
pub(crate) fn keep(
    cache: &Cache,
    spec: &str,
    target: &str,
    raw: &Path,
    layers: Vec<String>,
    manifest: String,
    filesystems: BTreeMap<u64, (String, String)>,
) -> Result<()> {
    let slot = cache.disk_slot(spec, target);
    let _ = std::fs::remove_dir_all(&slot);
    std::fs::create_dir_all(&slot).with_context(|| format!("creating {}", slot.display()))?;
    let kept = slot.join(RAW);
    std::fs::rename(raw, &kept).with_context(|| format!("keeping {} as {}", raw.display(), kept.display()))?;
    let record = DiskRecord {
        format: FORMAT,
        layers,
        manifest,
        filesystems,
        identity: identity(&kept)?,
    };
    // The record last: a disk without one is never used.
    let tmp = slot.join(format!("{RECORD}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(&record)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, slot.join(RECORD)).with_context(|| format!("writing the record of {}", kept.display()))?;
    Ok(())
}

/// Removes the kept disks whose layers are no longer all in the cache
/// (after `kiln cache gc|rm`): they could never be patched again.
pub(crate) fn sweep(cache: &Cache) {
    let Ok(specs) = std::fs::read_dir(cache.root().join("disks")) else {
        return;
    };
    for slot in specs
        .flatten()
        .flat_map(|s| std::fs::read_dir(s.path()).into_iter().flatten().flatten())
    {
        let record: Option<DiskRecord> = std::fs::read(slot.path().join(RECORD))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let whole = record.is_some_and(|r| {
            r.layers
                .iter()
                .all(|k| crate::hash::Hash::from_hex(k).is_some_and(|k| cache.exists(&k)))
        });
        if !whole {
            let _ = std::fs::remove_dir_all(slot.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_disk_is_taken_once_and_a_changed_one_never() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let raw = dir.path().join("raw");
        std::fs::write(&raw, b"disk").unwrap();
        let fs = BTreeMap::from([(1 << 20, ("ext4".to_owned(), "u".to_owned()))]);
        keep(
            &cache,
            "spec",
            "ovh-byol",
            &raw,
            vec!["k".into()],
            "{}".into(),
            fs.clone(),
        )
        .unwrap();
        assert!(!raw.exists(), "kept by moving");

        let taken = dir.path().join("taken");
        let record = take(&cache, "spec", "ovh-byol", &taken).unwrap().unwrap();
        assert_eq!((record.layers, record.filesystems), (vec!["k".to_owned()], fs.clone()));
        assert_eq!(std::fs::read(&taken).unwrap(), b"disk");
        let again = take(&cache, "spec", "ovh-byol", &dir.path().join("again")).unwrap();
        assert!(matches!(&again, Err(r) if r.contains("no previous disk")), "{again:?}");

        // Written to after it was kept: thrown away, not used.
        std::fs::write(&raw, b"disk").unwrap();
        keep(&cache, "spec", "ovh-byol", &raw, vec![], "{}".into(), fs).unwrap();
        let kept = cache.disk_slot("spec", "ovh-byol").join(RAW);
        std::fs::write(&kept, b"dusk!").unwrap();
        let damaged = take(&cache, "spec", "ovh-byol", &taken).unwrap();
        assert!(
            matches!(&damaged, Err(r) if r.contains("changed or damaged")),
            "{damaged:?}"
        );
        assert!(!taken.exists() && !kept.exists());
    }
}
