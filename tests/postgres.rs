//! Metadata on a real PostgreSQL (a throwaway cluster of
//! `common::postgres`): migrations, the writer lock across instances, the
//! queries of `db/` with their triggers, error mapping, and a server.
//!
//! The whole HTTP suite also runs on PostgreSQL as the `http_api_pg`
//! target (the sources of `tests/http_api`, with this engine).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::postgres::shared;
use ferry::db::{self, Db, caches, nars};
use ferry::error::Error;

fn new_cache(name: &str) -> caches::NewCache {
    caches::NewCache {
        name: name.into(),
        public: true,
        priority: 41,
        store_dir: "/nix/store".into(),
        retention_secs: Some(60),
        signing_key: ferry::nar::SigningKey::generate(&format!("{name}-1"))
            .unwrap()
            .to_nix_string(),
        upstream_keys: vec!["a-1".into()],
    }
}

fn new_nar(seed: &str, size: u64) -> nars::NewNar {
    nars::NewNar {
        nar_hash: ferry::nar::Sha256Hash::digest(seed.as_bytes()).to_string(),
        nar_size: 10,
        compression: "zstd".into(),
        file_hash: ferry::nar::Sha256Hash::digest(format!("{seed}f").as_bytes()).to_string(),
        file_size: size,
        chunks: vec![nars::Chunk {
            blob: ferry::nar::Sha256Hash::digest(format!("{seed}b").as_bytes())
                .to_string()
                .replace("sha256:", ""),
            offset: 0,
            size,
        }],
    }
}

#[test]
fn instances_starting_together_migrate_once() {
    let url = shared().new_database();
    let opened: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || Db::connect(&url).map(|db| db.engine()))
        })
        .collect();
    for t in opened {
        assert_eq!(t.join().unwrap().unwrap(), db::Engine::Postgres);
    }
    assert_eq!(
        shared().psql(
            &url,
            "SELECT string_agg(name, ',' ORDER BY version) FROM ferry_schema"
        ),
        "0001_init,0002_revocations,0003_tus,0004_listings_logs,0005_blobs,\
         0006_upload_owners,0007_cache_stats,0008_status,0009_shared_uploads,0010_chunks,0011_stored_parts,0012_gc_failed"
    );
    // A later start finds nothing to do.
    Db::connect(&url).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queries_and_triggers_mean_the_same_on_postgres() {
    let db = Db::connect(&shared().new_database()).unwrap();
    let a = db
        .write(|tx| caches::insert(tx, &new_cache("a")))
        .await
        .unwrap();
    let b = db
        .write(|tx| caches::insert(tx, &new_cache("b")))
        .await
        .unwrap();
    assert!(a.public && a.retention_secs == Some(60) && a.upstream_keys == ["a-1"]);
    let dup = db.write(|tx| caches::insert(tx, &new_cache("a"))).await;
    assert!(matches!(dup, Err(Error::CacheExists(_))), "{dup:?}");

    let (a_id, b_id) = (a.id, b.id);
    let stats = db
        .write(move |tx| {
            let (n1, inserted) = nars::insert(tx, &new_nar("1", 100))?;
            assert!(inserted);
            let (again, inserted) = nars::insert(tx, &new_nar("1", 100))?;
            assert!(!inserted);
            assert_eq!(again, n1);
            let (n2, _) = nars::insert(tx, &new_nar("2", 50))?;
            let h = |c: char| c.to_string().repeat(32);
            assert!(nars::insert_path(
                tx,
                a_id,
                &h('x'),
                "/nix/store/x",
                n1.id,
                "ni-x"
            )?);
            assert!(!nars::insert_path(
                tx,
                a_id,
                &h('x'),
                "/nix/store/x",
                n2.id,
                "other"
            )?);
            assert!(nars::insert_path(
                tx,
                a_id,
                &h('y'),
                "/nix/store/y",
                n2.id,
                "ni-y"
            )?);
            assert!(nars::insert_path(
                tx,
                b_id,
                &h('y'),
                "/nix/store/y",
                n2.id,
                "ni-y"
            )?);
            assert!(nars::delete_path(tx, a_id, &h('x'))?);
            nars::insert_listing(tx, n2.id, b"\x00listing\xff")?;
            nars::insert_listing(tx, n2.id, b"ignored")?;
            db::logs::put(tx, a_id, "d.drv", b"\x01log")?;
            db::logs::put(tx, a_id, "d.drv", b"\x02log")?;
            db::revocations::insert(tx, "r1")?;
            db::revocations::insert(tx, "r1")?;
            caches::sizes(tx)
        })
        .await
        .unwrap();
    assert_eq!(stats, [("a".to_owned(), 50, 1), ("b".to_owned(), 50, 1)]);
    let y = "y".repeat(32);
    let got = db
        .call(move |c| {
            Ok((
                nars::narinfo(c, a_id, &y)?,
                nars::listing(c, a_id, &y)?,
                db::logs::get(c, a_id, "d.drv")?,
                db::revocations::all(c)?,
                db::status::caches(c)?,
                nars::caches_publishing(c, 2)?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(got.0.as_deref(), Some("ni-y"));
    assert_eq!(got.1.as_deref(), Some(&b"\x00listing\xff"[..]));
    assert_eq!(got.2.as_deref(), Some(&b"\x02log"[..]));
    assert_eq!(got.3.into_iter().collect::<Vec<_>>(), ["r1"]);
    assert!(got.4.iter().all(|c| c.paths == 1 && c.last_push.is_some()));
    assert_eq!(
        got.5.len(),
        2,
        "both caches publish NAR 2 (booleans read back): {:?}",
        got.5
    );
    // A lookup goes through the blocking pool on PostgreSQL.
    let key = "y".repeat(32);
    let ni = db
        .lookup(move |c| nars::narinfo(c, b_id, &key))
        .await
        .unwrap();
    assert_eq!(ni.as_deref(), Some("ni-y"));
    // The gc run record is replaced, not added.
    let run = |started_at| db::gc::LastRun {
        started_at,
        finished_at: started_at + 1,
        report: Default::default(),
    };
    db.write(move |tx| db::gc::record_run(tx, &run(10)))
        .await
        .unwrap();
    db.write(move |tx| db::gc::record_run(tx, &run(20)))
        .await
        .unwrap();
    let last = db.call(db::gc::last_run).await.unwrap().unwrap();
    assert_eq!(last.started_at, 20);
    // Expiry on PostgreSQL: everything in a is older than its retention.
    let gone = db
        .write(|tx| db::gc::expire_paths(tx, db::now() + 3600))
        .await
        .unwrap();
    assert_eq!(
        gone, 2,
        "the path of a and the path of b, both 60 s retention"
    );
    let dropped = db.write(db::gc::delete_unpublished_nars).await.unwrap();
    assert_eq!(dropped, 2);
}

/// Two instances race to publish the same NARs and paths: each publish
/// checks and inserts under the writer lock, so every NAR and path is
/// inserted exactly once and neither instance sees a constraint error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_publish_at_once_and_nothing_twice() {
    let url = shared().new_database();
    let one = Db::connect(&url).unwrap();
    let two = Db::connect(&url).unwrap();
    let cache = one
        .write(|tx| caches::insert(tx, &new_cache("c")))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        for db in [one.clone(), two.clone()] {
            let cache_id = cache.id;
            tasks.push(tokio::spawn(async move {
                db.write(move |tx| {
                    let (nar, inserted) = nars::insert(tx, &new_nar(&format!("n{i}"), 7))?;
                    let hash = format!("{i:0>32}");
                    let published = nars::insert_path(
                        tx,
                        cache_id,
                        &hash,
                        &format!("/nix/store/{hash}-p"),
                        nar.id,
                        "ni",
                    )?;
                    Ok((inserted, published))
                })
                .await
            }));
        }
    }
    let mut inserted = 0;
    let mut published = 0;
    for t in tasks {
        let (i, p) = t.await.unwrap().expect("no publish fails");
        inserted += i as u32;
        published += p as u32;
    }
    assert_eq!((inserted, published), (40, 40));
    let stats = one.call(caches::sizes).await.unwrap();
    assert_eq!(stats, [("c".to_owned(), 40 * 7, 40)]);
}

/// A write transaction of one instance holds the writer lock until it
/// commits: another instance's write waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_lock_spans_instances() {
    let url = shared().new_database();
    let one = Db::connect(&url).unwrap();
    let two = Db::connect(&url).unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let o = order.clone();
    let first = tokio::spawn(async move {
        one.write(move |tx| {
            db::revocations::insert(tx, "first")?;
            std::thread::sleep(Duration::from_millis(500));
            o.lock().unwrap().push("first");
            Ok(())
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    let o = order.clone();
    two.write(move |tx| {
        // Under the lock, the other instance's committed row is visible.
        let seen = db::revocations::all(tx)?;
        o.lock().unwrap().push("second");
        assert!(seen.contains("first"));
        Ok(())
    })
    .await
    .unwrap();
    first.await.unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(*order.lock().unwrap(), ["first", "second"]);
}

/// A failed write rolls back and leaves the connection usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_rolls_back() {
    let db = Db::connect(&shared().new_database()).unwrap();
    let failed = db
        .write(|tx| {
            db::revocations::insert(tx, "kept-out")?;
            tx.execute("INSERT INTO no_such_table VALUES (1)", &[])?;
            Ok(())
        })
        .await;
    assert!(matches!(failed, Err(Error::Internal(_))), "{failed:?}");
    for _ in 0..10 {
        let ids = db.call(db::revocations::all).await.unwrap();
        assert!(ids.is_empty());
    }
}

#[test]
fn an_unreachable_database_is_unavailable() {
    let port = common::free_port();
    let err = Db::connect(&format!("postgres://postgres@127.0.0.1:{port}/x"))
        .err()
        .expect("nothing listens there");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    let bad = Db::connect("postgres://[not a url").err().expect("bad url");
    assert!(matches!(bad, Error::BadRequest(_)), "{bad:?}");
}

/// A server on PostgreSQL answers, and a second one on the same database
/// sees what the first published (the cache made through the first).
#[test]
fn two_servers_share_one_database() {
    let url = shared().new_database();
    let first = common::InProcess::start_with(|cfg| cfg.database_url = Some(url.clone()));
    let body = serde_json::json!({"name": "shared", "public": true}).to_string();
    let made = common::http_request(
        "POST",
        &format!("{}/_api/v1/caches", first.url),
        &[
            &format!("Authorization: Bearer {}", first.admin_token),
            "Content-Type: application/json",
        ],
        common::Body::Bytes(body.into_bytes()),
    );
    assert!(made.status == 200 || made.status == 201, "{made:?}");
    let second = common::InProcess::start_with(|cfg| cfg.database_url = Some(url.clone()));
    let info = common::http_request(
        "GET",
        &format!("{}/shared/nix-cache-info", second.url),
        &[],
        common::Body::None,
    );
    assert_eq!(info.status, 200, "{info:?}");
    let health = common::http_request(
        "GET",
        &format!("{}/healthz", second.url),
        &[],
        common::Body::None,
    );
    assert_eq!(health.status, 200);
}

/// A cache index on PostgreSQL sees a cache another instance made within
/// its refresh bound, without being told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_index_refreshes_across_instances() {
    let url = shared().new_database();
    let one = Db::connect(&url).unwrap();
    let two = Db::connect(&url).unwrap();
    let index = caches::CacheIndex::new(one.clone());
    assert!(index.get("late").await.unwrap().is_none());
    two.write(|tx| caches::insert(tx, &new_cache("late")))
        .await
        .unwrap();
    let deadline = Instant::now() + caches::SHARED_REFRESH + Duration::from_secs(2);
    loop {
        if index.get("late").await.unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "not seen within the bound");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
