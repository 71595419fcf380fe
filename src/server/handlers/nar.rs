//! `GET`/`HEAD /{cache}/nar/{file}`: the stored NAR, or the NAR itself.
//!
//! `<filehash>.nar.zst` is the stored file (the concatenation of its
//! blobs) with `Range` support (206/416), for Nix's resumed downloads;
//! `<filehash>.nar` is the same NAR decompressed on the fly for clients
//! without zstd. Neither carries a `Content-Encoding`: the bytes are the
//! resource.

use actix_web::http::{Method, StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};

use super::reads::cache_control;
use crate::auth::Operation;
use crate::db::nars;
use crate::error::{Error, Result};
use crate::nar::nix32;
use crate::server::{AppState, access, stream};
use crate::store::{ChainReader, ChunkRef};

/// A NAR file name: the file hash in nix32 and whether it is the zstd file.
fn parse_file(file: &str) -> Option<(String, bool)> {
    let (hash, zst) = match file.strip_suffix(".nar.zst") {
        Some(h) => (h, true),
        None => (file.strip_suffix(".nar")?, false),
    };
    let ok = hash.len() == 52 && nix32::decode(hash).is_ok();
    ok.then(|| (format!("sha256:{hash}"), zst))
}

/// Parses a single `bytes=` range against a size. `Ok(None)`: whole file.
pub fn parse_range(value: &str, size: u64) -> Result<Option<(u64, u64)>> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // several ranges: answer with the whole file
    }
    let (a, b) = spec
        .split_once('-')
        .ok_or(Error::RangeNotSatisfiable { size })?;
    let (a, b) = (a.trim(), b.trim());
    let bad = || Error::RangeNotSatisfiable { size };
    // RFC 9110: digits only (`u64::from_str` would also take a `+`).
    let num = |s: &str| -> Result<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let (start, end) = if a.is_empty() {
        let n = num(b)?;
        if n == 0 || size == 0 {
            return Err(bad());
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let start = num(a)?;
        let end = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            num(b)?.min(size.saturating_sub(1))
        };
        (start, end)
    };
    if size == 0 || start >= size || start > end {
        return Err(bad());
    }
    Ok(Some((start, end)))
}

/// Serves a NAR file.
pub async fn get(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (name, file) = path.into_inner();
    let cache = access::cache(&state, &req, &name, Operation::Pull).await?;
    let not_found = || Error::NotFound(format!("nar/{file}"));
    let (file_hash, zst) = parse_file(&file).ok_or_else(not_found)?;
    let cache_id = cache.id;
    let (nar, chunks) = state
        .db
        .lookup(move |c| nars::nar_for_file(c, cache_id, &file_hash))
        .await?
        .ok_or_else(not_found)?;
    state.access.nar(cache.id, nar.id);
    let chunks: Vec<ChunkRef> = chunks
        .into_iter()
        .map(|c| ChunkRef {
            blob: c.blob,
            offset: c.offset,
            size: c.size,
        })
        .collect();
    let head = req.method() == Method::HEAD;
    let cc = if cache.public {
        "public, max-age=31536000, immutable".to_owned()
    } else {
        cache_control(false, 0)
    };
    let mut res = HttpResponse::Ok();
    res.insert_header((header::CACHE_CONTROL, cc));
    if !zst {
        res.content_type("application/x-nix-nar");
        if head {
            return Ok(res.no_chunking(nar.nar_size).streaming(stream::empty()));
        }
        let raw = ChainReader::new(state.store.clone(), &chunks, 0, nar.file_size);
        let decoder = zstd::stream::read::Decoder::new(raw).map_err(Error::internal)?;
        return Ok(res
            .no_chunking(nar.nar_size)
            .streaming(stream::from_reader(decoder)));
    }
    res.content_type("application/zstd")
        .insert_header((header::ACCEPT_RANGES, "bytes"));
    let size = nar.file_size;
    let range = match req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
    {
        Some(v) => parse_range(v, size)?,
        None => None,
    };
    let (start, len) = match range {
        Some((s, e)) => {
            res.status(StatusCode::PARTIAL_CONTENT)
                .insert_header((header::CONTENT_RANGE, format!("bytes {s}-{e}/{size}")));
            (s, e - s + 1)
        }
        None => (0, size),
    };
    if head {
        return Ok(res.no_chunking(len).streaming(stream::empty()));
    }
    let reader = ChainReader::new(state.store.clone(), &chunks, start, len);
    Ok(res.no_chunking(len).streaming(stream::from_reader(reader)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=0-1000", 100).unwrap(), Some((0, 99)));
        assert_eq!(parse_range("bytes=0-1,5-6", 100).unwrap(), None);
        assert!(parse_range("bytes=100-", 100).is_err());
        assert!(parse_range("bytes=5-2", 100).is_err());
        assert!(parse_range("bytes=x-2", 100).is_err());
        assert!(parse_range("bytes=-5", 0).is_err());
        assert!(parse_range("bytes=+0-5", 100).is_err());
        assert!(parse_range("bytes=0-+5", 100).is_err());
        assert!(parse_range("bytes=-+5", 100).is_err());
    }
}
