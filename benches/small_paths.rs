//! Many small paths, few round trips: `ferry push` of a closure of 300
//! tiny paths and the path referring to them (301 paths, NARs of 0.3–8
//! KiB, random), as a user runs it, into a fresh server behind nginx
//! (`client_max_body_size 100m`), with small paths in batches (the
//! default) and with `--no-batching` (one upload per path: create, part,
//! complete). Each twice: straight to nginx, and through a proxy adding
//! 25 ms to every request (a tunnel's round trip).
//!
//! Printed: requests at the proxy per path (goal ≤ 1.2 with batches) and
//! the wall time of the push, batches against one upload per path.
//!
//! Run: `cargo bench --bench small_paths`. Knobs: `FERRY_BENCH_SMALL_PATHS`
//! (default 300), `FERRY_BENCH_RTT_MS` (default 25). Needs Nix and nginx.

mod support;

use std::time::Duration;

use support::push::{NIX_CONFIG, Site, nix_build};
use support::{at_most, env_num, work_dir};

/// Builds `n` tiny random paths and a top path referring to all; the top
/// path first, then the closure.
fn closure(n: usize, salt: &str) -> Vec<String> {
    let mut e = String::from(
        "let mk = name: script: derivation { inherit name; system = builtins.currentSystem; \
         builder = \"/bin/sh\"; args = [ \"-c\" script ]; PATH = \"/usr/bin:/bin\"; salt = \"",
    );
    e.push_str(salt);
    e.push_str("\"; };\n");
    for i in 0..n {
        let size = 300 + (i * 7919) % 8000;
        e.push_str(&format!(
            "  p{i} = mk \"tiny-{i}\" \"head -c {size} /dev/urandom > $out\";\n"
        ));
    }
    e.push_str("  top = mk \"tiny-top\" \"");
    for i in 0..n {
        e.push_str(&format!("echo ${{p{i}}} >> $out; "));
    }
    e.push_str("\";\nin [ top");
    for i in 0..n {
        e.push_str(&format!(" p{i}"));
    }
    e.push_str(" ]\n");
    nix_build(&e)
}

fn main() {
    let n: usize = env_num("FERRY_BENCH_SMALL_PATHS", 300);
    let rtt = Duration::from_millis(env_num("FERRY_BENCH_RTT_MS", 25));
    let work = work_dir();
    let mut built = vec![];
    println!(
        "ferry push of {} paths ({n} tiny + 1 referring to them), fresh server behind nginx (2-core VM, one run):",
        n + 1
    );
    for (label, delayed) in [("nginx", None), ("+ round trip", Some(rtt))] {
        let mut row = vec![];
        for extra in [&[][..], &["--no-batching"][..]] {
            let salt = format!("{}-{}", std::process::id(), built.len());
            let paths = closure(n, &salt);
            let site = match delayed {
                Some(rtt) => Site::with_round_trip(work.path(), rtt),
                None => Site::new(work.path()),
            };
            let before = site.nginx.requests();
            let (time, _) = site.push(&paths[0], extra);
            let requests = site.nginx.requests() - before;
            row.push((time, requests));
            built.extend(paths);
        }
        let (batched, single) = (row[0], row[1]);
        let per_path = batched.1 as f64 / (n + 1) as f64;
        let name = match delayed {
            Some(rtt) => format!("{label} of {} ms", rtt.as_millis()),
            None => label.to_owned(),
        };
        println!(
            "  {name:<22} batches: {:>4} requests ({per_path:.3} per path) {:>6.2} s   one upload per path: {:>4} requests ({:.2} per path) {:>6.2} s   time {:.2}×   {}",
            batched.1,
            batched.0.as_secs_f64(),
            single.1,
            single.1 as f64 / (n + 1) as f64,
            single.0.as_secs_f64(),
            batched.0.as_secs_f64() / single.0.as_secs_f64(),
            at_most(per_path, 1.2, "1.2 requests per path"),
        );
    }
    let _ = std::process::Command::new("nix-store")
        .arg("--delete")
        .args(&built)
        .env("NIX_CONFIG", NIX_CONFIG)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}
