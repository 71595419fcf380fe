//! `POST /caches/{cache}/batch`: many small NARs in one request, each
//! verified and published on its own, with a result per path.

use ferry::auth::Operation;

use super::common::InProcess;
use super::*;

/// One record: the header line (the create body plus `size`) and the bytes.
fn record(nar: &Nar, compression: &str, references: &[&str], bytes: &[u8]) -> Vec<u8> {
    let mut header = nar.create_body(compression, references);
    header["size"] = json!(bytes.len());
    let mut out = header.to_string().into_bytes();
    out.push(b'\n');
    out.extend_from_slice(bytes);
    out
}

/// `POST /caches/{cache}/batch` with `body`.
fn batch(s: &InProcess, cache: &str, token: Option<&str>, body: Vec<u8>) -> HttpResponse {
    call(
        s,
        "POST",
        &format!("/_api/v1/caches/{cache}/batch"),
        token,
        &["Content-Type: application/octet-stream"],
        Body::Bytes(body),
    )
}

/// A record's result says it failed with `code`, its message naming `needle`.
fn assert_refused(r: &Value, code: &str, needle: &str) {
    assert_eq!(r["state"], "failed", "{r}");
    assert_eq!(r["error"]["error"], code, "{r}");
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{r}");
}

fn results(r: &HttpResponse) -> Vec<Value> {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["results"].as_array().unwrap().clone()
}

#[test]
fn a_batch_publishes_each_path_on_its_own() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let a = Nar::new("batch-a", 3000);
    let b = Nar::new("batch-b", 2000);
    let c = Nar::new("batch-c", 1000);
    let d = Nar::new("batch-d", 5000);
    let lying = Nar {
        path: b.path.clone(),
        bytes: b.bytes.clone(),
        hash: a.hash,
    };
    let mut body = record(&a, "zstd", &[], &a.zst());
    body.extend(record(&lying, "zstd", &[], &b.zst()));
    body.extend(record(&c, "none", &[&b.path], &c.bytes));
    body.extend(b"\n");
    body.extend(record(&d, "none", &[&a.path, &d.path], &d.bytes));
    let r = batch(&s, "c", Some(&s.admin_token), body);
    let res = results(&r);
    assert_eq!(res.len(), 4, "{res:?}");
    let paths: Vec<&str> = res
        .iter()
        .map(|r| r["store_path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, [&a.path, &b.path, &c.path, &d.path]);

    assert_eq!(res[0]["state"], "committed", "{}", res[0]);
    assert!(
        res[0]["narinfo_url"]
            .as_str()
            .unwrap()
            .ends_with(".narinfo")
    );
    assert_eq!(res[1]["state"], "failed");
    assert_eq!(res[1]["status"], 422);
    assert_eq!(res[1]["error"]["error"], "nar_hash_mismatch", "{}", res[1]);
    assert_eq!(res[2]["state"], "failed");
    assert_eq!(res[2]["status"], 424);
    assert_eq!(res[2]["error"]["error"], "reference_not_published");
    assert_eq!(res[2]["error"]["reference"], b.path.as_str());
    assert_eq!(res[3]["state"], "committed", "{}", res[3]);

    assert_eq!(narinfo_ok(&s, "c", &a.path).nar_hash, a.hash);
    let info = narinfo_ok(&s, "c", &d.path);
    assert_eq!(info.nar_hash, d.hash);
    assert_eq!(info.references.len(), 2);
    for gone in [&b.path, &c.path] {
        assert_eq!(narinfo(&s, "c", gone, Some(&s.admin_token)).status, 404);
    }
    // The NAR served is the one sent.
    let text = narinfo(&s, "c", &d.path, Some(&s.admin_token)).text();
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    let file = get(&s, &format!("/c/{url}"), Some(&s.admin_token));
    assert_eq!(file.status, 200);
    assert_eq!(zstd::decode_all(&file.body[..]).unwrap(), d.bytes);
    // Nothing is left open, failed records included.
    let open = get(&s, "/_api/v1/caches/c/uploads", Some(&s.admin_token));
    assert_eq!(open.json()["uploads"], json!([]), "{}", open.text());
}

#[test]
fn a_batch_sent_again_finds_its_paths_committed() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let nars: Vec<Nar> = (0..5)
        .map(|i| Nar::new(&format!("again-{i}"), 700 * i + 1))
        .collect();
    let body: Vec<u8> = nars
        .iter()
        .flat_map(|n| record(n, "zstd", &[], &n.zst()))
        .collect();
    let first = results(&batch(&s, "c", Some(&s.admin_token), body.clone()));
    assert!(
        first.iter().all(|r| r["narinfo_url"].is_string()),
        "{first:?}"
    );
    let again = results(&batch(&s, "c", Some(&s.admin_token), body));
    for (r, n) in again.iter().zip(&nars) {
        assert_eq!(r["state"], "committed");
        assert!(r.get("narinfo_url").is_none(), "{r}");
        assert_eq!(r["nar_hash"].as_str().unwrap(), n.hash.to_string());
    }
}

#[test]
fn a_broken_batch_body_gets_a_clear_error() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let a = Nar::new("frame-a", 900);
    let tok = Some(s.admin_token.as_str());

    let mut no_size = a.create_body("none", &[]).to_string().into_bytes();
    no_size.push(b'\n');
    no_size.extend_from_slice(&a.bytes);
    let e = expect_err(&s, &batch(&s, "c", tok, no_size), 400, "bad_request");
    assert!(e["message"].as_str().unwrap().contains("\"size\""), "{e}");

    let mut short = record(&a, "none", &[], &a.bytes);
    short.truncate(short.len() - 10);
    let e = expect_err(&s, &batch(&s, "c", tok, short), 400, "bad_request");
    assert!(e["message"].as_str().unwrap().contains("record 1"), "{e}");

    let e = expect_err(
        &s,
        &batch(&s, "c", tok, b"not json\n".to_vec()),
        400,
        "bad_request",
    );
    assert!(e["message"].as_str().unwrap().contains("JSON"), "{e}");

    let mut huge = a.create_body("none", &[]);
    huge["size"] = json!(1u64 << 40);
    let body = format!("{huge}\n").into_bytes();
    expect_err(&s, &batch(&s, "c", tok, body), 413, "part_too_large");

    // A record's own fields are checked like a create request: that record
    // fails, the batch goes on.
    let b = Nar::new("frame-b", 500);
    let mut odd = a.create_body("none", &[]);
    odd["colour"] = json!("blue");
    odd["size"] = json!(a.bytes.len());
    let mut body = format!("{odd}\n").into_bytes();
    body.extend_from_slice(&a.bytes);
    body.extend(record(&b, "none", &[], &b.bytes));
    let res = results(&batch(&s, "c", tok, body));
    assert_refused(&res[0], "bad_request", "colour");
    assert_eq!(res[1]["state"], "committed");

    // Chunked uploads need their manifest: not in a batch.
    let c = Nar::new("frame-c", 700);
    let res = results(&batch(&s, "c", tok, record(&c, "chunked", &[], &c.zst())));
    assert_refused(&res[0], "bad_request", "zstd");

    // An empty body is an empty batch.
    assert_eq!(results(&batch(&s, "c", tok, vec![])).len(), 0);
}

#[test]
fn a_batch_needs_the_push_right() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let a = Nar::new("right-a", 900);
    let body = record(&a, "none", &[], &a.bytes);
    let reader = s.mint(
        &[(Operation::Pull, "c")],
        std::time::Duration::from_secs(600),
    );
    expect_err(
        &s,
        &batch(&s, "c", Some(&reader), body.clone()),
        403,
        "forbidden",
    );
    let r = batch(&s, "c", None, body);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(narinfo(&s, "c", &a.path, Some(&s.admin_token)).status, 404);
}
