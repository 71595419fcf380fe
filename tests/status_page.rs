//! The status page, `GET /`, and the JSON it polls, `GET /_api/v1/status`.
//!
//! A public cache, a private one the test token may pull from and push to,
//! and a private one it has no right on, each with a published path; an
//! upload left open with parts 1 and 3 of 3 received. The JSON is checked
//! over plain HTTP (anonymous, token, admin, bad tokens); the page is
//! driven in headless Chromium through chromedriver's W3C WebDriver
//! protocol (JSON over HTTP, sent with curl). A missing chromium or
//! chromedriver fails the test.
//!
//! `FERRY_WRITE_SCREENSHOT=1` also writes `docs/status-page.png`.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Body, InProcess, Nar, free_port, http_request, require_tool};
use ferry::auth::Operation;
use serde_json::{Value, json};

const PUBLIC: &str = "public-cache";
const MINE: &str = "team-private";
const OTHER: &str = "other-private";

fn call(s: &InProcess, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
    let auth = format!("Authorization: Bearer {token}");
    let body = if body.is_null() {
        Body::None
    } else {
        Body::Bytes(body.to_string().into_bytes())
    };
    let r = http_request(method, &format!("{}{path}", s.url), &[&auth], body);
    let json = if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    };
    (r.status, json)
}

/// Opens an upload of `nar` (plain parts) into `cache`; its URL path.
fn open_upload(s: &InProcess, cache: &str, token: &str, nar: &Nar) -> String {
    let body = json!({"store_path": nar.path, "nar_hash": nar.hash.to_string(),
                      "nar_size": nar.bytes.len(), "compression": "none"});
    let (status, r) = call(
        s,
        "POST",
        &format!("/_api/v1/caches/{cache}/uploads"),
        token,
        body,
    );
    assert_eq!(status, 201, "{r}");
    r["upload_url"].as_str().unwrap().to_owned()
}

fn put_part(s: &InProcess, url: &str, token: &str, n: u32, bytes: &[u8]) {
    let auth = format!("Authorization: Bearer {token}");
    let r = http_request(
        "PUT",
        &format!("{}{url}/parts/{n}", s.url),
        &[&auth],
        Body::Bytes(bytes.to_vec()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Publishes `nar` into `cache` in one part.
fn publish(s: &InProcess, cache: &str, token: &str, nar: &Nar) {
    let url = open_upload(s, cache, token, nar);
    put_part(s, &url, token, 1, &nar.bytes);
    let (status, r) = call(
        s,
        "POST",
        &format!("{url}/complete"),
        token,
        json!({"parts": 1}),
    );
    assert_eq!((status, &r["state"]), (200, &json!("committed")), "{r}");
}

struct Fixture {
    s: InProcess,
    /// Pull and push on `MINE` only.
    token: String,
    /// The upload left open in `MINE`, and its NAR's size.
    upload: String,
    upload_size: usize,
}

fn fixture() -> Fixture {
    let s = InProcess::start();
    let admin = s.admin_token.clone();
    for (name, public) in [(PUBLIC, true), (MINE, false), (OTHER, false)] {
        let (status, r) = call(
            &s,
            "POST",
            "/_api/v1/caches",
            &admin,
            json!({"name": name, "public": public}),
        );
        assert_eq!(status, 201, "{r}");
    }
    let token = s.mint(
        &[(Operation::Pull, MINE), (Operation::Push, MINE)],
        Duration::from_secs(3600),
    );
    publish(&s, PUBLIC, &admin, &Nar::new("in-public", 3000));
    publish(&s, OTHER, &admin, &Nar::new("in-other", 2000));
    publish(&s, MINE, &token, &Nar::new("in-mine", 5000));
    // Left in flight: parts 1 and 3 of 3 received, part 2 not.
    let nar = Nar::new("half-sent", 300_000);
    let url = open_upload(&s, MINE, &token, &nar);
    let third = nar.bytes.len() / 3;
    put_part(&s, &url, &token, 1, &nar.bytes[..third]);
    put_part(&s, &url, &token, 3, &nar.bytes[2 * third..]);
    // And one in the public cache, which anonymous visitors must not see.
    open_upload(&s, PUBLIC, &admin, &Nar::new("public-in-flight", 1000));
    // `ferry gc` beside the running server records its run.
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["gc", "--data-dir"])
        .arg(s.data_dir.path())
        .env("FERRY_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let upload = url.rsplit('/').next().unwrap().to_owned();
    Fixture {
        s,
        token,
        upload,
        upload_size: nar.bytes.len(),
    }
}

fn status_as(s: &InProcess, header: Option<&str>) -> (u16, Value, String) {
    let headers: Vec<&str> = header.into_iter().collect();
    let r = http_request(
        "GET",
        &format!("{}/_api/v1/status", s.url),
        &headers,
        Body::None,
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    (r.status, r.json(), r.text())
}

fn names(v: &Value, key: &str, field: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[field].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_json_shows_each_viewer_what_its_token_covers() {
    let f = fixture();
    let s = &f.s;

    let (status, anon, text) = status_as(s, None);
    assert_eq!(status, 200, "{text}");
    assert_eq!(anon["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(anon["token"], false);
    assert_eq!(names(&anon, "caches", "name"), [PUBLIC]);
    assert_eq!(anon["caches"][0]["paths"], 1);
    assert!(
        anon["caches"][0]["nar_bytes"].as_u64().unwrap() > 0,
        "{anon}"
    );
    assert!(
        anon["caches"][0]["last_push"].as_i64().unwrap() > 0,
        "{anon}"
    );
    assert_eq!(
        anon["uploads"],
        json!([]),
        "uploads are push-side information"
    );
    assert!(
        !text.contains("private"),
        "no private cache is named: {text}"
    );
    let gc = anon["last_gc"]
        .as_object()
        .expect("the gc run was recorded");
    assert_eq!(
        gc.keys().collect::<Vec<_>>(),
        ["at"],
        "anonymous: the time only"
    );

    let bearer = format!("Authorization: Bearer {}", f.token);
    let (status, mine, text) = status_as(s, Some(&bearer));
    assert_eq!(status, 200, "{text}");
    assert_eq!(mine["token"], true);
    assert_eq!(names(&mine, "caches", "name"), [PUBLIC, MINE]);
    assert!(!text.contains(OTHER), "{text}");
    assert_eq!(mine["caches"][1]["public"], false);
    assert_eq!(mine["caches"][1]["paths"], 1);
    let uploads = mine["uploads"].as_array().unwrap();
    assert_eq!(
        uploads.len(),
        1,
        "only uploads to caches it may push to: {mine}"
    );
    let u = &uploads[0];
    assert_eq!(u["id"], f.upload.as_str());
    assert_eq!((&u["cache"], &u["state"]), (&json!(MINE), &json!("open")));
    assert_eq!(u["parts_received"], 2);
    assert_eq!(u["parts_total"], Value::Null);
    assert_eq!(u["bytes_expected"], f.upload_size);
    let ns: Vec<u64> = u["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, [1, 3]);
    let sum: u64 = u["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["size"].as_u64().unwrap())
        .sum();
    assert_eq!(u["bytes_received"], sum);
    assert_eq!(mine["last_gc"]["bytes_freed"], 0, "{mine}");
    assert!(mine["last_gc"]["paths_expired"].is_u64(), "{mine}");

    // Basic auth, as from a netrc, works the same.
    let basic = format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("x:{}", f.token))
    );
    assert_eq!(
        names(&status_as(s, Some(&basic)).1, "caches", "name"),
        [PUBLIC, MINE]
    );

    let admin = format!("Authorization: Bearer {}", s.admin_token);
    let (_, all, _) = status_as(s, Some(&admin));
    assert_eq!(names(&all, "caches", "name"), [OTHER, PUBLIC, MINE]);
    assert_eq!(names(&all, "uploads", "cache"), [MINE, PUBLIC]);

    // A bad token is an error, not a quiet anonymous answer.
    let (status, bad, _) = status_as(s, Some("Authorization: Bearer not-a-token"));
    assert_eq!(
        (status, &bad["error"]),
        (401, &json!("token_invalid")),
        "{bad}"
    );
    let (status, r) = call(
        s,
        "POST",
        "/_api/v1/tokens/revoke",
        &s.admin_token,
        json!({"token": f.token}),
    );
    assert_eq!(status, 200, "{r}");
    let (status, revoked, _) = status_as(s, Some(&bearer));
    assert_eq!(
        (status, &revoked["error"]),
        (401, &json!("token_revoked")),
        "{revoked}"
    );
}

#[test]
fn the_page_is_static_html_with_a_strict_policy() {
    let s = InProcess::start();
    let r = http_request("GET", &format!("{}/", s.url), &[], Body::None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let csp = r.header("content-security-policy").unwrap();
    for directive in [
        "default-src 'none'",
        "connect-src 'self'",
        "form-action 'none'",
        "script-src 'sha256-",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    let page = r.text();
    assert!(
        page.contains("<input id=\"token\" name=\"token\""),
        "{page}"
    );
    assert!(
        !page.contains("src=") && !page.contains("href="),
        "no external assets"
    );
}

// ---- WebDriver -------------------------------------------------------

/// chromedriver and its browser session; both end on drop.
struct Driver {
    base: String,
    session: Option<String>,
    child: Child,
    /// Chromium's --user-data-dir, fresh for this run.
    profile: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const TIMEOUT: Duration = Duration::from_secs(20);

impl Driver {
    fn start() -> Driver {
        let driver = require_tool("chromedriver");
        let chromium = require_tool("chromium");
        // Debian's /usr/bin/chromium is a shell wrapper; drive the binary.
        let real = PathBuf::from("/usr/lib/chromium/chromium");
        let binary = if real.exists() { real } else { chromium };
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let mut d = Driver {
            base: format!("http://127.0.0.1:{port}"),
            session: None,
            child,
            profile,
        };
        wait_for("chromedriver to be ready", || {
            let r = common::try_http_request("GET", &format!("{}/status", d.base), &[], Body::None)
                .ok()?;
            (r.status == 200 && r.json()["value"]["ready"] == true).then_some(())
        });
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1100,700",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!("--user-data-dir={}", d.profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": binary, "args": args},
        }}});
        let r = d.post("/session", caps);
        d.session = Some(r["sessionId"].as_str().expect("a session id").to_owned());
        d
    }

    fn send(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = match &self.session {
            Some(id) if path != "/session" => format!("{}/session/{id}{path}", self.base),
            _ => format!("{}{path}", self.base),
        };
        let body = body.map_or(Body::None, |b| Body::Bytes(b.to_string().into_bytes()));
        let r = http_request(method, &url, &["Content-Type: application/json"], body);
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        r.json()["value"].clone()
    }

    fn post(&self, path: &str, body: Value) -> Value {
        self.send("POST", path, Some(body))
    }

    fn get(&self, path: &str) -> Value {
        self.send("GET", path, None)
    }

    fn script(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []}))
    }

    /// Ids of the elements matching a CSS selector.
    fn find_all(&self, css: &str) -> Vec<String> {
        let found = self.post("/elements", json!({"using": "css selector", "value": css}));
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e[ELEMENT].as_str().unwrap().to_owned())
            .collect()
    }

    fn text_of(&self, id: &str) -> String {
        self.get(&format!("/element/{id}/text"))
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until an element matching `css` shows text containing `want`.
    fn wait_text(&self, css: &str, want: &str) -> String {
        wait_for(&format!("{css} to show {want:?}"), || {
            self.find_all(css)
                .iter()
                .map(|e| self.text_of(e))
                .find(|t| t.contains(want))
        })
    }

    fn body_text(&self) -> String {
        self.script("return document.body.innerText")
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn type_into(&self, css: &str, text: &str) {
        let input = self.find_all(css);
        assert_eq!(input.len(), 1, "one {css}");
        self.post(
            &format!("/element/{}/value", input[0]),
            json!({"text": text}),
        );
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(id) = self.session.take() {
            let _ = common::try_http_request(
                "DELETE",
                &format!("{}/session/{id}", self.base),
                &[],
                Body::None,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it gives a value; panics after [`TIMEOUT`].
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const ENTER: &str = "\u{E007}";

#[test]
fn a_browser_sees_private_caches_and_uploads_once_a_token_is_entered() {
    let f = fixture();
    let d = Driver::start();
    let page = format!("{}/", f.s.url);
    d.post("/url", json!({"url": page}));

    // Anonymous: the public cache, nothing private, no uploads.
    d.wait_text(&format!("tr[data-cache=\"{PUBLIC}\"]"), PUBLIC);
    d.wait_text("#version", env!("CARGO_PKG_VERSION"));
    let text = d.body_text();
    assert!(!text.contains(MINE) && !text.contains(OTHER), "{text}");
    assert!(d.find_all(".upload").is_empty());

    // The token, typed and sent with Enter.
    d.type_into("input[name=token]", &format!("{}{ENTER}", f.token));
    let row = d.wait_text(&format!("tr[data-cache=\"{MINE}\"]"), MINE);
    assert!(row.contains("private"), "{row}");
    let paths = d.find_all(&format!("tr[data-cache=\"{MINE}\"] td.paths"));
    assert_eq!(d.text_of(&paths[0]), "1");
    let upload = d.wait_text(
        &format!(".upload[data-upload=\"{}\"]", f.upload),
        "2 parts received",
    );
    assert!(
        upload.contains("/nix/store/") && upload.contains("half-sent"),
        "{upload}"
    );
    assert!(
        upload.contains("#2 waiting"),
        "the missing part is shown: {upload}"
    );
    assert!(upload.contains("#1 ") && upload.contains("#3 "), "{upload}");
    assert!(
        upload.contains(" %"),
        "plain parts have a percentage: {upload}"
    );
    assert!(!d.body_text().contains(OTHER), "no right, no name");
    assert!(
        d.find_all(".upload").len() == 1,
        "not the public cache's upload"
    );
    d.wait_text("#gc", "0 B freed");

    // The token is in session storage, not in the URL, not in the field.
    let url = d.get("/url").as_str().unwrap().to_owned();
    assert_eq!(url, page, "the URL did not change");
    assert_eq!(
        d.script("return sessionStorage.getItem('ferry-token')"),
        json!(f.token)
    );
    assert_eq!(
        d.script("return document.querySelector('input[name=token]').value"),
        json!("")
    );

    if std::env::var_os("FERRY_WRITE_SCREENSHOT").is_some_and(|v| v == "1") {
        let png = d.get("/screenshot");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png");
        std::fs::write(&out, bytes).unwrap();
        eprintln!("wrote {}", out.display());
    }

    // "Forget token": back to what anyone sees.
    let forget = d.find_all("#forget");
    d.post(&format!("/element/{}/click", forget[0]), json!({}));
    wait_for("the private cache to go", || {
        (!d.body_text().contains(MINE)).then_some(())
    });
    assert_eq!(
        d.script("return sessionStorage.getItem('ferry-token')"),
        Value::Null
    );

    // A bad token: a readable message, and it is not kept.
    d.type_into("input[name=token]", &format!("not-a-token{ENTER}"));
    let error = d.wait_text("#error", "forgotten");
    assert!(error.contains("malformed"), "{error}");
    assert_eq!(
        d.script("return sessionStorage.getItem('ferry-token')"),
        Value::Null
    );
    d.wait_text(&format!("tr[data-cache=\"{PUBLIC}\"]"), PUBLIC);
    assert_eq!(d.get("/url").as_str().unwrap(), page);
}
