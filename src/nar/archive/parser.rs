//! The push-style NAR state machine behind [`super::NarValidator`] and
//! [`super::read_nar`].
//!
//! A NAR is a sequence of length-prefixed, zero-padded strings. The lexer
//! below reads lengths and keyword/name strings into a small buffer, but
//! file contents are skipped by counting (and optionally handed to a
//! [`Sink`] chunk by chunk), so memory stays bounded whatever the NAR size
//! and throughput is dominated by `memcpy`-free slice arithmetic.

use super::super::FormatError;
use super::expect::Expect;

/// Longest directory entry name accepted (real file systems allow 255 bytes).
pub const MAX_NAME_LEN: usize = 1024;
/// Longest symlink target accepted (Linux's PATH_MAX).
pub const MAX_TARGET_LEN: usize = 4096;
/// Longest relative path (sum of the names of open directories) accepted.
pub const MAX_PATH_LEN: usize = 64 * 1024;
/// Deepest directory nesting accepted.
pub const MAX_DEPTH: usize = 4096;
/// No keyword is longer than this ("nix-archive-1" is 13 bytes).
const MAX_KEYWORD_LEN: usize = 16;

/// Receives the structure of the archive as it is parsed.
pub trait Sink {
    /// A regular file of `size` bytes starts; its contents follow,
    /// starting at byte `offset` of the archive.
    fn regular(&mut self, _executable: bool, _size: u64, _offset: u64) {}
    /// A piece of the current regular file's contents.
    fn contents(&mut self, _chunk: &[u8]) {}
    /// A symlink node; an `Err` aborts parsing with that reason.
    fn symlink(&mut self, _target: &[u8]) -> Result<(), String> {
        Ok(())
    }
    /// A directory node starts.
    fn directory(&mut self) {}
    /// A directory entry named `name` starts; an `Err` aborts parsing.
    fn entry(&mut self, _name: &[u8]) -> Result<(), String> {
        Ok(())
    }
    /// The current node (file, symlink or directory) is complete.
    fn end_node(&mut self) {}
}

/// A sink that ignores everything (pure validation).
pub struct NoSink;
impl Sink for NoSink {}

/// Where the lexer is inside the current string.
#[derive(Debug)]
enum Lex {
    /// Reading the 8-byte little-endian length.
    Len { buf: [u8; 8], have: usize },
    /// Collecting a short string into `Parser::buf`.
    Str { len: usize, pad: usize },
    /// Skipping file contents.
    Skip { remaining: u64, pad: usize },
    /// Checking zero padding.
    Pad { remaining: usize },
}

const LEN_START: Lex = Lex::Len {
    buf: [0; 8],
    have: 0,
};

/// An open directory: where its most recent entry name starts in `path`.
#[derive(Clone, Copy, Debug)]
struct Frame {
    start: usize,
    has_last: bool,
}

/// The NAR state machine; feed it with [`Parser::update`].
#[derive(Debug)]
pub struct Parser {
    lex: Lex,
    expect: Expect,
    executable: bool,
    /// The short string being collected.
    buf: Vec<u8>,
    /// Concatenated last entry names of all open directories.
    path: Vec<u8>,
    frames: Vec<Frame>,
    pos: u64,
    failed: Option<FormatError>,
}

impl Parser {
    /// A parser expecting the start of an archive.
    pub fn new() -> Self {
        Self {
            lex: LEN_START,
            expect: Expect::Magic,
            executable: false,
            buf: Vec::new(),
            path: Vec::new(),
            frames: Vec::new(),
            pos: 0,
            failed: None,
        }
    }

    /// Number of bytes consumed so far.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Consumes the next slice of the archive. After an error every later
    /// call returns the same error.
    pub fn update<S: Sink>(&mut self, data: &[u8], sink: &mut S) -> Result<(), FormatError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.feed(data, sink);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    /// Checks that the archive is complete.
    pub fn finish(&self) -> Result<(), FormatError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let expected = match self.lex {
            Lex::Len { have: 0, .. } if self.expect == Expect::Done => return Ok(()),
            Lex::Skip { remaining, .. } => format!("{remaining} more bytes of file contents"),
            Lex::Pad { .. } => "zero padding".to_string(),
            _ => self.expect.describe().to_string(),
        };
        Err(FormatError::TruncatedNar {
            offset: self.pos,
            expected,
        })
    }

    fn error(&self, reason: impl Into<String>) -> FormatError {
        FormatError::InvalidNar {
            offset: self.pos,
            reason: reason.into(),
        }
    }

    fn feed<S: Sink>(&mut self, mut data: &[u8], sink: &mut S) -> Result<(), FormatError> {
        while !data.is_empty() {
            let taken = match &mut self.lex {
                Lex::Len { buf, have } => {
                    if self.expect == Expect::Done {
                        // No byte count: only this slice is known, and the
                        // verdict must not depend on how the stream is cut.
                        return Err(self.error("trailing data follows the end of the archive"));
                    }
                    let take = (8 - *have).min(data.len());
                    buf[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    self.pos += take as u64;
                    if *have == 8 {
                        let len = u64::from_le_bytes(*buf);
                        self.start_string(len, sink)?;
                    }
                    take
                }
                Lex::Str { len, pad } => {
                    let (len, pad) = (*len, *pad);
                    let take = (len - self.buf.len()).min(data.len());
                    self.buf.extend_from_slice(&data[..take]);
                    self.pos += take as u64;
                    if self.buf.len() == len {
                        self.token(sink)?;
                        self.begin_pad(pad);
                    }
                    take
                }
                Lex::Skip { remaining, pad } => {
                    let take = (*remaining).min(data.len() as u64) as usize;
                    *remaining -= take as u64;
                    let (done, pad) = (*remaining == 0, *pad);
                    sink.contents(&data[..take]);
                    self.pos += take as u64;
                    if done {
                        self.expect = Expect::NodeClose;
                        self.begin_pad(pad);
                    }
                    take
                }
                Lex::Pad { remaining } => {
                    let take = (*remaining).min(data.len());
                    *remaining -= take;
                    let done = *remaining == 0;
                    if let Some(bad) = data[..take].iter().position(|&b| b != 0) {
                        // Report the bad byte itself, wherever the slice began.
                        self.pos += bad as u64;
                        return Err(self.error("string padding is not all zero bytes"));
                    }
                    self.pos += take as u64;
                    if done {
                        self.lex = LEN_START;
                    }
                    take
                }
            };
            data = &data[taken..];
        }
        Ok(())
    }

    fn begin_pad(&mut self, pad: usize) {
        self.lex = if pad == 0 {
            LEN_START
        } else {
            Lex::Pad { remaining: pad }
        };
    }

    /// A string of `len` bytes begins; decide how to consume it.
    fn start_string<S: Sink>(&mut self, len: u64, sink: &mut S) -> Result<(), FormatError> {
        let pad = ((8 - len % 8) % 8) as usize;
        if self.expect == Expect::ContentsData {
            sink.regular(self.executable, len, self.pos);
            if len == 0 {
                self.expect = Expect::NodeClose;
                self.begin_pad(pad);
            } else {
                self.lex = Lex::Skip {
                    remaining: len,
                    pad,
                };
            }
            return Ok(());
        }
        let (limit, what) = match self.expect {
            Expect::Name => (MAX_NAME_LEN, "entry name"),
            Expect::Target => (MAX_TARGET_LEN, "symlink target"),
            Expect::Magic if len != 13 => {
                return Err(self.error(
                    "this is not a NAR archive: it does not start with the \"nix-archive-1\" magic",
                ));
            }
            _ => (MAX_KEYWORD_LEN, ""),
        };
        if len > limit as u64 {
            return Err(self.error(if what.is_empty() {
                format!(
                    "expected {}, found a {len}-byte string",
                    self.expect.describe()
                )
            } else {
                format!("{what} is {len} bytes long; at most {limit} are allowed")
            }));
        }
        self.buf.clear();
        if len == 0 {
            self.token(sink)?;
            self.begin_pad(pad);
        } else {
            self.lex = Lex::Str {
                len: len as usize,
                pad,
            };
        }
        Ok(())
    }

    /// A complete string is in `self.buf`; advance the grammar.
    fn token<S: Sink>(&mut self, sink: &mut S) -> Result<(), FormatError> {
        let tok = std::mem::take(&mut self.buf);
        let next = match (self.expect, tok.as_slice()) {
            (Expect::Magic, b"nix-archive-1") => Expect::NodeOpen,
            (Expect::NodeOpen, b"(") => Expect::Type,
            (Expect::Type, b"type") => Expect::TypeValue,
            (Expect::TypeValue, b"regular") => {
                self.executable = false;
                Expect::RegularNext
            }
            (Expect::TypeValue, b"symlink") => Expect::TargetKw,
            (Expect::TypeValue, b"directory") => {
                if self.frames.len() >= MAX_DEPTH {
                    return Err(self.error(format!(
                        "directories are nested more than {MAX_DEPTH} levels deep"
                    )));
                }
                self.frames.push(Frame {
                    start: self.path.len(),
                    has_last: false,
                });
                sink.directory();
                Expect::DirNext
            }
            (Expect::RegularNext, b"executable") => {
                self.executable = true;
                Expect::ExecutableValue
            }
            (Expect::RegularNext | Expect::ContentsKw, b"contents") => Expect::ContentsData,
            (Expect::ExecutableValue, b"") => Expect::ContentsKw,
            (Expect::NodeClose, b")") => self.end_node(sink),
            (Expect::TargetKw, b"target") => Expect::Target,
            (Expect::DirNext, b"entry") => Expect::EntryOpen,
            (Expect::DirNext, b")") => {
                if let Some(frame) = self.frames.pop() {
                    self.path.truncate(frame.start);
                }
                self.end_node(sink)
            }
            (Expect::EntryOpen, b"(") => Expect::NameKw,
            (Expect::NameKw, b"name") => Expect::Name,
            (Expect::NodeKw, b"node") => Expect::NodeOpen,
            (Expect::EntryClose, b")") => Expect::DirNext,
            (Expect::Target, target) => {
                if target.is_empty() || target.contains(&0) {
                    return Err(self.error("a symlink target is empty or contains a NUL byte"));
                }
                sink.symlink(target).map_err(|r| self.error(r))?;
                Expect::NodeClose
            }
            (Expect::Name, name) => {
                self.check_name(name)?;
                sink.entry(name).map_err(|r| self.error(r))?;
                Expect::NodeKw
            }
            _ => return Err(self.unexpected(&tok)),
        };
        self.expect = next;
        self.buf = tok;
        Ok(())
    }

    fn unexpected(&self, tok: &[u8]) -> FormatError {
        self.error(format!(
            "expected {}, found {:?}",
            self.expect.describe(),
            String::from_utf8_lossy(tok)
        ))
    }

    fn end_node<S: Sink>(&mut self, sink: &mut S) -> Expect {
        sink.end_node();
        if self.frames.is_empty() {
            Expect::Done
        } else {
            Expect::EntryClose
        }
    }

    fn check_name(&mut self, name: &[u8]) -> Result<(), FormatError> {
        let shown = || String::from_utf8_lossy(name).into_owned();
        if name.is_empty() {
            return Err(self.error("a directory entry has an empty name"));
        }
        if name == b"." || name == b".." {
            return Err(self.error(format!("a directory entry is named {:?}", shown())));
        }
        if name.iter().any(|&b| b == b'/' || b == 0) {
            return Err(self.error(format!(
                "entry name {:?} contains '/' or a NUL byte",
                shown()
            )));
        }
        let Some(&Frame { start, has_last }) = self.frames.last() else {
            return Err(self.error("internal error: entry outside a directory"));
        };
        if has_last {
            let last = &self.path[start..];
            if name <= last {
                let reason = if name == last {
                    format!("directory entry {:?} appears twice", shown())
                } else {
                    format!(
                        "directory entry {:?} comes after {:?}; entries must be sorted byte-wise",
                        shown(),
                        String::from_utf8_lossy(last)
                    )
                };
                return Err(self.error(reason));
            }
        }
        if start + name.len() > MAX_PATH_LEN {
            return Err(self.error(format!(
                "a path inside the archive is longer than {MAX_PATH_LEN} bytes"
            )));
        }
        if let Some(frame) = self.frames.last_mut() {
            frame.has_last = true;
        }
        self.path.truncate(start);
        self.path.extend_from_slice(name);
        Ok(())
    }
}
