//! Tests of [`super::Authorizer`]: allow/deny, errors, attenuation, caching.

use std::time::{Duration, Instant, SystemTime};

use biscuit_auth::{Biscuit, BlockBuilder};

use super::super::{AuthError, Operation, RootKey, TokenSpec, mint};
use super::Authorizer;
use Operation::*;

fn token_for(root: &RootKey, rights: &[(Operation, &str)], valid_for: i64) -> String {
    let now = SystemTime::now();
    let expires_at = if valid_for >= 0 {
        now + Duration::from_secs(valid_for as u64)
    } else {
        now - Duration::from_secs(valid_for.unsigned_abs())
    };
    let spec = TokenSpec {
        subject: "tester".into(),
        rights: rights.iter().map(|(o, p)| (*o, p.to_string())).collect(),
        expires_at,
    };
    mint(root, &spec).unwrap()
}

fn setup(rights: &[(Operation, &str)]) -> (RootKey, Authorizer, String) {
    let root = RootKey::generate();
    let az = Authorizer::new(root.public());
    let token = token_for(&root, rights, 3600);
    (root, az, token)
}

/// Appends a block of datalog to a token, as `ferry token attenuate` would.
fn attenuate(root: &RootKey, token: &str, code: &str) -> String {
    let block = BlockBuilder::new().code(code).unwrap();
    Biscuit::from_base64(token, root.public())
        .unwrap()
        .append(block)
        .unwrap()
        .to_base64()
        .unwrap()
}

#[test]
fn allows_and_denies_per_operation_and_pattern() {
    let (_, az, token) = setup(&[(Pull, "*"), (Push, "team-*"), (Admin, "ops")]);
    assert_eq!(az.check(&token, Pull, "anything"), Ok(()));
    assert_eq!(az.check(&token, Push, "team-a"), Ok(()));
    assert_eq!(az.check(&token, Push, "team-"), Ok(()));
    assert_eq!(
        az.check(&token, Push, "teamx"),
        Err(AuthError::Forbidden { operation: Push })
    );
    assert_eq!(az.check(&token, Admin, "ops"), Ok(()));
    assert_eq!(
        az.check(&token, Admin, "ops2"),
        Err(AuthError::Forbidden { operation: Admin })
    );
    assert_eq!(
        az.check(&token, Delete, "team-a"),
        Err(AuthError::Forbidden { operation: Delete })
    );
    // admin does not imply the others
    let (_, az, token) = setup(&[(Admin, "*")]);
    assert_eq!(
        az.check(&token, Push, "x"),
        Err(AuthError::Forbidden { operation: Push })
    );
}

#[test]
fn every_operation_is_distinct() {
    for granted in Operation::ALL {
        let (_, az, token) = setup(&[(granted, "c")]);
        for asked in Operation::ALL {
            let res = az.check(&token, asked, "c");
            if asked == granted {
                assert_eq!(res, Ok(()), "{granted} {asked}");
            } else {
                assert_eq!(res, Err(AuthError::Forbidden { operation: asked }));
            }
        }
    }
}

#[test]
fn no_access_vs_forbidden() {
    let (_, az, token) = setup(&[(Pull, "team-*"), (Push, "team-a")]);
    assert_eq!(az.check(&token, Pull, "other"), Err(AuthError::NoAccess));
    assert_eq!(az.check(&token, Push, "other"), Err(AuthError::NoAccess));
    assert_eq!(
        az.check(&token, Push, "team-b"),
        Err(AuthError::Forbidden { operation: Push })
    );
    let (_, az, empty) = setup(&[]);
    assert_eq!(az.check(&empty, Pull, "a"), Err(AuthError::NoAccess));
}

#[test]
fn expired_token() {
    let root = RootKey::generate();
    let az = Authorizer::new(root.public());
    let token = token_for(&root, &[(Pull, "*")], -3600);
    assert_eq!(az.check(&token, Pull, "a"), Err(AuthError::Expired));
    // Also with the Rust-side expiry check out of the way: the authority's
    // datalog check must fail by itself and be reported as Expired.
    let verified = az.verify(&token, [0; 32]).unwrap();
    let res = az.decide(&verified, Pull, "a", SystemTime::now());
    assert_eq!(res, Err(AuthError::Expired));
}

#[test]
fn other_root_key_is_bad_signature() {
    let (_, az, _) = setup(&[]);
    let other = RootKey::generate();
    let token = token_for(&other, &[(Pull, "*")], 3600);
    assert_eq!(az.check(&token, Pull, "a"), Err(AuthError::BadSignature));
    assert_eq!(az.rights_of(&token), Err(AuthError::BadSignature));
}

#[test]
fn garbage_and_oversized_tokens() {
    let (_, az, token) = setup(&[(Pull, "*")]);
    for garbage in [
        "",
        "hello",
        "!!!",
        "eyJhbGciOi.JIUzI1NiJ9",
        &token[..token.len() / 2],
    ] {
        match az.check(garbage, Pull, "a") {
            Err(AuthError::Malformed(msg)) => assert!(!msg.is_empty()),
            other => panic!("{garbage:?}: {other:?}"),
        }
    }
    let long = "A".repeat(5000);
    assert_eq!(az.check(&long, Pull, "a"), Err(AuthError::TooLong));
    assert_eq!(az.inspect(&long), Err(AuthError::TooLong));
}

#[test]
fn invalid_cache_name_is_refused() {
    let (_, az, token) = setup(&[(Pull, "*")]);
    for bad in ["", "A", "a\"b", "a*"] {
        assert!(matches!(
            az.check(&token, Pull, bad),
            Err(AuthError::InvalidName(_))
        ));
    }
}

#[test]
fn attenuated_token_is_narrowed() {
    let (root, az, token) = setup(&[(Pull, "*"), (Push, "*")]);
    let narrowed = attenuate(&root, &token, r#"check if operation("pull");"#);
    assert_eq!(az.check(&narrowed, Pull, "a"), Ok(()));
    assert_eq!(
        az.check(&narrowed, Push, "a"),
        Err(AuthError::Forbidden { operation: Push })
    );
    // The original token is unaffected.
    assert_eq!(az.check(&token, Push, "a"), Ok(()));

    let one_cache = attenuate(&root, &narrowed, r#"check if cache("a");"#);
    assert_eq!(az.check(&one_cache, Pull, "a"), Ok(()));
    assert!(az.check(&one_cache, Pull, "b").is_err());
    assert_eq!(az.inspect(&one_cache).unwrap().blocks, 3);
}

#[test]
fn facts_in_appended_blocks_grant_nothing() {
    let (root, az, token) = setup(&[(Pull, "team-a")]);
    let forged = attenuate(
        &root,
        &token,
        r#"right("push", "*"); right("admin", "*"); cache_matches("*");"#,
    );
    assert_eq!(az.check(&forged, Pull, "team-a"), Ok(()));
    assert_eq!(
        az.check(&forged, Push, "team-a"),
        Err(AuthError::Forbidden { operation: Push })
    );
    assert_eq!(az.check(&forged, Admin, "x"), Err(AuthError::NoAccess));
    assert_eq!(
        az.rights_of(&forged).unwrap(),
        vec![(Pull, "team-a".into())]
    );
}

#[test]
fn attenuated_expiry_is_reported_as_expired() {
    let (root, az, token) = setup(&[(Pull, "*")]);
    let short = attenuate(
        &root,
        &token,
        "check if time($t), $t <= 2001-01-01T00:00:00Z;",
    );
    assert_eq!(az.check(&short, Pull, "a"), Err(AuthError::Expired));
}

#[test]
fn decisions_are_cached_and_cache_can_be_cleared() {
    let (_, az, token) = setup(&[(Pull, "a")]);
    assert_eq!(az.check(&token, Pull, "a"), Ok(()));
    assert_eq!(az.check(&token, Pull, "a"), Ok(()));
    assert_eq!(az.check(&token, Push, "b"), Err(AuthError::NoAccess));
    assert_eq!(az.check(&token, Push, "b"), Err(AuthError::NoAccess));
    assert_eq!(super::lock(&az.tokens).len(), 1);
    assert_eq!(super::lock(&az.decisions).len(), 2);
    az.clear_cache();
    assert_eq!(super::lock(&az.decisions).len(), 0);
    assert_eq!(az.check(&token, Pull, "a"), Ok(()));
}

#[test]
fn decision_never_outlives_the_token() {
    let root = RootKey::generate();
    let az = Authorizer::new(root.public());
    let token = token_for(&root, &[(Pull, "a")], 2);
    assert_eq!(az.check(&token, Pull, "a"), Ok(()));
    let until = super::lock(&az.decisions).values().next().unwrap().until;
    assert!(until <= Instant::now() + Duration::from_secs(2));
}

#[test]
fn caches_stay_bounded() {
    let (_, az, token) = setup(&[(Pull, "*")]);
    for i in 0..(super::MAX_ENTRIES + 50) {
        assert_eq!(az.check(&token, Pull, &format!("c{i}")), Ok(()));
    }
    assert!(super::lock(&az.decisions).len() <= super::MAX_ENTRIES);
}

/// Prints the cost of checks; run with `--nocapture` to see it.
#[test]
fn measure_check_cost() {
    let (_, az, token) = setup(&[(Pull, "team-*"), (Push, "team-a")]);
    let rounds = 200;

    let start = Instant::now();
    for _ in 0..rounds {
        az.clear_cache();
        az.check(&token, Push, "team-a").unwrap();
    }
    let uncached = start.elapsed() / rounds;

    let names: Vec<String> = (0..rounds).map(|i| format!("team-{i}")).collect();
    az.clear_cache();
    az.check(&token, Pull, "team-x").unwrap();
    let start = Instant::now();
    for name in &names {
        az.check(&token, Pull, name).unwrap();
    }
    let parsed_only = start.elapsed() / rounds;

    let start = Instant::now();
    for _ in 0..rounds {
        az.check(&token, Push, "team-a").unwrap();
    }
    let cached = start.elapsed() / rounds;

    println!(
        "check cost: uncached {uncached:?}, token cached but new decision {parsed_only:?}, \
         decision cached {cached:?} (mean of {rounds})"
    );
}

#[test]
fn a_cached_allow_never_outlives_an_attenuations_earlier_expiry() {
    let (_, az, token) = setup(&[(Pull, "*")]);
    // Token times are whole seconds: this expiry is past within 2 s.
    let soon = SystemTime::now() + Duration::from_secs(1);
    let narrowed = crate::auth::attenuate(
        &token,
        &crate::auth::Attenuation {
            expires_at: Some(soon),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(az.check(&narrowed, Pull, "c"), Ok(()));
    std::thread::sleep(Duration::from_millis(2600));
    // Well inside the 30 s a decision may be cached: the earlier expiry wins.
    assert_eq!(az.check(&narrowed, Pull, "c"), Err(AuthError::Expired));
    assert_eq!(az.check(&token, Pull, "c"), Ok(()));
}
