//! `kiln-fuzz`: the fuzzer `bench/fuzz.sh` drives.
//!
//! ```text
//! kiln-fuzz list
//! kiln-fuzz run TARGET SECONDS OUT_DIR [RNG_SEED]
//! kiln-fuzz replay TARGET FILE...
//! kiln-fuzz alloc-check BYTES      (allocates BYTES at once: the limit's own test)
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use kiln_fuzz::engine::{self, Options};
use kiln_fuzz::targets::{target, TARGETS};

#[global_allocator]
static ALLOC: kiln_fuzz::alloc::Bounded = kiln_fuzz::alloc::Bounded;

fn usage() -> ExitCode {
    eprintln!(
        "usage: kiln-fuzz list | run TARGET SECONDS OUT_DIR [RNG_SEED] | replay TARGET FILE...\n\
         targets: {}",
        TARGETS.iter().map(|t| t.name).collect::<Vec<_>>().join(" ")
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["list"] => {
            for t in TARGETS {
                println!("{}", t.name);
            }
            ExitCode::SUCCESS
        }
        ["run", name, seconds, out, rest @ ..] => {
            let (Some(t), Ok(seconds)) = (target(name), seconds.parse()) else {
                return usage();
            };
            let rng_seed = rest.first().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
            let out = PathBuf::from(out);
            let opts = Options {
                target: t,
                seconds,
                seeds: vec![
                    engine::corpus_dir(t.name),
                    engine::regressions_dir(t.name),
                    out.join("queue"),
                ],
                out,
                rng_seed,
            };
            let result = engine::fuzz(&opts);
            kiln_fuzz::targets::remove_scratch();
            match result {
                Ok(s) => {
                    println!(
                        "target={} seconds={:.0} execs={} corpus={} edges={} crashes={} guards={}",
                        t.name,
                        s.seconds,
                        s.execs,
                        s.corpus,
                        s.edges,
                        s.crashes,
                        kiln_fuzz::coverage::GUARDS.load(std::sync::atomic::Ordering::Relaxed)
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("kiln-fuzz: {}: {e}", opts.out.display());
                    ExitCode::FAILURE
                }
            }
        }
        ["alloc-check", bytes] => {
            let Ok(n) = bytes.parse::<usize>() else {
                return usage();
            };
            kiln_fuzz::alloc::set_running("alloc-check");
            let v = std::hint::black_box(vec![1u8; n]);
            println!("allocated {} bytes", v.len());
            ExitCode::SUCCESS
        }
        ["replay", name, files @ ..] => {
            let Some(t) = target(name) else {
                return usage();
            };
            engine::quiet_panics();
            let mut failed = false;
            for f in files {
                let data = match std::fs::read(f) {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!("{f}: {e}");
                        failed = true;
                        continue;
                    }
                };
                kiln_fuzz::alloc::set_running(&format!("{name}: {f}"));
                match engine::run_one(t, &data) {
                    Ok(()) => println!("{f}: ok"),
                    Err(msg) => {
                        println!("{f}: PANIC {msg}");
                        failed = true;
                    }
                }
            }
            kiln_fuzz::targets::remove_scratch();
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => usage(),
    }
}
