//! One-request uploads: a whole (small) NAR created, received, verified
//! and published in one call, for the batch door.
//!
//! It is the same engine path as the parts API, not a second one: an
//! upload is created (with the same rules: a path the cache has, or a NAR
//! the uploader may read, needs no bytes), the bytes become its part 1,
//! and `complete` verifies and publishes. An upload that ends in an error
//! is removed at once: its client sends the bytes again in a later
//! request rather than resuming it.
//!
//! For the same reason its steps before the publishing commit (the
//! upload row, the part row, the claims) commit deferred: only the publish
//! waits for the disk, and its sync covers them. An acknowledged part of
//! the parts API is a promise; a step of a one-request upload is not.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{Completion, Created, Engine, NewUpload, PartRules};
use crate::db::Commit;
use crate::db::caches::CacheRow;
use crate::db::uploads;
use crate::error::{Error, Result};

/// How long a one-request upload lives unless it is answered `verifying`
/// (then it gets the usual expiry, for its client to poll). Nobody
/// resumes one, so one left open by a crash or a dropped request goes at
/// the next sweep after this.
pub const ONE_REQUEST_EXPIRY: Duration = Duration::from_secs(15 * 60);

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

/// Marks an upload as one-request while it lives; unmarked on drop, also
/// when the request is dropped halfway (its client went away).
struct OneRequest<'a> {
    engine: &'a Engine,
    id: String,
}

impl<'a> OneRequest<'a> {
    fn mark(engine: &'a Engine, id: &str) -> Result<OneRequest<'a>> {
        engine
            .one_request
            .lock()
            .map_err(Error::internal)?
            .insert(id.to_owned());
        Ok(OneRequest {
            engine,
            id: id.to_owned(),
        })
    }
}

impl Drop for OneRequest<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.engine.one_request.lock() {
            set.remove(&self.id);
        }
    }
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
        let id = match self
            .create_as(cache, new, may_read, Commit::Deferred)
            .await?
        {
            Created::Committed { nar_hash } => return Ok(Whole::Present { nar_hash }),
            Created::Upload { id, .. } => id,
        };
        let _marked = OneRequest::mark(self, &id)?;
        self.put_whole_bytes(&id, bytes, wait).await
    }

    /// Part 1 and `complete` of the one-request upload `id`.
    async fn put_whole_bytes(
        self: &Arc<Self>,
        id: &str,
        bytes: Bytes,
        wait: Duration,
    ) -> Result<Whole> {
        let rules = PartRules {
            content_length: Some(bytes.len() as u64),
            digest: None,
            keep_partial: false,
        };
        let body =
            futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(bytes) });
        let outcome = match self.put_part(id, 1, rules, Box::pin(body)).await {
            Ok(_) => self.complete_within(id, 1, wait).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(Completion::Committed { narinfo_url }) => Ok(Whole::Published { narinfo_url }),
            Ok(Completion::Verifying) => {
                // The client is given the id to poll: from here the upload
                // is a promise, so its deferred steps go to disk, with a
                // durable renewal of its lease (its sync covers them), and
                // it gets the usual expiry.
                let (key, until) = (id.to_owned(), super::finish::lease_until());
                let expires = self.expiry_from_now();
                self.db
                    .write(move |tx| {
                        uploads::renew_lease(tx, &key, until)?;
                        uploads::touch(tx, &key, expires)
                    })
                    .await?;
                Ok(Whole::Verifying { id: id.to_owned() })
            }
            Err(e) => {
                if let Err(gone) = self.remove(id).await {
                    tracing::warn!(upload = %id, error = %gone, "could not remove a failed one-request upload");
                }
                Err(e)
            }
        }
    }
}
