//! Multi-user Nix: a real `nix-daemon` (Debian's nix-bin, run as root with
//! its own config directory and socket) and an untrusted user.
//!
//! Proves that `ferry use` as that user writes nothing and says what root
//! must run; that what it says works: after `ferry use --system` (and a
//! daemon restart) the user realises a path from a *private* ferry cache
//! through the daemon, with the signature checked (a wrong key makes the
//! same request fail); and that a nix.conf which is a symlink
//! (home-manager, NixOS) is never replaced.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::client::FerryClient;
use common::*;

const USER: &str = "ferry-untrusted";

const DAEMON_CONF: &str = "build-users-group =\n\
sandbox = false\n\
trusted-users = root\n\
substituters =\n\
require-sigs = true\n\
experimental-features = nix-command\n\
narinfo-cache-negative-ttl = 0\n\
narinfo-cache-positive-ttl = 0\n";

/// `nix-daemon` as root, reading `conf_dir/nix.conf`, listening on `socket`.
struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    fn start(conf_dir: &Path, socket: &Path) -> Daemon {
        let _ = std::fs::remove_file(socket);
        let child = Command::new(require_tool("nix-daemon"))
            .env_remove("NIX_CONFIG")
            .env("NIX_CONF_DIR", conf_dir)
            .env("NIX_DAEMON_SOCKET_PATH", socket)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nix-daemon");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "nix-daemon made no socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon {
            child,
            socket: socket.to_owned(),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The untrusted user (made once per machine) as (uid, gid).
fn untrusted_user() -> (u32, u32) {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, USER]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    if id("-u").is_none() {
        run_ok(Command::new(require_tool("useradd")).args([
            "--system",
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
            USER,
        ]));
    }
    (
        id("-u").expect("uid of the test user"),
        id("-g").expect("gid"),
    )
}

/// The machine as the untrusted user sees it.
struct Machine {
    base: tempfile::TempDir,
    uid: u32,
    gid: u32,
}

impl Machine {
    fn conf_dir(&self) -> PathBuf {
        self.base.path().join("etc-nix")
    }
    fn socket(&self) -> PathBuf {
        self.base.path().join("daemon.sock")
    }
    fn home(&self) -> PathBuf {
        self.base.path().join("home")
    }
    /// The daemon's (and every user's) view of the system Nix config.
    fn system_env(&self, c: &mut Command) {
        c.env_remove("NIX_CONFIG")
            .env("NIX_CONF_DIR", self.conf_dir())
            .env("NIX_DAEMON_SOCKET_PATH", self.socket());
    }
    /// `program ARGS` as the untrusted user, with a clean environment.
    fn as_user(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(require_tool("setpriv"));
        c.args([
            "--reuid",
            &self.uid.to_string(),
            "--regid",
            &self.gid.to_string(),
            "--clear-groups",
            "--",
        ])
        .arg(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", self.home())
        .env("USER", USER)
        .env("XDG_CONFIG_HOME", self.home().join(".config"))
        .env("XDG_STATE_HOME", self.home().join(".local/state"))
        .env("XDG_CACHE_HOME", self.home().join(".cache"))
        .env("FERRY_LOG", "warn");
        self.system_env(&mut c);
        c
    }
    fn ferry_as_user(&self, args: &[&str]) -> Command {
        self.as_user(Path::new(env!("CARGO_BIN_EXE_ferry")), args)
    }
    /// The user asks the daemon for `path` (substitution only: nothing
    /// here can build it).
    fn realise(&self, path: &str) -> Output {
        let out = self
            .as_user(&require_tool("nix-store"), &["--realise", path])
            .output()
            .expect("run nix-store as the user");
        eprintln!(
            "user realise {path}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// Runs `c`, asserts it succeeds (`ok`) or fails, returns (stdout, stderr).
fn output(c: &mut Command, ok: bool) -> (String, String) {
    let out = c.output().expect("spawn");
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    let said = if ok { "failed" } else { "should have failed" };
    assert_eq!(out.status.success(), ok, "{c:?} {said}:\n{o}\n{e}");
    (o, e)
}

fn output_ok(c: &mut Command) -> (String, String) {
    output(c, true)
}

fn output_err(c: &mut Command) -> (String, String) {
    output(c, false)
}

#[test]
fn untrusted_user_substitutes_from_private_cache_after_system_use() {
    let me = Command::new("id").arg("-u").output().expect("id");
    assert_eq!(
        String::from_utf8_lossy(&me.stdout).trim(),
        "0",
        "this test starts nix-daemon and a user of its own: run it as root (CI does)"
    );
    let (uid, gid) = untrusted_user();

    // A private cache holding a fresh path, which then leaves the store.
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), free_port());
    let admin = server.admin_token.clone().expect("admin token");
    let root = FerryClient::new();
    root.ok(&["login", "home", &server.url, &admin]);
    root.ok(&["cache", "create", "home:priv"]);
    let closure = build_closure(
        &ClosureSpec::new("daemon-use")
            .random("daemon-blob", 200_000)
            .salt(&unique_salt()),
    );
    root.ok(&["push", "home:priv", &closure.top]);
    let hash = hash_part(&closure.top);
    let anon = http_request(
        "GET",
        &format!("{}/priv/{hash}.narinfo", server.url),
        &[],
        Body::None,
    );
    assert!(
        anon.status == 401 || anon.status == 404,
        "the cache must be private: {}",
        anon.status
    );
    run_ok(nix_cmd("nix-store").arg("--delete").args(&closure.paths));
    assert!(!Path::new(&closure.top).exists(), "deleted from the store");

    // The machine: system config, daemon, and the user's home.
    let m = Machine {
        base: tempfile::tempdir().unwrap(),
        uid,
        gid,
    };
    std::fs::set_permissions(m.base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(m.conf_dir()).unwrap();
    std::fs::write(m.conf_dir().join("nix.conf"), DAEMON_CONF).unwrap();
    std::fs::create_dir_all(m.home().join(".config/nix")).unwrap();
    // The user's nix.conf is home-manager's: a symlink into "the store".
    let hm_target = m.base.path().join("hm-nix.conf");
    std::fs::write(&hm_target, "# managed by home-manager\n").unwrap();
    std::os::unix::fs::symlink(&hm_target, m.home().join(".config/nix/nix.conf")).unwrap();
    run_ok(Command::new("chown").args(["-R", &format!("{uid}:{gid}"), m.home().to_str().unwrap()]));
    let mut daemon = Daemon::start(&m.conf_dir(), &m.socket());

    // The user logs in with a pull token, offline settings cached.
    let data_dir = data.path().to_str().unwrap();
    let user_token = String::from_utf8(run_ok(Command::new(env!("CARGO_BIN_EXE_ferry")).args([
        "token",
        "mint",
        "--data-dir",
        data_dir,
        "--sub",
        "user",
        "--validity",
        "1d",
        "--pull",
        "priv",
    ])))
    .unwrap()
    .trim()
    .to_owned();
    output_ok(&mut m.ferry_as_user(&["login", "home", &server.url, &user_token]));
    output_ok(&mut m.ferry_as_user(&["cache", "info", "home:priv"]));

    // Before anything: the daemon has no substituter.
    assert!(!m.realise(&closure.top).status.success());

    // Plain `ferry use` as the untrusted user: nothing written, advice.
    let (_, err) = output_err(&mut m.ferry_as_user(&["use", "home:priv"]));
    eprintln!("ferry use as {USER}:\n{err}");
    assert!(
        err.contains("nix-daemon") && err.contains("trusted-users"),
        "{err}"
    );
    assert!(err.contains(USER), "names the user: {err}");
    let sudo_line = err
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("sudo "))
        .unwrap_or_else(|| panic!("no `sudo …` line in:\n{err}"));
    assert!(sudo_line.contains("use --system home:priv"), "{sudo_line}");
    let link = m.home().join(".config/nix/nix.conf");
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(
        std::fs::read_to_string(&hm_target).unwrap(),
        "# managed by home-manager\n"
    );
    assert!(!m.home().join(".config/nix/netrc").exists());

    // Root runs what it said (the daemon restart is done by this test:
    // there is no systemd here).
    let words: Vec<&str> = sudo_line
        .split_whitespace()
        .filter(|w| *w != "--restart-daemon")
        .collect();
    let mut cmd = Command::new(words[0]);
    cmd.args(&words[1..]).env("FERRY_LOG", "warn");
    m.system_env(&mut cmd);
    let (_, said) = output_ok(&mut cmd);
    assert!(
        said.contains("restart"),
        "tells to restart the daemon: {said}"
    );
    let conf = std::fs::read_to_string(m.conf_dir().join("nix.conf")).unwrap();
    assert!(
        conf.starts_with(DAEMON_CONF),
        "kept what was there:\n{conf}"
    );
    assert!(
        conf.contains(&format!("extra-substituters = {}/priv", server.url)),
        "{conf}"
    );
    let netrc = m.conf_dir().join("netrc");
    assert!(conf.contains(&format!("netrc-file = {}", netrc.display())));
    assert_eq!(
        std::fs::read_to_string(&netrc).unwrap(),
        format!("machine 127.0.0.1 login token password {user_token}\n"),
        "the token of the config root was pointed at"
    );
    assert_eq!(
        std::fs::metadata(&netrc).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // With a key that did not sign the path, the daemon refuses it.
    let keys = tempfile::tempdir().unwrap();
    let (sk, pk) = (keys.path().join("sk"), keys.path().join("pk"));
    run_ok(nix_cmd("nix-store").args([
        "--generate-binary-cache-key",
        "priv-1",
        sk.to_str().unwrap(),
        pk.to_str().unwrap(),
    ]));
    let good_key = conf
        .lines()
        .find_map(|l| l.strip_prefix("extra-trusted-public-keys = "))
        .expect("key line")
        .to_owned();
    let wrong = conf.replace(&good_key, std::fs::read_to_string(&pk).unwrap().trim());
    std::fs::write(m.conf_dir().join("nix.conf"), &wrong).unwrap();
    drop(daemon);
    daemon = Daemon::start(&m.conf_dir(), &m.socket());
    let refused = m.realise(&closure.top);
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr)
                .contains("is not signed by any of the keys"),
        "a path signed by another key must not be substituted"
    );
    assert!(!Path::new(&closure.top).exists());

    // With what `ferry use --system` wrote: the path comes from the
    // private cache, through the daemon, with its signature.
    std::fs::write(m.conf_dir().join("nix.conf"), &conf).unwrap();
    drop(daemon);
    let _daemon = Daemon::start(&m.conf_dir(), &m.socket());
    let out = m.realise(&closure.top);
    assert!(out.status.success(), "the user could not realise the path");
    assert!(Path::new(&closure.top).exists());
    for p in &closure.paths {
        assert!(Path::new(p).exists(), "{p} came with the closure");
    }
    let info = String::from_utf8(run_ok(nix_cmd("nix").args([
        "path-info",
        "--sigs",
        &closure.top,
    ])))
    .unwrap();
    let key_name = good_key.split(':').next().unwrap();
    assert!(
        info.contains(&format!("{key_name}:")),
        "signed by the cache: {info}"
    );

    // `--nixos` prints the configuration.nix lines, writes nothing.
    let (lines, _) = output_ok(&mut root.cmd(&["use", "home:priv", "--nixos"]));
    assert!(lines.contains(&format!(
        "nix.settings.substituters = [ \"{}/priv\" ];",
        server.url
    )));
    assert!(lines.contains(&format!(
        "nix.settings.trusted-public-keys = [ \"{good_key}\" ];"
    )));
    assert!(lines.contains("nix.settings.netrc-file"));
    assert!(!lines.contains(&admin), "no token in printed configuration");

    // A symlinked nix.conf is never replaced, as root either.
    let target = m.base.path().join("managed.conf");
    std::fs::write(&target, "# managed\n").unwrap();
    let link = m.base.path().join("link.conf");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let link_s = link.to_str().unwrap();
    let other_netrc = m.base.path().join("root-netrc");
    let (printed, err) = output_err(&mut root.cmd(&[
        "use",
        "home:priv",
        "--nix-conf",
        link_s,
        "--netrc",
        other_netrc.to_str().unwrap(),
    ]));
    assert!(err.contains("symlink"), "{err}");
    assert!(
        printed.contains("extra-substituters = ["),
        "home-manager lines: {printed}"
    );
    let (printed, err) =
        output_err(&mut root.cmd(&["use", "home:priv", "--system", "--nix-conf", link_s]));
    assert!(err.contains("symlink"), "{err}");
    assert!(
        printed.contains("nix.settings.substituters"),
        "NixOS lines: {printed}"
    );
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "# managed\n");
}
