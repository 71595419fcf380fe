//! Turning a blocking reader into a response body stream.
//!
//! A blocking-pool task reads 256 KiB at a time into a small channel; the
//! response drains it. When the client goes away the channel closes and
//! the reader stops. Memory per download is a few buffers, whatever the
//! NAR's size.

use std::io::Read;

use bytes::Bytes;
use futures_util::Stream;

const BUF: usize = 256 * 1024;

/// Streams everything `reader` yields.
pub fn from_reader(
    mut reader: impl Read + Send + 'static,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        loop {
            let mut buf = vec![0u8; BUF];
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading a stored NAR failed");
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// An empty body for `HEAD` answers: the response's `Content-Length` is
/// set by the caller, and no bytes follow.
pub fn empty() -> impl Stream<Item = Result<Bytes, std::io::Error>> + 'static {
    futures_util::stream::empty()
}
