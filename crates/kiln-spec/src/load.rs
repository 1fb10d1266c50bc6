//! Reading a spec file: decode, then validate, and keep what later stages
//! need to resolve the spec's relative paths and to point back into it.

use std::path::{Path, PathBuf};

use crate::decode::decode;
use crate::diagnostic::{DiagnosticKind, SourceFile, SpecError};
use crate::model::Spec;
use crate::spans::SpanIndex;
use crate::validate::validate;

/// A spec that parsed and passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedSpec {
    pub spec: Spec,
    /// The spec file, as given.
    pub path: PathBuf,
    /// The spec file's directory, canonical; relative paths in the spec are
    /// relative to it.
    pub dir: PathBuf,
    /// The spec's text, for hashing and for pointing at it in later errors.
    pub source: String,
}

impl LoadedSpec {
    /// A path from the spec (`[[files]] src`, `[[run]] file`, a key file)
    /// on the host.
    pub fn resolve(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }

    /// The 1-based line and column of the value at `key_path` (e.g.
    /// `run[1].file`), so that build errors can point into the spec.
    pub fn location(&self, key_path: &str) -> Option<(usize, usize)> {
        let root = toml::de::DeTable::parse(&self.source).ok()?.into_inner();
        let span = SpanIndex::new(root).value(key_path)?;
        let file = SourceFile {
            path: &self.path,
            text: &self.source,
        };
        let d = file.diagnostic(DiagnosticKind::Invalid, Some(span), "", None);
        Some((d.line, d.column))
    }
}

/// Reads, parses and validates the spec at `path`.
pub fn load(path: &Path) -> Result<LoadedSpec, SpecError> {
    let read_error = |source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(path).map_err(read_error)?;
    let source = match String::from_utf8(bytes) {
        Ok(source) => source,
        Err(e) => return Err(not_utf8(path, e.as_bytes(), e.utf8_error())),
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = parent.canonicalize().map_err(read_error)?;
    parse_str(&source, path, &dir)
}

/// Where the first byte that is not UTF-8 sits, quoting its line with the
/// bad bytes shown as U+FFFD.
fn not_utf8(path: &Path, bytes: &[u8], e: std::str::Utf8Error) -> SpecError {
    let at = e.valid_up_to();
    let bad = bytes.get(at..at + e.error_len().unwrap_or(1)).unwrap_or_default();
    let hex: Vec<String> = bad.iter().map(|b| format!("0x{b:02X}")).collect();
    // The lossy text has the same bytes up to `at`, then one U+FFFD.
    let text = String::from_utf8_lossy(bytes);
    let file = SourceFile { path, text: &text };
    let d = file.diagnostic(
        DiagnosticKind::Encoding,
        Some(at..at + '\u{FFFD}'.len_utf8()),
        format!("the spec is not UTF-8: byte {} is not valid here", hex.join(" ")),
        Some("save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 spec.toml`); TOML files are UTF-8".into()),
    );
    file.error(vec![d])
}

/// Parses and validates `source` as if read from `path`, resolving relative
/// paths against `dir` (canonicalised here when it exists).
pub fn parse_str(source: &str, path: &Path, dir: &Path) -> Result<LoadedSpec, SpecError> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let file = SourceFile { path, text: source };
    let (spec, spans) = decode(&file, &dir)?;
    let diagnostics = validate(&spec, &dir, &spans, &file, &[]);
    if !diagnostics.is_empty() {
        return Err(file.error(diagnostics));
    }
    Ok(LoadedSpec {
        spec,
        path: path.to_path_buf(),
        dir,
        source: source.to_owned(),
    })
}
