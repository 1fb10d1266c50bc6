//! Dispatch: one function per subcommand, each a thin call into a library.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::cli::{BuildArgs, CheckArgs, Cli, Command, InspectArgs, LogFormat, PlanArgs, ValidateArgs};
use crate::exit::{usage, Exit, Usage};
use crate::output::{out, outln};
use crate::progress::{self, Verbosity};

mod boot;
mod cache;
mod deploy;
mod docs;
mod doctor;
mod oci;
mod publish;
mod reproducible;
mod seed;
mod serve;
mod shell;
mod verify;

pub(crate) fn run(cli: Cli) -> Result<Exit> {
    match cli.command {
        Command::Build(args) => build(args),
        Command::Plan(args) => plan(args),
        Command::Shell(args) => shell::run(args),
        Command::Validate(args) => validate(args),
        Command::Check(args) => check(args),
        Command::Inspect(args) => inspect(args),
        Command::Verify(args) => verify::run(args),
        Command::Seed(args) => seed::run(args),
        Command::Boot(args) => boot::run(args),
        Command::Ssh(args) => boot::ssh(args),
        Command::Deploy(cmd) => deploy::run(cmd),
        Command::Publish(cmd) => publish::run(cmd),
        Command::Serve(args) => serve::run(args),
        Command::Pull(args) => oci::pull(args),
        Command::Cache(cmd) => cache::run(cmd),
        Command::Schema => {
            outln!("{}", serde_json::to_string_pretty(&kiln_spec::json_schema())?)?;
            Ok(Exit::Success)
        }
        Command::Doctor => doctor::run(),
        Command::Completion(args) => docs::completion(args),
        Command::Man(args) => docs::man(args),
    }
}

fn build(args: BuildArgs) -> Result<Exit> {
    let started = Instant::now();
    let mut loaded = kiln_spec::load(&args.spec)?;
    // A release is checked (its version, the git tree, the record it will
    // join) before any work, and its version replaces the spec's.
    let release = match &args.release {
        Some(version) => {
            let tree = kiln_build::release::tree(&loaded.dir, &args.out);
            if tree.is_none() {
                tracing::warn!(
                    "warning: {} is not in a git repository (or git is missing): the release records no commit",
                    args.spec.display()
                );
            }
            let version =
                kiln_build::release::release_version(version, tree.as_ref(), args.allow_dirty).map_err(usage)?;
            kiln_build::release::Releases::load(&args.out).map_err(usage)?;
            loaded.spec.image.version = version;
            Some(tree)
        }
        None => None,
    };
    let plan = kiln_build::plan(&loaded, kiln_build::tool_versions()).map_err(usage)?;
    let opts = kiln_build::BuildOptions {
        out_dir: args.out.clone(),
        work_dir: args.work_dir.clone(),
        keep_work: args.keep_work,
        cache_dir: args.cache_dir.clone().unwrap_or_else(kiln_build::cache::default_dir),
        no_cache: args.no_cache || args.verify_reproducible,
        threads: args.threads.unwrap_or(0),
        on_error: args.on_error.into(),
        debugger: (args.step || args.on_error == crate::cli::OnError::Shell)
            .then(|| Arc::new(shell::Console::new(args.step)) as Arc<dyn kiln_build::Debugger>),
        sign_key: args.sign_key.as_deref().map(kiln_build::sign::SignKey::parse),
    };
    if let Some(key) = &opts.sign_key {
        key.check().map_err(usage)?;
    }
    if plan.source_date_epoch.is_none() && args.log_format == LogFormat::Human {
        tracing::info!("note: SOURCE_DATE_EPOCH: {}", plan.source_date_epoch_origin);
    }
    let result = if args.verify_reproducible {
        reproducible::verify(&plan, &opts, &args, started)
    } else {
        build_once(&plan, &opts, &args, release, started)
    };
    if let Some(max) = args.cache_max_size {
        cache::trim(&opts.cache_dir, max);
    }
    result
}

fn build_once(
    plan: &kiln_build::Plan,
    opts: &kiln_build::BuildOptions,
    args: &BuildArgs,
    release: Option<Option<kiln_build::release::Tree>>,
    started: Instant,
) -> Result<Exit> {
    let reporter = reporter(plan, args);
    let result = kiln_build::build(plan, opts, Arc::clone(&reporter));
    progress::finish(args.log_format, result.is_ok(), started.elapsed());
    let output = result?;
    let record = match &release {
        Some(tree) => {
            let entry = kiln_build::release::entry(&output.manifest, tree.as_ref())?;
            Some(kiln_build::release::Releases::append(&args.out, entry)?)
        }
        None => None,
    };
    if args.log_format == LogFormat::Human {
        for a in &output.artifacts {
            outln!("built {}", a.display())?;
        }
        outln!("manifest {}", output.manifest.display())?;
        if let Some(record) = record {
            outln!("release {} recorded in {}", plan.version, record.display())?;
        }
    }
    Ok(Exit::Success)
}

fn reporter(plan: &kiln_build::Plan, args: &BuildArgs) -> Arc<dyn kiln_build::Reporter> {
    match args.log_format {
        LogFormat::Human if progress::verbosity() == Verbosity::Quiet => Arc::new(progress::Silent),
        LogFormat::Human => Arc::new(progress::Bars::new(plan, args.explain)),
        LogFormat::Json => Arc::new(progress::JsonLines::stdout()),
    }
}

/// Loads the spec and checks its names against the archive (unless
/// `offline`) and the host's tz and locale databases; what could not be
/// checked is a warning.
fn load_checked(spec: &std::path::Path, offline: bool) -> Result<kiln_spec::LoadedSpec> {
    let loaded = kiln_spec::load(spec)?;
    for w in kiln_build::targets::security::private_key_warnings(&loaded) {
        tracing::warn!("{w}");
    }
    let (catalog, warnings) = kiln_build::names::gather(&loaded, &kiln_build::names::NameSources::host(offline));
    for w in warnings {
        tracing::warn!("{w}");
    }
    loaded.check_names(&catalog)?;
    Ok(loaded)
}

fn validate(args: ValidateArgs) -> Result<Exit> {
    load_checked(&args.spec, args.offline)?;
    let skipped = if args.offline {
        " (offline: release and package names not checked)"
    } else {
        ""
    };
    outln!("{}: valid{skipped}", args.spec.display())?;
    Ok(Exit::Success)
}

fn plan(args: PlanArgs) -> Result<Exit> {
    let loaded = load_checked(&args.spec, args.offline)?;
    let plan = kiln_build::plan(&loaded, kiln_build::tool_versions()).map_err(usage)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&plan)?)?;
        return Ok(Exit::Success);
    }
    outln!(
        "plan for {} {} (spec {})",
        plan.name,
        plan.version,
        plan.spec_hash.short()
    )?;
    outln!(
        "SOURCE_DATE_EPOCH: {} ({})",
        plan.source_date_epoch
            .map(|t| t.to_string())
            .unwrap_or_else(|| "unset".into()),
        plan.source_date_epoch_origin
    )?;
    for (i, stage) in plan.stages.iter().enumerate() {
        outln!("\n{}. {}  [{}]", i + 1, stage.id, stage.hash.short())?;
        for a in &stage.actions {
            outln!("   - {a}")?;
        }
    }
    Ok(Exit::Success)
}

fn check(args: CheckArgs) -> Result<Exit> {
    let check = kiln_build::targets::kind(&args.target)
        .and_then(|k| k.check)
        .ok_or_else(|| Usage::msg(format!("target {} has no contract to check", args.target)))?;
    require_input(&args.image)?;
    let results = check(
        &args.image,
        &kiln_build::targets::CheckOptions {
            ram: args.ram,
            efi_bootloader_path: args.efi_bootloader_path.clone(),
        },
    )
    .with_context(|| format!("checking {}", args.image.display()))?;
    let target = args.target.as_str();
    let failed = results.iter().filter(|r| !r.passed).count();
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "image": args.image,
                "target": target,
                "passed": failed == 0,
                "rules": results,
            }))?
        )?;
    } else {
        for r in &results {
            outln!("{} {:<28} {}", if r.passed { "PASS" } else { "FAIL" }, r.id, r.reason)?;
        }
        outln!(
            "\n{}: {} of {} rules passed",
            if failed == 0 {
                format!("image meets the {target} contract")
            } else {
                format!("image does NOT meet the {target} contract")
            },
            results.len() - failed,
            results.len()
        )?;
    }
    Ok(Exit::verdict(failed == 0))
}

fn inspect(args: InspectArgs) -> Result<Exit> {
    require_input(&args.image)?;
    let what = || format!("inspecting {}", args.image.display());
    // An ISO (even a hybrid one, which also has a partition table) is read
    // as a file system of its own: boot catalog, live files, config drive.
    if kiln_disk::isoread::is_iso(&args.image).with_context(what)? {
        let report = kiln_disk::inspect_iso(&args.image).with_context(what)?;
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&report)?)?;
        } else {
            out!("{report}")?;
        }
        return Ok(Exit::Success);
    }
    let report = kiln_disk::inspect::inspect(&args.image).with_context(what)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        out!("{report}")?;
    }
    Ok(Exit::Success)
}

/// A file named on the command line that does not exist is a usage error
/// (exit 2), not a failed run.
fn require_input(path: &std::path::Path) -> Result<()> {
    if path.exists() {
        Ok(())
    } else {
        Err(Usage::msg(format!("{}: no such file", path.display())).into())
    }
}
