//! The CI recipes in `examples/ci/` do what they say: a long-lived token
//! narrowed offline to one cache, push only, two hours, pushes a build's
//! closure; and the post-build hook queues built paths that its drain
//! pushes with `ferry push --stdin`.

mod common;

use std::path::Path;
use std::process::Command;

use common::client::FerryClient;
use common::*;

#[test]
fn a_narrowed_ci_token_pushes_and_the_post_build_hook_queue_drains() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), free_port());
    let admin = server.admin_token.clone().expect("admin token");
    let setup = FerryClient::new();
    setup.ok(&["login", "home", &server.url, &admin]);
    setup.ok(&["cache", "create", "home:c"]);

    // The CI job: narrow, log in with the narrowed token, push.
    let ci = FerryClient::new();
    let job_token = ci
        .ok(&[
            "token",
            "attenuate",
            &admin,
            "--cache",
            "c",
            "--ops",
            "push",
            "--expires",
            "2h",
        ])
        .trim()
        .to_owned();
    ci.ok(&["login", "home", &server.url, &job_token, "--set-default"]);
    let built = build_closure(
        &ClosureSpec::new("ci-recipe")
            .salt(&unique_salt())
            .random("leaf", 200_000),
    );
    ci.ok(&["push", "home:c", &built.top]);
    for info in path_info(&[built.top.as_str()], true) {
        served::check_served_path(&server.url, "c", &admin, &info).unwrap();
    }

    // The post-build hook: Nix calls it with OUT_PATHS; the drain pushes.
    let hook = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ci/post-build-hook.sh");
    let queue_dir = tempfile::tempdir().unwrap();
    let queue = queue_dir.path().join("queue/paths");
    let other = build_closure(
        &ClosureSpec::new("ci-hook")
            .salt(&unique_salt())
            .random("leaf", 100_000),
    );
    let status = Command::new(&hook)
        .env("FERRY_QUEUE", &queue)
        .env("OUT_PATHS", other.paths.join(" "))
        .status()
        .unwrap();
    assert!(status.success());
    let queued = std::fs::read_to_string(&queue).unwrap();
    assert_eq!(queued.lines().count(), other.paths.len(), "{queued}");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_ferry"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = ci
        .cmd(&[])
        .env("FERRY_QUEUE", &queue)
        .env("PATH", path)
        .output_of(&hook, &["--drain", "home:c"]);
    assert!(
        out.status.success(),
        "drain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!queue.exists() || std::fs::read_to_string(&queue).unwrap().is_empty());
    let refs: Vec<&str> = other.paths.iter().map(String::as_str).collect();
    for info in path_info(&refs, false) {
        served::check_served_path(&server.url, "c", &admin, &info).unwrap();
    }
}

/// Runs `program` with the environment a `Command` was given.
trait OutputOf {
    fn output_of(&mut self, program: &Path, args: &[&str]) -> std::process::Output;
}

impl OutputOf for Command {
    fn output_of(&mut self, program: &Path, args: &[&str]) -> std::process::Output {
        let mut c = Command::new(program);
        c.args(args);
        for (k, v) in self.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.output().unwrap()
    }
}
