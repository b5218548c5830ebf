//! `store-agent run`: the agent service: the POS API on loopback and the link to HQ (realtime,
//! batch or hosted, as HQ's directory says),
//! until shutdown. On shutdown the API stops taking requests, in-flight writes commit, the link
//! closes, and the database is closed last.

use crate::config::AgentDir;
use crate::pos::{PosState, router};
use anyhow::{Context, Result};
use chainsync::transport::actor::ReplicaHandle;
use chainsync::transport::leaf::{LinkStatus, StoreLink};
use chainsync::transport::metrics::{NodeRole, SyncMetrics};
use std::sync::Arc;
use tokio::sync::{Notify, watch};

/// "Sync now" requests waiting for the link at most (each answered when its exchange ends).
pub const SYNC_REQUESTS_MAX: usize = 16;
/// Hosted stores: POS lookups waiting for the link at most (more are answered from the cache).
pub const LOOKUPS_WAITING_MAX: usize = 64;
/// Read-only connections pricing baskets beside the writer (one per core of a till PC).
pub const POS_READERS: usize = 2;

/// Runs the agent until `shutdown` turns true.
pub async fn run(dir: &AgentDir, shutdown: watch::Receiver<bool>) -> Result<()> {
    let state = dir.load()?;
    // `init` creates the database; missing now, it was lost (a disk replaced, a file deleted),
    // and what this store sold before may be at HQ: no write until HQ has said how far it holds
    // the store's own streams, and those are restored first.
    if !dir.root.join("store.db").exists() {
        tracing::warn!(
            "store.db was missing: created afresh; sales wait until HQ has said what it holds of \
             this store, and its history is restored from HQ"
        );
    }
    let replica = dir.open_replica(&state)?;
    let (handle, thread) = ReplicaHandle::spawn(replica)?;
    let mut readers = Vec::with_capacity(POS_READERS);
    let mut reader_threads = Vec::with_capacity(POS_READERS);
    for _ in 0..POS_READERS {
        let (reader, thread) = ReplicaHandle::spawn_reader(dir.open_reader(&state)?)?;
        readers.push(reader);
        reader_threads.push(thread);
    }
    let (status, link_status) = watch::channel(LinkStatus::default());
    let local_commits = Arc::new(Notify::new());
    let (sync_tx, sync_rx) = tokio::sync::mpsc::channel(SYNC_REQUESTS_MAX);
    let (lookup_tx, lookup_rx) = tokio::sync::mpsc::channel(LOOKUPS_WAITING_MAX);
    let metrics = Arc::new(SyncMetrics::new(NodeRole::Store));
    let link = StoreLink {
        hq: state.hq.clone(),
        node: state.config.store.clone(),
        key: state.key.clone(),
        poll_interval_ms: state.config.poll_interval_ms,
        batch_interval_ms: state.config.batch_interval_ms,
        batch_window: state.batch_window,
        replica: handle.clone(),
        local_commits: local_commits.clone(),
        status,
        metrics: metrics.clone(),
    };
    let pos = router(PosState {
        replica: handle.clone(),
        local_commits,
        link: link_status,
        store: state.config.store.clone(),
        region: state.config.region.clone(),
        token: state.config.pos_token.clone().into(),
        sync_requests: sync_tx,
        lookups: lookup_tx,
        readers: readers.into(),
        next_reader: Default::default(),
        metrics,
    });
    let listener = tokio::net::TcpListener::bind(state.config.pos_listen)
        .await
        .with_context(|| format!("POS API cannot listen on {}", state.config.pos_listen))?;
    let pos_addr = listener.local_addr()?;
    tracing::info!(store = %state.config.store, hq = %state.hq.addr, pos = %pos_addr, "store agent running");
    // Ready once the database is open and the tills can connect; the watchdog is pinged while
    // the replica thread answers.
    let supervision = {
        let handle = handle.clone();
        tokio::spawn(chainsync_service::supervise(
            format!("store {} serving tills on {pos_addr}", state.config.store),
            move || {
                let handle = handle.clone();
                async move { handle.check_health().await }
            },
            shutdown.clone(),
        ))
    };
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
    let bundles = state.config.bundle_folder.clone().map(|root| {
        let folders = chainsync::transport::folders::BundleFolders::new(&root);
        let (handle, key, interval) = (
            handle.clone(),
            state.key.clone(),
            state.config.batch_interval_ms,
        );
        let (inbox, outbox) = (shutdown.clone(), shutdown.clone());
        let watcher = tokio::spawn(chainsync::transport::folders::watch_inbox(
            folders.clone(),
            handle.clone(),
            None,
            inbox,
        ));
        let writer = tokio::spawn(write_outbox_bundles(folders, handle, key, interval, outbox));
        (watcher, writer)
    });
    let backups = tokio::spawn(chainsync::transport::backups::run_schedule(
        dir.root.join("store.db"),
        dir.root.join(chainsync::transport::backups::BACKUP_FOLDER),
        "store",
        state.config.backup_interval_ms,
        state.config.backups_kept,
        shutdown.clone(),
    ));
    link.run(shutdown, sync_rx, lookup_rx).await;
    backups.await.context("backup task")?;
    if let Some((watcher, writer)) = bundles {
        watcher.await.context("bundle inbox task")??;
        writer.await.context("bundle outbox task")?;
    }
    api.await.context("POS API task")?.context("POS API")?;
    supervision.await.context("service supervision task")?;
    drop(link);
    drop(handle);
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the replica thread panicked"))?;
    for reader in reader_threads {
        reader
            .join()
            .map_err(|_| anyhow::anyhow!("a POS reader thread panicked"))?;
    }
    tracing::info!("store agent stopped");
    Ok(())
}

/// Every `interval_ms`, writes this store's unacknowledged change sets to the bundle outbox, if
/// they changed since the last bundle written (each bundle holds everything unacknowledged, so
/// any one of them brings HQ up to date).
async fn write_outbox_bundles(
    folders: chainsync::transport::folders::BundleFolders,
    replica: ReplicaHandle,
    key: ed25519_dalek::SigningKey,
    interval_ms: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_written: Option<OwnStreams> = None;
    loop {
        let key = key.clone();
        let made = replica
            .call(move |r| -> Result<Option<(Vec<u8>, OwnStreams)>, String> {
                let streams = r.own_streams().map_err(|e| e.to_string())?;
                if streams.iter().all(|(_, acked, head)| acked >= head) {
                    return Ok(None);
                }
                let bytes =
                    chainsync::bundle::store_bundle(r, &key, chainsync::transport::now_ms())
                        .map_err(|e| e.to_string())?;
                Ok(Some((bytes, streams)))
            })
            .await;
        match made {
            Ok(Ok(Some((bytes, streams)))) if last_written.as_ref() != Some(&streams) => {
                let name = format!(
                    "{}-{}",
                    folders_store_name(&streams),
                    chainsync::transport::now_ms()
                );
                match folders.write_outbox(None, &name, &bytes) {
                    Ok(path) => {
                        tracing::info!(file = %path.display(), "bundle for HQ written");
                        last_written = Some(streams);
                    }
                    Err(e) => tracing::error!("writing the outbox bundle: {e}"),
                }
            }
            Ok(Err(e)) => tracing::error!("building the outbox bundle: {e}"),
            Err(_) => break,
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(interval_ms)) => {}
            _ = chainsync::transport::stopped(&mut shutdown) => break,
        }
    }
}

/// `(stream, acknowledged seq, head seq)` of the store's own streams.
type OwnStreams = Vec<(chainsync::ids::StreamId, u64, u64)>;

fn folders_store_name(streams: &[(chainsync::ids::StreamId, u64, u64)]) -> String {
    streams
        .first()
        .map_or_else(|| "store".to_owned(), |(s, _, _)| s.origin.to_string())
}
