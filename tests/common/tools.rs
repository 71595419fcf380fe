//! Finding external programs, picking ports, running commands with useful
//! panic messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Absolute path of program `name`, searched in `$PATH` and then in
/// `/usr/sbin`, `/sbin`, `/usr/bin`, `/bin` (nginx lives in `/usr/sbin`,
/// which a non-login `PATH` may lack). Panics when absent: a test never
/// passes by skipping.
pub fn require_tool(name: &str) -> PathBuf {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path_var).collect();
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        dirs.push(PathBuf::from(d));
    }
    for d in dirs {
        let p = d.join(name);
        if let Ok(md) = std::fs::metadata(&p) {
            use std::os::unix::fs::PermissionsExt;
            if md.is_file() && md.permissions().mode() & 0o111 != 0 {
                return p;
            }
        }
    }
    panic!(
        "{name} is not installed: run .ci/run (it installs nix-bin, nginx-light, b3sum, zstd, curl, chromium, chromium-driver)"
    );
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read
/// it, close). Racy by nature: servers started by the harness retry on
/// "address in use".
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// A string unique to this process and call: feed it to derivations as
/// `salt` so each test run builds new store paths.
pub fn unique_salt() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{}-{}", std::process::id(), t, n)
}

/// A failed command: what ran, its exit status and its output.
pub struct CmdFailure {
    pub command: String,
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for CmdFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "command failed ({}): {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.command, self.stdout, self.stderr
        )
    }
}

impl std::fmt::Display for CmdFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Human-readable rendering of a command line (for messages).
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run `cmd` to completion, capturing output; `Err` on spawn failure or a
/// non-zero exit.
pub fn run(cmd: &mut Command) -> Result<Output, CmdFailure> {
    let command = describe(cmd);
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command}: {e}"));
    if out.status.success() {
        Ok(out)
    } else {
        Err(CmdFailure {
            command,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// Run `cmd`, panic with its stderr when it fails, return its stdout.
pub fn run_ok(cmd: &mut Command) -> Vec<u8> {
    match run(cmd) {
        Ok(o) => o.stdout,
        Err(e) => panic!("{e:?}"),
    }
}

/// Files under `dir`, recursively, with their sizes (directories are not
/// listed, symlinks not followed; a missing `dir` has none).
pub fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = vec![];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if md.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push((p, md.len()));
            }
        }
    }
    out
}

/// Environment variable `name`, parsed; `None` when unset or unparsable.
pub fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// A campaign's seed: `name` from the environment (to replay a run), else
/// from the clock.
pub fn seed_from_env(name: &str) -> u64 {
    env_num(name).unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    })
}
