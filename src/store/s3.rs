//! The S3-compatible blob backend (Garage, R2, AWS, MinIO): one object per
//! blob, `blobs/<id>`, through the `object_store` crate.
//!
//! [`BlobStore`] is blocking (callers are on the blocking pool), the S3
//! client is async: the store owns a small runtime of its own and every
//! call waits on a task spawned there, so it works from any thread.
//! Reads stream: [`BlobStore::open`] is one ranged GET whose body arrives
//! through a bounded channel, a few chunks ahead of the reader.
//!
//! Adopting a local file uploads it (one PUT up to [`MULTIPART_FROM`],
//! a multipart upload in [`UPLOAD_CHUNK`] pieces above, never more than a
//! few pieces in memory) and then removes the file: no second full local
//! copy of a NAR is kept. Every part is written to the bucket as it
//! arrives, before it is acknowledged (see [`BlobStore::copy_in`]): any
//! instance sharing the bucket can then fold it, and publishing a zstd
//! upload finds its objects already there.

use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::StreamExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt as _, PutPayload, WriteMultipart,
};

use super::{BlobInfo, BlobStore};
use crate::config::S3Config;

/// Files above this size go up as a multipart upload.
const MULTIPART_FROM: u64 = 32 << 20;
/// The size of each multipart piece (S3's minimum is 5 MiB).
const UPLOAD_CHUNK: usize = 16 << 20;
/// Pieces in flight at once during a multipart upload.
const UPLOAD_CONCURRENCY: usize = 2;
/// Body chunks a reader may have waiting ahead of it.
const READ_AHEAD: usize = 8;

/// Blobs as objects in an S3 bucket.
pub struct S3Store {
    s3: Arc<AmazonS3>,
    rt: Option<tokio::runtime::Runtime>,
    /// For messages: `endpoint/bucket`.
    label: String,
}

impl S3Store {
    /// Connects (lazily: no request is made here) with the config's
    /// endpoint, bucket and credentials.
    pub fn open(cfg: &S3Config) -> anyhow::Result<S3Store> {
        let (key_id, secret) = cfg.credentials()?;
        // reqwest is built without a default TLS provider (see Cargo.toml).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_access_key_id(key_id)
            .with_secret_access_key(secret)
            .with_virtual_hosted_style_request(!cfg.path_style);
        // Over TLS the body's integrity is the connection's, so the payload
        // is not hashed into the signature (measured against Garage: PUT
        // 416 MB/s instead of 292). Over plain HTTP (a Garage on the same
        // host or LAN) the signed SHA-256 keeps a changed body refused.
        let tls = cfg
            .endpoint
            .as_deref()
            .is_none_or(|e| e.starts_with("https://"));
        b = b.with_unsigned_payload(tls);
        if let Some(endpoint) = &cfg.endpoint {
            b = b
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let s3 = b.build().map_err(|e| anyhow::anyhow!("[s3]: {e}"))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ferry-s3")
            .enable_all()
            .build()?;
        Ok(S3Store {
            s3: Arc::new(s3),
            rt: Some(rt),
            label: format!("{}/{}", cfg.endpoint.as_deref().unwrap_or("s3"), cfg.bucket),
        })
    }

    /// Checks that the bucket answers (a one-object listing), so a wrong
    /// endpoint or key fails at start rather than at the first push.
    pub fn check(&self) -> anyhow::Result<()> {
        let s3 = self.s3.clone();
        self.wait(async move {
            let prefix = ObjectPath::from("blobs");
            let mut list = s3.list(Some(&prefix));
            match list.next().await {
                Some(Err(e)) => Err(to_io(e)),
                _ => Ok(()),
            }
        })
        .map_err(|e| anyhow::anyhow!("the S3 bucket {} does not answer: {e}", self.label))
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.rt
            .as_ref()
            .expect("runtime lives as long as the store")
    }

    /// Runs `fut` on the store's runtime and waits for it (from any thread).
    fn wait<T: Send + 'static>(
        &self,
        fut: impl Future<Output = io::Result<T>> + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime().spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| io::Error::other("the S3 task stopped without an answer"))?
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is refused inside async code.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn object(id: &str) -> io::Result<ObjectPath> {
    if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad blob id"));
    }
    Ok(ObjectPath::from(format!("blobs/{id}")))
}

fn to_io(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e),
        e => io::Error::other(e),
    }
}

async fn head(s3: &AmazonS3, at: &ObjectPath) -> io::Result<Option<object_store::ObjectMeta>> {
    match s3.head(at).await {
        Ok(m) => Ok(Some(m)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(to_io(e)),
    }
}

/// Uploads `file` to `at`, reading it with blocking reads off the runtime's
/// workers.
async fn upload(s3: &AmazonS3, at: &ObjectPath, file: &Path) -> io::Result<()> {
    let size = tokio::fs::metadata(file).await?.len();
    if size <= MULTIPART_FROM {
        let bytes = tokio::fs::read(file).await?;
        s3.put(at, PutPayload::from(bytes)).await.map_err(to_io)?;
        return Ok(());
    }
    let upload = s3.put_multipart(at).await.map_err(to_io)?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, UPLOAD_CHUNK);
    let mut f = std::fs::File::open(file)?;
    loop {
        let chunk = tokio::task::block_in_place(|| -> io::Result<Vec<u8>> {
            let mut buf = Vec::with_capacity(UPLOAD_CHUNK);
            (&mut f).take(UPLOAD_CHUNK as u64).read_to_end(&mut buf)?;
            Ok(buf)
        });
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = w.abort().await;
                return Err(e);
            }
        };
        if chunk.is_empty() {
            break;
        }
        if let Err(e) = w.wait_for_capacity(UPLOAD_CONCURRENCY).await {
            return Err(to_io(e));
        }
        w.put(Bytes::from(chunk));
    }
    w.finish().await.map_err(to_io)?;
    Ok(())
}

impl BlobStore for S3Store {
    fn adopt(&self, id: &str, file: &Path) -> io::Result<()> {
        // The same bytes already stored (the part's copy, another NAR's
        // blob): kept; the database's claim, made before this call, keeps
        // GC away from them.
        let at = object(id)?;
        let s3 = self.s3.clone();
        let path = file.to_owned();
        self.wait(async move {
            if head(&s3, &at).await?.is_none() {
                upload(&s3, &at, &path).await?;
            }
            Ok(())
        })?;
        std::fs::remove_file(file)
    }

    fn shared(&self) -> bool {
        true
    }

    fn copy_in(&self, id: &str, file: &Path) -> io::Result<()> {
        let at = object(id)?;
        let s3 = self.s3.clone();
        let file = file.to_owned();
        self.wait(async move { upload(&s3, &at, &file).await })
    }

    fn open(&self, id: &str, offset: u64) -> io::Result<Box<dyn Read + Send>> {
        let at = object(id)?;
        let s3 = self.s3.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(READ_AHEAD);
        self.runtime().spawn(async move {
            let opts = GetOptions {
                range: (offset > 0).then_some(GetRange::Offset(offset)),
                ..GetOptions::default()
            };
            let mut body = match s3.get_opts(&at, opts).await {
                Ok(r) => r.into_stream(),
                Err(e) => {
                    let _ = tx.send(Err(to_io(e))).await;
                    return;
                }
            };
            while let Some(chunk) = body.next().await {
                let failed = chunk.is_err();
                // A closed channel: the reader is gone, stop reading.
                if tx.send(chunk.map_err(to_io)).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Box::new(ChannelReader {
            rx,
            current: Bytes::new(),
        }))
    }

    fn exists(&self, id: &str) -> io::Result<bool> {
        let at = object(id)?;
        let s3 = self.s3.clone();
        self.wait(async move { Ok(head(&s3, &at).await?.is_some()) })
    }

    fn delete(&self, id: &str) -> io::Result<()> {
        let at = object(id)?;
        let s3 = self.s3.clone();
        self.wait(async move {
            match s3.delete(&at).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(to_io(e)),
            }
        })
    }

    fn list(&self) -> io::Result<Vec<BlobInfo>> {
        let s3 = self.s3.clone();
        self.wait(async move {
            let prefix = ObjectPath::from("blobs");
            let mut list = s3.list(Some(&prefix));
            let mut out = vec![];
            while let Some(meta) = list.next().await {
                let meta = meta.map_err(to_io)?;
                let Some(id) = meta.location.filename().map(str::to_owned) else {
                    continue;
                };
                if object(&id).is_ok() {
                    out.push(BlobInfo {
                        id,
                        size: meta.size,
                        modified: SystemTime::from(meta.last_modified),
                    });
                }
            }
            Ok(out)
        })
    }

    fn modified(&self, id: &str) -> io::Result<Option<SystemTime>> {
        let at = object(id)?;
        let s3 = self.s3.clone();
        self.wait(async move {
            Ok(head(&s3, &at)
                .await?
                .map(|m| SystemTime::from(m.last_modified)))
        })
    }

    fn missing(&self, ids: Vec<String>) -> io::Result<Vec<String>> {
        // One listing instead of a HEAD per blob.
        let present: std::collections::HashSet<String> =
            self.list()?.into_iter().map(|b| b.id).collect();
        Ok(ids.into_iter().filter(|id| !present.contains(id)).collect())
    }
}

/// The blocking side of a streamed GET.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(chunk) => self.current = chunk?,
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}
