//! Reading a spec file: decode, then validate, and keep what later stages
//! need to resolve the spec's relative paths and to point back into it.

use std::path::{Path, PathBuf};

use crate::decode::decode;
use crate::diagnostic::{SourceFile, SpecError};
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
        let d = file.diagnostic(crate::DiagnosticKind::Invalid, Some(span), "", None);
        Some((d.line, d.column))
    }
}

/// Reads, parses and validates the spec at `path`.
pub fn load(path: &Path) -> Result<LoadedSpec, SpecError> {
    let read_error = |source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    };
    let source = std::fs::read_to_string(path).map_err(read_error)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = parent.canonicalize().map_err(read_error)?;
    parse_str(&source, path, &dir)
}

/// Parses and validates `source` as if read from `path`, resolving relative
/// paths against `dir` (canonicalised here when it exists).
pub fn parse_str(source: &str, path: &Path, dir: &Path) -> Result<LoadedSpec, SpecError> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let file = SourceFile { path, text: source };
    let (spec, spans) = decode(&file)?;
    let diagnostics = validate(&spec, &dir, &spans, &file);
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
