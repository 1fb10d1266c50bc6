//! The stage cache: stage outputs stored under their stage hash, shared by
//! every build on the machine.
//!
//! Layout under the cache root (`--cache-dir`, `$KILN_CACHE_DIR`,
//! `$XDG_CACHE_HOME/kiln` or `~/.cache/kiln`):
//!
//! ```text
//! stages/<hash>/entry.json      what the entry is, and a digest of every payload item
//! stages/<hash>/verified        when its digests were last found right (see verify)
//! stages/<hash>/<payload>...    a tree layer, an image, side files
//! stages/.tmp-<hash>-<pid>-<n>/ an entry being written (never valid)
//! locks/<hash>.lock             flock(2) of one entry
//! records/<spec>/<stage>.json   the inputs a stage was last built from (for --explain)
//! disks/<spec>/<target>/        the raw disk of a target's last image, to patch
//!                               (see previous_disk)
//! packages/                     downloaded .deb files (see bootstrap)
//! ```
//!
//! An entry is written in a temporary directory and renamed into place only
//! once complete, `entry.json` last, so a crashed build leaves nothing that
//! looks valid. Reusing an entry recomputes its digests first: a truncated
//! or corrupted entry is thrown away and the stage rebuilt (once per boot:
//! until its files' metadata changes, a verified entry is trusted). Builds hold a
//! shared lock on each entry they read for as long as they use it and an
//! exclusive one while they build a missing entry, so two builds of the
//! same spec build each stage once, and `kiln cache gc|rm` never deletes an
//! entry in use. Non-goals: remote caches, cross-machine sharing.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::hash::Hash;
use crate::plan::StageInput;

/// Bumped when the entry format changes; older entries are ignored.
const FORMAT: u32 = 1;
const ENTRY_FILE: &str = "entry.json";
/// Beside `entry.json`: when the entry's digests were last checked (see
/// [`verified_stamp`]).
const VERIFIED: &str = "verified";

/// The machine-wide cache directory: `$KILN_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KILN_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("kiln");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    home.join(".cache/kiln")
}

/// One payload item of an entry and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub name: String,
    /// Bytes of file content (for a directory: all regular files in it).
    pub size: u64,
    /// BLAKE3 of the file, or of a canonical listing of the directory tree
    /// (paths, types, modes, owners, sizes, link targets, file contents).
    pub digest: String,
}

/// `entry.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub format: u32,
    pub key: String,
    pub stage: String,
    pub spec: String,
    /// Unix seconds.
    pub created: u64,
    pub items: Vec<Item>,
    /// Free-form state the stage needs to be resumed from this entry.
    #[serde(default)]
    pub state: serde_json::Value,
}

impl Entry {
    pub fn size(&self) -> u64 {
        self.items.iter().map(|i| i.size).sum()
    }
}

/// What the last build of a stage was made from, kept to explain rebuilds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The stage hash.
    pub key: String,
    pub inputs: Vec<(String, String)>,
    pub parents: Vec<(String, String)>,
    /// Content digests of the layers the stage was built on.
    #[serde(default)]
    pub lowers: Vec<String>,
    /// The cache entry the build stored or used, when it matters later
    /// (a target's previous image, whose clusters a rebuild reuses).
    #[serde(default)]
    pub entry: Option<String>,
}

/// A stage cache rooted at a directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// A held flock on one entry; released on drop.
#[derive(Debug)]
pub struct EntryLock {
    _file: File,
}

/// A valid entry found in the cache, locked shared for as long as it lives.
#[derive(Debug)]
pub struct Hit {
    pub dir: PathBuf,
    pub entry: Entry,
    _lock: EntryLock,
}

impl Hit {
    pub fn item(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The result of a lookup.
#[derive(Debug)]
pub enum Lookup {
    Hit(Hit),
    Miss,
    /// An entry existed but failed verification; it has been removed.
    Corrupt(String),
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Cache {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for sub in ["stages", "locks", "records", "packages"] {
            fs::create_dir_all(root.join(sub)).with_context(|| format!("creating {}", root.join(sub).display()))?;
        }
        Ok(Cache { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where downloaded packages are kept.
    pub fn packages_dir(&self) -> PathBuf {
        self.root.join("packages")
    }

    fn entry_dir(&self, key: &Hash) -> PathBuf {
        self.root.join("stages").join(key.to_hex())
    }

    fn lock_file(&self, key: &str) -> Result<File> {
        let path = self.root.join("locks").join(format!("{key}.lock"));
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))
    }

    /// Blocks until no other build holds `key` exclusively, then holds it
    /// exclusively (to build a missing entry).
    pub fn lock_exclusive(&self, key: &Hash) -> Result<EntryLock> {
        let file = self.lock_file(&key.to_hex())?;
        file.lock().context("locking a cache entry")?;
        Ok(EntryLock { _file: file })
    }

    /// Whether the cache at `root` has a complete entry for `key`, without
    /// creating anything there (for a caller that may not write it).
    pub fn holds(root: &Path, key: &Hash) -> bool {
        Cache { root: root.to_owned() }.exists(key)
    }

    /// Whether a complete entry for `key` is present (not verified).
    pub fn exists(&self, key: &Hash) -> bool {
        self.entry_dir(key).join(ENTRY_FILE).exists()
    }

    /// Turns the exclusive lock a build held while storing `key` into a
    /// shared one and returns the stored entry.
    pub fn hit_after_commit(&self, key: &Hash, lock: EntryLock) -> Result<Hit> {
        lock._file.lock_shared().context("locking a cache entry")?;
        let dir = self.entry_dir(key);
        let bytes = fs::read(dir.join(ENTRY_FILE)).with_context(|| format!("reading {}", dir.display()))?;
        let entry = serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", dir.display()))?;
        Ok(Hit {
            dir,
            entry,
            _lock: lock,
        })
    }

    /// The `entry.json` of `key`, unverified: to decide whether an entry is
    /// worth [`Cache::lookup`]'s verification, which reads all of it.
    pub fn peek(&self, key: &Hash) -> Option<Entry> {
        let bytes = fs::read(self.entry_dir(key).join(ENTRY_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Finds a valid entry for `key`, verifying every item's digest.
    pub fn lookup(&self, key: &Hash) -> Result<Lookup> {
        let dir = self.entry_dir(key);
        if !dir.join(ENTRY_FILE).exists() {
            return Ok(Lookup::Miss);
        }
        let file = self.lock_file(&key.to_hex())?;
        file.lock_shared().context("locking a cache entry")?;
        let lock = EntryLock { _file: file };
        match verify(&dir, key) {
            Ok(entry) => {
                touch(&dir.join(ENTRY_FILE));
                Ok(Lookup::Hit(Hit {
                    dir,
                    entry,
                    _lock: lock,
                }))
            }
            Err(problem) => {
                drop(lock);
                let _guard = self.lock_exclusive(key)?;
                // Another build may have replaced it meanwhile.
                if verify(&dir, key).is_ok() {
                    drop(_guard);
                    return self.lookup(key);
                }
                self.discard(&dir)?;
                Ok(Lookup::Corrupt(problem))
            }
        }
    }

    /// Starts a new entry for `key`: a private directory to fill.
    pub fn begin(&self, key: &Hash, stage: &str, spec: &str) -> Result<Pending> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .root
            .join("stages")
            .join(format!(".tmp-{}-{}-{n}", key.to_hex(), std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Pending {
            cache: self.clone(),
            dir: Some(dir),
            key: *key,
            stage: stage.to_owned(),
            spec: spec.to_owned(),
            items: Vec::new(),
        })
    }

    /// Remembers what `stage` of `spec` was last built from.
    pub fn write_record(&self, spec: &str, stage: &str, record: &Record) -> Result<()> {
        let path = self.record_path(spec, stage);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        fs::write(&tmp, serde_json::to_vec_pretty(record)?)?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    pub fn read_record(&self, spec: &str, stage: &str) -> Option<Record> {
        let bytes = fs::read(self.record_path(spec, stage)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The records of `stage` of every spec that has one, `spec`'s own
    /// first, then the others by name.
    pub fn records_of_stage(&self, spec: &str, stage: &str) -> Vec<(String, Record)> {
        let clean = |s: &str| s.replace(['/', '\\'], "_");
        let mut others: Vec<String> = fs::read_dir(self.root.join("records"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| *name != clean(spec))
            .collect();
        others.sort();
        std::iter::once(spec.to_owned())
            .chain(others)
            .filter_map(|name| self.read_record(&name, stage).map(|r| (name, r)))
            .collect()
    }

    /// Where the raw disk of `target`'s last image of `spec` is kept for
    /// the next build to patch (see [`crate::previous_disk`]).
    pub fn disk_slot(&self, spec: &str, target: &str) -> PathBuf {
        let clean = |s: &str| s.replace(['/', '\\'], "_");
        self.root.join("disks").join(clean(spec)).join(clean(target))
    }

    fn record_path(&self, spec: &str, stage: &str) -> PathBuf {
        let clean = |s: &str| s.replace(['/', '\\'], "_");
        self.root
            .join("records")
            .join(clean(spec))
            .join(format!("{}.json", clean(stage)))
    }

    /// Every complete entry, newest first, with whether a build uses it now.
    pub fn list(&self) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        let stages = self.root.join("stages");
        let Ok(dir) = fs::read_dir(&stages) else {
            return Ok(out);
        };
        for e in dir {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let Ok(bytes) = fs::read(e.path().join(ENTRY_FILE)) else {
                continue;
            };
            let Ok(entry) = serde_json::from_slice::<Entry>(&bytes) else {
                continue;
            };
            let in_use = match self.lock_file(&name) {
                Ok(f) => matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock)),
                Err(_) => false,
            };
            let last_used = fs::metadata(e.path().join(ENTRY_FILE))
                .and_then(|m| m.accessed())
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .unwrap_or(entry.created);
            out.push(Listed {
                dir: e.path(),
                entry,
                in_use,
                last_used,
            });
        }
        out.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.entry.key.cmp(&b.entry.key)));
        Ok(out)
    }

    /// Removes the entries whose key starts with `prefix` (all with `None`)
    /// and that no build is using. Returns (removed, skipped because in use).
    pub fn remove(&self, prefix: Option<&str>) -> Result<(Vec<Listed>, Vec<Listed>)> {
        let mut removed = Vec::new();
        let mut busy = Vec::new();
        for l in self.list()? {
            if prefix.is_some_and(|p| !l.entry.key.starts_with(p)) {
                continue;
            }
            if self.try_discard(&l)? {
                removed.push(l);
            } else {
                busy.push(l);
            }
        }
        self.sweep_temporaries()?;
        if prefix.is_none() {
            // Kept disks are only worth their layers.
            let disks = self.root.join("disks");
            if disks.exists() {
                remove_tree(&disks)?;
            }
        } else {
            crate::previous_disk::sweep(self);
        }
        Ok((removed, busy))
    }

    /// Removes least recently used entries until the cache holds at most
    /// `max_size` bytes of stage entries; also removes abandoned temporaries.
    pub fn gc(&self, max_size: u64) -> Result<(Vec<Listed>, u64)> {
        self.sweep_temporaries()?;
        let mut listed = self.list()?;
        let mut total: u64 = listed.iter().map(|l| l.entry.size()).sum();
        let mut removed = Vec::new();
        // Oldest last in `listed`.
        while total > max_size {
            let Some(l) = listed.pop() else { break };
            if self.try_discard(&l)? {
                total -= l.entry.size();
                removed.push(l);
            }
        }
        crate::previous_disk::sweep(self);
        Ok((removed, total))
    }

    fn try_discard(&self, l: &Listed) -> Result<bool> {
        let file = self.lock_file(&l.entry.key)?;
        match file.try_lock() {
            Ok(()) => {
                self.discard(&l.dir)?;
                Ok(true)
            }
            Err(fs::TryLockError::WouldBlock) => Ok(false),
            Err(fs::TryLockError::Error(e)) => Err(e).context("locking a cache entry"),
        }
    }

    /// Moves an entry out of the way atomically, then deletes it.
    fn discard(&self, dir: &Path) -> Result<()> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let trash = self.root.join("stages").join(format!(
            ".trash-{}-{}-{n}",
            dir.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        match fs::rename(dir, &trash) {
            Ok(()) => remove_tree(&trash),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
        }
    }

    /// Removes the temporary and trash directories of builds that died
    /// (every build does this when it starts).
    pub fn sweep_temporaries(&self) -> Result<()> {
        let stages = self.root.join("stages");
        for e in fs::read_dir(&stages)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(".tmp-").or_else(|| name.strip_prefix(".trash-")) else {
                continue;
            };
            // `<hash>-<pid>-<n>`: leave it to its owner while that process lives.
            let pid = rest.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists()) {
                continue;
            }
            remove_tree(&e.path())?;
        }
        Ok(())
    }
}

/// An entry in `kiln cache ls`.
#[derive(Debug)]
pub struct Listed {
    pub dir: PathBuf,
    pub entry: Entry,
    pub in_use: bool,
    pub last_used: u64,
}

/// An entry being written. Dropped without [`Pending::commit`], it is deleted.
#[derive(Debug)]
pub struct Pending {
    cache: Cache,
    dir: Option<PathBuf>,
    key: Hash,
    stage: String,
    spec: String,
    items: Vec<Item>,
}

impl Pending {
    /// The directory to fill.
    pub fn dir(&self) -> &Path {
        self.dir.as_deref().expect("pending entry not committed yet")
    }

    /// Moves `source` (a file or a directory tree) into the entry as `name`.
    /// A rename when possible; a copy across filesystems.
    pub fn adopt(&mut self, name: &str, source: &Path) -> Result<PathBuf> {
        let dest = self.dir().join(name);
        if let Err(e) = fs::rename(source, &dest) {
            if e.raw_os_error() != Some(libc::EXDEV) {
                return Err(e).with_context(|| format!("moving {} into the cache", source.display()));
            }
            kiln_exec::Cmd::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(source)
                .arg(&dest)
                .run()
                .with_context(|| format!("copying {} into the cache", source.display()))?;
            remove_tree(source)?;
        }
        let (size, digest) = digest_path(&dest)?;
        self.items.push(Item {
            name: name.to_owned(),
            size,
            digest,
        });
        Ok(dest)
    }

    /// Makes the entry visible. If another build stored the same key first,
    /// its entry is kept and ours discarded; either way the returned
    /// directory holds a complete entry for the key.
    pub fn commit(mut self, state: serde_json::Value) -> Result<PathBuf> {
        let dir = self.dir.take().expect("pending entry committed twice");
        let entry = Entry {
            format: FORMAT,
            key: self.key.to_hex(),
            stage: self.stage.clone(),
            spec: self.spec.clone(),
            created: now(),
            items: std::mem::take(&mut self.items),
            state,
        };
        let tmp_entry = dir.join(".entry.json.tmp");
        // No fsync: every reuse re-verifies the digests, so an entry torn by
        // a power loss is detected and rebuilt, and syncing here would wait
        // for the whole freshly written layer to reach the disk.
        fs::write(&tmp_entry, serde_json::to_vec_pretty(&entry)?)?;
        fs::rename(&tmp_entry, dir.join(ENTRY_FILE))?;
        let final_dir = self.cache.entry_dir(&self.key);
        match fs::rename(&dir, &final_dir) {
            Ok(()) => {
                // Its digests were just computed from what it holds.
                if let Some(stamp) = verified_stamp(&final_dir, &entry) {
                    write_stamp(&final_dir, &stamp);
                }
                Ok(final_dir)
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                // Somebody else's is already there and used by them: keep it.
                remove_tree(&dir)?;
                Ok(final_dir)
            }
            Err(e) => {
                let _ = remove_tree(&dir);
                Err(e).with_context(|| format!("storing cache entry {}", final_dir.display()))
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = remove_tree(&dir);
        }
    }
}

/// Marks an entry as used now, for `gc`'s least-recently-used order: its
/// access time, set by hand because a filesystem mounted `relatime` (the
/// default) updates it at most once a day, so that an entry every build
/// reads would look as old as the day it was first read.
fn touch(entry_file: &Path) {
    let now = SystemTime::now();
    let _ = File::options()
        .write(true)
        .open(entry_file)
        .and_then(|f| f.set_times(fs::FileTimes::new().set_accessed(now)));
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Deletes a tree that may hold read-only directories.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        Ok(m) if !m.is_dir() => return fs::remove_file(path).with_context(|| format!("removing {}", path.display())),
        Ok(_) => {}
    }
    if !kiln_exec::mounts_under(path).is_empty() {
        bail!("not removing {}: something is mounted below it", path.display());
    }
    fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))
}

/// Checks an entry directory against its `entry.json`.
fn verify(dir: &Path, key: &Hash) -> std::result::Result<Entry, String> {
    let bytes = fs::read(dir.join(ENTRY_FILE)).map_err(|e| format!("entry.json unreadable: {e}"))?;
    let entry: Entry = serde_json::from_slice(&bytes).map_err(|e| format!("entry.json malformed: {e}"))?;
    if entry.format != FORMAT || entry.key != key.to_hex() {
        return Err("entry.json belongs to another key or format".into());
    }
    let stamp = verified_stamp(dir, &entry);
    if stamp.is_some() && fs::read_to_string(dir.join(VERIFIED)).ok() == stamp {
        return Ok(entry);
    }
    verify_digests(dir, &entry)?;
    if let Some(stamp) = stamp {
        write_stamp(dir, &stamp);
    }
    Ok(entry)
}

/// What `verified` holds once an entry's digests were checked in this
/// boot: the boot's id and a fingerprint of every item's metadata (inode,
/// type and mode, owner, size, modification and change times, of each file
/// of a tree). A change to any file moves its change time, which nothing
/// but the clock can set, so while both still match, the contents are
/// those that were verified, and reading them all again is skipped. A
/// reboot (a power loss among them, which can tear an entry that was never
/// synced) makes every entry verified in full once more.
fn verified_stamp(dir: &Path, entry: &Entry) -> Option<String> {
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let mut h = blake3::Hasher::new();
    for item in &entry.items {
        fingerprint(&dir.join(&item.name), Path::new(&item.name), &mut h).ok()?;
    }
    Some(format!("{} {}\n", boot.trim(), h.finalize().to_hex()))
}

fn fingerprint(path: &Path, rel: &Path, h: &mut blake3::Hasher) -> io::Result<()> {
    let m = fs::symlink_metadata(path)?;
    h.update(
        format!(
            "{}\0{}\0{:o}\0{}\0{}\0{}\0{}.{}\0{}.{}\n",
            rel.display(),
            m.ino(),
            m.mode(),
            m.uid(),
            m.gid(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        )
        .as_bytes(),
    );
    if m.is_dir() {
        let mut names: Vec<_> = fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names {
            fingerprint(&path.join(&name), &rel.join(&name), h)?;
        }
    }
    Ok(())
}

fn write_stamp(dir: &Path, stamp: &str) {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{VERIFIED}.{}-{n}", std::process::id()));
    if fs::write(&tmp, stamp)
        .and_then(|()| fs::rename(&tmp, dir.join(VERIFIED)))
        .is_err()
    {
        let _ = fs::remove_file(&tmp);
    }
}

fn verify_digests(dir: &Path, entry: &Entry) -> std::result::Result<(), String> {
    for item in &entry.items {
        let (size, digest) =
            digest_path(&dir.join(&item.name)).map_err(|e| format!("{}: unreadable: {e:#}", item.name))?;
        if size != item.size {
            return Err(format!(
                "{}: {size} bytes instead of {} (truncated?)",
                item.name, item.size
            ));
        }
        if digest != item.digest {
            return Err(format!("{}: content digest mismatch (corrupted)", item.name));
        }
    }
    Ok(())
}

/// Size and BLAKE3 digest of a file, or of a directory tree through a
/// canonical listing (sorted names; type, mode, owner, size, device number
/// and link target of each entry; file contents).
pub fn digest_path(path: &Path) -> Result<(u64, String)> {
    let meta = fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    // One buffer for every file: a fresh 1 MiB allocation per file of a
    // 25,000-file tree costs seconds in page faults alone.
    let mut buf = vec![0u8; 1 << 20];
    let mut h = blake3::Hasher::new();
    if !meta.is_dir() {
        let size = hash_file(path, &mut h, &mut buf)?;
        return Ok((size, h.finalize().to_hex().to_string()));
    }
    let mut size = 0;
    digest_dir(path, Path::new(""), &mut h, &mut size, &mut buf)?;
    Ok((size, h.finalize().to_hex().to_string()))
}

fn hash_file(path: &Path, h: &mut blake3::Hasher, buf: &mut [u8]) -> Result<u64> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut total = 0u64;
    loop {
        let n = f.read(buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok(total)
}

fn digest_dir(root: &Path, rel: &Path, h: &mut blake3::Hasher, size: &mut u64, buf: &mut [u8]) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let m = fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        let ft = m.file_type();
        let line = format!(
            "{}\0{:o}\0{}\0{}\0{}\0{}\n",
            rel.display(),
            m.mode(),
            m.uid(),
            m.gid(),
            if ft.is_file() { m.len() } else { 0 },
            if ft.is_char_device() || ft.is_block_device() {
                m.rdev()
            } else {
                0
            }
        );
        h.update(line.as_bytes());
        if ft.is_symlink() {
            let target = fs::read_link(&path)?;
            h.update(target.as_os_str().as_encoded_bytes());
            h.update(b"\n");
        } else if ft.is_file() {
            *size += hash_file(&path, h, buf)?;
        } else if ft.is_dir() {
            digest_dir(root, &rel, h, size, buf)?;
        }
    }
    Ok(())
}

/// Explains, for `--explain`, why a stage with hash `key`, `inputs`, parent
/// hashes `parents` and lower layers `lowers` is rebuilt, given the record
/// of its last build.
pub fn explain_rebuild(
    record: Option<&Record>,
    key: &Hash,
    inputs: &[StageInput],
    parents: &[(String, Hash)],
    lowers: &[String],
) -> String {
    let Some(rec) = record else {
        return "no earlier build of this stage in the cache".to_owned();
    };
    if rec.key == key.to_hex() {
        return if rec.lowers != lowers {
            "the stages below it produced different content".to_owned()
        } else {
            "its cache entry was removed (kiln cache gc/rm) or never stored".to_owned()
        };
    }
    let before: BTreeMap<&str, &str> = rec.inputs.iter().map(|(n, h)| (n.as_str(), h.as_str())).collect();
    let mut changed: Vec<String> = Vec::new();
    for i in inputs {
        match before.get(i.name.as_str()) {
            None => changed.push(format!("{} (new)", i.name)),
            Some(h) if *h != i.hash.to_hex() => changed.push(i.name.clone()),
            Some(_) => {}
        }
    }
    let now: BTreeMap<&str, ()> = inputs.iter().map(|i| (i.name.as_str(), ())).collect();
    for (name, _) in &rec.inputs {
        if !now.contains_key(name.as_str()) {
            changed.push(format!("{name} (removed)"));
        }
    }
    let parents_before: BTreeMap<&str, &str> = rec.parents.iter().map(|(n, h)| (n.as_str(), h.as_str())).collect();
    for (id, h) in parents {
        if parents_before.get(id.as_str()).is_some_and(|b| *b != h.to_hex()) {
            changed.push(format!("stage {id} changed"));
        }
    }
    if changed.is_empty() {
        "kiln's pipeline version changed".to_owned()
    } else {
        format!("changed: {}", changed.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hasher;

    fn key(s: &str) -> Hash {
        Hasher::new("test").str("k", s).finish()
    }

    fn store_dir(cache: &Cache, k: &Hash, files: &[(&str, &str)]) -> PathBuf {
        let src = cache.root().join(format!("src-{}", k.short()));
        for (name, text) in files {
            let p = src.join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        let mut p = cache.begin(k, "customise", "t").unwrap();
        p.adopt("layer", &src).unwrap();
        p.commit(serde_json::json!({"n": 1})).unwrap()
    }

    #[test]
    fn stored_entries_are_found_and_verified() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let k = key("a");
        assert!(matches!(cache.lookup(&k).unwrap(), Lookup::Miss));
        let dir = store_dir(&cache, &k, &[("etc/motd", "hi\n"), ("usr/bin/x", "bin")]);
        match cache.lookup(&k).unwrap() {
            Lookup::Hit(hit) => {
                assert_eq!(hit.dir, dir);
                assert_eq!(fs::read_to_string(hit.item("layer").join("etc/motd")).unwrap(), "hi\n");
                assert_eq!(hit.entry.state["n"], 1);
                assert_eq!(hit.entry.size(), 6);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cache.list().unwrap().len(), 1);
    }

    #[test]
    fn truncated_or_altered_entries_are_detected_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        for (k, damage) in [
            (key("truncate"), "truncate"),
            (key("flip"), "flip"),
            (key("delete"), "delete"),
            (key("chmod"), "chmod"),
        ] {
            let dir = store_dir(&cache, &k, &[("etc/motd", "hello\n")]);
            let f = dir.join("layer/etc/motd");
            match damage {
                "truncate" => fs::write(&f, "hel").unwrap(),
                "flip" => fs::write(&f, "jello\n").unwrap(),
                "delete" => fs::remove_file(&f).unwrap(),
                _ => {
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap()
                }
            }
            match cache.lookup(&k).unwrap() {
                Lookup::Corrupt(why) => assert!(!why.is_empty(), "{damage}"),
                other => panic!("{damage}: {other:?}"),
            }
            assert!(!dir.exists(), "{damage}: corrupt entry kept");
            assert!(matches!(cache.lookup(&k).unwrap(), Lookup::Miss));
        }
    }

    #[test]
    fn a_verified_stamp_is_trusted_only_in_its_boot_and_for_the_same_metadata() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let k = key("stamp");
        let dir = store_dir(&cache, &k, &[("etc/motd", "hello\n")]);
        let entry = cache.peek(&k).unwrap();
        let stamp = fs::read_to_string(dir.join(VERIFIED)).unwrap();
        assert_eq!(
            Some(&stamp),
            verified_stamp(&dir, &entry).as_ref(),
            "commit stamps the entry"
        );

        // Damaged behind the stamp's back, then stamped as if verified in
        // this boot: trusted, which is what lets a lookup skip the digests.
        fs::write(dir.join("layer/etc/motd"), "jello\n").unwrap();
        fs::write(dir.join(VERIFIED), verified_stamp(&dir, &entry).unwrap()).unwrap();
        assert!(matches!(cache.lookup(&k).unwrap(), Lookup::Hit(_)));
        // The same stamp from another boot: the digests are checked.
        let now = verified_stamp(&dir, &entry).unwrap();
        fs::write(
            dir.join(VERIFIED),
            format!("another-boot {}", now.split_once(' ').unwrap().1),
        )
        .unwrap();
        assert!(matches!(cache.lookup(&k).unwrap(), Lookup::Corrupt(_)));
        assert!(!dir.exists());
    }

    #[test]
    fn an_uncommitted_entry_is_never_visible() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let k = key("crash");
        let src = tmp.path().join("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("f"), "x").unwrap();
        let mut p = cache.begin(&k, "bootstrap", "t").unwrap();
        p.adopt("layer", &src).unwrap();
        let tmpdir = p.dir().to_owned();
        // A crash: the process dies without commit or drop.
        std::mem::forget(p);
        assert!(tmpdir.exists());
        assert!(matches!(cache.lookup(&k).unwrap(), Lookup::Miss));
        assert!(cache.list().unwrap().is_empty());
        // The owner (this process) is alive, so gc leaves it...
        cache.gc(u64::MAX).unwrap();
        assert!(tmpdir.exists());
        // ...and removes it once the name says its owner is gone.
        let dead = tmpdir.with_file_name(format!(".tmp-{}-4000000-0", k.to_hex()));
        fs::rename(&tmpdir, &dead).unwrap();
        cache.gc(u64::MAX).unwrap();
        assert!(!dead.exists());
    }

    #[test]
    fn a_second_store_of_the_same_key_keeps_the_first() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let k = key("twice");
        let a = store_dir(&cache, &k, &[("f", "one")]);
        let src = tmp.path().join("again");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("f"), "one").unwrap();
        let mut p = cache.begin(&k, "customise", "t").unwrap();
        p.adopt("layer", &src).unwrap();
        let b = p.commit(serde_json::Value::Null).unwrap();
        assert_eq!(a, b);
        assert!(matches!(cache.lookup(&k).unwrap(), Lookup::Hit(_)));
        let leftovers: Vec<_> = fs::read_dir(tmp.path().join("stages"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn gc_and_rm_skip_entries_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let (a, b) = (key("a"), key("b"));
        store_dir(&cache, &a, &[("f", "aaaa")]);
        store_dir(&cache, &b, &[("f", "bb")]);
        let Lookup::Hit(held) = cache.lookup(&a).unwrap() else {
            panic!("a missing")
        };
        // A shared lock from another open file description blocks removal.
        let (removed, busy) = cache.remove(None).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(busy.len(), 1);
        assert_eq!(busy[0].entry.key, a.to_hex());
        drop(held);
        let (removed, total) = cache.gc(0).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(total, 0);
        assert!(cache.list().unwrap().is_empty());
    }

    #[test]
    fn concurrent_builders_build_a_stage_once() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let k = key("shared");
        let built = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for t in 0..4 {
                let cache = cache.clone();
                let built = &built;
                s.spawn(move || {
                    // The protocol a build follows for a missing stage.
                    if let Lookup::Hit(_) = cache.lookup(&k).unwrap() {
                        return;
                    }
                    let lock = cache.lock_exclusive(&k).unwrap();
                    if cache.exists(&k) {
                        drop(lock);
                        assert!(matches!(cache.lookup(&k).unwrap(), Lookup::Hit(_)));
                        return;
                    }
                    built.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    let src = cache.root().join(format!("src{t}"));
                    fs::create_dir_all(&src).unwrap();
                    fs::write(src.join("f"), "same").unwrap();
                    let mut p = cache.begin(&k, "bootstrap", "t").unwrap();
                    p.adopt("layer", &src).unwrap();
                    p.commit(serde_json::Value::Null).unwrap();
                    let hit = cache.hit_after_commit(&k, lock).unwrap();
                    assert_eq!(fs::read_to_string(hit.item("layer/f")).unwrap(), "same");
                });
            }
        });
        assert_eq!(built.load(Ordering::SeqCst), 1);
        assert!(matches!(cache.lookup(&k).unwrap(), Lookup::Hit(_)));
    }

    #[test]
    fn digests_cover_modes_links_and_content() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("sub/a"), "a").unwrap();
        std::os::unix::fs::symlink("sub/a", d.join("l")).unwrap();
        let base = digest_path(&d).unwrap();
        assert_eq!(base, digest_path(&d).unwrap());
        fs::remove_file(d.join("l")).unwrap();
        std::os::unix::fs::symlink("sub/b", d.join("l")).unwrap();
        assert_ne!(base.1, digest_path(&d).unwrap().1, "link target");
        fs::rename(d.join("sub/a"), d.join("sub/c")).unwrap();
        assert_ne!(base.1, digest_path(&d).unwrap().1, "name");
    }

    #[test]
    fn explanations_name_the_changed_input() {
        let k = key("new");
        let inputs = vec![
            StageInput {
                name: "file files/motd".into(),
                hash: key("motd2"),
            },
            StageInput {
                name: "[[users]]".into(),
                hash: key("users"),
            },
        ];
        let rec = Record {
            key: key("old").to_hex(),
            inputs: vec![
                ("file files/motd".into(), key("motd1").to_hex()),
                ("[[users]]".into(), key("users").to_hex()),
            ],
            parents: vec![("bootstrap".into(), key("p").to_hex())],
            lowers: vec![],
            entry: None,
        };
        let parents = vec![("bootstrap".to_owned(), key("p"))];
        assert_eq!(
            explain_rebuild(Some(&rec), &k, &inputs, &parents, &[]),
            "changed: file files/motd"
        );
        let moved = vec![("bootstrap".to_owned(), key("p2"))];
        assert_eq!(
            explain_rebuild(Some(&rec), &k, &inputs[1..], &moved, &[]),
            "changed: file files/motd (removed), stage bootstrap changed"
        );
        assert!(explain_rebuild(None, &k, &inputs, &parents, &[]).contains("no earlier build"));
    }
}
