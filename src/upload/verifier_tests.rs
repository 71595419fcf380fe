//! Tests of [`super::Verifier`]: every stage sees every byte, errors reach
//! the caller, zstd is checked to its end, faults are not verdicts.

use super::*;
use crate::nar::{Tree, write_nar};

/// A NAR of one regular file of `len` text-like bytes.
fn nar(len: usize) -> Vec<u8> {
    let contents = (0..len).map(|i| b"ferry nar\n"[i % 10]).collect();
    write_nar(&Tree::Regular {
        executable: false,
        contents,
    })
}

/// Folds `bytes` as parts of `part` bytes and finishes.
fn verify(compression: Compression, nar_size: u64, bytes: &[u8], part: usize) -> Result<Verdict> {
    let dir = tempfile::tempdir().unwrap();
    let mut v = Verifier::new(compression, nar_size, &dir.path().join("out.zst"), 3)?;
    for chunk in bytes.chunks(part) {
        v.fold(chunk, "", Path::new(""))?;
    }
    v.finish()
}

#[test]
fn both_stages_see_every_byte_whatever_the_part_size() {
    let nar = nar(3_000_000);
    let hash = Sha256Hash(Sha256::digest(&nar).into());
    let zst = zstd::encode_all(&nar[..], 3).unwrap();
    for part in [1_000, 65_536, 262_144, 1 << 20, zst.len()] {
        let v = verify(Compression::Zstd, nar.len() as u64, &zst, part).unwrap();
        assert_eq!(
            (v.nar_hash, v.nar_size),
            (hash, nar.len() as u64),
            "part {part}"
        );
        assert_eq!(v.upload_size, zst.len() as u64);
        assert!(v.listing.is_some());
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.zst");
    let mut v = Verifier::new(Compression::None, nar.len() as u64, &out, 3).unwrap();
    for chunk in nar.chunks(100_000) {
        v.fold(chunk, "", Path::new("")).unwrap();
    }
    let v = v.finish().unwrap();
    assert_eq!(v.nar_hash, hash);
    let stored = std::fs::read(&out).unwrap();
    assert_eq!(zstd::decode_all(&stored[..]).unwrap(), nar);
    assert_eq!(v.compressed.unwrap().size, stored.len() as u64);
}

#[test]
fn second_stage_errors_reach_the_caller() {
    let nar = nar(2_000_000);
    let zst = zstd::encode_all(&nar[..], 3).unwrap();
    // Declared smaller than it is: caught while folding or at the end.
    let e = verify(Compression::Zstd, 1_000_000, &zst, 65_536)
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            Error::NarSizeMismatch {
                expected: 1_000_000,
                ..
            }
        ),
        "{e:?}"
    );
    // Declared larger: a verdict at the end.
    let e = verify(Compression::Zstd, 3_000_000, &zst, 65_536)
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            Error::NarSizeMismatch {
                expected: 3_000_000,
                ..
            }
        ),
        "{e:?}"
    );
    // Not a NAR.
    let junk = vec![7u8; 1_000_000];
    let zjunk = zstd::encode_all(&junk[..], 3).unwrap();
    let e = verify(Compression::Zstd, 1_000_000, &zjunk, 4096)
        .err()
        .unwrap();
    assert!(matches!(e, Error::InvalidNar(_)), "{e:?}");
    let e = verify(Compression::None, 1_000_000, &junk, 4096)
        .err()
        .unwrap();
    assert!(matches!(e, Error::InvalidNar(_)), "{e:?}");
    // Not zstd.
    let e = verify(Compression::Zstd, nar.len() as u64, &nar, 65_536)
        .err()
        .unwrap();
    assert!(matches!(e, Error::InvalidCompression(_)), "{e:?}");
}

/// zstd of `data` with a content checksum at the end of the frame.
fn zstd_with_checksum(data: &[u8]) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(vec![], 3).unwrap();
    enc.include_checksum(true).unwrap();
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[test]
fn zstd_is_checked_to_the_end_of_its_last_frame() {
    let nar = nar(500_000);
    let size = nar.len() as u64;
    let zst = zstd_with_checksum(&nar);
    assert!(verify(Compression::Zstd, size, &zst, 65_536).is_ok());
    // Two frames, one after the other: a valid stream.
    let (a, b) = nar.split_at(123_457);
    let two = [zstd_with_checksum(a), zstd_with_checksum(b)].concat();
    assert!(verify(Compression::Zstd, size, &two, 4096).is_ok());
    // Every NAR byte is there, the checksum is not.
    let cut = &zst[..zst.len() - 4];
    let e = verify(Compression::Zstd, size, cut, 65_536).err().unwrap();
    assert!(matches!(e, Error::InvalidCompression(_)), "{e:?}");
    // The start of another frame after the last one.
    let tail = [&zst[..], &zst[..6]].concat();
    let e = verify(Compression::Zstd, size, &tail, 65_536)
        .err()
        .unwrap();
    assert!(matches!(e, Error::InvalidCompression(_)), "{e:?}");
    // Bytes after the last frame that are no frame at all.
    let junk = [&zst[..], b"trailing junk".as_slice()].concat();
    let e = verify(Compression::Zstd, size, &junk, 65_536)
        .err()
        .unwrap();
    assert!(matches!(e, Error::InvalidCompression(_)), "{e:?}");
}

#[test]
fn a_full_disk_while_compressing_is_a_fault_not_a_verdict() {
    // /dev/full fails every write with ENOSPC, as a full filesystem does.
    let nar = nar(3_000_000);
    let mut v = Verifier::new(
        Compression::None,
        nar.len() as u64,
        Path::new("/dev/full"),
        3,
    )
    .unwrap();
    let mut res = Ok(());
    for chunk in nar.chunks(1 << 20) {
        res = v.fold(chunk, "", Path::new(""));
        if res.is_err() {
            break;
        }
    }
    let e = match res {
        Err(e) => e,
        Ok(()) => v.finish().err().unwrap(),
    };
    assert!(matches!(e, Error::InsufficientStorage(_)), "{e:?}");
    assert!(!e.is_verdict() && e.is_fault());
}

#[test]
fn a_frame_asking_for_a_huge_window_is_refused() {
    let nar = nar(200_000);
    let mut enc = zstd::stream::write::Encoder::new(vec![], 3).unwrap();
    enc.window_log(27).unwrap();
    enc.long_distance_matching(true).unwrap();
    enc.write_all(&nar).unwrap();
    let zst = enc.finish().unwrap();
    let e = verify(Compression::Zstd, nar.len() as u64, &zst, 65_536)
        .err()
        .unwrap();
    match e {
        Error::InvalidCompression(m) => assert!(m.contains("window"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Level 19's window is within the limit.
    let zst = zstd::encode_all(&nar[..], 19).unwrap();
    assert!(verify(Compression::Zstd, nar.len() as u64, &zst, 65_536).is_ok());
}

#[test]
fn xz_is_decoded_checked_and_stored_as_zstd() {
    let nar = nar(400_000);
    let mut enc = xz2::write::XzEncoder::new(vec![], 6);
    enc.write_all(&nar).unwrap();
    let xz = enc.finish().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.zst");
    let mut v = Verifier::new(Compression::Xz, nar.len() as u64, &out, 3).unwrap();
    for chunk in xz.chunks(10_000) {
        v.fold(chunk, "", Path::new("")).unwrap();
    }
    let verdict = v.finish().unwrap();
    assert_eq!(verdict.nar_hash, Sha256Hash(Sha256::digest(&nar).into()));
    let stored = std::fs::read(&out).unwrap();
    assert_eq!(zstd::decode_all(&stored[..]).unwrap(), nar);
    // Cut before its end: refused.
    let e = verify(
        Compression::Xz,
        nar.len() as u64,
        &xz[..xz.len() - 8],
        10_000,
    )
    .err()
    .unwrap();
    assert!(matches!(e, Error::InvalidCompression(_)), "{e:?}");
    // Not xz at all.
    let e = verify(Compression::Xz, nar.len() as u64, &nar, 10_000)
        .err()
        .unwrap();
    assert!(matches!(e, Error::InvalidCompression(_)), "{e:?}");
}

/// A plain NAR compressed part by part as the receive path does it (each
/// part its own frames), folded from the frames: judged as the NAR sent,
/// with the frames' SHA-256 and size as the stored file; a small NAR is
/// checked on the caller's thread, a large one on the second stage.
#[test]
fn plain_parts_kept_as_frames_are_judged_as_sent() {
    for len in [10_000usize, 5_000_000] {
        let nar = nar(len);
        let hash = Sha256Hash(Sha256::digest(&nar).into());
        let parts: Vec<Vec<u8>> = nar
            .chunks(1_500_000)
            .map(|p| {
                let mut w = super::super::compress::FrameWriter::new(Vec::new(), 3).unwrap();
                w.write_all(p).unwrap();
                w.finish().unwrap()
            })
            .collect();
        let mut v = Verifier::plain_frames(nar.len() as u64).unwrap();
        assert!(v.takes_frames());
        for p in &parts {
            v.fold(&p[..], "", Path::new("")).unwrap();
        }
        let v = v.finish().unwrap();
        let frames: Vec<u8> = parts.concat();
        assert_eq!((v.nar_hash, v.nar_size), (hash, nar.len() as u64), "{len}");
        // What was sent is the NAR; what is stored is the frames.
        assert_eq!((v.upload_hash, v.upload_size), (hash, nar.len() as u64));
        let stored = v.frames_file.unwrap();
        assert_eq!(stored.0, Sha256Hash(Sha256::digest(&frames).into()));
        assert_eq!(stored.1, frames.len() as u64);
        assert!(v.compressed.is_none(), "nothing is written at verify time");
        assert!(v.listing.is_some());
    }
    // The NAR sent is judged: a cut NAR is a verdict, not a fault.
    let nar = nar(10_000);
    let frames = zstd::bulk::compress(&nar[..5_000], 3).unwrap();
    let mut v = Verifier::plain_frames(nar.len() as u64).unwrap();
    v.fold(&frames[..], "", Path::new("")).unwrap();
    let e = v.finish().err().unwrap();
    assert!(e.is_verdict(), "{e:?}");
    // Frames of the server's own that do not decode are a fault.
    let mut v = Verifier::plain_frames(nar.len() as u64).unwrap();
    let e = v
        .fold(&b"not zstd at all"[..], "", Path::new(""))
        .and_then(|()| v.finish().map(|_| ()))
        .err()
        .unwrap();
    assert!(!e.is_verdict(), "{e:?}");
}
