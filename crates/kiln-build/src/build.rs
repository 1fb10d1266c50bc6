//! The executor: runs a [`Plan`]'s stages, reusing what the stage cache
//! holds, reporting progress, and writing the outputs atomically.
//!
//! The tree is a stack of layers (see [`crate::layers`]): bootstrap, then
//! customisation, then one finalisation layer per target. Each layer is
//! stored in the cache under a key made of its stage hash and the content
//! digests of the layers below it, so a stage is reused exactly when its
//! inputs and everything under it are unchanged, and a rebuilt stage that
//! happens to produce the same bytes does not invalidate what follows. A
//! target's image is cached too, keyed by its finalised tree, its stages'
//! inputs and the manifest embedded in it. Targets run in parallel.
//!
//! Every side effect is owned by a guard: the work directory is deleted on
//! any exit, overlays live in the build's private mount namespace, outputs
//! are written as `*.part` and renamed only once complete, and cache entries
//! become visible only when whole. A failed or interrupted build leaves the
//! output directory as it was, plus the build log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kiln_disk::partition::{self, PartKind, PartitionSpec, TableKind};
use kiln_exec::{Cmd, PartialFile, WorkDir};
use kiln_spec::{Filesystem, PartitionTable};
use sha2::{Digest, Sha512};

use crate::cache::{self, Cache, Hit, Lookup, Record};
use crate::chroot::{run_in_tree, write_mode, ChrootScript};
use crate::customise;
use crate::hash::{Hash, Hasher};
use crate::layers::{self, Overlay};
use crate::manifest::{self, Artifact, Manifest, PartitionInfo};
use crate::plan::{run_name, OvhByolPlan, Plan, Stage};
use crate::targets::disk;
use crate::targets::ovh_byol::{self, EMBEDDED_MANIFEST};

/// What the executor tells the user interface.
#[derive(Debug, Clone)]
pub enum Event {
    StageStarted {
        id: String,
        title: String,
    },
    /// One line of a stage's tool output.
    Output {
        id: String,
        line: String,
    },
    StageFinished {
        id: String,
        elapsed: Duration,
        summary: String,
    },
    StageFailed {
        id: String,
        elapsed: Duration,
    },
    /// The stage's output came from the cache.
    StageReused {
        id: String,
        summary: String,
    },
    /// The stage did not need to run (its target's image was reused).
    StageSkipped {
        id: String,
        reason: String,
    },
    /// Why a stage is about to run instead of being reused (`--explain`).
    StageRebuilt {
        id: String,
        reason: String,
    },
}

/// Receives [`Event`]s; the binary renders them as progress bars or JSON.
pub trait Reporter: Send + Sync {
    fn event(&self, event: Event);
}

/// A reporter that drops everything (tests).
pub struct Quiet;

impl Reporter for Quiet {
    fn event(&self, _: Event) {}
}

/// Options of `kiln build`.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub out_dir: PathBuf,
    /// Parent of the scratch directory; default: the output directory, so
    /// that the final rename never crosses filesystems.
    pub work_dir: Option<PathBuf>,
    /// Keep the scratch directory (layers, raw disks) for debugging.
    pub keep_work: bool,
    /// The stage cache's root directory.
    pub cache_dir: PathBuf,
    /// Rebuild every stage; results are still stored for later builds.
    pub no_cache: bool,
    /// Threads for image compression (0: one per CPU).
    pub threads: usize,
}

/// What a build produced.
#[derive(Debug)]
pub struct BuildOutput {
    pub artifacts: Vec<PathBuf>,
    pub manifest: PathBuf,
    pub log: PathBuf,
    /// Stage ids taken from the cache.
    pub reused: Vec<String>,
}

/// Tools a build of `plan` runs, checked before any work starts.
pub fn required_tools(plan: &Plan) -> Vec<&'static str> {
    let mut tools = vec!["mmdebstrap", "unshare", "chroot", "sh", "dpkg-query", "cp"];
    if let Some(d) = &plan.disk {
        tools.extend(crate::targets::disk::required_tools(d));
    }
    if let Some(o) = &plan.ovh_byol {
        tools.extend(match o.filesystem {
            Filesystem::Ext4 => ["mke2fs", "debugfs"].as_slice(),
            Filesystem::Xfs => ["mkfs.xfs", "mount"].as_slice(),
        });
    }
    tools
}

/// Runs the whole build.
pub fn build(plan: &Plan, opts: &BuildOptions, reporter: Arc<dyn Reporter>) -> Result<BuildOutput> {
    preflight(plan)?;
    layers::enter_private_mount_namespace()?;
    let cache = Cache::open(&opts.cache_dir)
        .with_context(|| format!("opening the stage cache {}", opts.cache_dir.display()))?;
    std::fs::create_dir_all(&opts.out_dir).with_context(|| format!("creating {}", opts.out_dir.display()))?;
    let out_dir = std::fs::canonicalize(&opts.out_dir)?;
    let mut work = WorkDir::new_in(opts.work_dir.as_deref().unwrap_or(&out_dir), ".kiln-work-")
        .context("creating the work directory")?;
    if opts.keep_work {
        work.keep();
    }
    let log = out_dir.join(format!("{}-{}.build.log", plan.name, plan.version));
    std::fs::write(&log, "").with_context(|| format!("creating {}", log.display()))?;
    let run = Run {
        plan,
        opts,
        cache,
        reporter,
        log: log.clone(),
        work: work.path().to_owned(),
        out_dir,
        git: manifest::git_info(&plan.spec_dir),
        reused: std::sync::Mutex::new(Vec::new()),
    };
    let result = run.all().map_err(|e| anyhow!("{e:#}\n(build log: {})", log.display()));
    let artifacts = result?;
    Ok(BuildOutput {
        artifacts,
        manifest: run.out_dir.join("manifest.json"),
        log,
        reused: run.reused.into_inner().unwrap_or_default(),
    })
}

fn preflight(plan: &Plan) -> Result<()> {
    let missing: Vec<String> = required_tools(plan)
        .into_iter()
        .filter(|t| kiln_exec::which(t).is_none())
        .map(|t| {
            let pkg = kiln_exec::find_tool(t).map(|x| x.package).unwrap_or("?");
            format!("{t} (package {pkg})")
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing tools: {}; install them (see `kiln doctor`) and try again",
            missing.join(", ")
        );
    }
    if !is_root() {
        bail!("kiln build needs root: mmdebstrap's root mode, chroot and mounts need it; run it with sudo");
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// A tree layer in use: cache entries (held with shared locks so nobody
/// deletes them meanwhile) or a directory in the work directory. Usually
/// one directory; a bootstrap grown by added packages is its increment on
/// top of the bootstrap it grew from.
struct Layer {
    /// Top first.
    dirs: Vec<PathBuf>,
    key: Hash,
    digest: String,
    state: serde_json::Value,
    /// Built by this build (not taken from the cache).
    fresh: bool,
    _hold: Vec<Hit>,
}

impl Layer {
    fn local(dir: &Path, key: Hash, digest: String, state: serde_json::Value) -> Layer {
        Layer {
            dirs: vec![dir.to_owned()],
            key,
            digest,
            state,
            fresh: true,
            _hold: Vec::new(),
        }
    }

    /// The layer of a cache entry, with the entries it stands on (`base`
    /// in its state); `None` if one of those is gone.
    fn from_hit(cache: &Cache, hit: Hit, key: Hash) -> Result<Option<Layer>> {
        let mut layer = Layer {
            dirs: vec![hit.item("layer")],
            key,
            digest: hit.entry.items.first().map(|i| i.digest.clone()).unwrap_or_default(),
            state: hit.entry.state.clone(),
            fresh: false,
            _hold: Vec::new(),
        };
        if let Some(base_key) = hit.entry.state["base"].as_str().and_then(Hash::from_hex) {
            let Lookup::Hit(base_hit) = cache.lookup(&base_key)? else {
                return Ok(None);
            };
            let Some(base) = Layer::from_hit(cache, base_hit, base_key)? else {
                return Ok(None);
            };
            layer.digest = Hasher::new("stacked layer")
                .str("top", &layer.digest)
                .str("base", &base.digest)
                .finish()
                .to_hex();
            layer.dirs.extend(base.dirs);
            layer._hold.extend(base._hold);
        }
        layer._hold.push(hit);
        Ok(Some(layer))
    }
}

/// A target's finished image and what the manifest says about it.
struct TargetResult {
    target: String,
    image: PathBuf,
    state: ImageState,
    _hold: Option<Hit>,
}

/// What a cached image entry remembers besides the image.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ImageState {
    file_name: String,
    format: String,
    size: u64,
    sha512: String,
    embedded: serde_json::Value,
    partitions: Vec<PartitionInfo>,
}

struct Run<'a> {
    plan: &'a Plan,
    opts: &'a BuildOptions,
    cache: Cache,
    reporter: Arc<dyn Reporter>,
    log: PathBuf,
    work: PathBuf,
    out_dir: PathBuf,
    git: Option<manifest::GitInfo>,
    reused: std::sync::Mutex<Vec<String>>,
}

/// Runs `f` as stage `id`, reporting start, end and failure.
fn timed<T>(reporter: &Arc<dyn Reporter>, stage: &Stage, f: impl FnOnce() -> Result<(T, String)>) -> Result<T> {
    kiln_exec::check_interrupted()?;
    let started = Instant::now();
    reporter.event(Event::StageStarted {
        id: stage.id.clone(),
        title: stage.kind.title().to_owned(),
    });
    match f() {
        Ok((value, summary)) => {
            reporter.event(Event::StageFinished {
                id: stage.id.clone(),
                elapsed: started.elapsed(),
                summary,
            });
            Ok(value)
        }
        Err(e) => {
            reporter.event(Event::StageFailed {
                id: stage.id.clone(),
                elapsed: started.elapsed(),
            });
            Err(e.context(format!("stage {} failed", stage.id)))
        }
    }
}

impl Run<'_> {
    fn stage(&self, id: &str) -> Result<&Stage> {
        self.plan
            .stage(id)
            .with_context(|| format!("internal: the plan has no stage {id}"))
    }

    fn sink(&self, id: &str) -> impl FnMut(&str) + Send + 'static {
        let reporter = Arc::clone(&self.reporter);
        let id = id.to_owned();
        move |line: &str| {
            reporter.event(Event::Output {
                id: id.clone(),
                line: line.to_owned(),
            })
        }
    }

    fn chroot(&self, stage: &Stage, tree: &Path, name: &str, body: &str) -> Result<()> {
        let script = ChrootScript {
            name,
            body,
            source_date_epoch: self.plan.source_date_epoch,
        };
        run_in_tree(tree, &script, &self.log, self.sink(&stage.id))
    }

    fn all(&self) -> Result<Vec<PathBuf>> {
        let boot = self.tree_stage(self.stage("bootstrap")?, &[], |stage, tree| self.bootstrap(stage, tree))?;
        let cust = self.tree_stage(self.stage("customise")?, &[&boot], |stage, tree| {
            self.customise(stage, tree)
        })?;
        let targets = self.plan.target_names();
        let results: Vec<Result<TargetResult>> = std::thread::scope(|s| {
            let handles: Vec<_> = targets
                .iter()
                .map(|t| {
                    let (cust, boot) = (&cust, &boot);
                    s.spawn(move || self.target(t, cust, boot))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("internal: a target's thread panicked")))
                })
                .collect()
        });
        let mut done = Vec::new();
        for r in results {
            done.push(r?);
        }
        timed(&self.reporter, self.stage("checksums")?, || {
            let artifacts = self.checksums(done)?;
            let n = artifacts.len();
            Ok((artifacts, format!("{n} artifacts")))
        })
    }

    /// The cache key of a stage's output: its stage hash and the content of
    /// everything below it.
    fn entry_key(stage: &Stage, lowers: &[&Layer], extra: &str) -> Hash {
        let mut h = Hasher::new("cache entry");
        h.hash("stage", &stage.hash);
        for l in lowers {
            h.hash("lower", &l.key).str("lower digest", &l.digest);
        }
        h.str("extra", extra);
        h.finish()
    }

    fn record(&self, stage: &Stage, lowers: &[&Layer]) -> Record {
        Record {
            key: stage.hash.to_hex(),
            inputs: stage.inputs.iter().map(|i| (i.name.clone(), i.hash.to_hex())).collect(),
            parents: stage
                .parents
                .iter()
                .filter_map(|p| self.plan.stage(p).map(|s| (p.clone(), s.hash.to_hex())))
                .collect(),
            lowers: lowers.iter().map(|l| l.digest.clone()).collect(),
            entry: None,
        }
    }

    /// Why `stage` (entry `key`) must run: for `--explain`.
    fn why_rebuilt(&self, stage: &Stage, lowers: &[&Layer], lookup: Option<&Lookup>) -> String {
        if self.opts.no_cache {
            return "--no-cache".to_owned();
        }
        if let Some(Lookup::Corrupt(why)) = lookup {
            return format!("its cache entry was damaged ({why}); rebuilding it");
        }
        let previous = self.cache.read_record(&self.plan.name, &stage.id);
        let parents: Vec<(String, Hash)> = stage
            .parents
            .iter()
            .filter_map(|p| self.plan.stage(p).map(|s| (p.clone(), s.hash)))
            .collect();
        let lower_digests: Vec<String> = lowers.iter().map(|l| l.digest.clone()).collect();
        cache::explain_rebuild(previous.as_ref(), &stage.hash, &stage.inputs, &parents, &lower_digests)
    }

    fn note_reused(&self, stage: &Stage, summary: String) {
        self.reused.lock().expect("reuse list").push(stage.id.clone());
        self.reporter.event(Event::StageReused {
            id: stage.id.clone(),
            summary,
        });
    }

    /// Looks `key` up unless `--no-cache`; a hit is reported as reused.
    fn try_reuse(&self, key: &Hash) -> Result<(Option<Hit>, Option<Lookup>)> {
        if self.opts.no_cache {
            return Ok((None, None));
        }
        match self.cache.lookup(key)? {
            Lookup::Hit(hit) => Ok((Some(hit), None)),
            other => Ok((None, Some(other))),
        }
    }

    /// A stage whose output is a tree layer: reused from the cache, or run
    /// by `run` on a writable view (the layer itself for the first one, an
    /// overlay over `lowers` otherwise) and stored.
    fn tree_stage(
        &self,
        stage: &Stage,
        lowers: &[&Layer],
        run: impl FnOnce(&Stage, &Path) -> Result<(String, serde_json::Value)>,
    ) -> Result<Layer> {
        let key = Self::entry_key(stage, lowers, "");
        let (hit, miss) = self.try_reuse(&key)?;
        if let Some(layer) = hit
            .map(|hit| Layer::from_hit(&self.cache, hit, key))
            .transpose()?
            .flatten()
        {
            self.note_reused(stage, format!("reused from the cache ({})", key.short()));
            let _ = self
                .cache
                .write_record(&self.plan.name, &stage.id, &self.record_entry(stage, lowers, &key));
            return Ok(layer);
        }
        if stage.kind == crate::plan::StageKind::Bootstrap && !self.opts.no_cache {
            if let Some(layer) = self.grow_bootstrap(stage, key)? {
                return Ok(layer);
            }
        }
        let reason = self.why_rebuilt(stage, lowers, miss.as_ref());
        self.reporter.event(Event::StageRebuilt {
            id: stage.id.clone(),
            reason,
        });
        let lock = self.builder_lock(&key)?;
        if lock.is_some() && !self.opts.no_cache && self.cache.exists(&key) {
            drop(lock);
            if let Lookup::Hit(hit) = self.cache.lookup(&key)? {
                if let Some(layer) = Layer::from_hit(&self.cache, hit, key)? {
                    self.note_reused(stage, "reused: built meanwhile by another build".to_owned());
                    return Ok(layer);
                }
            }
            return self.tree_stage(stage, lowers, run);
        }
        let base = self.work.join("layers").join(stage.id.replace('/', "_"));
        std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        let layer_dir = base.join("layer");
        let state = timed(&self.reporter, stage, || {
            let (summary, state) = if lowers.is_empty() {
                run(stage, &layer_dir)?
            } else {
                let lower_dirs = stack(lowers);
                let view = Overlay::mount(
                    &lower_dirs,
                    Some((&layer_dir, &base.join("overlay-work"))),
                    &base.join("tree"),
                )?;
                let out = run(stage, view.path())?;
                view.unmount()?;
                cache::remove_tree(&base.join("overlay-work"))?;
                out
            };
            if let Some(epoch) = self.plan.source_date_epoch {
                layers::clamp_times(&layer_dir, epoch)?;
            }
            Ok((state, summary))
        })?;
        self.store_layer(stage, lowers, key, lock, &layer_dir, state)
    }

    /// One builder per key: a concurrent build of the same stage waits here
    /// and then reuses what the first one stored. `None` for a `--no-cache`
    /// rebuild of an entry that exists: it is neither waited for nor stored.
    fn builder_lock(&self, key: &Hash) -> Result<Option<cache::EntryLock>> {
        if self.opts.no_cache && self.cache.exists(key) {
            return Ok(None);
        }
        Ok(Some(self.cache.lock_exclusive(key)?))
    }

    fn store_layer(
        &self,
        stage: &Stage,
        lowers: &[&Layer],
        key: Hash,
        lock: Option<cache::EntryLock>,
        layer_dir: &Path,
        state: serde_json::Value,
    ) -> Result<Layer> {
        let _ = self
            .cache
            .write_record(&self.plan.name, &stage.id, &self.record_entry(stage, lowers, &key));
        let lock = match lock {
            Some(lock) if !self.cache.exists(&key) => lock,
            _ => {
                // --no-cache over an existing entry: keep both; use ours.
                let (_, digest) = cache::digest_path(layer_dir)?;
                return Ok(Layer::local(layer_dir, key, digest, state));
            }
        };
        let mut pending = self.cache.begin(&key, &stage.id, &self.plan.name)?;
        pending.adopt("layer", layer_dir)?;
        pending.commit(state)?;
        let hit = self.cache.hit_after_commit(&key, lock)?;
        let mut layer =
            Layer::from_hit(&self.cache, hit, key)?.context("a cache entry this build stands on vanished")?;
        layer.fresh = true;
        Ok(layer)
    }

    fn record_entry(&self, stage: &Stage, lowers: &[&Layer], key: &Hash) -> Record {
        let mut r = self.record(stage, lowers);
        r.entry = Some(key.to_hex());
        r
    }

    /// What the bootstrap's output depends on besides the package list.
    fn bootstrap_base_hash(&self) -> String {
        let mut req = self.plan.bootstrap.clone();
        req.include.clear();
        Hasher::new("bootstrap base")
            .json("request", &req)
            .str(
                "mmdebstrap",
                self.plan.tools.get("mmdebstrap").map(String::as_str).unwrap_or(""),
            )
            .json("epoch", &self.plan.source_date_epoch)
            .finish()
            .to_hex()
    }

    /// When the spec only added packages since the last bootstrap of this
    /// spec, installs just those on top of it (an overlay increment)
    /// instead of bootstrapping again: a rebuild after adding one package
    /// downloads and installs one package. `--no-cache` never takes this
    /// path, so the reproducible result is always a full bootstrap.
    fn grow_bootstrap(&self, stage: &Stage, key: Hash) -> Result<Option<Layer>> {
        let Some(record) = self.cache.read_record(&self.plan.name, &stage.id) else {
            return Ok(None);
        };
        let Some(prev_key) = record.entry.as_deref().and_then(Hash::from_hex) else {
            return Ok(None);
        };
        let Lookup::Hit(prev_hit) = self.cache.lookup(&prev_key)? else {
            return Ok(None);
        };
        let Some(prev) = Layer::from_hit(&self.cache, prev_hit, prev_key)? else {
            return Ok(None);
        };
        let before: Vec<String> = serde_json::from_value(prev.state["include"].clone()).unwrap_or_default();
        let base_hash = self.bootstrap_base_hash();
        let now = &self.plan.bootstrap.include;
        if before.is_empty()
            || prev.state["base_hash"].as_str() != Some(base_hash.as_str())
            || !before.iter().all(|p| now.contains(p))
        {
            return Ok(None);
        }
        let added: Vec<&str> = now.iter().filter(|p| !before.contains(p)).map(String::as_str).collect();
        if added.is_empty() {
            return Ok(None);
        }
        let names = added.join(" ");
        self.reporter.event(Event::StageRebuilt {
            id: stage.id.clone(),
            reason: format!("packages added: {names}; installing them on top of the cached bootstrap"),
        });
        let Some(lock) = self.builder_lock(&key)? else {
            return Ok(None);
        };
        let base = self.work.join("layers").join("bootstrap-increment");
        std::fs::create_dir_all(&base)?;
        let layer_dir = base.join("layer");
        let packages = self.cache.packages_dir();
        timed(&self.reporter, stage, || {
            let view = Overlay::mount(
                &stack(&[&prev]),
                Some((&layer_dir, &base.join("overlay-work"))),
                &base.join("tree"),
            )?;
            let script = format!(
                "apt-get install -y --no-install-recommends {names} || \
                 {{ apt-get update && apt-get install -y --no-install-recommends {names}; }}"
            );
            self.chroot(stage, view.path(), "installing the added packages", &script)?;
            // New .debs go to the package cache, as mmdebstrap's do.
            let archives = view.path().join("var/cache/apt/archives");
            for e in std::fs::read_dir(&archives)?.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".deb") && !packages.join(&name).exists() {
                    let tmp = packages.join(format!(".{name}.{}", std::process::id()));
                    std::fs::copy(e.path(), &tmp)?;
                    std::fs::rename(&tmp, packages.join(&name))?;
                }
            }
            self.chroot(stage, view.path(), "cleaning apt's archive", "apt-get clean")?;
            view.unmount()?;
            cache::remove_tree(&base.join("overlay-work"))?;
            if let Some(epoch) = self.plan.source_date_epoch {
                layers::clamp_times(&layer_dir, epoch)?;
            }
            Ok((
                (),
                format!("installed {names} on top of the cached bootstrap {}", prev_key.short()),
            ))
        })?;
        let _ = self
            .cache
            .write_record(&self.plan.name, &stage.id, &self.record_entry(stage, &[], &key));
        let state = serde_json::json!({
            "include": now,
            "base_hash": base_hash,
            "base": prev_key.to_hex(),
        });
        let mut pending = self.cache.begin(&key, &stage.id, &self.plan.name)?;
        pending.adopt("layer", &layer_dir)?;
        pending.commit(state)?;
        drop(prev);
        let hit = self.cache.hit_after_commit(&key, lock)?;
        let mut layer =
            Layer::from_hit(&self.cache, hit, key)?.context("a cache entry this build stands on vanished")?;
        layer.fresh = true;
        Ok(Some(layer))
    }

    fn bootstrap(&self, stage: &Stage, tree: &Path) -> Result<(String, serde_json::Value)> {
        let plan = self.plan;
        let scratch = self.work.join("sources");
        std::fs::create_dir_all(&scratch)?;
        for extra in &plan.bootstrap.extra_sources {
            std::fs::write(scratch.join(format!("{}.sources", extra.name)), &extra.deb822)?;
        }
        let packages = self.cache.packages_dir();
        let args = crate::bootstrap::mmdebstrap_args(&plan.bootstrap, tree, &scratch, Some(&packages));
        let tmp = self.work.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        let before = count_debs(&packages);
        // Its temporary files go to the work directory, and its own mounts
        // into a namespace of their own, so nothing outlives it.
        let mut cmd = Cmd::in_mount_namespace("mmdebstrap")
            .args(&args)
            .env("TMPDIR", &tmp)
            .log_to(&self.log)
            .on_line(self.sink(&stage.id));
        if let Some(epoch) = plan.source_date_epoch {
            cmd = cmd.env("SOURCE_DATE_EPOCH", epoch.to_string());
        }
        cmd.run().context("bootstrapping the root tree with mmdebstrap")?;
        let added = count_debs(&packages).saturating_sub(before);
        Ok((
            format!(
                "{} packages requested, {added} new .deb files downloaded into the package cache",
                plan.bootstrap.include.len()
            ),
            serde_json::json!({
                "include": plan.bootstrap.include,
                "base_hash": self.bootstrap_base_hash(),
            }),
        ))
    }

    fn customise(&self, stage: &Stage, tree: &Path) -> Result<(String, serde_json::Value)> {
        let plan = self.plan;
        customise::stage_files(&plan.spec, &plan.spec_dir, tree)?;
        let script = customise::configure_script(&plan.spec, &plan.datasources);
        self.chroot(stage, tree, "the spec's customisations", &script)?;
        for (i, step) in plan.spec.run.iter().enumerate() {
            let name = format!("[[run]] {}", run_name(step, i));
            let body = match (&step.script, &step.file) {
                (Some(s), _) => s.clone(),
                (None, Some(f)) => {
                    std::fs::read_to_string(plan.spec_dir.join(f)).with_context(|| format!("reading {f}"))?
                }
                (None, None) => bail!("{name} has neither `script` nor `file`"),
            };
            self.reporter.event(Event::Output {
                id: stage.id.clone(),
                line: format!("kiln: {name}"),
            });
            self.chroot(stage, tree, &name, &body)?;
        }
        Ok((format!("{} run steps", plan.spec.run.len()), serde_json::Value::Null))
    }

    fn finalise(&self, stage: &Stage, target: &str, tree: &Path) -> Result<(String, serde_json::Value)> {
        let plan = self.plan;
        match target {
            "ovh-byol" => {
                let o = ovh_plan(plan)?;
                ovh_byol::install_script(tree, o)?;
                self.chroot(stage, tree, "ovh-byol finalisation", &ovh_byol::finalise_script(o))?;
            }
            "disk" => {
                let d = disk_plan(plan)?;
                let ids = disk_ids(plan);
                self.chroot(
                    stage,
                    tree,
                    "disk finalisation",
                    &disk::finalise_script(d, ids.root_fs, &ids.esp_uuid()),
                )?;
                disk::write_grub_cfg(tree, d, ids.root_fs)?;
            }
            other => bail!("internal: no finalisation for target {other}"),
        }
        self.chroot(stage, tree, "cleanup", ovh_byol::CLEANUP_SCRIPT)?;
        ovh_byol::reset_host_files(tree, plan.spec.hostname.as_deref())?;
        let packages = manifest::installed_packages(tree)?;
        let count = packages.len();
        Ok((
            format!("{count} packages installed"),
            serde_json::json!({ "packages": packages }),
        ))
    }

    /// One target's chain: finalise, then filesystem, disk and image (or
    /// the image from the cache).
    fn target(&self, target: &str, cust: &Layer, boot: &Layer) -> Result<TargetResult> {
        let fin = self.tree_stage(
            self.stage(&format!("{target}/finalise"))?,
            &[cust, boot],
            |stage, tree| self.finalise(stage, target, tree),
        )?;
        let packages: Vec<manifest::Package> =
            serde_json::from_value(fin.state["packages"].clone()).context("reading the finalised package list")?;
        let embedded = Manifest::new(self.plan, self.git.clone(), packages);
        let embedded_json = serde_json::to_string_pretty(&embedded)?;

        let convert = self.stage(&format!("{target}/convert"))?;
        let key = Self::entry_key(convert, &[&fin], &embedded_json);
        let image_stages: Vec<&Stage> = self
            .plan
            .stages
            .iter()
            .filter(|s| s.target.as_deref() == Some(target) && s.id != fin_id(target) && s.id != convert.id)
            .collect();
        let (hit, miss) = self.try_reuse(&key)?;
        if let Some(hit) = hit {
            let state: ImageState =
                serde_json::from_value(hit.entry.state.clone()).context("reading a cached image's state")?;
            for s in &image_stages {
                self.reporter.event(Event::StageSkipped {
                    id: s.id.clone(),
                    reason: "the image is reused".to_owned(),
                });
            }
            self.note_reused(
                convert,
                format!("{} reused from the cache ({})", state.file_name, key.short()),
            );
            let _ = self
                .cache
                .write_record(&self.plan.name, &convert.id, &self.record_image(convert, &key));
            return Ok(TargetResult {
                target: target.to_owned(),
                image: hit.item("image"),
                state,
                _hold: Some(hit),
            });
        }
        let reason = if fin.fresh && !self.opts.no_cache {
            format!("its tree changed ({} was rebuilt)", fin_id(target))
        } else {
            self.why_rebuilt(convert, &[&fin], miss.as_ref())
        };
        for s in image_stages.iter().copied().chain([convert]) {
            self.reporter.event(Event::StageRebuilt {
                id: s.id.clone(),
                reason: if s.id == convert.id {
                    reason.clone()
                } else {
                    format!("the image is rebuilt: {reason}")
                },
            });
        }
        let lock = self.builder_lock(&key)?;
        if lock.is_some() && !self.opts.no_cache && self.cache.exists(&key) {
            drop(lock);
            return self.target(target, cust, boot);
        }

        let base = self.work.join("targets").join(target);
        std::fs::create_dir_all(&base)?;
        // The view the filesystem is made from: every layer, plus a
        // throwaway upper for the embedded manifest (it names the commit, so
        // it must not end up in a cached layer).
        let view = Overlay::mount(
            &stack(&[&fin, cust, boot]),
            Some((&base.join("upper"), &base.join("overlay-work"))),
            &base.join("tree"),
        )?;
        write_mode(
            &view.path().join(EMBEDDED_MANIFEST.trim_start_matches('/')),
            &embedded_json,
            0o644,
        )?;
        if let Some(epoch) = self.plan.source_date_epoch {
            // The layers are clamped already: this touches only the
            // manifest and the directories it was written into.
            layers::clamp_times(view.path(), epoch)?;
        }
        let mut disk = Assembly::default();
        for s in &image_stages {
            timed(&self.reporter, s, || {
                let summary = match s.kind {
                    crate::plan::StageKind::Filesystem => self.filesystem(target, view.path(), &base, &mut disk)?,
                    crate::plan::StageKind::Disk => self.disk(target, view.path(), &base, &mut disk)?,
                    other => bail!("internal: unexpected stage kind {other:?} in target {target}"),
                };
                Ok(((), summary))
            })?;
        }
        view.unmount()?;

        let previous = self.previous_image(target);
        let (image, state) = timed(&self.reporter, convert, || {
            let (image, state, stats) = self.convert(target, &base, &disk, &embedded, previous.as_ref())?;
            let summary = format!("{}, {} MiB{stats}", state.file_name, state.size >> 20);
            Ok(((image, state), summary))
        })?;
        drop(previous);
        let _ = self
            .cache
            .write_record(&self.plan.name, &convert.id, &self.record_image(convert, &key));
        let Some(lock) = lock.filter(|_| !self.cache.exists(&key)) else {
            return Ok(TargetResult {
                target: target.to_owned(),
                image,
                state,
                _hold: None,
            });
        };
        let mut pending = self.cache.begin(&key, &convert.id, &self.plan.name)?;
        pending.adopt("image", &image)?;
        let index = base.join("clusters.idx");
        if index.exists() {
            pending.adopt("clusters.idx", &index)?;
        }
        pending.commit(serde_json::to_value(&state)?)?;
        let hit = self.cache.hit_after_commit(&key, lock)?;
        Ok(TargetResult {
            target: target.to_owned(),
            image: hit.item("image"),
            state,
            _hold: Some(hit),
        })
    }

    fn record_image(&self, stage: &Stage, key: &Hash) -> Record {
        let mut r = self.record(stage, &[]);
        r.entry = Some(key.to_hex());
        r
    }

    /// The image this target's convert stage last stored, to reuse its
    /// compressed clusters (not with `--no-cache`: everything is redone).
    fn previous_image(&self, target: &str) -> Option<(Hit, kiln_disk::ClusterIndex)> {
        if self.opts.no_cache {
            return None;
        }
        let record = self.cache.read_record(&self.plan.name, &format!("{target}/convert"))?;
        let key = record.entry.as_deref().and_then(Hash::from_hex)?;
        match self.cache.lookup(&key).ok()? {
            Lookup::Hit(hit) => {
                let index = kiln_disk::ClusterIndex::load(&hit.item("clusters.idx")).ok()?;
                Some((hit, index))
            }
            _ => None,
        }
    }

    fn filesystem(&self, target: &str, tree: &Path, base: &Path, out: &mut Assembly) -> Result<String> {
        let plan = self.plan;
        match target {
            "ovh-byol" => {
                let o = ovh_plan(plan)?;
                let content = kiln_disk::mkfs::tree_size(tree).context("measuring the root tree")?;
                let fs_size = match o.size {
                    Some(s) if s < content => bail!(
                        "[targets.ovh-byol] size = {} MiB is smaller than the content ({} MiB); raise it or use \"auto\"",
                        s >> 20,
                        content.div_ceil(1 << 20)
                    ),
                    Some(s) => s,
                    None => o.target.resolved_size(content),
                };
                let fs_offset = 1 << 20;
                // 1 MiB in front for the table, 1 MiB behind for the GPT backup.
                let disk_size = fs_offset + fs_size + (1 << 20);
                let raw = base.join("disk.raw");
                std::fs::File::create(&raw)?.set_len(disk_size)?;
                let uuid = derived_uuid(plan, target, "root filesystem");
                let fs_opts = kiln_disk::mkfs::FsOptions {
                    uuid,
                    label: "root".to_owned(),
                    hash_seed: Some(derived_uuid(plan, target, "root hash seed")),
                    source_date_epoch: plan.source_date_epoch,
                    ..Default::default()
                };
                match o.filesystem {
                    kiln_spec::Filesystem::Ext4 => kiln_disk::mkfs::make_ext4(&raw, fs_offset, fs_size, tree, &fs_opts),
                    kiln_spec::Filesystem::Xfs => kiln_disk::mkfs::make_xfs(&raw, fs_offset, fs_size, tree, &fs_opts),
                }
                .context("creating the root filesystem")?;
                out.raw = Some(raw);
                out.fs = Some((fs_offset, fs_size, uuid));
                Ok(format!(
                    "{} MiB of content in a {} MiB filesystem",
                    content >> 20,
                    fs_size >> 20
                ))
            }
            other => bail!("internal: no filesystem stage for target {other}"),
        }
    }

    fn disk(&self, target: &str, tree: &Path, base: &Path, out: &mut Assembly) -> Result<String> {
        let plan = self.plan;
        match target {
            "disk" => {
                let d = disk_plan(plan)?;
                let ids = disk_ids(plan);
                let raw = base.join("disk.raw");
                let content = kiln_disk::mkfs::tree_size(tree).context("measuring the root tree")?;
                let geometry = disk::disk_geometry(d, content)?;
                std::fs::File::create(&raw)?.set_len(geometry.disk_size)?;
                let layout = disk::assemble(&raw, d, tree, &ids)?;
                let root_start = layout
                    .partitions
                    .iter()
                    .find(|p| p.index == disk::ROOT_PARTITION)
                    .map(|p| p.start);
                out.fs = root_start.map(|start| (start, geometry.root_size, ids.root_fs));
                out.raw = Some(raw);
                out.layout = Some(layout);
                Ok(format!(
                    "{} MiB disk, {} MiB of content, GRUB for {}",
                    geometry.disk_size >> 20,
                    content >> 20,
                    d.firmware
                        .iter()
                        .map(|f| format!("{f:?}").to_lowercase())
                        .collect::<Vec<_>>()
                        .join(" and ")
                ))
            }
            "ovh-byol" => {
                let o = ovh_plan(plan)?;
                let raw = out.raw.clone().context("the filesystem stage made no disk")?;
                let (fs_offset, fs_size, _) = out.fs.context("the filesystem stage made no filesystem")?;
                let disk_size = std::fs::metadata(&raw)?.len();
                let table = match o.partition_table {
                    PartitionTable::Gpt => TableKind::Gpt,
                    PartitionTable::Mbr => TableKind::Mbr,
                };
                let layout = partition::layout(
                    disk_size,
                    table,
                    &[PartitionSpec {
                        kind: PartKind::LinuxFs,
                        size: fs_size,
                        name: "root".to_owned(),
                        guid: derived_uuid(plan, target, "root partition"),
                    }],
                )?;
                if layout.partitions[0].start != fs_offset {
                    bail!(
                        "internal: partition placed at {} but the filesystem is at {fs_offset}",
                        layout.partitions[0].start
                    );
                }
                partition::write_partition_table(&raw, &layout, derived_uuid(plan, target, "disk"))?;
                out.layout = Some(layout);
                Ok(format!(
                    "{}, 1 partition",
                    if table == TableKind::Gpt { "GPT" } else { "MBR" }
                ))
            }
            other => bail!("internal: no disk stage for target {other}"),
        }
    }

    /// Writes the image file from the raw disk (freed afterwards).
    fn convert(
        &self,
        target: &str,
        base: &Path,
        disk: &Assembly,
        embedded: &Manifest,
        previous: Option<&(Hit, kiln_disk::ClusterIndex)>,
    ) -> Result<(PathBuf, ImageState, String)> {
        let plan = self.plan;
        let (file_name, format, compress) = match target {
            "ovh-byol" => {
                let o = ovh_plan(plan)?;
                (o.file_name.clone(), "qcow2", o.compress)
            }
            "disk" => {
                let d = disk_plan(plan)?;
                (d.file_name.clone(), d.format_name(), d.compress)
            }
            other => bail!("internal: no convert stage for target {other}"),
        };
        let raw = disk.raw.clone().context("the disk stage made no disk")?;
        let image = base.join("image");
        let mut stats = String::new();
        if format == "qcow2" {
            let opts = kiln_disk::Qcow2WriteOptions {
                threads: self.threads(),
                compress,
                reuse: previous.map(|(hit, index)| kiln_disk::ReuseSource {
                    image: hit.item("image"),
                    index: index.clone(),
                }),
            };
            let (s, index) =
                kiln_disk::write_qcow2(&raw, &image, &opts).with_context(|| format!("writing {file_name} as qcow2"))?;
            index
                .save(&base.join("clusters.idx"))
                .context("saving the image's cluster index")?;
            stats = format!(
                " ({} clusters compressed, {} reused from the previous image, {} threads)",
                s.compressed, s.reused, opts.threads
            );
        } else {
            crate::targets::convert_image(&raw, &image, format, compress, Some(&self.log))?;
        }
        let _ = std::fs::remove_file(&raw);
        let size = std::fs::metadata(&image)?.len();
        let sha512 = sha512_file(&image)?;
        let partitions = disk
            .layout
            .as_ref()
            .map(|layout| {
                let (fs_offset, _, uuid) = disk.fs.unwrap_or((0, 0, uuid::Uuid::nil()));
                layout
                    .partitions
                    .iter()
                    .map(|p| PartitionInfo {
                        target: target.to_owned(),
                        index: p.index,
                        start: p.start,
                        size: p.size,
                        filesystem: if p.start == fs_offset {
                            root_fs_name(plan, target)
                        } else if p.kind == PartKind::Esp {
                            "vfat".to_owned()
                        } else {
                            String::new()
                        },
                        uuid: if p.start == fs_offset {
                            uuid.to_string()
                        } else if p.kind == PartKind::Esp {
                            disk_ids(plan).esp_uuid()
                        } else {
                            String::new()
                        },
                        partition_table: format!("{:?}", layout.table).to_lowercase(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let state = ImageState {
            file_name,
            format: format.to_owned(),
            size,
            sha512,
            embedded: serde_json::to_value(embedded)?,
            partitions,
        };
        Ok((image, state, stats))
    }

    fn threads(&self) -> usize {
        match self.opts.threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        }
    }

    /// Copies the images out, then writes `.sha512` files, `SHA512SUMS` and
    /// `manifest.json`; nothing becomes visible before everything is ready.
    fn checksums(&self, done: Vec<TargetResult>) -> Result<Vec<PathBuf>> {
        let plan = self.plan;
        let mut doc: Option<serde_json::Value> = None;
        let mut artifacts_json = Vec::new();
        let mut partitions_json = Vec::new();
        let mut sums = String::new();
        let mut images = Vec::new();
        let mut sides = Vec::new();
        for r in done {
            let st = &r.state;
            let part = PartialFile::new(self.out_dir.join(&st.file_name));
            // A copy, not a link: editing the output must not touch the cache.
            Cmd::new("cp")
                .args(["--sparse=always", "--reflink=auto"])
                .arg(&r.image)
                .arg(part.path())
                .run()
                .with_context(|| format!("copying {} to the output directory", st.file_name))?;
            let line = format!("{}  {}\n", st.sha512, st.file_name);
            sums.push_str(&line);
            let side = PartialFile::new(self.out_dir.join(format!("{}.sha512", st.file_name)));
            side.write_all(line.as_bytes())?;
            doc.get_or_insert_with(|| st.embedded.clone());
            artifacts_json.push(serde_json::to_value(Artifact {
                target: r.target.clone(),
                path: st.file_name.clone(),
                format: st.format.clone(),
                size: st.size,
                sha512: st.sha512.clone(),
            })?);
            partitions_json.extend(
                st.partitions
                    .iter()
                    .map(|p| serde_json::to_value(p).unwrap_or_default()),
            );
            if r.target == "ovh-byol" {
                let o = ovh_plan(plan)?;
                if let Some(d) = doc.as_mut() {
                    d["ovhReinstall"] =
                        manifest::ovh_reinstall_template(&o.efi_bootloader_path, &st.sha512, &st.file_name);
                }
            }
            images.push(part);
            sides.push(side);
        }
        let mut doc = doc.context("internal: no target produced an image")?;
        doc["artifacts"] = serde_json::Value::Array(artifacts_json);
        if !partitions_json.is_empty() {
            doc["partitions"] = serde_json::Value::Array(partitions_json);
        }
        let sums_file = PartialFile::new(self.out_dir.join("SHA512SUMS"));
        sums_file.write_all(sums.as_bytes())?;
        let manifest_file = PartialFile::new(self.out_dir.join("manifest.json"));
        manifest_file.write_all(serde_json::to_string_pretty(&doc)?.as_bytes())?;
        // Images first, manifest last: whatever is visible is complete.
        let mut artifacts = Vec::new();
        for p in images {
            artifacts.push(p.commit()?);
        }
        for p in sides.into_iter().chain([sums_file, manifest_file]) {
            p.commit()?;
        }
        Ok(artifacts)
    }
}

/// The raw disk a target's stages assemble.
#[derive(Default)]
struct Assembly {
    raw: Option<PathBuf>,
    /// Root filesystem offset, size and UUID inside `raw`.
    fs: Option<(u64, u64, uuid::Uuid)>,
    layout: Option<partition::Layout>,
}

/// The directories of `layers`, top first, for an overlay's lowerdir.
fn stack<'a>(layers: &[&'a Layer]) -> Vec<&'a Path> {
    layers
        .iter()
        .flat_map(|l| l.dirs.iter().map(PathBuf::as_path))
        .collect()
}

fn fin_id(target: &str) -> String {
    format!("{target}/finalise")
}

fn count_debs(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".deb"))
                .count()
        })
        .unwrap_or(0)
}

fn disk_plan(plan: &Plan) -> Result<&crate::targets::disk::DiskPlan> {
    plan.disk.as_ref().context("internal: disk stage without a disk target")
}

fn disk_ids(plan: &Plan) -> disk::DiskIds {
    disk::DiskIds::derive(|what| derived_uuid(plan, "disk", what))
}

fn root_fs_name(plan: &Plan, target: &str) -> String {
    match (target, &plan.ovh_byol) {
        ("ovh-byol", Some(o)) => match o.filesystem {
            kiln_spec::Filesystem::Ext4 => "ext4".to_owned(),
            kiln_spec::Filesystem::Xfs => "xfs".to_owned(),
        },
        _ => "ext4".to_owned(),
    }
}

fn ovh_plan(plan: &Plan) -> Result<&OvhByolPlan> {
    plan.ovh_byol
        .as_ref()
        .context("internal: ovh-byol stage without an ovh-byol target")
}

/// A UUID derived from the spec hash, so rebuilding the same spec gives the
/// same filesystem and partition identifiers.
fn derived_uuid(plan: &Plan, target: &str, what: &str) -> uuid::Uuid {
    let h = Hasher::new("uuid")
        .hash("spec", &plan.spec_hash)
        .str("target", target)
        .str("what", what)
        .finish();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&h.bytes()[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

fn sha512_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha512::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("hashing {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::StageKind;

    fn stage(hash: &str) -> Stage {
        Stage {
            id: "customise".into(),
            kind: StageKind::Customise,
            target: None,
            parents: vec![],
            actions: vec![],
            inputs: vec![],
            hash: Hasher::new("t").str("h", hash).finish(),
        }
    }

    fn layer(key: &str, digest: &str) -> Layer {
        Layer::local(
            Path::new("/l"),
            Hasher::new("t").str("k", key).finish(),
            digest.into(),
            serde_json::Value::Null,
        )
    }

    #[test]
    fn entry_keys_follow_the_stage_and_the_content_below_it() {
        let base = Run::entry_key(&stage("s"), &[&layer("k", "d")], "");
        assert_eq!(base, Run::entry_key(&stage("s"), &[&layer("k", "d")], ""), "stable");
        for (what, other) in [
            ("stage hash", Run::entry_key(&stage("s2"), &[&layer("k", "d")], "")),
            ("lower key", Run::entry_key(&stage("s"), &[&layer("k2", "d")], "")),
            ("lower content", Run::entry_key(&stage("s"), &[&layer("k", "d2")], "")),
            (
                "extra input",
                Run::entry_key(&stage("s"), &[&layer("k", "d")], "manifest"),
            ),
            ("lower count", Run::entry_key(&stage("s"), &[], "")),
        ] {
            assert_ne!(base, other, "{what} does not change the key");
        }
    }
}
