//! Key paths and where they are in the TOML text.
//!
//! A key path names a value the way errors show it: keys joined by `.`, array elements as
//! `[i]`, keys that are not bare TOML keys in double quotes — `server.listen`,
//! `routes[2].pipeline[0].plugin`, `routes[0].match.headers."x.y"`. This module maps a key path
//! to a line and column through the spans `toml_edit` keeps when it parses (following standard
//! tables, arrays of tables, dotted keys, inline tables and inline arrays), and maps a byte
//! offset back to a key path (used to name the key of a serde error that only has a span).

use std::ops::Range;
use std::path::Path;

use toml_edit::{Document, Item, Key, Table, Value};

use crate::error::ConfigError;

/// A position in the TOML text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// Byte range of the key or value in the text.
    pub span: Range<usize>,
}

/// Where `key_path` is in `text`: the value (or table header) it names, else its key, else the
/// nearest enclosing key or table that can be found. `None` when `text` is not valid TOML or
/// no prefix of the path is in it.
pub fn locate(text: &str, key_path: &str) -> Option<Location> {
    Locator::new(text).locate(key_path)
}

/// The key path of the innermost key or value whose text contains byte `offset`, if any.
pub fn key_path_at(text: &str, offset: usize) -> Option<String> {
    Locator::new(text).path_at(offset)
}

/// 1-based line and column (in characters) of byte `offset` in `text`. Offsets past the end
/// give the position just after the last character.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// `base.key`, quoting `key` unless it is a bare TOML key.
pub(crate) fn join_key(base: &str, key: &str) -> String {
    let key = format_key(key);
    if base.is_empty() {
        key
    } else {
        format!("{base}.{key}")
    }
}

/// `base[index]`.
pub(crate) fn join_index(base: &str, index: usize) -> String {
    format!("{base}[{index}]")
}

fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn format_key(key: &str) -> String {
    if is_bare_key(key) {
        key.to_owned()
    } else {
        let mut out = String::with_capacity(key.len() + 2);
        out.push('"');
        for c in key.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// Splits a key path into segments; `None` when it is malformed.
fn parse_path(path: &str) -> Option<Vec<Segment>> {
    let mut segments = Vec::new();
    let mut chars = path.chars().peekable();
    let mut expect_key = true;
    while let Some(&c) = chars.peek() {
        match c {
            '[' => {
                chars.next();
                let mut digits = String::new();
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    digits.push(c);
                }
                segments.push(Segment::Index(digits.parse().ok()?));
                expect_key = false;
            }
            '.' if !expect_key => {
                chars.next();
                expect_key = true;
            }
            '"' if expect_key => {
                chars.next();
                let mut key = String::new();
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            'u' => {
                                let hex: String = chars.by_ref().take(4).collect();
                                key.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                            }
                            c => key.push(c),
                        },
                        c => key.push(c),
                    }
                }
                segments.push(Segment::Key(key));
                expect_key = false;
            }
            _ if expect_key => {
                let mut key = String::new();
                while let Some(&c) = chars.peek() {
                    if c == '.' || c == '[' {
                        break;
                    }
                    key.push(c);
                    chars.next();
                }
                segments.push(Segment::Key(key));
                expect_key = false;
            }
            _ => return None,
        }
    }
    Some(segments)
}

fn render_path(segments: &[Segment]) -> String {
    let mut path = String::new();
    for segment in segments {
        path = match segment {
            Segment::Key(k) => join_key(&path, k),
            Segment::Index(i) => join_index(&path, *i),
        };
    }
    path
}

/// A node of the parsed document, whatever its representation.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Table(&'a Table),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    fn span(self) -> Option<Range<usize>> {
        match self {
            Node::Item(item) => item.span(),
            Node::Table(table) => table.span(),
            Node::Value(value) => value.span(),
        }
    }

    fn as_table(self) -> Option<&'a Table> {
        match self {
            Node::Item(Item::Table(t)) | Node::Table(t) => Some(t),
            _ => None,
        }
    }

    fn as_value(self) -> Option<&'a Value> {
        match self {
            Node::Item(Item::Value(v)) | Node::Value(v) => Some(v),
            _ => None,
        }
    }

    /// The child under `key`, with the key as written.
    fn child_key(self, key: &str) -> Option<(&'a Key, Node<'a>)> {
        if let Some(table) = self.as_table() {
            return table
                .get_key_value(key)
                .map(|(k, item)| (k, Node::Item(item)));
        }
        match self.as_value()? {
            Value::InlineTable(table) => table
                .get_key_value(key)
                .map(|(k, item)| (k, Node::Item(item))),
            _ => None,
        }
    }

    /// The element at `index`.
    fn child_index(self, index: usize) -> Option<Node<'a>> {
        match self {
            Node::Item(Item::ArrayOfTables(array)) => array.get(index).map(Node::Table),
            _ => match self.as_value()? {
                Value::Array(array) => array.get(index).map(Node::Value),
                _ => None,
            },
        }
    }

    /// Every child: its segment, its key (for keyed children) and the node.
    fn children(self) -> Vec<(Segment, Option<&'a Key>, Node<'a>)> {
        let keyed = |pairs: Vec<(&'a Key, &'a Item)>| {
            pairs
                .into_iter()
                .map(|(k, item)| (Segment::Key(k.get().to_owned()), Some(k), Node::Item(item)))
                .collect::<Vec<_>>()
        };
        if let Some(table) = self.as_table() {
            let pairs = table
                .iter()
                .filter_map(|(k, _)| table.get_key_value(k))
                .collect();
            return keyed(pairs);
        }
        if let Node::Item(Item::ArrayOfTables(array)) = self {
            return array
                .iter()
                .enumerate()
                .map(|(i, t)| (Segment::Index(i), None, Node::Table(t)))
                .collect();
        }
        match self.as_value() {
            Some(Value::InlineTable(table)) => {
                let pairs = table
                    .iter()
                    .filter_map(|(k, _)| table.get_key_value(k))
                    .collect();
                keyed(pairs)
            }
            Some(Value::Array(array)) => array
                .iter()
                .enumerate()
                .map(|(i, v)| (Segment::Index(i), None, Node::Value(v)))
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn contains(span: &Option<Range<usize>>, offset: usize) -> bool {
    span.as_ref()
        .is_some_and(|s| s.contains(&offset) || (s.is_empty() && s.start == offset))
}

/// Path (relative to `node`) of the innermost key or value containing `offset`.
fn deepest(node: Node<'_>, offset: usize) -> Option<Vec<Segment>> {
    for (segment, key, child) in node.children() {
        // A key is an exact hit; check it before descending, because a table's span (its
        // header) also covers the keys of its parents (`[plugins.x]`).
        if contains(&key.and_then(Key::span), offset) {
            return Some(vec![segment]);
        }
        if let Some(mut rest) = deepest(child, offset) {
            rest.insert(0, segment);
            return Some(rest);
        }
    }
    contains(&node.span(), offset).then(Vec::new)
}

/// A parsed document kept for several look-ups.
pub(crate) struct Locator<'a> {
    text: &'a str,
    doc: Option<Document<&'a str>>,
}

impl<'a> Locator<'a> {
    /// Parses `text`; look-ups find nothing when it is not valid TOML.
    pub(crate) fn new(text: &'a str) -> Self {
        Self {
            text,
            doc: Document::parse(text).ok(),
        }
    }

    /// See [`locate`].
    pub(crate) fn locate(&self, key_path: &str) -> Option<Location> {
        let doc = self.doc.as_ref()?;
        let segments = parse_path(key_path)?;
        let mut node = Node::Table(doc.as_table());
        let mut best: Option<Range<usize>> = None;
        for segment in &segments {
            let (key_span, next) = match segment {
                Segment::Key(k) => match node.child_key(k) {
                    Some((key, next)) => (key.span(), next),
                    None => break,
                },
                Segment::Index(i) => match node.child_index(*i) {
                    Some(next) => (None, next),
                    None => break,
                },
            };
            if let Some(span) = next.span().or(key_span) {
                best = Some(span);
            }
            node = next;
        }
        let span = best?;
        let (line, column) = line_col(self.text, span.start);
        Some(Location { line, column, span })
    }

    /// See [`key_path_at`].
    pub(crate) fn path_at(&self, offset: usize) -> Option<String> {
        let doc = self.doc.as_ref()?;
        let segments = deepest(Node::Table(doc.as_table()), offset)?;
        Some(render_path(&segments))
    }

    /// A [`ConfigError`] at `key_path`, with line and column when the path can be found.
    pub(crate) fn error(&self, file: &Path, key_path: &str, message: String) -> ConfigError {
        let location = self.locate(key_path);
        ConfigError {
            file: file.to_path_buf(),
            line: location.as_ref().map(|l| l.line),
            column: location.as_ref().map(|l| l.column),
            key_path: key_path.to_owned(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"[server]
listen = "127.0.0.1:8080"

[plugins.breaker]
source = "b.wasm"
grants = ["log",
  "state"]

[[routes]]
name = "a"

[[routes]]
match = { path_prefix = "/x", headers = { "x.y" = "1" } }
pipeline = [
  { plugin = "breaker" },
  { plugin = "other", config = { a = 1 } },
]
a.b.c = 3
"#;

    fn line(path: &str) -> Option<usize> {
        locate(TEXT, path).map(|l| l.line)
    }

    #[test]
    fn resolves_through_every_kind_of_table_and_array() {
        assert_eq!(line("server"), Some(1));
        assert_eq!(line("server.listen"), Some(2));
        assert_eq!(line("plugins.breaker"), Some(4));
        assert_eq!(line("plugins.breaker.grants[1]"), Some(7));
        assert_eq!(line("routes[0].name"), Some(10));
        assert_eq!(line("routes[1]"), Some(12));
        assert_eq!(line("routes[1].match.path_prefix"), Some(13));
        assert_eq!(line("routes[1].match.headers.\"x.y\""), Some(13));
        assert_eq!(line("routes[1].pipeline[1].plugin"), Some(16));
        assert_eq!(line("routes[1].pipeline[1].config.a"), Some(16));
        assert_eq!(line("routes[1].a.b.c"), Some(18));
        assert_eq!(locate(TEXT, "server.listen").unwrap().column, 10);
    }

    #[test]
    fn falls_back_to_the_nearest_enclosing_key() {
        assert_eq!(line("routes[0].pipeline[3]"), Some(9));
        assert_eq!(line("plugins.breaker.timeout_ms"), Some(4));
        assert_eq!(line("nothing"), None);
    }

    #[test]
    fn maps_offsets_back_to_key_paths() {
        let at = |needle: &str| key_path_at(TEXT, TEXT.find(needle).unwrap());
        assert_eq!(
            at("\"state\"").as_deref(),
            Some("plugins.breaker.grants[1]")
        );
        assert_eq!(
            at("\"other\"").as_deref(),
            Some("routes[1].pipeline[1].plugin")
        );
        assert_eq!(
            at("a = 1").as_deref(),
            Some("routes[1].pipeline[1].config.a")
        );
        assert_eq!(
            at("\"x.y\"").as_deref(),
            Some("routes[1].match.headers.\"x.y\"")
        );
        assert_eq!(at("listen").as_deref(), Some("server.listen"));
    }

    #[test]
    fn key_paths_round_trip() {
        let path = r#"routes[1].match.headers."a \"b\"".x[0]"#;
        assert_eq!(render_path(&parse_path(path).unwrap()), path);
        assert_eq!(line_col("ab\ncé\nx", 6), (2, 3));
    }
}
