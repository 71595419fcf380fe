//! `/healthz`, unknown routes, and cache administration
//! (`POST /_api/v1/caches`, `GET /_api/v1/caches/{cache}`).

use std::time::Duration;

use ferry::auth::Operation;
use ferry::nar::PublicKey;
use serde_json::json;

use super::common::InProcess;
use super::*;

#[test]
fn healthz_answers_200_ok() {
    let s = InProcess::start();
    let r = get(&s, "/healthz", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "ok");
}

#[test]
fn unknown_route_is_json_404_not_found() {
    let s = InProcess::start();
    for path in ["/_api/v1/nothing-here", "/a/b/c/d", "/_api/v2/caches"] {
        let r = get(&s, path, Some(&s.admin_token));
        expect_err(&s, &r, 404, "not_found");
    }
    assert_healthy(&s);
}

#[test]
fn create_cache_answers_201_with_the_documented_fields() {
    let s = InProcess::start();
    let r = post_json(
        &s,
        "/_api/v1/caches",
        Some(&s.admin_token),
        &json!({"name": "main"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let v = r.json();
    assert_eq!(v["name"], "main");
    assert_eq!(v["public"], false);
    assert_eq!(v["priority"], 41);
    assert_eq!(v["store_dir"], "/nix/store");
    assert!(v["retention"].is_null(), "{v}");
    assert!(v["max_part_size"].as_u64().unwrap() > 0, "{v}");
    assert!(v["upstream_keys"].is_array(), "{v}");
    let key = v["public_key"].as_str().unwrap();
    let (name, b64) = key.split_once(':').unwrap();
    assert!(!name.is_empty() && b64.len() == 44, "{key}");
    let parsed = PublicKey::parse(key).unwrap();
    assert_eq!(parsed.to_nix_string(), key);
}

#[test]
fn create_cache_keeps_given_settings() {
    let s = InProcess::start();
    let body = json!({"name": "team-a.x_1", "public": true, "priority": 30, "store_dir": "/gnu/store", "retention": "1d"});
    let r = post_json(&s, "/_api/v1/caches", Some(&s.admin_token), &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["public"].clone(), v["priority"].clone()),
        (json!(true), json!(30))
    );
    assert_eq!(v["store_dir"], "/gnu/store");
    assert_eq!(v["retention"], "1d");
    let info = get(&s, "/_api/v1/caches/team-a.x_1", Some(&s.admin_token));
    assert_eq!(info.status, 200, "{}", info.text());
    assert_eq!(info.json(), v);
}

#[test]
fn create_existing_cache_is_409_cache_exists() {
    let s = InProcess::start();
    create_cache(&s, "dup", false);
    let r = post_json(
        &s,
        "/_api/v1/caches",
        Some(&s.admin_token),
        &json!({"name": "dup"}),
    );
    expect_err(&s, &r, 409, "cache_exists");
}

#[test]
fn invalid_cache_names_are_400_invalid_cache_name() {
    let s = InProcess::start();
    for name in [
        "Bad".to_owned(),
        "_api".to_owned(),
        "a".repeat(65),
        String::new(),
        "-x".to_owned(),
        "a/b".to_owned(),
    ] {
        let r = post_json(
            &s,
            "/_api/v1/caches",
            Some(&s.admin_token),
            &json!({"name": name}),
        );
        let body = expect_err(&s, &r, 400, "invalid_cache_name");
        assert!(
            body["message"].as_str().unwrap().contains("a-z"),
            "the rule is not stated: {body}"
        );
    }
    // 64 characters is still fine.
    create_cache(&s, &"a".repeat(64), false);
    assert_healthy(&s);
}

#[test]
fn bad_retention_is_400() {
    let s = InProcess::start();
    let r = post_json(
        &s,
        "/_api/v1/caches",
        Some(&s.admin_token),
        &json!({"name": "r", "retention": "sometimes"}),
    );
    expect_err(&s, &r, 400, "bad_request");
    assert_eq!(
        get(&s, "/_api/v1/caches/r", Some(&s.admin_token)).status,
        404
    );
}

#[test]
fn bad_store_dir_is_400() {
    let s = InProcess::start();
    for dir in ["nix/store", "/nix/store/", "/nix/../store"] {
        let r = post_json(
            &s,
            "/_api/v1/caches",
            Some(&s.admin_token),
            &json!({"name": "d", "store_dir": dir}),
        );
        assert_eq!(r.status, 400, "{dir}: {}", r.text());
        assert_no_leak(&s, &r);
    }
}

#[test]
fn unknown_json_field_in_create_cache_is_400() {
    let s = InProcess::start();
    let r = post_json(
        &s,
        "/_api/v1/caches",
        Some(&s.admin_token),
        &json!({"name": "u", "colour": "blue"}),
    );
    let body = expect_err(&s, &r, 400, "bad_request");
    assert!(
        body["message"].as_str().unwrap().contains("colour"),
        "{body}"
    );
}

#[test]
fn malformed_json_is_400() {
    let s = InProcess::start();
    let r = call(
        &s,
        "POST",
        "/_api/v1/caches",
        Some(&s.admin_token),
        &["Content-Type: application/json"],
        common::Body::Bytes(b"{\"name\": ".to_vec()),
    );
    expect_err(&s, &r, 400, "bad_request");
    assert_healthy(&s);
}

#[test]
fn cache_info_answers_any_right_on_the_cache() {
    let s = InProcess::start();
    let created = create_cache(&s, "info", false);
    for op in [
        Operation::Pull,
        Operation::Push,
        Operation::Delete,
        Operation::ConfigureCache,
    ] {
        let t = s.mint(&[(op, "info")], Duration::from_secs(600));
        let r = get(&s, "/_api/v1/caches/info", Some(&t));
        assert_eq!(r.status, 200, "{op}: {}", r.text());
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_eq!(r.json()["public_key"], created["public_key"]);
    }
}

#[test]
fn cache_info_without_token_is_401() {
    let s = InProcess::start();
    create_cache(&s, "info", false);
    let r = get(&s, "/_api/v1/caches/info", None);
    expect_err(&s, &r, 401, "unauthorized");
    assert!(r.header("www-authenticate").is_some());
}

#[test]
fn cache_info_of_missing_cache_is_404_for_admin() {
    let s = InProcess::start();
    let r = get(&s, "/_api/v1/caches/nope", Some(&s.admin_token));
    expect_err(&s, &r, 404, "cache_not_found");
}

#[test]
fn create_cache_without_token_is_401() {
    let s = InProcess::start();
    let r = post_json(&s, "/_api/v1/caches", None, &json!({"name": "x"}));
    expect_err(&s, &r, 401, "unauthorized");
}

#[test]
fn create_cache_with_pull_only_token_is_403() {
    let s = InProcess::start();
    let t = s.mint(&[(Operation::Pull, "x")], Duration::from_secs(600));
    let r = post_json(&s, "/_api/v1/caches", Some(&t), &json!({"name": "x"}));
    expect_err(&s, &r, 403, "forbidden");
    assert_eq!(
        get(&s, "/_api/v1/caches/x", Some(&s.admin_token)).status,
        404
    );
}

#[test]
fn configure_changes_settings_and_needs_its_right() {
    let s = InProcess::start();
    create_cache(&s, "conf", false);
    let pull = s.mint(&[(Operation::Pull, "conf")], Duration::from_secs(600));
    let r = send_json(
        &s,
        "PATCH",
        "/_api/v1/caches/conf",
        Some(&pull),
        &json!({"public": true}),
    );
    expect_err(&s, &r, 403, "forbidden");
    let admin = s.admin_token.clone();
    let body =
        json!({"public": true, "priority": 10, "retention": "30d", "upstream_keys": ["x-1"]});
    let r = send_json(&s, "PATCH", "/_api/v1/caches/conf", Some(&admin), &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["public"].clone(), v["priority"].clone()),
        (json!(true), json!(10))
    );
    assert_eq!(v["retention"], "30d");
    assert_eq!(v["upstream_keys"], json!(["x-1"]));
    // The change is seen by substituters at once: public now, priority 10.
    let r = get(&s, "/conf/nix-cache-info", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("Priority: 10"), "{}", r.text());
    // null retention keeps forever; an absent key leaves others alone.
    let r = send_json(
        &s,
        "PATCH",
        "/_api/v1/caches/conf",
        Some(&admin),
        &json!({"retention": null}),
    );
    assert_eq!(r.json()["retention"], json!(null));
    assert_eq!(r.json()["priority"], 10);
    let r = send_json(
        &s,
        "PATCH",
        "/_api/v1/caches/conf",
        Some(&admin),
        &json!({"retention": "soon"}),
    );
    expect_err(&s, &r, 400, "bad_request");
    assert_healthy(&s);
}

#[test]
fn destroy_removes_the_cache_and_delete_path_unpublishes() {
    let s = InProcess::start();
    create_cache(&s, "gone", false);
    let nar = Nar::new("destroy-me", 1000);
    push_ok(&s, "gone", &nar);
    let admin = s.admin_token.clone();
    let hash = hash_part(&nar.path).to_owned();
    let push_only = s.mint(&[(Operation::Push, "gone")], Duration::from_secs(600));
    let r = call(
        &s,
        "DELETE",
        &format!("/_api/v1/caches/gone/paths/{hash}"),
        Some(&push_only),
        &[],
        Body::None,
    );
    expect_err(&s, &r, 403, "forbidden");
    let r = call(
        &s,
        "DELETE",
        &format!("/_api/v1/caches/gone/paths/{hash}"),
        Some(&admin),
        &[],
        Body::None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(narinfo(&s, "gone", &nar.path, Some(&admin)).status, 404);
    let r = call(
        &s,
        "DELETE",
        &format!("/_api/v1/caches/gone/paths/{hash}"),
        Some(&admin),
        &[],
        Body::None,
    );
    expect_err(&s, &r, 404, "not_found");
    // Destroy needs destroy-cache; afterwards the name is free again.
    let r = call(
        &s,
        "DELETE",
        "/_api/v1/caches/gone",
        Some(&push_only),
        &[],
        Body::None,
    );
    expect_err(&s, &r, 403, "forbidden");
    let r = call(
        &s,
        "DELETE",
        "/_api/v1/caches/gone",
        Some(&admin),
        &[],
        Body::None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(&s, "/_api/v1/caches/gone", Some(&admin));
    expect_err(&s, &r, 404, "cache_not_found");
    create_cache(&s, "gone", false);
    assert_eq!(narinfo(&s, "gone", &nar.path, Some(&admin)).status, 404);
}

#[test]
fn forwarded_hosts_count_only_from_trusted_proxies() {
    let get_with = |s: &InProcess, headers: &[&str]| {
        call(
            s,
            "GET",
            "/_api/v1/caches/c",
            Some(&s.admin_token),
            headers,
            Body::None,
        )
    };
    let s = InProcess::start_with(|c| c.allowed_hosts = vec!["cache.example.org".into()]);
    let right = get_with(&s, &["Host: cache.example.org"]);
    assert_ne!(right.status, 421, "{}", right.text());
    let r = get_with(&s, &["Host: cache.example.org.evil"]);
    expect_err(&s, &r, 421, "host_not_allowed");
    // Anyone may send X-Forwarded-Host or Forwarded: from an untrusted
    // peer they change nothing.
    for forged in [
        "X-Forwarded-Host: cache.example.org",
        "Forwarded: host=cache.example.org",
    ] {
        let r = get_with(&s, &["Host: evil.example", forged]);
        expect_err(&s, &r, 421, "host_not_allowed");
    }
    // From a trusted proxy (here: loopback) they name the host.
    let s = InProcess::start_with(|c| {
        c.allowed_hosts = vec!["cache.example.org".into()];
        c.trusted_proxies = vec!["127.0.0.1".into()];
    });
    let r = get_with(
        &s,
        &["Host: 127.0.0.1", "X-Forwarded-Host: cache.example.org"],
    );
    assert_ne!(r.status, 421, "{}", r.text());
    let r = get_with(
        &s,
        &["Host: cache.example.org", "X-Forwarded-Host: evil.example"],
    );
    expect_err(&s, &r, 421, "host_not_allowed");
}
