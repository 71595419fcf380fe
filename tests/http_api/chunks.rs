//! Chunked uploads (`compression: "chunked"`): the manifest endpoint
//! `POST /uploads/{id}/chunks`, frames of only the chunks the server lacks,
//! publishing a NAR assembled from sent, held and repeated frames, and who
//! is told that a chunk is held.

use ferry::auth::Operation;
use ferry::client::chunk::{self, Chunk, ChunkSizes};

use super::common::InProcess;
use super::*;

/// Small chunks, so that test NARs of a few hundred KiB have dozens.
const SIZES: ChunkSizes = ChunkSizes::around(4096);

fn chunks_of(bytes: &[u8]) -> Vec<Chunk> {
    chunk::chunks(std::io::Cursor::new(bytes.to_vec()), SIZES, 3, 2)
        .collect::<std::io::Result<_>>()
        .unwrap()
}

fn decls(chunks: &[Chunk]) -> Vec<Value> {
    chunks
        .iter()
        .map(|c| json!({"blake3": c.entry.blake3, "size": c.entry.size, "csize": c.entry.csize}))
        .collect()
}

/// `POST /uploads/{id}/chunks` with `token`.
fn add_chunks(s: &InProcess, id: &str, token: &str, from: u64, chunks: &[Value]) -> HttpResponse {
    post_json(
        s,
        &format!("/_api/v1/uploads/{id}/chunks"),
        Some(token),
        &json!({"from": from, "chunks": chunks}),
    )
}

/// The indices a manifest answer says to send.
fn send_of(r: &HttpResponse) -> Vec<u64> {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["send"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// Starts a chunked upload of `nar` in `cache` with `token`.
fn start_chunked(s: &InProcess, cache: &str, token: &str, nar: &Nar) -> String {
    let r = start_upload_with(s, cache, token, &nar.create_body("chunked", &[]));
    assert_eq!(r.status, 201, "start: {}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

/// Puts the frames of `send` in `parts` parts of whole frames (as `ferry
/// push` packs them) with `token`; returns how many parts went.
fn put_frames(
    s: &InProcess,
    id: &str,
    token: &str,
    chunks: &[Chunk],
    send: &[u64],
    parts: usize,
) -> u32 {
    let frames: Vec<&[u8]> = send
        .iter()
        .map(|&i| &chunks[i as usize].frame[..])
        .collect();
    if frames.is_empty() {
        return 0;
    }
    let per = frames.len().div_ceil(parts);
    let pieces: Vec<Vec<u8>> = frames.chunks(per).map(|f| f.concat()).collect();
    for (i, p) in pieces.iter().enumerate() {
        let r = call(
            s,
            "PUT",
            &format!("/_api/v1/uploads/{id}/parts/{}", i + 1),
            Some(token),
            &[],
            Body::Bytes(p.clone()),
        );
        assert_eq!(r.status, 200, "part {}: {}", i + 1, r.text());
    }
    pieces.len() as u32
}

fn complete_with(s: &InProcess, id: &str, token: &str, parts: u32) -> HttpResponse {
    post_json(
        s,
        &format!("/_api/v1/uploads/{id}/complete"),
        Some(token),
        &json!({"parts": parts}),
    )
}

/// The NAR file served for `nar` in `cache`, decompressed.
fn served_nar(s: &InProcess, cache: &str, nar: &Nar) -> Vec<u8> {
    let r = narinfo(s, cache, &nar.path, Some(&s.admin_token));
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    assert!(text.contains(&format!("NarHash: {}", nar.hash)), "{text}");
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    let file = get(s, &format!("/{cache}/{url}"), Some(&s.admin_token));
    assert_eq!(file.status, 200);
    let size: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("FileSize: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(file.body.len() as u64, size, "FileSize");
    assert!(
        text.contains(&format!("FileHash: {}", Sha256Hash::digest(&file.body))),
        "FileHash: {text}"
    );
    zstd::decode_all(&file.body[..]).unwrap()
}

/// A NAR of `bytes` as a regular file's contents.
fn nar_of(name: &str, contents: Vec<u8>) -> Nar {
    use ferry::nar::{Tree, write_nar};
    let tree = Tree::Regular {
        executable: false,
        contents,
    };
    Nar::from_bytes(&store_path(name), write_nar(&tree))
}

/// Pushes `nar` chunked with the admin token, the manifest in two
/// batches (the first 150 chunks, then the rest); returns how many frames
/// were sent and the chunks.
fn push_chunked(s: &InProcess, cache: &str, nar: &Nar) -> (usize, Vec<Chunk>) {
    let chunks = chunks_of(&nar.bytes);
    let id = start_chunked(s, cache, &s.admin_token, nar);
    let all = decls(&chunks);
    let split = all.len().min(150);
    let mut send = send_of(&add_chunks(s, &id, &s.admin_token, 0, &all[..split]));
    if split < all.len() {
        let rest = add_chunks(s, &id, &s.admin_token, split as u64, &all[split..]);
        send.extend(send_of(&rest));
    }
    let parts = put_frames(s, &id, &s.admin_token, &chunks, &send, 3);
    let r = complete_with(s, &id, &s.admin_token, parts);
    assert_eq!(r.status, 200, "complete: {}", r.text());
    assert_eq!(r.json()["state"], "committed");
    (send.len(), chunks)
}

#[test]
fn a_chunked_upload_publishes_the_nar_nix_reads() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let nar = nar_of("chunked-first", noise("chunked-first", 300_000));
    let (sent, chunks) = push_chunked(&s, "c", &nar);
    assert!(chunks.len() > 20, "small chunks: {}", chunks.len());
    assert_eq!(sent, chunks.len(), "a fresh server holds nothing");
    assert!(
        served_nar(&s, "c", &nar) == nar.bytes,
        "the NAR served is the NAR sent"
    );
    // Parts may also cut frames anywhere.
    let cut = nar_of("chunked-cut", noise("chunked-cut", 200_000));
    let chunks = chunks_of(&cut.bytes);
    let id = start_chunked(&s, "c", &s.admin_token, &cut);
    let send = send_of(&add_chunks(&s, &id, &s.admin_token, 0, &decls(&chunks)));
    let bytes: Vec<u8> = send
        .iter()
        .flat_map(|&i| chunks[i as usize].frame.clone())
        .collect();
    let pieces = split(&bytes, 7);
    for (i, p) in pieces.iter().enumerate() {
        put_part(&s, &id, i as u32 + 1, p);
    }
    let r = complete_with(&s, &id, &s.admin_token, pieces.len() as u32);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(served_nar(&s, "c", &cut) == cut.bytes);
    // A range across the parts' seams reads right.
    let ni = narinfo(&s, "c", &cut.path, Some(&s.admin_token)).text();
    let url = ni
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    let whole = get(&s, &format!("/c/{url}"), Some(&s.admin_token)).body;
    let r = call(
        &s,
        "GET",
        &format!("/c/{url}"),
        Some(&s.admin_token),
        &["Range: bytes=1000-150000"],
        Body::None,
    );
    assert_eq!(r.status, 206);
    assert!(r.body == whole[1000..=150_000], "ranged read across parts");
    let st = upload_status_of_path(&s, "c", &nar);
    assert_eq!(st, None, "nothing left open");
}

/// Uploads of `cache` still open for `nar`.
fn upload_status_of_path(s: &InProcess, cache: &str, nar: &Nar) -> Option<Value> {
    let r = get(
        s,
        &format!("/_api/v1/caches/{cache}/uploads"),
        Some(&s.admin_token),
    );
    assert_eq!(r.status, 200);
    r.json()["uploads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["store_path"] == nar.path.as_str())
        .cloned()
}

#[test]
fn a_changed_nar_sends_only_its_new_chunks_and_repeats_none() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    // 3 MB of 4 KiB chunks: a second push declares over 500 held chunks,
    // and repeats of its first manifest batch past the 500th key of its
    // second (the server looks them up 500 at a time).
    let base = noise("chunked-base", 3_000_000);
    let first = nar_of("chunked-v1", base.clone());
    push_chunked(&s, "c", &first);

    // A few scattered edits and an insertion that shifts everything after
    // it; the second half repeats the first (repeats are sent once).
    let mut changed = base.clone();
    for at in [50_000usize, 210_000, 330_000, 1_700_000, 2_900_000] {
        changed[at..at + 8].copy_from_slice(b"CHANGED!");
    }
    changed.splice(
        100_000..100_000,
        b"an insertion that shifts every later offset"
            .iter()
            .copied(),
    );
    let mut doubled = changed.clone();
    doubled.extend_from_slice(&changed);
    let second = nar_of("chunked-v2", doubled);
    let (sent, chunks) = push_chunked(&s, "c", &second);
    let distinct: std::collections::HashSet<&str> =
        chunks.iter().map(|c| c.entry.blake3.as_str()).collect();
    assert!(
        distinct.len() > 500 && chunks.len() > 650 + 150,
        "{} chunks, {} distinct",
        chunks.len(),
        distinct.len()
    );
    assert!(
        sent < chunks.len() / 5,
        "sent {sent} of {} chunks ({} distinct)",
        chunks.len(),
        distinct.len()
    );
    assert!(sent >= 4, "the edited chunks went: {sent}");
    assert!(served_nar(&s, "c", &second) == second.bytes);
    assert!(served_nar(&s, "c", &first) == first.bytes);

    // The second NAR's file points into the first's blobs: deleting the
    // first path and collecting keeps what the second still uses.
    let r = call(
        &s,
        "DELETE",
        &format!("/_api/v1/caches/c/paths/{}", first.hash_part()),
        Some(&s.admin_token),
        &[],
        Body::None,
    );
    assert!(r.status < 300, "{}", r.text());
    // `ferry gc` against the server's own engine (SQLite, or PostgreSQL
    // when the suite runs on it).
    let config = s.data_dir.path().join("gc.toml");
    let mut text = format!("data-dir = {:?}\n", s.data_dir.path());
    if let Some(url) = &s.database_url {
        text.push_str(&format!("database-url = {url:?}\n"));
    }
    std::fs::write(&config, text).unwrap();
    let gc = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["gc", "--config"])
        .arg(&config)
        .env("FERRY_LOG", "warn")
        .output()
        .unwrap();
    assert!(gc.status.success(), "{gc:?}");
    assert_eq!(
        narinfo(&s, "c", &first.path, Some(&s.admin_token)).status,
        404
    );
    assert!(
        served_nar(&s, "c", &second) == second.bytes,
        "kept after GC"
    );
}

#[test]
fn a_chunk_held_only_in_a_private_cache_is_offered_only_to_its_readers() {
    let s = InProcess::start();
    create_cache(&s, "secret", false);
    create_cache(&s, "other", false);
    let nar = nar_of("chunked-secret", noise("chunked-secret", 200_000));
    push_chunked(&s, "secret", &nar);
    let chunks = chunks_of(&nar.bytes);
    let all: Vec<u64> = (0..chunks.len() as u64).collect();
    // Another path with the same contents, pushed to another cache.
    let copy = Nar::from_bytes(&store_path("chunked-copy"), nar.bytes.clone());

    // A token that may push to "other" but not read "secret": every chunk
    // must be sent, as if the server held none.
    let outsider = s.mint(&[(Operation::Push, "other")], TEN_MIN_CHUNKS);
    let id = start_chunked(&s, "other", &outsider, &copy);
    let send = send_of(&add_chunks(&s, &id, &outsider, 0, &decls(&chunks)));
    assert_eq!(send, all, "an outsider learns nothing of the private cache");
    let parts = put_frames(&s, &id, &outsider, &chunks, &send, 2);
    let r = complete_with(&s, &id, &outsider, parts);
    assert_eq!(r.status, 200, "{}", r.text());

    // A reader of "secret" sends only what is new: a NAR with the same
    // contents and a few bytes more (another NarHash, so no NAR link).
    let reader = s.mint(
        &[(Operation::Push, "other"), (Operation::Pull, "secret")],
        TEN_MIN_CHUNKS,
    );
    let mut longer = noise("chunked-secret", 200_000);
    longer.extend_from_slice(b"and a tail");
    let third = nar_of("chunked-third", longer);
    let third_chunks = chunks_of(&third.bytes);
    let id = start_chunked(&s, "other", &reader, &third);
    let send = send_of(&add_chunks(&s, &id, &reader, 0, &decls(&third_chunks)));
    assert!(
        !send.is_empty() && send.len() <= 2,
        "a reader sends only the changed tail: {send:?} of {}",
        third_chunks.len()
    );
    let parts = put_frames(&s, &id, &reader, &third_chunks, &send, 1);
    let r = complete_with(&s, &id, &reader, parts);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(served_nar(&s, "other", &third) == third.bytes);

    // Every chunk held: no parts at all. (The declared NarHash is another
    // NAR's here, so verification reads every held frame and refuses it.)
    let liar = Nar {
        hash: third.hash,
        ..Nar::from_bytes(&store_path("chunked-all-held"), nar.bytes.clone())
    };
    let id = start_chunked(&s, "other", &reader, &liar);
    let send = send_of(&add_chunks(&s, &id, &reader, 0, &decls(&chunks)));
    assert!(send.is_empty(), "every chunk is held: {send:?}");
    let r = complete_with(&s, &id, &reader, 0);
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["error"], "nar_hash_mismatch", "{}", r.text());

    // Public caches' chunks are offered to anyone.
    create_cache(&s, "open", true);
    let public = nar_of("chunked-public", noise("chunked-public", 150_000));
    push_chunked(&s, "open", &public);
    let mut more = noise("chunked-public", 150_000);
    more.extend_from_slice(b"and a tail");
    let again = nar_of("chunked-public-more", more);
    let again_chunks = chunks_of(&again.bytes);
    let id = start_chunked(&s, "other", &outsider, &again);
    let send = send_of(&add_chunks(&s, &id, &outsider, 0, &decls(&again_chunks)));
    assert!(
        send.len() <= 2,
        "public chunks are held for anyone: {send:?} of {}",
        again_chunks.len()
    );
}

const TEN_MIN_CHUNKS: std::time::Duration = std::time::Duration::from_secs(600);

#[test]
fn manifest_batches_are_idempotent_and_in_order() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let nar = nar_of("chunked-batches", noise("chunked-batches", 120_000));
    let chunks = chunks_of(&nar.bytes);
    let d = decls(&chunks);
    let id = start_chunked(&s, "c", &s.admin_token, &nar);
    let k = d.len() / 2;
    let first = send_of(&add_chunks(&s, &id, &s.admin_token, 0, &d[..k]));
    assert_eq!(first, (0..k as u64).collect::<Vec<_>>());
    // The same batch again: the same answer.
    assert_eq!(
        send_of(&add_chunks(&s, &id, &s.admin_token, 0, &d[..k])),
        first
    );
    // A gap, or other chunks where some are recorded: 409 with where to go on.
    let gap = add_chunks(&s, &id, &s.admin_token, k as u64 + 1, &d[k + 1..]);
    assert_eq!(gap.status, 409, "{}", gap.text());
    assert_eq!(gap.json()["error"], "manifest_conflict");
    assert_eq!(gap.json()["expected_from"], k as u64);
    let mut other = d[..k].to_vec();
    other[0]["blake3"] = json!("0".repeat(64));
    let r = add_chunks(&s, &id, &s.admin_token, 0, &other);
    assert_eq!(r.status, 409, "{}", r.text());
    // The rest, then the upload completes.
    let rest = send_of(&add_chunks(&s, &id, &s.admin_token, k as u64, &d[k..]));
    let send: Vec<u64> = first.into_iter().chain(rest).collect();
    let parts = put_frames(&s, &id, &s.admin_token, &chunks, &send, 2);
    let r = complete_with(&s, &id, &s.admin_token, parts);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(served_nar(&s, "c", &nar) == nar.bytes);
}

#[test]
fn bad_declarations_are_refused_with_the_chunk_named() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let nar = nar_of("chunked-bad", noise("chunked-bad", 50_000));
    let chunks = chunks_of(&nar.bytes);
    let id = start_chunked(&s, "c", &s.admin_token, &nar);
    let mut d = decls(&chunks);
    d[1]["blake3"] = json!("XYZ");
    let r = add_chunks(&s, &id, &s.admin_token, 0, &d);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["message"].as_str().unwrap().contains("chunk 1"),
        "{}",
        r.text()
    );
    let mut d = decls(&chunks);
    d[0]["size"] = json!(0);
    assert_eq!(add_chunks(&s, &id, &s.admin_token, 0, &d).status, 400);
    // More bytes than the declared NarSize.
    let mut d = decls(&chunks);
    d.extend(decls(&chunks));
    let r = add_chunks(&s, &id, &s.admin_token, 0, &d);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("nar_size"), "{}", r.text());
    // Not a chunked upload.
    let plain = start_upload(&s, "c", &nar_of("chunked-plain", vec![1; 10]), "zstd");
    let r = add_chunks(&s, &plain, &s.admin_token, 0, &decls(&chunks));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("chunked"), "{}", r.text());
}

#[test]
fn a_frame_that_is_not_its_chunk_fails_the_upload() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let nar = nar_of("chunked-liar", noise("chunked-liar", 60_000));
    let mut chunks = chunks_of(&nar.bytes);
    let id = start_chunked(&s, "c", &s.admin_token, &nar);
    let send = send_of(&add_chunks(&s, &id, &s.admin_token, 0, &decls(&chunks)));
    // Chunk 2's frame carries other bytes of the same size.
    let size = chunks[2].entry.size as usize;
    let other = zstd::bulk::compress(&vec![7u8; size], 3).unwrap();
    // (Its size differs from the declared csize too: the frames are cut
    // where the manifest says, so chunk 2 is judged on wrong bytes.)
    chunks[2].frame = other;
    let parts = put_frames(&s, &id, &s.admin_token, &chunks, &send, 2);
    let r = complete_with(&s, &id, &s.admin_token, parts);
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_compression", "{}", r.text());
    assert!(r.text().contains("chunk 2"), "{}", r.text());
    assert_eq!(upload_status(&s, &id).json()["state"], "failed");
}
