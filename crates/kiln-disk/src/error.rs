//! The crate's error: a small kind that callers branch on (is the image
//! corrupt, or merely using a feature kiln does not read?) plus a
//! human-readable context and the underlying cause.

use std::fmt;

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Reading or writing a file failed.
    Io,
    /// The bytes are not the format they were expected to be (bad magic,
    /// impossible header values).
    InvalidFormat,
    /// A valid image that uses a feature kiln does not read (qcow2 backing
    /// files, encryption, ...).
    Unsupported,
    /// The format is recognised but its structures contradict each other or
    /// point outside the file.
    Corrupt,
    /// An external program failed.
    Tool,
    /// The caller asked for something impossible (a layout that does not fit).
    InvalidInput,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Io => "I/O error",
            ErrorKind::InvalidFormat => "invalid format",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Tool => "external tool failed",
            ErrorKind::InvalidInput => "invalid input",
        })
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of this crate: a [`ErrorKind`], a context sentence such as
/// "reading L2 table at offset 0x50000", and an optional cause.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    context: String,
    source: Option<Source>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Error {
            kind,
            context: context.into(),
            source: None,
        }
    }

    pub fn with_source(kind: ErrorKind, context: impl Into<String>, source: impl Into<Source>) -> Self {
        Error {
            kind,
            context: context.into(),
            source: Some(source.into()),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn context(&self) -> &str {
        &self.context
    }

    pub(crate) fn io(context: impl Into<String>, e: std::io::Error) -> Self {
        Self::with_source(ErrorKind::Io, context, e)
    }

    pub(crate) fn invalid(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidFormat, context)
    }

    pub(crate) fn unsupported(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, context)
    }

    pub(crate) fn corrupt(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, context)
    }

    pub(crate) fn input(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, context)
    }

    pub(crate) fn tool(context: impl Into<String>, e: kiln_exec::ExecError) -> Self {
        Self::with_source(ErrorKind::Tool, context, e)
    }

    /// Wraps this error in an outer context, keeping its kind.
    pub(crate) fn context_for(self, outer: impl Into<String>) -> Self {
        let kind = self.kind;
        Self::with_source(kind, outer, self)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Adds context to `io::Result`s.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}
