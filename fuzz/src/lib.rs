//! Fuzzing kiln's parsers of untrusted bytes.
//!
//! [`targets`] holds one function per reader (disk images, partition
//! tables, filesystems, ISO, FAT, specs, OVH storage JSON, checksum
//! sidecars, HTTP responses and headers, the serial console); [`alloc`] the
//! allocator that fails a run on any allocation over 64 MiB; [`engine`] the
//! mutation fuzzer that `bench/fuzz.sh` runs (coverage-guided when built
//! with the `coverage` feature and sancov instrumentation, see
//! [`coverage`]). The corpora under `fuzz/corpus/<target>/` and the crash
//! inputs under `fuzz/regressions/<target>/` are replayed by
//! `tests/replay.rs` in every `cargo test`.

pub mod alloc;
pub mod coverage;
pub mod engine;
pub mod targets;

use std::path::{Path, PathBuf};

/// The fuzz crate's directory (where `corpus/` and `regressions/` are).
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files of `dir`, sorted; none when it does not exist.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}
