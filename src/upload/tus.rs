//! tus 1.0 mapped onto the engine: the second door, not a second engine.
//!
//! - A tus upload *is* an engine upload (same id); each PATCH becomes the
//!   next numbered part, so the tus offset is the sum of the parts, the
//!   verifier folds every chunk as it lands, and the PATCH that reaches
//!   `Upload-Length` completes the upload: it publishes or reports the
//!   mismatch.
//! - A PATCH cut mid-body keeps what arrived (tus semantics), unless it
//!   carried an `Upload-Checksum`, which a cut chunk cannot match.
//! - Concatenation: a partial upload is an engine *bucket* (parts only,
//!   never verified); the final upload absorbs its partials' parts in order
//!   (renames) and completes at once.
//! - `Upload-Metadata` carries the narinfo fields: `store_path`,
//!   `nar_hash`, `nar_size`, `references` (space-separated), optional
//!   `deriver`, `ca`, `compression` (`none` or `zstd`, default `none`).

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::Stream;

use super::{Completion, Compression, Engine, ExpectedDigest, NewUpload, PartRules};
use crate::db::caches::CacheRow;
use crate::db::tus::{self, TusKind, TusRow};
use crate::db::uploads::{self, UploadMeta, UploadState};
use crate::error::{Error, Result};
use crate::nar::{Sha256Hash, StorePath};

/// The longest a final PATCH waits for the verdict.
const TUS_VERDICT_WAIT: std::time::Duration = std::time::Duration::from_secs(90);

/// What `Upload-Concat` asked for at creation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Concat {
    None,
    Partial,
    /// The partial upload ids, in order, and the header as sent.
    Final(Vec<String>, String),
}

/// A creation request.
#[derive(Clone, Debug)]
pub struct TusCreate {
    /// `Upload-Length`; `None` with `Upload-Defer-Length: 1`.
    pub length: Option<u64>,
    /// `Upload-Metadata` as sent.
    pub metadata: String,
    pub concat: Concat,
    /// Who creates it (the token's first revocation id), for the quota.
    pub owner: Option<String>,
}

/// What HEAD reports.
#[derive(Clone, Debug)]
pub struct TusInfo {
    pub id: String,
    pub kind: TusKind,
    pub offset: u64,
    pub length: Option<u64>,
    pub metadata: String,
    pub concat: String,
    pub expires_at: i64,
    pub state: UploadState,
}

/// Parses `Upload-Metadata`: comma-separated `key base64value` pairs.
/// tus requires every key to be unique: a repeated key is refused rather
/// than one of its values picked silently.
pub fn parse_metadata(header: &str) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for pair in header.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = match pair.split_once(' ') {
            Some((k, v)) => (k, v.trim()),
            None => (pair, ""),
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|_| {
                Error::BadRequest(format!("Upload-Metadata value of {key:?} is not base64"))
            })?;
        let text = String::from_utf8(bytes).map_err(|_| {
            Error::BadRequest(format!("Upload-Metadata value of {key:?} is not UTF-8"))
        })?;
        if out.insert(key.to_owned(), text).is_some() {
            return Err(Error::BadRequest(format!(
                "Upload-Metadata gives the key {key:?} more than once: tus metadata keys must be unique, send each key once"
            )));
        }
    }
    Ok(out)
}

/// The narinfo fields a tus upload declares in its metadata.
fn new_upload(cache: &CacheRow, metadata: &str) -> Result<NewUpload> {
    let m = parse_metadata(metadata)?;
    let need = |k: &str| {
        m.get(k).ok_or_else(|| {
            Error::BadRequest(format!(
                "Upload-Metadata lacks {k:?}: give store_path, nar_hash, nar_size and references"
            ))
        })
    };
    let nar_size = need("nar_size")?
        .trim()
        .parse::<u64>()
        .map_err(|_| Error::BadRequest("Upload-Metadata nar_size is not a number".into()))?;
    let references: Vec<String> = m
        .get("references")
        .map(|r| r.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    for r in references.iter().chain(m.get("deriver")) {
        StorePath::parse(r, &cache.store_dir)?;
    }
    let compression = Compression::of_parts(m.get("compression").map(|c| c.as_str()))?;
    if compression == Compression::Chunked {
        return Err(Error::BadRequest(
            "compression \"chunked\" needs the parts API (its chunk list has no tus form): use \"none\" or \"zstd\"".into(),
        ));
    }
    Ok(NewUpload {
        store_path: StorePath::parse(need("store_path")?, &cache.store_dir)?,
        nar_hash: Sha256Hash::parse(need("nar_hash")?)?,
        nar_size,
        meta: UploadMeta {
            references,
            deriver: m.get("deriver").cloned(),
            ca: m.get("ca").cloned(),
            sigs: vec![],
            file_hash: None,
            file_size: None,
        },
        compression,
        owner: None,
    })
}

impl Engine {
    /// Creates a tus upload (single, partial or final). A final upload is
    /// completed at once; its answer says whether it published.
    pub async fn tus_create(
        self: &Arc<Self>,
        cache: &CacheRow,
        req: TusCreate,
    ) -> Result<(TusInfo, Option<Completion>)> {
        if req.length == Some(0) {
            return Err(Error::BadRequest(
                "Upload-Length must be greater than 0".into(),
            ));
        }
        let (id, kind, length, concat) = match &req.concat {
            Concat::None => {
                let mut new = new_upload(cache, &req.metadata)?;
                new.owner = req.owner.clone();
                let (id, _) = self.create_upload(cache, new).await?;
                (id, TusKind::Single, req.length, String::new())
            }
            Concat::Partial => {
                let (id, _) = self.create_bucket(cache, req.owner.clone()).await?;
                (id, TusKind::Partial, req.length, String::new())
            }
            Concat::Final(partials, header) => {
                let mut new = new_upload(cache, &req.metadata)?;
                new.owner = req.owner.clone();
                let mut total = 0;
                for p in partials {
                    let info = self.tus_info(p).await?;
                    let complete =
                        info.kind == TusKind::Partial && info.length == Some(info.offset);
                    if !complete {
                        return Err(Error::BadRequest(format!(
                            "partial upload {p} is not a finished partial upload: finish it before concatenating"
                        )));
                    }
                    total += info.offset;
                }
                let (id, _) = self.create_upload(cache, new).await?;
                (id, TusKind::Final, Some(total), header.clone())
            }
        };
        let row = TusRow {
            id: id.clone(),
            kind,
            upload_length: length,
            metadata: req.metadata.clone(),
            concat,
        };
        self.db.write(move |tx| tus::insert(tx, &row)).await?;
        let mut completion = None;
        if let Concat::Final(partials, _) = &req.concat {
            self.absorb(&id, partials).await?;
            let key = id.clone();
            let n = self.db.call(move |c| uploads::parts(c, &key)).await?.len() as u32;
            completion = Some(self.complete(&id, n).await?);
        }
        Ok((self.tus_info(&id).await?, completion))
    }

    /// What HEAD reports. `UploadNotFound` once terminated or expired.
    pub async fn tus_info(&self, id: &str) -> Result<TusInfo> {
        let row = self.get(id).await?;
        let key = id.to_owned();
        let (t, parts) = self
            .db
            .call(move |c| Ok((tus::get(c, &key)?, uploads::parts(c, &key)?)))
            .await?;
        let t = t.ok_or_else(|| Error::UploadNotFound(id.to_owned()))?;
        let offset = match row.state {
            UploadState::Committed => t.upload_length.unwrap_or(0),
            _ => parts.iter().map(|p| p.size).sum(),
        };
        Ok(TusInfo {
            id: t.id,
            kind: t.kind,
            offset,
            length: t.upload_length,
            metadata: t.metadata,
            concat: t.concat,
            expires_at: row.expires_at,
            state: row.state,
        })
    }

    /// Appends a PATCH body at `offset`. When the upload reaches its length
    /// it is completed, and the completion is returned beside the new state.
    pub async fn tus_append<S, E>(
        self: &Arc<Self>,
        id: &str,
        offset: u64,
        length: Option<u64>,
        content_length: Option<u64>,
        checksum: Option<ExpectedDigest>,
        body: S,
    ) -> Result<(TusInfo, Option<Completion>)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let lock = {
            let mut locks = self.tus_locks.lock().map_err(Error::internal)?;
            locks.entry(id.to_owned()).or_default().clone()
        };
        let _guard = lock.lock().await;
        let mut info = self.tus_info(id).await?;
        if info.kind == TusKind::Final {
            return Err(Error::TusFinalPatch);
        }
        if info.state != UploadState::Open {
            return Err(Error::UploadClosed {
                id: id.to_owned(),
                state: info.state.as_str().to_owned(),
            });
        }
        if offset != info.offset {
            return Err(Error::TusOffsetMismatch {
                expected: info.offset,
                got: offset,
            });
        }
        match (info.length, length) {
            (None, Some(l)) => {
                if l < info.offset || l == 0 {
                    return Err(Error::BadRequest(format!(
                        "Upload-Length {l} is below the bytes already received"
                    )));
                }
                let key = id.to_owned();
                self.db
                    .write(move |tx| tus::set_length(tx, &key, l))
                    .await?;
                info.length = Some(l);
            }
            (Some(have), Some(l)) if have != l => {
                return Err(Error::BadRequest(format!(
                    "Upload-Length is already {have} and cannot change"
                )));
            }
            _ => {}
        }
        let len = content_length.ok_or(Error::LengthRequired)?;
        if let Some(total) = info.length
            && offset + len > total
        {
            return Err(Error::TusLengthExceeded {
                length: total,
                would_be: offset + len,
            });
        }
        if len > 0 {
            let key = id.to_owned();
            let n = self.db.call(move |c| uploads::parts(c, &key)).await?.len() as u64 + 1;
            let rules = PartRules {
                content_length: Some(len),
                digest: checksum,
                keep_partial: true,
            };
            match self.put_part(id, n, rules, body).await {
                Ok(_) => {}
                Err(Error::PartDigestMismatch { .. }) => return Err(Error::TusChecksumMismatch),
                Err(e) => return Err(e),
            }
        }
        let info = self.tus_info(id).await?;
        let done = info.kind == TusKind::Single && info.length == Some(info.offset);
        if !done {
            return Ok((info, None));
        }
        let key = id.to_owned();
        let n = self.db.call(move |c| uploads::parts(c, &key)).await?.len() as u32;
        // tus has no "still checking" answer: the final PATCH waits for
        // the verdict, up to 90 s (under a tunnel's 100 s). Past that it
        // answers with `Ferry-Upload-State: verifying`, and HEAD tells the
        // rest.
        let wait = (self.cfg.complete_wait * 3).min(TUS_VERDICT_WAIT);
        let completion = self.complete_within(id, n, wait).await?;
        Ok((self.tus_info(id).await?, Some(completion)))
    }

    /// Termination: the upload and its parts are removed.
    pub async fn tus_terminate(&self, id: &str) -> Result<()> {
        self.tus_info(id).await?;
        self.remove(id).await?;
        if let Ok(mut locks) = self.tus_locks.lock() {
            locks.remove(id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_pairs_decode() {
        let m = parse_metadata("store_path L25peC9zdG9yZS94, empty,nar_size MTI=").unwrap();
        assert_eq!(m["store_path"], "/nix/store/x");
        assert_eq!(m["empty"], "");
        assert_eq!(m["nar_size"], "12");
        assert!(parse_metadata("k !!!").is_err());
    }

    #[test]
    fn duplicate_metadata_keys_are_refused_naming_the_key() {
        // Two store_path values: tus says keys MUST be unique.
        let header = "store_path L25peC9zdG9yZS94,nar_size MTI=,store_path L25peC9zdG9yZS95";
        let e = parse_metadata(header).unwrap_err();
        assert!(matches!(e, Error::BadRequest(_)), "{e:?}");
        assert_eq!(e.code(), "bad_request");
        assert!(e.to_string().contains("\"store_path\""), "{e}");
        // Also when the repeats carry the same value, or no value at all.
        assert!(parse_metadata("a MTI=,a MTI=").is_err());
        assert!(parse_metadata("flag,flag").is_err());
        // Distinct keys still pass.
        assert_eq!(parse_metadata("a MTI=,b MTI=").unwrap().len(), 2);
    }
}
