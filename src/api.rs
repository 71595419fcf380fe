//! Wire types and header names shared by the server and the client.
//!
//! Defined once so both sides agree; serde names are the JSON keys of
//! the wire contract.

use serde::{Deserialize, Serialize};

use crate::upload::{DigestAlgorithm, ExpectedDigest};

/// `Content-Digest` (RFC 9530).
pub const CONTENT_DIGEST: &str = "content-digest";
/// Response header naming why a token was ignored on a public cache.
pub const TOKEN_IGNORED: &str = "x-ferry-token-ignored";

/// `POST /_api/v1/caches/{cache}/missing`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MissingRequest {
    pub store_paths: Vec<String>,
}

/// Answer to [`MissingRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MissingResponse {
    pub missing: Vec<String>,
}

/// `POST /_api/v1/caches/{cache}/uploads`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUpload {
    pub store_path: String,
    pub nar_hash: String,
    pub nar_size: u64,
    #[serde(default)]
    pub references: Vec<String>,
    #[serde(default)]
    pub deriver: Option<String>,
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub sigs: Vec<String>,
    /// `none` or `zstd`; defaults to `none`.
    #[serde(default)]
    pub compression: Option<String>,
}

/// `POST /_api/v1/caches/{cache}/batch`: one record's header line. The
/// fields of [`CreateUpload`] plus `size`, the bytes of the NAR (in its
/// `compression`) that follow the line.
pub const BATCH_SIZE_FIELD: &str = "size";

/// Paths one batch may carry.
pub const MAX_BATCH_PATHS: usize = 1000;

/// One path's answer in a batch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchResult {
    pub store_path: String,
    /// `committed`, `verifying` or `failed`.
    pub state: String,
    /// Set when this request published the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub narinfo_url: Option<String>,
    /// Set when nothing was needed: the NarHash the cache publishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nar_hash: Option<String>,
    /// Set when still verifying: the upload to poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Set when failed: the HTTP status and the error body the same
    /// failure gets on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
}

/// The answer to a batch: one result per record, in order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

/// 201 answer to [`CreateUpload`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UploadCreated {
    pub id: String,
    pub upload_url: String,
    pub max_part_size: u64,
    pub expires_at: i64,
}

/// Answer for a part.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartAck {
    pub n: u32,
    pub size: u64,
    pub blake3: String,
}

/// `POST /_api/v1/uploads/{id}/complete`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompleteRequest {
    pub parts: u32,
}

/// One chunk of a chunked upload's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkDecl {
    /// blake3 (lowercase hex) of the chunk's bytes.
    pub blake3: String,
    /// The chunk's size in bytes.
    pub size: u64,
    /// The size of the chunk's zstd frame, as the client would send it.
    pub csize: u64,
}

/// `POST /_api/v1/uploads/{id}/chunks`: the manifest's entries from `from`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddChunks {
    pub from: u64,
    pub chunks: Vec<ChunkDecl>,
}

/// The answer to [`AddChunks`]: the manifest indices whose frames to send,
/// in order; the others the server holds or come earlier in the manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChunksToSend {
    pub send: Vec<u64>,
}

/// `POST /_api/v1/caches`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCache {
    pub name: String,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(default)]
    pub store_dir: Option<String>,
    /// A duration such as `"6 months"`, or null to keep forever.
    #[serde(default)]
    pub retention: Option<String>,
}

/// `POST /_api/v1/tokens/revoke`: one of the two.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_id: Option<String>,
}

/// A cache as `GET /_api/v1/caches/{cache}` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CacheInfo {
    pub name: String,
    pub public: bool,
    pub priority: i64,
    pub store_dir: String,
    pub public_key: String,
    pub max_part_size: u64,
    pub upstream_keys: Vec<String>,
    pub retention: Option<String>,
}

/// `PATCH /_api/v1/caches/{cache}`: only the fields present change.
/// `retention: null` means "keep forever"; an absent key leaves it as is.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigureCache {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    pub retention: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_keys: Option<Vec<String>>,
}

/// Tells an absent key (`None`) from an explicit `null` (`Some(None)`).
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Option<String>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

/// `GET /_api/v1/uploads/{id}` as a client reads it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UploadStatus {
    pub id: String,
    #[serde(default)]
    pub store_path: String,
    /// `open`, `verifying`, `committed` or `failed`.
    pub state: String,
    #[serde(default)]
    pub parts: Vec<PartAck>,
    #[serde(default)]
    pub received_bytes: u64,
    #[serde(default)]
    pub expires_at: i64,
    #[serde(default)]
    pub error: Option<serde_json::Value>,
    /// What the parts are: `none`, `zstd` or `chunked` (older servers:
    /// absent).
    #[serde(default)]
    pub compression: Option<String>,
}

/// Every API error body: `{"error": code, "message": sentence, ...}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default)]
    pub message: String,
}

/// `GET /_api/v1/status`: what the status page shows to this viewer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The server's version.
    pub version: String,
    /// Whether the answer used a token (it was valid).
    pub token: bool,
    /// Public caches, and the private ones the token has a right on.
    pub caches: Vec<CacheStatus>,
    /// Uploads open or verifying in caches the token may push to.
    pub uploads: Vec<InFlightUpload>,
    /// The last garbage collection; without a token, its time only.
    pub last_gc: Option<GcStatus>,
}

/// A cache on the status page.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CacheStatus {
    pub name: String,
    pub public: bool,
    /// Store paths published.
    pub paths: u64,
    /// Compressed NAR bytes published (a NAR shared by caches counts in each).
    pub nar_bytes: u64,
    /// When the cache last published a path (Unix seconds).
    pub last_push: Option<i64>,
}

/// An upload in flight on the status page.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InFlightUpload {
    pub id: String,
    pub cache: String,
    pub store_path: String,
    /// `open` or `verifying`.
    pub state: String,
    /// `none` or `zstd`: what the parts carry.
    pub compression: String,
    /// The declared NarSize (uncompressed).
    pub nar_size: u64,
    /// Parts received, by number, each stored whole.
    pub parts: Vec<PartStatus>,
    pub parts_received: u32,
    pub bytes_received: u64,
    /// The parts count given to `complete`; `null` before.
    pub parts_total: Option<u32>,
    /// Bytes the parts will add up to when known (plain NARs): `nar_size`.
    pub bytes_expected: Option<u64>,
    pub created: i64,
    pub expires_at: i64,
}

/// A received part.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartStatus {
    pub n: u32,
    pub size: u64,
}

/// The last garbage collection run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GcStatus {
    /// When it finished (Unix seconds).
    pub at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths_expired: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploads_removed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_freed: Option<u64>,
    /// Deletions that failed (the next run tries again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<u64>,
}

/// Parses a `Content-Digest` header value; picks the first algorithm we
/// know (`sha-256` or `blake3`). `Ok(None)` when it names none of them.
pub fn parse_content_digest(value: &str) -> Result<Option<ExpectedDigest>, String> {
    use base64::Engine as _;
    for member in value.split(',') {
        let Some((alg, rest)) = member.trim().split_once('=') else {
            return Err(format!(
                "Content-Digest member {member:?} is not algorithm=:base64:"
            ));
        };
        let algorithm = match alg.trim().to_ascii_lowercase().as_str() {
            "sha-256" => DigestAlgorithm::Sha256,
            "blake3" => DigestAlgorithm::Blake3,
            _ => continue,
        };
        let b64 = rest
            .trim()
            .strip_prefix(':')
            .and_then(|r| r.strip_suffix(':'))
            .ok_or_else(|| format!("Content-Digest value for {alg} must be written :base64:"))?;
        let value = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| format!("Content-Digest value for {alg} is not valid base64"))?;
        if value.len() != 32 {
            return Err(format!("Content-Digest value for {alg} must be 32 bytes"));
        }
        return Ok(Some(ExpectedDigest { algorithm, value }));
    }
    Ok(None)
}

/// Renders a `Content-Digest` header value for a SHA-256.
pub fn content_digest_sha256(digest: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_digest_round_trip_and_unknown_algorithms() {
        let d = [7u8; 32];
        let v = content_digest_sha256(&d);
        let parsed = parse_content_digest(&v).unwrap().unwrap();
        assert_eq!(parsed.algorithm, DigestAlgorithm::Sha256);
        assert_eq!(parsed.value, d);
        assert_eq!(parse_content_digest("md5=:AAAA:").unwrap(), None);
        assert!(parse_content_digest("sha-256=nocolons").is_err());
        assert!(parse_content_digest("sha-256=:AAAA:").is_err());
    }
}
