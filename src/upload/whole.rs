//! One-request uploads: a whole (small) NAR created, received, verified
//! and published in one call, for the batch door.
//!
//! It is the same engine path as the parts API, not a second one: an
//! upload is created (with the same rules: a path the cache has, or a NAR
//! the uploader may read, needs no bytes), the bytes become its part 1,
//! and `complete` verifies and publishes. An upload that ends in an error
//! is removed at once: its client sends the bytes again in a later
//! request rather than resuming it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{Completion, Created, Engine, NewUpload, PartRules};
use crate::db::caches::CacheRow;
use crate::error::Result;

/// What a one-request upload came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Whole {
    /// Verified and published now.
    Published { narinfo_url: String },
    /// Nothing was needed: the cache has the path (with this NarHash), or
    /// the same NAR was linked.
    Present { nar_hash: String },
    /// Received, still verifying after the wait: poll upload `id`.
    Verifying { id: String },
}

impl Engine {
    /// Creates an upload of `new`, takes `bytes` (the whole NAR, in the
    /// declared compression) as its only part, and completes it, waiting
    /// up to `wait` for the verdict.
    pub async fn put_whole(
        self: &Arc<Self>,
        cache: &CacheRow,
        new: NewUpload,
        bytes: Bytes,
        may_read: &(dyn Fn(&str) -> bool + Sync),
        wait: Duration,
    ) -> Result<Whole> {
        let id = match self.create(cache, new, may_read).await? {
            Created::Committed { nar_hash } => return Ok(Whole::Present { nar_hash }),
            Created::Upload { id, .. } => id,
        };
        let rules = PartRules {
            content_length: Some(bytes.len() as u64),
            digest: None,
            keep_partial: false,
        };
        let body =
            futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(bytes) });
        let outcome = match self.put_part(&id, 1, rules, Box::pin(body)).await {
            Ok(_) => self.complete_within(&id, 1, wait).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(Completion::Committed { narinfo_url }) => Ok(Whole::Published { narinfo_url }),
            Ok(Completion::Verifying) => Ok(Whole::Verifying { id }),
            Err(e) => {
                if let Err(gone) = self.remove(&id).await {
                    tracing::warn!(upload = %id, error = %gone, "could not remove a failed one-request upload");
                }
                Err(e)
            }
        }
    }
}
