//! Nix wire formats that a binary cache must speak: Nix's base-32, SHA-256
//! hash spellings, store paths, `.narinfo` files, Ed25519 signing keys and
//! signatures, and the NAR archive format (writer, streaming validator).
//!
//! Everything here is pure (no I/O, no async) so it can be tested in
//! isolation and reused by the HTTP layer, the upload verifier and the CLI.
//! All failures are reported through the single [`FormatError`] type whose
//! messages are full sentences meant to be shown to the user as they are.

pub mod archive;
pub mod hash;
pub mod narinfo;
pub mod nix32;
pub mod signing;
pub mod store_path;

pub use archive::{ListingNode, NarListing, NarValidator, Tree, read_nar, write_nar};
pub use hash::Sha256Hash;
pub use narinfo::NarInfo;
pub use signing::{PublicKey, SigningKey, fingerprint};
pub use store_path::StorePath;

/// Text listing every hash spelling that [`Sha256Hash::parse`] accepts.
pub const HASH_FORMS: &str =
    "sha256:<52 nix32 chars>, sha256:<64 hex>, sha256:<44 base64> or SRI sha256-<base64>";

/// Every way data in a Nix format can be malformed.
///
/// The `Display` text of each variant is a complete sentence naming the bad
/// value and what would have been accepted.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// A string is not valid Nix base-32.
    #[error(
        "{input:?} is not valid Nix base-32: {reason} (the alphabet is 0123456789abcdfghijklmnpqrsvwxyz)"
    )]
    InvalidNix32 {
        /// The offending text.
        input: String,
        /// What exactly is wrong with it.
        reason: String,
    },

    /// A hash could not be parsed in any of the accepted spellings.
    #[error("{field} {value:?} is not a valid hash: expected {forms}", forms = HASH_FORMS)]
    InvalidHash {
        /// Name of the field or argument that held the hash (e.g. `NarHash`).
        field: String,
        /// The offending text.
        value: String,
    },

    /// A store path (or store path base name) is malformed.
    #[error("store path {path:?} is invalid: {reason}")]
    InvalidStorePath {
        /// The offending path as given.
        path: String,
        /// What exactly is wrong with it.
        reason: String,
    },

    /// A store path hash part (as used in `/<hash>.narinfo`) is malformed.
    #[error(
        "{value:?} is not a valid store path hash: expected exactly 32 characters from 0123456789abcdfghijklmnpqrsvwxyz"
    )]
    InvalidHashPart {
        /// The offending text.
        value: String,
    },

    /// A store directory (such as `/nix/store`) is unusable.
    #[error("store directory {dir:?} is invalid: {reason}")]
    InvalidStoreDir {
        /// The offending directory.
        dir: String,
        /// What exactly is wrong with it.
        reason: String,
    },

    /// A line of a narinfo file is not of the form `Key: value`.
    #[error("narinfo line {line_no} ({line:?}) is malformed: expected \"Key: value\"")]
    NarInfoMalformedLine {
        /// 1-based line number.
        line_no: usize,
        /// The offending line.
        line: String,
    },

    /// A required narinfo field is absent.
    #[error("narinfo is missing the required field {field}: add a \"{field}: ...\" line")]
    NarInfoMissingField {
        /// The missing key.
        field: String,
    },

    /// A narinfo field that may appear once appears several times.
    #[error("narinfo field {field} appears more than once: keep a single \"{field}:\" line")]
    NarInfoDuplicateField {
        /// The repeated key.
        field: String,
    },

    /// A narinfo field has a value that cannot be used.
    #[error("narinfo field {field} has the invalid value {value:?}: {reason}")]
    NarInfoInvalidField {
        /// The key.
        field: String,
        /// The offending value.
        value: String,
        /// What would have been accepted.
        reason: String,
    },

    /// A signing key name is unusable.
    #[error(
        "key name {name:?} is invalid: it must be non-empty and contain no ':' and no whitespace (e.g. \"cache.example.org-1\")"
    )]
    InvalidKeyName {
        /// The offending name.
        name: String,
    },

    /// A secret key string is not in Nix's `name:base64(64 bytes)` format.
    #[error("secret signing key is invalid: {reason}")]
    InvalidSecretKey {
        /// What exactly is wrong with it (never contains key material).
        reason: String,
    },

    /// A public key string is not in Nix's `name:base64(32 bytes)` format.
    #[error("public key is invalid: {reason}")]
    InvalidPublicKey {
        /// What exactly is wrong with it.
        reason: String,
    },

    /// A NAR archive violates the format.
    #[error("NAR archive is invalid at byte {offset}: {reason}")]
    InvalidNar {
        /// Offset in the (decompressed) NAR stream where the problem was found.
        offset: u64,
        /// What exactly is wrong.
        reason: String,
    },

    /// A NAR archive ended before its root node was complete.
    #[error(
        "NAR archive is truncated: it ends after {offset} bytes while {expected} was expected; the upload was probably cut short"
    )]
    TruncatedNar {
        /// Number of bytes received.
        offset: u64,
        /// What the parser was waiting for.
        expected: String,
    },
}
