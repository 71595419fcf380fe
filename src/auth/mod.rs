//! Capability tokens: minting, verifying and authorizing requests.
//!
//! # Design
//!
//! Ferry tokens are [biscuit](https://www.biscuitsec.org) tokens (biscuit-auth
//! 6, ed25519) signed by the server's root key ([`RootKey`]). They are opaque
//! base64url strings; the server never stores them.
//!
//! **What a token says.** The authority block (the first block, signed by the
//! root key) holds only facts, plus one check:
//!
//! ```text
//! subject("alice");                 // who the token was issued to
//! right("pull", "team-*");          // one fact per (operation, cache pattern)
//! right("push", "team-a");
//! expires(2030-01-01T00:00:00Z);    // read back by the server for error messages
//! check if time($t), $t <= 2030-01-01T00:00:00Z;
//! ```
//!
//! Operations are the seven names of [`Operation`]; `admin` is an operation
//! like the others and does not imply them. Patterns use the cache-name
//! alphabet plus `*`, which matches any run of characters ([`glob_match`]).
//!
//! **How it is presented.** `Authorization: Bearer <token>`, or HTTP Basic
//! with any user name and the token as password. Header parsing belongs to the
//! server; this module receives the bare token string.
//!
//! **What the server's authorizer adds.** For every request, one authorizer
//! run per (operation, cache) with the facts `operation("push")`,
//! `cache("team-a")`, `time(<now>)`, and `cache_matches(<pattern>)` for each
//! pattern of the token's authority rights that matches the cache (glob
//! matching is done in Rust; the patterns come from the root-signed authority
//! block). Its only policy is
//! `allow if operation($op), right($op, $p), cache_matches($p)`; anything
//! else is denied. Never two operation facts in one run, so a check in the
//! token can reason about "the" operation.
//!
//! **Attenuation.** Anyone holding a token may append blocks (biscuit does
//! not need the root key for that). Appended blocks should contain checks
//! only, e.g. `check if operation("pull")` or `check if cache("team-a")`.
//! An appended block can only narrow a token: the authorizer and the
//! authority block only trust facts from the authority block and the
//! authorizer itself (biscuit's default scope), so a `right(...)` fact in an
//! appended block grants nothing, while every check of every block must pass.
//!
//! **Errors.** Expiry is read from the authority block's `expires` fact and
//! compared by us, so an expired token says [`AuthError::Expired`] rather
//! than a generic failure. A denied request is [`AuthError::Forbidden`] when
//! the authority block holds some right on the cache (another operation), and
//! [`AuthError::NoAccess`] otherwise.
//!
//! **Untrusted text.** Every string is validated ([`validate_cache_name`],
//! [`validate_pattern`], [`validate_subject`]) before it becomes a datalog
//! term, and terms are built with the builder API, never by formatting
//! datalog source.
//!
//! **Revocation.** biscuit does not check revocation itself. Every block
//! has a revocation id; a token attenuated from another carries all of its
//! parent's ids plus one for its new block. Revoking a token stores the id
//! of its *last* block, so the token and everything attenuated from it
//! fail ([`AuthError::Revoked`]) while its parent keeps working. The
//! [`Authorizer`] compares a token's ids with the revoked set in Rust after
//! verifying the signature; [`Authorizer::set_revoked`] replaces the set
//! and forgets every cached decision.
//!
//! **Discovery.** A denial is [`AuthError::Forbidden`] only when the token,
//! attenuation included, allows some other operation on the same cache;
//! otherwise it is [`AuthError::NoAccess`], which the server answers with
//! the same 401 whether the cache exists or not.

mod attenuate;
mod duration;
mod key;
mod names;
mod token;
mod verify;

pub use self::attenuate::{Attenuation, attenuate, block_sources, glob_to_regex};
pub use self::duration::parse_duration;
pub use self::key::RootKey;
pub use self::names::{glob_match, validate_cache_name, validate_pattern, validate_subject};
pub use self::token::{TokenInfo, TokenSpec, mint, revocation_ids};
pub use self::verify::Authorizer;

use std::fmt;

/// Longest token string accepted, in characters; longer ones are refused
/// before any parsing.
pub const MAX_TOKEN_LEN: usize = 4096;

/// An operation a token may grant on a cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Read narinfo and NAR files.
    Pull,
    /// Upload paths.
    Push,
    /// Delete paths.
    Delete,
    /// Create a cache with a matching name.
    CreateCache,
    /// Change a cache's settings.
    ConfigureCache,
    /// Delete a whole cache.
    DestroyCache,
    /// Administrative actions on a cache (does not imply the others).
    Admin,
}

impl Operation {
    /// Every operation, in a stable order.
    pub const ALL: [Operation; 7] = [
        Operation::Pull,
        Operation::Push,
        Operation::Delete,
        Operation::CreateCache,
        Operation::ConfigureCache,
        Operation::DestroyCache,
        Operation::Admin,
    ];

    /// The name used in tokens and on the command line, e.g. `"create-cache"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Operation::Pull => "pull",
            Operation::Push => "push",
            Operation::Delete => "delete",
            Operation::CreateCache => "create-cache",
            Operation::ConfigureCache => "configure-cache",
            Operation::DestroyCache => "destroy-cache",
            Operation::Admin => "admin",
        }
    }

    /// Parses a name produced by [`Operation::as_str`] (exact match).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.as_str() == s)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a token could not be minted, parsed or used. Each message is a
/// sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a token at all (bad base64, bad encoding, unexpected content).
    #[error("the token is malformed ({0}); check that it was copied completely")]
    Malformed(String),
    /// The token was not signed by this server's root key.
    #[error(
        "the token was not issued by this server (bad signature); ask this server's administrator for a token"
    )]
    BadSignature,
    /// The token's expiry time has passed.
    #[error("the token has expired; ask for a new one")]
    Expired,
    /// The token, or a token it was attenuated from, has been revoked.
    #[error("the token has been revoked; ask for a new one")]
    Revoked,
    /// The token string is longer than [`MAX_TOKEN_LEN`].
    #[error("the token is longer than 4096 characters; check that only the token was sent")]
    TooLong,
    /// A cache name, pattern or subject is invalid. The payload is a complete
    /// sentence naming the bad value and the rule it breaks.
    #[error("{0}")]
    InvalidName(String),
    /// The token is valid but grants nothing on this cache at all.
    #[error("the token grants no access to this cache; ask for a token that covers it")]
    NoAccess,
    /// The token has some right on this cache, but not this operation.
    #[error(
        "the token does not allow `{operation}` on this cache; ask for a token with the `{operation}` right"
    )]
    Forbidden {
        /// The operation that was refused.
        operation: Operation,
    },
    /// A duration such as `30d` could not be parsed. The payload is a
    /// complete sentence.
    #[error("{0}")]
    InvalidDuration(String),
    /// A bug or resource problem on the server side.
    #[error(
        "internal error while handling the token ({0}); please report this to the server's administrator"
    )]
    Internal(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names_round_trip() {
        for op in Operation::ALL {
            assert_eq!(Operation::parse(op.as_str()), Some(op));
            assert_eq!(op.to_string(), op.as_str());
        }
        assert_eq!(
            Operation::CreateCache.as_str(),
            "create-cache",
            "names are kebab-case"
        );
        assert_eq!(Operation::parse("Pull"), None);
        assert_eq!(Operation::parse(""), None);
    }

    #[test]
    fn errors_are_sentences() {
        let e = AuthError::Forbidden {
            operation: Operation::Push,
        };
        assert!(e.to_string().contains("`push`"));
        assert_eq!(
            AuthError::Expired.to_string(),
            "the token has expired; ask for a new one"
        );
    }

    #[test]
    fn authorizer_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Authorizer>();
        assert_send_sync::<RootKey>();
    }
}
