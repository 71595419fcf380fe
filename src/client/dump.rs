//! A small path's NAR, serialized in-process from the file system.
//!
//! `nix-store --dump` costs about 20 ms per call here, most of it Nix
//! starting: for a closure of thousands of small paths that is most of the
//! push. Paths in batches are read directly instead (lstat, directory
//! entries sorted byte-wise, the executable bit as Nix reads it: the
//! owner's x bit), and the result is checked against the NarHash and
//! NarSize Nix recorded; a path that differs or cannot be read (a store
//! not at its logical location, a permission) is dumped by Nix after all.

use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use crate::nar::Sha256Hash;
use crate::nar::archive::write_str;

/// The NAR of `path` as Nix would write it.
pub fn nar_of(path: &Path) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    write_str(&mut out, b"nix-archive-1");
    node(&mut out, path)?;
    Ok(out)
}

/// The NAR of `path` if it hashes to `nar_hash` with `nar_size` bytes.
pub fn checked_nar_of(path: &Path, nar_hash: &str, nar_size: u64) -> Option<Vec<u8>> {
    let want = Sha256Hash::parse(nar_hash).ok()?;
    let nar = nar_of(path).ok()?;
    (nar.len() as u64 == nar_size && Sha256Hash::digest(&nar) == want).then_some(nar)
}

fn node(out: &mut Vec<u8>, path: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    write_str(out, b"(");
    write_str(out, b"type");
    let kind = meta.file_type();
    if kind.is_symlink() {
        write_str(out, b"symlink");
        write_str(out, b"target");
        write_str(out, std::fs::read_link(path)?.as_os_str().as_bytes());
    } else if kind.is_file() {
        write_str(out, b"regular");
        if meta.permissions().mode() & 0o100 != 0 {
            write_str(out, b"executable");
            write_str(out, b"");
        }
        write_str(out, b"contents");
        write_str(out, &std::fs::read(path)?);
    } else if kind.is_dir() {
        write_str(out, b"directory");
        let mut names: Vec<_> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            write_str(out, b"entry");
            write_str(out, b"(");
            write_str(out, b"name");
            write_str(out, name.as_bytes());
            write_str(out, b"node");
            node(out, &path.join(&name))?;
            write_str(out, b")");
        }
    } else {
        return Err(io::Error::other("not a file, directory or symlink"));
    }
    write_str(out, b")");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::nar::{Tree, write_nar};

    #[test]
    fn a_tree_on_disk_dumps_as_its_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("p");
        std::fs::create_dir_all(root.join("sub/empty")).unwrap();
        std::fs::write(root.join("b-file"), b"data").unwrap();
        std::fs::write(root.join("a-exec"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(root.join("a-exec"), std::fs::Permissions::from_mode(0o555))
            .unwrap();
        std::fs::write(root.join("sub/Z"), b"").unwrap();
        std::os::unix::fs::symlink("../b-file", root.join("sub/link")).unwrap();
        let mut sub = BTreeMap::new();
        sub.insert(
            "Z".to_owned(),
            Tree::Regular {
                executable: false,
                contents: vec![],
            },
        );
        sub.insert("empty".to_owned(), Tree::Directory(BTreeMap::new()));
        sub.insert(
            "link".to_owned(),
            Tree::Symlink {
                target: "../b-file".into(),
            },
        );
        let mut top = BTreeMap::new();
        top.insert(
            "a-exec".to_owned(),
            Tree::Regular {
                executable: true,
                contents: b"#!/bin/sh\n".to_vec(),
            },
        );
        top.insert(
            "b-file".to_owned(),
            Tree::Regular {
                executable: false,
                contents: b"data".to_vec(),
            },
        );
        top.insert("sub".to_owned(), Tree::Directory(sub));
        let want = write_nar(&Tree::Directory(top));
        assert_eq!(nar_of(&root).unwrap(), want);
        let hash = Sha256Hash::digest(&want).to_string();
        assert!(checked_nar_of(&root, &hash, want.len() as u64).is_some());
        assert!(checked_nar_of(&root, &hash, want.len() as u64 + 1).is_none());
        let other = Sha256Hash::digest(b"x").to_string();
        assert!(checked_nar_of(&root, &other, want.len() as u64).is_none());
        assert!(checked_nar_of(&dir.path().join("gone"), &hash, 1).is_none());
    }
}
