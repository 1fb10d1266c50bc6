//! Replays every committed corpus file and regression input through its
//! fuzz target, under the bounding allocator: no panic, no allocation over
//! 64 MiB (the allocator aborts the test binary, naming the input). Part of
//! `cargo test --workspace`; the fuzzing itself is `bench/fuzz.sh`.

use kiln_fuzz::engine::{committed_inputs, run_one};
use kiln_fuzz::targets::TARGETS;

#[global_allocator]
static ALLOC: kiln_fuzz::alloc::Bounded = kiln_fuzz::alloc::Bounded;

#[test]
fn every_target_has_a_seed_corpus() {
    for t in TARGETS {
        let n = kiln_fuzz::files_in(&kiln_fuzz::engine::corpus_dir(t.name)).len();
        assert!(n > 0, "fuzz/corpus/{} has no seed inputs", t.name);
    }
}

#[test]
fn corpora_and_regressions_replay_without_panics() {
    kiln_fuzz::engine::quiet_panics();
    let mut failures = Vec::new();
    let mut runs = 0;
    for t in TARGETS {
        for f in committed_inputs(t.name) {
            let data = std::fs::read(&f).unwrap();
            kiln_fuzz::alloc::set_running(&format!("{}: {}", t.name, f.display()));
            runs += 1;
            if let Err(msg) = run_one(t, &data) {
                failures.push(format!("{}: {}: {msg}", t.name, f.display()));
            }
        }
    }
    kiln_fuzz::targets::remove_scratch();
    assert!(runs > 0);
    assert!(failures.is_empty(), "panics:\n{}", failures.join("\n"));
}

/// The fuzzer binary under test, as `crates/kiln/tests/cli.rs` runs kiln.
fn kiln_fuzz(args: &[&str]) -> std::process::Output {
    #[allow(clippy::disallowed_methods)] // the binary under test
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-fuzz"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    out
}

/// The limit is real: the fuzzer binary, which runs under the same
/// allocator, dies naming the run when one allocation is over 64 MiB.
#[test]
fn an_oversize_allocation_ends_the_run() {
    let small = kiln_fuzz(&["alloc-check", "1048576"]);
    assert!(small.status.success());
    assert!(String::from_utf8_lossy(&small.stdout).contains("allocated 1048576 bytes"));
    let over = (kiln_fuzz::alloc::LIMIT + 1).to_string();
    let big = kiln_fuzz(&["alloc-check", &over]);
    let stderr = String::from_utf8_lossy(&big.stderr);
    assert!(!big.status.success());
    assert!(
        stderr.contains("exceeds the 64 MiB limit (running alloc-check)"),
        "{stderr}"
    );
}
