//! Nix's own upload door: `PUT /{cache}/nar/<file>.nar.zst`, then
//! `PUT /{cache}/<hash>.narinfo`.

use ferry::nar::{NarInfo, PublicKey, SigningKey, StorePath};

use super::common::{Body, InProcess};
use super::*;

/// The narinfo Nix would send for `nar` compressed as `file`.
fn nix_narinfo(nar: &Nar, file: &[u8]) -> NarInfo {
    let file_hash = Sha256Hash::digest(file);
    NarInfo {
        store_path: StorePath::parse(&nar.path, "/nix/store").unwrap(),
        url: format!("nar/{}.nar.zst", file_hash.nix32()),
        compression: "zstd".into(),
        file_hash: Some(file_hash),
        file_size: Some(file.len() as u64),
        nar_hash: nar.hash,
        nar_size: nar.bytes.len() as u64,
        references: vec![StorePath::parse(&store_path("glibc"), "/nix/store").unwrap()],
        deriver: None,
        ca: None,
        sigs: vec![],
    }
}

fn put(s: &InProcess, path: &str, body: Vec<u8>) -> HttpResponse {
    call(s, "PUT", path, Some(&s.admin_token), &[], Body::Bytes(body))
}

fn put_nar(s: &InProcess, info: &NarInfo, file: &[u8]) {
    let r = put(s, &format!("/c/{}", info.url), file.to_vec());
    assert_eq!(r.status, 200, "{}", r.text());
}

fn put_narinfo(s: &InProcess, hash: &str, info: &NarInfo) -> HttpResponse {
    put(s, &format!("/c/{hash}.narinfo"), info.render().into_bytes())
}

fn setup(name: &str) -> (InProcess, Value, Nar, Vec<u8>, NarInfo) {
    let s = InProcess::start();
    let cache = create_cache(&s, "c", false);
    let nar = Nar::new(name, 20_000);
    let file = nar.zst();
    let info = nix_narinfo(&nar, &file);
    (s, cache, nar, file, info)
}

#[test]
fn nar_then_narinfo_publishes_resigned_with_the_cache_key() {
    let (s, cache, nar, file, mut info) = setup("nix-put");
    let foreign = SigningKey::generate("upstream-1").unwrap();
    info.sigs = vec![foreign.sign(&info.fingerprint())];
    put_nar(&s, &info, &file);
    // Not visible before the narinfo.
    assert_eq!(
        narinfo(&s, "c", &nar.path, Some(&s.admin_token)).status,
        404
    );
    let r = put_narinfo(&s, hash_part(&nar.path), &info);
    assert_eq!(r.status, 200, "{}", r.text());
    let served = narinfo_ok(&s, "c", &nar.path);
    assert_eq!(served.nar_hash, nar.hash);
    assert_eq!(served.nar_size, nar.bytes.len() as u64);
    assert_eq!(served.file_hash, info.file_hash);
    assert_eq!(served.file_size, info.file_size);
    assert_eq!(served.references, info.references);
    assert_eq!(served.compression, "zstd");
    let key = PublicKey::parse(cache["public_key"].as_str().unwrap()).unwrap();
    assert!(
        served
            .sigs
            .iter()
            .any(|sig| key.verify(&served.fingerprint(), sig)),
        "{served:?}"
    );
    assert!(
        served.sigs.contains(&info.sigs[0]),
        "the upstream signature was dropped"
    );
    let got = get(&s, &format!("/c/{}", served.url), Some(&s.admin_token));
    assert_eq!(got.body, file);
    let plain = get(
        &s,
        &format!("/c/{}", served.url.trim_end_matches(".zst")),
        Some(&s.admin_token),
    );
    assert_eq!(plain.body, nar.bytes);
    // Sending the narinfo again is fine.
    assert_eq!(put_narinfo(&s, hash_part(&nar.path), &info).status, 200);
}

#[test]
fn narinfo_with_wrong_file_hash_is_422_file_hash_mismatch() {
    let (s, _, nar, file, mut info) = setup("nix-put-filehash");
    put_nar(&s, &info, &file);
    info.file_hash = Some(Sha256Hash::digest(b"something else"));
    let r = put_narinfo(&s, hash_part(&nar.path), &info);
    let body = expect_err(&s, &r, 422, "file_hash_mismatch");
    assert_eq!(body["actual"], Sha256Hash::digest(&file).to_string());
    assert_eq!(
        narinfo(&s, "c", &nar.path, Some(&s.admin_token)).status,
        404
    );
    assert_healthy(&s);
}

#[test]
fn narinfo_with_wrong_file_size_is_422_file_size_mismatch() {
    let (s, _, nar, file, mut info) = setup("nix-put-filesize");
    put_nar(&s, &info, &file);
    info.file_size = Some(file.len() as u64 + 1);
    let r = put_narinfo(&s, hash_part(&nar.path), &info);
    expect_err(&s, &r, 422, "file_size_mismatch");
    assert_eq!(
        narinfo(&s, "c", &nar.path, Some(&s.admin_token)).status,
        404
    );
}

#[test]
fn narinfo_with_wrong_nar_hash_is_422() {
    let (s, _, nar, file, mut info) = setup("nix-put-narhash");
    put_nar(&s, &info, &file);
    info.nar_hash = Sha256Hash::digest(b"another nar");
    let r = put_narinfo(&s, hash_part(&nar.path), &info);
    expect_err(&s, &r, 422, "nar_hash_mismatch");
    assert_eq!(
        narinfo(&s, "c", &nar.path, Some(&s.admin_token)).status,
        404
    );
}

#[test]
fn narinfo_before_nar_is_400_nar_file_missing() {
    let (s, _, nar, file, info) = setup("nix-put-early");
    let r = put_narinfo(&s, hash_part(&nar.path), &info);
    expect_err(&s, &r, 400, "nar_file_missing");
    assert_eq!(
        narinfo(&s, "c", &nar.path, Some(&s.admin_token)).status,
        404
    );
    let list = get(&s, "/_api/v1/caches/c/uploads", Some(&s.admin_token)).json();
    assert_eq!(list["uploads"], json!([]), "a dangling upload was left");
    // The NAR afterwards, then the narinfo again: published.
    put_nar(&s, &info, &file);
    let r = put_narinfo(&s, hash_part(&nar.path), &info);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn narinfo_with_bzip2_compression_is_400() {
    let (s, _, nar, file, mut info) = setup("nix-put-bzip2");
    put_nar(&s, &info, &file);
    info.compression = "bzip2".into();
    let r = put_narinfo(&s, hash_part(&nar.path), &info);
    let body = expect_err(&s, &r, 400, "bad_request");
    assert!(
        body["message"].as_str().unwrap().contains("bzip2"),
        "{body}"
    );
}

#[test]
fn an_xz_nar_is_verified_and_served_as_zstd() {
    use std::io::Write as _;
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let nar = Nar::new("nix-put-xz", 20_000);
    let mut enc = xz2::write::XzEncoder::new(vec![], 6);
    enc.write_all(&nar.bytes).unwrap();
    let file = enc.finish().unwrap();
    let mut info = nix_narinfo(&nar, &file);
    info.url = info.url.replace(".nar.zst", ".nar.xz");
    info.compression = "xz".into();
    put_nar(&s, &info, &file);
    let r = put_narinfo(&s, hash_part(&nar.path), &info);
    assert_eq!(r.status, 200, "{}", r.text());
    let served = narinfo_ok(&s, "c", &nar.path);
    assert_eq!(served.compression, "zstd");
    assert_eq!(served.nar_hash, nar.hash);
    let body = get(&s, &format!("/c/{}", served.url), Some(&s.admin_token)).body;
    assert_eq!(zstd::decode_all(&body[..]).unwrap(), nar.bytes);
}

#[test]
fn narinfo_for_another_hash_than_the_url_is_400() {
    let (s, _, _, file, info) = setup("nix-put-url");
    put_nar(&s, &info, &file);
    let other = hash_part(&store_path("someone-else")).to_owned();
    let r = put_narinfo(&s, &other, &info);
    expect_err(&s, &r, 400, "bad_request");
    assert_eq!(
        get(&s, &format!("/c/{other}.narinfo"), Some(&s.admin_token)).status,
        404
    );
}

#[test]
fn malformed_narinfo_is_400() {
    let (s, _, nar, file, info) = setup("nix-put-malformed");
    put_nar(&s, &info, &file);
    let r = put(
        &s,
        &format!("/c/{}.narinfo", hash_part(&nar.path)),
        b"this is not a narinfo\n".to_vec(),
    );
    expect_err(&s, &r, 400, "invalid_format");
    let text = info.render().replace("NarSize: ", "NarSize: x");
    let r = put(
        &s,
        &format!("/c/{}.narinfo", hash_part(&nar.path)),
        text.into_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_healthy(&s);
}

#[test]
fn nar_put_with_a_path_like_name_is_refused() {
    let (s, _, _, file, _) = setup("nix-put-name");
    let r = put(&s, "/c/nar/..hidden", file.clone());
    assert!(r.status == 400 || r.status == 404, "{}", r.text());
    assert_no_leak(&s, &r);
    let r = put(&s, "/c/nar/a%2Fb.nar.zst", file);
    assert!(r.status == 400 || r.status == 404, "{}", r.text());
    assert_no_leak(&s, &r);
    assert_healthy(&s);
}
