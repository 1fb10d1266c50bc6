//! Where things sit in the spec source. Serde hands validation plain values,
//! so this keeps the spanned TOML tree beside them and maps key paths such as
//! `files[2].dest` to byte ranges, and byte ranges back to key paths (serde's
//! errors carry only a span).

use std::ops::Range;

use toml::de::{DeArray, DeTable, DeValue};
use toml::Spanned;

/// The spanned TOML tree of one spec.
pub(crate) struct SpanIndex<'i> {
    root: DeTable<'i>,
}

enum Segment<'p> {
    Key(&'p str),
    Index(usize),
}

/// Splits `files[2].dest` into `files`, `2`, `dest`. Keys in the spec format
/// never contain `.` or `[`, so no quoting is needed.
fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut indexes) = part.split_once('[').map_or((part, ""), |(k, rest)| (k, rest));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some((index, rest)) = indexes.split_once(']') {
            if let Ok(i) = index.parse() {
                out.push(Segment::Index(i));
            }
            indexes = rest.trim_start_matches('[');
        }
    }
    out
}

impl<'i> SpanIndex<'i> {
    pub(crate) fn new(root: DeTable<'i>) -> Self {
        SpanIndex { root }
    }

    /// The span of the value at `path`.
    pub(crate) fn value(&self, path: &str) -> Option<Range<usize>> {
        let mut current: Option<&Spanned<DeValue<'i>>> = None;
        for segment in segments(path) {
            current = Some(match (segment, current) {
                (Segment::Key(k), None) => self.root.get(k)?,
                (Segment::Key(k), Some(v)) => v.get_ref().as_table()?.get(k)?,
                (Segment::Index(i), Some(v)) => v.get_ref().as_array()?.get(i)?,
                (Segment::Index(_), None) => return None,
            });
        }
        current.map(Spanned::span)
    }

    /// The span of the value at `path`, or else of the closest enclosing
    /// table that exists (its header), so that "missing key" problems point
    /// at the table that should hold it. `None` for the document itself.
    pub(crate) fn value_or_parent(&self, path: &str) -> Option<Range<usize>> {
        let mut path = path;
        loop {
            if let Some(span) = self.value(path) {
                return Some(span);
            }
            path = &path[..path.rfind(['.', '['])?];
        }
    }

    /// The key path of the key or value whose span is `span`, e.g.
    /// `packages.instal` or `files[1].mode`.
    pub(crate) fn path_at(&self, span: &Range<usize>) -> Option<String> {
        find_in_table(&self.root, span, String::new())
    }
}

fn find_in_table(table: &DeTable<'_>, span: &Range<usize>, prefix: String) -> Option<String> {
    for (k, v) in table.iter() {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        if k.span() == *span {
            return Some(path);
        }
        // An array of tables has the span of its first table's header:
        // that table is the closer answer.
        if let Some(found) = find_in_value(v.get_ref(), span, path.clone()) {
            return Some(found);
        }
        if v.span() == *span {
            return Some(path);
        }
    }
    None
}

fn find_in_value(value: &DeValue<'_>, span: &Range<usize>, path: String) -> Option<String> {
    match value {
        DeValue::Table(t) => find_in_table(t, span, path),
        DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let path = format!("{path}[{i}]");
            if item.span() == *span {
                return Some(path);
            }
            find_in_value(item.get_ref(), span, path)
        }),
        _ => None,
    }
}

/// Removes the key or array element at `path` from `root`, or puts
/// `replacement` in its place; false when there is none.
pub(crate) fn edit<'i>(root: &mut DeTable<'i>, path: &str, replacement: Option<DeValue<'i>>) -> bool {
    let segments = segments(path);
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut table: Option<&mut DeTable<'i>> = Some(root);
    let mut array: Option<&mut DeArray<'i>> = None;
    for segment in parents {
        let next = match (segment, table.take(), array.take()) {
            (Segment::Key(k), Some(t), _) => t.get_mut(*k),
            (Segment::Index(i), _, Some(a)) => a.get_mut(*i),
            _ => None,
        };
        match next.map(Spanned::get_mut) {
            Some(DeValue::Table(t)) => table = Some(t),
            Some(DeValue::Array(a)) => array = Some(a),
            _ => return false,
        }
    }
    match (last, table, array, replacement) {
        (Segment::Key(k), Some(t), _, None) => t.remove(*k).is_some(),
        (Segment::Key(k), Some(t), _, Some(v)) => t.get_mut(*k).map(|slot| *slot.get_mut() = v).is_some(),
        (Segment::Index(i), _, Some(a), None) if *i < a.len() => {
            let kept = a
                .iter()
                .enumerate()
                .filter(|(j, _)| j != i)
                .map(|(_, v)| v.clone())
                .collect();
            *a = kept;
            true
        }
        (Segment::Index(i), _, Some(a), Some(v)) => a.get_mut(*i).map(|slot| *slot.get_mut() = v).is_some(),
        _ => false,
    }
}

/// The TOML way to name the table that holds `path`'s last key, for
/// messages: `in [packages]`, `in [[files]] #2`, `in [targets.ovh-byol]`, or
/// `at the top level`.
pub(crate) fn table_of(path: &str) -> String {
    match path.rfind('.') {
        Some(cut) => format!("in {}", table_name(&path[..cut])),
        None => "at the top level".to_owned(),
    }
}

/// The TOML header of the table at `path`: `[packages]`, `[[files]] #2`.
pub(crate) fn table_name(path: &str) -> String {
    match path.strip_suffix(']').and_then(|p| p.rsplit_once('[')) {
        Some((array, index)) if !array.contains('[') => {
            let n: usize = index.parse().unwrap_or(0);
            format!("[[{array}]] #{}", n + 1)
        }
        _ => format!("[{path}]"),
    }
}

/// The last key of `path` (`dest` for `files[2].dest`).
pub(crate) fn leaf(path: &str) -> &str {
    let last = path.rsplit('.').next().unwrap_or(path);
    last.split('[').next().unwrap_or(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "hostname = \"h\"\n[packages]\ninstall = [\"a\", \"b\"]\n[[files]]\nsrc = \"x\"\n[[files]]\nsrc = \"y\"\ndest = \"/y\"\n[targets.ovh-byol]\nsize = \"4GiB\"\n";

    #[test]
    fn lookups() {
        let root = DeTable::parse(SPEC).unwrap().into_inner();
        let index = SpanIndex::new(root);
        let text = |s: Option<Range<usize>>| s.map(|s| &SPEC[s]);
        assert_eq!(text(index.value("hostname")), Some("\"h\""));
        assert_eq!(text(index.value("packages.install[1]")), Some("\"b\""));
        assert_eq!(text(index.value("files[1].dest")), Some("\"/y\""));
        assert_eq!(text(index.value("targets.ovh-byol.size")), Some("\"4GiB\""));
        assert_eq!(text(index.value("files[0].dest")), None);
        assert_eq!(text(index.value_or_parent("files[0].dest")), Some("[[files]]"));
        assert_eq!(text(index.value_or_parent("packages.remove")), Some("[packages]"));
        assert_eq!(index.value_or_parent("kernel.package"), None);
        let dest = index.value("files[1].dest").unwrap();
        assert_eq!(index.path_at(&dest).as_deref(), Some("files[1].dest"));
        let key = SPEC.find("install").unwrap();
        assert_eq!(index.path_at(&(key..key + 7)).as_deref(), Some("packages.install"));
    }

    #[test]
    fn table_names() {
        let cases = [
            ("hostname", "at the top level"),
            ("packages.instal", "in [packages]"),
            ("files[1].dst", "in [[files]] #2"),
            ("targets.ovh-byl", "in [targets]"),
            ("targets.ovh-byol.sise", "in [targets.ovh-byol]"),
            ("base.sources[0].nme", "in [[base.sources]] #1"),
        ];
        for (path, want) in cases {
            assert_eq!(table_of(path), want, "{path}");
        }
        assert_eq!(leaf("files[2].dest"), "dest");
    }

    #[test]
    fn removes_keys_and_elements() {
        let mut root = DeTable::parse(SPEC).unwrap().into_inner();
        assert!(edit(&mut root, "packages.install[0]", None));
        assert!(edit(&mut root, "files[1].dest", None));
        assert!(edit(&mut root, "hostname", None));
        assert!(edit(&mut root, "files[0].src", Some(DeValue::Boolean(true))));
        assert!(!edit(&mut root, "files[5].dest", None));
        assert!(!edit(&mut root, "nope.x", None));
        let files = root.get("files").unwrap().get_ref().as_array().unwrap();
        let src = files[0].get_ref().as_table().unwrap().get("src").unwrap();
        assert_eq!(src.get_ref().as_bool(), Some(true));
        let index = SpanIndex::new(root);
        let text = |s: Option<Range<usize>>| s.map(|s| &SPEC[s]);
        assert_eq!(text(index.value("packages.install[0]")), Some("\"b\""));
        assert_eq!(index.value("packages.install[1]"), None);
        assert_eq!(index.value("files[1].dest"), None);
        assert_eq!(index.value("hostname"), None);
        assert_eq!(leaf("packages.install[3]"), "install");
    }
}
