//! Progress for a push: one overall bar (NAR bytes, paths done, rate, ETA)
//! and a bar per path in flight. Drawn only when stderr is a terminal; the
//! one-line summary at the end is printed either way.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bars of one push.
pub struct Progress {
    multi: MultiProgress,
    overall: ProgressBar,
    paths_total: u64,
    paths_done: AtomicU64,
}

impl Progress {
    /// Bars for `paths` paths of `nar_bytes` NAR bytes in all; drawn only
    /// when stderr is a terminal.
    pub fn new(paths: u64, nar_bytes: u64) -> Progress {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let overall = multi.add(ProgressBar::new(nar_bytes));
        overall.set_style(style(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        ));
        overall.enable_steady_tick(Duration::from_millis(200));
        let p = Progress {
            multi,
            overall,
            paths_total: paths,
            paths_done: AtomicU64::new(0),
        };
        p.refresh_message();
        p
    }

    /// A bar for one path (removed with [`Progress::finish_path`]).
    pub fn path_bar(&self, name: &str, nar_size: u64) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(nar_size));
        bar.set_style(style("  {prefix:40!} {bar:30} {bytes}/{total_bytes} {msg}"));
        bar.set_prefix(name.to_owned());
        bar
    }

    /// Adds NAR bytes read to the overall bar.
    pub fn add_bytes(&self, n: u64) {
        self.overall.inc(n);
    }

    /// A path is done (pushed, deduplicated or failed).
    pub fn finish_path(&self, bar: &ProgressBar) {
        self.finish_paths(bar, 1);
    }

    /// `paths` paths shown by one bar (a batch) are done.
    pub fn finish_paths(&self, bar: &ProgressBar, paths: u64) {
        bar.finish_and_clear();
        self.multi.remove(bar);
        self.paths_done.fetch_add(paths, Ordering::Relaxed);
        self.refresh_message();
    }

    /// Prints a line above the bars (or plainly when they are hidden).
    pub fn println(&self, line: &str) {
        if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    /// Removes the bars.
    pub fn finish(&self) {
        self.overall.finish_and_clear();
    }

    fn refresh_message(&self) {
        let done = self.paths_done.load(Ordering::Relaxed);
        self.overall
            .set_message(format!("{done}/{} paths", self.paths_total));
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// The counts a push ends with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Uploaded and committed by this push.
    pub pushed: u64,
    /// Already in the cache.
    pub skipped: u64,
    /// Signed by an upstream key, so not pushed.
    pub upstream: u64,
    /// The server linked a NAR it already had.
    pub deduplicated: u64,
    /// Compressed bytes sent in parts (re-sent parts counted again).
    pub bytes_sent: u64,
    /// Paths that failed.
    pub failed: u64,
    pub elapsed: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pushed {}, skipped {} (already in the cache {}, upstream {}), deduplicated {}, {} sent in {:.1}s",
            self.pushed,
            self.skipped + self.upstream,
            self.skipped,
            self.upstream,
            self.deduplicated,
            HumanBytes(self.bytes_sent),
            self.elapsed.as_secs_f64()
        )?;
        if self.failed > 0 {
            write!(f, ", {} FAILED", self.failed)?;
        }
        Ok(())
    }
}
