//! `kiln build --verify-reproducible`: two builds without the stage cache
//! (the package cache is shared, so both install the same packages), then a
//! byte comparison of every image; on a difference, the first differing
//! file inside the image is named.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::cli::{BuildArgs, LogFormat};
use crate::exit::{Exit, Usage};
use crate::output::outln;
use crate::progress;

pub(crate) fn verify(
    plan: &kiln_build::Plan,
    opts: &kiln_build::BuildOptions,
    args: &BuildArgs,
    started: Instant,
) -> Result<Exit> {
    if plan.source_date_epoch.is_none() {
        anyhow::bail!(Usage::msg(
            "--verify-reproducible needs a SOURCE_DATE_EPOCH: set `source_date_epoch` in [image], \
             export SOURCE_DATE_EPOCH, or build from a git repository"
        ));
    }
    std::fs::create_dir_all(&opts.out_dir)?;
    let second_dir = kiln_exec::WorkDir::new_in(&opts.out_dir, ".kiln-reproducible-")?;
    let mut outputs = Vec::new();
    for (round, out_dir) in [opts.out_dir.clone(), second_dir.path().to_owned()]
        .into_iter()
        .enumerate()
    {
        if args.log_format == LogFormat::Human {
            tracing::info!(
                "==> build {} of 2 (no stage cache) into {}",
                round + 1,
                out_dir.display()
            );
        }
        let round_opts = kiln_build::BuildOptions {
            out_dir,
            no_cache: true,
            ..opts.clone()
        };
        let reporter = super::reporter(plan, args);
        let result = kiln_build::build(plan, &round_opts, Arc::clone(&reporter));
        if let Err(e) = &result {
            progress::finish(args.log_format, false, started.elapsed());
            return Err(anyhow::anyhow!("{e:#}"));
        }
        outputs.push(result?);
    }
    progress::finish(args.log_format, true, started.elapsed());
    let mut same = true;
    for (a, b) in outputs[0].artifacts.iter().zip(&outputs[1].artifacts) {
        let name = a.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if files_equal(a, b)? {
            outln!("reproducible: {name} is byte-identical in both builds")?;
            continue;
        }
        same = false;
        let why = match kiln_disk::first_difference(a, b) {
            Ok(Some(d)) => d.to_string(),
            Ok(None) => "the disk contents are identical; the image files differ in their container format".to_owned(),
            Err(e) => format!("could not compare the contents: {e}"),
        };
        outln!("NOT reproducible: {name} differs between the two builds: {why}")?;
    }
    // The SBOMs carry the images' checksums and the package lists: they
    // must come out byte-identical too.
    for (a, b) in outputs[0].artifacts.iter().zip(&outputs[1].artifacts) {
        let name = kiln_build::sbom::file_name(&a.file_name().unwrap_or_default().to_string_lossy());
        if files_equal(&a.with_file_name(&name), &b.with_file_name(&name))? {
            outln!("reproducible: {name} is byte-identical in both builds")?;
        } else {
            same = false;
            outln!("NOT reproducible: {name} differs between the two builds")?;
        }
    }
    Ok(Exit::verdict(same))
}

fn files_equal(a: &std::path::Path, b: &std::path::Path) -> Result<bool> {
    use std::io::Read;
    let open = |p: &std::path::Path| std::fs::File::open(p).with_context(|| format!("opening {}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}
