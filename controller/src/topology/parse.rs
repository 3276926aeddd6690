//! Parsing `topology.yaml`: YAML text to a [`Topology`], with the position of every node.
//!
//! Owns YAML syntax (one document, YAML 1.2 core schema, anchors and aliases, no duplicate keys, no
//! merge keys) and the structural check of the document against the JSON Schema of `Topology`
//! (unknown fields, missing fields, types, integer ranges, enum values, `apiVersion`/`kind`).
//! Every problem is reported at once, each with its field path, `file:line:column` and a hint.
//! It does not judge meaning (names that must resolve, ports that collide, defaults): that is
//! `validate`, which places its own diagnostics with the [`SourceMap`] built here.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use schemars::schema::{InstanceType, RootSchema, Schema, SchemaObject, SingleOrVec};
use serde_json::Value;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, ScanError, TScalarStyle};

use super::types::{self, Topology};
use crate::diag::{self, Diagnostic, Location, SourceMap};

/// A topology document that is well-formed YAML and matches the schema of [`Topology`].
#[derive(Debug, Clone)]
pub struct Parsed {
    pub topology: Topology,
    /// Position of every node of the document, keyed by field path.
    pub source: SourceMap,
    /// The document as JSON (anchors expanded), in file order.
    pub value: Value,
}

/// The smallest document bssctl accepts; shown when a file is empty or has no usable root.
const MINIMAL: &str =
    "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata:\n  name: demo\nspec: {}";

/// Deeper nesting than this is certainly a mistake; the limit keeps every walk over the tree
/// (which recurses) far from the stack's end.
const MAX_DEPTH: usize = 100;

/// Upper bound on nodes, counting every copy an alias makes ("billion laughs" documents). The
/// root topology has about 300; every later stage (source map, JSON, schema walk, diagnostics)
/// costs memory per node, so the bound is what keeps a hostile file from exhausting memory.
pub const MAX_NODES: usize = 20_000;

/// Upper bound on the text of the document after aliases are expanded (keys and scalars).
pub const MAX_EXPANDED_BYTES: usize = 2 << 20;

/// Upper bound on the file itself: a topology is a few kilobytes.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Reads and parses a topology file. A file that cannot be read gives one diagnostic (without a
/// position: there is none in a file that could not be read) with a hint.
pub fn parse_file(path: &Path) -> Result<Parsed, Vec<Diagnostic>> {
    let file = path.display().to_string();
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.is_file() && meta.len() > MAX_FILE_BYTES {
            return Err(vec![Diagnostic::error(
                "",
                format!(
                    "failed to read {file}: it has {} bytes, more than the {MAX_FILE_BYTES} a topology may have",
                    meta.len()
                ),
            )
            .with_hint("a topology is a few kilobytes: check that this is the right file")]);
        }
    }
    match std::fs::read_to_string(path) {
        Ok(src) => parse_str(&src, &file),
        Err(e) => {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound => format!("no file at `{file}`: check the path"),
                std::io::ErrorKind::PermissionDenied => {
                    format!("`{file}` is not readable by this user: check its permissions")
                }
                std::io::ErrorKind::InvalidData => {
                    "the topology must be UTF-8 text (check the file's encoding)".to_string()
                }
                std::io::ErrorKind::IsADirectory => {
                    format!("`{file}` is a directory: pass the topology file inside it")
                }
                _ => format!("check that `{file}` is a readable topology file"),
            };
            Err(vec![Diagnostic::error(
                "",
                format!("failed to read {file}: {e}"),
            )
            .with_hint(hint)])
        }
    }
}

/// Parses a topology from text; `file` is the name used in diagnostics and the [`SourceMap`].
///
/// Returns every problem at once (sorted top-down, each with a location) or the topology with the
/// position of every node and the document as JSON.
pub fn parse_str(src: &str, file: &str) -> Result<Parsed, Vec<Diagnostic>> {
    if src.len() as u64 > MAX_FILE_BYTES {
        return Err(vec![Diagnostic::error(
            "",
            format!(
                "the topology has {} bytes, more than the {MAX_FILE_BYTES} a topology may have",
                src.len()
            ),
        )
        .with_hint("a topology is a few kilobytes: check that this is the right file")
        .at(Some(loc(file, (1, 1))))]);
    }
    let loaded = load(src, file);
    let mut diags = loaded.diags;
    if loaded.fatal {
        return Err(finish(diags));
    }
    let root_pos = loaded.root.as_ref().map_or((1, 1), |r| r.pos);
    let Some(root) = loaded.root.filter(|r| !r.is_null()) else {
        let pos = root_pos;
        diags.push(
            Diagnostic::error("", "empty topology: the file holds no document")
                .with_hint(format!("a minimal topology is:\n{MINIMAL}"))
                .at(Some(loc(file, pos))),
        );
        return Err(finish(diags));
    };

    let mut source = SourceMap::new(file);
    let value = to_json(&root, "", &mut source);

    let walker = Walker {
        root: schema(),
        file,
    };
    walker.check_root(&root, &mut diags);

    if diags.iter().any(Diagnostic::is_error) {
        return Err(finish(diags));
    }
    match serde_json::from_value::<Topology>(value.clone()) {
        Ok(topology) => Ok(Parsed {
            topology,
            source,
            value,
        }),
        Err(e) => Err(finish(vec![Diagnostic::error(
            "",
            format!("failed to read the topology: {e}"),
        )
        .with_hint(
            "the document passed the structural check but not deserialization; \
             this is a bug in bssctl, please report it with the file",
        )
        .at(Some(loc(file, root.pos)))])),
    }
}

fn finish(mut diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    diag::sort(&mut diags);
    diags
}

fn loc(file: &str, (line, column): Pos) -> Location {
    Location {
        file: file.to_string(),
        line,
        column,
    }
}

/// 1-based line and column.
type Pos = (usize, usize);

/// yaml-rust2 markers carry a 1-based line and a 0-based column (in characters).
fn pos_of(mark: &Marker) -> Pos {
    (mark.line().max(1), mark.col() + 1)
}

// ---------------------------------------------------------------------------------------------
// YAML events -> tree with positions
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Node {
    pos: Pos,
    /// Levels of nesting below and including this node (a scalar is 1).
    height: usize,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// `text` is the scalar as written (after unescaping), for messages; `plain` tells an unquoted
    /// scalar (only a plain `<<` is a merge key).
    Scalar {
        value: Scalar,
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Null,
    Bool(bool),
    /// Wide enough for every u64 and i64; wider literals are kept as floats.
    Int(i128),
    Float(f64),
    Str(String),
}

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    key_pos: Pos,
    value: Node,
}

impl Node {
    fn is_null(&self) -> bool {
        matches!(
            self.kind,
            Kind::Scalar {
                value: Scalar::Null,
                ..
            }
        )
    }

    fn size(&self) -> usize {
        match &self.kind {
            Kind::Scalar { .. } => 1,
            Kind::Seq(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            Kind::Map(entries) => 1 + entries.iter().map(|e| e.value.size()).sum::<usize>(),
        }
    }

    /// Bytes of text (scalars and keys) in this node and below.
    fn bytes(&self) -> usize {
        match &self.kind {
            Kind::Scalar { text, .. } => text.len(),
            Kind::Seq(items) => items.iter().map(Node::bytes).sum::<usize>(),
            Kind::Map(entries) => entries
                .iter()
                .map(|e| e.key.len() + e.value.bytes())
                .sum::<usize>(),
        }
    }
}

/// A key waiting for its value in an open mapping.
#[derive(Debug)]
enum PendingKey {
    Key(String, Pos),
    /// The key was rejected (duplicate, not a string, merge key): its value is read and dropped.
    Skip,
}

#[derive(Debug)]
enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        path: String,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        path: String,
        entries: Vec<Entry>,
        pending: Option<PendingKey>,
        /// Keys seen so far (including rejected duplicates' originals), for duplicate detection.
        seen: HashMap<String, Pos>,
    },
}

/// Builds the first document's tree from parser events.
struct Builder<'f> {
    file: &'f str,
    src: &'f str,
    /// Byte offset of each line's start in `src`.
    line_starts: Vec<usize>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    documents: usize,
    root: Option<Node>,
    nodes: usize,
    /// Text bytes placed so far, counting every alias copy.
    bytes: usize,
    diags: Vec<Diagnostic>,
    /// Set when reading cannot go on (syntax error, second document, limits).
    stop: bool,
    /// Set when the tree is unusable (syntax error, limits): no structural check then.
    fatal: bool,
}

struct Loaded {
    root: Option<Node>,
    diags: Vec<Diagnostic>,
    fatal: bool,
}

fn load(src: &str, file: &str) -> Loaded {
    let mut parser = Parser::new_from_str(src);
    let line_starts = std::iter::once(0)
        .chain(src.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let mut builder = Builder {
        file,
        src,
        line_starts,
        stack: Vec::new(),
        anchors: HashMap::new(),
        documents: 0,
        root: None,
        nodes: 0,
        bytes: 0,
        diags: Vec::new(),
        stop: false,
        fatal: false,
    };
    // Events are pulled one by one rather than with `Parser::load`, which recurses per nesting
    // level: this keeps the depth limit ours and lets us stop at a second document.
    loop {
        match parser.next_token() {
            Ok((Event::StreamEnd, _)) => break,
            Ok((ev, mark)) => {
                builder.on_event(ev, mark);
                if builder.stop {
                    break;
                }
            }
            Err(e) => {
                builder.syntax_error(src, &e);
                break;
            }
        }
    }
    Loaded {
        root: builder.root,
        diags: builder.diags,
        fatal: builder.fatal,
    }
}

impl MarkedEventReceiver for Builder<'_> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = pos_of(&mark);
        match ev {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    self.error(
                        pos,
                        "",
                        "more than one YAML document in the file",
                        "a topology file holds exactly one document: remove this `---` and what \
                         follows it, or move the other document to its own file",
                    );
                    self.stop = true;
                }
            }
            Event::Alias(id) => self.alias(id, pos),
            Event::Scalar(text, style, anchor, tag) => {
                // An absent value (`haproxy:`) is marked at the next token, possibly lines
                // below; it belongs to its key.
                let pos = match self.stack.last() {
                    Some(Frame::Map {
                        pending: Some(PendingKey::Key(_, key_pos)),
                        ..
                    }) if text.is_empty() && style == TScalarStyle::Plain && tag.is_none() => {
                        *key_pos
                    }
                    _ => pos,
                };
                let node = self.scalar(text, style, tag.as_ref(), pos);
                self.push_node(node, anchor);
            }
            Event::SequenceStart(anchor, tag) => {
                let pos = self.dash_before(pos);
                self.check_collection_tag(tag.as_ref(), "seq", pos);
                let path = self.child_path();
                self.open(Frame::Seq {
                    pos,
                    anchor,
                    path,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, tag) => {
                self.check_collection_tag(tag.as_ref(), "map", pos);
                let path = self.child_path();
                self.open(Frame::Map {
                    pos,
                    anchor,
                    path,
                    entries: Vec::new(),
                    pending: None,
                    seen: HashMap::new(),
                });
            }
            Event::SequenceEnd | Event::MappingEnd => self.close(),
        }
    }
}

impl Builder<'_> {
    fn error(&mut self, pos: Pos, path: &str, message: impl Into<String>, hint: impl Into<String>) {
        self.diags.push(
            Diagnostic::error(path, message)
                .with_hint(hint)
                .at(Some(loc(self.file, pos))),
        );
    }

    fn syntax_error(&mut self, src: &str, e: &ScanError) {
        let pos = pos_of(e.marker());
        let line = src.lines().nth(pos.0.saturating_sub(1)).unwrap_or("");
        let info = e.info();
        let hint = if line.contains('\t') {
            "YAML indentation must use spaces: this line contains a tab".to_string()
        } else if info.contains("mapping values are not allowed") {
            "check the indentation of this line, and quote a value that contains `: `".to_string()
        } else if info.contains("unknown anchor") {
            "an alias `*name` must refer to an anchor `&name` defined earlier in the file"
                .to_string()
        } else if info.contains("did not find expected key")
            || info.contains("did not find expected '-'")
        {
            "check the indentation: every key of a mapping (and every `-` of a list) must start \
             in the same column"
                .to_string()
        } else if info.contains("quoted scalar") {
            "a quoted string is not closed: add the missing quote".to_string()
        } else if info.contains("flow") || info.contains(']') || info.contains('}') {
            "check that every `[` and `{` is closed and items are separated by `,`".to_string()
        } else {
            "check the indentation (spaces only) and the quoting around this position".to_string()
        };
        let path = self.child_path();
        self.error(pos, &path, format!("invalid YAML: {info}"), hint);
        self.stop = true;
        self.fatal = true;
    }

    fn limit(&mut self, pos: Pos, message: &str, hint: &str) {
        let path = self.child_path();
        self.error(pos, &path, message, hint);
        self.stop = true;
        self.fatal = true;
    }

    /// yaml-rust2 marks an indentless block sequence (`key:` then `- item` in the same column)
    /// after its first `-`; an editor shows the list starting at that `-`.
    fn dash_before(&self, (line, column): Pos) -> Pos {
        let Some(&start) = self.line_starts.get(line.saturating_sub(1)) else {
            return (line, column);
        };
        let rest = self.src.get(start..).unwrap_or_default();
        let text = rest.split('\n').next().unwrap_or_default();
        let before: Vec<char> = text.chars().take(column.saturating_sub(1)).collect();
        if text
            .chars()
            .nth(column.saturating_sub(1))
            .is_some_and(|c| c == '-' || c == '[')
        {
            return (line, column);
        }
        let mut col = before.len();
        while col > 0 && before[col - 1] == ' ' {
            col -= 1;
        }
        if col > 0 && before[col - 1] == '-' {
            (line, col)
        } else {
            (line, column)
        }
    }

    /// Path of the node that comes next in the innermost open collection.
    fn child_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Seq { path, items, .. }) => diag::index(path, items.len()),
            Some(Frame::Map {
                path,
                pending: Some(PendingKey::Key(k, _)),
                ..
            }) => diag::join(path, k),
            Some(Frame::Map { path, .. }) => path.clone(),
        }
    }

    fn open(&mut self, frame: Frame) {
        let pos = match &frame {
            Frame::Seq { pos, .. } | Frame::Map { pos, .. } => *pos,
        };
        self.stack.push(frame);
        if self.stack.len() > MAX_DEPTH {
            self.limit(
                pos,
                &format!("the document is nested more than {MAX_DEPTH} levels deep"),
                "a topology is a few levels deep: check the indentation and brackets",
            );
        }
    }

    fn close(&mut self) {
        let Some(frame) = self.stack.pop() else {
            return;
        };
        let (node, anchor) = match frame {
            Frame::Seq {
                pos, anchor, items, ..
            } => {
                let height = 1 + items.iter().map(|n| n.height).max().unwrap_or(0);
                (
                    Node {
                        pos,
                        height,
                        kind: Kind::Seq(items),
                    },
                    anchor,
                )
            }
            Frame::Map {
                pos,
                anchor,
                entries,
                pending,
                path,
                ..
            } => {
                if let Some(PendingKey::Key(k, kpos)) = pending {
                    // Cannot happen with a well-formed event stream (a key always gets a value,
                    // if only an empty one); kept so that a broken stream is not silently lost.
                    self.error(
                        kpos,
                        &diag::join(&path, &k),
                        format!("key `{k}` has no value"),
                        "give the key a value",
                    );
                }
                let height = 1 + entries.iter().map(|e| e.value.height).max().unwrap_or(0);
                (
                    Node {
                        pos,
                        height,
                        kind: Kind::Map(entries),
                    },
                    anchor,
                )
            }
        };
        self.push_node(node, anchor);
    }

    fn alias(&mut self, id: usize, pos: Pos) {
        let Some(target) = self.anchors.get(&id) else {
            // The parser resolves names to ids; an id we have not stored is an anchor whose node
            // is still open, i.e. an alias inside its own anchor.
            let path = self.child_path();
            self.error(
                pos,
                &path,
                "an alias refers to its own enclosing anchor (recursive alias)",
                "a value cannot contain itself: copy the parts you need instead",
            );
            let node = null_node(pos);
            self.push_node(node, 0);
            return;
        };
        let size = target.size();
        let bytes = target.bytes();
        if self.bytes + bytes > MAX_EXPANDED_BYTES {
            self.limit(
                pos,
                &format!("the document expands to more than {MAX_EXPANDED_BYTES} bytes of text"),
                "aliases copy their anchor: check for aliases of large values or aliases nested \
                 inside anchors",
            );
            return;
        }
        if self.nodes + size > MAX_NODES {
            self.limit(
                pos,
                &format!("the document expands to more than {MAX_NODES} nodes"),
                "aliases copy their anchor: check for aliases nested inside anchors",
            );
            return;
        }
        if self.stack.len() + target.height > MAX_DEPTH {
            self.limit(
                pos,
                &format!("the document is nested more than {MAX_DEPTH} levels deep"),
                "aliases copy their anchor: check for aliases nested inside anchors",
            );
            return;
        }
        let mut node = target.clone();
        // The copy sits where the alias is; its children point at the anchored original, which
        // is where they are written.
        node.pos = pos;
        self.nodes += size - 1;
        self.bytes += bytes;
        self.push_node(node, 0);
    }

    fn scalar(&mut self, text: String, style: TScalarStyle, tag: Option<&Tag>, pos: Pos) -> Node {
        let plain = style == TScalarStyle::Plain;
        self.bytes += text.len();
        let value = match tag {
            None if plain => resolve_plain(&text),
            None => Scalar::Str(text.clone()),
            Some(tag) => self.tagged_scalar(&text, tag, pos),
        };
        Node {
            pos,
            height: 1,
            kind: Kind::Scalar { value, text, plain },
        }
    }

    fn tagged_scalar(&mut self, text: &str, tag: &Tag, pos: Pos) -> Scalar {
        let core = tag.handle == "tag:yaml.org,2002:";
        let resolved = resolve_plain(text);
        let ok = match (core, tag.suffix.as_str()) {
            (true, "str") => return Scalar::Str(text.to_string()),
            (true, "null") => matches!(resolved, Scalar::Null),
            (true, "bool") => matches!(resolved, Scalar::Bool(_)),
            (true, "int") => matches!(resolved, Scalar::Int(_)),
            (true, "float") => match resolved {
                Scalar::Int(i) => return Scalar::Float(i as f64),
                Scalar::Float(_) => true,
                _ => false,
            },
            _ => {
                let path = self.child_path();
                self.error(
                    pos,
                    &path,
                    format!("unsupported tag `{}{}`", tag.handle, tag.suffix),
                    "remove the tag: only the core tags !!str, !!int, !!float, !!bool and \
                     !!null are understood",
                );
                return Scalar::Str(text.to_string());
            }
        };
        if !ok {
            let path = self.child_path();
            self.error(
                pos,
                &path,
                format!("`{text}` is not a valid !!{}", tag.suffix),
                "remove the tag or fix the value",
            );
        }
        resolved
    }

    fn check_collection_tag(&mut self, tag: Option<&Tag>, expected: &str, pos: Pos) {
        if let Some(tag) = tag {
            if !(tag.handle == "tag:yaml.org,2002:" && tag.suffix == expected) {
                let path = self.child_path();
                self.error(
                    pos,
                    &path,
                    format!("unsupported tag `{}{}`", tag.handle, tag.suffix),
                    "remove the tag: topology documents use plain mappings and lists",
                );
            }
        }
    }

    /// Places a finished node: document root, list item, mapping key or mapping value.
    fn push_node(&mut self, node: Node, anchor: usize) {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            self.limit(
                node.pos,
                &format!("the document has more than {MAX_NODES} nodes"),
                "a topology is much smaller than this: check that this is the right file",
            );
            return;
        }
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let file = self.file;
        let Some(frame) = self.stack.last_mut() else {
            if self.root.is_none() {
                self.root = Some(node);
            }
            return;
        };
        match frame {
            Frame::Seq { items, .. } => items.push(node),
            Frame::Map {
                pos,
                path,
                entries,
                pending,
                seen,
                ..
            } => match pending.take() {
                Some(PendingKey::Key(key, key_pos)) => entries.push(Entry {
                    key,
                    key_pos,
                    value: node,
                }),
                Some(PendingKey::Skip) => {}
                None => {
                    // yaml-rust2 marks a block mapping at its first `:`; an editor (and a
                    // user) sees it start at its first key. A flow mapping's `{` comes first.
                    if entries.is_empty() && seen.is_empty() && node.pos < *pos {
                        *pos = node.pos;
                    }
                    let (next, problem) = check_key(node, path, seen);
                    *pending = Some(next);
                    if let Some((pos, d)) = problem {
                        self.diags.push(d.at(Some(loc(file, pos))));
                    }
                }
            },
        }
    }
}

/// Accepts a mapping key, or explains why it is rejected.
fn check_key(
    node: Node,
    path: &str,
    seen: &mut HashMap<String, Pos>,
) -> (PendingKey, Option<(Pos, Diagnostic)>) {
    let pos = node.pos;
    let at = |d: Diagnostic| Some((pos, d));
    match node.kind {
        Kind::Scalar {
            value: Scalar::Str(key),
            plain,
            ..
        } => {
            let field = diag::join(path, &key);
            if plain && key == "<<" {
                return (
                    PendingKey::Skip,
                    at(
                        Diagnostic::error(field, "merge keys (`<<`) are not supported").with_hint(
                            "write the fields out in this mapping; an alias can still copy a \
                             whole value (`key: *anchor`)",
                        ),
                    ),
                );
            }
            if let Some((line, col)) = seen.get(&key) {
                return (
                    PendingKey::Skip,
                    at(
                        Diagnostic::error(field, format!("duplicate key `{key}`")).with_hint(
                            format!(
                            "`{key}` is already set at line {line}, column {col}: keep one of them"
                        ),
                        ),
                    ),
                );
            }
            seen.insert(key.clone(), pos);
            (PendingKey::Key(key, pos), None)
        }
        Kind::Scalar { text, .. } => {
            let (message, hint) = if text.is_empty() {
                (
                    "a mapping key is empty".to_string(),
                    "write `name: value`; an empty key is null, not a field name".to_string(),
                )
            } else {
                (
                    format!("mapping keys must be strings, found `{text}`"),
                    format!("quote the key if it is meant as a name: `\"{text}\": ...`"),
                )
            };
            (
                PendingKey::Skip,
                at(Diagnostic::error(path, message).with_hint(hint)),
            )
        }
        Kind::Seq(_) | Kind::Map(_) => (
            PendingKey::Skip,
            at(
                Diagnostic::error(path, "mapping keys must be strings, found a collection")
                    .with_hint("a `? ` complex key is not a field name: use a plain name"),
            ),
        ),
    }
}

fn null_node(pos: Pos) -> Node {
    Node {
        pos,
        height: 1,
        kind: Kind::Scalar {
            value: Scalar::Null,
            text: String::new(),
            plain: true,
        },
    }
}

/// Resolves a plain scalar per the YAML 1.2 core schema.
fn resolve_plain(s: &str) -> Scalar {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Scalar::Null,
        "true" | "True" | "TRUE" => return Scalar::Bool(true),
        "false" | "False" | "FALSE" => return Scalar::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Scalar::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Scalar::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Scalar::Float(f64::NAN),
        _ => {}
    }
    let digits = |t: &str, radix: u32| !t.is_empty() && t.chars().all(|c| c.is_digit(radix));
    if let Some(hex) = s.strip_prefix("0x") {
        if digits(hex, 16) {
            return int_or_float(i128::from_str_radix(hex, 16).ok(), s);
        }
    }
    if let Some(oct) = s.strip_prefix("0o") {
        if digits(oct, 8) {
            return int_or_float(i128::from_str_radix(oct, 8).ok(), s);
        }
    }
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits(unsigned, 10) {
        return int_or_float(s.parse::<i128>().ok(), s);
    }
    if is_core_float(unsigned) {
        if let Ok(f) = s.parse::<f64>() {
            return Scalar::Float(f);
        }
    }
    Scalar::Str(s.to_string())
}

/// An integer literal too wide for i128 is still a number; keep it as the nearest float (and for
/// hex/octal that even f64 cannot parse, as a string).
fn int_or_float(i: Option<i128>, s: &str) -> Scalar {
    match i {
        Some(i) => Scalar::Int(i),
        None => s
            .parse::<f64>()
            .map_or_else(|_| Scalar::Str(s.to_string()), Scalar::Float),
    }
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?` (the sign is already stripped).
fn is_core_float(s: &str) -> bool {
    let all_digits = |t: &str| t.chars().all(|c| c.is_ascii_digit());
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            all_digits(int) && all_digits(frac) && (!int.is_empty() || !frac.is_empty())
        }
        None => !mantissa.is_empty() && all_digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && all_digits(e)
    });
    mantissa_ok && exponent_ok
}

// ---------------------------------------------------------------------------------------------
// Tree -> JSON and source map
// ---------------------------------------------------------------------------------------------

fn to_json(node: &Node, path: &str, source: &mut SourceMap) -> Value {
    source.value.insert(path.to_string(), node.pos);
    match &node.kind {
        Kind::Scalar { value, .. } => scalar_json(value),
        Kind::Seq(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| to_json(item, &diag::index(path, i), source))
                .collect(),
        ),
        Kind::Map(entries) => {
            let mut map = serde_json::Map::with_capacity(entries.len());
            for e in entries {
                let p = diag::join(path, &e.key);
                source.key.insert(p.clone(), e.key_pos);
                let v = to_json(&e.value, &p, source);
                map.insert(e.key.clone(), v);
            }
            Value::Object(map)
        }
    }
}

/// Non-finite floats have no JSON form; they become null here and are reported by the walker.
fn scalar_json(value: &Scalar) -> Value {
    match value {
        Scalar::Null => Value::Null,
        Scalar::Bool(b) => Value::Bool(*b),
        Scalar::Int(i) => {
            if let Ok(n) = i64::try_from(*i) {
                Value::from(n)
            } else if let Ok(n) = u64::try_from(*i) {
                Value::from(n)
            } else {
                serde_json::Number::from_f64(*i as f64).map_or(Value::Null, Value::Number)
            }
        }
        Scalar::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Scalar::Str(s) => Value::String(s.clone()),
    }
}

// ---------------------------------------------------------------------------------------------
// Structural check against the JSON Schema of `Topology`
// ---------------------------------------------------------------------------------------------

fn schema() -> &'static RootSchema {
    static SCHEMA: OnceLock<RootSchema> = OnceLock::new();
    SCHEMA.get_or_init(|| schemars::schema_for!(Topology))
}

/// Walks a tree and its schema side by side, collecting every mismatch.
struct Walker<'a> {
    root: &'a RootSchema,
    file: &'a str,
}

/// The JSON types a node can be, most specific first.
fn node_types(node: &Node) -> &'static [InstanceType] {
    match &node.kind {
        Kind::Scalar { value, .. } => match value {
            Scalar::Null => &[InstanceType::Null],
            Scalar::Bool(_) => &[InstanceType::Boolean],
            Scalar::Int(_) => &[InstanceType::Integer, InstanceType::Number],
            Scalar::Float(_) => &[InstanceType::Number],
            Scalar::Str(_) => &[InstanceType::String],
        },
        Kind::Seq(_) => &[InstanceType::Array],
        Kind::Map(_) => &[InstanceType::Object],
    }
}

fn type_name(t: InstanceType) -> &'static str {
    match t {
        InstanceType::Null => "null",
        InstanceType::Boolean => "a boolean",
        InstanceType::Object => "a mapping",
        InstanceType::Array => "a list",
        InstanceType::Number => "a number",
        InstanceType::String => "a string",
        InstanceType::Integer => "an integer",
    }
}

/// "a string `abc`", "a mapping", "null".
fn describe(node: &Node) -> String {
    match &node.kind {
        Kind::Scalar {
            value: Scalar::Null,
            ..
        } => "nothing (null)".to_string(),
        Kind::Scalar { text, .. } => {
            let shown: String = text.chars().take(40).collect();
            let more = if text.chars().count() > 40 { "…" } else { "" };
            format!("{} `{shown}{more}`", type_name(node_types(node)[0]))
        }
        _ => type_name(node_types(node)[0]).to_string(),
    }
}

/// What to write instead, per expected type.
fn type_advice(t: InstanceType, node: &Node) -> String {
    match t {
        InstanceType::Integer => "write a whole number without quotes, e.g. `8080`".to_string(),
        InstanceType::Number => "write a number without quotes, e.g. `0.5`".to_string(),
        InstanceType::Boolean => {
            "write `true` or `false` (in YAML 1.2 `yes`, `no`, `on` and `off` are strings)"
                .to_string()
        }
        InstanceType::String => match &node.kind {
            Kind::Scalar { text, .. } if !text.is_empty() => {
                format!("quote the value to make it a string: `\"{text}\"`")
            }
            _ => "write a single text value, e.g. `name: demo`".to_string(),
        },
        InstanceType::Object => {
            "write `key: value` pairs indented under the field, or `{}` for an empty section"
                .to_string()
        }
        InstanceType::Array => "write one `- item` per line, or `[a, b]`".to_string(),
        InstanceType::Null => "remove the value".to_string(),
    }
}

fn field_name(path: &str) -> &str {
    let cut = path.rfind(['.', '[']).map_or(0, |i| i + 1);
    path[cut..].trim_end_matches(']')
}

/// Appends the field's documentation (from the schema) to a hint.
fn with_doc(hint: String, path: &str, desc: Option<&str>) -> String {
    match desc {
        Some(d) if !d.trim().is_empty() => {
            format!("{hint}. `{}`: {}", field_name(path), d.trim())
        }
        _ => hint,
    }
}

fn join_or(names: &[&str]) -> String {
    match names {
        [] => "nothing".to_string(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

fn show_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Integer bounds implied by a schemars `format`.
fn format_range(format: &str) -> Option<(i128, i128)> {
    Some(match format {
        "uint8" => (0, u8::MAX.into()),
        "uint16" => (0, u16::MAX.into()),
        "uint32" => (0, u32::MAX.into()),
        "uint64" | "uint" => (0, u64::MAX.into()),
        "int8" => (i8::MIN.into(), i8::MAX.into()),
        "int16" => (i16::MIN.into(), i16::MAX.into()),
        "int32" => (i32::MIN.into(), i32::MAX.into()),
        "int64" | "int" => (i64::MIN.into(), i64::MAX.into()),
        _ => return None,
    })
}

impl<'a> Walker<'a> {
    fn diag(&self, pos: Pos, path: &str, message: String, hint: String) -> Diagnostic {
        Diagnostic::error(path, message)
            .with_hint(hint)
            .at(Some(loc(self.file, pos)))
    }

    fn check_root(&self, root: &Node, out: &mut Vec<Diagnostic>) {
        if !matches!(root.kind, Kind::Map(_)) {
            out.push(self.diag(
                root.pos,
                "",
                format!(
                    "expected a mapping at the top of the document, found {}",
                    describe(root)
                ),
                format!("a minimal topology is:\n{MINIMAL}"),
            ));
            return;
        }
        self.check(
            root,
            &Schema::Object(self.root.schema.clone()),
            "",
            None,
            out,
        );
        let Kind::Map(entries) = &root.kind else {
            return;
        };
        for e in entries {
            let Kind::Scalar {
                value: Scalar::Str(s),
                ..
            } = &e.value.kind
            else {
                continue;
            };
            if e.key == "apiVersion" && s != types::API_VERSION {
                out.push(self.diag(
                    e.value.pos,
                    "apiVersion",
                    format!("unsupported apiVersion `{s}`"),
                    format!(
                        "this bssctl reads `apiVersion: {}`; check the document is a bssctl topology",
                        types::API_VERSION
                    ),
                ));
            }
            if e.key == "kind" && s != types::KIND {
                out.push(self.diag(
                    e.value.pos,
                    "kind",
                    format!("unsupported kind `{s}`"),
                    format!("write `kind: {}`", types::KIND),
                ));
            }
        }
    }

    /// The schema a `$ref` points at (`#/definitions/Name`).
    fn definition(&self, reference: &str) -> Option<&'a Schema> {
        let name = reference.strip_prefix("#/definitions/")?;
        self.root.definitions.get(name)
    }

    /// Follows `$ref`s (bounded, in case of a ref cycle).
    fn resolve(&self, mut schema: &'a Schema) -> Option<&'a SchemaObject> {
        for _ in 0..32 {
            match schema {
                Schema::Bool(_) => return None,
                Schema::Object(obj) => match &obj.reference {
                    Some(r) => schema = self.definition(r)?,
                    None => return Some(obj),
                },
            }
        }
        None
    }

    /// The types a schema accepts (None: any), looking through `$ref`, `allOf`, `anyOf`, `oneOf`.
    fn types_of(&self, schema: &'a Schema, depth: usize) -> Option<Vec<InstanceType>> {
        let obj = self.resolve(schema)?;
        if depth > 16 {
            return None;
        }
        if let Some(types) = &obj.instance_type {
            return Some(match types {
                SingleOrVec::Single(t) => vec![**t],
                SingleOrVec::Vec(ts) => ts.clone(),
            });
        }
        let sub = obj.subschemas.as_ref()?;
        if let Some(all) = &sub.all_of {
            return all.iter().find_map(|s| self.types_of(s, depth + 1));
        }
        let branches = sub.any_of.as_ref().or(sub.one_of.as_ref())?;
        let mut out = Vec::new();
        for b in branches {
            for t in self.types_of(b, depth + 1)? {
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
        Some(out)
    }

    /// The allowed values of an enum schema (through `$ref`, `allOf` and alternatives).
    fn enum_of(&self, schema: &'a Schema, depth: usize) -> Option<Vec<Value>> {
        let obj = self.resolve(schema)?;
        if depth > 16 {
            return None;
        }
        if let Some(values) = &obj.enum_values {
            return Some(values.clone());
        }
        let sub = obj.subschemas.as_ref()?;
        if let Some(all) = &sub.all_of {
            return all.iter().find_map(|s| self.enum_of(s, depth + 1));
        }
        let branches = sub.any_of.as_ref().or(sub.one_of.as_ref())?;
        let mut out = Vec::new();
        for b in branches {
            out.extend(self.enum_of(b, depth + 1)?);
        }
        Some(out)
    }

    fn description(&self, schema: &'a Schema) -> Option<&'a str> {
        if let Schema::Object(obj) = schema {
            if let Some(d) = obj.metadata.as_ref().and_then(|m| m.description.as_deref()) {
                return Some(d);
            }
        }
        self.resolve(schema)
            .and_then(|o| o.metadata.as_ref())
            .and_then(|m| m.description.as_deref())
    }

    fn accepts_type(&self, node: &Node, schema: &'a Schema) -> bool {
        match self.types_of(schema, 0) {
            None => true,
            Some(types) => node_types(node).iter().any(|t| types.contains(t)),
        }
    }

    fn type_error(
        &self,
        node: &Node,
        path: &str,
        expected: &[InstanceType],
        desc: Option<&str>,
    ) -> Diagnostic {
        // "or null" is how an optional field looks in the schema; it is noise to a user who
        // wrote a value of the wrong type.
        let shown: Vec<InstanceType> = if node.is_null() {
            expected.to_vec()
        } else {
            let non_null: Vec<_> = expected
                .iter()
                .copied()
                .filter(|t| *t != InstanceType::Null)
                .collect();
            if non_null.is_empty() {
                expected.to_vec()
            } else {
                non_null
            }
        };
        let names: Vec<&str> = shown.iter().map(|t| type_name(*t)).collect();
        let advice = match shown.as_slice() {
            [one] => type_advice(*one, node),
            _ if shown
                .iter()
                .all(|t| !matches!(t, InstanceType::Array | InstanceType::Object)) =>
            {
                "write a single value (text, number or boolean), not a list or a mapping"
                    .to_string()
            }
            _ => format!("write {} here", join_or(&names)),
        };
        self.diag(
            node.pos,
            path,
            format!("expected {}, found {}", join_or(&names), describe(node)),
            with_doc(advice, path, desc),
        )
    }

    /// Checks `node` at `path` against `schema`; `desc` is the field's documentation if known.
    fn check(
        &self,
        node: &Node,
        schema: &'a Schema,
        path: &str,
        desc: Option<&'a str>,
        out: &mut Vec<Diagnostic>,
    ) {
        let obj = match schema {
            Schema::Bool(true) => return,
            Schema::Bool(false) => {
                out.push(self.diag(
                    node.pos,
                    path,
                    format!("`{}` is not allowed here", field_name(path)),
                    with_doc("remove it".to_string(), path, desc),
                ));
                return;
            }
            Schema::Object(obj) => obj,
        };
        let desc = desc.or_else(|| obj.metadata.as_ref().and_then(|m| m.description.as_deref()));
        if let Some(r) = &obj.reference {
            // Draft 7: keywords next to `$ref` are ignored.
            if let Some(target) = self.definition(r) {
                self.check(node, target, path, desc, out);
            }
            return;
        }
        if let Some(sub) = &obj.subschemas {
            let before = out.len();
            for s in sub.all_of.iter().flatten() {
                self.check(node, s, path, desc, out);
            }
            for branches in [&sub.any_of, &sub.one_of].into_iter().flatten() {
                self.check_alternatives(node, branches, path, desc, out);
            }
            if out.len() > before {
                return;
            }
        }
        if let Some(types) = &obj.instance_type {
            let types: Vec<InstanceType> = match types {
                SingleOrVec::Single(t) => vec![**t],
                SingleOrVec::Vec(ts) => ts.clone(),
            };
            if !node_types(node).iter().any(|t| types.contains(t)) {
                out.push(self.type_error(node, path, &types, desc));
                return;
            }
        }
        if let Some(values) = &obj.enum_values {
            self.check_enum(node, values, path, desc, out);
        }
        if let Kind::Scalar { value, text, .. } = &node.kind {
            self.check_number(node.pos, value, text, obj, path, desc, out);
        }
        match &node.kind {
            Kind::Map(entries) => self.check_object(node, entries, obj, path, out),
            Kind::Seq(items) => match obj.array.as_ref().and_then(|a| a.items.as_ref()) {
                Some(SingleOrVec::Single(item_schema)) => {
                    for (i, item) in items.iter().enumerate() {
                        self.check(item, item_schema, &diag::index(path, i), None, out);
                    }
                }
                Some(SingleOrVec::Vec(tuple)) => {
                    for (i, (item, s)) in items.iter().zip(tuple).enumerate() {
                        self.check(item, s, &diag::index(path, i), None, out);
                    }
                }
                None => {}
            },
            Kind::Scalar { .. } => {}
        }
    }

    fn check_alternatives(
        &self,
        node: &Node,
        branches: &'a [Schema],
        path: &str,
        desc: Option<&'a str>,
        out: &mut Vec<Diagnostic>,
    ) {
        let mut tried = Vec::new();
        for b in branches {
            let mut diags = Vec::new();
            self.check(node, b, path, desc, &mut diags);
            if diags.is_empty() {
                return;
            }
            tried.push((b, diags));
        }
        let fitting: Vec<_> = tried
            .into_iter()
            .filter(|(b, _)| self.accepts_type(node, b))
            .collect();
        if fitting.is_empty() {
            let mut expected = Vec::new();
            for b in branches {
                for t in self.types_of(b, 0).unwrap_or_default() {
                    if !expected.contains(&t) {
                        expected.push(t);
                    }
                }
            }
            out.push(self.type_error(node, path, &expected, desc));
            return;
        }
        // Several enum branches of one type (an enum whose variants carry docs): one message
        // listing every allowed value, not one per branch.
        if fitting.len() > 1 {
            let values: Option<Vec<Value>> = fitting
                .iter()
                .map(|(b, _)| self.enum_of(b, 0))
                .collect::<Option<Vec<_>>>()
                .map(|vs| vs.into_iter().flatten().collect());
            if let Some(values) = values {
                self.check_enum(node, &values, path, desc, out);
                return;
            }
        }
        if let Some((_, diags)) = fitting.into_iter().min_by_key(|(_, d)| d.len()) {
            out.extend(diags);
        }
    }

    fn check_enum(
        &self,
        node: &Node,
        values: &[Value],
        path: &str,
        desc: Option<&str>,
        out: &mut Vec<Diagnostic>,
    ) {
        let Kind::Scalar { value, text, .. } = &node.kind else {
            out.push(self.diag(
                node.pos,
                path,
                format!(
                    "expected one of the allowed values, found {}",
                    describe(node)
                ),
                with_doc(allowed_values(values, None), path, desc),
            ));
            return;
        };
        let json = scalar_json(value);
        if values.contains(&json) {
            return;
        }
        let names: Vec<String> = values.iter().map(show_value).collect();
        let close = diag::did_you_mean(text, names.iter().map(String::as_str));
        out.push(self.diag(
            node.pos,
            path,
            format!(
                "`{text}` is not an allowed value for `{}`",
                field_name(path)
            ),
            with_doc(allowed_values(values, close), path, desc),
        ));
    }

    #[allow(clippy::too_many_arguments)]
    fn check_number(
        &self,
        pos: Pos,
        value: &Scalar,
        text: &str,
        obj: &SchemaObject,
        path: &str,
        desc: Option<&str>,
        out: &mut Vec<Diagnostic>,
    ) {
        match value {
            Scalar::Float(f) if !f.is_finite() => out.push(self.diag(
                pos,
                path,
                format!("`{text}` is not a usable number: infinite and NaN are not supported"),
                with_doc("write a finite number".to_string(), path, desc),
            )),
            Scalar::Int(i) => {
                let (mut lo, mut hi) = obj
                    .format
                    .as_deref()
                    .and_then(format_range)
                    .unwrap_or((i128::MIN, i128::MAX));
                if let Some(n) = &obj.number {
                    if let Some(min) = n.minimum {
                        lo = lo.max(min.ceil() as i128);
                    }
                    if let Some(max) = n.maximum {
                        hi = hi.min(max.floor() as i128);
                    }
                }
                if *i < lo || *i > hi {
                    let hint = if lo == 0 && hi == i128::from(u16::MAX) {
                        format!("a port number is between 0 and {hi}")
                    } else {
                        format!("write a whole number between {lo} and {hi}")
                    };
                    out.push(self.diag(
                        pos,
                        path,
                        format!(
                            "`{text}` is out of range for `{}` ({lo}..={hi})",
                            field_name(path)
                        ),
                        with_doc(hint, path, desc),
                    ));
                }
            }
            Scalar::Float(f) => {
                if let Some(n) = &obj.number {
                    let below = n.minimum.is_some_and(|m| *f < m);
                    let above = n.maximum.is_some_and(|m| *f > m);
                    if below || above {
                        let lo = n.minimum.map_or("-inf".to_string(), |m| m.to_string());
                        let hi = n.maximum.map_or("inf".to_string(), |m| m.to_string());
                        out.push(self.diag(
                            pos,
                            path,
                            format!("`{text}` is out of range for `{}`", field_name(path)),
                            with_doc(format!("write a number between {lo} and {hi}"), path, desc),
                        ));
                    }
                }
            }
            _ => {}
        }
    }

    fn check_object(
        &self,
        node: &Node,
        entries: &[Entry],
        obj: &'a SchemaObject,
        path: &str,
        out: &mut Vec<Diagnostic>,
    ) {
        let Some(o) = &obj.object else {
            return;
        };
        for e in entries {
            let p = diag::join(path, &e.key);
            if let Some(s) = o.properties.get(&e.key) {
                self.check(&e.value, s, &p, None, out);
                continue;
            }
            match o.additional_properties.as_deref() {
                Some(Schema::Bool(false)) => {
                    let names: Vec<&str> = o.properties.keys().map(String::as_str).collect();
                    let hint = match diag::did_you_mean(&e.key, names.iter().copied()) {
                        Some(close) => format!("did you mean `{close}`?"),
                        None if names.is_empty() => "this section takes no fields".to_string(),
                        None => format!("allowed fields: {}", names.join(", ")),
                    };
                    out.push(self.diag(e.key_pos, &p, format!("unknown field `{}`", e.key), hint));
                }
                Some(s) => self.check(&e.value, s, &p, None, out),
                None => {}
            }
        }
        for required in &o.required {
            if entries.iter().any(|e| &e.key == required) {
                continue;
            }
            let p = diag::join(path, required);
            let prop = o.properties.get(required);
            let kind = prop
                .and_then(|s| self.types_of(s, 0))
                .and_then(|ts| ts.into_iter().find(|t| *t != InstanceType::Null))
                .map_or(String::new(), |t| format!(" ({})", type_name(t)));
            let hint = with_doc(
                format!("add `{required}`{kind} to this mapping"),
                &p,
                prop.and_then(|s| self.description(s)),
            );
            out.push(self.diag(
                node.pos,
                &p,
                format!("missing required field `{required}`"),
                hint,
            ));
        }
    }
}

fn allowed_values(values: &[Value], close: Option<&str>) -> String {
    let list: Vec<String> = values.iter().map(show_value).collect();
    match close {
        Some(c) => format!("did you mean `{c}`? allowed values: {}", list.join(", ")),
        None => format!("allowed values: {}", list.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn core_schema_scalars() {
        assert_eq!(resolve_plain(""), Scalar::Null);
        assert_eq!(resolve_plain("~"), Scalar::Null);
        assert_eq!(resolve_plain("True"), Scalar::Bool(true));
        assert_eq!(resolve_plain("yes"), Scalar::Str("yes".into()));
        assert_eq!(resolve_plain("0x1F"), Scalar::Int(31));
        assert_eq!(resolve_plain("0o17"), Scalar::Int(15));
        assert_eq!(resolve_plain("-42"), Scalar::Int(-42));
        assert_eq!(resolve_plain("+7"), Scalar::Int(7));
        assert_eq!(resolve_plain("1.5e3"), Scalar::Float(1500.0));
        assert_eq!(resolve_plain(".5"), Scalar::Float(0.5));
        assert_eq!(resolve_plain("1."), Scalar::Float(1.0));
        assert_eq!(resolve_plain("-.inf"), Scalar::Float(f64::NEG_INFINITY));
        assert!(matches!(resolve_plain(".NaN"), Scalar::Float(f) if f.is_nan()));
        assert_eq!(resolve_plain("inf"), Scalar::Str("inf".into()));
        assert_eq!(resolve_plain("1e"), Scalar::Str("1e".into()));
        assert_eq!(resolve_plain("."), Scalar::Str(".".into()));
        assert_eq!(resolve_plain("0x"), Scalar::Str("0x".into()));
        assert_eq!(resolve_plain("1_000"), Scalar::Str("1_000".into()));
        assert_eq!(resolve_plain("256MB"), Scalar::Str("256MB".into()));
    }

    #[test]
    fn field_names() {
        assert_eq!(field_name("spec.envoy.listeners[0].port"), "port");
        assert_eq!(field_name("spec.envoy.listeners[0]"), "0");
        assert_eq!(field_name("kind"), "kind");
    }
}
