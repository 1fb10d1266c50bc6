//! Coverage feedback without a fuzzing toolchain: with the `coverage`
//! feature and the code built with
//! `-C passes=sancov-module -C llvm-args=-sanitizer-coverage-level=3
//! -C llvm-args=-sanitizer-coverage-trace-pc-guard` (what `bench/fuzz.sh`
//! does, on the stable compiler), LLVM calls the two hooks below on every
//! basic block, and they count hits in [`MAP`]. Hand-written (about forty
//! lines) instead of the `afl` crate, whose runtime needs AFL++ built from
//! source with a matching LLVM; the rest of the feedback loop is in
//! [`crate::engine`]. Without the feature, [`enabled`] is false and the
//! engine fuzzes without feedback.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Hit counters (one byte per basic block guard, saturating), eight to a
/// word so that clearing and scanning the map after each run is quick.
pub const MAP_SIZE: usize = 1 << 18;
pub static MAP: [AtomicU64; MAP_SIZE / 8] = [const { AtomicU64::new(0) }; MAP_SIZE / 8];
/// Guards handed out so far (the used part of [`MAP`]).
pub static GUARDS: AtomicU32 = AtomicU32::new(0);

/// Whether the binary carries coverage hooks and they were called.
pub fn enabled() -> bool {
    GUARDS.load(Ordering::Relaxed) > 0
}

/// The words of [`MAP`] in use.
pub fn used() -> usize {
    (GUARDS.load(Ordering::Relaxed) as usize / 8 + 1).min(MAP_SIZE / 8)
}

/// The hit counters of the words in use, one byte per guard.
pub fn counters() -> impl Iterator<Item = u64> {
    MAP[..used()].iter().map(|w| w.load(Ordering::Relaxed))
}

/// Zeroes the counters before a run.
pub fn reset() {
    for c in &MAP[..used()] {
        c.store(0, Ordering::Relaxed);
    }
}

#[cfg(feature = "coverage")]
#[allow(unsafe_code)]
mod hooks {
    use super::{GUARDS, MAP, MAP_SIZE};
    use std::sync::atomic::Ordering;

    /// SAFETY: LLVM calls this once per module with the bounds of its
    /// guard array, which is ours to write.
    #[no_mangle]
    pub unsafe extern "C" fn __sanitizer_cov_trace_pc_guard_init(start: *mut u32, stop: *mut u32) {
        if start == stop || *start != 0 {
            return;
        }
        let mut p = start;
        while p < stop {
            let id = GUARDS.fetch_add(1, Ordering::Relaxed) + 1;
            *p = id % MAP_SIZE as u32;
            p = p.add(1);
        }
    }

    /// SAFETY: `guard` points into an array initialised above.
    #[no_mangle]
    pub unsafe extern "C" fn __sanitizer_cov_trace_pc_guard(guard: *mut u32) {
        // Not an atomic add: a lost count between threads does not matter.
        let g = *guard as usize;
        let word = &MAP[(g / 8) % (MAP_SIZE / 8)];
        let shift = (g % 8) * 8;
        let w = word.load(Ordering::Relaxed);
        if (w >> shift) & 0xff != 0xff {
            word.store(w + (1 << shift), Ordering::Relaxed);
        }
    }
}
