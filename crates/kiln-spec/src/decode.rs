//! TOML text to a [`Spec`]: syntax errors, unknown keys, wrong types and
//! missing keys, each located and rewritten from serde's wording into the
//! spec's own terms (tables, arrays, targets) with a hint. Serde stops at the
//! first such error; semantic validation, which can report many, runs after.

use serde::de::IntoDeserializer;
use serde::Deserialize;
use toml::de::DeTable;

use crate::diagnostic::{Diagnostic, DiagnosticKind, SourceFile, SpecError};
use crate::model::{Base, Distro, Spec, Targets};
use crate::spans::{leaf, table_name, table_of, SpanIndex};

/// More syntax errors than this are mostly fallout of the first few.
const MAX_SYNTAX_ERRORS: usize = 10;

pub(crate) fn decode<'i>(file: &SourceFile<'i>) -> Result<(Spec, SpanIndex<'i>), SpecError> {
    let (root, errors) = DeTable::parse_recoverable(file.text);
    if !errors.is_empty() {
        let mut diagnostics: Vec<Diagnostic> = Vec::new();
        for e in errors {
            if diagnostics.len() == MAX_SYNTAX_ERRORS {
                break;
            }
            if diagnostics.iter().any(|d| d.span == e.span()) {
                continue;
            }
            diagnostics.push(file.diagnostic(DiagnosticKind::Syntax, e.span(), e.message(), None));
        }
        return Err(file.error(diagnostics));
    }
    let spans = SpanIndex::new(root.get_ref().clone());
    match Spec::deserialize(toml::de::Deserializer::from(root)) {
        Ok(spec) => Ok((spec, spans)),
        Err(e) => {
            let e = locate_in_base(&spans, e);
            Err(file.error(vec![translate(file, &spans, &e)]))
        }
    }
}

/// `[base]` is a table tagged by `distro`. Serde reads a tagged table whole
/// before it picks the family's struct, so an error inside it points at the
/// table and has lost the key's name. Decoding the table again, tag removed,
/// as that family's own struct gives the error at the key at fault.
fn locate_in_base(spans: &SpanIndex<'_>, e: toml::de::Error) -> toml::de::Error {
    let at_base = e.span().and_then(|s| spans.path_at(&s)).as_deref() == Some("base");
    let Some(mut table) = spans.table("base").filter(|_| at_base) else {
        return e;
    };
    let Some(tag) = table.get_mut().remove("distro") else {
        return e;
    };
    let distro = tag.get_ref().as_str().and_then(|name| {
        Distro::deserialize(IntoDeserializer::<serde::de::value::Error>::into_deserializer(name)).ok()
    });
    match distro.map(|d| Base::decode_family(d, toml::de::Deserializer::from(table))) {
        Some(Err(located)) => located,
        _ => e,
    }
}

fn translate(file: &SourceFile<'_>, spans: &SpanIndex<'_>, e: &toml::de::Error) -> Diagnostic {
    let message = e.message();
    let span = e.span();
    let path = span.as_ref().and_then(|s| spans.path_at(s));
    let path = path.as_deref();

    if let Some(rest) = message.strip_prefix("unknown field ") {
        let (name, expected) = split_expected(rest);
        let in_targets = path.is_some_and(|p| p.strip_suffix(name) == Some("targets."));
        let (message, help) = if in_targets {
            let known = Targets::KINDS
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let mut help = format!("kiln knows these targets: {known}");
            if let Some(close) = closest(name, Targets::KINDS.iter().copied()) {
                help = format!("did you mean `{close}`? {help}");
            }
            (format!("unknown target `{name}`"), Some(help))
        } else {
            let where_ = path.map_or_else(String::new, |p| format!(" {}", table_of(p)));
            (format!("unknown key `{name}`{where_}"), suggest(name, &expected))
        };
        return file.diagnostic(DiagnosticKind::UnknownKey, span, message, help);
    }

    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let (name, expected) = split_expected(rest);
        let key = path.map_or_else(String::new, |p| format!(" for `{}` {}", leaf(p), table_of(p)));
        return file.diagnostic(
            DiagnosticKind::WrongType,
            span,
            format!("unknown value `{name}`{key}"),
            suggest(name, &expected),
        );
    }

    if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
    {
        let (found, expected) = rest.rsplit_once(", expected ").unwrap_or((rest, "another type"));
        let expected = in_toml_terms(expected);
        let found = in_toml_terms(found);
        let key = path.map_or_else(String::new, |p| format!(" for `{}` {}", leaf(p), table_of(p)));
        let value_text = span.as_ref().and_then(|s| file.text.get(s.clone()));
        let help = match (expected.as_str(), value_text, path) {
            ("an array", Some(v), Some(p)) if !v.starts_with('[') => {
                Some(format!("write an array: {} = [{v}]", leaf(p)))
            }
            _ => None,
        };
        return file.diagnostic(
            DiagnosticKind::WrongType,
            span,
            format!("wrong type{key}: expected {expected}, found {found}"),
            help,
        );
    }

    if let Some(rest) = message.strip_prefix("missing field ") {
        let name = rest.trim_matches('`');
        // Serde points at the table that lacks the key; its path is the table's.
        let (message, help) = match path {
            Some(table) => (
                format!("missing key `{name}` in {}", table_name(table)),
                Some(format!("add `{name} = {}` to this table", example(name))),
            ),
            None => (
                format!("missing table [{name}]"),
                Some(format!("add a [{name}] table, e.g. {}", example(name))),
            ),
        };
        // A missing top-level table has no place in the file to point at.
        let span = if path.is_some() { span } else { None };
        return file.diagnostic(DiagnosticKind::MissingKey, span, message, help);
    }

    file.diagnostic(DiagnosticKind::WrongType, span, message, None)
}

/// Splits serde's "`name`, expected `a`, `b` or `c`" into the name and the
/// expected names (empty for "there are no fields").
fn split_expected(rest: &str) -> (&str, Vec<&str>) {
    if let Some(name) = rest.strip_suffix(", there are no fields") {
        return (name.trim_matches('`'), Vec::new());
    }
    let (name, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
    let expected = expected.split('`').skip(1).step_by(2).collect();
    (name.trim_matches('`'), expected)
}

fn suggest(name: &str, expected: &[&str]) -> Option<String> {
    let listed = || expected.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
    match closest(name, expected.iter().copied()) {
        Some(close) => Some(format!("did you mean `{close}`?")),
        None if expected.is_empty() => None,
        None => Some(format!("expected one of {}", listed())),
    }
}

/// The candidate most like `word`, if any is close enough to be a typo.
/// Case and `-`/`_` are ignored because `ovh_byol` for `ovh-byol` and
/// `cloud-init` for `cloud_init` are the typos people make.
pub(crate) fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let fold = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let word = fold(word);
    candidates
        .into_iter()
        .map(|c| (strsim::normalized_damerau_levenshtein(&word, &fold(c)), c))
        .filter(|(score, _)| *score >= 0.6)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Serde's data-model words, in the words of a TOML file.
fn in_toml_terms(s: &str) -> String {
    let toml = match s {
        _ if s.starts_with("struct ") => "a table",
        "a map" | "map" => "a table",
        "a sequence" | "sequence" => "an array",
        "u64" | "u32" | "usize" => "a non-negative integer",
        _ => s,
    };
    toml.to_owned()
}

/// A plausible value for a required key, for the "add it" hint.
fn example(name: &str) -> &'static str {
    match name {
        "image" => "with `name` and `version`",
        "base" => "with `distro` and `release`",
        "name" => "\"…\"",
        "version" => "\"1.0.0\"",
        "distro" => "\"debian\"",
        "release" => "\"bookworm\"",
        "src" => "\"files/…\"",
        "dest" | "path" => "\"/…\"",
        "uri" => "\"https://…\"",
        "suites" => "[\"…\"]",
        _ => "…",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_candidates() {
        let keys = ["install", "remove"];
        assert_eq!(closest("instal", keys), Some("install"));
        assert_eq!(closest("Install", keys), Some("install"));
        assert_eq!(closest("remvoe", keys), Some("remove"));
        assert_eq!(closest("purge", keys), None);
        assert_eq!(closest("ovh_byol", ["ovh-byol"]), Some("ovh-byol"));
        assert_eq!(closest("cloud-init", ["cloud_init", "kernel"]), Some("cloud_init"));
    }

    #[test]
    fn serde_expected_lists() {
        assert_eq!(split_expected("`x`, expected `a` or `b`"), ("x", vec!["a", "b"]));
        assert_eq!(
            split_expected("`x`, expected one of `a`, `b`, `c`"),
            ("x", vec!["a", "b", "c"])
        );
        assert_eq!(split_expected("`x`, there are no fields"), ("x", vec![]));
    }
}
