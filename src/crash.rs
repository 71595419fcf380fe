//! Named crash points between durable steps, for tests.
//!
//! `crash_point!("name")` marks a place where a crash must lose nothing:
//! between a part's write, its rename and its row; between a verdict, the
//! claim of its blobs, their move into the store, the commit and the
//! removal of the upload's directory; between GC's choice of a blob and
//! its deletion. Built with the `failpoints` feature (the tests enable it),
//! `FERRY_CRASH_AT=name[,name…]` makes the process abort (as a SIGKILL
//! would stop it: no destructor, no flush) the first time it reaches one
//! of them. Without the feature the points compile to nothing.

/// Every crash point, in the order an upload meets them.
pub const POINTS: &[&str] = &[
    "part.after_write",
    "part.after_rename",
    "publish.after_verdict",
    "publish.after_claim",
    "publish.after_adopt",
    "publish.after_commit",
    "gc.before_delete",
    "gc.after_delete",
];

/// Marks a crash point (see the module doc).
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}

/// Arms the crash points named in `FERRY_CRASH_AT`. Without the
/// `failpoints` feature, a set variable is refused so that a test cannot
/// pass by never crashing.
pub fn arm_from_env() -> Result<(), String> {
    let Ok(names) = std::env::var("FERRY_CRASH_AT") else {
        return Ok(());
    };
    for name in names.split(',').filter(|n| !n.is_empty()) {
        let Some(point) = POINTS.iter().copied().find(|p| *p == name) else {
            return Err(format!(
                "FERRY_CRASH_AT names {name:?}, which is not a crash point; known: {}",
                POINTS.join(", ")
            ));
        };
        arm(point)?;
    }
    Ok(())
}

#[cfg(feature = "failpoints")]
fn arm(name: &'static str) -> Result<(), String> {
    fail::cfg_callback(name, move || {
        eprintln!("ferry: crash point {name} reached: aborting");
        std::process::abort();
    })
}

#[cfg(not(feature = "failpoints"))]
fn arm(name: &str) -> Result<(), String> {
    Err(format!(
        "FERRY_CRASH_AT={name} needs a ferry built with `--features failpoints`"
    ))
}
