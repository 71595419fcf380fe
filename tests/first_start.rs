//! What a person sees on the first start: hints that use ferry's own
//! commands, and logs without terminal colour codes when stderr is a file
//! (the journal, a log file).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn first_start_hints_use_ferry_and_logs_to_a_file_have_no_colour() {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let port = common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("FERRY_LOG", "info")
        .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&err)
        .unwrap_or_default()
        .contains("ferry is serving")
    {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let stdout = std::fs::read_to_string(&out).unwrap();
    for hint in [
        "ferry login home http://",
        "ferry cache create home:main",
        "ferry push home:main",
        "ferry use home:main",
    ] {
        assert!(stdout.contains(hint), "{hint:?} not in:\n{stdout}");
    }
    assert!(!stdout.contains("curl"), "{stdout}");
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert!(
        !stderr.contains('\x1b'),
        "colour codes in a log file: {stderr:?}"
    );
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line_definition() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completions", shell]);
        for sub in ["serve", "push", "watch-store", "token"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let man = run(&["man"]);
    assert!(man.contains(".TH ferry 1"), "{man}");
    assert!(
        man.contains("watch\\-store") || man.contains("watch-store"),
        "{man}"
    );
    // bash itself accepts the script.
    let script = run(&["completions", "bash"]);
    let status = Command::new("bash")
        .args(["-n", "-c", &script])
        .status()
        .unwrap();
    assert!(status.success(), "bash -n refused the completion script");
}
