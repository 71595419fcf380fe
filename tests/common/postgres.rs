//! Throwaway PostgreSQL clusters for tests: Debian's PostgreSQL 15 server
//! binaries, `initdb` in a temp dir (as the `postgres` system user: initdb
//! refuses root), its own port on 127.0.0.1 and a unix socket in the same
//! dir, trust authentication, durability switched off for speed. Nothing
//! is mocked: the server is the real one.
//!
//! [`PgCluster::start`] gives a cluster owned by the caller, stopped
//! (`pg_ctl stop -m immediate`) and removed on drop. [`shared`] gives the
//! one cluster of this test process, started on first use; a watchdog
//! shell tears it down within a second of the process exiting (statics
//! are never dropped), however it exits. [`PgCluster::new_database`]
//! creates a fresh database and returns its URL: one per server.
//!
//! `FERRY_TEST_DATABASE=postgres` makes [`super::InProcess`] servers keep
//! their metadata in a fresh database of the shared cluster (so any suite
//! of in-process tests runs on PostgreSQL); a test target whose name ends
//! in `_pg` (`http_api_pg`) does so without the variable.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::tools::free_port;

/// Where Debian puts the PostgreSQL 15 server binaries.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running throwaway cluster.
pub struct PgCluster {
    pub port: u16,
    /// Data dir and socket dir live under it.
    root: PathBuf,
    /// Set for an owned cluster: stopped and removed on drop.
    owned: bool,
    next_db: AtomicU64,
}

/// Whether in-process servers of this test process use PostgreSQL.
pub fn enabled() -> bool {
    std::env::var("FERRY_TEST_DATABASE").is_ok_and(|v| v == "postgres")
        || option_env!("CARGO_CRATE_NAME").is_some_and(|n| n.ends_with("_pg"))
}

/// The cluster shared by every test of this process.
pub fn shared() -> &'static PgCluster {
    static SHARED: OnceLock<PgCluster> = OnceLock::new();
    SHARED.get_or_init(|| {
        let c = PgCluster::start_inner(false);
        c.watch_parent();
        c
    })
}

fn bin(name: &str) -> PathBuf {
    let p = Path::new(PG_BIN).join(name);
    assert!(
        p.exists(),
        "{} is not installed (Debian's postgresql-15): run .ci/run",
        p.display()
    );
    p
}

/// Runs `cmd` as the `postgres` system user, panicking with its output on
/// failure.
fn as_postgres(program: &Path, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("runuser");
    assert!(
        out.status.success(),
        "{} {:?} failed: {}{}",
        program.display(),
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgCluster {
    /// Starts a cluster owned by the caller (stopped and removed on drop).
    pub fn start() -> PgCluster {
        PgCluster::start_inner(true)
    }

    fn start_inner(owned: bool) -> PgCluster {
        let (initdb, pg_ctl) = (bin("initdb"), bin("pg_ctl"));
        let root = tempfile::Builder::new()
            .prefix("ferry-pg-")
            .tempdir()
            .expect("tempdir")
            .keep();
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&root)
            .status()
            .expect("chown");
        assert!(chown.success(), "chown {} failed", root.display());
        let data = root.join("data");
        let data_s = data.to_str().expect("utf-8 path");
        as_postgres(
            &initdb,
            &[
                "-D",
                data_s,
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        let port = free_port();
        let opts = format!(
            "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=400 -c shared_buffers=32MB",
            root.display()
        );
        let log = root.join("server.log");
        as_postgres(
            &pg_ctl,
            &[
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                data_s,
                "-l",
                log.to_str().expect("utf-8 path"),
                "-o",
                &opts,
            ],
        );
        PgCluster {
            port,
            root,
            owned,
            next_db: AtomicU64::new(0),
        }
    }

    /// Stops the cluster and removes its files once this process is gone.
    /// The watchdog outlives this process by design: it is never waited for.
    #[allow(clippy::zombie_processes)]
    fn watch_parent(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             runuser -u postgres -- {pg_ctl} stop -m immediate -D {data} >/dev/null 2>&1; \
             rm -rf {root}",
            pid = std::process::id(),
            pg_ctl = bin("pg_ctl").display(),
            data = self.root.join("data").display(),
            root = self.root.display(),
        );
        Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the cluster's watchdog");
    }

    /// A libpq URL of database `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a fresh, empty database and returns its URL.
    pub fn new_database(&self) -> String {
        let name = format!(
            "ferry_{}_{}",
            std::process::id(),
            self.next_db.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new(bin("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg(&name)
            .output()
            .expect("createdb");
        assert!(
            out.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }

    /// Runs `sql` with psql against the database of `url`; returns stdout
    /// (unaligned, tuples only).
    pub fn psql(&self, url: &str, sql: &str) -> String {
        let out = Command::new(bin("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D"])
            .arg(self.root.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
