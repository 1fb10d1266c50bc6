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
use kiln_exec::{Cmd, PartialFile, WorkDir};
use sha2::{Digest, Sha512};

use crate::cache::{self, Cache, Hit, Lookup, Record};
use crate::chroot::{run_in_tree, write_mode, ChrootScript};
use crate::debug::{self, Debugger, OnError, ShellOptions, StageFailure};
use crate::hash::{Hash, Hasher};
use crate::layers::{self, Overlay};
use crate::manifest::{self, Artifact, Manifest, PartitionInfo};
use crate::plan::{run_name, Plan, Stage, StageKind};
use crate::targets::{Assembly, ImageFormat, StageContext, Target};
use crate::{cleanup, customise};

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
#[derive(Debug, Clone, Default)]
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
    /// What to do when a stage fails.
    pub on_error: OnError,
    /// The user interface's hooks (`--step`, `--on-error=shell`).
    pub debugger: Option<Arc<dyn Debugger>>,
    /// Sign `SHA512SUMS` with this key (`--sign-key`).
    pub sign_key: Option<crate::sign::SignKey>,
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
    let mut tools = plan.family.host_tools().to_vec();
    tools.extend(["unshare", "chroot", "sh", "cp"]);
    if plan.base_image.is_some() {
        // The import: ext4 read without mounting, XFS/btrfs mounted.
        tools.extend(["debugfs", "setfattr", "mknod", "mount"]);
    }
    for t in &plan.targets {
        tools.extend(t.tools());
    }
    tools.sort_unstable();
    tools.dedup();
    tools
}

/// Runs the whole build.
pub fn build(plan: &Plan, opts: &BuildOptions, reporter: Arc<dyn Reporter>) -> Result<BuildOutput> {
    preflight(plan)?;
    // A key that cannot sign is found before the build, not after it.
    if let Some(key) = &opts.sign_key {
        if kiln_exec::which(key.tool()).is_none() {
            bail!(
                "--sign-key needs `{}`, which is not installed; see `kiln doctor`",
                key.tool()
            );
        }
        key.check()?;
    }
    layers::enter_private_mount_namespace()?;
    let cache = Cache::open(&opts.cache_dir)
        .with_context(|| format!("opening the stage cache {}", opts.cache_dir.display()))?;
    std::fs::create_dir_all(&opts.out_dir).with_context(|| format!("creating {}", opts.out_dir.display()))?;
    let out_dir = std::fs::canonicalize(&opts.out_dir)?;
    let work_parent = opts.work_dir.as_deref().unwrap_or(&out_dir);
    sweep_stale(&cache, work_parent, &out_dir);
    let mut work = WorkDir::new_in(work_parent, WORK_PREFIX).context("creating the work directory")?;
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
        cached_only: false,
        failed: std::sync::Mutex::new(None),
    };
    let result = run.all().map_err(|e| {
        let mut msg = format!("{e:#}\n(build log: {})", log.display());
        if opts.on_error == OnError::Keep {
            work.keep();
            msg.push_str(&run.kept_message());
        }
        anyhow!(msg)
    });
    let artifacts = result?;
    Ok(BuildOutput {
        artifacts,
        manifest: run.out_dir.join("manifest.json"),
        log,
        reused: run.reused.into_inner().unwrap_or_default(),
    })
}

/// The name of a build's work directory starts with this.
const WORK_PREFIX: &str = ".kiln-work-";

/// What builds that were killed (SIGKILL, a power cut) left behind: their
/// work directories, in `work_parent` and in `out_dir` (whose
/// `--verify-reproducible` round has its own), and the cache entries they
/// were writing. Their processes died with them (see
/// [`kiln_exec::Cmd::in_mount_namespace`]), and so did their mounts.
fn sweep_stale(cache: &Cache, work_parent: &Path, out_dir: &Path) {
    let mut removed = WorkDir::sweep_stale(work_parent, WORK_PREFIX);
    removed.extend(WorkDir::sweep_stale(out_dir, ".kiln-reproducible-"));
    for dir in removed {
        tracing::info!("removed {}, left by a build that was killed", dir.display());
    }
    if let Err(e) = cache.sweep_temporaries() {
        tracing::warn!(
            "warning: removing what killed builds left in the stage cache {}: {e:#}",
            cache.root().display()
        );
    }
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
    state: LayerState,
    /// Built by this build (not taken from the cache).
    fresh: bool,
    _hold: Vec<Hit>,
}

/// What a cached tree layer remembers besides the tree.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct LayerState {
    /// Bootstrap: the packages it was asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    include: Vec<String>,
    /// Bootstrap: what its output depends on besides the package list
    /// ([`Run::bootstrap_base_hash`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base_hash: Option<String>,
    /// A bootstrap grown by added packages: the key of the entry it grew
    /// from, which it is stacked on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base: Option<String>,
    /// Finalise: the packages installed in the finished tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    packages: Option<Vec<manifest::Package>>,
}

impl Layer {
    fn local(dir: &Path, key: Hash, digest: String, state: LayerState) -> Layer {
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
        // An entry whose state does not parse was written by another
        // version of kiln: treat it as absent.
        let Ok(state) = serde_json::from_value::<LayerState>(hit.entry.state.clone()) else {
            return Ok(None);
        };
        let mut layer = Layer {
            dirs: vec![hit.item("layer")],
            key,
            digest: hit.entry.items.first().map(|i| i.digest.clone()).unwrap_or_default(),
            fresh: false,
            _hold: Vec::new(),
            state,
        };
        if let Some(base_key) = layer.state.base.as_deref().and_then(Hash::from_hex) {
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
    target: &'static str,
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
    /// `kiln shell --no-build`: a stage the cache lacks is an error.
    cached_only: bool,
    /// The first stage that failed with a tree, and the stage (and
    /// whether its layer is in the work directory) that reopens it.
    failed: std::sync::Mutex<Option<(String, String, bool)>>,
}

/// Runs `f` as stage `id`, reporting start, end and failure; the
/// debugger (`--step`) is asked first.
fn timed<T>(
    reporter: &Arc<dyn Reporter>,
    debugger: Option<&Arc<dyn Debugger>>,
    stage: &Stage,
    f: impl FnOnce() -> Result<(T, String)>,
) -> Result<T> {
    kiln_exec::check_interrupted()?;
    if let Some(d) = debugger {
        d.before_stage(stage)?;
    }
    let started = Instant::now();
    reporter.event(Event::StageStarted {
        id: stage.id.clone(),
        title: stage.kind.title().to_owned(),
    });
    match kiln_exec::fault_point(&stage.id)
        .map_err(anyhow::Error::from)
        .and_then(|()| f())
    {
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
    /// The stage that makes the first tree (bootstrap or import).
    fn first_stage(&self) -> Result<&Stage> {
        self.plan
            .first_stage()
            .context("internal: the plan has no bootstrap or import stage")
    }

    /// Runs the first stage: a bootstrap, or the import of a base image.
    fn first(&self, stage: &Stage, tree: &Path) -> Result<(String, LayerState)> {
        match stage.kind {
            StageKind::Import => self.import(stage, tree),
            _ => self.bootstrap(stage, tree),
        }
    }

    /// `[base] image`: download (or take from the download cache) and
    /// verify it, extract its root tree, then install the packages a
    /// bootstrap would have installed, with the family's tools.
    fn import(&self, stage: &Stage, tree: &Path) -> Result<(String, LayerState)> {
        let plan = self.plan;
        let resolved = plan
            .base_image
            .as_ref()
            .context("internal: an import stage without [base] image")?;
        let image = &resolved.image;
        let downloader = crate::download::Downloader::new(&self.cache.root().join("downloads"));
        let mut sink = self.sink(&stage.id);
        let mut shown = 0u64;
        let mut progress = |done: u64, total: Option<u64>| {
            // A line per 5% (or per 32 MiB without a length): the
            // stage's progress line shows the last one.
            let step = total.map_or(32 << 20, |t| (t / 20).max(1));
            if done == 0 || done >= shown + step || total == Some(done) {
                shown = done;
                let mib = |n: u64| n as f64 / 1048576.0;
                sink(&match total {
                    Some(t) if t > 0 => format!(
                        "downloading {}: {:.0} of {:.0} MiB ({}%)",
                        image.file_name(),
                        mib(done),
                        mib(t),
                        done * 100 / t
                    ),
                    _ => format!("downloading {}: {:.0} MiB", image.file_name(), mib(done)),
                });
            }
        };
        let request = crate::download::Request {
            url: &image.url,
            sha256: resolved.sha256.as_deref(),
            checksum_url: image.checksum_url.as_deref(),
            file_name: image.file_name(),
        };
        let (file, sha256) = downloader
            .fetch(&request, &mut progress)
            .with_context(|| format!("downloading the base image {}", image.url))?;
        let scratch = self.work.join("import");
        let expected = crate::import::Expected {
            distro: plan.spec.base.distro(),
            release: plan.spec.base.release(),
            architecture: plan.spec.base.architecture(),
        };
        let imported = crate::import::import(&file, image, expected, &scratch, tree, &self.log)
            .with_context(|| format!("importing the base image {}", image.url))?;
        let _ = cache::remove_tree(&scratch);
        self.reporter.event(Event::Output {
            id: stage.id.clone(),
            line: format!(
                "imported {} from the {} filesystem of {}",
                imported.os,
                imported.fs.name(),
                imported
                    .partition
                    .map_or_else(|| "the whole disk".to_owned(), |p| format!("partition {p}"))
            ),
        });
        // What a bootstrap installs, installed on the image (from the
        // network, with the image's own package sources).
        self.install_packages(stage, tree, &plan.bootstrap.include)?;
        let req = &plan.bootstrap;
        if !req.download.is_empty() {
            let script = format!(
                "mkdir -p {dir} && cd {dir} && apt-get download {}",
                req.download.join(" "),
                dir = kiln_exec::cmd::shell_quote(&req.download_dir)
            );
            self.chroot(stage, tree, "keeping package files", &script)?;
        }
        self.chroot(
            stage,
            tree,
            "cleaning the package archive",
            plan.family.clean_downloads_script(),
        )?;
        Ok((
            format!(
                "imported {} (sha256:{}), {} packages requested",
                imported.os,
                &sha256[..12],
                req.include.len()
            ),
            LayerState {
                include: req.include.clone(),
                ..LayerState::default()
            },
        ))
    }

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
        let boot = self.tree_stage(self.first_stage()?, &[], |stage, tree| self.first(stage, tree))?;
        let cust = self.tree_stage(self.stage("customise")?, &[&boot], |stage, tree| {
            self.customise(stage, tree)
        })?;
        // Targets run in parallel, in waves: one that consumes others'
        // artifacts waits for the wave that makes them.
        let mut pending: Vec<&Arc<dyn Target>> = self.plan.targets.iter().collect();
        let mut done: Vec<TargetResult> = Vec::new();
        while !pending.is_empty() {
            let ready = |t: &&Arc<dyn Target>| t.consumes().iter().all(|c| done.iter().any(|d| d.target == *c));
            let (wave, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(ready);
            if wave.is_empty() {
                let names: Vec<&str> = rest.iter().map(|t| t.name()).collect();
                bail!(
                    "targets {} consume artifacts no other target of the spec makes",
                    names.join(", ")
                );
            }
            let results: Vec<Result<TargetResult>> = std::thread::scope(|s| {
                let handles: Vec<_> = wave
                    .iter()
                    .map(|t| {
                        let consumed: Vec<(&'static str, PathBuf)> = done
                            .iter()
                            .filter(|d| t.consumes().contains(&d.target))
                            .map(|d| (d.target, d.image.clone()))
                            .collect();
                        let (cust, boot) = (&cust, &boot);
                        s.spawn(move || self.target(t.as_ref(), cust, boot, &consumed))
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
            for r in results {
                done.push(r?);
            }
            pending = rest;
        }
        timed(
            &self.reporter,
            self.opts.debugger.as_ref(),
            self.stage("checksums")?,
            || {
                let artifacts = self.checksums(done)?;
                let n = artifacts.len();
                Ok((artifacts, format!("{n} artifacts")))
            },
        )
    }

    /// What `--on-error` does with a stage that failed while its tree is
    /// mounted at `tree`: nothing (abort), remember how to reopen it
    /// (`reopen`: the stage whose tree it is, and whether its layer is in
    /// the work directory) for the final message (keep), or hand it to the
    /// debugger (shell). A failed script is left in the tree at
    /// [`debug::FAILED_STEP_PATH`] for both. `result` is passed on.
    fn on_stage_error<T>(
        &self,
        stage: &Stage,
        tree: &Path,
        reopen: Option<(&str, bool)>,
        result: Result<T>,
    ) -> Result<T> {
        let Err(error) = result else {
            return result;
        };
        if self.opts.on_error == OnError::Abort || kiln_exec::interrupted() {
            return Err(error);
        }
        let failure = StageFailure {
            stage,
            tree,
            error: &error,
            log: &self.log,
        };
        if let Some(step) = failure.step() {
            let _ = write_mode(
                &tree.join(debug::FAILED_STEP_PATH.trim_start_matches('/')),
                &step.script,
                0o755,
            );
        }
        match self.opts.on_error {
            OnError::Keep => {
                let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
                if failed.is_none() {
                    *failed = Some(match reopen {
                        Some((id, kept)) => (stage.id.clone(), id.to_owned(), kept),
                        None => (stage.id.clone(), String::new(), false),
                    });
                }
            }
            OnError::Shell => {
                if let Some(d) = &self.opts.debugger {
                    d.stage_failed(&failure);
                }
            }
            OnError::Abort => {}
        }
        Err(error)
    }

    /// The lines `--on-error=keep` adds to the build's error.
    fn kept_message(&self) -> String {
        let mut msg = format!("\nthe work directory is kept: {}", self.work.display());
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((stage, reopen, kept)) = failed.filter(|(_, reopen, _)| !reopen.is_empty()) {
            let kept_arg = if kept {
                format!(" --kept {}", kiln_exec::cmd::shell_quote(&self.work.to_string_lossy()))
            } else {
                String::new()
            };
            msg.push_str(&format!(
                "\nreopen the tree of the failed stage {stage} (changes go to a throwaway overlay):\n  kiln shell {} --stage {reopen}{kept_arg}",
                kiln_exec::cmd::shell_quote(&self.plan.spec_path.to_string_lossy())
            ));
            if stage != reopen {
                let target = stage.split('/').next().unwrap_or(&stage);
                msg.push_str(&format!(
                    "\n{target}'s scratch files (raw disk, filesystem) are in {}",
                    self.work.join("targets").join(target).display()
                ));
            }
        }
        msg
    }

    /// The layers of tree stage `stage_id` (top first), from the cache or
    /// built; with `kept`, the stage's own layer is the one a kept work
    /// directory holds.
    fn layers_for(&self, stage_id: &str, kept: Option<&Path>) -> Result<Vec<Layer>> {
        let kept_layer = |id: &str| -> Result<Option<Layer>> {
            let Some(work) = kept else { return Ok(None) };
            let dir = debug::kept_layer(work, id);
            if !dir.is_dir() {
                bail!(
                    "{} holds no tree of stage {id} (no {}); pass the --stage that the build's message names",
                    work.display(),
                    dir.display()
                );
            }
            let key = Hasher::new("kept layer").str("dir", &dir.to_string_lossy()).finish();
            Ok(Some(Layer::local(&dir, key, String::new(), LayerState::default())))
        };
        let first = self.first_stage()?;
        if stage_id == first.id {
            if let Some(top) = kept_layer(stage_id)? {
                return Ok(vec![top]);
            }
        }
        let boot = self.tree_stage(first, &[], |stage, tree| self.first(stage, tree))?;
        if stage_id == first.id {
            return Ok(vec![boot]);
        }
        if stage_id == "customise" {
            if let Some(top) = kept_layer(stage_id)? {
                return Ok(vec![top, boot]);
            }
        }
        let cust = self.tree_stage(self.stage("customise")?, &[&boot], |stage, tree| {
            self.customise(stage, tree)
        })?;
        if stage_id == "customise" {
            return Ok(vec![cust, boot]);
        }
        let stage = self.stage(stage_id)?;
        let target = stage
            .target
            .as_deref()
            .and_then(|t| self.plan.target(t))
            .filter(|_| stage.kind == StageKind::Finalise)
            .with_context(|| format!("stage {stage_id} has no tree"))?;
        if let Some(top) = kept_layer(stage_id)? {
            return Ok(vec![top, cust, boot]);
        }
        let fin = self.tree_stage(stage, &[&cust, &boot], |stage, tree| {
            self.finalise(stage, target.as_ref(), tree)
        })?;
        Ok(vec![fin, cust, boot])
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
        run: impl FnOnce(&Stage, &Path) -> Result<(String, LayerState)>,
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
        if stage.kind == StageKind::Bootstrap && !self.opts.no_cache && !self.cached_only {
            if let Some(layer) = self.grow_bootstrap(stage, key)? {
                return Ok(layer);
            }
        }
        if self.cached_only {
            bail!(
                "stage {} of {} is not in the stage cache ({}); build it with `kiln build {}`, or leave out --no-build",
                stage.id,
                self.plan.spec_path.display(),
                self.cache.root().display(),
                self.plan.spec_path.display()
            );
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
        let state = timed(&self.reporter, self.opts.debugger.as_ref(), stage, || {
            let (summary, state) = if lowers.is_empty() {
                let out = run(stage, &layer_dir);
                self.on_stage_error(stage, &layer_dir, Some((&stage.id, true)), out)?
            } else {
                let lower_dirs = stack(lowers);
                let view = Overlay::mount(
                    &lower_dirs,
                    Some((&layer_dir, &base.join("overlay-work"))),
                    &base.join("tree"),
                )?;
                let out = run(stage, view.path());
                let out = self.on_stage_error(stage, view.path(), Some((&stage.id, true)), out)?;
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
        state: LayerState,
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
        pending.commit(serde_json::to_value(&state)?)?;
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

    /// When a cached bootstrap of the same release, sources and options
    /// holds a subset of the packages this one needs, installs just the
    /// missing ones on top of it (an overlay increment) instead of
    /// bootstrapping again: a rebuild after adding one package downloads
    /// and installs one package, and a second spec that needs a few more
    /// packages than a first builds on the first's bootstrap. The spec's
    /// own last bootstrap is preferred, then the one that lacks the fewest
    /// packages, among each spec's last bootstrap and every other cached
    /// one. `--no-cache` never takes this path, so the reproducible
    /// result is always a full bootstrap.
    fn grow_bootstrap(&self, stage: &Stage, key: Hash) -> Result<Option<Layer>> {
        let base_hash = self.bootstrap_base_hash();
        let now = &self.plan.bootstrap.include;
        // Candidates: each spec's last bootstrap (this spec's first), then
        // every other cached bootstrap, as a spec's last one may have
        // packages that this one lacks while an older one fits.
        let mut candidates: Vec<(String, Hash)> = Vec::new();
        let recorded = self
            .cache
            .records_of_stage(&self.plan.name, &stage.id)
            .into_iter()
            .filter_map(|(spec, record)| Some((spec, record.entry.as_deref().and_then(Hash::from_hex)?)));
        // Growing only saves time: a cache that cannot be listed means no
        // older candidates, not a failed build.
        let cached = self
            .cache
            .list()
            .unwrap_or_default()
            .into_iter()
            .filter(|l| l.entry.stage == stage.id)
            .filter_map(|l| Some((l.entry.spec, Hash::from_hex(&l.entry.key)?)));
        for (spec, key) in recorded.chain(cached) {
            if !candidates.iter().any(|(_, k)| *k == key) {
                candidates.push((spec, key));
            }
        }
        let mut best: Option<(String, Layer, usize)> = None;
        for (spec, prev_key) in candidates {
            if best.as_ref().is_some_and(|(_, layer, _)| layer.key == prev_key) {
                continue;
            }
            // Verifying a bootstrap reads all of it: only the ones that
            // would serve, by what their entry.json says, are verified.
            let fits = |state: &LayerState| {
                let before = &state.include;
                !before.is_empty()
                    && state.base_hash.as_deref() == Some(base_hash.as_str())
                    && before.iter().all(|p| now.contains(p))
                    && now.len() > before.len()
                    && best.as_ref().is_none_or(|(_, _, m)| now.len() - before.len() < *m)
            };
            let peeked = self
                .cache
                .peek(&prev_key)
                .and_then(|e| serde_json::from_value::<LayerState>(e.state).ok());
            if !peeked.as_ref().is_some_and(fits) {
                continue;
            }
            let Lookup::Hit(prev_hit) = self.cache.lookup(&prev_key)? else {
                continue;
            };
            let Some(prev) = Layer::from_hit(&self.cache, prev_hit, prev_key)? else {
                continue;
            };
            let before = &prev.state.include;
            if before.is_empty()
                || prev.state.base_hash.as_deref() != Some(base_hash.as_str())
                || !before.iter().all(|p| now.contains(p))
            {
                continue;
            }
            let missing = now.len() - before.len();
            if missing > 0 && best.as_ref().is_none_or(|(_, _, m)| missing < *m) {
                best = Some((spec, prev, missing));
            }
        }
        let Some((base_spec, prev, _)) = best else {
            return Ok(None);
        };
        let prev_key = prev.key;
        let before = &prev.state.include;
        let added: Vec<&str> = now.iter().filter(|p| !before.contains(p)).map(String::as_str).collect();
        let names = added.join(" ");
        let whose = if base_spec == self.plan.name {
            "the cached bootstrap".to_owned()
        } else {
            format!("the cached bootstrap of {base_spec}")
        };
        self.reporter.event(Event::StageRebuilt {
            id: stage.id.clone(),
            reason: format!("packages added: {names}; installing them on top of {whose}"),
        });
        let Some(lock) = self.builder_lock(&key)? else {
            return Ok(None);
        };
        let base = self.work.join("layers").join("bootstrap-increment");
        std::fs::create_dir_all(&base)?;
        let layer_dir = base.join("layer");
        let packages = self.cache.packages_dir();
        timed(&self.reporter, self.opts.debugger.as_ref(), stage, || {
            let view = Overlay::mount(
                &stack(&[&prev]),
                Some((&layer_dir, &base.join("overlay-work"))),
                &base.join("tree"),
            )?;
            let added_owned: Vec<String> = added.iter().map(|p| (*p).to_owned()).collect();
            let grow = || -> Result<()> {
                self.install_packages(stage, view.path(), &added_owned)?;
                // New package files go to the package cache, as the bootstrap's do.
                let archives = view.path().join(self.plan.family.package_archive_dir());
                for e in std::fs::read_dir(&archives)?.filter_map(|e| e.ok()) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.ends_with(".deb") && !packages.join(&name).exists() {
                        let tmp = packages.join(format!(".{name}.{}", std::process::id()));
                        std::fs::copy(e.path(), &tmp)?;
                        std::fs::rename(&tmp, packages.join(&name))?;
                    }
                }
                self.chroot(
                    stage,
                    view.path(),
                    "cleaning the package archive",
                    self.plan.family.clean_downloads_script(),
                )
            };
            // Stacked on a cache entry no plan names: no line reopens it.
            self.on_stage_error(stage, view.path(), None, grow())?;
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
        let state = LayerState {
            include: now.clone(),
            base_hash: Some(base_hash),
            base: Some(prev_key.to_hex()),
            packages: None,
        };
        let mut pending = self.cache.begin(&key, &stage.id, &self.plan.name)?;
        pending.adopt("layer", &layer_dir)?;
        pending.commit(serde_json::to_value(&state)?)?;
        drop(prev);
        let hit = self.cache.hit_after_commit(&key, lock)?;
        let mut layer =
            Layer::from_hit(&self.cache, hit, key)?.context("a cache entry this build stands on vanished")?;
        layer.fresh = true;
        Ok(Some(layer))
    }

    /// Installs `packages` into `tree`: from the host for a family whose
    /// package manager works on a root from outside, else in a chroot.
    fn install_packages(&self, stage: &Stage, tree: &Path, packages: &[String]) -> Result<()> {
        let family = self.plan.family;
        let scratch = self.work.join("sources");
        family.prepare_packages(&self.plan.bootstrap, &scratch)?;
        match family.host_install(&self.plan.bootstrap, tree, &scratch, packages) {
            Some((program, args)) => Cmd::in_mount_namespace(program)
                .args(&args)
                .log_to(&self.log)
                .on_line(self.sink(&stage.id))
                .run()
                .map(drop)
                .with_context(|| format!("installing {} with {program}", packages.join(" "))),
            None => {
                let names: Vec<&str> = packages.iter().map(String::as_str).collect();
                self.chroot(
                    stage,
                    tree,
                    "installing the added packages",
                    &family.install_script(&names),
                )
            }
        }
    }

    /// `[packages] remove` for a family that removes from the host (the
    /// others remove at the end of the customisation script).
    fn remove_packages(&self, stage: &Stage, tree: &Path, packages: &[String]) -> Result<()> {
        let family = self.plan.family;
        let scratch = self.work.join("sources");
        family.prepare_packages(&self.plan.bootstrap, &scratch)?;
        if let Some((program, args)) = family.host_remove(&self.plan.bootstrap, tree, &scratch, packages) {
            Cmd::in_mount_namespace(program)
                .args(&args)
                .log_to(&self.log)
                .on_line(self.sink(&stage.id))
                .run()
                .map(drop)
                .with_context(|| format!("removing {} with {program}", packages.join(" ")))?;
        }
        Ok(())
    }

    fn bootstrap(&self, stage: &Stage, tree: &Path) -> Result<(String, LayerState)> {
        let plan = self.plan;
        let scratch = self.work.join("sources");
        std::fs::create_dir_all(&scratch)?;
        for extra in &plan.bootstrap.extra_sources {
            std::fs::write(scratch.join(format!("{}.sources", extra.name)), &extra.deb822)?;
        }
        plan.family
            .prepare_packages(&plan.bootstrap, &scratch)
            .context("writing the package manager's configuration")?;
        let packages = self.cache.packages_dir();
        let (program, cmd) =
            crate::distro::bootstrap_cmd(plan.family, &plan.bootstrap, tree, &scratch, Some(&packages));
        let tmp = self.work.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        let before = count_files(&packages);
        // Its temporary files go to the work directory, and its own mounts
        // into a namespace of their own, so nothing outlives it.
        let mut cmd = cmd.env("TMPDIR", &tmp).log_to(&self.log).on_line(self.sink(&stage.id));
        if let Some(epoch) = plan.source_date_epoch {
            cmd = cmd.env("SOURCE_DATE_EPOCH", epoch.to_string());
        }
        cmd.run()
            .with_context(|| format!("bootstrapping the root tree with {program}"))?;
        let added = count_files(&packages).saturating_sub(before);
        Ok((
            format!(
                "{} packages requested, {added} new package files downloaded into the package cache",
                plan.bootstrap.include.len()
            ),
            LayerState {
                include: plan.bootstrap.include.clone(),
                base_hash: Some(self.bootstrap_base_hash()),
                ..LayerState::default()
            },
        ))
    }

    fn customise(&self, stage: &Stage, tree: &Path) -> Result<(String, LayerState)> {
        let plan = self.plan;
        customise::stage_files(&plan.spec, &plan.spec_dir, tree)?;
        let script = customise::configure_script(&plan.spec, &plan.datasources, plan.family);
        self.chroot(stage, tree, "the spec's customisations", &script)?;
        self.remove_packages(stage, tree, &plan.spec.packages.remove)?;
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
        // Last, so that the repository completes the package set that the
        // [[run]] steps leave.
        let offline = &plan.spec.packages.offline;
        if !offline.is_empty() {
            let script = plan.family.offline_repo_script(offline);
            self.chroot(stage, tree, "[packages] offline", &script)?;
        }
        Ok((format!("{} run steps", plan.spec.run.len()), LayerState::default()))
    }

    /// Runs `f` with what target `target`'s stage `stage` may use.
    fn with_context<T>(
        &self,
        stage: &Stage,
        target: &dyn Target,
        consumed: &[(&'static str, PathBuf)],
        f: impl FnOnce(&StageContext) -> Result<T>,
    ) -> Result<T> {
        self.with_context_and_disk(stage, target, consumed, None, f)
    }

    fn with_context_and_disk<T>(
        &self,
        stage: &Stage,
        target: &dyn Target,
        consumed: &[(&'static str, PathBuf)],
        previous_disk: Option<&crate::previous_disk::PreviousDisk>,
        f: impl FnOnce(&StageContext) -> Result<T>,
    ) -> Result<T> {
        let chroot = |tree: &Path, name: &str, body: &str| self.chroot(stage, tree, name, body);
        let name = target.name();
        let uuid = |what: &str| derived_uuid(self.plan, name, what);
        let cx = StageContext {
            spec: &self.plan.spec,
            family: self.plan.family,
            source_date_epoch: self.plan.source_date_epoch,
            consumed: consumed.iter().cloned().collect(),
            bootstrap: &self.plan.bootstrap,
            cache: &self.cache,
            log: Some(&self.log),
            chroot: &chroot,
            uuid: &uuid,
            previous_disk,
        };
        f(&cx)
    }

    fn finalise(&self, stage: &Stage, target: &dyn Target, tree: &Path) -> Result<(String, LayerState)> {
        let plan = self.plan;
        self.with_context(stage, target, &[], |cx| target.finalise(cx, tree))?;
        self.chroot(stage, tree, "cleanup", &cleanup::script(plan.family))?;
        cleanup::reset_host_files(tree, plan.spec.hostname.as_deref())?;
        let packages = plan.family.installed_packages(tree)?;
        let count = packages.len();
        Ok((
            format!("{count} packages installed"),
            LayerState {
                packages: Some(packages),
                ..LayerState::default()
            },
        ))
    }

    /// The stages of `target` of one kind, in plan order.
    fn target_stages(&self, target: &str, pick: impl Fn(StageKind) -> bool) -> Vec<&Stage> {
        self.plan
            .stages
            .iter()
            .filter(|s| s.target.as_deref() == Some(target) && pick(s.kind))
            .collect()
    }

    /// One target's chain: finalise, then the assembly stages and the
    /// artifact (or the artifact from the cache). `consumed` are the
    /// artifacts of the targets it consumes.
    fn target(
        &self,
        target: &dyn Target,
        cust: &Layer,
        boot: &Layer,
        consumed: &[(&'static str, PathBuf)],
    ) -> Result<TargetResult> {
        let name = target.name();
        let fin_stage = *self
            .target_stages(name, |k| k == StageKind::Finalise)
            .first()
            .with_context(|| format!("internal: the plan has no finalise stage for {name}"))?;
        let fin = self.tree_stage(fin_stage, &[cust, boot], |stage, tree| {
            self.finalise(stage, target, tree)
        })?;
        let packages = fin
            .state
            .packages
            .clone()
            .context("the finalised layer does not list its packages")?;
        let embedded = Manifest::new(self.plan, self.git.clone(), packages);
        let embedded_json = serde_json::to_string_pretty(&embedded)?;

        let output = *self
            .target_stages(name, |k| matches!(k, StageKind::Output(_)))
            .first()
            .with_context(|| format!("internal: the plan has no output stage for {name}"))?;
        // What the target consumes is part of what its artifact is made of.
        let consumed_digest = consumed
            .iter()
            .map(|(t, path)| Ok(format!("{t}={}", sha512_file(path)?)))
            .collect::<Result<Vec<_>>>()?
            .join("\n");
        let key = Self::entry_key(output, &[&fin], &format!("{embedded_json}{consumed_digest}"));
        let image_stages = self.target_stages(name, |k| matches!(k, StageKind::Assemble(_)));
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
                output,
                format!("{} reused from the cache ({})", state.file_name, key.short()),
            );
            let _ = self
                .cache
                .write_record(&self.plan.name, &output.id, &self.record_image(output, &key));
            return Ok(TargetResult {
                target: name,
                image: hit.item("image"),
                state,
                _hold: Some(hit),
            });
        }
        let reason = if fin.fresh && !self.opts.no_cache {
            format!("its tree changed ({} was rebuilt)", fin_stage.id)
        } else {
            self.why_rebuilt(output, &[&fin], miss.as_ref())
        };
        let lock = self.builder_lock(&key)?;
        if lock.is_some() && !self.opts.no_cache && self.cache.exists(&key) {
            drop(lock);
            return self.target(target, cust, boot, consumed);
        }

        let base = self.work.join("targets").join(name);
        std::fs::create_dir_all(&base)?;
        // The view the artifact is made from: every layer, plus a
        // throwaway upper for the embedded manifest (it names the commit, so
        // it must not end up in a cached layer).
        let view = self.mount_view(&[&fin, cust, boot], &base, "", &embedded_json)?;
        let keeps_disk = target.patches_previous_disk() && !self.opts.no_cache;
        let (previous, _old_view, _old_layers, disk_note) = if keeps_disk {
            match self.previous_disk(name, &fin, cust, boot, &base)? {
                Ok((disk, old_view, old_layers)) => (
                    Some(disk),
                    Some(old_view),
                    old_layers,
                    "; the previous disk is patched where it can be".to_owned(),
                ),
                Err(why) => (
                    None,
                    None,
                    Vec::new(),
                    format!("; its filesystem is made from scratch: {why}"),
                ),
            }
        } else {
            (None, None, Vec::new(), String::new())
        };
        for (i, s) in image_stages.iter().copied().chain([output]).enumerate() {
            self.reporter.event(Event::StageRebuilt {
                id: s.id.clone(),
                reason: if s.id == output.id {
                    reason.clone()
                } else if i == 0 {
                    format!("the image is rebuilt: {reason}{disk_note}")
                } else {
                    format!("the image is rebuilt: {reason}")
                },
            });
        }
        let mut assembly = Assembly::default();
        for s in &image_stages {
            timed(&self.reporter, self.opts.debugger.as_ref(), s, || {
                let summary = self.with_context_and_disk(s, target, consumed, previous.as_ref(), |cx| {
                    target.assemble(cx, s.kind.title(), view.path(), &base, &mut assembly)
                });
                // Its tree is the finalised one, which the cache holds.
                let summary = self.on_stage_error(s, view.path(), Some((&fin_stage.id, false)), summary)?;
                Ok(((), summary))
            })?;
        }
        view.unmount()?;
        if let Some(disk) = &previous {
            // Not patched (the stage made a fresh disk): it is stale now.
            if assembly.raw.as_deref() != Some(disk.raw.as_path()) {
                let _ = std::fs::remove_file(&disk.raw);
            }
        }
        drop((_old_view, _old_layers));

        let previous = self.previous_image(&output.id);
        let (image, state) = timed(&self.reporter, self.opts.debugger.as_ref(), output, || {
            let (image, state, stats) =
                self.write_artifact(target, &base, &assembly, &embedded, previous.as_ref(), keeps_disk)?;
            let summary = format!("{}, {} MiB{stats}", state.file_name, state.size >> 20);
            Ok(((image, state), summary))
        })?;
        drop(previous);
        if let Some(raw) = assembly.raw.as_deref().filter(|_| keeps_disk) {
            let layers = [&fin, cust, boot].iter().map(|l| l.key.to_hex()).collect();
            if let Err(e) = crate::previous_disk::keep(
                &self.cache,
                &self.plan.name,
                name,
                raw,
                layers,
                embedded_json.clone(),
                assembly.filesystems.clone(),
            ) {
                tracing::warn!("not keeping the raw disk of {name} for the next build: {e:#}");
                let _ = std::fs::remove_file(raw);
            }
        }
        let _ = self
            .cache
            .write_record(&self.plan.name, &output.id, &self.record_image(output, &key));
        let Some(lock) = lock.filter(|_| !self.cache.exists(&key)) else {
            return Ok(TargetResult {
                target: name,
                image,
                state,
                _hold: None,
            });
        };
        let mut pending = self.cache.begin(&key, &output.id, &self.plan.name)?;
        pending.adopt("image", &image)?;
        let index = base.join("clusters.idx");
        if index.exists() {
            pending.adopt("clusters.idx", &index)?;
        }
        pending.commit(serde_json::to_value(&state)?)?;
        let hit = self.cache.hit_after_commit(&key, lock)?;
        Ok(TargetResult {
            target: name,
            image: hit.item("image"),
            state,
            _hold: Some(hit),
        })
    }

    /// Mounts the tree an artifact is made from: `layers` plus a
    /// throwaway upper (in `base`, names prefixed with `prefix`) holding
    /// the embedded manifest, with times clamped as the layers are.
    fn mount_view(&self, layers: &[&Layer], base: &Path, prefix: &str, manifest_json: &str) -> Result<Overlay> {
        let view = Overlay::mount(
            &stack(layers),
            Some((
                &base.join(format!("{prefix}upper")),
                &base.join(format!("{prefix}overlay-work")),
            )),
            &base.join(format!("{prefix}tree")),
        )?;
        write_mode(
            &view.path().join(manifest::EMBEDDED_PATH.trim_start_matches('/')),
            manifest_json,
            0o644,
        )?;
        if let Some(epoch) = self.plan.source_date_epoch {
            // The layers are clamped already: only the manifest and the
            // directories it was written into can be newer.
            let mut path = Some(Path::new(manifest::EMBEDDED_PATH.trim_start_matches('/')));
            while let Some(rel) = path {
                layers::clamp_path(&view.path().join(rel), epoch)?;
                path = rel.parent();
            }
        }
        Ok(view)
    }

    /// The raw disk `target` kept from its last image of this spec, taken
    /// into `base` with the tree it holds mounted beside the new one, or
    /// why there is none to patch.
    #[allow(clippy::type_complexity)]
    fn previous_disk(
        &self,
        target: &str,
        fin: &Layer,
        cust: &Layer,
        boot: &Layer,
        base: &Path,
    ) -> Result<std::result::Result<(crate::previous_disk::PreviousDisk, Overlay, Vec<Layer>), String>> {
        let raw = base.join("previous.raw");
        let record = match crate::previous_disk::take(&self.cache, &self.plan.name, target, &raw)? {
            Ok(record) => record,
            Err(why) => return Ok(Err(why)),
        };
        let discard = |why: String| {
            let _ = std::fs::remove_file(&raw);
            Ok(Err(why))
        };
        if self.plan.source_date_epoch.is_none() {
            return discard("the build has no SOURCE_DATE_EPOCH to stamp patched files with".to_owned());
        }
        let [old_fin, old_cust, old_boot] = record.layers.as_slice() else {
            return discard("the previous disk's record names no layers".to_owned());
        };
        if *old_boot != boot.key.to_hex() {
            return discard("the previous disk stands on another bootstrap".to_owned());
        }
        let mut old = Vec::new();
        for key in [old_fin, old_cust] {
            let found = match Hash::from_hex(key) {
                Some(k) => match self.cache.lookup(&k)? {
                    Lookup::Hit(hit) => Layer::from_hit(&self.cache, hit, k)?,
                    _ => None,
                },
                None => None,
            };
            let Some(layer) = found else {
                return discard("the layers of the previous disk are no longer cached".to_owned());
            };
            old.push(layer);
        }
        let view = self.mount_view(&[&old[0], &old[1], boot], base, "previous-", &record.manifest)?;
        let mut uppers: Vec<PathBuf> = vec![base.join("previous-upper"), base.join("upper")];
        for layer in [&old[0], &old[1], fin, cust] {
            uppers.extend(layer.dirs.iter().cloned());
        }
        let mut candidates = Vec::new();
        for upper in uppers {
            candidates.extend(layers::upper_candidates(&upper)?);
        }
        candidates.sort();
        candidates.dedup();
        Ok(Ok((
            crate::previous_disk::PreviousDisk {
                raw,
                tree: view.path().to_owned(),
                candidates,
                filesystems: record.filesystems,
            },
            view,
            old,
        )))
    }

    fn record_image(&self, stage: &Stage, key: &Hash) -> Record {
        let mut r = self.record(stage, &[]);
        r.entry = Some(key.to_hex());
        r
    }

    /// The image that output stage `stage_id` last stored, to reuse its
    /// compressed clusters (not with `--no-cache`: everything is redone).
    fn previous_image(&self, stage_id: &str) -> Option<(Hit, kiln_disk::ClusterIndex)> {
        if self.opts.no_cache {
            return None;
        }
        let record = self.cache.read_record(&self.plan.name, stage_id)?;
        let key = record.entry.as_deref().and_then(Hash::from_hex)?;
        match self.cache.lookup(&key).ok()? {
            Lookup::Hit(hit) => {
                let index = kiln_disk::ClusterIndex::load(&hit.item("clusters.idx")).ok()?;
                Some((hit, index))
            }
            _ => None,
        }
    }

    /// Writes the artifact file from the assembled raw disk (freed
    /// afterwards).
    fn write_artifact(
        &self,
        target: &dyn Target,
        base: &Path,
        disk: &Assembly,
        embedded: &Manifest,
        previous: Option<&(Hit, kiln_disk::ClusterIndex)>,
        keep_raw: bool,
    ) -> Result<(PathBuf, ImageState, String)> {
        let spec = target.artifact();
        let file_name = spec.file_name;
        let raw = disk.raw.clone().context("the target's stages made no disk")?;
        let image = base.join("image");
        let mut stats = String::new();
        match spec.format {
            ImageFormat::Qcow2 => {
                let opts = kiln_disk::Qcow2WriteOptions {
                    threads: self.threads(),
                    compress: spec.compress,
                    reuse: previous.map(|(hit, index)| kiln_disk::ReuseSource {
                        image: hit.item("image"),
                        index: index.clone(),
                    }),
                };
                let (s, index) = kiln_disk::write_qcow2(&raw, &image, &opts)
                    .with_context(|| format!("writing {file_name} as qcow2"))?;
                index
                    .save(&base.join("clusters.idx"))
                    .context("saving the image's cluster index")?;
                stats = format!(
                    " ({} clusters compressed, {} reused from the previous image, {} threads)",
                    s.compressed, s.reused, opts.threads
                );
            }
            // Assembled as the final file: moved, or copied across filesystems.
            ImageFormat::Iso | ImageFormat::Tar => {
                if std::fs::rename(&raw, &image).is_err() {
                    std::fs::copy(&raw, &image).with_context(|| format!("copying {file_name} into the cache"))?;
                }
            }
            ImageFormat::Raw | ImageFormat::Vmdk | ImageFormat::Vhd => {
                crate::targets::convert_image(&raw, &image, spec.format, spec.compress, Some(&self.log))?
            }
        }
        if !keep_raw {
            let _ = std::fs::remove_file(&raw);
        }
        let size = std::fs::metadata(&image)?.len();
        let sha512 = sha512_file(&image)?;
        let partitions = disk
            .layout
            .as_ref()
            .map(|layout| {
                layout
                    .partitions
                    .iter()
                    .map(|p| {
                        let (filesystem, uuid) = disk.filesystems.get(&p.start).cloned().unwrap_or_default();
                        PartitionInfo {
                            target: target.name().to_owned(),
                            index: p.index,
                            start: p.start,
                            size: p.size,
                            filesystem,
                            uuid,
                            partition_table: format!("{:?}", layout.table).to_lowercase(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let state = ImageState {
            file_name,
            format: spec.format.name().to_owned(),
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

    /// Copies the images out, then writes `.sha512` files, the SBOMs,
    /// `SHA512SUMS` (signed with `--sign-key`) and `manifest.json`; nothing
    /// becomes visible before everything is ready.
    fn checksums(&self, done: Vec<TargetResult>) -> Result<Vec<PathBuf>> {
        let plan = self.plan;
        let mut doc: Option<serde_json::Value> = None;
        let mut artifacts_json = Vec::new();
        let mut partitions_json = Vec::new();
        let mut extras = Vec::new();
        let mut sums = String::new();
        let mut images = Vec::new();
        let mut sides = Vec::new();
        let distribution = crate::sbom::Distribution::of(&plan.spec.base);
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
            kiln_exec::fault_point("checksums/partial")?;
            // The SBOM lists what this artifact's own tree holds (targets
            // add packages of their own).
            let packages: Vec<manifest::Package> = serde_json::from_value(st.embedded["packages"].clone())
                .with_context(|| format!("reading the package list of {}", st.file_name))?;
            let sbom_text = crate::sbom::spdx_json(&crate::sbom::SbomInput {
                artifact: &st.file_name,
                sha512: &st.sha512,
                version: &plan.version,
                distribution,
                packages: &packages,
                created: plan.source_date_epoch,
            })?;
            let sbom_name = crate::sbom::file_name(&st.file_name);
            let sbom_sha512 = hex::encode(Sha512::digest(sbom_text.as_bytes()));
            sums.push_str(&format!("{sbom_sha512}  {sbom_name}\n"));
            let sbom = PartialFile::new(self.out_dir.join(&sbom_name));
            sbom.write_all(sbom_text.as_bytes())
                .with_context(|| format!("writing {}", sbom.path().display()))?;
            doc.get_or_insert_with(|| st.embedded.clone());
            let artifact = Artifact {
                target: r.target.to_owned(),
                path: st.file_name.clone(),
                format: st.format.clone(),
                size: st.size,
                sha512: st.sha512.clone(),
                sbom: Some(manifest::FileRef {
                    path: sbom_name,
                    sha512: sbom_sha512,
                }),
            };
            if let Some(t) = plan.target(r.target) {
                extras.extend(t.manifest_extras(&artifact));
            }
            artifacts_json.push(serde_json::to_value(artifact)?);
            partitions_json.extend(
                st.partitions
                    .iter()
                    .map(|p| serde_json::to_value(p).unwrap_or_default()),
            );
            images.push(part);
            sides.push(side);
            sides.push(sbom);
        }
        let mut doc = doc.context("internal: no target produced an image")?;
        for (key, value) in extras {
            doc[key] = value;
        }
        doc["artifacts"] = serde_json::Value::Array(artifacts_json);
        if !partitions_json.is_empty() {
            doc["partitions"] = serde_json::Value::Array(partitions_json);
        }
        let sums_file = PartialFile::new(self.out_dir.join(crate::sign::SUMS));
        sums_file.write_all(sums.as_bytes())?;
        // Signed before anything is committed: a key that fails leaves the
        // output directory as it was.
        let signature = match &self.opts.sign_key {
            Some(key) => {
                let sig = key.sign(sums.as_bytes())?;
                let file = PartialFile::new(self.out_dir.join(key.signature_name()));
                file.write_all(&sig)?;
                Some(file)
            }
            None => None,
        };
        let manifest_file = PartialFile::new(self.out_dir.join("manifest.json"));
        manifest_file.write_all(serde_json::to_string_pretty(&doc)?.as_bytes())?;
        // Images first, manifest last: whatever is visible is complete.
        let mut artifacts = Vec::new();
        for p in images {
            artifacts.push(p.commit()?);
        }
        // A signature of an earlier build's SHA512SUMS would not match the
        // new one: it goes, whichever kind it is.
        for stale in [crate::sign::SSH_SIGNATURE, crate::sign::GPG_SIGNATURE] {
            let path = self.out_dir.join(stale);
            if path.exists() && signature.as_ref().is_none_or(|s| s.dest() != path) {
                std::fs::remove_file(&path).with_context(|| format!("removing the stale {}", path.display()))?;
            }
        }
        for p in sides
            .into_iter()
            .chain([sums_file])
            .chain(signature)
            .chain([manifest_file])
        {
            p.commit()?;
        }
        Ok(artifacts)
    }
}

/// A stage's tree entered through a throwaway overlay (`kiln shell`): the
/// layers stay read-only, every change lands in a temporary upper
/// directory. Unmounted, released and deleted on drop.
pub struct StageTree {
    overlay: Overlay,
    _layers: Vec<Layer>,
    _work: WorkDir,
}

impl StageTree {
    /// Where the tree is mounted (in kiln's private mount namespace).
    pub fn path(&self) -> &Path {
        self.overlay.path()
    }
}

/// Mounts the tree of `stage_id` (`bootstrap`, `customise` or
/// `<target>/finalise`) as the stage cache holds it, building the stages
/// it lacks first (reported to `reporter`, unless `--no-build`), under a
/// throwaway overlay. Call from the thread that will start the session:
/// the mount lives in the private mount namespace this enters.
pub fn stage_tree(plan: &Plan, stage_id: &str, opts: &ShellOptions, reporter: Arc<dyn Reporter>) -> Result<StageTree> {
    debug::check_tree_stage(plan, stage_id).map_err(anyhow::Error::msg)?;
    check_shell_can_start(plan, opts, is_root())?;
    let mut tools = vec!["unshare", "chroot", "sh"];
    if !opts.no_build {
        tools.extend(plan.family.host_tools());
    }
    let missing: Vec<&str> = tools.into_iter().filter(|t| kiln_exec::which(t).is_none()).collect();
    if !missing.is_empty() {
        bail!(
            "missing tools: {}; install them (see `kiln doctor`) and try again",
            missing.join(", ")
        );
    }
    layers::enter_private_mount_namespace()?;
    let cache = Cache::open(&opts.cache_dir)
        .with_context(|| format!("opening the stage cache {}", opts.cache_dir.display()))?;
    let work = WorkDir::new_in(&opts.work_dir, "kiln-shell-").context("creating the shell's work directory")?;
    let log = work.path().join("build.log");
    std::fs::write(&log, "").with_context(|| format!("creating {}", log.display()))?;
    let build_opts = BuildOptions {
        out_dir: work.path().to_owned(),
        cache_dir: opts.cache_dir.clone(),
        ..BuildOptions::default()
    };
    let run = Run {
        plan,
        opts: &build_opts,
        cache,
        reporter,
        log: log.clone(),
        work: work.path().to_owned(),
        out_dir: work.path().to_owned(),
        git: None,
        reused: std::sync::Mutex::new(Vec::new()),
        cached_only: opts.no_build,
        failed: std::sync::Mutex::new(None),
    };
    let layers = run.layers_for(stage_id, opts.kept.as_deref()).map_err(|e| {
        // The work directory goes: keep what the stages printed.
        let kept_log = opts.work_dir.join(format!("kiln-shell-{}.build.log", plan.name));
        let logged = std::fs::metadata(&log).map(|m| m.len() > 0).unwrap_or(false);
        if logged && std::fs::copy(&log, &kept_log).is_ok() {
            anyhow!("{e:#}\n(build log: {})", kept_log.display())
        } else {
            e
        }
    })?;
    let base = work.path();
    let overlay = Overlay::mount(
        &stack(&layers.iter().collect::<Vec<_>>()),
        Some((&base.join("upper"), &base.join("overlay-work"))),
        &base.join("tree"),
    )?;
    Ok(StageTree {
        overlay,
        _layers: layers,
        _work: work,
    })
}

/// What `kiln shell` checks before it creates or mounts anything: it
/// needs root, and a tree it may not build (`--no-build`, or no root to
/// build with) must be in the cache. Only the bootstrap is looked up here
/// (its entry depends on nothing below it; the stages above it are found
/// missing by the build itself, which cleans up after them).
fn check_shell_can_start(plan: &Plan, opts: &ShellOptions, root: bool) -> Result<()> {
    if root && !opts.no_build {
        return Ok(());
    }
    let spec = plan.spec_path.display();
    let cached = opts.kept.is_some() || {
        let bootstrap = plan
            .first_stage()
            .context("internal: the plan has no bootstrap stage")?;
        Cache::holds(&opts.cache_dir, &Run::entry_key(bootstrap, &[], ""))
    };
    if !cached {
        let missing = format!(
            "no cached tree: stage bootstrap of {spec} is not in the stage cache ({})",
            opts.cache_dir.display()
        );
        match (opts.no_build, root) {
            (_, true) => bail!("{missing}; build it with `kiln build {spec}`, or leave out --no-build"),
            (true, false) => bail!(
                "{missing}, and kiln shell runs as root only (it mounts the tree and chroots into it); \
                 build it with `sudo kiln build {spec}`, then run `sudo kiln shell`"
            ),
            (false, false) => bail!(
                "{missing}, and building it needs root (mmdebstrap, chroot and mounts), as entering it does; \
                 run `sudo kiln shell {spec}` (it builds the missing stages first)"
            ),
        }
    }
    if !root {
        bail!("kiln shell needs root: mounting the stage's layers and chroot need it; run it with sudo");
    }
    Ok(())
}

/// The directories of `layers`, top first, for an overlay's lowerdir.
fn stack<'a>(layers: &[&'a Layer]) -> Vec<&'a Path> {
    layers
        .iter()
        .flat_map(|l| l.dirs.iter().map(PathBuf::as_path))
        .collect()
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).filter(|e| e.path().is_file()).count())
        .unwrap_or(0)
}

/// A UUID derived from the key of the target's finalisation stage, so
/// rebuilding the same spec gives the same filesystem and partition
/// identifiers. Not from the spec hash: the finalised layer writes these
/// identifiers into the tree (fstab, grub.cfg), and another spec that
/// shares the layer's key (same tree, another artifact name or format)
/// reuses it, so its disk must carry the same identifiers.
fn derived_uuid(plan: &Plan, target: &str, what: &str) -> uuid::Uuid {
    let finalise = format!("{target}/finalise");
    let key = plan
        .stages
        .iter()
        .find(|s| s.id == finalise)
        .expect("every planned target has a finalisation stage")
        .hash;
    let h = Hasher::new("uuid")
        .hash("finalise", &key)
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
            LayerState::default(),
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

    /// The plan of a Debian bookworm spec with `targets`, in `dir`, against
    /// host sources written there.
    fn plan_in(dir: &Path, targets: &str) -> Plan {
        let apt = dir.join("apt");
        std::fs::create_dir_all(&apt).unwrap();
        std::fs::write(
            apt.join("sources.list"),
            "deb http://mirror.example/debian bookworm main\n",
        )
        .unwrap();
        let source = format!(
            "[image]\nname = \"t\"\nversion = \"1\"\n[base]\ndistro = \"debian\"\nrelease = \"bookworm\"\n{targets}"
        );
        let loaded = kiln_spec::parse_str(&source, &dir.join("spec.toml"), dir).unwrap();
        let tools = std::collections::BTreeMap::from([("mmdebstrap".to_owned(), "1.3.5".to_owned())]);
        crate::plan::plan_with_host_sources(&loaded, tools, &apt).unwrap()
    }

    /// The identifiers a finalised layer writes into the tree (fstab,
    /// grub.cfg) must be the ones the disk stage gives the filesystems,
    /// also when another spec reuses the layer: they follow the layer's
    /// key, not the spec's hash.
    #[test]
    fn derived_identifiers_follow_the_finalised_layer_not_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let plan = |targets: &str| plan_in(dir.path(), targets);
        let qcow2 = plan("[targets.disk]\nformat = \"qcow2\"\n");
        let raw = plan("[targets.disk]\nformat = \"raw\"\n");
        let console = plan("[targets.disk]\nformat = \"raw\"\nconsole = \"ttyS1,115200n8\"\n");
        assert_ne!(qcow2.spec_hash, raw.spec_hash);
        let finalise = |p: &Plan| p.stages.iter().find(|s| s.id == "disk/finalise").unwrap().hash;
        assert_eq!(
            finalise(&qcow2),
            finalise(&raw),
            "the artifact format does not change the finalised layer"
        );
        let id = |p: &Plan| derived_uuid(p, "disk", "root filesystem");
        assert_eq!(id(&qcow2), id(&raw), "a shared finalised layer, the same identifiers");
        assert_ne!(
            id(&qcow2),
            derived_uuid(&qcow2, "disk", "esp"),
            "one identifier per use"
        );
        assert_ne!(
            finalise(&console),
            finalise(&raw),
            "the console is written by the finalisation"
        );
        assert_ne!(id(&console), id(&raw), "another finalised layer, other identifiers");
    }

    /// `kiln shell`'s checks before it creates anything, for each way in:
    /// root or not, `--no-build` or not, the bootstrap cached or not.
    #[test]
    fn a_shell_that_may_not_build_needs_the_cached_tree_and_root_needs_no_cache() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan_in(dir.path(), "[targets.ovh-byol]\n");
        let cache = dir.path().join("cache");
        let opts = |no_build| ShellOptions {
            cache_dir: cache.clone(),
            work_dir: dir.path().to_owned(),
            no_build,
            kept: None,
        };
        let check = |root, no_build| check_shell_can_start(&plan, &opts(no_build), root).map_err(|e| format!("{e:#}"));
        assert_eq!(check(true, false), Ok(()), "root may build what is missing");
        for (root, no_build, says) in [
            (true, true, "or leave out --no-build"),
            (false, true, "then run `sudo kiln shell`"),
            (false, false, "building it needs root"),
        ] {
            let e = check(root, no_build).unwrap_err();
            assert!(e.starts_with("no cached tree: stage bootstrap of "), "{e}");
            assert!(e.contains(says), "root {root}, --no-build {no_build}: {e}");
        }
        let kept = ShellOptions {
            kept: Some(dir.path().to_owned()),
            ..opts(true)
        };
        assert!(
            check_shell_can_start(&plan, &kept, true).is_ok(),
            "--kept with an empty cache: the kept tree is looked at later"
        );
        assert!(!cache.exists(), "the check created the cache");

        let bootstrap = plan.stages.iter().find(|s| s.kind == StageKind::Bootstrap).unwrap();
        let entry = cache.join("stages").join(Run::entry_key(bootstrap, &[], "").to_hex());
        std::fs::create_dir_all(&entry).unwrap();
        std::fs::write(entry.join("entry.json"), "{}").unwrap();
        assert_eq!(check(true, true), Ok(()), "cached: --no-build goes on");
        for no_build in [false, true] {
            let e = check(false, no_build).unwrap_err();
            assert!(e.starts_with("kiln shell needs root"), "{e}");
        }
    }
}
