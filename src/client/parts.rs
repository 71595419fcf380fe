//! The bytes of one upload: `nix-store --dump PATH` through a zstd encoder,
//! cut into parts of an exact size.
//!
//! A NAR dump is deterministic and so is zstd at a fixed level with one
//! thread, so dumping again after a crash gives the same parts: a resumed
//! push re-creates them and checks each against the blake3 the server
//! acknowledged.

use std::io::{self, Read};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ClientError, Result};

/// zstd level used for every part (fixed, so re-dumps are byte-identical).
pub const ZSTD_LEVEL: i32 = 3;

/// Reads the next part: exactly `size` bytes, fewer only at the end of the
/// stream, `None` once nothing is left.
pub fn read_part<R: Read>(r: &mut R, size: usize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; size];
    let mut filled = 0;
    while filled < size {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(k) => filled += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    if filled == 0 {
        return Ok(None);
    }
    buf.truncate(filled);
    Ok(Some(buf))
}

/// Starts `nix-store --dump PATH`: the process and its output.
pub fn dump(path: &str) -> Result<(Child, ChildStdout)> {
    let mut child = Command::new("nix-store")
        .arg("--dump")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            ClientError::Nix(format!(
                "cannot run `nix-store --dump` (is Nix on PATH?): {e}"
            ))
        })?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| ClientError::Nix("`nix-store --dump` has no stdout".into()))?;
    Ok((child, stdout))
}

/// Waits for a dump read to its end and checks that it succeeded (a NAR
/// cut short by a failed dump must not be taken for the whole).
pub fn dump_succeeded(child: &mut Child, path: &str) -> Result<()> {
    let status = child
        .wait()
        .map_err(|e| ClientError::Nix(format!("nix-store --dump: {e}")))?;
    if !status.success() {
        return Err(ClientError::Nix(format!(
            "`nix-store --dump {path}` failed ({status})"
        )));
    }
    Ok(())
}

/// Counts the bytes read through it (NAR bytes, for progress).
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.count.fetch_add(k as u64, Ordering::Relaxed);
        Ok(k)
    }
}

/// A running `nix-store --dump`, compressed.
pub struct NarStream {
    child: Child,
    reader: zstd::stream::read::Encoder<'static, io::BufReader<Counting<ChildStdout>>>,
    path: String,
    /// NAR bytes read so far.
    pub nar_bytes: Arc<AtomicU64>,
}

impl NarStream {
    /// Starts `nix-store --dump PATH`.
    pub fn start(path: &str) -> Result<NarStream> {
        let (child, stdout) = dump(path)?;
        let nar_bytes = Arc::new(AtomicU64::new(0));
        let counting = Counting {
            inner: stdout,
            count: nar_bytes.clone(),
        };
        let reader = zstd::stream::read::Encoder::new(counting, ZSTD_LEVEL)
            .map_err(|e| ClientError::Nix(format!("cannot start zstd: {e}")))?;
        Ok(NarStream {
            child,
            reader,
            path: path.to_owned(),
            nar_bytes,
        })
    }

    /// The next compressed part, or `None` after the last one (and after
    /// checking that `nix-store` succeeded).
    pub fn next_part(&mut self, size: usize) -> Result<Option<Vec<u8>>> {
        let part = read_part(&mut self.reader, size)
            .map_err(|e| ClientError::Nix(format!("reading the NAR of {}: {e}", self.path)))?;
        if part.is_none() {
            dump_succeeded(&mut self.child, &self.path)?;
        }
        Ok(part)
    }
}

impl Drop for NarStream {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most 7 bytes per call.
    struct Dribble<'a>(&'a [u8]);
    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let k = buf.len().min(7).min(self.0.len());
            buf[..k].copy_from_slice(&self.0[..k]);
            self.0 = &self.0[k..];
            Ok(k)
        }
    }

    #[test]
    fn parts_have_exact_sizes_and_rejoin() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        for size in [1, 64, 100, 999, 1000, 4096] {
            let mut r = Dribble(&data);
            let mut parts = vec![];
            while let Some(p) = read_part(&mut r, size).unwrap() {
                parts.push(p);
            }
            let n = data.len().div_ceil(size);
            assert_eq!(parts.len(), n, "size {size}");
            assert!(parts[..n - 1].iter().all(|p| p.len() == size));
            assert_eq!(parts.concat(), data);
        }
        assert_eq!(read_part(&mut Dribble(&[]), 10).unwrap(), None);
    }

    #[test]
    fn zstd_at_fixed_level_is_deterministic() {
        let data = b"ferry ".repeat(50_000);
        let a = zstd::stream::encode_all(&data[..], ZSTD_LEVEL).unwrap();
        let mut enc = zstd::stream::read::Encoder::new(Dribble(&data), ZSTD_LEVEL).unwrap();
        let mut b = vec![];
        while let Some(p) = read_part(&mut enc, 100).unwrap() {
            b.extend(p);
        }
        assert_eq!(a, b);
    }
}
