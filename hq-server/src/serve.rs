//! `hq-server serve`: the QUIC sync endpoint over HQ's replica, until SIGTERM or Ctrl-C.

use crate::config::HqDir;
use anyhow::{Context, Result};
use chainsync::transport::actor::ReplicaHandle;
use chainsync::transport::hub::Hub;
use chainsync::transport::tls;
use tokio::sync::watch;

/// Serves until `shutdown` turns true, then stops accepting, lets connections finish their current
/// frame, and closes the database.
pub async fn serve(dir: &HqDir, shutdown: watch::Receiver<bool>) -> Result<()> {
    let state = dir.load()?;
    let replica = dir.open_replica(&state.key)?;
    let (handle, thread) = ReplicaHandle::spawn(replica)?;
    let hub = Hub::new(handle);
    let endpoint = quinn::Endpoint::server(tls::server_config(&state.cert)?, state.config.listen)
        .with_context(|| format!("listening on {}", state.config.listen))?;
    tracing::info!(listen = %endpoint.local_addr()?, "HQ sync endpoint listening");
    let watcher = {
        let hub = hub.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { hub.watch_heads(shutdown).await })
    };
    let listener = tokio::net::TcpListener::bind(state.config.api_listen)
        .await
        .with_context(|| format!("HQ API cannot listen on {}", state.config.api_listen))?;
    tracing::info!(api = %listener.local_addr()?, "HQ API listening");
    let api = {
        let mut shutdown = shutdown.clone();
        let app = crate::api::router(hub.clone());
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    chainsync::transport::stopped(&mut shutdown).await
                })
                .await
        })
    };
    hub.serve(endpoint, shutdown).await;
    api.await.context("HQ API task")?.context("HQ API")?;
    watcher.await.context("heads watcher")?;
    drop(hub);
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the replica thread panicked"))?;
    tracing::info!("HQ stopped");
    Ok(())
}
