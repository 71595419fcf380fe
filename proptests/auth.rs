//! Property: attenuation only ever narrows. For random tokens and random
//! attenuation chains, the (operation, cache) pairs allowed after each
//! step are a subset of those allowed before, and equal to the
//! intersection of the original rights with every step's restriction.
//! Which cache a pattern names comes from a table written by hand, not
//! from the implementation's own matcher. Expiries are random too: the
//! earliest one in the chain wins, so a chain with any past expiry allows
//! nothing at all.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use ferry::auth::{self, Attenuation, Authorizer, Operation, RootKey, TokenSpec};
use proptest::prelude::*;

const CACHES: [&str; 5] = ["a", "b", "team-x", "team-y", "other"];
const PATTERNS: [&str; 6] = ["a", "b", "team-*", "*", "team-x", "o*r"];

/// What each pattern matches among `CACHES`, by hand.
fn matches(pattern: &str, cache: &str) -> bool {
    let table: [(&str, &[&str]); 6] = [
        ("a", &["a"]),
        ("b", &["b"]),
        ("team-*", &["team-x", "team-y"]),
        ("*", &["a", "b", "team-x", "team-y", "other"]),
        ("team-x", &["team-x"]),
        ("o*r", &["other"]),
    ];
    table
        .iter()
        .find(|(p, _)| *p == pattern)
        .is_some_and(|(_, cs)| cs.contains(&cache))
}

/// An expiry relative to now, in seconds: past, soon, later, or none.
fn expiry() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![
        Just(None),
        Just(Some(-30)),
        Just(Some(600)),
        Just(Some(7200))
    ]
}

fn at(offset: i64) -> SystemTime {
    let now = SystemTime::now();
    if offset < 0 {
        now - Duration::from_secs(offset.unsigned_abs())
    } else {
        now + Duration::from_secs(offset as u64)
    }
}

fn op() -> impl Strategy<Value = Operation> {
    (0..Operation::ALL.len()).prop_map(|i| Operation::ALL[i])
}

fn pattern() -> impl Strategy<Value = String> {
    (0..PATTERNS.len()).prop_map(|i| PATTERNS[i].to_owned())
}

/// An attenuation step, with its expiry offset (applied when the test runs).
fn step() -> impl Strategy<Value = (Attenuation, Option<i64>)> {
    (
        proptest::collection::vec(pattern(), 0..3),
        proptest::option::of(proptest::collection::vec(op(), 1..4)),
        expiry(),
    )
        .prop_filter("restricts something", |(c, o, e)| {
            !c.is_empty() || o.is_some() || e.is_some()
        })
        .prop_map(|(caches, operations, e)| {
            (
                Attenuation {
                    caches,
                    operations,
                    expires_at: None,
                },
                e,
            )
        })
}

type Allowed = BTreeSet<(&'static str, &'static str)>;

fn allowed(az: &Authorizer, token: &str) -> Allowed {
    let mut out = BTreeSet::new();
    for op in Operation::ALL {
        for cache in CACHES {
            if az.check(token, op, cache).is_ok() {
                out.insert((op.as_str(), cache));
            }
        }
    }
    out
}

fn permits(a: &Attenuation, op: &str, cache: &str) -> bool {
    let op_ok = a
        .operations
        .as_ref()
        .is_none_or(|ops| ops.iter().any(|o| o.as_str() == op));
    let cache_ok = a.caches.is_empty() || a.caches.iter().any(|p| matches(p, cache));
    op_ok && cache_ok
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn attenuation_never_widens(
        rights in proptest::collection::vec((op(), pattern()), 1..5),
        root_expiry in prop_oneof![Just(-30i64), Just(3600i64)],
        chain in proptest::collection::vec(step(), 1..4),
    ) {
        let root = RootKey::generate();
        let az = Authorizer::new(root.public());
        let mut expected: Allowed = BTreeSet::new();
        for op in Operation::ALL {
            for cache in CACHES {
                if rights.iter().any(|(o, p)| *o == op && matches(p, cache)) {
                    expected.insert((op.as_str(), cache));
                }
            }
        }
        let spec = TokenSpec {
            subject: "prop".into(),
            rights,
            expires_at: at(root_expiry),
        };
        let mut token = auth::mint(&root, &spec).unwrap();
        // Earliest expiry wins: once any block's expiry is past, nothing.
        let mut expired = root_expiry < 0;
        let mut before = allowed(&az, &token);
        let want = |expected: &Allowed, expired: bool| {
            if expired { BTreeSet::new() } else { expected.clone() }
        };
        prop_assert_eq!(&before, &want(&expected, expired));
        for (a, e) in &chain {
            let a = Attenuation { expires_at: e.map(at), ..a.clone() };
            token = auth::attenuate(&token, &a).unwrap();
            let after = allowed(&az, &token);
            prop_assert!(after.is_subset(&before), "widened: {after:?} ⊄ {before:?}");
            expected.retain(|(op, cache)| permits(&a, op, cache));
            expired |= e.is_some_and(|e| e < 0);
            prop_assert_eq!(&after, &want(&expected, expired));
            before = after;
        }
    }
}
