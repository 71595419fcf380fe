//! `PUT /_api/v1/uploads/{id}/parts/{n}` errors: length, size, digest,
//! part numbers, upload ids.

use super::common::{Body, InProcess};
use super::*;

/// A server with cache `c` and an open upload of a small NAR.
fn open_upload() -> (InProcess, Nar, String) {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let nar = Nar::new("parts", 3000);
    let id = start_upload(&s, "c", &nar, "none");
    (s, nar, id)
}

fn part_numbers(s: &InProcess, id: &str) -> Vec<u64> {
    let st = upload_status(s, id).json();
    st["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["n"].as_u64().unwrap())
        .collect()
}

#[test]
fn part_without_content_length_is_411_length_required() {
    let (s, nar, id) = open_upload();
    let r = put_part_h(&s, &id, "1", &nar.bytes, &["Transfer-Encoding: chunked"]);
    expect_err(&s, &r, 411, "length_required");
    assert!(part_numbers(&s, &id).is_empty());
    assert_healthy(&s);
}

#[test]
fn part_over_max_part_size_is_413_naming_the_limit() {
    let s = InProcess::start_with(|c| c.max_part_size = 1000);
    create_cache(&s, "c", false);
    let nar = Nar::new("big", 3000);
    let r = start_upload_with(&s, "c", &s.admin_token, &nar.create_body("none", &[]));
    assert_eq!(r.json()["max_part_size"], 1000);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = put_part_h(&s, &id, "1", &nar.bytes[..1001], &[]);
    let body = expect_err(&s, &r, 413, "part_too_large");
    assert_eq!(body["limit"], 1000);
    assert!(body["message"].as_str().unwrap().contains("1000"), "{body}");
    assert!(part_numbers(&s, &id).is_empty());
    // Exactly the limit is fine, and the NAR goes through in 1000-byte parts.
    let pieces: Vec<&[u8]> = nar.bytes.chunks(1000).collect();
    for (i, p) in pieces.iter().enumerate() {
        put_part(&s, &id, i as u32 + 1, p);
    }
    assert_eq!(complete(&s, &id, pieces.len() as u32).status, 200);
    assert_eq!(
        get(&s, "/_api/v1/caches/c", Some(&s.admin_token)).json()["max_part_size"],
        1000
    );
    assert_healthy(&s);
}

#[test]
fn part_with_wrong_sha256_digest_is_400_and_not_kept() {
    let (s, nar, id) = open_upload();
    let digest = sha256_digest_header(b"other bytes");
    let r = put_part_h(&s, &id, "1", &nar.bytes, &[&digest]);
    let body = expect_err(&s, &r, 400, "part_digest_mismatch");
    assert_eq!(body["algorithm"], "sha-256");
    assert!(
        part_numbers(&s, &id).is_empty(),
        "a rejected part is listed"
    );
    let r = put_part_h(&s, &id, "1", &nar.bytes, &[&blake3_digest_header(b"other")]);
    expect_err(&s, &r, 400, "part_digest_mismatch");
    assert!(part_numbers(&s, &id).is_empty());
    assert!(
        !s.data_dir
            .path()
            .join("uploads")
            .join(&id)
            .join("1.part")
            .exists()
    );
    assert_healthy(&s);
}

#[test]
fn part_with_correct_sha256_or_blake3_digest_is_accepted() {
    let (s, nar, id) = open_upload();
    let (a, b) = nar.bytes.split_at(1000);
    let r = put_part_h(&s, &id, "1", a, &[&sha256_digest_header(a)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = put_part_h(&s, &id, "2", b, &[&blake3_digest_header(b)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["blake3"], blake3::hash(b).to_hex().to_string());
    // Unknown algorithms are ignored.
    let r = put_part_h(&s, &id, "2", b, &["Content-Digest: md5=:AAAA:"]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(part_numbers(&s, &id), vec![1, 2]);
    assert_eq!(complete(&s, &id, 2).status, 200);
}

#[test]
fn malformed_content_digest_is_400() {
    let (s, nar, id) = open_upload();
    for h in [
        "Content-Digest: sha-256=nocolons",
        "Content-Digest: sha-256=:AAAA:",
    ] {
        let r = put_part_h(&s, &id, "1", &nar.bytes, &[h]);
        expect_err(&s, &r, 400, "bad_request");
    }
    assert!(part_numbers(&s, &id).is_empty());
}

#[test]
fn part_numbers_0_and_100001_are_400_bad_part_number() {
    let (s, nar, id) = open_upload();
    for n in ["0", "100001"] {
        let r = put_part_h(&s, &id, n, &nar.bytes, &[]);
        let body = expect_err(&s, &r, 400, "bad_part_number");
        assert!(body["message"].as_str().unwrap().contains(n), "{body}");
    }
    put_part(&s, &id, 100_000, b"last allowed");
    assert_eq!(part_numbers(&s, &id), vec![100_000]);
}

#[test]
fn non_numeric_part_number_is_400() {
    let (s, nar, id) = open_upload();
    for n in ["one", "-1", "1.5"] {
        let r = put_part_h(&s, &id, n, &nar.bytes, &[]);
        expect_err(&s, &r, 400, "bad_request");
    }
    assert_healthy(&s);
}

#[test]
fn upload_id_that_is_not_a_uuid_is_404_upload_not_found() {
    let (s, nar, _) = open_upload();
    let r = put_part_h(&s, "not-a-uuid", "1", &nar.bytes, &[]);
    expect_err(&s, &r, 404, "upload_not_found");
    expect_err(&s, &upload_status(&s, "zzz"), 404, "upload_not_found");
    expect_err(&s, &complete(&s, "x", 1), 404, "upload_not_found");
}

#[test]
fn unknown_upload_uuid_is_404_upload_not_found() {
    let (s, nar, _) = open_upload();
    let ghost = uuid::Uuid::now_v7().to_string();
    expect_err(
        &s,
        &put_part_h(&s, &ghost, "1", &nar.bytes, &[]),
        404,
        "upload_not_found",
    );
    expect_err(&s, &upload_status(&s, &ghost), 404, "upload_not_found");
    expect_err(&s, &complete(&s, &ghost, 1), 404, "upload_not_found");
    let r = call(
        &s,
        "DELETE",
        &format!("/_api/v1/uploads/{ghost}"),
        Some(&s.admin_token),
        &[],
        Body::None,
    );
    expect_err(&s, &r, 404, "upload_not_found");
}

#[test]
fn parts_after_commit_are_409_upload_closed() {
    let (s, nar, id) = open_upload();
    put_part(&s, &id, 1, &nar.bytes);
    assert_eq!(complete(&s, &id, 1).status, 200);
    let r = put_part_h(&s, &id, "1", b"late", &[]);
    expect_err(&s, &r, 409, "upload_closed");
    let r = call(
        &s,
        "DELETE",
        &format!("/_api/v1/uploads/{id}"),
        Some(&s.admin_token),
        &[],
        Body::None,
    );
    expect_err(&s, &r, 409, "upload_closed");
    assert_eq!(
        narinfo(&s, "c", &nar.path, Some(&s.admin_token)).status,
        200
    );
}

#[test]
fn any_content_type_is_accepted_for_parts() {
    let (s, nar, id) = open_upload();
    let r = put_part_h(&s, &id, "1", &nar.bytes, &["Content-Type: text/plain"]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(complete(&s, &id, 1).status, 200);
}

#[test]
fn parts_after_a_part_found_wrong_are_refused_until_it_is_replaced() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let nar = Nar::new("verdict-early", 300_000);
    let zst = zstd::encode_all(&nar.bytes[..], 3).unwrap();
    let pieces = split(&zst, 2);
    let id = start_upload(&s, "c", &nar, "zstd");
    // Part 1 is not zstd: the background fold finds it at once.
    put_part(&s, &id, 1, b"this is not a zstd frame at all, just words");
    let mut refused = None;
    for _ in 0..100 {
        let r = put_part_h(&s, &id, "3", b"later bytes", &[]);
        if r.status != 200 {
            refused = Some(r);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let r = refused.expect("a part after the failed one was never refused");
    let body = expect_err(&s, &r, 422, "part_after_verdict");
    assert_eq!(body["failed_part"], 1, "{body}");
    // Replacing the wrong part is allowed and cures the upload.
    put_part(&s, &id, 1, &pieces[0]);
    put_part(&s, &id, 2, &pieces[1]);
    let r = complete(&s, &id, 2);
    assert_eq!(r.status, 200, "{}", r.text());
}
