//! `store-agent run`: the agent service. Keeps the realtime link to HQ up until shutdown.

use crate::config::AgentDir;
use anyhow::Result;
use chainsync::transport::actor::ReplicaHandle;
use chainsync::transport::leaf::{LinkStatus, RealtimeLink};
use std::sync::Arc;
use tokio::sync::{Notify, watch};

/// Runs the agent until `shutdown` turns true; the database is closed when this returns.
pub async fn run(dir: &AgentDir, shutdown: watch::Receiver<bool>) -> Result<()> {
    let state = dir.load()?;
    let replica = dir.open_replica(&state)?;
    let (handle, thread) = ReplicaHandle::spawn(replica)?;
    let (status, _status_rx) = watch::channel(LinkStatus::default());
    let link = RealtimeLink {
        hq: state.hq.clone(),
        node: state.config.store.clone(),
        key: state.key.clone(),
        poll_interval_ms: state.config.poll_interval_ms,
        replica: handle,
        local_commits: Arc::new(Notify::new()),
        status,
    };
    tracing::info!(store = %state.config.store, hq = %state.hq.addr, "store agent running");
    link.run(shutdown).await;
    drop(link);
    thread.join().map_err(|_| anyhow::anyhow!("the replica thread panicked"))?;
    tracing::info!("store agent stopped");
    Ok(())
}
