//! [`VmError`]: what can go wrong starting and watching a VM, shaped so that
//! callers can tell a missing prerequisite (no OVMF, no QEMU) from a bad
//! configuration or an I/O failure.

/// An error from the QEMU runner, firmware lookup, accelerator probe or
/// console watcher.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmError {
    #[error(
        "UEFI firmware (OVMF) not found: install the Debian package `ovmf`, or set KILN_OVMF_CODE and \
         KILN_OVMF_VARS (looked in: {looked})"
    )]
    FirmwareMissing { looked: String },
    #[error("invalid VM configuration: {0}")]
    Config(String),
    #[error("invalid console pattern {pattern:?}")]
    Pattern {
        pattern: String,
        #[source]
        source: Box<regex::Error>,
    },
    #[error("KILN_ACCEL={0:?} is not an accelerator kiln knows; use `tcg` or `kvm`")]
    AccelEnv(String),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Exec(#[from] kiln_exec::ExecError),
}

impl VmError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
        let context = context.into();
        move |source| VmError::Io { context, source }
    }

    pub(crate) fn io_path(gerund: &str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> VmError {
        VmError::io(format!("{gerund} {}", path.display()))
    }

    /// Whether this is an interruption (Ctrl-C) rather than a failure.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, VmError::Exec(e) if e.is_interrupted())
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = VmError> = std::result::Result<T, E>;

/// Checks that a file QEMU will open exists, so that a typo is reported by
/// kiln in plain words rather than by QEMU's option parser.
pub(crate) fn require_file(what: &str, path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() || m.file_type().is_block_device() => Ok(()),
        Ok(_) => Err(VmError::Config(format!("{what} {} is not a file", path.display()))),
        Err(source) => Err(VmError::Io {
            context: format!("opening {what} {}", path.display()),
            source,
        }),
    }
}
