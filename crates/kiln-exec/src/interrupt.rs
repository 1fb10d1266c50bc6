//! Interruption: SIGINT, SIGTERM and SIGHUP set a flag instead of killing
//! kiln, so that the running step stops its children and every guard on the
//! stack unwinds (unmounts, detaches, deletes partial output) before exit.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::ExecError;

static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
/// SIGINT apart from the others: while a person types into a child that
/// has the terminal (an [`InteractiveWindow`]), Ctrl-C is meant for that
/// child, not for kiln.
static INT_FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
/// How many interactive children have the terminal now.
static INTERACTIVE: AtomicUsize = AtomicUsize::new(0);

fn flag() -> &'static Arc<AtomicBool> {
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

fn int_flag() -> &'static Arc<AtomicBool> {
    INT_FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Routes SIGINT, SIGTERM and SIGHUP to the interruption flag. Call once, early.
pub fn install_signal_handlers() -> std::io::Result<()> {
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(int_flag()))?;
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        signal_hook::flag::register(sig, Arc::clone(flag()))?;
    }
    Ok(())
}

/// Whether an interruption was requested.
pub fn interrupted() -> bool {
    flag().load(Ordering::SeqCst) || (int_flag().load(Ordering::SeqCst) && INTERACTIVE.load(Ordering::SeqCst) == 0)
}

/// While it lives, a Ctrl-C (SIGINT) does not interrupt kiln: it goes to
/// the interactive child that shares kiln's terminal (a shell in an image
/// tree), as it would without kiln in between. SIGTERM and SIGHUP still
/// do. A SIGINT that arrived meanwhile is forgotten when the window closes.
pub struct InteractiveWindow {
    int_before: bool,
}

impl InteractiveWindow {
    pub fn open() -> Self {
        INTERACTIVE.fetch_add(1, Ordering::SeqCst);
        InteractiveWindow {
            int_before: int_flag().load(Ordering::SeqCst),
        }
    }
}

impl Drop for InteractiveWindow {
    fn drop(&mut self) {
        if INTERACTIVE.fetch_sub(1, Ordering::SeqCst) == 1 && !self.int_before {
            int_flag().store(false, Ordering::SeqCst);
        }
    }
}

/// Returns [`ExecError::Interrupted`] once an interruption was requested;
/// long loops call it between units of work.
pub fn check_interrupted() -> Result<(), ExecError> {
    if interrupted() {
        Err(ExecError::Interrupted { command: String::new() })
    } else {
        Ok(())
    }
}

/// A fault point of kiln's fault-injection test: when `KILN_FAULT_PAUSE`
/// names this point (a stage id such as `ovh-byol/disk`, or
/// `checksums/partial`), kiln says so on stderr and waits here until a
/// signal interrupts it, so that the test can interrupt stages too short
/// to hit by timing. Otherwise it returns at once.
pub fn fault_point(name: &str) -> Result<(), ExecError> {
    if std::env::var_os("KILN_FAULT_PAUSE").is_none_or(|v| v != name) {
        return Ok(());
    }
    // Not eprintln!: a closed stderr must not panic.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("kiln: fault point {name}: waiting for a signal\n").as_bytes(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while !interrupted() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    check_interrupted()
}

/// Requests an interruption, as a signal would (used by tests).
pub fn request_interrupt() {
    flag().store(true, Ordering::SeqCst);
}
