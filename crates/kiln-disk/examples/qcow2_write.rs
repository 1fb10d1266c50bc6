//! Converts a raw disk to qcow2 with kiln's writer; used by
//! `bench/compress.sh`. Prints the statistics as JSON on stdout.
//!
//!   qcow2_write RAW OUT [--threads N] [--uncompressed] [--index-out PATH]
//!               [--reuse OLD_IMAGE OLD_INDEX]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use kiln_disk::{write_qcow2, ClusterIndex, Qcow2WriteOptions, ReuseSource};

type Failure = Box<dyn std::error::Error>;

const USAGE: &str =
    "usage: qcow2_write RAW OUT [--threads N] [--uncompressed] [--index-out PATH] [--reuse OLD_IMAGE OLD_INDEX]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut cause = e.source();
            while let Some(c) = cause {
                msg.push_str(&format!(": {c}"));
                cause = c.source();
            }
            eprintln!("qcow2_write: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Failure> {
    let mut args = std::env::args_os().skip(1);
    let mut opts = Qcow2WriteOptions::default();
    let mut index_out = None;
    let mut paths = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = |what: &str| args.next().ok_or_else(|| format!("{what} needs a value; {USAGE}"));
        match arg.to_str() {
            Some("--threads") => {
                opts.threads = value("--threads")?
                    .to_str()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--threads needs a number")?
            }
            Some("--uncompressed") => opts.compress = false,
            Some("--index-out") => index_out = Some(PathBuf::from(value("--index-out")?)),
            Some("--reuse") => {
                let image = PathBuf::from(value("--reuse")?);
                let index = ClusterIndex::load(&PathBuf::from(value("--reuse")?))?;
                opts.reuse = Some(ReuseSource { image, index });
            }
            Some(flag) if flag.starts_with("--") => return Err(format!("unknown option {flag}; {USAGE}").into()),
            _ => paths.push(PathBuf::from(arg)),
        }
    }
    let [raw, out] = <[PathBuf; 2]>::try_from(paths).map_err(|_| USAGE)?;
    let started = Instant::now();
    let (stats, index) = write_qcow2(&raw, &out, &opts)?;
    eprintln!(
        "wrote {} in {:.2}s with {} thread(s)",
        out.display(),
        started.elapsed().as_secs_f64(),
        opts.threads
    );
    if let Some(path) = index_out {
        index.save(&path)?;
    }
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}
