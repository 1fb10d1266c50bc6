//! `kiln cache ls | gc | rm`: what the stage cache holds, and trimming it.

use anyhow::{bail, Result};
use kiln_build::cache::{Cache, Listed};

use crate::cli::{CacheCommand, CacheDirArg};
use crate::exit::{Exit, Usage};
use crate::output::outln;

pub(crate) fn run(cmd: CacheCommand) -> Result<Exit> {
    match cmd {
        CacheCommand::Ls(dir) => {
            let cache = open(&dir)?;
            let entries = cache.list()?;
            outln!(
                "{:<12}  {:<20}  {:<24}  {:>9}  {:<10}  state",
                "key",
                "stage",
                "spec",
                "size",
                "last used"
            )?;
            for l in &entries {
                print_entry(l)?;
            }
            let total: u64 = entries.iter().map(|l| l.entry.size()).sum();
            outln!(
                "\n{} entries, {} in {}",
                entries.len(),
                human(total),
                cache.root().join("stages").display()
            )?;
            Ok(Exit::Success)
        }
        CacheCommand::Gc(args) => {
            let cache = open(&args.dir)?;
            let (removed, left) = cache.gc(args.max_size)?;
            for l in &removed {
                outln!(
                    "removed {} {} ({})",
                    short(&l.entry.key),
                    l.entry.stage,
                    human(l.entry.size())
                )?;
            }
            outln!(
                "{} entries removed; {} of stage entries left",
                removed.len(),
                human(left)
            )?;
            if left > args.max_size {
                outln!(
                    "(still above {}: the rest is in use by running builds)",
                    human(args.max_size)
                )?;
            }
            Ok(Exit::Success)
        }
        CacheCommand::Rm(args) => {
            if args.keys.is_empty() && !args.all {
                bail!(Usage::msg(
                    "name the entries to remove (key prefixes from `kiln cache ls`) or pass --all"
                ));
            }
            let cache = open(&args.dir)?;
            let prefixes: Vec<Option<&str>> = if args.all {
                vec![None]
            } else {
                args.keys.iter().map(|k| Some(k.as_str())).collect()
            };
            let mut failed = false;
            for prefix in prefixes {
                let (removed, busy) = cache.remove(prefix)?;
                if removed.is_empty() && busy.is_empty() {
                    if let Some(p) = prefix {
                        eprintln!("no cache entry starts with {p}");
                        failed = true;
                    }
                }
                for l in &removed {
                    outln!("removed {} {}", short(&l.entry.key), l.entry.stage)?;
                }
                for l in &busy {
                    outln!(
                        "kept {} {}: in use by a running build",
                        short(&l.entry.key),
                        l.entry.stage
                    )?;
                }
            }
            Ok(Exit::verdict(!failed))
        }
    }
}

/// `kiln build --cache-max-size`: trims the cache after a build. A failure
/// to trim is a warning; the build's own result stands.
pub(crate) fn trim(dir: &std::path::Path, max_size: u64) {
    let trimmed = Cache::open(dir.to_path_buf()).and_then(|cache| cache.gc(max_size));
    match trimmed {
        Ok((removed, left)) if !removed.is_empty() => {
            let freed: u64 = removed.iter().map(|l| l.entry.size()).sum();
            tracing::info!(
                "cache: removed {} least recently used entries ({}) to stay under {}; {} left",
                removed.len(),
                human(freed),
                human(max_size),
                human(left)
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("warning: trimming the stage cache in {}: {e:#}", dir.display()),
    }
}

fn open(dir: &CacheDirArg) -> Result<Cache> {
    Cache::open(dir.cache_dir.clone().unwrap_or_else(kiln_build::cache::default_dir))
}

fn print_entry(l: &Listed) -> Result<()> {
    let ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs().saturating_sub(l.last_used))
        .unwrap_or(0);
    outln!(
        "{:<12}  {:<20}  {:<24}  {:>9}  {:<10}  {}",
        short(&l.entry.key),
        l.entry.stage,
        l.entry.spec,
        human(l.entry.size()),
        match ago {
            0..60 => "just now".to_owned(),
            60..3600 => format!("{} min ago", ago / 60),
            3600..86400 => format!("{} h ago", ago / 3600),
            _ => format!("{} d ago", ago / 86400),
        },
        if l.in_use { "in use" } else { "" }
    )
}

fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}
