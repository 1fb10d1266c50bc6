//! Helpers shared by this crate's tests: deterministic pseudo-random data,
//! sparse files, and running the oracle tools.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use kiln_exec::Cmd;

/// Deterministic bytes (xorshift), so failures reproduce.
pub(crate) fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Creates a sparse file of `size` bytes.
pub(crate) fn sparse_file(path: &Path, size: u64) {
    File::create(path).unwrap().set_len(size).unwrap();
}

pub(crate) fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(bytes, offset)
        .unwrap();
}

/// Runs a tool and returns stdout; panics with the tool's error otherwise.
pub(crate) fn run<I, S>(tool: &str, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Cmd::new(tool).args(args).run_string().unwrap_or_else(|e| panic!("{e}"))
}

/// Converts `raw` to qcow2 at `out` with extra `qemu-img convert` options.
pub(crate) fn to_qcow2(raw: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    args.extend_from_slice(extra);
    args.push(raw.to_str().unwrap());
    args.push(out.to_str().unwrap());
    run("qemu-img", args);
}

/// An error and all its causes, as `anyhow`'s `{:#}` prints them.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
