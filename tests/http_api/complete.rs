//! `POST /_api/v1/uploads/{id}/complete` errors: missing parts, hash and
//! size mismatches, bad zstd, bytes that are no NAR; nothing is published
//! and a fresh upload of the same path still works.

use super::common::InProcess;
use super::*;

fn server() -> InProcess {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    s
}

/// Starts an upload declaring `declared` but sends `sent` as one part in
/// `compression`; returns the upload id and the complete answer.
fn send_wrong(
    s: &InProcess,
    declared: &Nar,
    sent: &[u8],
    compression: &str,
) -> (String, HttpResponse) {
    let id = start_upload(s, "c", declared, compression);
    put_part(s, &id, 1, sent);
    let r = complete(s, &id, 1);
    (id, r)
}

/// After a failed complete: the upload is `failed`, nothing is published,
/// a second complete answers the same, and a fresh upload succeeds.
fn assert_failed_then_recoverable(s: &InProcess, id: &str, first: &HttpResponse, nar: &Nar) {
    let st = upload_status(s, id);
    assert_eq!(st.status, 200, "{}", st.text());
    let st = st.json();
    assert_eq!(st["state"], "failed", "{st}");
    assert_eq!(
        st["error"],
        first.json(),
        "the stored error differs from the answer"
    );
    let r = narinfo(s, "c", &nar.path, Some(&s.admin_token));
    assert_eq!(r.status, 404, "a failed upload was published: {}", r.text());
    let again = complete(s, id, 1);
    assert_eq!(
        (again.status, again.body.clone()),
        (first.status, first.body.clone())
    );
    let r = post_json(
        s,
        "/_api/v1/caches/c/missing",
        Some(&s.admin_token),
        &json!({"store_paths": [nar.path]}),
    );
    assert_eq!(r.json()["missing"], json!([nar.path]));
    push_ok(s, "c", nar);
    assert_eq!(narinfo_ok(s, "c", &nar.path).nar_hash, nar.hash);
    assert_healthy(s);
}

#[test]
fn complete_with_missing_parts_is_422_and_upload_stays_open() {
    let s = server();
    let nar = Nar::new("gappy", 3000);
    let id = start_upload(&s, "c", &nar, "none");
    let pieces = split(&nar.bytes, 4);
    put_part(&s, &id, 1, &pieces[0]);
    put_part(&s, &id, 3, &pieces[2]);
    let r = complete(&s, &id, 4);
    let body = expect_err(&s, &r, 422, "missing_parts");
    assert_eq!(body["missing"], json!([2, 4]));
    assert_eq!(upload_status(&s, &id).json()["state"], "open");
    assert_eq!(
        narinfo(&s, "c", &nar.path, Some(&s.admin_token)).status,
        404
    );
    // Sending them and completing again works.
    put_part(&s, &id, 2, &pieces[1]);
    put_part(&s, &id, 4, &pieces[3]);
    let r = complete(&s, &id, 4);
    assert_eq!(r.status, 200, "{}", r.text());
    narinfo_ok(&s, "c", &nar.path);
}

#[test]
fn complete_with_zero_parts_is_400() {
    let s = server();
    let nar = Nar::new("zero", 100);
    let id = start_upload(&s, "c", &nar, "none");
    let r = complete(&s, &id, 0);
    expect_err(&s, &r, 400, "bad_request");
    assert_eq!(upload_status(&s, &id).json()["state"], "open");
}

#[test]
fn complete_with_bad_json_is_400() {
    let s = server();
    let nar = Nar::new("bad-json", 100);
    let id = start_upload(&s, "c", &nar, "none");
    let r = post_json(
        &s,
        &format!("/_api/v1/uploads/{id}/complete"),
        Some(&s.admin_token),
        &json!({"parts": "all"}),
    );
    expect_err(&s, &r, 400, "bad_request");
}

#[test]
fn wrong_nar_hash_is_422_nar_hash_mismatch_and_upload_fails() {
    let s = server();
    let nar = Nar::new("hash", 2000);
    let mut other = Nar::new("hash", 2000).bytes;
    other[1000] ^= 1; // inside the file's contents: same size and structure
    let (id, r) = send_wrong(&s, &nar, &other, "none");
    let body = expect_err(&s, &r, 422, "nar_hash_mismatch");
    assert_eq!(body["expected"], nar.hash.to_string());
    assert_eq!(body["actual"], Sha256Hash::digest(&other).to_string());
    assert_failed_then_recoverable(&s, &id, &r, &nar);
}

#[test]
fn wrong_nar_size_is_422_nar_size_mismatch() {
    let s = server();
    let nar = Nar::new("size", 2000);
    let small = Nar::new("size-small", 1000);
    // Declared: `nar`; sent: another valid NAR of a different size.
    let (id, r) = send_wrong(&s, &nar, &small.zst(), "zstd");
    let body = expect_err(&s, &r, 422, "nar_size_mismatch");
    assert_eq!(body["expected"], nar.bytes.len());
    assert_eq!(body["actual"], small.bytes.len());
    assert_failed_then_recoverable(&s, &id, &r, &nar);
    // A failed upload can be deleted.
    let d = call(
        &s,
        "DELETE",
        &format!("/_api/v1/uploads/{id}"),
        Some(&s.admin_token),
        &[],
        common::Body::None,
    );
    assert_eq!(d.status, 200, "{}", d.text());
    expect_err(&s, &upload_status(&s, &id), 404, "upload_not_found");
}

#[test]
fn garbage_declared_as_zstd_is_422() {
    let s = server();
    let nar = Nar::new("garbage", 2000);
    let (id, r) = send_wrong(&s, &nar, &noise("garbage", 5000), "zstd");
    let body = expect_err(&s, &r, 422, "invalid_compression");
    assert!(body["message"].as_str().unwrap().contains("zstd"), "{body}");
    assert_failed_then_recoverable(&s, &id, &r, &nar);
}

#[test]
fn valid_zstd_of_a_non_nar_is_422_invalid_nar() {
    let s = server();
    let text = b"this is not a NAR at all, just some words".repeat(20);
    let nar = Nar::from_bytes(&store_path("not-nar"), text.clone());
    let (id, r) = send_wrong(&s, &nar, &zstd::encode_all(&text[..], 3).unwrap(), "zstd");
    expect_err(&s, &r, 422, "invalid_nar");
    // A real NAR for the same path afterwards.
    let real = Nar::new("not-nar", 500);
    assert_eq!(real.path, nar.path);
    assert_failed_then_recoverable(&s, &id, &r, &real);
}

#[test]
fn truncated_nar_is_422() {
    let s = server();
    let nar = Nar::new("truncated", 2000);
    let (id, r) = send_wrong(&s, &nar, &nar.bytes[..nar.bytes.len() - 64], "none");
    assert_eq!(r.status, 422, "{}", r.text());
    assert_no_leak(&s, &r);
    assert_failed_then_recoverable(&s, &id, &r, &nar);
}
