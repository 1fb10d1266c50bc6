//! Where each key of a spec is defined, by full key path (`base.release`,
//! `files[1].dest`). toml's "duplicate key" error names only the second
//! definition; this walks the parser's events once more so that the
//! diagnostic can point at the first one too. Only used on the error path.

use std::collections::HashMap;
use std::ops::Range;

use toml_parser::parser::{parse_document, EventReceiver};
use toml_parser::{ErrorSink, ParseError, Source, Span};

/// One place where a key (or table header) is defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyDefinition {
    /// `files[1].dest`, `targets.ovh-byol`.
    pub(crate) path: String,
    /// The key's own span (the last key of a dotted key or header).
    pub(crate) span: Range<usize>,
    /// Defined by a `[table]` or `[[array]]` header rather than `key = value`.
    pub(crate) header: bool,
}

/// Every key definition of `text`, in document order. Keys that only
/// name a parent (`base` in `[base.sources]`) are not definitions.
pub(crate) fn definitions(text: &str) -> Vec<KeyDefinition> {
    let source = Source::new(text);
    let tokens = source.lex().into_vec();
    let mut collector = Collector {
        source,
        table: String::new(),
        keys: Vec::new(),
        header: None,
        pending: None,
        frames: Vec::new(),
        tables_of_arrays: HashMap::new(),
        out: Vec::new(),
    };
    let mut ignore = |_: ParseError| {};
    parse_document(&tokens, &mut collector, &mut ignore);
    collector.out
}

/// The first definition of the key that `second` (a key span) defines
/// again, when there is one before it.
pub(crate) fn first_definition(text: &str, second: &Range<usize>) -> Option<KeyDefinition> {
    let defs = definitions(text);
    let again = defs.iter().find(|d| d.span == *second)?;
    defs.iter()
        .find(|d| d.path == again.path && d.span.start < second.start)
        .cloned()
}

enum Frame {
    Inline { path: String },
    Array { path: String, count: usize },
}

struct Collector<'i> {
    source: Source<'i>,
    /// The path of the table the current header opened.
    table: String,
    /// Keys of the header or dotted key being read.
    keys: Vec<(String, Range<usize>)>,
    /// `Some(is_array)` while inside a table header.
    header: Option<bool>,
    /// The path the next value is assigned to.
    pending: Option<String>,
    frames: Vec<Frame>,
    /// How many `[[x]]` tables each array of tables has so far.
    tables_of_arrays: HashMap<String, usize>,
    out: Vec<KeyDefinition>,
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

impl Collector<'_> {
    /// The path of `keys` under `base`, following arrays of tables to
    /// their last table as TOML does (`[files.x]` after `[[files]]`).
    fn resolve(&self, base: &str, keys: &[(String, Range<usize>)]) -> String {
        let mut path = base.to_owned();
        for (key, _) in keys {
            path = join(&path, key);
            if let Some(n) = self.tables_of_arrays.get(&path) {
                path = format!("{path}[{}]", n.saturating_sub(1));
            }
        }
        path
    }

    /// The path of a value that starts here, inside an array or not.
    fn value_path(&mut self) -> Option<String> {
        match self.frames.last_mut() {
            Some(Frame::Array { path, count }) => {
                let p = format!("{path}[{count}]");
                *count += 1;
                Some(p)
            }
            _ => self.pending.take(),
        }
    }

    fn define(&mut self, path: String, span: Range<usize>) {
        let header = self.header.is_some();
        self.out.push(KeyDefinition { path, span, header });
    }
}

impl EventReceiver for Collector<'_> {
    fn std_table_open(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.header = Some(false);
        self.keys.clear();
        self.frames.clear();
    }

    fn std_table_close(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        let keys = std::mem::take(&mut self.keys);
        if let Some(((_, span), parents)) = keys.split_last() {
            let path = join(&self.resolve("", parents), &keys[keys.len() - 1].0);
            self.define(path.clone(), span.clone());
            self.table = path;
        }
        self.header = None;
    }

    fn array_table_open(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.header = Some(true);
        self.keys.clear();
        self.frames.clear();
    }

    fn array_table_close(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        let keys = std::mem::take(&mut self.keys);
        if let Some(((_, span), parents)) = keys.split_last() {
            let array = join(&self.resolve("", parents), &keys[keys.len() - 1].0);
            let n = self.tables_of_arrays.entry(array.clone()).or_insert(0);
            *n += 1;
            let index = *n - 1;
            if index == 0 {
                self.define(array.clone(), span.clone());
            }
            self.table = format!("{array}[{index}]");
        }
        self.header = None;
    }

    fn inline_table_open(&mut self, _span: Span, _error: &mut dyn ErrorSink) -> bool {
        let path = self.value_path().unwrap_or_default();
        self.frames.push(Frame::Inline { path });
        true
    }

    fn inline_table_close(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.frames.pop();
    }

    fn array_open(&mut self, _span: Span, _error: &mut dyn ErrorSink) -> bool {
        let path = self.value_path().unwrap_or_default();
        self.frames.push(Frame::Array { path, count: 0 });
        true
    }

    fn array_close(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.frames.pop();
    }

    fn simple_key(&mut self, span: Span, encoding: Option<toml_parser::decoder::Encoding>, _error: &mut dyn ErrorSink) {
        let raw = toml_parser::Raw::new_unchecked(
            self.source.input().get(span.start()..span.end()).unwrap_or(""),
            encoding,
            span,
        );
        let mut key = String::new();
        let mut ignore = |_: ParseError| {};
        raw.decode_key(&mut key, &mut ignore);
        self.keys.push((key, span.start()..span.end()));
    }

    fn key_val_sep(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        let keys = std::mem::take(&mut self.keys);
        let base = match self.frames.last() {
            Some(Frame::Inline { path }) => path.clone(),
            _ => self.table.clone(),
        };
        if let Some(((last, span), parents)) = keys.split_last() {
            let path = join(&self.resolve(&base, parents), last);
            self.define(path.clone(), span.clone());
            self.pending = Some(path);
        }
    }

    fn scalar(&mut self, _span: Span, _encoding: Option<toml_parser::decoder::Encoding>, _error: &mut dyn ErrorSink) {
        self.value_path();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(text: &str) -> Vec<(String, &str)> {
        definitions(text).into_iter().map(|d| (d.path, &text[d.span])).collect()
    }

    #[test]
    fn paths_of_every_kind_of_key() {
        let text = "top = 1\n[base]\nrelease = \"x\"\n[[base.sources]]\nname = \"a\"\n[[base.sources]]\nname = \"b\"\n\
                    [targets.\"ovh-byol\"]\nsize = \"4GiB\"\nd.e = { f = [1, { g = 2 }] }\n";
        let got = paths(text);
        let want = [
            ("top", "top"),
            ("base", "base"),
            ("base.release", "release"),
            ("base.sources", "sources"),
            ("base.sources[0].name", "name"),
            ("base.sources[1].name", "name"),
            ("targets.ovh-byol", "\"ovh-byol\""),
            ("targets.ovh-byol.size", "size"),
            ("targets.ovh-byol.d.e", "e"),
            ("targets.ovh-byol.d.e.f", "f"),
            ("targets.ovh-byol.d.e.f[1].g", "g"),
        ];
        let want: Vec<(String, &str)> = want.iter().map(|(p, k)| ((*p).to_owned(), *k)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn finds_the_first_of_two_definitions() {
        let cases = [
            (
                "[base]\nrelease = \"a\"\nrelease = \"b\"\n",
                "release = \"b\"",
                "base.release",
                7,
            ),
            ("[base]\nx = 1\n[image]\n[base]\n", "base]\n", "base", 1),
            ("a = { b = 1, b = 2 }\n", "b = 2", "a.b", 6),
            (
                "[[files]]\nsrc = 1\n[[files]]\nsrc = 2\nsrc = 3\n",
                "src = 3",
                "files[1].src",
                28,
            ),
        ];
        for (text, second, path, first_at) in cases {
            let start = text.rfind(second).unwrap();
            let len = second.find([' ', ']']).unwrap();
            let first = first_definition(text, &(start..start + len)).unwrap_or_else(|| panic!("{text}"));
            assert_eq!((first.path.as_str(), first.span.start), (path, first_at), "{text}");
        }
        assert_eq!(first_definition("a = 1\nb = 2\n", &(6..7)), None);
    }
}
