//! NARs for the benchmarks: one regular file of generated contents,
//! zstd-compressed at the level `ferry push` uses, made as a stream (no
//! NAR is held whole) into a file or a buffer.
//!
//! Two kinds of contents: random bytes (incompressible: zstd stores them
//! raw) and text-like lines of words from a 1024-word vocabulary, which
//! zstd level 3 shrinks about 3.4×.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::Digest;

/// What the file inside the NAR holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Random,
    Text,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Random => "random",
            Kind::Text => "text-like",
        }
    }
}

/// A NAR made by [`to_file`] or [`to_vec`].
pub struct Made {
    /// `sha256:<nix32>` of the uncompressed NAR.
    pub nar_hash: String,
    pub nar_size: u64,
    pub zst_size: u64,
    /// Time spent in the zstd encoder (what the client's compression costs).
    pub zstd_time: Duration,
}

/// splitmix64: fast, and its output is incompressible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Fills buffers with contents of one [`Kind`].
struct Contents {
    kind: Kind,
    rng: Rng,
    words: Vec<Vec<u8>>,
    /// Text generated but not handed out yet.
    pending: Vec<u8>,
}

impl Contents {
    fn new(kind: Kind, seed: u64) -> Contents {
        let mut rng = Rng(seed);
        let words = (0..1024)
            .map(|_| {
                let len = 2 + rng.next() % 11;
                (0..len).map(|_| b'a' + (rng.next() % 26) as u8).collect()
            })
            .collect();
        Contents {
            kind,
            rng,
            words,
            pending: vec![],
        }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        match self.kind {
            Kind::Random => {
                for chunk in buf.chunks_mut(8) {
                    let v = self.rng.next().to_le_bytes();
                    chunk.copy_from_slice(&v[..chunk.len()]);
                }
            }
            Kind::Text => {
                while self.pending.len() < buf.len() {
                    let n = 3 + self.rng.next() % 12;
                    for i in 0..n {
                        let w = (self.rng.next() % self.words.len() as u64) as usize;
                        self.pending.extend_from_slice(&self.words[w]);
                        self.pending.push(if i + 1 == n { b'\n' } else { b' ' });
                    }
                }
                buf.copy_from_slice(&self.pending[..buf.len()]);
                self.pending.drain(..buf.len());
            }
        }
    }
}

fn nar_string(w: &mut Vec<u8>, s: &[u8]) {
    w.extend_from_slice(&(s.len() as u64).to_le_bytes());
    w.extend_from_slice(s);
    w.extend_from_slice(&[0u8; 8][..(8 - s.len() % 8) % 8]);
}

/// Streams a NAR of one regular file of `size` bytes of `kind` contents
/// through SHA-256 and a zstd encoder writing to `out`.
fn make<W: Write>(out: W, kind: Kind, size: u64, seed: u64) -> (Made, W) {
    let level = ferry::client::parts::ZSTD_LEVEL;
    let mut enc = zstd::stream::write::Encoder::new(out, level).expect("zstd");
    let mut sha = sha2::Sha256::new();
    let mut zstd_time = Duration::ZERO;
    let mut put = |bytes: &[u8], enc: &mut zstd::stream::write::Encoder<'_, W>| {
        sha.update(bytes);
        let t = Instant::now();
        enc.write_all(bytes).expect("compress");
        zstd_time += t.elapsed();
    };
    let mut header = vec![];
    for s in ["nix-archive-1", "(", "type", "regular", "contents"] {
        nar_string(&mut header, s.as_bytes());
    }
    header.extend_from_slice(&size.to_le_bytes());
    put(&header, &mut enc);
    let mut contents = Contents::new(kind, seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        contents.fill(&mut buf[..n]);
        put(&buf[..n], &mut enc);
        left -= n as u64;
    }
    let mut tail = vec![0u8; ((8 - size % 8) % 8) as usize];
    nar_string(&mut tail, b")");
    put(&tail, &mut enc);
    let t = Instant::now();
    let out = enc.finish().expect("zstd finish");
    zstd_time += t.elapsed();
    let nar_size = header.len() as u64 + size + tail.len() as u64;
    let digest: [u8; 32] = sha.finalize().into();
    let made = Made {
        nar_hash: ferry::nar::Sha256Hash(digest).to_string(),
        nar_size,
        zst_size: 0,
        zstd_time,
    };
    (made, out)
}

/// Writes the zstd-compressed NAR to `path`.
pub fn to_file(path: &Path, kind: Kind, size: u64, seed: u64) -> Made {
    let file = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(path).expect("create nar"),
    );
    let (mut made, mut file) = make(file, kind, size, seed);
    file.flush().expect("write nar");
    made.zst_size = std::fs::metadata(path).expect("nar").len();
    made
}

/// The zstd-compressed NAR in memory (for small NARs).
pub fn to_vec(kind: Kind, size: u64, seed: u64) -> (Made, Vec<u8>) {
    let (mut made, bytes) = make(Vec::new(), kind, size, seed);
    made.zst_size = bytes.len() as u64;
    (made, bytes)
}

/// A valid store path whose hash part encodes `n` (and `tag`, so runs and
/// benchmarks do not collide): `/nix/store/<32 nix32 chars>-<name>`.
pub fn store_path(tag: u64, n: u64, name: &str) -> String {
    const NIX32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut hash = String::new();
    for v in [tag as u128, n as u128] {
        for i in (0..16).rev() {
            hash.push(NIX32[((v >> (i * 5)) & 31) as usize] as char);
        }
    }
    format!("/nix/store/{hash}-{name}")
}
