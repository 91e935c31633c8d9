//! Where each value of a YAML document sits in its file.
//!
//! serde gives typed values but forgets positions, and serde's own errors only
//! cover type and syntax mistakes. Checks that need the whole plan (a missing
//! Dockerfile, a destination nobody set) still have to point at a line, so we
//! run the document through yaml-rust2's event parser once and remember the
//! position of every key and value by its dotted path (`bake[1].kaniko.dockerfile`).

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// Positions of the keys and values of one YAML document, by dotted path.
#[derive(Debug, Default, Clone)]
pub struct Locations {
    keys: HashMap<String, Pos>,
    values: HashMap<String, Pos>,
}

impl Locations {
    /// Indexes `text`. A document that does not parse gets an empty index:
    /// the typed parse reports that error with its own position.
    pub fn index(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return Locations::default();
        }
        builder.locations
    }

    /// Where the key of `path` is written; for a sequence item, where the item starts.
    pub fn key(&self, path: &str) -> Option<Pos> {
        self.keys
            .get(path)
            .or_else(|| self.values.get(path))
            .copied()
    }

    /// Where the value at `path` starts.
    pub fn value(&self, path: &str) -> Option<Pos> {
        self.values.get(path).copied()
    }

    /// The position of `path`, or of its closest ancestor that is written
    /// down: a key the user left out is best reported at the block that
    /// should have held it.
    pub fn nearest(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.key(p) {
                return pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return Pos { line: 1, column: 1 },
            }
        }
    }
}

enum Frame {
    Mapping { path: String, key: Option<String> },
    Sequence { path: String, index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    locations: Locations,
}

fn pos(mark: Marker) -> Pos {
    Pos {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Builder {
    /// Handles the start of a node: either a mapping key, or a value whose
    /// path is decided by its parent. Returns the value's path if it is one.
    fn begin_node(&mut self, scalar_key: Option<&str>, mark: Marker) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Mapping { path, key }) => match key.take() {
                None => {
                    // A key. Complex (non-scalar) keys get a placeholder name.
                    let name = scalar_key.unwrap_or("?").to_string();
                    let full = join(path, &name);
                    self.locations.keys.insert(full, pos(mark));
                    // yaml-rust2 marks a block mapping at its first `:`; the
                    // mapping really starts at its first key.
                    if let Some(start) = self.locations.values.get_mut(path.as_str()) {
                        if (mark.line(), mark.col() + 1) < (start.line, start.column) {
                            *start = pos(mark);
                        }
                    }
                    *key = Some(name);
                    None
                }
                Some(name) => {
                    let full = join(path, &name);
                    self.locations.values.insert(full.clone(), pos(mark));
                    Some(full)
                }
            },
            Some(Frame::Sequence { path, index }) => {
                let full = format!("{path}[{index}]");
                *index += 1;
                self.locations.values.insert(full.clone(), pos(mark));
                Some(full)
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(ref s, ..) => {
                self.begin_node(Some(s), mark);
            }
            Event::Alias(_) => {
                self.begin_node(Some("*alias"), mark);
            }
            Event::MappingStart(..) => {
                let path = self.begin_node(None, mark).unwrap_or_else(|| "?".into());
                self.stack.push(Frame::Mapping { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.begin_node(None, mark).unwrap_or_else(|| "?".into());
                self.stack.push(Frame::Sequence { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_keys_values_and_sequence_items() {
        let text =
            "global:\n  arch: amd64\nbake:\n  - arch: arm64\n    kaniko:\n      dockerfile: D\n";
        let loc = Locations::index(text);
        assert_eq!(loc.key("global.arch"), Some(Pos { line: 2, column: 3 }));
        assert_eq!(loc.value("global.arch"), Some(Pos { line: 2, column: 9 }));
        assert_eq!(loc.value("bake[0]"), Some(Pos { line: 4, column: 5 }));
        assert_eq!(
            loc.key("bake[0].kaniko.dockerfile"),
            Some(Pos { line: 6, column: 7 })
        );
        // A path nobody wrote falls back to its nearest written ancestor.
        assert_eq!(
            loc.nearest("bake[0].kaniko.destination"),
            Pos { line: 5, column: 5 }
        );
        assert_eq!(loc.nearest("nothing.here"), Pos { line: 1, column: 1 });
    }

    #[test]
    fn flow_style_is_indexed_too() {
        let loc = Locations::index("x: {a: 1, b: [p, q]}\n");
        assert_eq!(
            loc.value("x.b[1]"),
            Some(Pos {
                line: 1,
                column: 18
            })
        );
    }
}
