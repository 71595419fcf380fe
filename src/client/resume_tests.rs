//! Tests of the push resume state: reopening, several users of one
//! cache's state at once (threads and processes), the per-path lock, and
//! the migration of the single file of earlier versions.

use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier, mpsc};
use std::time::Duration;

use super::*;

const P1: &str = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-one";
const P2: &str = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-two";
const ACKS: u32 = 40;

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn assert_all_acked(s: &StateFile, path: &str, id: &str) {
    let p = s
        .get(path)
        .unwrap_or_else(|| panic!("no state left for {path}"));
    assert_eq!(p.upload_id, id);
    assert_eq!(p.parts.len(), ACKS as usize, "{path}: {:?}", p.parts);
    assert!(p.parts.iter().all(|(n, b)| *b == format!("{id}-{n}")));
}

/// Records `ACKS` acknowledgements for `path`, each its own write.
fn push_acks(s: &StateFile, path: &str, id: &str) {
    let _held = s.try_lock_path(path).unwrap().expect("path not held");
    s.start(path, id, 8).unwrap();
    for n in 1..=ACKS {
        s.ack(path, n, &format!("{id}-{n}")).unwrap();
        std::thread::yield_now();
    }
}

#[test]
fn survives_reopen_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("ferry/push-s-c");
    let s = StateFile::open(state_dir.clone()).unwrap();
    let held = s.try_lock_path(P1).unwrap().unwrap();
    s.start(P1, "id1", 8).unwrap();
    s.ack(P1, 2, "bb").unwrap();
    s.ack(P1, 1, "aa").unwrap();
    drop(held);
    let again = StateFile::open(state_dir.clone()).unwrap();
    let p = again.get(P1).unwrap();
    assert_eq!(
        (p.upload_id.as_str(), p.part_size, p.parts.len()),
        ("id1", 8, 2)
    );
    assert!(again.get(P2).is_none());
    let held = again.try_lock_path(P1).unwrap().unwrap();
    again.forget(P1).unwrap();
    drop(held);
    assert!(
        files_in(&state_dir).is_empty(),
        "{:?}",
        files_in(&state_dir)
    );
}

#[test]
fn two_users_of_one_cache_keep_each_others_entries() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("push-s-c");
    let go = Arc::new(Barrier::new(2));
    let threads: Vec<_> = [(P1, "up1"), (P2, "up2")]
        .into_iter()
        .map(|(path, id)| {
            let (state_dir, go) = (state_dir.clone(), go.clone());
            std::thread::spawn(move || {
                let s = StateFile::open(state_dir).unwrap();
                go.wait();
                push_acks(&s, path, id);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = StateFile::open(state_dir).unwrap();
    assert_all_acked(&s, P1, "up1");
    assert_all_acked(&s, P2, "up2");
}

/// The child half of the two-process test: runs only when the parent
/// sets `FERRY_RESUME_CHILD` (`dir;path;id`).
#[test]
fn child_process_pusher() {
    let Ok(spec) = std::env::var("FERRY_RESUME_CHILD") else {
        return;
    };
    let mut it = spec.split(';');
    let (dir, path, id) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    let s = StateFile::open(PathBuf::from(dir)).unwrap();
    push_acks(&s, path, id);
}

#[test]
fn two_processes_keep_each_others_entries() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("push-s-c");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = [(P1, "up1"), (P2, "up2")]
        .into_iter()
        .map(|(path, id)| {
            Command::new(&exe)
                .args(["--exact", "client::resume::tests::child_process_pusher"])
                .env(
                    "FERRY_RESUME_CHILD",
                    format!("{};{path};{id}", state_dir.display()),
                )
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let s = StateFile::open(state_dir).unwrap();
    assert_all_acked(&s, P1, "up1");
    assert_all_acked(&s, P2, "up2");
}

#[test]
fn a_held_path_excludes_a_second_holder_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("push-s-c");
    let a = StateFile::open(state_dir.clone()).unwrap();
    let b = Arc::new(StateFile::open(state_dir.clone()).unwrap());
    let held = a.try_lock_path(P1).unwrap().unwrap();
    a.start(P1, "id1", 8).unwrap();
    assert!(b.try_lock_path(P1).unwrap().is_none());
    assert!(
        b.try_lock_path(P2).unwrap().is_some(),
        "other paths are free"
    );

    let (tx, rx) = mpsc::channel();
    let waiter = {
        let b = b.clone();
        std::thread::spawn(move || {
            let l = b.lock_path(P1).unwrap();
            tx.send(b.get(P1)).unwrap();
            l
        })
    };
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    // Committed: the holder forgets the path and removes the lock file,
    // so the waiter must lock the name again, not the removed file.
    a.forget(P1).unwrap();
    drop(held);
    let seen = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(seen, None, "the waiter sees the path committed");
    let b_held = waiter.join().unwrap();
    let c = StateFile::open(state_dir).unwrap();
    assert!(
        c.try_lock_path(P1).unwrap().is_none(),
        "the waiter holds it"
    );
    drop(b_held);
    assert!(c.try_lock_path(P1).unwrap().is_some());
}

#[test]
fn the_single_file_of_earlier_versions_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = dir.path().join("push-s.example.org-c.json");
    std::fs::write(
        &legacy,
        format!(
            r#"{{"paths": {{"{P1}": {{"upload_id": "u1", "part_size": 8, "parts": {{"1": "aa"}}}},
                            "{P2}": {{"upload_id": "u2", "part_size": 4}}}}}}"#
        ),
    )
    .unwrap();
    let s = StateFile::open(dir.path().join("push-s.example.org-c")).unwrap();
    assert!(!legacy.exists());
    let p1 = s.get(P1).unwrap();
    assert_eq!((p1.upload_id.as_str(), p1.parts.len()), ("u1", 1));
    assert_eq!(s.get(P2).unwrap().part_size, 4);
}

#[test]
fn file_names_are_hash_parts() {
    assert_eq!(StateFile::stem(P1), "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    assert_eq!(StateFile::stem("/nix/store/x"), "x");
    assert!(StateFile::stem("/nix/store/a.b-c").starts_with('h'));
}
