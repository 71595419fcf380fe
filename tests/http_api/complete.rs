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

/// zstd of `data` with a content checksum, as the zstd CLI writes it.
fn zstd_checked(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = zstd::stream::write::Encoder::new(vec![], 3).unwrap();
    enc.include_checksum(true).unwrap();
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[test]
fn zstd_cut_before_its_frame_ends_is_422_even_with_every_nar_byte() {
    let s = server();
    let nar = Nar::new("cut-frame", 5000);
    let zst = zstd_checked(&nar.bytes);
    // Without its 4-byte checksum the frame never ends, though every NAR
    // byte decodes: the stored .nar.zst would break every reader.
    let (id, r) = send_wrong(&s, &nar, &zst[..zst.len() - 4], "zstd");
    let body = expect_err(&s, &r, 422, "invalid_compression");
    assert!(
        body["message"].as_str().unwrap().contains("frame"),
        "{body}"
    );
    assert_failed_then_recoverable(&s, &id, &r, &nar);
}

#[test]
fn bytes_after_the_last_zstd_frame_are_422() {
    let s = server();
    let nar = Nar::new("after-frame", 5000);
    let mut sent = zstd_checked(&nar.bytes);
    sent.extend_from_within(..5);
    let (id, r) = send_wrong(&s, &nar, &sent, "zstd");
    expect_err(&s, &r, 422, "invalid_compression");
    assert_failed_then_recoverable(&s, &id, &r, &nar);
}

#[test]
fn two_uploads_of_one_path_first_writer_wins_and_the_narinfo_never_changes() {
    let s = server();
    let first = Nar::new("contested", 3000);
    let second = Nar::from_bytes(&first.path, Nar::new("contested-other", 3000).bytes);
    // Both start before either publishes.
    let ids: Vec<String> = [&first, &second]
        .iter()
        .map(|n| start_upload(&s, "c", n, "none"))
        .collect();
    for (id, nar) in ids.iter().zip([&first, &second]) {
        put_part(&s, id, 1, &nar.bytes);
    }
    assert_eq!(complete(&s, &ids[0], 1).status, 200);
    let before = narinfo(&s, "c", &first.path, Some(&s.admin_token)).text();
    // The later upload is verified, then finds the path taken: it is
    // settled without touching what is served.
    let r = complete(&s, &ids[1], 1);
    assert_eq!(r.status, 200, "{}", r.text());
    let after = narinfo(&s, "c", &first.path, Some(&s.admin_token)).text();
    assert_eq!(before, after, "a served narinfo changed");
    assert_eq!(narinfo_ok(&s, "c", &first.path).nar_hash, first.hash);
    // A third try answers with the published NarHash at once.
    let r = start_upload_with(&s, "c", &s.admin_token, &second.create_body("none", &[]));
    assert_eq!(r.json()["nar_hash"], first.hash.to_string());
}

#[test]
fn two_uploads_of_one_path_completed_at_once_publish_exactly_one() {
    let s = server();
    let nars = [
        Nar::new("race", 200_000),
        Nar::from_bytes(&store_path("race"), Nar::new("race-other", 200_000).bytes),
    ];
    let ids: Vec<String> = nars
        .iter()
        .map(|n| start_upload(&s, "c", n, "none"))
        .collect();
    for (id, nar) in ids.iter().zip(&nars) {
        put_part(&s, id, 1, &nar.bytes);
    }
    let answers: Vec<u16> = std::thread::scope(|t| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| t.spawn(|| complete(&s, id, 1).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(answers, [200, 200]);
    let served = narinfo_ok(&s, "c", &nars[0].path);
    let winner = nars.iter().find(|n| n.hash == served.nar_hash);
    let winner = winner.expect("the served NarHash is one of the two");
    let nar = get(&s, &format!("/c/{}", served.url), Some(&s.admin_token));
    let bytes = zstd::decode_all(&nar.body[..]).unwrap();
    assert_eq!(bytes, winner.bytes);
}

#[test]
fn a_part_whose_file_changed_on_disk_is_sent_again_not_judged() {
    let s = server();
    let nar = Nar::new("changed-on-disk", 200_000);
    let pieces = split(&nar.zst(), 2);
    let id = start_upload(&s, "c", &nar, "zstd");
    // Part 2 first: nothing folds it until part 1 is there.
    put_part(&s, &id, 2, &pieces[1]);
    // The disk hands back other bytes than those acknowledged (not zstd).
    let file = s.data_dir.path().join("uploads").join(&id).join("2.part");
    std::fs::write(&file, vec![0x42; pieces[1].len()]).unwrap();
    put_part(&s, &id, 1, &pieces[0]);
    // Not a verdict on the client's bytes: the part is asked for again.
    let r = complete(&s, &id, 2);
    let body = expect_err(&s, &r, 422, "missing_parts");
    assert_eq!(body["missing"], json!([2]), "{body}");
    put_part(&s, &id, 2, &pieces[1]);
    let r = complete(&s, &id, 2);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(narinfo_ok(&s, "c", &nar.path).nar_hash, nar.hash);
}
