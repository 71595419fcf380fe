//! The request-time [`Authorizer`]: verification, authorization and caches.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use biscuit_auth::builder::{AuthorizerBuilder, Policy, date, fact, string};
use biscuit_auth::error::{FailedCheck, Logic, MatchedPolicy, Token};
use biscuit_auth::{Biscuit, PublicKey};

use super::names::{glob_match, validate_cache_name};
use super::token::{TokenInfo, internal, parse_error, read_authority, run_limits};
use super::{AuthError, MAX_TOKEN_LEN, Operation};

/// Most tokens and most decisions kept in memory; beyond that an arbitrary
/// entry is evicted.
const MAX_ENTRIES: usize = 10_000;
/// Longest time a decision is reused (never past the token's expiry).
const DECISION_TTL: Duration = Duration::from_secs(30);
/// The one policy: some authority right for this operation whose pattern
/// matches the cache (`cache_matches` facts are computed in Rust).
const POLICY: &str = "allow if operation($op), right($op, $p), cache_matches($p)";

type TokenId = [u8; 32];

/// A token whose signature has been verified.
struct Verified {
    biscuit: Biscuit,
    info: TokenInfo,
}

struct Decision {
    result: Result<(), AuthError>,
    until: Instant,
}

/// Verifies tokens and decides requests; cheap to call on every request.
///
/// Keeps parsed, signature-verified tokens keyed by blake3(token), and
/// decisions per (token, operation, cache) for up to 30 seconds (never past
/// the token's expiry). Both caches hold at most 10 000 entries.
pub struct Authorizer {
    root: PublicKey,
    policy: Policy,
    tokens: Mutex<HashMap<TokenId, Arc<Verified>>>,
    decisions: Mutex<HashMap<(TokenId, Operation, String), Decision>>,
    /// Revoked block ids (hex).
    revoked: Mutex<Arc<HashSet<String>>>,
    /// Bumped by every `set_revoked`: a decision worked out against an
    /// older revoked set is not cached.
    generation: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes an arbitrary entry when `map` is full.
fn make_room<K: Clone + Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.len() >= MAX_ENTRIES
        && let Some(k) = map.keys().next().cloned()
    {
        map.remove(&k);
    }
}

impl Authorizer {
    /// An authorizer accepting tokens signed by `root_public`.
    pub fn new(root_public: PublicKey) -> Self {
        Authorizer {
            root: root_public,
            policy: POLICY.try_into().expect("the built-in policy parses"),
            tokens: Mutex::new(HashMap::new()),
            decisions: Mutex::new(HashMap::new()),
            revoked: Mutex::new(Arc::new(HashSet::new())),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Replaces the set of revoked block ids and forgets cached decisions.
    pub fn set_revoked(&self, ids: HashSet<String>) {
        *lock(&self.revoked) = Arc::new(ids);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.clear_cache();
    }

    /// Ok if `op` is allowed on every cache name: the token holds the right
    /// with the pattern `*` and no attenuation narrows the caches. For
    /// server-wide actions such as revoking tokens.
    pub fn check_global(&self, token: &str, op: Operation) -> Result<(), AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::TooLong);
        }
        let id = *blake3::hash(token.as_bytes()).as_bytes();
        let verified = self.verify(token, id)?;
        let now = SystemTime::now();
        if verified.info.expires_at <= now {
            return Err(AuthError::Expired);
        }
        // "*" as a cache value is matched only by the pattern "*" (and by
        // no attenuation regex narrower than everything).
        self.decide(&verified, op, "*", now)
    }

    /// Ok if the token grants `op` on `cache`.
    ///
    /// Errors: [`AuthError::TooLong`] (over 4096 characters, refused before
    /// parsing), [`AuthError::InvalidName`] (bad cache name),
    /// [`AuthError::Malformed`], [`AuthError::BadSignature`],
    /// [`AuthError::Expired`], [`AuthError::NoAccess`],
    /// [`AuthError::Forbidden`]. For `create-cache`, pass the requested name.
    pub fn check(&self, token: &str, op: Operation, cache: &str) -> Result<(), AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::TooLong);
        }
        validate_cache_name(cache)?;
        let id = *blake3::hash(token.as_bytes()).as_bytes();
        let key = (id, op, cache.to_owned());
        if let Some(d) = lock(&self.decisions).get(&key)
            && d.until > Instant::now()
        {
            return d.result.clone();
        }

        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let verified = self.verify(token, id)?;
        let now = SystemTime::now();
        let Ok(left) = verified.info.expires_at.duration_since(now) else {
            return Err(AuthError::Expired);
        };
        if left.is_zero() {
            return Err(AuthError::Expired);
        }
        let result = self.decide(&verified, op, cache, now);
        let ttl = left.min(DECISION_TTL);
        // An attenuation block may carry an earlier expiry than the
        // authority's `left`: an allow is cached only if it still holds at
        // the end of the caching time (expiry checks only ever turn from
        // pass to fail), so no cached answer outlives any block's expiry.
        let still_allowed_then =
            || result.is_err() || self.decide(&verified, op, cache, now + ttl).is_ok();
        if !matches!(result, Err(AuthError::Internal(_))) && still_allowed_then() {
            let until = Instant::now() + ttl;
            let mut decisions = lock(&self.decisions);
            if decisions.len() >= MAX_ENTRIES {
                let now = Instant::now();
                decisions.retain(|_, d| d.until > now);
            }
            make_room(&mut decisions);
            let result = result.clone();
            if self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation {
                decisions.insert(key, Decision { result, until });
            }
        }
        result
    }

    /// The authority rights of a verified token (appended blocks may narrow
    /// them further). Does not check expiry.
    pub fn rights_of(&self, token: &str) -> Result<Vec<(Operation, String)>, AuthError> {
        Ok(self.inspect(token)?.rights)
    }

    /// Everything the authority block of a verified token says. Does not
    /// check expiry.
    pub fn inspect(&self, token: &str) -> Result<TokenInfo, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::TooLong);
        }
        let id = *blake3::hash(token.as_bytes()).as_bytes();
        Ok(self.verify(token, id)?.info.clone())
    }

    /// Forgets all cached tokens and decisions (e.g. when revocations change).
    pub fn clear_cache(&self) {
        lock(&self.tokens).clear();
        lock(&self.decisions).clear();
    }

    /// Parses and verifies `token`, or returns the cached result.
    fn verify(&self, token: &str, id: TokenId) -> Result<Arc<Verified>, AuthError> {
        let cached = lock(&self.tokens).get(&id).cloned();
        let verified = match cached {
            Some(v) => v,
            None => {
                let biscuit = Biscuit::from_base64(token.trim(), self.root).map_err(parse_error)?;
                let info = read_authority(&biscuit)?;
                let verified = Arc::new(Verified { biscuit, info });
                let mut tokens = lock(&self.tokens);
                make_room(&mut tokens);
                tokens.insert(id, Arc::clone(&verified));
                verified
            }
        };
        let revoked = Arc::clone(&lock(&self.revoked));
        if verified
            .info
            .revocation_ids
            .iter()
            .any(|r| revoked.contains(r))
        {
            return Err(AuthError::Revoked);
        }
        Ok(verified)
    }

    /// One authorizer run for (op, cache), then classification of a denial.
    fn decide(
        &self,
        verified: &Verified,
        op: Operation,
        cache: &str,
        now: SystemTime,
    ) -> Result<(), AuthError> {
        let (checks, policy_allowed) = match self.run(verified, op, cache, now)? {
            None => return Ok(()),
            Some(denial) => denial,
        };
        // The authority's only check is the expiry. When the rights allow the
        // request and only `time` checks of appended blocks fail, those are
        // an earlier expiry set by attenuation.
        let authority_failed = checks.iter().any(|c| block_of(c) == Some(0));
        let only_time = !checks.is_empty() && checks.iter().all(is_time_check);
        if authority_failed || (policy_allowed && only_time) {
            return Err(AuthError::Expired);
        }
        // Forbidden only if the token, attenuation included, allows some
        // other operation here; otherwise the cache is none of its business.
        for other in Operation::ALL.into_iter().filter(|o| *o != op) {
            if self.run(verified, other, cache, now)?.is_none() {
                return Err(AuthError::Forbidden { operation: op });
            }
        }
        Err(AuthError::NoAccess)
    }

    /// One authorizer run. `None` when allowed; otherwise the failed checks
    /// and whether the policy alone would have allowed it.
    fn run(
        &self,
        verified: &Verified,
        op: Operation,
        cache: &str,
        now: SystemTime,
    ) -> Result<Option<(Vec<FailedCheck>, bool)>, AuthError> {
        let rights = &verified.info.rights;
        let mut builder = AuthorizerBuilder::new()
            .set_limits(run_limits())
            .fact(fact("operation", &[string(op.as_str())]))
            .and_then(|b| b.fact(fact("cache", &[string(cache)])))
            .and_then(|b| b.fact(fact("time", &[date(&now)])))
            .map_err(internal)?;
        let mut matching: Vec<&str> = rights
            .iter()
            .map(|(_, p)| p.as_str())
            .filter(|p| glob_match(p, cache))
            .collect();
        matching.sort_unstable();
        matching.dedup();
        for pattern in &matching {
            builder = builder
                .fact(fact("cache_matches", &[string(pattern)]))
                .map_err(internal)?;
        }
        let mut az = builder
            .policy(self.policy.clone())
            .and_then(|b| b.build(&verified.biscuit))
            .map_err(internal)?;
        match az.authorize() {
            Ok(_) => Ok(None),
            Err(Token::FailedLogic(Logic::Unauthorized { checks, policy })) => {
                Ok(Some((checks, matches!(policy, MatchedPolicy::Allow(_)))))
            }
            Err(Token::FailedLogic(Logic::NoMatchingPolicy { checks })) => {
                Ok(Some((checks, false)))
            }
            Err(Token::FailedLogic(Logic::InvalidBlockRule(..))) => Err(AuthError::Malformed(
                "one of its blocks has an invalid rule".into(),
            )),
            Err(e) => Err(internal(e)),
        }
    }
}

/// The block a failed check belongs to (None for the authorizer's own).
fn block_of(check: &FailedCheck) -> Option<u32> {
    match check {
        FailedCheck::Block(b) => Some(b.block_id),
        FailedCheck::Authorizer(_) => None,
    }
}

/// Whether a failed check of a token block looks at `time`.
fn is_time_check(check: &FailedCheck) -> bool {
    matches!(check, FailedCheck::Block(b) if b.rule.contains("time("))
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
