//! Chunk sizes for `ferry push`, picked by measurement (issue 17: only new
//! bytes cross the tunnel).
//!
//! A NAR-like buffer (a directory of files of 1 KiB–4 MiB, a third random,
//! the rest text-like: `support::nar::mixed`) is cut into content-defined
//! chunks with each candidate setting, then changed by about 1 %
//! (`support::nar::changed`): per GiB, 50 patches of 4–16 bytes and 50
//! rewritten regions that carry the 1 %, plus one insertion of 300 bytes
//! near the start, which shifts every later offset. The count of edits per
//! GiB, more than their total size, is what larger chunks pay for: each
//! edit costs about a chunk. For each candidate:
//!
//! - the manifest: chunks, and its size as JSON;
//! - a first push: the frames' total against one zstd -3 stream of the
//!   same NAR (what `ferry push` sends today). Compressing each chunk alone
//!   loses the matches across chunks, and over a tunnel bytes are time:
//!   goal ≤ 1.05 ×, the "no more than 5 % slower";
//! - a second push, of the changed NAR: the frames of the chunks the
//!   original lacks (repeats once) plus the new manifest, against the
//!   changed NAR as one zstd -3 stream: goal ≤ 5 %;
//! - speed, NAR MB/s through `chunk::chunks` (cut, blake3, zstd frames)
//!   against the same bytes as one zstd -3 stream with the same threads:
//!   one compressing thread against today's push (the zstd crate's stream
//!   encoder, in-process, as `parts::NarStream` uses it), `threads` against
//!   `zstd -3 -T<threads>` (the CLI, fed by a pipe): goal ≥ 0.95. Each
//!   figure and its reference alternate, best of `FERRY_BENCH_REPEATS`,
//!   so a busy moment on a shared machine tends to hit both; the load
//!   average is printed at the start and the end. Also: the manifest-only
//!   pass (cut and hash, no compression).
//!
//! The choice: the largest average that meets every goal. A smaller one
//! sends a little less on a second push, but its manifest grows (more rows
//! on the server, more to send on every push), and its first push
//! compresses worse and runs slower.
//!
//! Run: `cargo bench --bench chunking`. Knobs: `FERRY_BENCH_CHUNK_MIB`
//! (default 1024), `FERRY_BENCH_THREADS` (default: the cores),
//! `FERRY_BENCH_CHUNK_AVG_KIB=16,64,128,256,1024` (candidates; min = avg / 4,
//! max = 4 × avg), `FERRY_BENCH_CHUNK_EDITS=100` (scattered edits per GiB),
//! `FERRY_BENCH_REPEATS=2`.

mod support;

use std::collections::HashSet;
use std::io::{self, Cursor, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::client::chunk::{self, ChunkEntry, ChunkSizes};
use ferry::client::parts::ZSTD_LEVEL;
use support::nar;
use support::{at_least, at_most, mbps};

/// A second push's bytes: at most this share of today's.
const SENT_GOAL: f64 = 0.05;
/// A first push's bytes: frames against one stream, at most.
const FRAMES_GOAL: f64 = 1.05;
/// Speed against the same-threads reference, at least.
const SPEED_GOAL: f64 = 0.95;

/// What the bench runs with.
struct Setup {
    original: Arc<[u8]>,
    changed: Arc<[u8]>,
    threads: usize,
    repeats: usize,
}

/// The chunks of `nar` and how long making them took.
fn chunk_all(nar: &Arc<[u8]>, sizes: ChunkSizes, threads: usize) -> (Vec<ChunkEntry>, Duration) {
    let t = Instant::now();
    let entries = chunk::chunks(Cursor::new(nar.clone()), sizes, ZSTD_LEVEL, threads)
        .map(|c| c.expect("chunk").entry)
        .collect();
    (entries, t.elapsed())
}

/// How long the manifest-only pass takes.
fn manifest_only(nar: &Arc<[u8]>, sizes: ChunkSizes) -> Duration {
    let t = Instant::now();
    let mut n = 0;
    for id in chunk::manifest(Cursor::new(nar.clone()), sizes) {
        id.expect("cut");
        n += 1;
    }
    assert!(n > 0);
    t.elapsed()
}

/// Counts what is written to it.
struct CountingSink(u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Today's push: one zstd -3 stream on one thread, read from a `Read`.
/// Its size and time.
fn zstd_stream(nar: &Arc<[u8]>) -> (u64, Duration) {
    let t = Instant::now();
    let mut sink = CountingSink(0);
    zstd::stream::copy_encode(Cursor::new(nar.clone()), &mut sink, ZSTD_LEVEL).expect("zstd");
    (sink.0, t.elapsed())
}

/// `zstd -3 -T<threads>` (the CLI) over a pipe, or `None` without one.
fn zstd_cli(nar: &Arc<[u8]>, threads: usize) -> Option<Duration> {
    let t = Instant::now();
    let mut child = Command::new("zstd")
        .args(["-3", "-q", "-c", &format!("-T{threads}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let bytes = nar.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&bytes));
    writer.join().expect("pipe writer").expect("write to zstd");
    child.wait().ok()?.success().then(|| t.elapsed())
}

/// The shortest of `repeats` runs of `a` and of `b`, alternating.
fn best_of_pair(
    repeats: usize,
    mut a: impl FnMut() -> Duration,
    mut b: impl FnMut() -> Option<Duration>,
) -> (Duration, Option<Duration>) {
    let (mut best_a, mut best_b) = (Duration::MAX, None::<Duration>);
    for _ in 0..repeats {
        best_b = match (best_b, b()) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        best_a = best_a.min(a());
    }
    (best_a, best_b)
}

/// What one candidate measured.
struct Candidate {
    sizes: ChunkSizes,
    chunks: usize,
    manifest_json: u64,
    frames: u64,
    sent_frames: u64,
    changed_manifest_json: u64,
    /// One compressing thread, and today's push beside it.
    one: Duration,
    today: Duration,
    /// `threads` compressing threads, and `zstd -T` beside it.
    many: Duration,
    cli: Option<Duration>,
    manifest_only: Duration,
}

fn measure(sizes: ChunkSizes, s: &Setup) -> Candidate {
    let (entries, _) = chunk_all(&s.original, sizes, s.threads);
    let (changed_entries, _) = chunk_all(&s.changed, sizes, s.threads);
    let known: HashSet<&str> = entries.iter().map(|e| e.blake3.as_str()).collect();
    let mut sent = HashSet::new();
    let sent_frames = changed_entries
        .iter()
        .filter(|e| !known.contains(e.blake3.as_str()) && sent.insert(e.blake3.as_str()))
        .map(|e| e.csize)
        .sum();
    let json = |entries: &[ChunkEntry]| serde_json::to_vec(entries).expect("json").len() as u64;
    let (one, today) = best_of_pair(
        s.repeats,
        || chunk_all(&s.original, sizes, 1).1,
        || Some(zstd_stream(&s.original).1),
    );
    let (many, cli) = if s.threads > 1 {
        best_of_pair(
            s.repeats,
            || chunk_all(&s.original, sizes, s.threads).1,
            || zstd_cli(&s.original, s.threads),
        )
    } else {
        (one, None)
    };
    Candidate {
        sizes,
        chunks: entries.len(),
        manifest_json: json(&entries),
        frames: entries.iter().map(|e| e.csize).sum(),
        sent_frames,
        changed_manifest_json: json(&changed_entries),
        one,
        today: today.expect("today's push"),
        many,
        cli,
        manifest_only: manifest_only(&s.original, sizes),
    }
}

/// The bytes every candidate is measured against.
struct Reference {
    threads: usize,
    nar: u64,
    stream: u64,
    changed_stream: u64,
}

impl Candidate {
    /// A second push's bytes: new frames and the changed NAR's manifest.
    fn sent(&self) -> u64 {
        self.sent_frames + self.changed_manifest_json
    }

    /// The second push's bytes against the changed NAR as one stream.
    fn sent_share(&self, r: &Reference) -> f64 {
        self.sent() as f64 / r.changed_stream as f64
    }

    /// The first push's bytes against the NAR as one stream.
    fn frames_ratio(&self, r: &Reference) -> f64 {
        self.frames as f64 / r.stream as f64
    }

    /// One compressing thread against today's push.
    fn speed_ratio(&self) -> f64 {
        self.today.as_secs_f64() / self.one.as_secs_f64()
    }

    /// `threads` compressing threads against `zstd -T`.
    fn threads_ratio(&self) -> Option<f64> {
        self.cli
            .map(|cli| cli.as_secs_f64() / self.many.as_secs_f64())
    }

    /// The goals missed.
    fn missed(&self, r: &Reference) -> Vec<&'static str> {
        let mut missed = vec![];
        if self.sent_share(r) > SENT_GOAL {
            missed.push("second push");
        }
        if self.frames_ratio(r) > FRAMES_GOAL {
            missed.push("first push bytes");
        }
        if self.speed_ratio() < SPEED_GOAL {
            missed.push("speed, 1 thread");
        }
        if self.threads_ratio().is_some_and(|x| x < SPEED_GOAL) {
            missed.push(if r.threads == 2 {
                "speed, 2 threads"
            } else {
                "speed, threads"
            });
        }
        missed
    }
}

/// `16 KiB`, `1 MiB`.
fn kib(bytes: u32) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

fn setting(s: ChunkSizes) -> String {
    format!(
        "avg {} (min {}, max {})",
        kib(s.avg),
        kib(s.min),
        kib(s.max)
    )
}

fn mb(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

fn pct(x: f64) -> String {
    format!("{:.2} %", 100.0 * x)
}

fn report(c: &Candidate, r: &Reference) {
    println!("{}", setting(c.sizes));
    println!(
        "  manifest          {} chunks ({:.1} KiB mean), {} as JSON ({} of the zstd stream)",
        c.chunks,
        r.nar as f64 / c.chunks as f64 / 1024.0,
        mb(c.manifest_json),
        pct(c.manifest_json as f64 / r.stream as f64),
    );
    println!(
        "  first push        frames {} = {:.3} × one zstd -3 stream  {}",
        mb(c.frames),
        c.frames_ratio(r),
        at_most(c.frames_ratio(r), FRAMES_GOAL, "1.05"),
    );
    println!(
        "  second push       {} = {} of the changed NAR as one zstd -3 stream  {}  \
         (new frames {} = {}, manifest {})",
        mb(c.sent()),
        pct(c.sent_share(r)),
        at_most(c.sent_share(r), SENT_GOAL, "5 %"),
        mb(c.sent_frames),
        pct(c.sent_frames as f64 / r.changed_stream as f64),
        mb(c.changed_manifest_json),
    );
    println!(
        "  speed, 1 thread   {:.0} MB/s = {:.2} × today's push  {}  (one zstd -3 stream, \
         1 thread: {:.0} MB/s)",
        mbps(r.nar, c.one),
        c.speed_ratio(),
        at_least(c.speed_ratio(), SPEED_GOAL, "0.95"),
        mbps(r.nar, c.today),
    );
    if r.threads > 1 {
        let many = mbps(r.nar, c.many);
        let against = match (c.cli, c.threads_ratio()) {
            (Some(cli), Some(ratio)) => format!(
                "= {ratio:.2} × zstd -3 -T{}  {}  (zstd CLI: {:.0} MB/s)",
                r.threads,
                at_least(ratio, SPEED_GOAL, "0.95"),
                mbps(r.nar, cli),
            ),
            _ => "(no zstd CLI to compare with)".into(),
        };
        println!("  speed, {} threads  {many:.0} MB/s {against}", r.threads);
    }
    println!(
        "  manifest only     {:.0} MB/s (cut and blake3, 1 thread, no compression)",
        mbps(r.nar, c.manifest_only),
    );
}

/// One line per candidate: the figures the choice reads.
fn summary(candidates: &[Candidate], r: &Reference) {
    println!(
        "summary: avg, chunks, first push (× one stream), second push, speed (1 thread, × today's)"
    );
    for c in candidates {
        let missed = c.missed(r);
        println!(
            "  {:>8} {:>7} {:>7.3} × {:>7.2} % {:>6.2} ×   {}",
            kib(c.sizes.avg),
            c.chunks,
            c.frames_ratio(r),
            100.0 * c.sent_share(r),
            c.speed_ratio(),
            if missed.is_empty() {
                "every goal met".to_owned()
            } else {
                format!("MISSED: {}", missed.join(", "))
            },
        );
    }
}

/// The largest average that meets every goal; else the largest that meets
/// both byte goals (speed is the noisiest figure on a shared machine);
/// else the one whose second push sends least. With the reason, from the
/// figures.
fn choose<'a>(candidates: &'a [Candidate], r: &Reference) -> (&'a Candidate, String) {
    let largest = |ok: &dyn Fn(&Candidate) -> bool| {
        candidates
            .iter()
            .filter(|c| ok(c))
            .max_by_key(|c| c.sizes.avg)
    };
    let bytes_ok = |c: &Candidate| c.sent_share(r) <= SENT_GOAL && c.frames_ratio(r) <= FRAMES_GOAL;
    let (chosen, rule) = if let Some(c) = largest(&|c| c.missed(r).is_empty()) {
        (c, "the largest average that meets every goal")
    } else if let Some(c) = largest(&bytes_ok) {
        (
            c,
            "the largest average that meets both byte goals (none also met the speed goals \
             in this run: see the load average)",
        )
    } else {
        let least = candidates
            .iter()
            .min_by_key(|c| c.sent())
            .expect("a candidate");
        (
            least,
            "no candidate met both byte goals; this one sends least on a second push",
        )
    };
    let mut why = format!(
        "{rule}: second push {}, first push {:.3} ×, {} chunks",
        pct(chosen.sent_share(r)),
        chosen.frames_ratio(r),
        chosen.chunks,
    );
    if let Some(larger) = candidates
        .iter()
        .filter(|c| c.sizes.avg > chosen.sizes.avg)
        .min_by_key(|c| c.sizes.avg)
    {
        why += &format!(
            "; the next larger (avg {}) misses {} (second push {})",
            kib(larger.sizes.avg),
            larger.missed(r).join(", "),
            pct(larger.sent_share(r)),
        );
    }
    if let Some(smaller) = candidates
        .iter()
        .filter(|c| c.sizes.avg < chosen.sizes.avg)
        .max_by_key(|c| c.sizes.avg)
    {
        why += &format!(
            "; the next smaller (avg {}) would send {} on a second push, but its manifest is \
             {:.1} × as long (rows on the server, bytes on every push) and its first push \
             {:.3} ×",
            kib(smaller.sizes.avg),
            pct(smaller.sent_share(r)),
            smaller.chunks as f64 / chosen.chunks as f64,
            smaller.frames_ratio(r),
        );
    }
    (chosen, why)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() {
    let mib: u64 = support::env_num("FERRY_BENCH_CHUNK_MIB", 1024);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: usize = support::env_num("FERRY_BENCH_THREADS", cores).max(1);
    let repeats: usize = support::env_num("FERRY_BENCH_REPEATS", 2).max(1);
    let avgs = support::env_list(
        "FERRY_BENCH_CHUNK_AVG_KIB",
        &[16.0, 64.0, 128.0, 256.0, 1024.0],
    );
    let edits_per_gib: f64 = support::env_num("FERRY_BENCH_CHUNK_EDITS", 100.0);
    let load_before = load_average();

    eprintln!("preparing a {mib} MiB NAR-like buffer and its changed version …");
    let (original, files) = nar::mixed(mib << 20, 17);
    let edits = ((edits_per_gib * mib as f64 / 1024.0).round() as usize).max(2);
    let (changed, edit) = nar::changed(&original, edits, 29);
    let s = Setup {
        original: original.into(),
        changed: changed.into(),
        threads,
        repeats,
    };
    let r = Reference {
        threads,
        nar: s.original.len() as u64,
        stream: zstd_stream(&s.original).0,
        changed_stream: zstd_stream(&s.changed).0,
    };
    let mut candidates = vec![];
    for avg in avgs {
        let sizes = ChunkSizes::around((avg * 1024.0) as u32);
        eprintln!("{} …", setting(sizes));
        candidates.push(measure(sizes, &s));
    }

    println!(
        "chunking: {mib} MiB NAR-like ({files} files of 1 KiB–4 MiB, 1/3 random, 2/3 text-like): \
         {} NAR, {} as one zstd -3 stream ({:.2}×); {threads} threads, best of {repeats}; \
         load average {load_before} at the start, {} at the end",
        mb(r.nar),
        mb(r.stream),
        r.nar as f64 / r.stream as f64,
        load_average(),
    );
    println!(
        "changed: {} of bytes overwritten ({} patches of 4–16 bytes, {} regions of {}) \
         + {} bytes inserted at {}; {} as one zstd -3 stream",
        pct(edit.overwritten as f64 / r.nar as f64),
        edit.small,
        edit.regions,
        mb(edit.region_len as u64),
        edit.inserted,
        mb(edit.insert_at as u64),
        mb(r.changed_stream),
    );
    for c in &candidates {
        report(c, &r);
    }
    summary(&candidates, &r);
    let (chosen, why) = choose(&candidates, &r);
    println!("chosen: {} — {why}", setting(chosen.sizes));
}
