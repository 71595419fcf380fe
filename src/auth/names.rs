//! Validation of cache names, cache patterns and subjects, and glob matching.
//!
//! Every string that becomes a datalog term goes through one of these
//! validators first. The alphabets exclude quotes, backslashes and control
//! characters, so even a buggy printer could not be confused by them.

use super::AuthError;

/// Longest cache name or pattern, in characters.
pub const MAX_NAME_LEN: usize = 64;
/// Longest subject, in characters.
pub const MAX_SUBJECT_LEN: usize = 128;

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_' || c == '-'
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// Quotes (with escapes) and truncates untrusted input for error messages.
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(80).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// Checks a cache name: `[a-z0-9][a-z0-9._-]{0,63}`.
pub fn validate_cache_name(name: &str) -> Result<(), AuthError> {
    let mut chars = name.chars();
    let ok = name.len() <= MAX_NAME_LEN
        && chars.next().is_some_and(is_name_start)
        && chars.all(is_name_char);
    if ok {
        Ok(())
    } else {
        Err(AuthError::InvalidName(format!(
            "{} is not a valid cache name: use 1 to 64 characters from a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
            shown(name)
        )))
    }
}

/// Checks a cache pattern: the cache-name alphabet plus `*`, 1 to 64
/// characters, starting with a letter, digit or `*`.
pub fn validate_pattern(pattern: &str) -> Result<(), AuthError> {
    let mut chars = pattern.chars();
    let ok = pattern.len() <= MAX_NAME_LEN
        && chars.next().is_some_and(|c| is_name_start(c) || c == '*')
        && chars.all(|c| is_name_char(c) || c == '*');
    if ok {
        Ok(())
    } else {
        Err(AuthError::InvalidName(format!(
            "{} is not a valid cache pattern: use 1 to 64 characters from a-z, 0-9, '.', '_', '-' and '*' (any run of characters), starting with a letter, digit or '*'",
            shown(pattern)
        )))
    }
}

/// Checks a token subject: 1 to 128 characters from `A-Z a-z 0-9 . _ @ + : / -`.
pub fn validate_subject(subject: &str) -> Result<(), AuthError> {
    let ok = !subject.is_empty()
        && subject.len() <= MAX_SUBJECT_LEN
        && subject
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@+:/-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(AuthError::InvalidName(format!(
            "{} is not a valid token subject: use 1 to 128 characters from A-Z, a-z, 0-9 and . _ @ + : / -",
            shown(subject)
        )))
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters
/// (including none) and every other character matches itself. There are no
/// other metacharacters: `.` and `?` are literal.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p = pattern.as_bytes();
    let n = name.as_bytes();
    let (mut pi, mut ni) = (0, 0);
    // Position of the last `*` seen, and the name position it is trying.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            // Let the last `*` swallow one more character and retry.
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_names() {
        for ok in ["a", "0", "team-a", "a.b_c-d", &"a".repeat(64)] {
            assert!(validate_cache_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "_a",
            "A",
            "team*",
            "a\"b",
            "a b",
            "é",
            "a\\",
            "a\n",
            &"a".repeat(65),
        ] {
            assert!(validate_cache_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn patterns() {
        for ok in ["*", "team-*", "*-prod", "a*b*c", "**", "plain"] {
            assert!(validate_pattern(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-*", "Team-*", "a?", "a\")", &"*".repeat(65)] {
            assert!(validate_pattern(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subjects() {
        assert!(validate_subject("alice@example.org").is_ok());
        assert!(validate_subject("ci/github:org+repo").is_ok());
        for bad in ["", "a b", "a\"b", "a\\b", "ünï", &"x".repeat(129)] {
            assert!(validate_subject(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_message_escapes_input() {
        let msg = validate_cache_name("a\"\n").unwrap_err().to_string();
        assert!(
            msg.starts_with("\"a\\\"\\n\" is not a valid cache name"),
            "{msg}"
        );
        let long = validate_cache_name(&"X".repeat(500))
            .unwrap_err()
            .to_string();
        assert!(long.len() < 300, "{long}");
    }

    #[test]
    fn glob_edge_cases() {
        assert!(glob_match("team-*", "team-a"));
        assert!(glob_match("team-*", "team-"));
        assert!(!glob_match("team-*", "teamx"));
        assert!(!glob_match("team-*", "team"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("*", ""));
        assert!(glob_match("**", "x"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(!glob_match("exact", "exac"));
        assert!(glob_match("*-prod", "web-prod"));
        assert!(!glob_match("*-prod", "web-prod2"));
        assert!(glob_match("a*b*c", "abc"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(glob_match("a*b*c", "abcbc"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(glob_match("*a*", "banana"));
        assert!(glob_match("*ana", "banana"));
        assert!(!glob_match("a.b", "axb"), "'.' is literal");
        assert!(glob_match("a.b", "a.b"));
        assert!(!glob_match("", "a"));
        assert!(glob_match("", ""));
    }
}
