//! The one error type of the server side.
//!
//! Every failure a request can meet is a named variant here; its `Display`
//! is the sentence the user reads. `server::error` maps each variant to an
//! HTTP status and a stable snake_case code in one exhaustive match, so a
//! new variant cannot be added without deciding how it looks on the wire.
//! `Internal` carries the detail for the log only: it is never sent.

use crate::auth::{AuthError, Operation};
use crate::nar::FormatError;

/// Result alias for the server side.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the cache name {0:?} is invalid: use 1 to 64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
    )]
    InvalidCacheName(String),
    #[error("no cache named {0:?} exists, or your token gives no access to it")]
    CacheNotFound(String),
    #[error("a cache named {0:?} already exists: pick another name")]
    CacheExists(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Format(#[from] FormatError),
    #[error(
        "no upload with id {0} exists (it may have expired or been abandoned): start a new upload"
    )]
    UploadNotFound(String),
    #[error("upload {id} is {state}: it can no longer be changed")]
    UploadClosed { id: String, state: String },
    #[error(
        "the manifest holds {expected} chunks and differs from this batch: declare chunks from {expected} on, or resend the recorded ones unchanged"
    )]
    ManifestConflict { expected: u64 },
    #[error("part number {0} is invalid: parts are numbered from 1 to 100000")]
    BadPartNumber(u64),
    #[error(
        "the part is {size} bytes, over the limit of {limit} bytes: split the NAR into smaller parts"
    )]
    PartTooLarge { size: u64, limit: u64 },
    #[error(
        "the part was sent without Content-Length: send each part with a Content-Length header, not chunked"
    )]
    LengthRequired,
    #[error("the part body ended after {got} of {expected} bytes: send the part again")]
    PartTruncated { got: u64, expected: u64 },
    #[error(
        "the part's {algorithm} digest does not match Content-Digest: the part was not kept, send it again"
    )]
    PartDigestMismatch {
        algorithm: String,
        expected: String,
        actual: String,
    },
    #[error(
        "part {n} was not kept: the verifier already found part {at} wrong ({verdict}); replace part {at} or an earlier one, or start a new upload"
    )]
    PartAfterVerdict { n: u32, at: u32, verdict: String },
    #[error(
        "the request body is {size} bytes, over this request's limit of {limit} bytes: send less per request"
    )]
    BodyTooLarge { size: u64, limit: u64 },
    #[error(
        "not published: its reference {0} failed earlier in this batch; fix that path and send both again"
    )]
    ReferenceNotPublished(String),
    #[error("{count} store paths in one request, over the limit of {limit}: split the request")]
    TooManyPaths { count: usize, limit: usize },
    #[error(
        "nar_size {size} is over this server's max-nar-size of {limit} bytes: this path cannot be pushed here"
    )]
    NarTooLarge { size: u64, limit: u64 },
    #[error(
        "this token already has {limit} uploads open: complete or abandon some, or wait for them to expire"
    )]
    TooManyUploads { limit: u64 },
    #[error("parts {missing:?} have not been received: send them, then call complete again")]
    MissingParts { missing: Vec<u32> },
    #[error("the NAR's hash does not match the declared nar_hash: nothing was published")]
    NarHashMismatch { expected: String, actual: String },
    #[error("the NAR's size does not match the declared nar_size: nothing was published")]
    NarSizeMismatch { expected: u64, actual: u64 },
    #[error("the uploaded file's hash does not match FileHash: nothing was published")]
    FileHashMismatch { expected: String, actual: String },
    #[error("the uploaded file's size does not match FileSize: nothing was published")]
    FileSizeMismatch { expected: u64, actual: u64 },
    #[error("the uploaded bytes are not a valid NAR: {0}; nothing was published")]
    InvalidNar(String),
    #[error("the uploaded bytes are not valid zstd: {0}; nothing was published")]
    InvalidCompression(String),
    #[error("no NAR file was uploaded at {0}: PUT the NAR before its narinfo")]
    NarFileMissing(String),
    #[error(
        "Upload-Offset is {got} but the upload is at {expected}: send HEAD and resume from its offset"
    )]
    TusOffsetMismatch { expected: u64, got: u64 },
    #[error("the chunk's Upload-Checksum does not match: it was not kept, send it again")]
    TusChecksumMismatch,
    #[error("a final (concatenated) upload takes no PATCH: send bytes to its partial uploads")]
    TusFinalPatch,
    #[error("the upload would grow to {would_be} bytes, over its Upload-Length of {length}")]
    TusLengthExceeded { length: u64, would_be: u64 },
    #[error("Upload-Length {size} is over this server's Tus-Max-Size of {limit} bytes")]
    TusTooLarge { size: u64, limit: u64 },
    #[error("this server speaks tus 1.0.0: send Tus-Resumable: 1.0.0")]
    TusVersion,
    #[error("a PATCH body must be sent with Content-Type: application/offset+octet-stream")]
    TusContentType,
    #[error("the upload failed verification earlier; start a new upload")]
    UploadFailed(serde_json::Value),
    #[error("this server does not answer for host {0:?}: use one of its configured host names")]
    HostNotAllowed(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error(
        "the build log is over this server's limit of {limit} bytes (uncompressed): it was not stored"
    )]
    LogTooLarge { limit: u64 },
    #[error("the requested range is not satisfiable for a file of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error(
        "a token is required: send it as 'Authorization: Bearer <token>' or as the password of HTTP Basic auth"
    )]
    Unauthenticated,
    #[error("your token does not allow `{0}` on this cache; ask for a token with the `{0}` right")]
    Forbidden(Operation),
    #[error(
        "the server's disk is full: everything acknowledged so far is kept; send the same request again once space is freed"
    )]
    InsufficientStorage(String),
    #[error(
        "the server met a temporary fault (an I/O error, or a file it needed was busy): nothing was lost; try again later"
    )]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl Error {
    /// An internal error with a message for the log.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal(e.to_string())
    }

    /// What went wrong underneath a fault, for the operator's log (the
    /// OS or database wording): never sent to a client.
    pub fn log_detail(&self) -> Option<&str> {
        match self {
            Error::Internal(d)
            | Error::Unavailable(d)
            | Error::InsufficientStorage(d)
            | Error::Auth(AuthError::Internal(d)) => Some(d),
            _ => None,
        }
    }
}

impl Error {
    /// Whether this is a verdict on the uploaded bytes (they do not match
    /// what was declared, or are not a NAR): the upload fails for good.
    /// Other errors during verification leave it open to retry.
    pub fn is_verdict(&self) -> bool {
        matches!(
            self,
            Error::NarHashMismatch { .. }
                | Error::NarSizeMismatch { .. }
                | Error::FileHashMismatch { .. }
                | Error::FileSizeMismatch { .. }
                | Error::InvalidNar(_)
                | Error::InvalidCompression(_)
        )
    }

    /// The stable snake_case code sent as `"error"`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidCacheName(_) => "invalid_cache_name",
            Error::CacheNotFound(_) => "cache_not_found",
            Error::CacheExists(_) => "cache_exists",
            Error::BadRequest(_) => "bad_request",
            Error::Format(_) => "invalid_format",
            Error::UploadNotFound(_) => "upload_not_found",
            Error::UploadClosed { .. } => "upload_closed",
            Error::ManifestConflict { .. } => "manifest_conflict",
            Error::BadPartNumber(_) => "bad_part_number",
            Error::PartTooLarge { .. } => "part_too_large",
            Error::LengthRequired => "length_required",
            Error::PartTruncated { .. } => "part_truncated",
            Error::PartDigestMismatch { .. } => "part_digest_mismatch",
            Error::MissingParts { .. } => "missing_parts",
            Error::BodyTooLarge { .. } => "body_too_large",
            Error::NarTooLarge { .. } => "nar_too_large",
            Error::TooManyUploads { .. } => "too_many_uploads",
            Error::TooManyPaths { .. } => "too_many_paths",
            Error::ReferenceNotPublished(_) => "reference_not_published",
            Error::PartAfterVerdict { .. } => "part_after_verdict",
            Error::NarHashMismatch { .. } => "nar_hash_mismatch",
            Error::NarSizeMismatch { .. } => "nar_size_mismatch",
            Error::FileHashMismatch { .. } => "file_hash_mismatch",
            Error::FileSizeMismatch { .. } => "file_size_mismatch",
            Error::InvalidNar(_) => "invalid_nar",
            Error::InvalidCompression(_) => "invalid_compression",
            Error::NarFileMissing(_) => "nar_file_missing",
            Error::UploadFailed(_) => "upload_failed",
            Error::TusOffsetMismatch { .. } => "offset_mismatch",
            Error::TusChecksumMismatch => "checksum_mismatch",
            Error::TusFinalPatch => "final_upload_patch",
            Error::TusLengthExceeded { .. } => "upload_length_exceeded",
            Error::TusVersion => "unsupported_tus_version",
            Error::TusTooLarge { .. } => "upload_too_large",
            Error::TusContentType => "unsupported_media_type",
            Error::NotFound(_) => "not_found",
            Error::HostNotAllowed(_) => "host_not_allowed",
            Error::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            Error::LogTooLarge { .. } => "log_too_large",
            Error::Auth(e) => match e {
                AuthError::Expired => "token_expired",
                AuthError::Revoked => "token_revoked",
                AuthError::BadSignature => "token_bad_signature",
                AuthError::Malformed(_) | AuthError::TooLong => "token_invalid",
                AuthError::NoAccess => "unauthorized",
                AuthError::Forbidden { .. } => "forbidden",
                AuthError::InvalidName(_) => "invalid_name",
                AuthError::InvalidDuration(_) => "invalid_duration",
                AuthError::Internal(_) => "internal",
            },
            Error::Unauthenticated => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::InsufficientStorage(_) => "insufficient_storage",
            Error::Unavailable(_) => "unavailable",
            Error::Internal(_) => "internal",
        }
    }

    /// The JSON body: `{"error", "message", ...details}`. An upload that
    /// failed earlier answers with the body it failed with.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        if let Error::UploadFailed(body) = self
            && body.is_object()
        {
            return body.clone();
        }
        let mut body = json!({"error": self.code(), "message": self.to_string()});
        let details = match self {
            Error::PartTooLarge { size, limit } | Error::BodyTooLarge { size, limit } => {
                json!({"size": size, "limit": limit})
            }
            Error::TooManyPaths { count, limit } => json!({"count": count, "limit": limit}),
            Error::ReferenceNotPublished(r) => json!({"reference": r}),
            Error::NarTooLarge { size, limit } => json!({"size": size, "limit": limit}),
            Error::TooManyUploads { limit } => json!({"limit": limit}),
            Error::PartDigestMismatch {
                algorithm,
                expected,
                actual,
            } => {
                json!({"algorithm": algorithm, "expected": expected, "actual": actual})
            }
            Error::MissingParts { missing } => json!({"missing": missing}),
            Error::ManifestConflict { expected } => json!({"expected_from": expected}),
            Error::PartAfterVerdict { at, .. } => json!({"failed_part": at}),
            Error::NarHashMismatch { expected, actual }
            | Error::FileHashMismatch { expected, actual } => {
                json!({"expected": expected, "actual": actual})
            }
            Error::NarSizeMismatch { expected, actual }
            | Error::FileSizeMismatch { expected, actual } => {
                json!({"expected": expected, "actual": actual})
            }
            Error::PartTruncated { got, expected } => {
                json!({"received": got, "expected": expected})
            }
            Error::TusOffsetMismatch { expected, got } => json!({"offset": expected, "sent": got}),
            Error::LogTooLarge { limit } => json!({"limit": limit}),
            _ => json!({}),
        };
        if let (Some(b), Some(d)) = (body.as_object_mut(), details.as_object()) {
            b.extend(d.clone());
        }
        body
    }
}

impl Error {
    /// Whether this is a fault of the server's own storage (disk full, I/O
    /// error): the request may succeed later, and nothing was decided
    /// about the client's bytes.
    pub fn is_fault(&self) -> bool {
        matches!(self, Error::InsufficientStorage(_) | Error::Unavailable(_))
    }

    /// Seconds a client should wait before retrying, for the faults that
    /// pass: sent as `Retry-After`.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            Error::InsufficientStorage(_) => Some(10),
            Error::TooManyUploads { .. } => Some(60),
            Error::Unavailable(_) => Some(5),
            _ => None,
        }
    }
}

impl Error {
    /// A copy of an error that leaves an upload open (a fault, or parts
    /// the server found lost), for every `complete` call waiting on the
    /// same verification. Other errors are reported as a temporary fault.
    pub fn retry_copy(&self) -> Error {
        match self {
            Error::InsufficientStorage(s) => Error::InsufficientStorage(s.clone()),
            Error::MissingParts { missing } => Error::MissingParts {
                missing: missing.clone(),
            },
            Error::Unavailable(s) | Error::Internal(s) => Error::Unavailable(s.clone()),
            other => Error::Unavailable(other.to_string()),
        }
    }
}

/// `ENOSPC` and `EDQUOT` on Linux: no space (or quota) left.
const DISK_FULL_ERRNOS: [i32; 2] = [28, 122];

impl From<std::io::Error> for Error {
    /// An I/O error is a fault, never a verdict: a full disk answers 507,
    /// any other I/O error 503, both with `Retry-After`. The OS wording
    /// goes to the log only.
    fn from(e: std::io::Error) -> Self {
        if e.raw_os_error()
            .is_some_and(|c| DISK_FULL_ERRNOS.contains(&c))
        {
            Error::InsufficientStorage(e.to_string())
        } else {
            Error::Unavailable(e.to_string())
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => Error::InsufficientStorage(format!("sqlite: {e}")),
            Some(
                ErrorCode::SystemIoFailure
                | ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory,
            ) => Error::Unavailable(format!("sqlite: {e}")),
            _ => Error::Internal(format!("sqlite: {e}")),
        }
    }
}

impl From<postgres::Error> for Error {
    /// PostgreSQL errors by SQLSTATE class: a full disk is 507; a lost or
    /// refused connection, a server shutting down, exhausted resources, a
    /// lock or serialization conflict are 503 (retry); the rest, including
    /// constraint violations (the queries avoid them), are bugs: 500.
    fn from(e: postgres::Error) -> Self {
        use postgres::error::SqlState;
        let Some(code) = e.code() else {
            // No SQLSTATE: an I/O or protocol error on the connection.
            return Error::Unavailable(format!("postgres: {e}"));
        };
        if *code == SqlState::DISK_FULL {
            return Error::InsufficientStorage(format!("postgres: {e}"));
        }
        let class = &code.code()[..2];
        match class {
            // connection exception, insufficient resources, operator
            // intervention (shutdown, cannot connect now), system error
            "08" | "53" | "57" | "58" => Error::Unavailable(format!("postgres: {e}")),
            // serialization failure, deadlock; lock not available
            "40" => Error::Unavailable(format!("postgres: {e}")),
            _ if *code == SqlState::LOCK_NOT_AVAILABLE => {
                Error::Unavailable(format!("postgres: {e}"))
            }
            _ => Error::Internal(format!("postgres: {e}")),
        }
    }
}
