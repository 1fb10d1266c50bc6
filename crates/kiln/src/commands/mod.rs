//! Dispatch: one function per subcommand, each a thin call into a library.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::cli::{BuildArgs, CheckArgs, Cli, Command, InspectArgs, LogFormat, PlanArgs, ValidateArgs};
use crate::progress;

mod boot;
mod cache;
mod deploy;
mod reproducible;
mod seed;

pub(crate) fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Build(args) => build(args),
        Command::Plan(args) => plan(args),
        Command::Validate(args) => validate(args),
        Command::Check(args) => check(args),
        Command::Inspect(args) => inspect(args),
        Command::Seed(args) => seed::run(args),
        Command::Boot(args) => boot::run(args),
        Command::Deploy(cmd) => deploy::run(cmd, cli.verbose),
        Command::Cache(cmd) => cache::run(cmd),
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&kiln_spec::json_schema())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor => Ok(doctor()),
    }
}

fn load_plan(spec: &std::path::Path) -> Result<kiln_build::Plan> {
    let loaded = kiln_spec::load(spec)?;
    kiln_build::plan(&loaded, kiln_build::tool_versions())
}

fn build(args: BuildArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let plan = load_plan(&args.spec)?;
    let opts = kiln_build::BuildOptions {
        out_dir: args.out.clone(),
        work_dir: args.work_dir.clone(),
        keep_work: args.keep_work,
        cache_dir: args.cache_dir.clone().unwrap_or_else(kiln_build::cache::default_dir),
        no_cache: args.no_cache || args.verify_reproducible,
        threads: args.threads.unwrap_or(0),
    };
    if plan.source_date_epoch.is_none() && args.log_format == LogFormat::Human {
        eprintln!("note: SOURCE_DATE_EPOCH: {}", plan.source_date_epoch_origin);
    }
    if args.verify_reproducible {
        return reproducible::verify(&plan, &opts, &args, started);
    }
    let reporter = reporter(&plan, &args);
    let result = kiln_build::build(&plan, &opts, Arc::clone(&reporter));
    progress::finish(args.log_format, result.is_ok(), started.elapsed());
    let output = result?;
    if args.log_format == LogFormat::Human {
        for a in &output.artifacts {
            println!("built {}", a.display());
        }
        println!("manifest {}", output.manifest.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn reporter(plan: &kiln_build::Plan, args: &BuildArgs) -> Arc<dyn kiln_build::Reporter> {
    match args.log_format {
        LogFormat::Human => Arc::new(progress::Bars::new(plan, args.explain)),
        LogFormat::Json => Arc::new(progress::JsonLines),
    }
}

/// Loads the spec and checks its names against the archive (unless
/// `offline`) and the host's tz and locale databases; what could not be
/// checked is a warning.
fn load_checked(spec: &std::path::Path, offline: bool) -> Result<kiln_spec::LoadedSpec> {
    let loaded = kiln_spec::load(spec)?;
    let (catalog, warnings) = kiln_build::names::gather(&loaded, &kiln_build::names::NameSources::host(offline));
    for w in warnings {
        eprintln!("warning: {w}");
    }
    loaded.check_names(&catalog)?;
    Ok(loaded)
}

fn validate(args: ValidateArgs) -> Result<ExitCode> {
    load_checked(&args.spec, args.offline)?;
    let skipped = if args.offline {
        " (offline: release and package names not checked)"
    } else {
        ""
    };
    println!("{}: valid{skipped}", args.spec.display());
    Ok(ExitCode::SUCCESS)
}

fn plan(args: PlanArgs) -> Result<ExitCode> {
    let loaded = load_checked(&args.spec, args.offline)?;
    let plan = kiln_build::plan(&loaded, kiln_build::tool_versions())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "plan for {} {} (spec {})",
        plan.name,
        plan.version,
        plan.spec_hash.short()
    );
    println!(
        "SOURCE_DATE_EPOCH: {} ({})",
        plan.source_date_epoch
            .map(|t| t.to_string())
            .unwrap_or_else(|| "unset".into()),
        plan.source_date_epoch_origin
    );
    for (i, stage) in plan.stages.iter().enumerate() {
        println!("\n{}. {}  [{}]", i + 1, stage.id, stage.hash.short());
        for a in &stage.actions {
            println!("   - {a}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check(args: CheckArgs) -> Result<ExitCode> {
    let check = kiln_build::targets::kind(&args.target)
        .and_then(|k| k.check)
        .with_context(|| format!("target {} has no contract to check", args.target))?;
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
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "image": args.image,
                "target": target,
                "passed": failed == 0,
                "rules": results,
            }))?
        );
    } else {
        for r in &results {
            println!("{} {:<28} {}", if r.passed { "PASS" } else { "FAIL" }, r.id, r.reason);
        }
        println!(
            "\n{}: {} of {} rules passed",
            if failed == 0 {
                format!("image meets the {target} contract")
            } else {
                format!("image does NOT meet the {target} contract")
            },
            results.len() - failed,
            results.len()
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn inspect(args: InspectArgs) -> Result<ExitCode> {
    let report =
        kiln_disk::inspect::inspect(&args.image).with_context(|| format!("inspecting {}", args.image.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}

fn doctor() -> ExitCode {
    let mut missing_build = 0;
    println!("{:<12} {:<8} {:<14} used for", "tool", "status", "package");
    for t in kiln_exec::TOOLS {
        let found = kiln_exec::which(t.name);
        if found.is_none() && !t.test_only {
            missing_build += 1;
        }
        println!(
            "{:<12} {:<8} {:<14} {}{}",
            t.name,
            if found.is_some() { "found" } else { "MISSING" },
            t.package,
            t.purpose,
            if t.test_only { " (tests only)" } else { "" }
        );
    }
    if missing_build == 0 {
        println!("\nall tools kiln build needs are installed");
        ExitCode::SUCCESS
    } else {
        println!("\n{missing_build} tool(s) kiln build needs are missing: apt-get install the packages above (or run scripts/install-deps.sh)");
        ExitCode::from(1)
    }
}
