//! The NAR (Nix ARchive) format: an in-memory [`Tree`], a writer, and the
//! streaming [`NarValidator`] the upload path runs over decompressed NARs.
//!
//! Layout: every item is a string encoded as a u64 little-endian length,
//! the bytes, and zero padding to a multiple of 8. The archive is
//! `"nix-archive-1"` followed by one node:
//! `"(" "type" "regular" ["executable" ""] "contents" <data> ")"`,
//! `"(" "type" "symlink" "target" <target> ")"`, or
//! `"(" "type" "directory" {"entry" "(" "name" <name> "node" <node> ")"} ")"`
//! with entries sorted byte-wise. The validator enforces exactly the
//! canonical form Nix writes, so a valid NAR has one hash for one tree.

mod expect;
mod listing;
mod parser;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use self::listing::ListingBuilder;
pub use self::listing::{ListingNode, NarListing};
pub use self::parser::{MAX_DEPTH, MAX_NAME_LEN, MAX_PATH_LEN, MAX_TARGET_LEN};
use self::parser::{NoSink, Parser, Sink};
use super::FormatError;

/// A file system tree as stored in a NAR.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Tree {
    /// A regular file.
    Regular {
        /// Whether the file has the executable bit.
        executable: bool,
        /// The file's bytes.
        contents: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Where the link points.
        target: String,
    },
    /// A directory; `BTreeMap<String>` order is the byte-wise order NAR needs.
    Directory(BTreeMap<String, Tree>),
}

/// Serializes `tree` as a NAR.
///
/// Names are written as given; a tree with names the validator rejects
/// (empty, `.`, `..`, containing `/` or NUL) yields an invalid NAR.
pub fn write_nar(tree: &Tree) -> Vec<u8> {
    let mut out = Vec::new();
    write_str(&mut out, b"nix-archive-1");
    write_node(&mut out, tree);
    out
}

/// Appends one NAR string: length, bytes, zero padding to 8.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    let pad = (8 - s.len() % 8) % 8;
    out.extend_from_slice(&[0u8; 8][..pad]);
}

fn write_node(out: &mut Vec<u8>, tree: &Tree) {
    write_str(out, b"(");
    write_str(out, b"type");
    match tree {
        Tree::Regular {
            executable,
            contents,
        } => {
            write_str(out, b"regular");
            if *executable {
                write_str(out, b"executable");
                write_str(out, b"");
            }
            write_str(out, b"contents");
            write_str(out, contents);
        }
        Tree::Symlink { target } => {
            write_str(out, b"symlink");
            write_str(out, b"target");
            write_str(out, target.as_bytes());
        }
        Tree::Directory(entries) => {
            write_str(out, b"directory");
            for (name, child) in entries {
                write_str(out, b"entry");
                write_str(out, b"(");
                write_str(out, b"name");
                write_str(out, name.as_bytes());
                write_str(out, b"node");
                write_node(out, child);
                write_str(out, b")");
            }
        }
    }
    write_str(out, b")");
}

/// Parses a whole NAR held in memory into a [`Tree`] (for tests and small
/// archives; use [`NarValidator`] for streams). Applies every check the
/// validator does, and also requires names and targets to be UTF-8.
pub fn read_nar(bytes: &[u8]) -> Result<Tree, FormatError> {
    let mut parser = Parser::new();
    let mut builder = TreeBuilder::default();
    parser.update(bytes, &mut builder)?;
    parser.finish()?;
    builder.root.ok_or_else(|| FormatError::TruncatedNar {
        offset: parser.pos(),
        expected: "a root node".to_string(),
    })
}

/// Builds a [`Tree`] from parser events.
#[derive(Default)]
struct TreeBuilder {
    /// Open directories with the name they will have in their parent.
    dirs: Vec<(String, BTreeMap<String, Tree>)>,
    /// Name of the entry whose node is being parsed.
    pending: Option<String>,
    /// The file or symlink being parsed.
    leaf: Option<Tree>,
    root: Option<Tree>,
}

impl TreeBuilder {
    fn attach(&mut self, name: String, tree: Tree) {
        match self.dirs.last_mut() {
            Some((_, entries)) => {
                entries.insert(name, tree);
            }
            None => self.root = Some(tree),
        }
    }
}

fn utf8(bytes: &[u8], what: &str) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
}

impl Sink for TreeBuilder {
    fn regular(&mut self, executable: bool, size: u64, _offset: u64) {
        let contents = Vec::with_capacity(size.min(1 << 20) as usize);
        self.leaf = Some(Tree::Regular {
            executable,
            contents,
        });
    }

    fn contents(&mut self, chunk: &[u8]) {
        if let Some(Tree::Regular { contents, .. }) = &mut self.leaf {
            contents.extend_from_slice(chunk);
        }
    }

    fn symlink(&mut self, target: &[u8]) -> Result<(), String> {
        let target = utf8(target, "a symlink target")?;
        self.leaf = Some(Tree::Symlink { target });
        Ok(())
    }

    fn directory(&mut self) {
        let name = self.pending.take().unwrap_or_default();
        self.dirs.push((name, BTreeMap::new()));
    }

    fn entry(&mut self, name: &[u8]) -> Result<(), String> {
        self.pending = Some(utf8(name, "an entry name")?);
        Ok(())
    }

    fn end_node(&mut self) {
        if let Some(leaf) = self.leaf.take() {
            let name = self.pending.take().unwrap_or_default();
            self.attach(name, leaf);
        } else if let Some((name, entries)) = self.dirs.pop() {
            self.attach(name, Tree::Directory(entries));
        }
    }
}

/// Streaming, push-style NAR validator.
///
/// Feed it decompressed NAR bytes in slices of any size with
/// [`NarValidator::update`], then call [`NarValidator::finish`]. File
/// contents are skipped by counting, never buffered; only names and
/// symlink targets (at most [`MAX_NAME_LEN`] / [`MAX_TARGET_LEN`] bytes)
/// and the names of open directories (at most [`MAX_PATH_LEN`] bytes) are
/// kept, so memory is bounded independently of the archive size.
///
/// Rejects: a wrong magic, unknown or misplaced tokens, non-zero padding,
/// unsorted or duplicate entry names, names that are empty, `.`, `..` or
/// contain `/` or NUL, empty or NUL-containing symlink targets, over-long
/// strings, excessive nesting, data after the root node, and (in
/// `finish`) truncation. After the first error every call returns it.
///
/// Made with [`NarValidator::with_listing`], it also builds the archive's
/// [`NarListing`] (Nix's `.ls` format) on the way; that costs memory in
/// proportion to the number of entries, never to file sizes.
#[derive(Debug)]
pub struct NarValidator {
    parser: Parser,
    /// Boxed: keeps the validator itself small when no listing is wanted.
    listing: Option<Box<ListingBuilder>>,
}

impl NarValidator {
    /// A validator expecting the first byte of a NAR.
    pub fn new() -> Self {
        Self {
            parser: Parser::new(),
            listing: None,
        }
    }

    /// A validator that also builds the archive's listing; get it with
    /// [`NarValidator::finish_listing`].
    pub fn with_listing() -> Self {
        Self {
            parser: Parser::new(),
            listing: Some(Box::default()),
        }
    }

    /// Consumes the next slice of the archive.
    pub fn update(&mut self, data: &[u8]) -> Result<(), FormatError> {
        match &mut self.listing {
            Some(l) => self.parser.update(data, &mut **l),
            None => self.parser.update(data, &mut NoSink),
        }
    }

    /// Checks that the archive ended exactly after its root node.
    pub fn finish(self) -> Result<(), FormatError> {
        self.parser.finish()
    }

    /// Like [`NarValidator::finish`], and returns the listing when the
    /// validator was made with [`NarValidator::with_listing`].
    pub fn finish_listing(self) -> Result<Option<NarListing>, FormatError> {
        self.parser.finish()?;
        Ok(self.listing.and_then(|l| l.into_listing()))
    }

    /// Number of bytes accepted so far (the NAR size once finished).
    pub fn bytes_seen(&self) -> u64 {
        self.parser.pos()
    }
}

impl Default for NarValidator {
    fn default() -> Self {
        Self::new()
    }
}
