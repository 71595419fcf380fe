//! Garbage collection. Today: uploads past their expiry, with their parts.
//! (Retention of paths, unreferenced NARs and orphan blobs come with the
//! operations work.)

use std::sync::Arc;
use std::time::Duration;

use crate::upload::Engine;

/// Sweeps expired uploads every `interval`, forever.
pub async fn run_periodic(engine: Arc<Engine>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        match engine.sweep_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expired uploads removed"),
            Err(e) => tracing::warn!(error = %e, "sweeping expired uploads failed"),
        }
    }
}
