//! TOML text to a [`Spec`]: syntax errors, unknown keys, wrong types and
//! missing keys, each located and rewritten from serde's wording into the
//! spec's own terms (tables, arrays, targets) with a hint. Serde stops at the
//! first such error, so the offending key is dropped and the rest decoded
//! again, until it decodes; then semantic validation runs over what is left,
//! so one run reports the structural and the semantic problems together.

use std::path::Path;

use serde::de::IntoDeserializer;
use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use crate::diagnostic::{Diagnostic, DiagnosticKind, SourceFile, SpecError};
use crate::keys;
use crate::model::{Base, Distro, Spec, Targets};
use crate::spans::{edit, leaf, table_name, table_of, SpanIndex};
use crate::validate::validate;

/// More syntax errors than this are mostly fallout of the first few.
const MAX_SYNTAX_ERRORS: usize = 10;

pub(crate) fn decode<'i>(file: &SourceFile<'i>, dir: &Path) -> Result<(Spec, SpanIndex<'i>), SpecError> {
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
            diagnostics.push(syntax(file, &e));
        }
        return Err(file.error(diagnostics));
    }
    let spans = SpanIndex::new(root.get_ref().clone());
    let whole = root.span();
    let mut tree = root.into_inner();
    let mut diagnostics = Vec::new();
    let mut removed = Vec::new();
    // Serde stops at the first problem. To report the others too, drop the
    // offending key or element and decode again; once the rest decodes,
    // semantic validation adds its findings about it.
    loop {
        let de = toml::de::Deserializer::from(toml::Spanned::new(whole.clone(), tree.clone()));
        let e = match Spec::deserialize(de) {
            Ok(spec) if diagnostics.is_empty() => return Ok((spec, spans)),
            Ok(spec) => {
                diagnostics.extend(validate(&spec, dir, &spans, file, &removed));
                break;
            }
            Err(e) => locate_in_base(&spans, &tree, e),
        };
        let path = e.span().and_then(|s| spans.path_at(&s));
        // A key missing from a table that had a key dropped is most likely
        // that key, misspelt or mistyped: no news.
        let missing_dropped = e.message().starts_with("missing field ") && {
            let table = path.as_deref().unwrap_or("");
            removed.iter().any(|r: &String| match table {
                "" => !r.contains(['.', '[']),
                _ => r.strip_prefix(table).is_some_and(|rest| rest.starts_with(['.', '['])),
            })
        };
        if missing_dropped {
            break;
        }
        diagnostics.push(translate(file, &spans, &e));
        let repairable = !e.message().starts_with("missing field ");
        match path {
            Some(path)
                if repairable
                    && diagnostics.len() < MAX_SYNTAX_ERRORS
                    && edit(&mut tree, &path, placeholder(e.message())) =>
            {
                removed.push(path);
            }
            _ => break,
        }
    }
    Err(file.error(diagnostics))
}

/// `[base]` is a table tagged by `distro`. Serde reads a tagged table whole
/// before it picks the family's struct, so an error inside it points at the
/// table and has lost the key's name. Decoding the table again, tag removed,
/// as that family's own struct gives the error at the key at fault (and so
/// the key that the loop above drops, not the whole table).
fn locate_in_base(spans: &SpanIndex<'_>, tree: &DeTable<'_>, e: toml::de::Error) -> toml::de::Error {
    if e.span().and_then(|s| spans.path_at(&s)).as_deref() != Some("base") {
        return e;
    }
    let Some(base) = tree.get("base") else {
        return e;
    };
    let Some(table) = base.get_ref().as_table() else {
        return e;
    };
    let mut table = table.clone();
    let Some(tag) = table.remove("distro") else {
        return e;
    };
    let table = toml::Spanned::new(base.span(), table);
    let distro = tag.get_ref().as_str().and_then(|name| {
        Distro::deserialize(IntoDeserializer::<serde::de::value::Error>::into_deserializer(name)).ok()
    });
    match distro.map(|d| Base::decode_family(d, toml::de::Deserializer::from(table))) {
        Some(Err(located)) => located,
        _ => e,
    }
}

/// A value of the expected type to put in place of a wrong one, so that
/// decoding can go on past a required key; `None` drops the key instead
/// (unknown keys, and types without a neutral value).
fn placeholder(message: &str) -> Option<DeValue<'static>> {
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let (_, expected) = split_expected(rest);
        return expected
            .first()
            .map(|v| DeValue::String(std::borrow::Cow::Owned((*v).to_owned())));
    }
    let rest = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))?;
    let (_, expected) = rest.rsplit_once(", expected ")?;
    let neutral = match in_toml_terms(expected).as_str() {
        "a string" => "\"\"",
        "an array" => "[]",
        "a boolean" => "false",
        "a non-negative integer" => "0",
        "a table" => "{}",
        _ => return None,
    };
    DeValue::parse(neutral).ok().map(toml::Spanned::into_inner)
}

/// A TOML syntax error in the spec's words, with what to write instead.
fn syntax(file: &SourceFile<'_>, e: &toml::de::Error) -> Diagnostic {
    let message = e.message();
    let span = e.span();
    if message == "duplicate key" {
        if let Some(d) = duplicate(file, span.as_ref()) {
            return d;
        }
    }
    let help = syntax_help(file.text, message, span.as_ref());
    file.diagnostic(DiagnosticKind::Syntax, span, message, help)
}

/// A key or table defined twice, pointing at both definitions.
fn duplicate(file: &SourceFile<'_>, second: Option<&std::ops::Range<usize>>) -> Option<Diagnostic> {
    let second = second?;
    let first = keys::first_definition(file.text, second)?;
    let (message, help) = if first.header {
        let name = table_name(&first.path);
        (
            format!("table {name} is defined twice"),
            format!("merge the two {name} tables into one"),
        )
    } else {
        (
            format!("duplicate key `{}` {}", leaf(&first.path), table_of(&first.path)),
            "keep one of the two".to_owned(),
        )
    };
    let d = file.diagnostic(DiagnosticKind::Duplicate, Some(second.clone()), message, Some(help));
    Some(file.with_related(d, first.span, "first defined here"))
}

/// What to write instead, for the syntax errors people make in a spec.
fn syntax_help(text: &str, message: &str, span: Option<&std::ops::Range<usize>>) -> Option<String> {
    let found = span.and_then(|s| text.get(s.clone())).unwrap_or("");
    // The key on the line of the error, for examples in the help.
    let key = span
        .map(|s| {
            let start = text[..s.start.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
            let line = &text[start..];
            let line = line.lines().next().unwrap_or("");
            match line.split_once('=') {
                Some((k, _)) => k.trim(),
                None => line.split([' ', ':']).next().unwrap_or(""),
            }
        })
        .filter(|k| !k.is_empty() && !k.contains(['\n', '[']))
        .unwrap_or("key");
    let help = match message.split_once(", expected").map_or(message, |(m, _)| m) {
        "string values must be quoted" if found.trim().is_empty() => {
            format!("write a value after `=`, e.g. {key} = \"…\"")
        }
        "string values must be quoted" if matches!(found, "yes" | "no" | "on" | "off") => {
            format!("write true or false for a yes-or-no value, or quote a string: {key} = \"{found}\"")
        }
        "string values must be quoted" => format!("put the value in quotes: {key} = \"{found}\""),
        "invalid basic string" => {
            "close the string with `\"` on the same line; for text over several lines use \"\"\"…\"\"\"".to_owned()
        }
        "invalid literal string" => "close the string with `'` on the same line".to_owned(),
        "key with no value" => format!("write `{key} = value`, with the value on the same line"),
        "unclosed array" => "close the array with `]`; elements are separated by `,`".to_owned(),
        "missing comma between array elements" => "separate the elements with `,`: [\"a\", \"b\"]".to_owned(),
        "unclosed table" => "close the table header with `]`, e.g. [packages]".to_owned(),
        "unclosed inline table" => "close the inline table with `}`".to_owned(),
        "invalid boolean" => "write `true` or `false`, in lower case".to_owned(),
        "extra `=`" => "write one `=` between the key and its value".to_owned(),
        "invalid unquoted key" => {
            "bare keys hold letters, digits, `-` and `_`; write `key = value` (not `key: value`)".to_owned()
        }
        "missing escaped value" => {
            "write `\\\\` for a backslash in \"…\", or use a literal string in single quotes".to_owned()
        }
        "invalid float" | "invalid integer" | "invalid number" => {
            format!("write a plain number ({key} = 1700000000), or quote the value if it is text")
        }
        "invalid multi-line basic string" | "invalid multi-line literal string" => {
            "close the multi-line string with the same three quotes that open it".to_owned()
        }
        // Whatever else the parser stops at: where it stopped is marked.
        _ => "the caret marks where the TOML parser stopped; see https://toml.io for the syntax".to_owned(),
    };
    Some(help)
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
        let help = Some(match path {
            Some(p) => type_help(&expected, value_text, p),
            None => format!("write {expected}; `kiln schema` describes every key"),
        });
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

    file.diagnostic(
        DiagnosticKind::WrongType,
        span,
        message,
        Some("`kiln schema` prints what each key takes".to_owned()),
    )
}

/// What to write instead of a value of the wrong type at `path`.
fn type_help(expected: &str, value: Option<&str>, path: &str) -> String {
    let key = leaf(path);
    let v = value.unwrap_or("");
    let quoted = v.len() >= 2 && (v.starts_with('"') && v.ends_with('"') || v.starts_with('\'') && v.ends_with('\''));
    let unquoted = if quoted { &v[1..v.len() - 1] } else { v };
    let help = match expected {
        "an array" if !v.starts_with('[') => format!("write an array: {key} = [{v}]"),
        "a string" if !quoted && !v.starts_with(['[', '{']) && !v.is_empty() => {
            format!("put the value in quotes: {key} = \"{v}\"")
        }
        "a string" => format!("write a single string: {key} = \"…\""),
        "a boolean" if quoted && matches!(unquoted, "true" | "false") => {
            format!("write it without quotes: {key} = {unquoted}")
        }
        "a boolean" => format!("write `{key} = true` or `{key} = false`"),
        "a non-negative integer" if quoted && unquoted.parse::<u64>().is_ok() => {
            format!("write the number without quotes: {key} = {unquoted}")
        }
        "a non-negative integer" => format!("write a number: {key} = 1"),
        "a table" => format!("write a table: a [{path}] header on its own line, with its keys below it"),
        "an array" if v.starts_with('[') && !v.starts_with("[[") => {
            format!("write [[{path}]] (two brackets): each [[{path}]] header adds one entry")
        }
        _ => format!("write {expected} for `{key}`; `kiln schema` describes every key"),
    };
    help
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
