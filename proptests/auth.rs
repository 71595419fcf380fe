//! Property: attenuation only ever narrows. For random tokens and random
//! attenuation chains, the (operation, cache) pairs allowed after each
//! step are a subset of those allowed before, and equal to the
//! intersection of the original rights with every step's restriction.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use ferry::auth::{self, Attenuation, Authorizer, Operation, RootKey, TokenSpec, glob_match};
use proptest::prelude::*;

const CACHES: [&str; 5] = ["a", "b", "team-x", "team-y", "other"];
const PATTERNS: [&str; 6] = ["a", "b", "team-*", "*", "team-x", "o*r"];

fn op() -> impl Strategy<Value = Operation> {
    (0..Operation::ALL.len()).prop_map(|i| Operation::ALL[i])
}

fn pattern() -> impl Strategy<Value = String> {
    (0..PATTERNS.len()).prop_map(|i| PATTERNS[i].to_owned())
}

fn step() -> impl Strategy<Value = Attenuation> {
    (
        proptest::collection::vec(pattern(), 0..3),
        proptest::option::of(proptest::collection::vec(op(), 1..4)),
    )
        .prop_filter("restricts something", |(c, o)| !c.is_empty() || o.is_some())
        .prop_map(|(caches, operations)| Attenuation {
            caches,
            operations,
            expires_at: None,
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
    let cache_ok = a.caches.is_empty() || a.caches.iter().any(|p| glob_match(p, cache));
    op_ok && cache_ok
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn attenuation_never_widens(
        rights in proptest::collection::vec((op(), pattern()), 1..5),
        chain in proptest::collection::vec(step(), 1..4),
    ) {
        let root = RootKey::generate();
        let az = Authorizer::new(root.public());
        let spec = TokenSpec {
            subject: "prop".into(),
            rights,
            expires_at: SystemTime::now() + Duration::from_secs(3600),
        };
        let mut token = auth::mint(&root, &spec).unwrap();
        let mut before = allowed(&az, &token);
        let mut expected = before.clone();
        for a in &chain {
            token = auth::attenuate(&token, a).unwrap();
            let after = allowed(&az, &token);
            prop_assert!(after.is_subset(&before), "widened: {after:?} ⊄ {before:?}");
            expected.retain(|(op, cache)| permits(a, op, cache));
            prop_assert_eq!(&after, &expected);
            before = after;
        }
    }
}
