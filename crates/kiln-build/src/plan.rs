//! The stage graph: resolves a spec into concrete stages, each with a content
//! hash of its inputs, without running anything but version probes.
//!
//! A stage's hash covers its own inputs and its parent's hash, so changing an
//! input changes the hash of that stage and of every stage after it, and
//! nothing before it: exactly the invalidation a stage cache needs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use anyhow::{Context, Result};
use kiln_spec::{LoadedSpec, Spec};
use serde::Serialize;

use crate::bootstrap::{BootstrapRequest, ExtraSource};
use crate::distro::{self, DistroFamily, Role};
use crate::hash::{file_hash, Hash, Hasher};
use crate::targets::{Target, TargetInputs, TargetStage, REGISTRY};

/// Bumped when kiln changes what a stage produces for the same inputs.
const PIPELINE_VERSION: &str = "1";

/// What the finalise stage records of each installed package; changed when
/// it records more, so that only the stages from finalise on are rebuilt.
const PACKAGE_FIELDS: &str = "name version arch";

/// One input of a stage, named for `--explain` and the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct StageInput {
    pub name: String,
    pub hash: Hash,
}

impl StageInput {
    /// An input whose value is `value` as canonical JSON.
    pub fn json(name: &str, value: &impl Serialize) -> StageInput {
        StageInput {
            name: name.to_owned(),
            hash: Hasher::new(name).json("v", value).finish(),
        }
    }

    /// An input whose value is the text `value`.
    pub fn text(name: &str, value: &str) -> StageInput {
        StageInput {
            name: name.to_owned(),
            hash: Hasher::new(name).str("v", value).finish(),
        }
    }
}

/// What a stage is. A target's assembly and output stages carry the name
/// the target gives them (`filesystem`, `disk`, `convert`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    Bootstrap,
    /// A distribution's disk image as the first tree (`[base] image`).
    Import,
    Customise,
    /// A target's change of the tree (a layer of its own).
    Finalise,
    /// A step that builds a target's artifact from its finalised tree.
    Assemble(&'static str),
    /// The step that writes a target's artifact file.
    Output(&'static str),
    Checksums,
}

impl StageKind {
    pub fn title(self) -> &'static str {
        match self {
            StageKind::Bootstrap => "bootstrap",
            StageKind::Import => "import",
            StageKind::Customise => "customise",
            StageKind::Finalise => "finalise",
            StageKind::Assemble(name) | StageKind::Output(name) => name,
            StageKind::Checksums => "checksums",
        }
    }
}

impl Serialize for StageKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.title())
    }
}

/// A node of the stage graph.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    /// Unique id, e.g. `bootstrap` or `ovh-byol/filesystem`.
    pub id: String,
    pub kind: StageKind,
    /// The target this stage belongs to, for per-target stages.
    pub target: Option<String>,
    /// The stages whose outputs this one consumes.
    pub parents: Vec<String>,
    /// What the stage will do, one line each, for `kiln plan`.
    pub actions: Vec<String>,
    pub inputs: Vec<StageInput>,
    pub hash: Hash,
}

/// A resolved build: the stages and what each needs.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub name: String,
    pub version: String,
    pub spec_path: PathBuf,
    pub spec_dir: PathBuf,
    pub spec_hash: Hash,
    pub tools: BTreeMap<String, String>,
    pub bootstrap: BootstrapRequest,
    pub datasources: Vec<String>,
    /// Timestamp for everything the build stamps (reproducible output).
    pub source_date_epoch: Option<u64>,
    /// Where `source_date_epoch` came from, for `kiln plan`.
    pub source_date_epoch_origin: String,
    /// The spec's targets, in [`REGISTRY`] order.
    #[serde(serialize_with = "describe_targets")]
    pub targets: Vec<Arc<dyn Target>>,
    pub stages: Vec<Stage>,
    #[serde(skip)]
    pub spec: Spec,
    /// The family of `[base] distro`.
    #[serde(skip)]
    pub family: &'static dyn DistroFamily,
    /// `[base] image` with its SHA-256 (looked up in its `SHA256SUMS`
    /// when the spec names a list): the import stage's input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_image: Option<ResolvedImage>,
}

/// A base image and the SHA-256 it must have.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedImage {
    pub image: kiln_spec::BaseImage,
    /// `None` when the spec names a checksum list that could not be read
    /// while planning: the import looks it up again (and fails clearly if
    /// it still cannot), and the stage is keyed by the list's URL.
    pub sha256: Option<String>,
    /// Why the list could not be read, for `kiln plan`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unresolved: Option<String>,
}

fn describe_targets<S: serde::Serializer>(targets: &[Arc<dyn Target>], s: S) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(targets.len()))?;
    for t in targets {
        map.serialize_entry(t.name(), &t.describe())?;
    }
    map.end()
}

impl Plan {
    pub fn stage(&self, id: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.id == id)
    }

    /// The stage that makes the first tree: `bootstrap`, or `import` for
    /// a spec with a base image.
    pub fn first_stage(&self) -> Option<&Stage> {
        self.stages
            .iter()
            .find(|s| matches!(s.kind, StageKind::Bootstrap | StageKind::Import))
    }

    /// The targets this plan builds, in build order.
    pub fn target_names(&self) -> Vec<&str> {
        self.targets.iter().map(|t| t.name()).collect()
    }

    /// The target named `name`.
    pub fn target(&self, name: &str) -> Option<&Arc<dyn Target>> {
        self.targets.iter().find(|t| t.name() == name)
    }
}

/// Versions of the tools whose output lands in the image; part of the hashes.
pub fn tool_versions() -> BTreeMap<String, String> {
    let probe = |tool: &str, args: &[&str]| -> String {
        match kiln_exec::Cmd::new(tool).args(args).run() {
            Ok(out) => {
                let text = if out.stdout.is_empty() {
                    out.tail
                } else {
                    out.stdout_string()
                };
                text.lines().next().unwrap_or("").trim().to_owned()
            }
            Err(_) => "missing".to_owned(),
        }
    };
    const PROBES: [(&str, &str); 4] = [
        ("mmdebstrap", "--version"),
        ("mke2fs", "-V"),
        ("mkfs.xfs", "-V"),
        ("qemu-img", "--version"),
    ];
    // At once: mmdebstrap alone takes a tenth of a second to start.
    let mut versions: BTreeMap<String, String> = std::thread::scope(|s| {
        let running: Vec<_> = PROBES
            .iter()
            .map(|&(tool, arg)| s.spawn(move || (tool.to_owned(), probe(tool, &[arg]))))
            .collect();
        running
            .into_iter()
            .map(|t| t.join().expect("a version probe panicked"))
            .collect()
    });
    versions.insert("kiln".to_owned(), env!("CARGO_PKG_VERSION").to_owned());
    versions
}

/// Resolves `loaded` into a plan, reading the host's apt sources for the
/// default mirror and hashing every input file.
pub fn plan(loaded: &LoadedSpec, tools: BTreeMap<String, String>) -> Result<Plan> {
    plan_with_host_sources(loaded, tools, Path::new("/etc/apt"))
}

/// [`plan`] with the host's apt configuration read from `etc_apt` instead
/// of `/etc/apt` (tests pin the default mirror this way).
pub fn plan_with_host_sources(loaded: &LoadedSpec, tools: BTreeMap<String, String>, etc_apt: &Path) -> Result<Plan> {
    plan_with_targets(loaded, tools, etc_apt, Vec::new())
}

/// [`plan_with_host_sources`] with `extra` targets after the registry's.
fn plan_with_targets(
    loaded: &LoadedSpec,
    tools: BTreeMap<String, String>,
    etc_apt: &Path,
    extra: Vec<Arc<dyn Target>>,
) -> Result<Plan> {
    let spec = &loaded.spec;
    let dir = &loaded.dir;
    let family = distro::family(spec.base.distro());
    let sources = family.sources(&spec.base, etc_apt)?;
    let (source_date_epoch, source_date_epoch_origin) = resolve_source_date_epoch(spec, &loaded.path);
    let inputs = TargetInputs {
        spec,
        family,
        source_date_epoch,
        dir,
    };
    let mut targets: Vec<Arc<dyn Target>> = Vec::new();
    for kind in REGISTRY {
        if let Some(t) = (kind.resolve)(&inputs).with_context(|| format!("planning [targets.{}]", kind.name))? {
            targets.push(t);
        }
    }
    targets.extend(extra);

    // The package set: the spec's, the kernel, and what targets and
    // customisations need.
    let mut include: Vec<String> = spec.packages.install.clone();
    include.extend(distro::packages_for(family, &[Role::Base]));
    match &spec.kernel.package {
        Some(kernel) => include.push(kernel.clone()),
        None => include.extend(distro::packages_for(family, &[Role::Kernel])),
    }
    let mut download = Vec::new();
    let mut download_dir = String::new();
    for t in &targets {
        include.extend(t.packages());
        if let Some((dir, kept)) = t.kept_packages() {
            download_dir = dir.to_owned();
            download.extend(kept);
        }
    }
    if spec.users.iter().any(|u| u.sudo) {
        include.extend(distro::packages_for(family, &[Role::Sudo]));
    }
    if spec
        .locale
        .as_deref()
        .is_some_and(|l| !matches!(l, "C.UTF-8" | "C" | "POSIX"))
    {
        include.extend(distro::packages_for(family, &[Role::Locales]));
    }
    if spec.timezone.is_some() {
        include.extend(distro::packages_for(family, &[Role::TimeZones]));
    }
    include.retain(|p| !spec.packages.remove.contains(p));
    include.sort();
    include.dedup();

    let apt = spec.base.apt();
    let extra_sources = apt
        .map(|a| a.sources.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|s| ExtraSource {
            name: s.name.clone(),
            deb822: format!(
                "Types: deb\nURIs: {}\nSuites: {}\nComponents: {}\n{}",
                s.uri,
                s.suites.join(" "),
                if s.components.is_empty() {
                    "main".to_owned()
                } else {
                    s.components.join(" ")
                },
                s.key
                    .as_ref()
                    .map(|k| format!(
                        "Signed-By: /etc/apt/keyrings/{}\n",
                        Path::new(k)
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default()
                    ))
                    .unwrap_or_default()
            ),
            key: s.key.as_ref().map(|k| dir.join(k)),
        })
        .collect();

    let bootstrap = BootstrapRequest {
        distro: spec.base.distro(),
        release: spec.base.release().unwrap_or("rolling").to_owned(),
        variant: match (&spec.base, apt) {
            (_, Some(a)) => a.variant.clone().unwrap_or_else(|| "important".to_owned()),
            (kiln_spec::Base::Rhel(r), None) => serde_json::to_value(r.distribution)?
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            _ => String::new(),
        },
        architecture: spec.base.architecture().to_owned(),
        sources,
        include,
        download,
        download_dir,
        extra_sources,
        snapshot: apt.is_some_and(|a| a.snapshot.is_some()),
        repos: family.repositories(&spec.base, dir),
        image: family.bootstrap_image(&spec.base),
    };

    let datasources = if !spec.cloud_init.datasources.is_empty() {
        spec.cloud_init.datasources.clone()
    } else {
        // The union of what the targets need, in a stable order.
        let mut list: Vec<String> = Vec::new();
        for d in targets.iter().flat_map(|t| t.datasources()) {
            if !list.iter().any(|x| x == d) {
                list.push((*d).to_owned());
            }
        }
        list
    };

    // Input hashes.
    let tool = |name: &str| tools.get(name).cloned().unwrap_or_default();
    let mut file_inputs = Vec::new();
    for f in &spec.files {
        let h = file_hash(&dir.join(&f.src)).with_context(|| format!("reading [[files]] src {}", f.src))?;
        file_inputs.push(StageInput {
            name: format!("file {}", f.src),
            hash: h,
        });
    }
    for r in &spec.run {
        if let Some(file) = &r.file {
            let h = file_hash(&dir.join(file)).with_context(|| format!("reading [[run]] file {file}"))?;
            file_inputs.push(StageInput {
                name: format!("run file {file}"),
                hash: h,
            });
        }
    }
    for s in apt.map(|a| a.sources.as_slice()).unwrap_or_default() {
        if let Some(k) = &s.key {
            let h = file_hash(&dir.join(k)).with_context(|| format!("reading apt key {k}"))?;
            file_inputs.push(StageInput {
                name: format!("apt key {k}"),
                hash: h,
            });
        }
    }

    for r in &bootstrap.repos {
        if let Some(k) = r.key.as_deref().filter(|k| !k.contains("://")) {
            let h =
                file_hash(Path::new(k)).with_context(|| format!("reading the key of repository {}: {k}", r.name))?;
            file_inputs.push(StageInput {
                name: format!("repository key {}", r.name),
                hash: h,
            });
        }
    }

    let mut stages: Vec<Stage> = Vec::new();
    let push = |stages: &mut Vec<Stage>,
                id: String,
                kind: StageKind,
                target: Option<&str>,
                actions: Vec<String>,
                inputs: Vec<StageInput>,
                consumed: &[&str]| {
        // Each target's chain hangs off the shared customised tree, the
        // checksums stage depends on every target's image, and a target
        // that consumes others' artifacts writes its own after theirs.
        let mut parents: Vec<&Stage> = match kind {
            StageKind::Finalise => stages.iter().filter(|s| s.kind == StageKind::Customise).collect(),
            StageKind::Checksums => stages
                .iter()
                .filter(|s| matches!(s.kind, StageKind::Output(_)))
                .collect(),
            _ => stages.last().into_iter().collect(),
        };
        if let StageKind::Output(_) = kind {
            parents.extend(stages.iter().filter(|s| {
                matches!(s.kind, StageKind::Output(_)) && s.target.as_deref().is_some_and(|t| consumed.contains(&t))
            }));
        }
        let mut h = Hasher::new(kind.title());
        h.str("pipeline", PIPELINE_VERSION);
        for p in &parents {
            h.hash("parent", &p.hash);
        }
        let parents: Vec<String> = parents.iter().map(|p| p.id.clone()).collect();
        for i in &inputs {
            h.str("input", &i.name).hash("value", &i.hash);
        }
        stages.push(Stage {
            id,
            kind,
            target: target.map(str::to_owned),
            parents,
            actions,
            inputs,
            hash: h.finish(),
        });
    };
    let json_input = |name: &str, v: &dyn erased::Json| StageInput {
        name: name.to_owned(),
        hash: v.hash(name),
    };

    let base_image = match spec.base.image() {
        None => None,
        Some(image) => {
            // The stage is keyed by the image's checksum, so a list is
            // read now (once, without retries: planning must not hang).
            let looked_up =
                match image.sha256() {
                    Some(h) => Ok(h),
                    None => crate::download::Downloader::new(Path::new("")).once().expected_sha256(
                        &crate::download::Request {
                            url: &image.url,
                            sha256: None,
                            checksum_url: image.checksum_url.as_deref(),
                            file_name: image.file_name(),
                        },
                    ),
                };
            let (sha256, unresolved) = match looked_up {
                Ok(h) => (Some(h), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            };
            Some(ResolvedImage {
                image: image.clone(),
                sha256,
                unresolved,
            })
        }
    };
    match &base_image {
        Some(resolved) => {
            let cleaned: Vec<&str> = crate::import::CLEAN_RECIPE.iter().map(|(p, _)| *p).collect();
            push(
                &mut stages,
                "import".into(),
                StageKind::Import,
                None,
                vec![
                    match (&resolved.sha256, &resolved.unresolved) {
                        (Some(h), _) => format!(
                            "download {} (sha256:{h}) into the download cache, or take it from there",
                            resolved.image.url
                        ),
                        (None, why) => format!(
                            "download {}; its checksum could not be looked up now ({}): the build looks it up again",
                            resolved.image.url,
                            why.as_deref().unwrap_or("no checksum")
                        ),
                    },
                    format!("extract the tree of its root filesystem; remove {}", cleaned.join(", ")),
                    format!(
                        "install {} packages with the {} family's tools: {}",
                        bootstrap.include.len(),
                        family.name(),
                        bootstrap.include.join(" ")
                    ),
                ],
                vec![
                    // The whole table (as for a bootstrap): the targets
                    // derive their UUIDs from the spec, so a layer must
                    // not outlive a change of it.
                    json_input("[base]", &spec.base),
                    match &resolved.sha256 {
                        Some(h) => StageInput::text("image sha256", h),
                        None => StageInput::text(
                            "image checksum list",
                            &format!(
                                "{} {}",
                                resolved.image.checksum_url.as_deref().unwrap_or(""),
                                resolved.image.file_name()
                            ),
                        ),
                    },
                    json_input("cleaning", &crate::import::CLEAN_RECIPE),
                    json_input("bootstrap request", &bootstrap),
                    json_input("SOURCE_DATE_EPOCH", &source_date_epoch),
                ]
                .into_iter()
                .chain(
                    file_inputs
                        .iter()
                        .filter(|i| i.name.starts_with("apt key") || i.name.starts_with("repository key"))
                        .cloned(),
                )
                .collect(),
                &[],
            );
        }
        None => {
            push(
                &mut stages,
                "bootstrap".into(),
                StageKind::Bootstrap,
                None,
                vec![
                    family.bootstrap_summary(&bootstrap),
                    format!(
                        "install {} packages: {}",
                        bootstrap.include.len(),
                        bootstrap.include.join(" ")
                    ),
                    if bootstrap.download.is_empty() {
                        "download no extra .deb files".to_owned()
                    } else {
                        format!(
                            "keep .deb files of {} in {}",
                            bootstrap.download.join(", "),
                            bootstrap.download_dir
                        )
                    },
                ],
                vec![
                    json_input("[base]", &spec.base),
                    json_input("bootstrap request", &bootstrap),
                    StageInput::text(family.bootstrap_tool(), &tool(family.bootstrap_tool())),
                    json_input("SOURCE_DATE_EPOCH", &source_date_epoch),
                ]
                .into_iter()
                .chain(
                    file_inputs
                        .iter()
                        .filter(|i| i.name.starts_with("apt key") || i.name.starts_with("repository key"))
                        .cloned(),
                )
                .collect(),
                &[],
            );
        }
    }

    let mut actions = Vec::new();
    if !spec.files.is_empty() || !spec.directories.is_empty() {
        actions.push(format!(
            "place {} files and {} directories",
            spec.files.len(),
            spec.directories.len()
        ));
    }
    if !spec.users.is_empty() {
        actions.push(format!(
            "create users {}",
            spec.users
                .iter()
                .map(|u| u.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    actions.push(format!(
        "hostname {}, time zone {}, locale {}",
        spec.hostname.as_deref().unwrap_or("(from cloud-init)"),
        spec.timezone.as_deref().unwrap_or("Etc/UTC"),
        spec.locale.as_deref().unwrap_or("C.UTF-8")
    ));
    if !datasources.is_empty() {
        actions.push(format!("cloud-init datasources: {}", datasources.join(", ")));
    }
    for (i, r) in spec.run.iter().enumerate() {
        actions.push(format!("run {}", run_name(r, i)));
    }
    if !spec.kernel.modules.is_empty() || !spec.kernel.sysctl.is_empty() || !spec.limits.is_empty() {
        actions.push(format!(
            "host profile: load {} kernel modules, {} sysctl settings, {} limits",
            spec.kernel.modules.len(),
            spec.kernel.sysctl.len(),
            spec.limits.len()
        ));
    }
    if !spec.packages.remove.is_empty() {
        actions.push(format!("purge {}", spec.packages.remove.join(" ")));
    }
    if !spec.packages.offline.is_empty() {
        actions.push(format!(
            "local repository {} with {} and what they need",
            crate::distro::OFFLINE_REPO,
            spec.packages.offline.join(" ")
        ));
    }
    push(
        &mut stages,
        "customise".into(),
        StageKind::Customise,
        None,
        actions,
        vec![
            json_input("[[files]]", &spec.files),
            json_input("[[directories]]", &spec.directories),
            json_input("[[run]]", &spec.run),
            json_input("[[users]]", &spec.users),
            json_input("[root]", &spec.root),
            json_input(
                "sshd PermitRootLogin (security contract)",
                &crate::targets::security::root_login(spec),
            ),
            json_input(
                "hostname/timezone/locale",
                &(&spec.hostname, &spec.timezone, &spec.locale),
            ),
            json_input("[services]", &spec.services),
            json_input("[cloud_init]", &(&spec.cloud_init, &datasources)),
            json_input("[packages] remove", &spec.packages.remove),
        ]
        .into_iter()
        // Only when set, so that specs without them keep their hashes.
        .chain(
            (!spec.kernel.modules.is_empty() || !spec.kernel.sysctl.is_empty() || !spec.limits.is_empty()).then(|| {
                json_input(
                    "[kernel] modules and sysctl, [[limits]]",
                    &(&spec.kernel.modules, &spec.kernel.sysctl, &spec.limits),
                )
            }),
        )
        .chain((!spec.packages.offline.is_empty()).then(|| json_input("[packages] offline", &spec.packages.offline)))
        .chain(file_inputs.iter().filter(|i| !i.name.starts_with("apt key")).cloned())
        .collect(),
        &[],
    );

    for t in &targets {
        let name = t.name();
        let chain = t.stages(spec, &tools);
        let steps = std::iter::once((StageKind::Finalise, chain.finalise))
            .chain(chain.assemble.into_iter().map(|s| (StageKind::Assemble(s.name), s)))
            .chain([(StageKind::Output(chain.output.name), chain.output)]);
        for (
            kind,
            TargetStage {
                name: step,
                actions,
                mut inputs,
            },
        ) in steps
        {
            if kind == StageKind::Finalise {
                // The finalised layer's state holds the package list that the
                // manifest and the SBOM are made from; a layer cached before
                // the list had what they need now must not be reused.
                inputs.push(StageInput {
                    name: "package list fields".to_owned(),
                    hash: Hasher::new("package list fields").str("v", PACKAGE_FIELDS).finish(),
                });
            }
            push(
                &mut stages,
                format!("{name}/{step}"),
                kind,
                Some(name),
                actions,
                inputs,
                t.consumes(),
            );
        }
    }
    push(
        &mut stages,
        "checksums".into(),
        StageKind::Checksums,
        None,
        vec![
            "write <file>.sha512, <file>.spdx.json (SBOM), SHA512SUMS (signed with --sign-key) and manifest.json"
                .to_owned(),
        ],
        vec![],
        &[],
    );

    let mut spec_hasher = Hasher::new("spec");
    spec_hasher.json("spec", spec);
    for i in &file_inputs {
        spec_hasher.str("file", &i.name).hash("content", &i.hash);
    }

    Ok(Plan {
        name: spec.image.name.clone(),
        version: spec.image.version.clone(),
        spec_path: loaded.path.clone(),
        spec_dir: dir.clone(),
        spec_hash: spec_hasher.finish(),
        tools,
        bootstrap,
        datasources,
        source_date_epoch,
        source_date_epoch_origin,
        targets,
        stages,
        spec: spec.clone(),
        family,
        base_image,
    })
}

/// `SOURCE_DATE_EPOCH` for the build: `[image] source_date_epoch`, else the
/// `SOURCE_DATE_EPOCH` environment variable, else the time of the last
/// commit touching the spec's directory (so unrelated commits elsewhere in
/// the repository keep the cache warm). `None` outside a repository: the
/// build then is not reproducible, and says so.
pub fn resolve_source_date_epoch(spec: &Spec, spec_path: &Path) -> (Option<u64>, String) {
    if let Some(t) = spec.image.source_date_epoch {
        return (Some(t), "[image] source_date_epoch".to_owned());
    }
    if let Some(t) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return (Some(t), "the SOURCE_DATE_EPOCH environment variable".to_owned());
    }
    let dir = spec_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let commit_time = kiln_exec::Cmd::new("git")
        .arg("-C")
        .arg(dir)
        .args(["log", "-1", "--format=%ct", "--", "."])
        .run_string()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    match commit_time {
        Some(t) => (Some(t), "the last commit touching the spec's directory".to_owned()),
        None => (
            None,
            "none (not in a git repository and no source_date_epoch): the output is not reproducible".to_owned(),
        ),
    }
}

/// The name of a `[[run]]` step for progress and errors.
pub fn run_name(r: &kiln_spec::RunStep, index: usize) -> String {
    match (&r.name, &r.file) {
        (Some(n), _) => format!("\"{n}\""),
        (None, Some(f)) => f.clone(),
        (None, None) => format!("#{}", index + 1),
    }
}

/// Object-safe hashing of serialisable values for stage inputs.
mod erased {
    use crate::hash::{Hash, Hasher};

    pub(super) trait Json {
        fn hash(&self, name: &str) -> Hash;
    }

    impl<T: serde::Serialize> Json for T {
        fn hash(&self, name: &str) -> Hash {
            Hasher::new(name).json("v", self).finish()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("apt")).unwrap();
            std::fs::write(
                dir.path().join("apt/sources.list"),
                "deb http://mirror.example/debian bookworm main\n",
            )
            .unwrap();
            std::fs::write(dir.path().join("motd"), "hello\n").unwrap();
            Fixture { dir }
        }

        fn plan(&self, extra_top: &str, target: &str) -> Plan {
            let source = format!(
                "{extra_top}\n[image]\nname = \"t\"\nversion = \"1\"\n[base]\ndistro = \"debian\"\nrelease = \"bookworm\"\n\
                 [[files]]\nsrc = \"motd\"\ndest = \"/etc/motd\"\n[targets.ovh-byol]\n{target}\n"
            );
            let loaded = kiln_spec::parse_str(&source, &self.dir.path().join("spec.toml"), self.dir.path())
                .unwrap_or_else(|e| panic!("{e}"));
            let tools = BTreeMap::from([("mmdebstrap".to_owned(), "1.3.5".to_owned())]);
            plan_with_host_sources(&loaded, tools, &self.dir.path().join("apt")).unwrap()
        }
    }

    fn hashes(p: &Plan) -> Vec<(String, Hash)> {
        p.stages.iter().map(|s| (s.id.clone(), s.hash)).collect()
    }

    /// The index of the first stage whose hash differs.
    fn first_change(a: &Plan, b: &Plan) -> Option<String> {
        let (a, b) = (hashes(a), hashes(b));
        assert_eq!(a.len(), b.len());
        let first = a.iter().zip(&b).position(|(x, y)| x.1 != y.1)?;
        // Once a stage changes, every later one in its chain changes too.
        for i in first..a.len() {
            assert_ne!(a[i].1, b[i].1, "{} kept its hash after {} changed", a[i].0, a[first].0);
        }
        Some(a[first].0.clone())
    }

    #[test]
    fn unchanged_inputs_keep_every_hash() {
        let f = Fixture::new();
        assert_eq!(hashes(&f.plan("", "")), hashes(&f.plan("", "")));
    }

    #[test]
    fn a_change_invalidates_its_stage_and_everything_after() {
        let f = Fixture::new();
        let base = f.plan("", "");
        assert_eq!(
            first_change(&base, &f.plan("", "size = \"4GiB\"")).as_deref(),
            Some("ovh-byol/filesystem")
        );
        assert_eq!(
            first_change(&base, &f.plan("", "compress = false")).as_deref(),
            Some("ovh-byol/convert")
        );
        assert_eq!(
            first_change(&base, &f.plan("", "partition_table = \"mbr\"")).as_deref(),
            Some("ovh-byol/disk")
        );
        assert_eq!(
            first_change(&base, &f.plan("", "bootloader_id = \"kiln\"")).as_deref(),
            Some("ovh-byol/finalise")
        );
        assert_eq!(
            first_change(&base, &f.plan("hostname = \"box\"", "")).as_deref(),
            Some("customise")
        );

        std::fs::write(f.dir.path().join("motd"), "changed\n").unwrap();
        assert_eq!(
            first_change(&base, &f.plan("", "")).as_deref(),
            Some("customise"),
            "file content is an input"
        );
    }

    #[test]
    fn packages_and_tools_change_the_bootstrap_hash() {
        let f = Fixture::new();
        let base = f.plan("", "");
        let mut other_tools = base.tools.clone();
        other_tools.insert("mmdebstrap".into(), "1.4.0".into());
        let source = std::fs::read_to_string(f.dir.path().join("motd")).unwrap();
        assert_eq!(source, "hello\n");
        let loaded = kiln_spec::parse_str(
            "[image]\nname = \"t\"\nversion = \"1\"\n[base]\ndistro = \"debian\"\nrelease = \"bookworm\"\n\
             [[files]]\nsrc = \"motd\"\ndest = \"/etc/motd\"\n[targets.ovh-byol]\n",
            &f.dir.path().join("spec.toml"),
            f.dir.path(),
        )
        .unwrap();
        let newer = plan_with_host_sources(&loaded, other_tools, &f.dir.path().join("apt")).unwrap();
        assert_eq!(first_change(&base, &newer).as_deref(), Some("bootstrap"));
    }

    /// A target that carries another target's artifact, as a USB
    /// installer carries a disk image.
    #[derive(Debug)]
    struct Carrier;

    impl Target for Carrier {
        fn name(&self) -> &'static str {
            "carrier"
        }
        fn packages(&self) -> Vec<String> {
            vec!["xorriso".into()]
        }
        fn datasources(&self) -> &'static [&'static str] {
            &[]
        }
        fn tools(&self) -> Vec<&'static str> {
            vec![]
        }
        fn stages(&self, _: &Spec, _: &BTreeMap<String, String>) -> crate::targets::TargetStages {
            let stage = |name| TargetStage {
                name,
                actions: vec![],
                inputs: vec![],
            };
            crate::targets::TargetStages {
                finalise: stage("finalise"),
                assemble: vec![stage("medium")],
                output: stage("write"),
            }
        }
        fn finalise(&self, _: &crate::targets::StageContext, _: &Path) -> Result<()> {
            Ok(())
        }
        fn assemble(
            &self,
            _: &crate::targets::StageContext,
            _: &str,
            _: &Path,
            _: &Path,
            _: &mut crate::targets::Assembly,
        ) -> Result<String> {
            Ok(String::new())
        }
        fn artifact(&self) -> crate::targets::ArtifactSpec {
            crate::targets::ArtifactSpec {
                file_name: "carrier.raw".into(),
                format: crate::targets::ImageFormat::Raw,
                compress: false,
            }
        }
        fn consumes(&self) -> &'static [&'static str] {
            &["ovh-byol"]
        }
        fn describe(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
    }

    #[test]
    fn a_target_that_consumes_another_writes_its_artifact_after_it() {
        let f = Fixture::new();
        let loaded = kiln_spec::parse_str(
            "[image]\nname = \"t\"\nversion = \"1\"\n[base]\ndistro = \"debian\"\nrelease = \"bookworm\"\n[targets.ovh-byol]\n",
            &f.dir.path().join("spec.toml"),
            f.dir.path(),
        )
        .unwrap();
        let tools = BTreeMap::new();
        let apt = f.dir.path().join("apt");
        let p = plan_with_targets(&loaded, tools, &apt, vec![Arc::new(Carrier)]).unwrap();
        assert_eq!(p.target_names(), ["ovh-byol", "carrier"]);
        let write = p.stage("carrier/write").unwrap();
        assert_eq!(write.kind, StageKind::Output("write"));
        assert_eq!(write.parents, ["carrier/medium", "ovh-byol/convert"]);
        assert_eq!(p.stage("carrier/finalise").unwrap().parents, ["customise"]);
        assert_eq!(
            p.stage("checksums").unwrap().parents,
            ["ovh-byol/convert", "carrier/write"]
        );
        assert!(p.bootstrap.include.iter().any(|x| x == "xorriso"));
    }

    #[test]
    fn the_package_set_includes_what_the_target_needs() {
        let f = Fixture::new();
        let p = f.plan("", "");
        for pkg in [
            "cloud-init",
            "mdadm",
            "grub-pc-bin",
            "grub-efi-amd64-bin",
            "linux-image-amd64",
            "ucf",
        ] {
            assert!(p.bootstrap.include.iter().any(|x| x == pkg), "{pkg} missing");
        }
        assert_eq!(p.bootstrap.download, ["grub-pc", "grub-efi-amd64"]);
        assert_eq!(
            p.target("ovh-byol").unwrap().efi_bootloader_path().as_deref(),
            Some("\\efi\\debian\\grubx64.efi")
        );
        assert_eq!(p.target_names(), ["ovh-byol"]);
    }
}
