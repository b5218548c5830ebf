//! `store-agent run`: the agent service: the POS API on loopback and the link to HQ (realtime or
//! batch, as HQ's directory says),
//! until shutdown. On shutdown the API stops taking requests, in-flight writes commit, the link
//! closes, and the database is closed last.

use crate::config::AgentDir;
use crate::pos::{PosState, router};
use anyhow::{Context, Result};
use chainsync::transport::actor::ReplicaHandle;
use chainsync::transport::leaf::{LinkStatus, StoreLink};
use std::sync::Arc;
use tokio::sync::{Notify, watch};

/// "Sync now" requests waiting for the link at most (each answered when its exchange ends).
pub const SYNC_REQUESTS_MAX: usize = 16;

/// Runs the agent until `shutdown` turns true.
pub async fn run(dir: &AgentDir, shutdown: watch::Receiver<bool>) -> Result<()> {
    let state = dir.load()?;
    let replica = dir.open_replica(&state)?;
    let (handle, thread) = ReplicaHandle::spawn(replica)?;
    let (status, link_status) = watch::channel(LinkStatus::default());
    let local_commits = Arc::new(Notify::new());
    let (sync_tx, sync_rx) = tokio::sync::mpsc::channel(SYNC_REQUESTS_MAX);
    let link = StoreLink {
        hq: state.hq.clone(),
        node: state.config.store.clone(),
        key: state.key.clone(),
        poll_interval_ms: state.config.poll_interval_ms,
        batch_interval_ms: state.config.batch_interval_ms,
        replica: handle.clone(),
        local_commits: local_commits.clone(),
        status,
    };
    let pos = router(PosState {
        replica: handle,
        local_commits,
        link: link_status,
        store: state.config.store.clone(),
        region: state.config.region.clone(),
        token: state.config.pos_token.clone().into(),
        sync_requests: sync_tx,
    });
    let listener = tokio::net::TcpListener::bind(state.config.pos_listen)
        .await
        .with_context(|| format!("POS API cannot listen on {}", state.config.pos_listen))?;
    tracing::info!(store = %state.config.store, hq = %state.hq.addr, pos = %listener.local_addr()?, "store agent running");
    let api = {
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, pos)
                .with_graceful_shutdown(async move {
                    chainsync::transport::stopped(&mut shutdown).await
                })
                .await
        })
    };
    link.run(shutdown, sync_rx).await;
    api.await.context("POS API task")?.context("POS API")?;
    drop(link);
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the replica thread panicked"))?;
    tracing::info!("store agent stopped");
    Ok(())
}
