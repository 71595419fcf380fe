//! The one mapping from [`Error`] to HTTP: status, JSON body, headers.
//!
//! The match is exhaustive on purpose: a new error variant does not compile
//! until someone decides its status here. Internal errors are logged with
//! their detail and answered with a generic sentence, so bodies never leak
//! file paths or OS messages.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

use crate::auth::AuthError;
use crate::error::Error;

/// The HTTP status of an error.
pub fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::InvalidCacheName(_)
        | Error::BadRequest(_)
        | Error::Format(_)
        | Error::BadPartNumber(_)
        | Error::PartTruncated { .. }
        | Error::PartDigestMismatch { .. }
        | Error::NarFileMissing(_) => StatusCode::BAD_REQUEST,
        Error::CacheNotFound(_) | Error::UploadNotFound(_) | Error::NotFound(_) => {
            StatusCode::NOT_FOUND
        }
        Error::CacheExists(_) | Error::UploadClosed { .. } | Error::ManifestConflict { .. } => {
            StatusCode::CONFLICT
        }
        Error::PartTooLarge { .. }
        | Error::LogTooLarge { .. }
        | Error::BodyTooLarge { .. }
        | Error::TooManyPaths { .. }
        | Error::NarTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::TooManyUploads { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::ReferenceNotPublished(_) => StatusCode::FAILED_DEPENDENCY,
        Error::LengthRequired => StatusCode::LENGTH_REQUIRED,
        Error::MissingParts { .. }
        | Error::PartAfterVerdict { .. }
        | Error::NarHashMismatch { .. }
        | Error::NarSizeMismatch { .. }
        | Error::FileHashMismatch { .. }
        | Error::FileSizeMismatch { .. }
        | Error::InvalidNar(_)
        | Error::InvalidCompression(_)
        | Error::UploadFailed(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Error::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
        Error::TusOffsetMismatch { .. } => StatusCode::CONFLICT,
        // tus's own code for a checksum mismatch.
        Error::TusChecksumMismatch => StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST),
        Error::TusFinalPatch => StatusCode::FORBIDDEN,
        Error::TusLengthExceeded { .. } | Error::TusTooLarge { .. } => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        Error::TusVersion => StatusCode::PRECONDITION_FAILED,
        Error::TusContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Error::Auth(a) => match a {
            AuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
            AuthError::InvalidName(_) | AuthError::InvalidDuration(_) => StatusCode::BAD_REQUEST,
            AuthError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AuthError::Malformed(_)
            | AuthError::BadSignature
            | AuthError::Expired
            | AuthError::Revoked
            | AuthError::TooLong
            | AuthError::NoAccess => StatusCode::UNAUTHORIZED,
        },
        Error::Unauthenticated => StatusCode::UNAUTHORIZED,
        Error::HostNotAllowed(_) => StatusCode::MISDIRECTED_REQUEST,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        status_of(self)
    }

    fn error_response(&self) -> HttpResponse {
        let status = status_of(self);
        if let Some(detail) = self.log_detail() {
            if matches!(self, Error::Auth(_)) {
                tracing::error!(error = %detail, "authorization failed");
            } else {
                tracing::error!(error = %detail, "request failed");
            }
        }
        let mut res = HttpResponse::build(status);
        if matches!(self, Error::TusVersion) {
            res.insert_header(("tus-version", "1.0.0"));
        }
        res.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        if let Some(secs) = self.retry_after() {
            res.insert_header((header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        if status == StatusCode::UNAUTHORIZED {
            res.insert_header((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"ferry\", Bearer"),
            ));
        }
        if let Error::RangeNotSatisfiable { size } = self
            && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            res.insert_header((header::CONTENT_RANGE, v));
        }
        res.json(self.to_json())
    }
}
