//! Interruption: SIGINT, SIGTERM and SIGHUP set a flag instead of killing
//! kiln, so that the running step stops its children and every guard on the
//! stack unwinds (unmounts, detaches, deletes partial output) before exit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::ExecError;

static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

fn flag() -> &'static Arc<AtomicBool> {
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Routes SIGINT, SIGTERM and SIGHUP to the interruption flag. Call once, early.
pub fn install_signal_handlers() -> std::io::Result<()> {
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, Arc::clone(flag()))?;
    }
    Ok(())
}

/// Whether an interruption was requested.
pub fn interrupted() -> bool {
    flag().load(Ordering::SeqCst)
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

/// Requests an interruption, as a signal would (used by tests).
pub fn request_interrupt() {
    flag().store(true, Ordering::SeqCst);
}
