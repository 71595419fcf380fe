//! NARs for the benchmarks: one regular file of generated contents,
//! zstd-compressed at the level `ferry push` uses, made as a stream (no
//! NAR is held whole) into a file or a buffer; or, uncompressed in memory,
//! a directory of many files of both kinds ([`mixed`]).
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
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
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

/// The NAR of the zstd file `zst` written plainly to `out` (what curl
/// scripts and tus clients send with `compression: none`).
pub fn decompress_file(zst: &Path, out: &Path) {
    let mut dec = zstd::stream::read::Decoder::new(std::fs::File::open(zst).expect("open nar"))
        .expect("zstd");
    let mut file = std::fs::File::create(out).expect("create nar");
    std::io::copy(&mut dec, &mut file).expect("decompress nar");
}

/// The zstd-compressed NAR in memory (for small NARs).
pub fn to_vec(kind: Kind, size: u64, seed: u64) -> (Made, Vec<u8>) {
    let (mut made, bytes) = make(Vec::new(), kind, size, seed);
    made.zst_size = bytes.len() as u64;
    (made, bytes)
}

/// `len` bytes of `kind` contents.
pub fn contents(kind: Kind, len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    Contents::new(kind, seed).fill(&mut out);
    out
}

/// A NAR of one directory of regular files holding `size` bytes of
/// contents in all, in memory, uncompressed: file sizes spread evenly on a
/// log scale from 1 KiB to 4 MiB, one file in three random (like
/// compressed media), the others text-like. Returns the NAR and its number
/// of files.
pub fn mixed(size: u64, seed: u64) -> (Vec<u8>, u64) {
    let mut rng = Rng(seed);
    let mut random = Contents::new(Kind::Random, seed ^ 0x5eed_0001);
    let mut text = Contents::new(Kind::Text, seed ^ 0x5eed_0002);
    let mut nar = Vec::with_capacity(size as usize + size as usize / 1000 + 4096);
    for s in ["nix-archive-1", "(", "type", "directory"] {
        nar_string(&mut nar, s.as_bytes());
    }
    let (mut left, mut files) = (size, 0);
    while left > 0 {
        let spread = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
        let len = ((1024.0 * 4096f64.powf(spread)) as u64).min(left);
        let name = format!("f{files:07}");
        for s in [
            "entry", "(", "name", &name, "node", "(", "type", "regular", "contents",
        ] {
            nar_string(&mut nar, s.as_bytes());
        }
        nar.extend_from_slice(&len.to_le_bytes());
        let start = nar.len();
        nar.resize(start + len as usize, 0);
        let kind = if rng.next().is_multiple_of(3) {
            &mut random
        } else {
            &mut text
        };
        kind.fill(&mut nar[start..]);
        nar.resize(nar.len() + ((8 - len % 8) % 8) as usize, 0);
        nar_string(&mut nar, b")");
        nar_string(&mut nar, b")");
        left -= len;
        files += 1;
    }
    nar_string(&mut nar, b")");
    (nar, files)
}

/// What [`changed`] did, for a report.
pub struct Change {
    /// Patches of 4–16 bytes.
    pub small: usize,
    /// Rewritten regions, each of `region_len` bytes.
    pub regions: usize,
    pub region_len: usize,
    /// Bytes overwritten in all.
    pub overwritten: usize,
    /// Bytes inserted, at `insert_at`.
    pub inserted: usize,
    pub insert_at: usize,
}

/// A new version of `original`: about 1 % of its bytes overwritten in
/// `edits` places, half of them small patches (a version string, a store
/// hash), half rewritten regions of fresh contents that carry the 1 %; and
/// 300 bytes inserted near the start, which shift every later offset.
pub fn changed(original: &[u8], edits: usize, seed: u64) -> (Vec<u8>, Change) {
    let mut rng = Rng(seed);
    let mut at = |len: usize| (rng.next() % (original.len() - len) as u64) as usize;
    let mut nar = original.to_vec();
    let small = (edits / 2).max(1);
    let regions = (edits - edits / 2).max(1);
    let region_len = original.len() / 100 / regions;
    let mut overwritten = 0;
    // Small patches, like a bumped version or a new store hash.
    for i in 0..small {
        let len = 4 + i % 13;
        let start = at(len);
        for (k, b) in nar[start..start + len].iter_mut().enumerate() {
            *b = b"0123456789abcdfghijklmnpqrsvwxyz"[(i * 7 + k * 13 + start) % 32];
        }
        overwritten += len;
    }
    // Rewritten regions, of fresh contents of either kind.
    for i in 0..regions {
        let start = at(region_len);
        let kind = if i.is_multiple_of(3) {
            Kind::Random
        } else {
            Kind::Text
        };
        let fresh = contents(kind, region_len, seed ^ ((i as u64 + 1) << 32));
        nar[start..start + region_len].copy_from_slice(&fresh);
        overwritten += region_len;
    }
    let insert_at = original.len() / 1000;
    let inserted = contents(Kind::Text, 300, seed ^ 0xadd);
    nar.splice(insert_at..insert_at, inserted.iter().copied());
    let change = Change {
        small,
        regions,
        region_len,
        overwritten,
        inserted: inserted.len(),
        insert_at,
    };
    (nar, change)
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
