//! The NAR grammar's states: which string the parser needs next, and how
//! to describe it in error messages (kept apart from the lexer in
//! `parser.rs` so each file stays readable).

/// The next string the grammar requires.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Expect {
    /// The `nix-archive-1` magic string.
    Magic,
    /// `(` opening a node.
    NodeOpen,
    /// The `type` keyword.
    Type,
    /// `regular`, `symlink` or `directory`.
    TypeValue,
    /// `executable` or `contents` after `regular`.
    RegularNext,
    /// The empty string after `executable`.
    ExecutableValue,
    /// `contents` after the executable marker.
    ContentsKw,
    /// The file contents (skipped, not buffered).
    ContentsData,
    /// `)` closing a file or symlink node.
    NodeClose,
    /// The `target` keyword.
    TargetKw,
    /// The symlink target.
    Target,
    /// `entry`, or `)` closing a directory.
    DirNext,
    /// `(` opening a directory entry.
    EntryOpen,
    /// The `name` keyword.
    NameKw,
    /// The entry name.
    Name,
    /// The `node` keyword.
    NodeKw,
    /// `)` closing a directory entry.
    EntryClose,
    /// Nothing: the root node is complete.
    Done,
}

impl Expect {
    /// Human-readable description for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Expect::Magic => "the \"nix-archive-1\" magic",
            Expect::NodeOpen => "\"(\" opening a node",
            Expect::Type => "\"type\"",
            Expect::TypeValue => "a node type (\"regular\", \"symlink\" or \"directory\")",
            Expect::RegularNext => "\"executable\" or \"contents\"",
            Expect::ExecutableValue => "the empty string after \"executable\"",
            Expect::ContentsKw => "\"contents\"",
            Expect::ContentsData => "file contents",
            Expect::NodeClose => "\")\" closing a node",
            Expect::TargetKw => "\"target\"",
            Expect::Target => "a symlink target",
            Expect::DirNext => "\"entry\" or \")\" closing a directory",
            Expect::EntryOpen => "\"(\" opening a directory entry",
            Expect::NameKw => "\"name\"",
            Expect::Name => "an entry name",
            Expect::NodeKw => "\"node\"",
            Expect::EntryClose => "\")\" closing a directory entry",
            Expect::Done => "the end of the archive",
        }
    }
}
