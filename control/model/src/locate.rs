//! Turning a field path (`route[2].split[0].group`) into a line and column of the TOML text.

use toml_edit::{Document, Item, Table, Value};

/// One step of a field path.
#[derive(Debug, PartialEq)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some(end) = rest.find(']') {
            if let Ok(i) = rest[1..end].parse() {
                out.push(Seg::Index(i));
            }
            rest = &rest[end + 1..];
        }
    }
    out
}

/// A place in the parsed document: an item, a table of an array of tables, or a value.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Table(&'a Table),
    Value(&'a Value),
}

/// Byte span of the deepest part of `path` that exists in `doc`.
fn span_of(doc: &Document<String>, path: &str) -> Option<std::ops::Range<usize>> {
    let mut node = Node::Item(doc.as_item());
    let mut best = None;
    for seg in segments(path) {
        let table = match node {
            Node::Item(Item::Table(t)) | Node::Table(t) => Some(t),
            _ => None,
        };
        let inline = match node {
            Node::Item(Item::Value(Value::InlineTable(t))) | Node::Value(Value::InlineTable(t)) => Some(t),
            _ => None,
        };
        let array = match node {
            Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => Some(a),
            _ => None,
        };
        let next = match seg {
            Seg::Key(k) => {
                if let Some(t) = table {
                    best = t.key(k).and_then(|k| k.span()).or(best);
                    t.get(k).map(Node::Item)
                } else if let Some(t) = inline {
                    best = t.key(k).and_then(|k| k.span()).or(best);
                    t.get(k).map(Node::Value)
                } else {
                    None
                }
            }
            Seg::Index(i) => {
                let (next, span) = match node {
                    Node::Item(Item::ArrayOfTables(a)) => match a.get(i) {
                        Some(t) => (Some(Node::Table(t)), t.span()),
                        None => (None, None),
                    },
                    _ => match array.and_then(|a| a.get(i)) {
                        Some(v) => (Some(Node::Value(v)), v.span()),
                        None => (None, None),
                    },
                };
                best = span.or(best);
                next
            }
        };
        match next {
            Some(n) => node = n,
            None => break,
        }
    }
    best
}

/// 1-based (line, column) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
    (line, col)
}

/// Line and column of a field path in the TOML text, if it can be found.
pub(crate) fn locate(text: &str, doc: Option<&Document<String>>, path: &str) -> Option<(usize, usize)> {
    let span = span_of(doc?, path)?;
    Some(line_col(text, span.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_fields() {
        let text = "[admin]\nlisten = \"x\"\n\n[[route]]\nname = \"a\"\n\n[[route]]\nname = \"b\"\ngroup = \"g\"\nsplit = [{ group = \"x\", weight = 1 }]\n";
        let doc = Document::parse(text.to_string()).unwrap();
        assert_eq!(locate(text, Some(&doc), "admin.listen"), Some((2, 1)));
        assert_eq!(locate(text, Some(&doc), "route[1].group"), Some((9, 1)));
        assert_eq!(locate(text, Some(&doc), "route[1].split[0].group").map(|l| l.0), Some(10));
        assert_eq!(locate(text, Some(&doc), "route[0]").map(|l| l.0), Some(4));
    }
}
