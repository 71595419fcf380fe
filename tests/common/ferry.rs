//! Starting ferry for tests: in-process on port 0 (fast, for HTTP tests)
//! or as the real `ferry serve` binary (for restarts and SIGKILL).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use ferry::auth::{self, Operation, TokenSpec};
use ferry::config::Config;
use ferry::service::{self, DataDir};

/// A ferry server running inside the test process.
pub struct InProcess {
    pub url: String,
    pub admin_token: String,
    pub data_dir: tempfile::TempDir,
    /// The PostgreSQL database holding the metadata; `None`: SQLite in the
    /// data dir.
    pub database_url: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    /// Starts a server with default settings and a fresh data dir.
    pub fn start() -> InProcess {
        Self::start_with(|_| {})
    }

    /// Starts a server after `tweak` adjusts the config. Its metadata is
    /// in a fresh PostgreSQL database when [`super::postgres::enabled`].
    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> InProcess {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = Config {
            data_dir: data_dir.path().to_owned(),
            database_url: super::postgres::enabled()
                .then(|| super::postgres::shared().new_database()),
            ..Config::default()
        };
        tweak(&mut cfg);
        let database_url = cfg.database_url.clone();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let opened = service::open(&cfg).expect("open");
                ready_tx
                    .send(opened.first_admin_token.clone().expect("first start"))
                    .expect("send");
                let shutdown = async {
                    let _ = rx.await;
                };
                ferry::server::run(listener, opened.state, shutdown)
                    .await
                    .expect("server");
            });
        });
        let admin_token = ready_rx.recv().expect("server did not start");
        InProcess {
            url,
            admin_token,
            data_dir,
            database_url,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// The server's metadata database, opened beside it.
    pub fn db(&self) -> ferry::db::Db {
        ferry::db::Db::open_configured(
            self.database_url.as_deref(),
            &self.data_dir.path().join("ferry.db"),
        )
        .expect("open the server's database")
    }

    /// Mints a token with the server's root key.
    pub fn mint(&self, rights: &[(Operation, &str)], validity: Duration) -> String {
        mint_in(self.data_dir.path(), rights, SystemTime::now() + validity)
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Mints a token from the root key in `data_dir`, expiring at `expires_at`.
pub fn mint_in(data_dir: &Path, rights: &[(Operation, &str)], expires_at: SystemTime) -> String {
    let (root, _) = service::root_key(&DataDir::new(data_dir)).expect("root key");
    let spec = TokenSpec {
        subject: "test".into(),
        rights: rights.iter().map(|(o, p)| (*o, p.to_string())).collect(),
        expires_at,
    };
    auth::mint(&root, &spec).expect("mint")
}

/// The real `ferry serve` binary on a data dir that outlives it.
pub struct ServerProcess {
    pub url: String,
    pub port: u16,
    pub data_dir: PathBuf,
    /// Printed at first start only.
    pub admin_token: Option<String>,
    child: Child,
}

impl ServerProcess {
    /// Starts `ferry serve --data-dir DIR --listen 127.0.0.1:PORT` and
    /// waits for `/healthz`.
    pub fn start(data_dir: &Path, port: u16) -> ServerProcess {
        Self::start_with_env(data_dir, port, &[])
    }

    /// [`ServerProcess::start`] with extra environment variables (such as
    /// `FERRY_CRASH_AT`).
    pub fn start_with_env(data_dir: &Path, port: u16, env: &[(&str, &str)]) -> ServerProcess {
        Self::start_with(data_dir, port, env, &[])
    }

    /// [`ServerProcess::start`] with extra environment variables and
    /// extra `ferry serve` arguments (such as `--config FILE`).
    pub fn start_with(
        data_dir: &Path,
        port: u16,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("FERRY_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ferry serve");
        let stdout = child.stdout.take().expect("stdout");
        // The admin token is the indented line after "Admin token".
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut token = None;
            while let Some(Ok(line)) = lines.next() {
                if token.is_none() && line.starts_with("Admin token") {
                    while let Some(Ok(l)) = lines.next() {
                        if !l.trim().is_empty() {
                            token = Some(l.trim().to_owned());
                            let _ = tx.send(token.clone());
                            break;
                        }
                    }
                }
            }
            let _ = tx.send(None);
        });
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if Command::new("curl")
                .args(["-sf", "-o", "/dev/null", &format!("{url}/healthz")])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("ferry serve exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "ferry serve did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let admin_token = rx.recv_timeout(Duration::from_millis(500)).ok().flatten();
        ServerProcess {
            url,
            port,
            data_dir: data_dir.to_owned(),
            admin_token,
            child,
        }
    }

    /// The server's process id (for `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the process to exit by itself (a crash
    /// point aborts it); its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL now, keeping the handle (waits for the process to go).
    pub fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL: no shutdown, no flushing.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
