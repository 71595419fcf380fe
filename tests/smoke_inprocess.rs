//! Minimal check that the in-process server starts and answers.
mod common;

#[test]
fn healthz_answers() {
    let s = common::InProcess::start();
    let r = common::http_request(
        "GET",
        &format!("{}/healthz", s.url),
        &[],
        common::Body::None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
}
