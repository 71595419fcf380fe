//! The queries of garbage collection (the policy is in `crate::gc`).

use std::collections::{HashMap, HashSet};

use super::{Conn, params};

use crate::error::Result;

/// Records last-access times for read paths (by hash part) and read NARs.
pub fn touch(
    conn: &Conn<'_>,
    paths: &[(i64, String)],
    nars: &[(i64, i64)],
    now: i64,
) -> Result<()> {
    for (cache, hash) in paths {
        conn.execute(
            "UPDATE paths SET last_access = ?3 WHERE cache_id = ?1 AND hash_part = ?2",
            params![cache, hash, now],
        )?;
    }
    for (cache, nar) in nars {
        conn.execute(
            "UPDATE paths SET last_access = ?3 WHERE cache_id = ?1 AND nar_id = ?2",
            params![cache, nar, now],
        )?;
    }
    Ok(())
}

/// The hash parts a narinfo's `References:` line names.
fn references_of(narinfo: &str) -> impl Iterator<Item = &str> {
    narinfo
        .lines()
        .find_map(|l| l.strip_prefix("References:"))
        .unwrap_or("")
        .split_ascii_whitespace()
        .filter_map(|base| base.get(..32))
}

/// Unpublishes the paths of caches with a retention that were last read
/// before it, except those a kept path references, directly or not: a
/// path that stays keeps its whole closure, or Nix could not substitute
/// it. Returns how many paths went.
pub fn expire_paths(conn: &Conn<'_>, now: i64) -> Result<u64> {
    let caches: Vec<(i64, i64)> = conn.query_all(
        "SELECT id, retention_secs FROM caches WHERE retention_secs IS NOT NULL",
        &[],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut removed = 0;
    for (cache_id, retention) in caches {
        let rows: Vec<(String, i64, String)> = conn.query_all(
            "SELECT hash_part, last_access, narinfo FROM paths WHERE cache_id = ?1",
            params![cache_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let refs: HashMap<&str, Vec<&str>> = rows
            .iter()
            .map(|(h, _, ni)| (h.as_str(), references_of(ni).collect()))
            .collect();
        let mut kept: HashSet<&str> = HashSet::new();
        let mut todo: Vec<&str> = rows
            .iter()
            .filter(|(_, last, _)| *last >= now - retention)
            .map(|(h, _, _)| h.as_str())
            .collect();
        while let Some(h) = todo.pop() {
            if kept.insert(h) {
                todo.extend(refs.get(h).into_iter().flatten().copied());
            }
        }
        for (h, _, _) in rows.iter().filter(|(h, _, _)| !kept.contains(h.as_str())) {
            removed += conn.execute(
                "DELETE FROM paths WHERE cache_id = ?1 AND hash_part = ?2",
                params![cache_id, h],
            )?;
        }
    }
    Ok(removed)
}

/// Deletes the NAR rows no path publishes (their chunks go with them, so
/// their blobs become unreferenced in the same run). Returns how many.
pub fn delete_unpublished_nars(conn: &Conn<'_>) -> Result<u64> {
    let n = conn.execute(
        "DELETE FROM nars WHERE NOT EXISTS (SELECT 1 FROM paths p WHERE p.nar_id = nars.id)",
        &[],
    )?;
    Ok(n)
}

/// The last finished run: when it started and ended, and what it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastRun {
    pub started_at: i64,
    pub finished_at: i64,
    pub report: crate::gc::Report,
}

/// Records a finished run, replacing the one before (for the status page).
pub fn record_run(conn: &Conn<'_>, run: &LastRun) -> Result<()> {
    let r = &run.report;
    conn.execute(
        "INSERT INTO gc_last_run (id, started_at, finished_at, paths_expired,
             uploads_removed, nars_removed, blobs_removed, bytes_freed, leftovers_removed, failed)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (id) DO UPDATE SET started_at = excluded.started_at,
             finished_at = excluded.finished_at, paths_expired = excluded.paths_expired,
             uploads_removed = excluded.uploads_removed, nars_removed = excluded.nars_removed,
             blobs_removed = excluded.blobs_removed, bytes_freed = excluded.bytes_freed,
             leftovers_removed = excluded.leftovers_removed, failed = excluded.failed",
        params![
            run.started_at,
            run.finished_at,
            r.paths_expired as i64,
            r.uploads_removed as i64,
            r.nars_removed as i64,
            r.blobs_removed as i64,
            r.bytes_freed as i64,
            r.leftovers_removed as i64,
            r.failed as i64
        ],
    )?;
    Ok(())
}

/// The last finished run, if any has been recorded.
pub fn last_run(conn: &Conn<'_>) -> Result<Option<LastRun>> {
    let n = |r: &super::Row<'_>, i| r.get::<i64>(i).map(|v| v as u64);
    conn.query_opt(
        "SELECT started_at, finished_at, paths_expired, uploads_removed, nars_removed,
             blobs_removed, bytes_freed, leftovers_removed, failed FROM gc_last_run WHERE id = 1",
        &[],
        |r| {
            Ok(LastRun {
                started_at: r.get(0)?,
                finished_at: r.get(1)?,
                report: crate::gc::Report {
                    paths_expired: n(r, 2)?,
                    uploads_removed: n(r, 3)?,
                    nars_removed: n(r, 4)?,
                    blobs_removed: n(r, 5)?,
                    bytes_freed: n(r, 6)?,
                    leftovers_removed: n(r, 7)?,
                    failed: n(r, 8)?,
                },
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_the_hash_parts_of_the_references_line() {
        let ni = "StorePath: /nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x\n\
                  References: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-y cccccccccccccccccccccccccccccccc-z\n\
                  Deriver: dddddddddddddddddddddddddddddddd-x.drv\n";
        let got: Vec<&str> = references_of(ni).collect();
        assert_eq!(
            got,
            [
                "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
                "cccccccccccccccccccccccccccccccc"
            ]
        );
        assert_eq!(references_of("References: \n").count(), 0);
    }

    #[test]
    fn the_last_run_replaces_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&dir.path().join("t.db")).unwrap();
        db.call_blocking(|c| {
            assert_eq!(last_run(c)?, None);
            let mut run = LastRun {
                started_at: 10,
                finished_at: 12,
                report: crate::gc::Report {
                    bytes_freed: 5,
                    ..Default::default()
                },
            };
            record_run(c, &run)?;
            assert_eq!(last_run(c)?.as_ref(), Some(&run));
            run.started_at = 20;
            run.report.paths_expired = 3;
            record_run(c, &run)?;
            assert_eq!(last_run(c)?, Some(run));
            Ok(())
        })
        .unwrap();
    }
}
