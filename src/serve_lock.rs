//! One `ferry serve` per data directory.
//!
//! Two servers on one data directory would each run garbage collection,
//! expire and resume uploads, and keep their own in-memory state (open
//! uploads, read times, revocations) of data the other changes. So
//! `ferry serve` takes an exclusive advisory lock (`flock(2)`, through
//! [`File::try_lock`]) on `<data-dir>/serve.lock` before it opens anything
//! else, and holds it for the life of the process. The kernel drops the
//! lock when the process ends, however it ends (SIGKILL, power loss), so a
//! lock is never left stale and no clean-up is needed.
//!
//! The holder writes its pid and, once bound, its listen address into the
//! file (`pid=…` and `listen=…` lines, after locking), so a second
//! `ferry serve` refuses with a message naming the running one. The file
//! itself stays in place: removing it could let a third server lock a new
//! file while a second still holds the old, unlinked one.
//!
//! The offline commands (`ferry gc`, `ferry token mint`, `ferry token
//! revoke`) do not take this lock: they work while a server runs, sharing
//! the database with it through SQLite's own locking.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The name of the lock file inside a data directory.
pub const FILE_NAME: &str = "serve.lock";

/// The held lock of a data directory; released when dropped (or when the
/// process ends).
#[derive(Debug)]
pub struct ServeLock {
    file: File,
    path: PathBuf,
}

/// Who holds a data directory, as written in its lock file.
#[derive(Debug, Default, PartialEq)]
pub struct Holder {
    pub pid: Option<u32>,
    pub listen: Option<String>,
}

impl Holder {
    /// Parses the lock file's `key=value` lines (unknown lines ignored).
    pub fn parse(text: &str) -> Holder {
        let mut h = Holder::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("pid", v)) => h.pid = v.trim().parse().ok(),
                Some(("listen", v)) if !v.trim().is_empty() => h.listen = Some(v.trim().into()),
                _ => {}
            }
        }
        h
    }

    fn describe(&self) -> String {
        let pid = match self.pid {
            Some(p) => format!("pid {p}"),
            None => "pid not yet recorded".into(),
        };
        match &self.listen {
            Some(l) => format!("{pid}, listening on {l}"),
            None => format!("{pid}, still starting"),
        }
    }
}

impl ServeLock {
    /// Takes the lock of `data_dir` (created if missing) without waiting,
    /// and records this process's pid in it. Fails, naming the holder,
    /// when another process holds it.
    pub fn acquire(data_dir: &Path) -> anyhow::Result<ServeLock> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
        let path = data_dir.join(FILE_NAME);
        // Not truncated on open: the holder's record must survive a
        // refused contender's open.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                anyhow::bail!(
                    "another ferry serve ({}) is using data dir {}: stop it first, \
                     or give this one another --data-dir",
                    Holder::parse(&text).describe(),
                    data_dir.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot lock {} (is the data dir on a file system without locks?)",
                        path.display()
                    )
                });
            }
        }
        let mut lock = ServeLock { file, path };
        lock.write(None)?;
        Ok(lock)
    }

    /// Records the address the server listens on, for a refused contender
    /// to name.
    pub fn record_listen(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        self.write(Some(addr))
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, listen: Option<SocketAddr>) -> anyhow::Result<()> {
        let mut text = format!("pid={}\n", std::process::id());
        if let Some(a) = listen {
            text.push_str(&format!("listen={a}\n"));
        }
        let f = &mut self.file;
        f.set_len(0)
            .and_then(|()| f.seek(SeekFrom::Start(0)))
            .and_then(|_| f.write_all(text.as_bytes()))
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_by_name_then_admitted_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = ServeLock::acquire(dir.path()).unwrap();
        first
            .record_listen("127.0.0.1:8080".parse().unwrap())
            .unwrap();
        let err = ServeLock::acquire(dir.path()).unwrap_err().to_string();
        let pid = std::process::id();
        assert!(
            err.contains(&format!("pid {pid}, listening on 127.0.0.1:8080")),
            "{err}"
        );
        assert!(err.contains("another --data-dir"), "{err}");
        drop(first);
        let again = ServeLock::acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(again.path()).unwrap();
        assert_eq!(Holder::parse(&text).pid, Some(pid));
    }

    #[test]
    fn parses_partial_records() {
        assert_eq!(Holder::parse(""), Holder::default());
        let h = Holder::parse("pid=12\nlisten=[::1]:80\nfuture=x\n");
        assert_eq!(h.pid, Some(12));
        assert_eq!(h.listen.as_deref(), Some("[::1]:80"));
    }
}
