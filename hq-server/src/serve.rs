//! `hq-server serve`: the QUIC sync endpoint over HQ's replica, until SIGTERM or Ctrl-C.

use crate::config::HqDir;
use anyhow::{Context, Result};
use chainsync::transport::actor::ReplicaHandle;
use chainsync::transport::hub::Hub;
use chainsync::transport::tls;
use tokio::sync::watch;

/// Serves until `shutdown` turns true, then stops accepting, lets connections finish their current
/// frame, and closes the database.
/// Read-only connections the HQ API reads through (on a 2-core machine, two).
pub const API_READERS: usize = 2;

pub async fn serve(dir: &HqDir, shutdown: watch::Receiver<bool>) -> Result<()> {
    let state = dir.load()?;
    let replica = dir.open_replica(&state.key)?;
    let (handle, thread) = ReplicaHandle::spawn(replica)?;
    // The API's reads go to read-only connections beside the single writer (WAL readers), so
    // a report never delays applying what stores push.
    let mut readers = Vec::with_capacity(API_READERS);
    let mut reader_threads = Vec::with_capacity(API_READERS);
    for _ in 0..API_READERS {
        let reader = dir.open_replica(&state.key)?;
        reader
            .connection()
            .pragma_update(None, "query_only", true)
            .context("making an API reader read-only")?;
        let (reader, thread) = ReplicaHandle::spawn_reader(reader)?;
        readers.push(reader);
        reader_threads.push(thread);
    }
    let hub = Hub::new(handle).with_readers(readers);
    let endpoint = tls::server_endpoint(&state.cert, state.config.listen, &state.key.to_bytes())
        .with_context(|| format!("listening on {}", state.config.listen))?;
    tracing::info!(listen = %endpoint.local_addr()?, "HQ sync endpoint listening");
    let watcher = {
        let hub = hub.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { hub.watch_heads(shutdown).await })
    };
    let expiry = {
        let hub = hub.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(expire_points_hourly(hub, shutdown))
    };
    let price_check = {
        let hub = hub.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(check_prices_continually(hub, shutdown))
    };
    let listener = tokio::net::TcpListener::bind(state.config.api_listen)
        .await
        .with_context(|| format!("HQ API cannot listen on {}", state.config.api_listen))?;
    let api_addr = listener.local_addr()?;
    tracing::info!(api = %api_addr, "HQ API listening");
    // Ready once the database is open and both endpoints listen; the watchdog is pinged while
    // the replica thread answers.
    let supervision = {
        let replica = hub.replica().clone();
        tokio::spawn(chainsync_service::supervise(
            format!(
                "HQ syncing on {}, API on {api_addr}",
                endpoint.local_addr()?
            ),
            move || {
                let replica = replica.clone();
                async move { replica.check_health().await }
            },
            shutdown.clone(),
        ))
    };
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
    let bundles = state.config.bundle_folder.clone().map(|root| {
        let folders = chainsync::transport::folders::BundleFolders::new(&root);
        let (events_tx, events_rx) = tokio::sync::mpsc::channel(64);
        let watcher = tokio::spawn(chainsync::transport::folders::watch_inbox(
            folders.clone(),
            hub.replica().clone(),
            Some(events_tx),
            shutdown.clone(),
        ));
        let answers = tokio::spawn(answer_bundles(
            folders,
            hub.replica().clone(),
            state.key.clone(),
            events_rx,
        ));
        (watcher, answers)
    });
    let backups = tokio::spawn(chainsync::transport::backups::run_schedule(
        dir.root.join("hq.db"),
        dir.root.join(chainsync::transport::backups::BACKUP_FOLDER),
        "hq",
        state.config.backup_interval_ms,
        state.config.backups_kept,
        shutdown.clone(),
    ));
    hub.serve(endpoint, shutdown).await;
    backups.await.context("backup task")?;
    if let Some((watcher, answers)) = bundles {
        watcher.await.context("bundle inbox task")??;
        answers.await.context("bundle answers task")?;
    }
    api.await.context("HQ API task")?.context("HQ API")?;
    watcher.await.context("heads watcher")?;
    expiry.await.context("points expiry task")?;
    price_check.await.context("price check task")?;
    supervision.await.context("service supervision task")?;
    drop(hub);
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the replica thread panicked"))?;
    for reader in reader_threads {
        reader
            .join()
            .map_err(|_| anyhow::anyhow!("an API reader thread panicked"))?;
    }
    tracing::info!("HQ stopped");
    Ok(())
}

/// Expires points by HQ's policy once an hour (and at start), until `shutdown`; stores hear of
/// the expiry entries like of any other write of HQ's members stream.
async fn expire_points_hourly(hub: Hub, mut shutdown: watch::Receiver<bool>) {
    loop {
        let result = hub
            .replica()
            .call(|r| {
                crate::loyalty::expire_points(r, chainsync::transport::now_ms() as i64)
                    .map_err(|e| format!("{e:#}"))
            })
            .await;
        match result {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!("expired the points of {n} members"),
            Ok(Err(e)) => tracing::warn!("points expiry: {e}"),
            Err(e) => tracing::warn!("points expiry: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(crate::loyalty::EXPIRY_INTERVAL_MS)) => {}
            _ = chainsync::transport::stopped(&mut shutdown) => return,
        }
    }
}

/// How often HQ prices newly arrived receipts again.
pub const PRICE_CHECK_INTERVAL_MS: u64 = 1_000;
/// Most batches of one round of the price check, so that the replica thread is shared.
const PRICE_CHECK_BATCHES_PER_ROUND: usize = 20;

/// Prices every arriving receipt again with HQ's facts (`Replica::check_prices`), until
/// `shutdown`; differences go to the pricing report.
async fn check_prices_continually(hub: Hub, mut shutdown: watch::Receiver<bool>) {
    loop {
        for _ in 0..PRICE_CHECK_BATCHES_PER_ROUND {
            let pass = hub
                .replica()
                .call(|r| r.check_prices(chainsync::transport::now_ms() as i64))
                .await;
            match pass {
                Ok(Ok(pass)) => {
                    if pass.differing > 0 {
                        tracing::warn!(
                            "price check: {} of {} receipts charged otherwise than HQ prices them \
                             (hq-server report pricing)",
                            pass.differing,
                            pass.checked
                        );
                    }
                    if pass.checked < chainsync::replica::PRICE_CHECK_BATCH_RECEIPTS {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!("price check: {e}");
                    break;
                }
                Err(e) => {
                    tracing::warn!("price check: {e}");
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(PRICE_CHECK_INTERVAL_MS)) => {}
            _ = chainsync::transport::stopped(&mut shutdown) => return,
        }
    }
}

/// The price check run to the end from the command line (bounded: at most a million receipts).
pub fn check_prices_until_done(replica: &mut chainsync::replica::Replica) -> Result<()> {
    let passes = 1_000_000 / chainsync::replica::PRICE_CHECK_BATCH_RECEIPTS;
    for _ in 0..passes {
        let pass = replica.check_prices(chainsync::transport::now_ms() as i64)?;
        if pass.checked < chainsync::replica::PRICE_CHECK_BATCH_RECEIPTS {
            break;
        }
    }
    Ok(())
}

/// For each store bundle imported from the inbox, writes HQ's answer (what the store lacks, and
/// the acknowledgement of what it sent) to `outbox/<store>/`.
async fn answer_bundles(
    folders: chainsync::transport::folders::BundleFolders,
    replica: chainsync::transport::actor::ReplicaHandle,
    key: ed25519_dalek::SigningKey,
    mut events: tokio::sync::mpsc::Receiver<chainsync::transport::folders::InboxEvent>,
) {
    while let Some(event) = events.recv().await {
        let chainsync::transport::folders::InboxEvent::Imported { report, .. } = event else {
            continue;
        };
        let store = report.from.clone();
        let key = key.clone();
        let made = replica
            .call(move |r| {
                chainsync::bundle::hq_bundle(r, &key, &store, chainsync::transport::now_ms())
            })
            .await;
        match made {
            Ok(Ok(bytes)) => {
                let name = format!("hq-to-{}-{}", report.from, chainsync::transport::now_ms());
                match folders.write_outbox(Some(report.from.as_str()), &name, &bytes) {
                    Ok(path) => {
                        tracing::info!(file = %path.display(), store = %report.from, "bundle answer written")
                    }
                    Err(e) => tracing::error!("writing the bundle answer for {}: {e}", report.from),
                }
            }
            Ok(Err(e)) => tracing::error!("building the bundle answer for {}: {e}", report.from),
            Err(_) => break,
        }
    }
}
