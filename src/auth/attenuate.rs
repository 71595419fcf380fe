//! Offline attenuation: narrowing a token without the server's key.
//!
//! An appended block holds checks only (facts in appended blocks grant
//! nothing), so it can only take rights away:
//!
//! ```text
//! check all operation($op), ["pull"].contains($op);          // --ops / --pull-only
//! check all cache($c), $c.matches("^team\-.*$") || …;          // --cache (globs → anchored regexes)
//! check if time($t), $t <= 2026-12-24T00:00:00Z;               // --expires
//! ```
//!
//! `check all` fails if any matching fact fails, so even an authorizer run
//! that carried several operation or cache facts could not slip through on
//! one good match. The server runs one authorizer per (operation, cache).

use std::collections::{BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use biscuit_auth::UnverifiedBiscuit;
use biscuit_auth::builder::{BlockBuilder, Term, date, set, string};

use super::names::validate_pattern;
use super::token::{internal, parse_error};
use super::{AuthError, MAX_TOKEN_LEN, Operation};

/// What an attenuation keeps. Empty `caches` and `None` leave that
/// dimension as it was.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attenuation {
    /// Cache names or patterns (`team-*`) the new token is limited to.
    pub caches: Vec<String>,
    /// Operations the new token is limited to.
    pub operations: Option<Vec<Operation>>,
    /// An expiry (only ever earlier in effect: every block's check must pass).
    pub expires_at: Option<SystemTime>,
}

/// An anchored regex matching exactly what the glob `pattern` matches.
/// Patterns are validated first, so only `[a-z0-9._-]` and `*` occur.
pub fn glob_to_regex(pattern: &str) -> String {
    let mut re = String::from("^");
    for c in pattern.chars() {
        match c {
            '*' => re.push_str(".*"),
            '.' => re.push_str("\\."),
            other => re.push(other),
        }
    }
    re.push('$');
    re
}

/// Appends a block narrowing `token` to `a`. Needs no key.
pub fn attenuate(token: &str, a: &Attenuation) -> Result<String, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::TooLong);
    }
    if a.caches.is_empty() && a.operations.is_none() && a.expires_at.is_none() {
        return Err(AuthError::InvalidName(
            "an attenuation must restrict something: give caches, operations or an expiry".into(),
        ));
    }
    let biscuit = UnverifiedBiscuit::from_base64(token.trim()).map_err(parse_error)?;
    let mut code = String::new();
    let mut params: HashMap<String, Term> = HashMap::new();
    if let Some(ops) = &a.operations {
        if ops.is_empty() {
            return Err(AuthError::InvalidName(
                "an attenuation must keep at least one operation".into(),
            ));
        }
        let names: BTreeSet<Term> = ops.iter().map(|o| string(o.as_str())).collect();
        params.insert("ops".into(), set(names));
        code.push_str("check all operation($op), {ops}.contains($op);\n");
    }
    if !a.caches.is_empty() {
        let mut alternatives = vec![];
        for (i, p) in a.caches.iter().enumerate() {
            validate_pattern(p)?;
            params.insert(format!("p{i}"), string(&glob_to_regex(p)));
            alternatives.push(format!("$c.matches({{p{i}}})"));
        }
        code.push_str(&format!(
            "check all cache($c), {};\n",
            alternatives.join(" || ")
        ));
    }
    if let Some(t) = a.expires_at {
        if t < UNIX_EPOCH {
            return Err(AuthError::Internal("expiry before 1970".into()));
        }
        params.insert("expiry".into(), date(&t));
        code.push_str("check if time($t), $t <= {expiry};\n");
    }
    let block = BlockBuilder::new()
        .code_with_params(&code, params, HashMap::new())
        .map_err(internal)?;
    let out = biscuit
        .append(block)
        .and_then(|b| b.to_base64())
        .map_err(internal)?;
    if out.len() > MAX_TOKEN_LEN {
        return Err(AuthError::TooLong);
    }
    Ok(out)
}

/// The datalog source of every block, authority first, for `inspect`.
/// For display only: never parsed back.
pub fn block_sources(token: &str) -> Result<Vec<String>, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::TooLong);
    }
    let biscuit = UnverifiedBiscuit::from_base64(token.trim()).map_err(parse_error)?;
    (0..biscuit.block_count())
        .map(|i| biscuit.print_block_source(i).map_err(internal))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_anchored_regexes() {
        assert_eq!(glob_to_regex("team-*"), "^team-.*$");
        assert_eq!(glob_to_regex("a.b"), "^a\\.b$");
        assert_eq!(glob_to_regex("*"), "^.*$");
    }
}
