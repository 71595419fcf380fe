//! Comparing file trees the way a NAR sees them.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Compare two trees recursively: entry names, file types, file bytes, the
/// executable bit, symlink targets. `a` and `b` may be files, symlinks or
/// directories (a store path is any of these). Panics naming the first
/// difference.
pub fn compare_trees(a: &Path, b: &Path) {
    if let Err(msg) = diff_trees(a, b) {
        panic!("trees differ: {msg}");
    }
}

/// [`compare_trees`] returning the first difference instead of panicking.
pub fn diff_trees(a: &Path, b: &Path) -> Result<(), String> {
    let ma = a
        .symlink_metadata()
        .map_err(|e| format!("{}: {e}", a.display()))?;
    let mb = b
        .symlink_metadata()
        .map_err(|e| format!("{}: {e}", b.display()))?;
    let (ta, tb) = (ma.file_type(), mb.file_type());
    if ta.is_symlink() || tb.is_symlink() {
        if !(ta.is_symlink() && tb.is_symlink()) {
            return Err(format!(
                "{} / {}: only one is a symlink",
                a.display(),
                b.display()
            ));
        }
        let (la, lb) = (
            std::fs::read_link(a).unwrap(),
            std::fs::read_link(b).unwrap(),
        );
        if la != lb {
            return Err(format!(
                "symlink {} -> {} but {} -> {}",
                a.display(),
                la.display(),
                b.display(),
                lb.display()
            ));
        }
        return Ok(());
    }
    if ta.is_dir() || tb.is_dir() {
        if !(ta.is_dir() && tb.is_dir()) {
            return Err(format!(
                "{} / {}: only one is a directory",
                a.display(),
                b.display()
            ));
        }
        let names = |p: &Path| -> Vec<std::ffi::OsString> {
            let mut v: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        let (na, nb) = (names(a), names(b));
        if na != nb {
            return Err(format!(
                "directory entries differ: {} has {na:?}, {} has {nb:?}",
                a.display(),
                b.display()
            ));
        }
        for n in na {
            diff_trees(&a.join(&n), &b.join(&n))?;
        }
        return Ok(());
    }
    if !(ta.is_file() && tb.is_file()) {
        return Err(format!(
            "{} / {}: not regular files",
            a.display(),
            b.display()
        ));
    }
    let (xa, xb) = (
        ma.permissions().mode() & 0o100 != 0,
        mb.permissions().mode() & 0o100 != 0,
    );
    if xa != xb {
        return Err(format!(
            "executable bit: {} {xa}, {} {xb}",
            a.display(),
            b.display()
        ));
    }
    if ma.len() != mb.len() {
        return Err(format!(
            "size: {} {} bytes, {} {} bytes",
            a.display(),
            ma.len(),
            b.display(),
            mb.len()
        ));
    }
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0u64;
    loop {
        let n = read_full(&mut fa, &mut ba);
        let m = read_full(&mut fb, &mut bb);
        if n != m || ba[..n] != bb[..m] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..m])
                .position(|(x, y)| x != y)
                .unwrap_or(n.min(m));
            return Err(format!(
                "content of {} and {} differs at byte {}",
                a.display(),
                b.display(),
                off + i as u64
            ));
        }
        if n == 0 {
            return Ok(());
        }
        off += n as u64;
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]).unwrap() {
            0 => break,
            k => got += k,
        }
    }
    got
}
