//! Tokens on the wire: Bearer and Basic, wrong cache, wrong right,
//! expired and garbage tokens, anonymous reads of public caches.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use ferry::auth::Operation;

use super::common::{Body, InProcess, mint_in};
use super::*;

const TEN_MIN: Duration = Duration::from_secs(600);

#[test]
fn private_cache_without_token_is_401_with_www_authenticate() {
    let s = InProcess::start();
    create_cache(&s, "priv", false);
    for path in [
        "/priv/nix-cache-info",
        &format!("/priv/{}.narinfo", hash_part(&store_path("x"))),
    ] {
        let r = get(&s, path, None);
        expect_err(&s, &r, 401, "unauthorized");
        let www = r
            .header("www-authenticate")
            .unwrap_or_else(|| panic!("no WWW-Authenticate on {path}"));
        assert!(www.contains("Basic") && www.contains("Bearer"), "{www}");
    }
}

#[test]
fn basic_auth_with_token_as_password_works() {
    let s = InProcess::start();
    create_cache(&s, "priv", false);
    let t = s.mint(&[(Operation::Pull, "priv")], TEN_MIN);
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("anyone:{t}"));
    let r = call(
        &s,
        "GET",
        "/priv/nix-cache-info",
        None,
        &[&format!("Authorization: Basic {basic}")],
        Body::None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // curl's own netrc-style user:password too.
    let r = common::http_request(
        "GET",
        &format!(
            "{}/priv/nix-cache-info",
            s.url.replace("http://", &format!("http://token:{t}@"))
        ),
        &[],
        Body::None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn bearer_token_works() {
    let s = InProcess::start();
    create_cache(&s, "priv", false);
    let t = s.mint(&[(Operation::Pull, "priv")], TEN_MIN);
    let r = get(&s, "/priv/nix-cache-info", Some(&t));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn token_for_other_cache_gets_the_same_401_as_a_missing_cache() {
    let s = InProcess::start();
    create_cache(&s, "mine", false);
    create_cache(&s, "theirs", false);
    let t = s.mint(
        &[(Operation::Pull, "mine"), (Operation::Push, "mine")],
        TEN_MIN,
    );
    for (op_path, method) in [("nix-cache-info", "GET"), ("missing", "POST")] {
        let (a, b) = if method == "GET" {
            (
                get(&s, &format!("/theirs/{op_path}"), Some(&t)),
                get(&s, &format!("/ghost/{op_path}"), Some(&t)),
            )
        } else {
            let body = json!({"store_paths": []});
            (
                post_json(&s, "/_api/v1/caches/theirs/missing", Some(&t), &body),
                post_json(&s, "/_api/v1/caches/ghost/missing", Some(&t), &body),
            )
        };
        expect_err(&s, &a, 401, "unauthorized");
        assert_eq!(a.status, b.status);
        assert_eq!(
            a.body, b.body,
            "an existing cache answers differently from a missing one"
        );
    }
    let a = get(&s, "/_api/v1/caches/theirs", Some(&t));
    let b = get(&s, "/_api/v1/caches/ghost", Some(&t));
    expect_err(&s, &a, 401, "unauthorized");
    assert_eq!((a.status, a.body), (b.status, b.body));
}

#[test]
fn pull_only_token_pushing_is_403() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let t = s.mint(&[(Operation::Pull, "c")], TEN_MIN);
    let nar = Nar::new("hello", 100);
    let r = start_upload_with(&s, "c", &t, &nar.create_body("none", &[]));
    let body = expect_err(&s, &r, 403, "forbidden");
    assert!(body["message"].as_str().unwrap().contains("push"), "{body}");
    // And on an upload someone else started.
    let id = start_upload(&s, "c", &nar, "none");
    let r = call(
        &s,
        "PUT",
        &format!("/_api/v1/uploads/{id}/parts/1"),
        Some(&t),
        &[],
        Body::Bytes(nar.bytes.clone()),
    );
    expect_err(&s, &r, 403, "forbidden");
    let r = call(
        &s,
        "PUT",
        &format!("/c/{}.narinfo", hash_part(&nar.path)),
        Some(&t),
        &[],
        Body::Bytes(b"x".to_vec()),
    );
    expect_err(&s, &r, 403, "forbidden");
}

#[test]
fn expired_token_is_401_token_expired() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let t = mint_in(
        s.data_dir.path(),
        &[(Operation::Pull, "c")],
        SystemTime::now() - Duration::from_secs(60),
    );
    let r = get(&s, "/c/nix-cache-info", Some(&t));
    expect_err(&s, &r, 401, "token_expired");
    assert!(r.header("www-authenticate").is_some());
}

#[test]
fn garbage_token_is_401() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    for t in ["garbage", "Zm9vYmFy", &"x".repeat(5000)] {
        let r = get(&s, "/c/nix-cache-info", Some(t));
        assert_eq!(r.status, 401, "{}", r.text());
        assert!(
            r.json()["error"].as_str().unwrap().starts_with("token_"),
            "{}",
            r.text()
        );
        assert_no_leak(&s, &r);
    }
    // A token from another server's root key.
    let other = InProcess::start();
    let r = get(&s, "/c/nix-cache-info", Some(&other.admin_token));
    expect_err(&s, &r, 401, "token_bad_signature");
    assert_healthy(&s);
}

#[test]
fn public_cache_is_readable_anonymously() {
    let s = InProcess::start();
    create_cache(&s, "pub", true);
    let nar = Nar::new("public-thing", 5000);
    push_ok(&s, "pub", &nar);
    let info = get(&s, "/pub/nix-cache-info", None);
    assert_eq!(info.status, 200, "{}", info.text());
    let r = narinfo(&s, "pub", &nar.path, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let parsed = ferry::nar::NarInfo::parse(&r.text(), "/nix/store").unwrap();
    let file = get(&s, &format!("/pub/{}", parsed.url), None);
    assert_eq!(file.status, 200);
    assert_eq!(zstd::decode_all(&file.body[..]).unwrap(), nar.bytes);
    let plain = get(
        &s,
        &format!("/pub/{}", parsed.url.trim_end_matches(".zst")),
        None,
    );
    assert_eq!(plain.body, nar.bytes);
    // Reading is all an anonymous client may do.
    let r = start_upload_with(
        &s,
        "pub",
        "",
        &Nar::new("other", 10).create_body("none", &[]),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let r = post_json(
        &s,
        "/_api/v1/caches/pub/uploads",
        None,
        &Nar::new("other", 10).create_body("none", &[]),
    );
    expect_err(&s, &r, 401, "unauthorized");
}

/// Sends only the head of a request announcing a large body, and reads
/// the answer: it must come without the body ever being sent.
fn answer_without_body(s: &InProcess, method: &str, path: &str, auth: Option<&str>) -> String {
    use std::io::{Read, Write};
    let addr = s.url.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let auth = auth
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: 15000000\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).unwrap();
    let mut buf = [0u8; 4096];
    let n = conn
        .read(&mut buf)
        .expect("no answer before the body was sent: the server waited to read it");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn requests_without_the_right_are_refused_before_their_body_is_read() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let puller = s.mint(
        &[(ferry::auth::Operation::Pull, "c")],
        std::time::Duration::from_secs(600),
    );
    for (method, path, token, status) in [
        ("POST", "/_api/v1/caches/c/missing", None, "401"),
        ("POST", "/_api/v1/caches/c/uploads", None, "401"),
        (
            "POST",
            "/_api/v1/caches/c/uploads",
            Some(puller.as_str()),
            "403",
        ),
        ("POST", "/_api/v1/caches", Some(puller.as_str()), "403"),
        ("PATCH", "/_api/v1/caches/c", Some(puller.as_str()), "403"),
        (
            "POST",
            "/_api/v1/tokens/revoke",
            Some(puller.as_str()),
            "401",
        ),
    ] {
        let answer = answer_without_body(&s, method, path, token);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{method} {path}: {answer}"
        );
    }
    // With the right, an announced body over the limit is refused at once.
    let answer = answer_without_body(
        &s,
        "POST",
        "/_api/v1/caches/c/uploads",
        Some(&s.admin_token),
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
}
