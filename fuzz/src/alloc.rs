//! The bounding allocator every fuzz run and the corpus replay test use:
//! one allocation larger than [`LIMIT`] means a reader took a length from
//! the bytes without bounding it, and ends the process at once (an
//! allocator must not unwind), naming the input being run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::io::Write;

/// The largest single allocation a parser may make.
pub const LIMIT: usize = 64 << 20;

thread_local! {
    /// What this thread is running, for the message on an oversize allocation.
    static RUNNING: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Names the input the current thread runs next (`target: file`).
pub fn set_running(label: &str) {
    RUNNING.with(|r| {
        let mut r = r.borrow_mut();
        r.clear();
        r.push_str(label);
    });
}

/// [`System`], refusing any single allocation over [`LIMIT`].
pub struct Bounded;

fn oversize(size: usize) -> ! {
    // try_borrow: the allocation may come from inside set_running itself.
    let label = RUNNING.with(|r| r.try_borrow().map(|s| s.clone()).unwrap_or_default());
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "kiln-fuzz: an allocation of {size} bytes exceeds the {} MiB limit (running {label}); \
         a reader takes a length from its input without bounding it",
        LIMIT >> 20
    );
    let _ = writeln!(err, "{}", std::backtrace::Backtrace::force_capture());
    std::process::abort();
}

// SAFETY (for the allow): forwards to System unchanged, only refusing sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT {
            oversize(layout.size());
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT {
            oversize(layout.size());
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > LIMIT {
            oversize(new_size);
        }
        System.realloc(ptr, layout, new_size)
    }
}
