//! A few threads taking jobs from one bounded queue, each with state of its
//! own (a zstd context): what the verifier's frame decoders and the plain
//! NAR compressor run on. Dropping the pool ends the queue and joins them.

use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// Threads for one pool: the machine's cores, at most 8. Asked once:
/// the standard library reads cgroup files every time.
pub fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, 8)
    })
}

/// Threads working on jobs of type `J`.
pub struct Pool<J: Send + 'static> {
    jobs: Option<SyncSender<J>>,
    threads: Vec<JoinHandle<()>>,
}

impl<J: Send + 'static> Pool<J> {
    /// `n` threads named `name`, each making its state with `init` and
    /// running `work` on every job it takes; the queue holds `n` jobs.
    pub fn start<S, I, F>(name: &str, n: usize, init: I, work: F) -> Result<Pool<J>>
    where
        I: Fn() -> S + Send + Clone + 'static,
        F: Fn(&mut S, J) + Send + Clone + 'static,
    {
        let (tx, rx) = sync_channel::<J>(n);
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = vec![];
        for _ in 0..n {
            let (rx, init, work) = (rx.clone(), init.clone(), work.clone());
            let t = std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || {
                    let mut state = init();
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        work(&mut state, job);
                    }
                })
                .map_err(Error::internal)?;
            threads.push(t);
        }
        Ok(Pool {
            jobs: Some(tx),
            threads,
        })
    }

    /// Queues a job (waits while the queue is full).
    pub fn send(&self, job: J) -> Result<()> {
        self.jobs
            .as_ref()
            .ok_or_else(|| Error::internal("a worker pool is gone"))?
            .send(job)
            .map_err(|_| Error::internal("a worker pool stopped"))
    }
}

impl<J: Send + 'static> Drop for Pool<J> {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
