//! One `ferry serve` per data dir, with the real binary: a second server
//! on the same dir is refused by name before it binds; `ferry gc`,
//! `ferry token mint` and `ferry token revoke` still work beside the
//! running one; once the first dies (SIGKILL), a new server starts.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ServerProcess, free_port};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// Runs `ferry ARGS` to its end (killed after 60 s: a server that was not
/// refused would run for ever).
fn run(args: &[&str], data_dir: &Path) -> Output {
    let mut child = Command::new(FERRY)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("FERRY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn second_server_is_refused_offline_commands_work_lock_dies_with_holder() {
    let dir = tempfile::tempdir().unwrap();
    let first = ServerProcess::start(dir.path(), free_port());

    let second_port = free_port();
    let listen = format!("127.0.0.1:{second_port}");
    let refused = run(&["serve", "--listen", &listen], dir.path());
    let out = text(&refused);
    assert!(!refused.status.success(), "{out}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!(
            "another ferry serve (pid {}, listening on 127.0.0.1:{})",
            first.pid(),
            first.port
        )),
        "{out}"
    );
    assert!(stderr.contains("another --data-dir"), "{out}");
    assert!(!stderr.contains("cannot listen"), "{out}");

    // The offline commands coordinate through SQLite, not the lock.
    let minted = run(
        &[
            "token",
            "mint",
            "--sub",
            "ci",
            "--validity",
            "1h",
            "--pull",
            "*",
        ],
        dir.path(),
    );
    assert!(minted.status.success(), "{}", text(&minted));
    let token = String::from_utf8_lossy(&minted.stdout).trim().to_owned();
    assert!(!token.is_empty(), "{}", text(&minted));
    let revoked = run(&["token", "revoke", &token], dir.path());
    assert!(revoked.status.success(), "{}", text(&revoked));
    let gc = run(&["gc"], dir.path());
    assert!(gc.status.success(), "{}", text(&gc));

    // The kernel drops the lock with its holder.
    first.kill9();
    let again = ServerProcess::start(dir.path(), second_port);
    let lock = std::fs::read_to_string(dir.path().join("serve.lock")).unwrap();
    assert!(
        lock.contains(&format!("pid={}", again.pid())),
        "lock file: {lock}"
    );
}
