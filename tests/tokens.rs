//! Capability tokens over HTTP: each kind of bad token gets its own
//! message, Bearer and Basic (any user name) both work, attenuation and
//! revocation take effect, and no token can learn which caches exist.

mod common;

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use common::{Body, HttpResponse, InProcess, http_request};
use ferry::auth::{self, Attenuation, Operation};

fn get(url: &str, auth: Option<&str>) -> HttpResponse {
    let header = auth.map(|t| format!("Authorization: Bearer {t}"));
    let headers: Vec<&str> = header.iter().map(|s| s.as_str()).collect();
    http_request("GET", url, &headers, Body::None)
}

fn post(url: &str, token: &str, json: serde_json::Value) -> HttpResponse {
    let auth = format!("Authorization: Bearer {token}");
    http_request(
        "POST",
        url,
        &[&auth],
        Body::Bytes(json.to_string().into_bytes()),
    )
}

fn setup() -> InProcess {
    let s = InProcess::start();
    for (name, public) in [("a", false), ("b", false), ("pub", true)] {
        let r = post(
            &format!("{}/_api/v1/caches", s.url),
            &s.admin_token,
            serde_json::json!({"name": name, "public": public}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    s
}

fn info_url(s: &InProcess, cache: &str) -> String {
    format!("{}/{cache}/nix-cache-info", s.url)
}

fn error_code(r: &HttpResponse) -> String {
    r.json()["error"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn each_bad_token_is_refused_with_its_own_message() {
    let s = setup();
    let good = s.mint(&[(Operation::Pull, "a")], Duration::from_secs(3600));
    let expired = common::mint_in(
        s.data_dir.path(),
        &[(Operation::Pull, "a")],
        SystemTime::now() - Duration::from_secs(5),
    );
    let other_root = {
        let root = auth::RootKey::generate();
        let spec = auth::TokenSpec {
            subject: "x".into(),
            rights: vec![(Operation::Pull, "a".into())],
            expires_at: SystemTime::now() + Duration::from_secs(60),
        };
        auth::mint(&root, &spec).unwrap()
    };
    let truncated = good[..good.len() / 2].to_owned();
    let oversize = "A".repeat(5000);
    let cases = [
        (expired.as_str(), "token_expired", "expired"),
        (other_root.as_str(), "token_bad_signature", "signature"),
        (truncated.as_str(), "token_invalid", "malformed"),
        ("not a token!", "token_invalid", "malformed"),
        (oversize.as_str(), "token_invalid", "4096"),
    ];
    let mut messages = std::collections::BTreeSet::new();
    for (token, code, words) in cases {
        let r = get(&info_url(&s, "a"), Some(token));
        assert_eq!(r.status, 401, "{code}: {}", r.text());
        assert_eq!(error_code(&r), code, "{}", r.text());
        let msg = r.json()["message"].as_str().unwrap().to_owned();
        assert!(msg.contains(words), "{code}: {msg}");
        messages.insert(msg);
    }
    assert!(messages.len() >= 4, "messages should differ: {messages:?}");
    assert_eq!(get(&info_url(&s, "a"), Some(&good)).status, 200);
}

#[test]
fn bearer_and_basic_with_any_user_name_work() {
    let s = setup();
    let token = s.mint(&[(Operation::Pull, "a")], Duration::from_secs(3600));
    assert_eq!(get(&info_url(&s, "a"), Some(&token)).status, 200);
    for user in ["token", "nix", ""] {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"));
        let header = format!("Authorization: Basic {basic}");
        let r = http_request("GET", &info_url(&s, "a"), &[&header], Body::None);
        assert_eq!(r.status, 200, "user {user:?}: {}", r.text());
    }
    let r = get(&info_url(&s, "a"), None);
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());
}

#[test]
fn revoking_a_parent_revokes_its_attenuations_but_not_its_siblings_parent() {
    let s = setup();
    let parent = s.mint(&[(Operation::Pull, "*")], Duration::from_secs(3600));
    let narrow = Attenuation {
        caches: vec!["a".into()],
        ..Default::default()
    };
    let child = auth::attenuate(&parent, &narrow).unwrap();
    let grandchild = auth::attenuate(
        &child,
        &Attenuation {
            operations: Some(vec![Operation::Pull]),
            ..Default::default()
        },
    )
    .unwrap();
    for t in [&parent, &child, &grandchild] {
        assert_eq!(get(&info_url(&s, "a"), Some(t)).status, 200);
    }
    let r = post(
        &format!("{}/_api/v1/tokens/revoke", s.url),
        &s.admin_token,
        serde_json::json!({ "token": child }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        get(&info_url(&s, "a"), Some(&parent)).status,
        200,
        "parent stays"
    );
    for t in [&child, &grandchild] {
        let r = get(&info_url(&s, "a"), Some(t));
        assert_eq!(
            (r.status, error_code(&r)),
            (401, "token_revoked".to_owned())
        );
    }
}

#[test]
fn revoking_needs_admin_on_every_cache() {
    let s = setup();
    let victim = s.mint(&[(Operation::Pull, "a")], Duration::from_secs(3600));
    let admin_a = s.mint(&[(Operation::Admin, "a")], Duration::from_secs(3600));
    let url = format!("{}/_api/v1/tokens/revoke", s.url);
    let r = post(&url, &admin_a, serde_json::json!({ "token": victim }));
    assert!(
        r.status == 401 || r.status == 403,
        "{} {}",
        r.status,
        r.text()
    );
    // An admin token narrowed to one cache loses the server-wide right.
    let narrowed = auth::attenuate(
        &s.admin_token,
        &Attenuation {
            caches: vec!["a".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let r = post(&url, &narrowed, serde_json::json!({ "token": victim }));
    assert!(
        r.status == 401 || r.status == 403,
        "{} {}",
        r.status,
        r.text()
    );
    assert_eq!(get(&info_url(&s, "a"), Some(&victim)).status, 200);
    let r = post(
        &url,
        &s.admin_token,
        serde_json::json!({"revocation_id": "zz"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn a_token_for_one_cache_cannot_tell_whether_another_exists() {
    let s = setup();
    let token_a = s.mint(
        &[(Operation::Pull, "a"), (Operation::Push, "a")],
        Duration::from_secs(3600),
    );
    let attenuated = auth::attenuate(
        &s.admin_token,
        &Attenuation {
            caches: vec!["a".into()],
            ..Default::default()
        },
    )
    .unwrap();
    for token in [&token_a, &attenuated] {
        for path in ["nix-cache-info", "00000000000000000000000000000000.narinfo"] {
            let existing = get(&format!("{}/b/{path}", s.url), Some(token));
            let missing = get(&format!("{}/nonexistent/{path}", s.url), Some(token));
            assert_eq!(existing.status, 401, "{}", existing.text());
            assert_eq!(
                (existing.status, existing.body.clone()),
                (missing.status, missing.body.clone())
            );
        }
        let existing = get(&format!("{}/_api/v1/caches/b", s.url), Some(token));
        let missing = get(
            &format!("{}/_api/v1/caches/nonexistent", s.url),
            Some(token),
        );
        assert_eq!(
            (existing.status, existing.body.clone()),
            (missing.status, missing.body)
        );
        assert_eq!(existing.status, 401);
    }
    // 403 only where the token has some right on the cache.
    let pull_a = s.mint(&[(Operation::Pull, "a")], Duration::from_secs(3600));
    let r = post(
        &format!("{}/_api/v1/caches/a/uploads", s.url),
        &pull_a,
        serde_json::json!({"store_path": "/nix/store/00000000000000000000000000000000-x", "nar_hash": format!("sha256:{}", "0".repeat(52)), "nar_size": 1}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
}

#[test]
fn a_public_cache_serves_despite_a_bad_token_and_says_why() {
    let s = setup();
    let expired = common::mint_in(
        s.data_dir.path(),
        &[(Operation::Pull, "pub")],
        SystemTime::now() - Duration::from_secs(5),
    );
    let r = get(&info_url(&s, "pub"), Some(&expired));
    assert_eq!(r.status, 200, "{}", r.text());
    let why = r
        .header("x-ferry-token-ignored")
        .expect("header naming why");
    assert!(why.contains("expired"), "{why}");
    let r = get(&info_url(&s, "pub"), None);
    assert_eq!(r.status, 200);
    assert!(r.header("x-ferry-token-ignored").is_none());
    // The same bad token on a private cache is refused.
    assert_eq!(get(&info_url(&s, "a"), Some(&expired)).status, 401);
}
