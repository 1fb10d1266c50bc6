//! Diagnostics: what is wrong in a spec, where (file:line:col) and what to
//! do about it, rendered in the rustc style with the offending line quoted.
//! Rendering happens once, when the error is built, so that `SpecError`'s
//! `Display` is the complete message and the binary only has to print it.

use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// What kind of problem a diagnostic reports, for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiagnosticKind {
    /// The file is not valid TOML.
    Syntax,
    /// A key (or target name) the spec format does not know.
    UnknownKey,
    /// A value of the wrong TOML type, or not one of an enum's values.
    WrongType,
    /// A required key or table is absent.
    MissingKey,
    /// A key or table defined twice; `related` points at the first.
    Duplicate,
    /// Well-formed TOML whose value does not make sense (semantic validation).
    Invalid,
    /// A release, package, time zone or locale that the archive or the
    /// system's databases do not have.
    NotFound,
    /// The file is not UTF-8.
    Encoding,
}

/// One problem in a spec file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub kind: DiagnosticKind,
    /// The spec file, as the user named it.
    pub file: PathBuf,
    /// 1-based line; 0 when the problem concerns the whole file (e.g. no targets).
    pub line: usize,
    /// 1-based column in characters; 0 when `line` is 0.
    pub column: usize,
    pub message: String,
    /// What to do about it.
    pub help: Option<String>,
    /// Byte range in the source, when there is one.
    pub span: Option<Range<usize>>,
    /// A second place in the same file that the problem involves, such as
    /// the first of two definitions of a key.
    pub related: Option<Related>,
}

/// A second location of a [`Diagnostic`], with what happens there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Related {
    /// 1-based line.
    pub line: usize,
    /// 1-based column in characters.
    pub column: usize,
    pub span: Range<usize>,
    /// e.g. "first defined here".
    pub label: String,
}

/// Why a spec could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    #[error("reading spec {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The spec was read but is not valid; `rendered` holds every diagnostic
    /// with its quoted source line.
    #[error("{rendered}")]
    Invalid {
        diagnostics: Vec<Diagnostic>,
        rendered: String,
    },
}

impl SpecError {
    /// The located problems; empty when the file could not be read at all.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            SpecError::Read { .. } => &[],
            SpecError::Invalid { diagnostics, .. } => diagnostics,
        }
    }
}

/// The spec text together with its name, to turn byte spans into locations
/// and quoted lines.
pub(crate) struct SourceFile<'a> {
    pub(crate) path: &'a Path,
    pub(crate) text: &'a str,
}

impl SourceFile<'_> {
    pub(crate) fn diagnostic(
        &self,
        kind: DiagnosticKind,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        help: Option<String>,
    ) -> Diagnostic {
        let (line, column) = match &span {
            Some(span) => line_col(self.text, span.start),
            None => (0, 0),
        };
        Diagnostic {
            kind,
            file: self.path.to_path_buf(),
            line,
            column,
            message: message.into(),
            help,
            span,
            related: None,
        }
    }

    /// `d` with a second location, `span`, labelled `label`.
    pub(crate) fn with_related(&self, mut d: Diagnostic, span: Range<usize>, label: impl Into<String>) -> Diagnostic {
        let (line, column) = line_col(self.text, span.start);
        d.related = Some(Related {
            line,
            column,
            span,
            label: label.into(),
        });
        d
    }

    /// The 1-based line of byte `offset`.
    pub(crate) fn line(&self, offset: usize) -> usize {
        line_col(self.text, offset).0
    }

    /// Builds the error for `diagnostics`, which must not be empty.
    pub(crate) fn error(&self, mut diagnostics: Vec<Diagnostic>) -> SpecError {
        // Whole-file problems first, then in file order: the order a reader
        // fixes them in.
        diagnostics.sort_by_key(|d| (d.line, d.column));
        let mut rendered = String::new();
        for (i, d) in diagnostics.iter().enumerate() {
            if i > 0 {
                rendered.push('\n');
            }
            self.render(d, &mut rendered);
        }
        if diagnostics.len() > 1 {
            let _ = write!(
                rendered,
                "\nerror: {} has {} problems",
                self.path.display(),
                diagnostics.len()
            );
        } else {
            // Keep the message free of a trailing newline for `{}` printing.
            let trimmed = rendered.trim_end().len();
            rendered.truncate(trimmed);
        }
        SpecError::Invalid { diagnostics, rendered }
    }

    fn render(&self, d: &Diagnostic, out: &mut String) {
        let _ = writeln!(out, "error: {}", d.message);
        let Some(span) = d.span.clone().filter(|_| d.line > 0) else {
            let _ = writeln!(out, " --> {}", self.path.display());
            if let Some(help) = &d.help {
                let _ = writeln!(out, "  = help: {help}");
            }
            return;
        };
        let gutter = d.line.max(d.related.as_ref().map_or(0, |r| r.line)).to_string().len();
        let pad = " ".repeat(gutter);
        let _ = writeln!(out, "{pad}--> {}:{}:{}", self.path.display(), d.line, d.column);
        let _ = writeln!(out, "{pad} |");
        self.snippet(out, gutter, d.line, d.column, &span, '^', None);
        if let Some(r) = &d.related {
            let _ = writeln!(out, "{pad} |");
            let _ = writeln!(out, "{pad}::: {}:{}:{}", self.path.display(), r.line, r.column);
            let _ = writeln!(out, "{pad} |");
            self.snippet(out, gutter, r.line, r.column, &r.span, '-', Some(&r.label));
        }
        if let Some(help) = &d.help {
            let _ = writeln!(out, "{pad} = help: {help}");
        }
    }
}

impl SourceFile<'_> {
    /// Quotes line `line` and marks `span` on it with `marker`s, followed
    /// by `label`.
    #[allow(clippy::too_many_arguments)]
    fn snippet(
        &self,
        out: &mut String,
        gutter: usize,
        line: usize,
        column: usize,
        span: &Range<usize>,
        marker: char,
        label: Option<&str>,
    ) {
        let pad = " ".repeat(gutter);
        let line_text = self.text.lines().nth(line - 1).unwrap_or("");
        let _ = writeln!(out, "{line:>gutter$} | {line_text}");
        // Keep tabs in the marker's indent so that it lines up under the span.
        let indent: String = line_text
            .chars()
            .take(column - 1)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        let start = floor_char_boundary(self.text, span.start.min(self.text.len()));
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        // min then max, not clamp: a span that starts past the quoted line's
        // text (on its `\r\n`) has start > the line's end (found by fuzzing).
        let end = span.end.min(line_start + line_text.len()).max(start);
        let width = self.text.get(start..end).map_or(1, |t| t.chars().count()).max(1);
        let marks: String = std::iter::repeat_n(marker, width).collect();
        match label {
            Some(label) => {
                let _ = writeln!(out, "{pad} | {indent}{marks} {label}");
            }
            None => {
                let _ = writeln!(out, "{pad} | {indent}{marks}");
            }
        }
    }
}

/// 1-based line and character column of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let text = "a = 1\n\tb = \"é\"\nc";
        let cases = [
            (0, (1, 1)),
            (4, (1, 5)),
            (6, (2, 1)),
            (7, (2, 2)),
            (12, (2, 7)),
            (13, (2, 7)),
            (15, (2, 9)),
            (16, (3, 1)),
            (99, (3, 2)),
        ];
        for (offset, want) in cases {
            assert_eq!(line_col(text, offset), want, "offset {offset}");
        }
    }

    #[test]
    fn renders_caret_under_span() {
        let text = "[packages]\ninstal = [\"vim\"]\n";
        let file = SourceFile {
            path: Path::new("spec.toml"),
            text,
        };
        let d = file.diagnostic(
            DiagnosticKind::UnknownKey,
            Some(11..17),
            "unknown key `instal`",
            Some("did you mean `install`?".into()),
        );
        assert_eq!(
            file.error(vec![d]).to_string(),
            "error: unknown key `instal`\n --> spec.toml:2:1\n  |\n2 | instal = [\"vim\"]\n  | ^^^^^^\n  = help: did you mean `install`?"
        );
    }
}
