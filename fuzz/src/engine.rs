//! The mutation fuzzer: starts from the seed corpus, applies stacked random
//! mutations (bit flips, interesting integers, block copies, splices with
//! other inputs, the target's tokens), runs the target in-process, and keeps
//! every input that reaches new code (when [`crate::coverage`] is on).
//!
//! A panic is caught, saved under `OUT/crashes/` and counted, and the run
//! goes on. What cannot be caught (an oversize allocation, a stack
//! overflow, a run longer than [`TIMEOUT`]) ends the process; the input is
//! then in `OUT/current`, and `bench/fuzz.sh` files it as a crash and starts
//! the fuzzer again for the rest of the time.
//!
//! Hand-written rather than `cargo afl`/`cargo fuzz`: those need a nightly
//! compiler or AFL++ built from source against a matching LLVM, which CI and
//! this machine do not have; this runs on the stable toolchain.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::coverage;
use crate::targets::Target;

/// Longest a single run may take before it counts as a hang.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// What one fuzzing session did.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub execs: u64,
    pub seconds: f64,
    pub corpus: usize,
    /// Distinct panics (by message and place) found.
    pub crashes: usize,
    /// Coverage counters reached (0 without coverage).
    pub edges: usize,
}

pub struct Options {
    pub target: &'static Target,
    pub seconds: u64,
    /// Directories whose files seed the corpus.
    pub seeds: Vec<PathBuf>,
    /// Where `queue/`, `crashes/` and `current` go.
    pub out: PathBuf,
    pub rng_seed: u64,
}

struct Entry {
    data: Vec<u8>,
    /// 64-byte blocks holding a nonzero byte: mutations aim there first, so
    /// an image's metadata is hit rather than its zeros.
    hot: Vec<u32>,
}

impl Entry {
    fn new(data: Vec<u8>) -> Entry {
        let hot = data
            .chunks(64)
            .enumerate()
            .filter(|(_, c)| c.iter().any(|&b| b != 0))
            .map(|(i, _)| i as u32)
            .collect();
        Entry { data, hot }
    }
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `input` through `target`; `Err(message)` when it panicked.
pub fn run_one(target: &Target, input: &[u8]) -> Result<(), String> {
    LAST_PANIC.with(|p| p.borrow_mut().take());
    let result = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    result.map_err(|_| {
        LAST_PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| "panic without a message".to_owned())
    })
}

/// Records panics' messages and places instead of printing them.
pub fn quiet_panics() {
    panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info.location().map(|l| l.to_string()).unwrap_or_default();
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{msg} at {at}")));
    }));
}

fn now_ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64 + 1
}

/// Fuzzes `opts.target` for `opts.seconds`.
pub fn fuzz(opts: &Options) -> std::io::Result<Stats> {
    let target = opts.target;
    let queue = opts.out.join("queue");
    let crashes = opts.out.join("crashes");
    std::fs::create_dir_all(&queue)?;
    std::fs::create_dir_all(&crashes)?;
    let current = File::create(opts.out.join("current"))?;
    quiet_panics();

    // The watchdog: a run longer than TIMEOUT is a hang.
    let started = Instant::now();
    let running_since = Arc::new(AtomicU64::new(0));
    {
        let running_since = running_since.clone();
        let name = target.name;
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let since = running_since.load(Ordering::Relaxed);
            if since != 0 && now_ms(started).saturating_sub(since) > TIMEOUT.as_millis() as u64 {
                eprintln!("kiln-fuzz: {name}: one run took over {TIMEOUT:?}: a hang; the input is in `current`");
                std::process::abort();
            }
        });
    }

    let mut rng = fastrand::Rng::with_seed(opts.rng_seed);
    let mut corpus: Vec<Entry> = Vec::new();
    for dir in &opts.seeds {
        for f in crate::files_in(dir) {
            let mut data = std::fs::read(&f)?;
            data.truncate(target.max_len);
            corpus.push(Entry::new(data));
        }
    }
    if corpus.is_empty() {
        corpus.push(Entry::new(Vec::new()));
    }

    let mut virgin = vec![0u8; coverage::MAP_SIZE];
    let mut found: BTreeSet<String> = BTreeSet::new();
    let mut stats = Stats::default();
    let deadline = started + Duration::from_secs(opts.seconds);
    let mut next_report = started + Duration::from_secs(30);
    let mut next_stats = started + Duration::from_secs(5);
    let stats_file = opts.out.join("stats");
    let write_stats = |execs: u64, corpus: usize, virgin: &[u8], crashes: usize| {
        let line = format!(
            "execs={execs} seconds={:.0} corpus={corpus} edges={} crashes={crashes}\n",
            started.elapsed().as_secs_f64(),
            virgin.iter().filter(|&&v| v != 0).count()
        );
        std::fs::write(&stats_file, line)
    };
    write_stats(0, 0, &[], 0)?;
    let seeds = corpus.len();
    let mut i = 0usize;

    loop {
        let input: Vec<u8> = if i < seeds {
            corpus[i].data.clone()
        } else {
            if Instant::now() >= deadline {
                break;
            }
            // Newer finds are picked more often.
            let pick = if rng.bool() && corpus.len() > seeds {
                rng.usize(seeds..corpus.len())
            } else {
                rng.usize(..corpus.len())
            };
            mutate(&mut rng, &corpus, pick, target)
        };
        i += 1;

        current.set_len(0)?;
        current.write_all_at(&input, 0)?;
        coverage::reset();
        crate::alloc::set_running(target.name);
        running_since.store(now_ms(started), Ordering::Relaxed);
        let result = run_one(target, &input);
        running_since.store(0, Ordering::Relaxed);
        stats.execs += 1;

        if let Err(msg) = result {
            let name = format!("{:016x}", fnv(&input));
            if found.insert(msg.clone()) {
                eprintln!("kiln-fuzz: {}: crash {name}: {msg}", target.name);
            }
            std::fs::write(crashes.join(&name), &input)?;
            std::fs::write(crashes.join(format!("{name}.txt")), format!("{msg}\n"))?;
            continue;
        }

        if coverage::enabled() && new_coverage(&mut virgin) && i > seeds {
            std::fs::write(queue.join(format!("{:016x}", fnv(&input))), &input)?;
            corpus.push(Entry::new(input));
        }

        if Instant::now() >= next_stats {
            next_stats += Duration::from_secs(5);
            write_stats(stats.execs, corpus.len(), &virgin, found.len())?;
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(30);
            let _ = writeln!(
                std::io::stderr(),
                "kiln-fuzz: {}: {:.0} s, {} execs, corpus {}, edges {}, crashes {}",
                target.name,
                started.elapsed().as_secs_f64(),
                stats.execs,
                corpus.len(),
                virgin.iter().filter(|&&v| v != 0).count(),
                found.len()
            );
        }
    }
    stats.seconds = started.elapsed().as_secs_f64();
    stats.corpus = corpus.len();
    stats.crashes = found.len();
    stats.edges = virgin.iter().filter(|&&v| v != 0).count();
    write_stats(stats.execs, stats.corpus, &virgin, stats.crashes)?;
    Ok(stats)
}

/// AFL's hit-count buckets.
fn bucket(n: u8) -> u8 {
    match n {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => 4,
        4..=7 => 8,
        8..=15 => 16,
        16..=31 => 32,
        32..=127 => 64,
        _ => 128,
    }
}

/// Merges this run's counters into `virgin`; whether anything was new.
fn new_coverage(virgin: &mut [u8]) -> bool {
    let mut new = false;
    for (i, w) in coverage::counters().enumerate() {
        if w == 0 {
            continue;
        }
        for (j, &count) in w.to_le_bytes().iter().enumerate() {
            let b = bucket(count);
            let v = &mut virgin[i * 8 + j];
            if b & !*v != 0 {
                *v |= b;
                new = true;
            }
        }
    }
    new
}

/// A name for an input (FNV-1a; not a security hash, just a file name).
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x200,
    0x1000,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

fn position(rng: &mut fastrand::Rng, e: &Entry, len: usize) -> usize {
    if !e.hot.is_empty() && rng.u8(..4) != 0 {
        let at = e.hot[rng.usize(..e.hot.len())] as usize * 64 + rng.usize(..64);
        if at < len {
            return at;
        }
    }
    rng.usize(..len)
}

/// A mutant of `corpus[pick]`: 1 to 16 stacked mutations.
fn mutate(rng: &mut fastrand::Rng, corpus: &[Entry], pick: usize, target: &Target) -> Vec<u8> {
    let e = &corpus[pick];
    let mut d = e.data.clone();
    let rounds = 1 << rng.u32(..5);
    for _ in 0..rounds {
        if d.is_empty() {
            d.push(rng.u8(..));
            continue;
        }
        let len = d.len();
        match rng.u8(..14) {
            0 => {
                let at = position(rng, e, len);
                d[at] ^= 1 << rng.u8(..8);
            }
            1 => {
                let at = position(rng, e, len);
                d[at] = rng.u8(..);
            }
            2..=4 => {
                // An interesting integer, 1/2/4/8 bytes, either endianness.
                let width = 1 << rng.u32(..4);
                let at = position(rng, e, len);
                let v = INTERESTING[rng.usize(..INTERESTING.len())];
                let bytes = if rng.bool() { v.to_le_bytes() } else { v.to_be_bytes() };
                let src = if rng.bool() {
                    &bytes[..width]
                } else {
                    &bytes[8 - width..]
                };
                let n = width.min(len - at);
                d[at..at + n].copy_from_slice(&src[..n]);
            }
            5 => {
                // Add or subtract a little from a byte or a word.
                let at = position(rng, e, len);
                let delta = rng.u8(1..36);
                if rng.bool() {
                    d[at] = d[at].wrapping_add(delta);
                } else {
                    d[at] = d[at].wrapping_sub(delta);
                }
            }
            6 => {
                // Delete a block.
                let at = position(rng, e, len);
                let n = rng.usize(1..=(len - at).min(256));
                d.drain(at..at + n);
            }
            7 => {
                // Copy a block elsewhere (overwrite).
                let from = position(rng, e, len);
                let to = position(rng, e, len);
                let n = rng.usize(1..=(len - from).min(len - to).min(512));
                let block = d[from..from + n].to_vec();
                d[to..to + n].copy_from_slice(&block);
            }
            8 => {
                // Insert a block of the input, or random bytes.
                let at = position(rng, e, len);
                let n = rng.usize(1..=64);
                let block: Vec<u8> = if rng.bool() {
                    let from = rng.usize(..len);
                    d[from..(from + n).min(len)].to_vec()
                } else {
                    std::iter::repeat_with(|| rng.u8(..)).take(n).collect()
                };
                d.splice(at..at, block);
            }
            9 | 10 => {
                // A token of the target, inserted or overwriting.
                if target.tokens.is_empty() {
                    continue;
                }
                let tok = target.tokens[rng.usize(..target.tokens.len())];
                let at = position(rng, e, len);
                if rng.bool() {
                    d.splice(at..at, tok.iter().copied());
                } else {
                    let n = tok.len().min(len - at);
                    d[at..at + n].copy_from_slice(&tok[..n]);
                }
            }
            11 => {
                // Splice: a block of another input at the same place.
                let other = &corpus[rng.usize(..corpus.len())].data;
                if other.is_empty() {
                    continue;
                }
                let at = position(rng, e, len).min(other.len() - 1);
                let n = rng.usize(1..=(other.len() - at).min(len - at).min(4096));
                d[at..at + n].copy_from_slice(&other[at..at + n]);
            }
            12 => {
                // Truncate.
                let keep = position(rng, e, len);
                d.truncate(keep);
            }
            _ => {
                // Clear a block (a hole in an image).
                let at = position(rng, e, len);
                let n = rng.usize(1..=(len - at).min(4096));
                d[at..at + n].fill(0);
            }
        }
    }
    d.truncate(target.max_len);
    d
}

/// The directory a target's committed seeds are in.
pub fn corpus_dir(name: &str) -> PathBuf {
    crate::crate_dir().join("corpus").join(name)
}

/// The directory a target's crash inputs are kept in, as regression tests.
pub fn regressions_dir(name: &str) -> PathBuf {
    crate::crate_dir().join("regressions").join(name)
}

/// Every committed input of a target: its corpus and its regressions.
pub fn committed_inputs(name: &str) -> Vec<PathBuf> {
    let mut all = crate::files_in(&corpus_dir(name));
    all.extend(
        crate::files_in(&regressions_dir(name))
            .into_iter()
            .filter(|p| p.extension().is_none_or(|e| e != "txt" && e != "md")),
    );
    all
}
