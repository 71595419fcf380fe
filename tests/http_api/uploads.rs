//! The push API happy paths: uploads in zstd and plain, parts out of order
//! and in parallel, resends, dedup, `missing`, listing and abandoning, and
//! the checks on `POST /caches/{cache}/uploads`.

use ferry::nar::{NarInfo, PublicKey};

use super::common::InProcess;
use super::*;

/// Checks the served narinfo against `nar` and the cache key; returns it.
fn check_narinfo(s: &InProcess, cache: &Value, nar: &Nar, refs: &[&str]) -> NarInfo {
    let name = cache["name"].as_str().unwrap();
    let r = narinfo(s, name, &nar.path, Some(&s.admin_token));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/x-nix-narinfo"));
    let text = r.text();
    let info = NarInfo::parse(&text, "/nix/store").unwrap();
    assert_eq!(info.store_path.to_absolute(), nar.path);
    assert_eq!(info.nar_hash, nar.hash);
    assert_eq!(info.nar_size, nar.bytes.len() as u64);
    assert_eq!(info.compression, "zstd");
    let mut want: Vec<String> = refs.iter().map(|r| r.to_string()).collect();
    want.sort();
    let mut got: Vec<String> = info.references.iter().map(|r| r.to_absolute()).collect();
    got.sort();
    assert_eq!(got, want);
    if refs.is_empty() {
        assert!(text.contains("References: \n"), "{text}");
    }
    let key = PublicKey::parse(cache["public_key"].as_str().unwrap()).unwrap();
    assert!(
        info.sigs
            .iter()
            .any(|sig| key.verify(&info.fingerprint(), sig)),
        "no Sig verifies with the cache key: {text}"
    );
    // The file: FileHash/FileSize describe it, and it is the NAR in zstd.
    let file = get(s, &format!("/{name}/{}", info.url), Some(&s.admin_token));
    assert_eq!(file.status, 200);
    assert_eq!(info.file_size, Some(file.body.len() as u64));
    assert_eq!(info.file_hash, Some(Sha256Hash::digest(&file.body)));
    assert_eq!(zstd::decode_all(&file.body[..]).unwrap(), nar.bytes);
    let plain = get(
        s,
        &format!("/{name}/{}", info.url.trim_end_matches(".zst")),
        Some(&s.admin_token),
    );
    assert_eq!(plain.status, 200);
    assert_eq!(plain.body, nar.bytes, ".nar download differs from the NAR");
    info
}

/// Puts `pieces` (numbered from 1) from one thread each, in reverse order
/// of start; returns the answers by part number.
fn put_parallel(s: &InProcess, id: &str, pieces: &[Vec<u8>]) -> Vec<Value> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = pieces
            .iter()
            .enumerate()
            .rev()
            .map(|(i, p)| scope.spawn(move || put_part(s, id, i as u32 + 1, p)))
            .collect();
        let mut out: Vec<Value> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        out.reverse();
        out
    })
}

fn upload_flow(compression: &str) {
    let s = InProcess::start();
    let cache = create_cache(&s, "flow", false);
    let dep = store_path("dep");
    let nar = Nar::new("flow-path", 300_000);
    let r = start_upload_with(
        &s,
        "flow",
        &s.admin_token,
        &nar.create_body(compression, &[&dep]),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let created = r.json();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{created}");
    assert_eq!(created["upload_url"], format!("/_api/v1/uploads/{id}"));
    assert!(
        created["max_part_size"].as_u64().unwrap() > 0
            && created["expires_at"].as_i64().unwrap() > 0
    );
    let data = if compression == "zstd" {
        nar.zst()
    } else {
        nar.bytes.clone()
    };
    let pieces = split(&data, 5);
    assert_eq!(pieces.len(), 5);
    // Part 1 first with wrong bytes: a resend with other bytes replaces it.
    // (While part 1 stands wrong, later parts are refused: see
    // tests/http_api/parts.rs.)
    let wrong = put_part(&s, &id, 1, &noise("wrong", pieces[0].len()));
    put_part(&s, &id, 1, &pieces[0]);
    // Parts 5..2 and part 1 again in parallel.
    let acks = put_parallel(&s, &id, &pieces);
    for (i, a) in acks.iter().enumerate() {
        assert_eq!(a["n"], i + 1);
        assert_eq!(a["size"], pieces[i].len());
        assert_eq!(a["blake3"], blake3::hash(&pieces[i]).to_hex().to_string());
    }
    assert_ne!(wrong["blake3"], acks[0]["blake3"]);
    // The same part again answers the same.
    assert_eq!(put_part(&s, &id, 3, &pieces[2]), acks[2]);
    let st = upload_status(&s, &id);
    assert_eq!(st.status, 200);
    let st = st.json();
    assert_eq!(st["state"], "open");
    assert_eq!(st["received_bytes"], data.len());
    assert_eq!(st["parts"].as_array().unwrap().len(), 5);
    assert_eq!(st["parts"][0]["blake3"], acks[0]["blake3"]);
    let r = complete(&s, &id, 5);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let done = r.json();
    assert_eq!(done["state"], "committed");
    assert_eq!(
        done["narinfo_url"],
        format!("/flow/{}.narinfo", hash_part(&nar.path))
    );
    let info = check_narinfo(&s, &cache, &nar, &[&dep]);
    if compression == "zstd" {
        // The stored file is what the client sent.
        assert_eq!(info.file_hash, Some(Sha256Hash::digest(&data)));
    }
    assert_eq!(upload_status(&s, &id).json()["state"], "committed");
    // Completing again says the same.
    let again = complete(&s, &id, 5);
    assert_eq!((again.status, again.json()), (200, done));
}

#[test]
fn zstd_upload_out_of_order_in_parallel_with_resends_commits() {
    upload_flow("zstd");
}

#[test]
fn plain_upload_out_of_order_in_parallel_with_resends_commits() {
    upload_flow("none");
}

#[test]
fn compression_defaults_to_none() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let nar = Nar::new("default-compression", 1000);
    let body = json!({"store_path": nar.path, "nar_hash": nar.hash.to_string(), "nar_size": nar.bytes.len()});
    let r = start_upload_with(&s, "c", &s.admin_token, &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    put_part(&s, &id, 1, &nar.bytes);
    assert_eq!(complete(&s, &id, 1).status, 200);
}

#[test]
fn nar_hash_is_accepted_in_nix32_base16_base64_and_sri() {
    let s = InProcess::start();
    let cache = create_cache(&s, "forms", false);
    let forms = |h: &Sha256Hash| {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(h.0);
        [
            ("nix32", h.to_string()),
            ("base16", format!("sha256:{}", h.to_hex())),
            ("base64", format!("sha256:{b64}")),
            ("sri", h.to_sri()),
        ]
    };
    for form in ["nix32", "base16", "base64", "sri"] {
        let nar = Nar::new(&format!("form-{form}"), 2000);
        let mut body = nar.create_body("none", &[]);
        let (_, rendered) = forms(&nar.hash).into_iter().find(|f| f.0 == form).unwrap();
        body["nar_hash"] = json!(rendered);
        let r = start_upload_with(&s, "forms", &s.admin_token, &body);
        assert_eq!(r.status, 201, "{form}: {}", r.text());
        let id = r.json()["id"].as_str().unwrap().to_owned();
        put_part(&s, &id, 1, &nar.bytes);
        let r = complete(&s, &id, 1);
        assert_eq!(r.status, 200, "{form}: {}", r.text());
        check_narinfo(&s, &cache, &nar, &[]);
    }
}

#[test]
fn create_upload_with_bad_nar_hash_is_400() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let nar = Nar::new("x", 10);
    for bad in [
        "sha256:abc",
        "md5:00112233",
        "",
        "sha256-!!!!",
        &format!("sha256:{}", "e".repeat(52)),
    ] {
        let mut body = nar.create_body("none", &[]);
        body["nar_hash"] = json!(bad);
        let r = start_upload_with(&s, "c", &s.admin_token, &body);
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
        assert_no_leak(&s, &r);
    }
    assert_healthy(&s);
}

#[test]
fn create_upload_outside_the_store_dir_is_400() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let nar = Nar::from_bytes(
        &store_path("x").replace("/nix/store", "/gnu/store"),
        Nar::new("x", 10).bytes,
    );
    let r = start_upload_with(&s, "c", &s.admin_token, &nar.create_body("none", &[]));
    expect_err(&s, &r, 400, "invalid_format");
    // A reference outside the store dir too.
    let nar = Nar::new("x", 10);
    let r = start_upload_with(
        &s,
        "c",
        &s.admin_token,
        &nar.create_body("none", &["/usr/lib/libc.so"]),
    );
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn create_upload_with_nar_size_0_is_400() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let mut body = Nar::new("x", 10).create_body("none", &[]);
    body["nar_size"] = json!(0);
    let r = start_upload_with(&s, "c", &s.admin_token, &body);
    expect_err(&s, &r, 400, "bad_request");
}

#[test]
fn create_upload_with_unsupported_compression_is_400() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    for c in ["xz", "bzip2", "ZSTD2"] {
        let r = start_upload_with(
            &s,
            "c",
            &s.admin_token,
            &Nar::new("x", 10).create_body(c, &[]),
        );
        let body = expect_err(&s, &r, 400, "bad_request");
        assert!(body["message"].as_str().unwrap().contains("zstd"), "{body}");
    }
}

#[test]
fn create_upload_with_unknown_field_is_400() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let mut body = Nar::new("x", 10).create_body("none", &[]);
    body["narhash"] = json!("typo");
    let r = start_upload_with(&s, "c", &s.admin_token, &body);
    expect_err(&s, &r, 400, "bad_request");
}

#[test]
fn create_upload_in_missing_cache_is_404_for_admin() {
    let s = InProcess::start();
    let r = start_upload_with(
        &s,
        "ghost",
        &s.admin_token,
        &Nar::new("x", 10).create_body("none", &[]),
    );
    expect_err(&s, &r, 404, "cache_not_found");
}

#[test]
fn same_nar_in_another_cache_is_linked_without_parts() {
    let s = InProcess::start();
    create_cache(&s, "a", false);
    let b = create_cache(&s, "b", false);
    let nar = Nar::new("shared", 4000);
    push_ok(&s, "a", &nar);
    let r = start_upload_with(&s, "b", &s.admin_token, &nar.create_body("zstd", &[]));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"state": "committed", "nar_hash": nar.hash.to_string()})
    );
    let info = check_narinfo(&s, &b, &nar, &[]);
    let a_key = PublicKey::parse(create_cache_key(&s, "a").as_str()).unwrap();
    assert!(
        !info
            .sigs
            .iter()
            .any(|sig| a_key.verify(&info.fingerprint(), sig)),
        "b's narinfo is signed by a"
    );
    // Another store path with the same NAR is linked too.
    let other = Nar::from_bytes(&store_path("shared-again"), nar.bytes.clone());
    let r = start_upload_with(&s, "b", &s.admin_token, &other.create_body("zstd", &[]));
    assert_eq!(
        (r.status, r.json()),
        (
            200,
            json!({"state": "committed", "nar_hash": nar.hash.to_string()})
        )
    );
    assert_eq!(
        narinfo(&s, "b", &other.path, Some(&s.admin_token)).status,
        200
    );
}

fn create_cache_key(s: &InProcess, name: &str) -> String {
    get(s, &format!("/_api/v1/caches/{name}"), Some(&s.admin_token)).json()["public_key"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn same_path_again_in_the_same_cache_is_200_committed() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let nar = Nar::new("again", 1000);
    push_ok(&s, "c", &nar);
    let r = start_upload_with(&s, "c", &s.admin_token, &nar.create_body("none", &[]));
    let committed = json!({"state": "committed", "nar_hash": nar.hash.to_string()});
    assert_eq!((r.status, r.json()), (200, committed.clone()));
    // Another NAR for the same path: the first writer wins, and the
    // answer names the NarHash the cache publishes.
    let other = Nar::from_bytes(&nar.path, Nar::new("other", 1000).bytes);
    let r = start_upload_with(&s, "c", &s.admin_token, &other.create_body("none", &[]));
    assert_eq!((r.status, r.json()), (200, committed));
    let list = get(&s, "/_api/v1/caches/c/uploads", Some(&s.admin_token)).json();
    assert_eq!(list["uploads"], json!([]));
}

#[test]
fn missing_lists_only_absent_paths() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let present = Nar::new("present", 100);
    push_ok(&s, "c", &present);
    let absent = store_path("absent");
    let body = json!({"store_paths": [present.path, absent]});
    let r = post_json(&s, "/_api/v1/caches/c/missing", Some(&s.admin_token), &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.json(), json!({"missing": [absent]}));
    // A pull-only token may ask too.
    let t = s.mint(
        &[(ferry::auth::Operation::Pull, "c")],
        std::time::Duration::from_secs(600),
    );
    let r = post_json(&s, "/_api/v1/caches/c/missing", Some(&t), &body);
    assert_eq!((r.status, r.json()), (200, json!({"missing": [absent]})));
}

#[test]
fn missing_answers_in_order_across_its_query_batches() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let present: Vec<Nar> = (0..4)
        .map(|i| Nar::new(&format!("here-{i}"), 100))
        .collect();
    for n in &present {
        push_ok(&s, "c", n);
    }
    // 1201 paths: present ones at the edges of the server's batches of
    // 500, absent ones around them, one absent path twice.
    let mut asked: Vec<String> = (0..1201)
        .map(|i| store_path(&format!("gone-{i}")))
        .collect();
    for (n, at) in present.iter().zip([0, 499, 500, 1200]) {
        asked[at] = n.path.clone();
    }
    asked[700] = asked[701].clone();
    let body = json!({ "store_paths": asked });
    let r = post_json(&s, "/_api/v1/caches/c/missing", Some(&s.admin_token), &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let want: Vec<&String> = asked
        .iter()
        .filter(|p| !present.iter().any(|n| &n.path == *p))
        .collect();
    assert_eq!(r.json()["missing"], json!(want));
}

#[test]
fn missing_with_a_bad_path_is_400() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    for bad in [
        "/nix/store/short-name",
        "relative",
        "/gnu/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x",
    ] {
        let r = post_json(
            &s,
            "/_api/v1/caches/c/missing",
            Some(&s.admin_token),
            &json!({"store_paths": [bad]}),
        );
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_no_leak(&s, &r);
    }
    assert_healthy(&s);
}

#[test]
fn list_uploads_shows_open_uploads_with_store_path() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    create_cache(&s, "other", false);
    let a = Nar::new("list-a", 100);
    let b = Nar::new("list-b", 100);
    let id_a = start_upload(&s, "c", &a, "none");
    let id_b = start_upload(&s, "c", &b, "none");
    start_upload(&s, "other", &Nar::new("elsewhere", 100), "none");
    put_part(&s, &id_a, 1, &a.bytes[..10]);
    let r = get(&s, "/_api/v1/caches/c/uploads", Some(&s.admin_token));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let mut list = r.json()["uploads"].as_array().unwrap().clone();
    list.sort_by_key(|u| u["store_path"].as_str().unwrap().to_owned());
    let mut want = vec![(id_a, a.path.clone(), 10), (id_b, b.path.clone(), 0)];
    want.sort_by_key(|w| w.1.clone());
    assert_eq!(list.len(), 2, "{list:?}");
    for (u, (id, path, bytes)) in list.iter().zip(want) {
        assert_eq!(u["id"], id);
        assert_eq!(u["store_path"], path);
        assert_eq!(u["state"], "open");
        assert_eq!(u["received_bytes"], bytes);
    }
    // A pull-only token may not list.
    let t = s.mint(
        &[(ferry::auth::Operation::Pull, "c")],
        std::time::Duration::from_secs(600),
    );
    expect_err(
        &s,
        &get(&s, "/_api/v1/caches/c/uploads", Some(&t)),
        403,
        "forbidden",
    );
}

#[test]
fn delete_upload_removes_it_and_its_parts() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let nar = Nar::new("abandon", 5000);
    let id = start_upload(&s, "c", &nar, "none");
    put_part(&s, &id, 1, &nar.bytes[..100]);
    put_part(&s, &id, 3, &nar.bytes[200..300]);
    let dir = s.data_dir.path().join("uploads").join(&id);
    assert!(
        dir.join("1.part").exists(),
        "parts are not where expected: {}",
        dir.display()
    );
    let r = call(
        &s,
        "DELETE",
        &format!("/_api/v1/uploads/{id}"),
        Some(&s.admin_token),
        &[],
        common::Body::None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    expect_err(&s, &upload_status(&s, &id), 404, "upload_not_found");
    assert!(!dir.exists(), "parts left behind in {}", dir.display());
    expect_err(
        &s,
        &put_part_h(&s, &id, "2", b"x", &[]),
        404,
        "upload_not_found",
    );
    let list = get(&s, "/_api/v1/caches/c/uploads", Some(&s.admin_token)).json();
    assert_eq!(list["uploads"], json!([]));
    let r = call(
        &s,
        "DELETE",
        &format!("/_api/v1/uploads/{id}"),
        Some(&s.admin_token),
        &[],
        common::Body::None,
    );
    expect_err(&s, &r, 404, "upload_not_found");
}

#[test]
fn replacing_a_part_already_folded_uses_the_new_bytes() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let nar = Nar::new("refold", 4000);
    let id = start_upload(&s, "c", &nar, "none");
    let pieces = split(&nar.bytes, 2);
    // Wrong contents but a valid NAR prefix: the verifier folds it happily.
    let mut wrong = pieces[0].clone();
    wrong[1000] ^= 1;
    put_part(&s, &id, 1, &wrong);
    std::thread::sleep(std::time::Duration::from_millis(300));
    put_part(&s, &id, 1, &pieces[0]);
    put_part(&s, &id, 2, &pieces[1]);
    let r = complete(&s, &id, 2);
    assert_eq!(r.status, 200, "{}", r.text());
    let file = get(
        &s,
        &format!("/c/{}", narinfo_ok(&s, "c", &nar.path).url),
        Some(&s.admin_token),
    );
    assert_eq!(zstd::decode_all(&file.body[..]).unwrap(), nar.bytes);
}

/// A path Nix 2.8 built and signed here: `nix-store
/// --generate-binary-cache-key pin-1`, a derivation writing
/// "pinned signature fixture\n", `nix store sign --key-file`; its NAR
/// (`nix-store --dump`, base64) and the signature Nix made.
const PIN_KEY: &str = "pin-1:OQnEJqj4+YnLPB2KABk6yADp1Xv0abJVSaLEA59P5LgvAdVWbQdCiXWwywJLs0ht2TjoQ8J+hL3UrePdP1E4Jw==";
const PIN_PATH: &str = "/nix/store/20k646f1sinv6phrdfh70q2m0366qlkn-ferry-pin";
const PIN_NAR: &str = "DQAAAAAAAABuaXgtYXJjaGl2ZS0xAAAAAQAAAAAAAAAoAAAAAAAAAAQAAAAAAAAAdHlwZQAAAAAHAAAAAAAAAHJlZ3VsYXIACAAAAAAAAABjb250ZW50cxkAAAAAAAAAcGlubmVkIHNpZ25hdHVyZSBmaXh0dXJlCgAAAAAAAAABAAAAAAAAACkAAAAAAAAA";
const PIN_SIG: &str = "pin-1:1OtwNsaRo6GgWEFBNajXKLHS5tor5kSMf25aRSFr0iD4py9iUGEAXGJegVv8fh0GTEiGENLF9Aeui2Qx0GyuBA==";

#[test]
fn the_served_narinfo_carries_the_signature_nix_itself_made() {
    use base64::Engine as _;
    let s = InProcess::start();
    // A cache holding the key Nix signed with (inserted before the server
    // ever looks the name up).
    let db = s.db();
    db.call_blocking(|c| {
        ferry::db::caches::insert(
            c,
            &ferry::db::caches::NewCache {
                name: "pin".into(),
                public: false,
                priority: 41,
                store_dir: "/nix/store".into(),
                retention_secs: None,
                signing_key: PIN_KEY.into(),
                upstream_keys: vec![],
            },
        )
    })
    .unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(PIN_NAR)
        .unwrap();
    let nar = Nar::from_bytes(PIN_PATH, bytes);
    assert_eq!(
        nar.hash.to_string(),
        ferry::nar::Sha256Hash::parse("sha256-VY5zZ3N5V3Oti2XGFlME4ss0rvpYSb6auZp0Kc2L61Y=")
            .unwrap()
            .to_string(),
        "the NarHash nix path-info printed"
    );
    push_ok(&s, "pin", &nar);
    let text = narinfo(&s, "pin", PIN_PATH, Some(&s.admin_token)).text();
    let sigs: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("Sig: "))
        .collect();
    assert_eq!(sigs, [PIN_SIG], "{text}");
}

#[test]
fn knowing_a_nar_hash_links_nothing_the_token_cannot_read() {
    use ferry::auth::Operation::{Pull, Push};
    let s = InProcess::start();
    create_cache(&s, "private", false);
    create_cache(&s, "mine", false);
    let secret = Nar::new("secret", 4000);
    push_ok(&s, "private", &secret);
    let day = std::time::Duration::from_secs(86_400);
    // An outsider names the secret NAR's hash and size: the bytes must come.
    let outsider = s.mint(&[(Push, "mine"), (Pull, "mine")], day);
    let other_path = Nar::from_bytes(&store_path("guess"), secret.bytes.clone());
    let r = start_upload_with(&s, "mine", &outsider, &other_path.create_body("zstd", &[]));
    assert_eq!(r.status, 201, "an outsider got a link: {}", r.text());
    assert_eq!(
        narinfo(&s, "mine", &other_path.path, Some(&outsider)).status,
        404
    );
    // Through Nix's door too: a narinfo naming the hash, with no NAR sent.
    // A token that may read the cache holding the NAR gets the link.
    let reader = s.mint(&[(Push, "mine"), (Pull, "mine"), (Pull, "private")], day);
    let linked = Nar::from_bytes(&store_path("linked"), secret.bytes.clone());
    let r = start_upload_with(&s, "mine", &reader, &linked.create_body("zstd", &[]));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "committed");
    assert_eq!(narinfo(&s, "mine", &linked.path, Some(&reader)).status, 200);
}

#[test]
fn a_nar_in_a_public_cache_is_linked_for_anyone_who_may_push() {
    use ferry::auth::Operation::Push;
    let s = InProcess::start();
    create_cache(&s, "open", true);
    create_cache(&s, "mine", false);
    let shared = Nar::new("public-bytes", 4000);
    push_ok(&s, "open", &shared);
    let pusher = s.mint(&[(Push, "mine")], std::time::Duration::from_secs(600));
    let other = Nar::from_bytes(&store_path("from-public"), shared.bytes.clone());
    let r = start_upload_with(&s, "mine", &pusher, &other.create_body("zstd", &[]));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn nar_size_over_max_nar_size_is_413() {
    let s = InProcess::start_with(|c| c.max_nar_size = 10_000);
    create_cache(&s, "c", false);
    let nar = Nar::new("too-big", 20_000);
    let r = start_upload_with(&s, "c", &s.admin_token, &nar.create_body("zstd", &[]));
    let body = expect_err(&s, &r, 413, "nar_too_large");
    assert_eq!(body["limit"], 10_000);
}

#[test]
fn one_token_may_hold_only_so_many_open_uploads() {
    use ferry::auth::Operation::Push;
    let s = InProcess::start_with(|c| c.max_open_uploads_per_token = 3);
    create_cache(&s, "c", false);
    let pusher = s.mint(&[(Push, "c")], std::time::Duration::from_secs(600));
    let narrowed = ferry::auth::attenuate(
        &pusher,
        &ferry::auth::Attenuation {
            caches: vec!["c".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let start = |token: &str, name: &str| {
        let nar = Nar::new(name, 1000);
        start_upload_with(&s, "c", token, &nar.create_body("zstd", &[]))
    };
    let mut ids = vec![];
    for i in 0..3 {
        let r = start(&pusher, &format!("quota-{i}"));
        assert_eq!(r.status, 201, "{}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let r = start(&pusher, "quota-over");
    expect_err(&s, &r, 429, "too_many_uploads");
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    // Attenuating the token does not make a new quota; another token has its own.
    expect_err(
        &s,
        &start(&narrowed, "quota-narrowed"),
        429,
        "too_many_uploads",
    );
    assert_eq!(start(&s.admin_token, "quota-admin").status, 201);
    // Abandoning one frees a place.
    let r = call(
        &s,
        "DELETE",
        &format!("/_api/v1/uploads/{}", ids[0]),
        Some(&pusher),
        &[],
        Body::None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(start(&pusher, "quota-again").status, 201);
}

#[test]
fn more_open_uploads_than_live_verifiers_all_complete() {
    // Each upload's first part is folded in the background while there is
    // a place among the live verifiers; the rest wait on disk and are
    // folded by `complete`.
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let n = ferry::upload::LIVE_VERIFIERS + 8;
    let uploads: Vec<(Nar, String, Vec<Vec<u8>>)> = (0..n)
        .map(|i| {
            let nar = Nar::new(&format!("budget-{i}"), 50_000);
            let id = start_upload(&s, "c", &nar, "zstd");
            let pieces = split(&nar.zst(), 2);
            put_part(&s, &id, 1, &pieces[0]);
            (nar, id, pieces)
        })
        .collect();
    for (nar, id, pieces) in &uploads {
        put_part(&s, id, 2, &pieces[1]);
        let r = complete(&s, id, 2);
        assert_eq!(r.status, 200, "{}: {}", nar.path, r.text());
        assert_eq!(narinfo_ok(&s, "c", &nar.path).nar_hash, nar.hash);
    }
}
