//! Minting tokens and reading back what a verified token says.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use biscuit_auth::builder::{AuthorizerBuilder, date, fact, string};
use biscuit_auth::error::{Format, Token};
use biscuit_auth::{AuthorizerLimits, Biscuit, UnverifiedBiscuit};

use super::names::{validate_pattern, validate_subject};
use super::{AuthError, MAX_TOKEN_LEN, Operation, RootKey};

/// What to put in a new token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSpec {
    /// Who the token is for (shown in logs); see [`super::validate_subject`].
    pub subject: String,
    /// Granted operations, each on a cache name or pattern such as `team-*`.
    pub rights: Vec<(Operation, String)>,
    /// When the token stops working (stored with one-second precision).
    pub expires_at: SystemTime,
}

/// What a signature-verified token's authority block says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// The subject the token was issued to.
    pub subject: String,
    /// The rights of the authority block. Appended blocks may narrow them.
    pub rights: Vec<(Operation, String)>,
    /// The expiry written by the issuer.
    pub expires_at: SystemTime,
    /// Number of blocks: 1 for a fresh token, more once attenuated.
    pub blocks: usize,
    /// Revocation ids of every block, hex-encoded, authority first.
    pub revocation_ids: Vec<String>,
}

/// Limits for every datalog run: the crate's 1 ms default time limit fails
/// at random in debug builds and under load.
pub(super) fn run_limits() -> AuthorizerLimits {
    AuthorizerLimits {
        max_facts: 1000,
        max_iterations: 100,
        max_time: Duration::from_millis(20),
    }
}

/// Creates a token for `spec`, signed by `root`, as a base64url string.
///
/// Fails with [`AuthError::InvalidName`] for a bad subject or pattern, and
/// [`AuthError::TooLong`] when the token would exceed 4096 characters (too
/// many rights). An expiry in the past is allowed (the token is useless).
pub fn mint(root: &RootKey, spec: &TokenSpec) -> Result<String, AuthError> {
    validate_subject(&spec.subject)?;
    for (_, pattern) in &spec.rights {
        validate_pattern(pattern)?;
    }
    if spec.expires_at < UNIX_EPOCH {
        return Err(AuthError::Internal("expiry before 1970".into()));
    }
    let expiry = date(&spec.expires_at);
    let params = HashMap::from([
        ("subject".to_owned(), string(&spec.subject)),
        ("expiry".to_owned(), expiry),
    ]);
    let mut builder = Biscuit::builder()
        .code_with_params(
            "subject({subject});\n\
             expires({expiry});\n\
             check if time($t), $t <= {expiry};",
            params,
            HashMap::new(),
        )
        .map_err(internal)?;
    for (op, pattern) in &spec.rights {
        builder = builder
            .fact(fact("right", &[string(op.as_str()), string(pattern)]))
            .map_err(internal)?;
    }
    let token = builder
        .build(root.pair())
        .and_then(|b| b.to_base64())
        .map_err(internal)?;
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::TooLong);
    }
    Ok(token)
}

/// Revocation ids (hex) of every block of `token`, authority first, without
/// checking its signature. For a future revocation list.
pub fn revocation_ids(token: &str) -> Result<Vec<String>, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::TooLong);
    }
    let unverified = UnverifiedBiscuit::from_base64(token.trim()).map_err(parse_error)?;
    Ok(unverified
        .revocation_identifiers()
        .iter()
        .map(hex::encode)
        .collect())
}

pub(super) fn internal(e: Token) -> AuthError {
    AuthError::Internal(e.to_string())
}

/// Maps a deserialization/verification failure to BadSignature or Malformed.
pub(super) fn parse_error(e: Token) -> AuthError {
    match e {
        Token::Format(
            Format::Signature(_)
            | Format::SealedSignature
            | Format::UnknownPublicKey
            | Format::UnknownExternalKey,
        ) => AuthError::BadSignature,
        Token::Base64(_) => AuthError::Malformed("it is not valid base64url".into()),
        Token::Format(f) => AuthError::Malformed(f.to_string()),
        other => AuthError::Malformed(other.to_string()),
    }
}

/// Reads subject, rights and expiry from the authority block of a verified
/// token. Only authority facts are visible to these queries, so facts from
/// appended blocks cannot add rights. Rights with an unknown operation or an
/// invalid pattern (from a newer server, say) are skipped.
pub(super) fn read_authority(biscuit: &Biscuit) -> Result<TokenInfo, AuthError> {
    let mut az = AuthorizerBuilder::new()
        .set_limits(run_limits())
        .build(biscuit)
        .map_err(|e| AuthError::Malformed(e.to_string()))?;
    let missing = |what: &str| {
        AuthError::Malformed(format!(
            "it has no single {what}, so it was not issued by ferry"
        ))
    };

    let subjects: Vec<(String,)> = az
        .query_with_limits("subject($s) <- subject($s)", run_limits())
        .map_err(internal)?;
    let [(subject,)] = <[_; 1]>::try_from(subjects).map_err(|_| missing("subject"))?;

    let expiries: Vec<(SystemTime,)> = az
        .query_with_limits("expires($t) <- expires($t)", run_limits())
        .map_err(internal)?;
    let [(expires_at,)] = <[_; 1]>::try_from(expiries).map_err(|_| missing("expiry"))?;

    let raw: Vec<(String, String)> = az
        .query_with_limits("right($op, $p) <- right($op, $p)", run_limits())
        .map_err(internal)?;
    let mut rights: Vec<(Operation, String)> = raw
        .into_iter()
        .filter_map(|(op, p)| Some((Operation::parse(&op)?, p)))
        .filter(|(_, p)| validate_pattern(p).is_ok())
        .collect();
    rights.sort_by(|a, b| (a.0 as u8, &a.1).cmp(&(b.0 as u8, &b.1)));

    Ok(TokenInfo {
        subject,
        rights,
        expires_at,
        blocks: biscuit.block_count(),
        revocation_ids: biscuit
            .revocation_identifiers()
            .iter()
            .map(hex::encode)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rights: &[(Operation, &str)]) -> TokenSpec {
        TokenSpec {
            subject: "alice".into(),
            rights: rights.iter().map(|(o, p)| (*o, p.to_string())).collect(),
            expires_at: SystemTime::now() + Duration::from_secs(3600),
        }
    }

    #[test]
    fn mint_then_read_back() {
        let root = RootKey::generate();
        let s = spec(&[(Operation::Push, "team-a"), (Operation::Pull, "team-*")]);
        let token = mint(&root, &s).unwrap();
        assert!(token.len() < 1000, "{}", token.len());
        let biscuit = Biscuit::from_base64(&token, root.public()).unwrap();
        let info = read_authority(&biscuit).unwrap();
        assert_eq!(info.subject, "alice");
        assert_eq!(
            info.rights,
            vec![
                (Operation::Pull, "team-*".to_string()),
                (Operation::Push, "team-a".to_string())
            ]
        );
        let want = s.expires_at.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let got = info
            .expires_at
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(want, got);
        assert_eq!(info.blocks, 1);
        assert_eq!(revocation_ids(&token).unwrap(), info.revocation_ids);
        assert_eq!(info.revocation_ids.len(), 1);
    }

    #[test]
    fn mint_rejects_bad_strings() {
        let root = RootKey::generate();
        let mut s = spec(&[(Operation::Pull, "a\") ; right(\"admin\", \"*")]);
        assert!(matches!(mint(&root, &s), Err(AuthError::InvalidName(_))));
        s = spec(&[(Operation::Pull, "ok")]);
        s.subject = "eve\"); right(\"admin\", \"*".into();
        assert!(matches!(mint(&root, &s), Err(AuthError::InvalidName(_))));
    }

    #[test]
    fn mint_refuses_huge_tokens() {
        let root = RootKey::generate();
        let names: Vec<String> = (0..200).map(|i| format!("cache-number-{i}")).collect();
        let rights: Vec<(Operation, &str)> = names
            .iter()
            .map(|n| (Operation::Pull, n.as_str()))
            .collect();
        assert_eq!(mint(&root, &spec(&rights)), Err(AuthError::TooLong));
    }

    #[test]
    fn revocation_ids_of_garbage() {
        assert!(matches!(revocation_ids("!!"), Err(AuthError::Malformed(_))));
        assert_eq!(revocation_ids(&"a".repeat(5000)), Err(AuthError::TooLong));
    }
}
