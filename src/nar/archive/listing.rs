//! The listing of a NAR in Nix's `.ls` JSON format (what
//! `write-nar-listing = true` uploads and `nix store ls --json` shows),
//! built from parser events while the archive streams past.
//!
//! `{"version":1,"root":<node>}` where a node is
//! `{"type":"regular","size":N,"executable":true,"narOffset":OFFSET}`
//! (`executable` only when set; `narOffset` is where the file's contents
//! start in the NAR), `{"type":"symlink","target":"..."}` or
//! `{"type":"directory","entries":{"<name>":<node>,...}}`. A NAR with a
//! name or symlink target that is not UTF-8 gets no listing: JSON strings
//! cannot carry those bytes, and replacing them could merge two names.

use std::collections::BTreeMap;

use serde::Serialize;

use super::parser::Sink;

/// One node of a [`NarListing`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ListingNode {
    /// A regular file.
    Regular {
        /// Size of the contents in bytes.
        size: u64,
        /// Whether the file has the executable bit (shown only when set).
        #[serde(skip_serializing_if = "is_false")]
        executable: bool,
        /// Byte offset of the contents inside the NAR.
        #[serde(rename = "narOffset")]
        nar_offset: u64,
    },
    /// A symbolic link.
    Symlink {
        /// Where the link points.
        target: String,
    },
    /// A directory, entries in byte-wise name order.
    Directory {
        /// The directory's entries by name.
        entries: BTreeMap<String, ListingNode>,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The listing of a whole NAR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NarListing {
    /// Always 1.
    pub version: u32,
    /// The archive's root node.
    pub root: ListingNode,
}

impl NarListing {
    /// The listing as compact JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The listing as a JSON value.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// Builds a [`NarListing`] from parser events.
#[derive(Debug, Default)]
pub(crate) struct ListingBuilder {
    /// Open directories with the name they will have in their parent.
    dirs: Vec<(String, BTreeMap<String, ListingNode>)>,
    /// Name of the entry whose node is being parsed.
    pending: Option<String>,
    /// The file or symlink being parsed.
    leaf: Option<ListingNode>,
    root: Option<ListingNode>,
    /// A name or symlink target was not UTF-8: JSON cannot carry it
    /// faithfully (two such names could even collide), so no listing.
    not_utf8: bool,
}

impl ListingBuilder {
    fn attach(&mut self, name: String, node: ListingNode) {
        match self.dirs.last_mut() {
            Some((_, entries)) => {
                entries.insert(name, node);
            }
            None => self.root = Some(node),
        }
    }

    /// The listing, once the root node is complete; `None` as well when a
    /// name or symlink target is not UTF-8.
    pub(crate) fn into_listing(self) -> Option<NarListing> {
        if self.not_utf8 {
            return None;
        }
        self.root.map(|root| NarListing { version: 1, root })
    }

    fn text(&mut self, bytes: &[u8]) -> String {
        match std::str::from_utf8(bytes) {
            Ok(s) => s.to_owned(),
            Err(_) => {
                self.not_utf8 = true;
                String::new()
            }
        }
    }
}

impl Sink for ListingBuilder {
    fn regular(&mut self, executable: bool, size: u64, offset: u64) {
        self.leaf = Some(ListingNode::Regular {
            size,
            executable,
            nar_offset: offset,
        });
    }

    fn symlink(&mut self, target: &[u8]) -> Result<(), String> {
        let target = self.text(target);
        self.leaf = Some(ListingNode::Symlink { target });
        Ok(())
    }

    fn directory(&mut self) {
        let name = self.pending.take().unwrap_or_default();
        self.dirs.push((name, BTreeMap::new()));
    }

    fn entry(&mut self, name: &[u8]) -> Result<(), String> {
        self.pending = Some(self.text(name));
        Ok(())
    }

    fn end_node(&mut self) {
        if let Some(leaf) = self.leaf.take() {
            let name = self.pending.take().unwrap_or_default();
            self.attach(name, leaf);
        } else if let Some((name, entries)) = self.dirs.pop() {
            self.attach(name, ListingNode::Directory { entries });
        }
    }
}
