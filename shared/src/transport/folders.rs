//! Bundle folders: where bundle files arrive and leave when a USB stick or a mail attachment is
//! the only link between a store and HQ.
//!
//! ```text
//! ROOT/inbox/       drop bundles here (NAME.csb, any case); they are imported as they arrive,
//!                   and anything else there is reported once and left alone
//! ROOT/processed/   imported bundles are moved here
//! ROOT/rejected/    refused bundles are moved here, each beside NAME.reason.txt saying why
//! ROOT/outbox/      bundles written for the other side (HQ: one folder per store)
//! ```
//!
//! The inbox is watched (`notify`) and also rescanned every [`RESCAN_MS`], because file-change
//! events are not delivered on every filesystem (network shares, some USB mounts).
//!
//! Invariants: a bundle that is still being copied in (it reads as truncated) is reported as
//! incomplete at once and left alone until it has not changed for [`SETTLE_MS`]; only then is a
//! truncated file rejected. A bundle is
//! moved out of the inbox only after its import committed (processed) or was refused (rejected),
//! so a crash in between imports it again, which changes nothing.

use super::actor::ReplicaHandle;
use crate::bundle::{BundleError, ImportError, ImportReport, import_bundle};
use notify::Watcher;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};

/// How often the inbox is rescanned without any file event.
pub const RESCAN_MS: u64 = 5_000;
/// How long a truncated file must stay unchanged before it is taken as truly truncated (a copy
/// in progress writes more often than this).
pub const SETTLE_MS: u64 = 10_000;
/// The file name ending of bundles.
pub const BUNDLE_EXTENSION: &str = "csb";

/// The folders under one root.
#[derive(Debug, Clone)]
pub struct BundleFolders {
    pub root: PathBuf,
}

impl BundleFolders {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }
    pub fn inbox(&self) -> PathBuf {
        self.root.join("inbox")
    }
    pub fn processed(&self) -> PathBuf {
        self.root.join("processed")
    }
    pub fn rejected(&self) -> PathBuf {
        self.root.join("rejected")
    }
    pub fn outbox(&self) -> PathBuf {
        self.root.join("outbox")
    }

    /// Creates the folders if missing.
    pub fn ensure(&self) -> std::io::Result<()> {
        for dir in [
            self.inbox(),
            self.processed(),
            self.rejected(),
            self.outbox(),
        ] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(())
    }

    /// Bundles waiting in the inbox, oldest name first.
    pub fn pending(&self) -> std::io::Result<Vec<PathBuf>> {
        Ok(self
            .inbox_files()?
            .into_iter()
            .filter(|p| is_bundle_name(p))
            .collect())
    }

    /// Files in the inbox that are not bundles by their name: left alone, and reported.
    pub fn ignored(&self) -> std::io::Result<Vec<PathBuf>> {
        Ok(self
            .inbox_files()?
            .into_iter()
            .filter(|p| !is_bundle_name(p))
            .collect())
    }

    fn inbox_files(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.inbox())?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        Ok(files)
    }

    fn move_to(&self, file: &Path, dir: &Path) -> std::io::Result<PathBuf> {
        let name = file.file_name().unwrap_or_default();
        let mut target = dir.join(name);
        if target.exists() {
            // Keep both: the same name can arrive twice (a bundle carried again).
            let stamp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            target = dir.join(format!("{stamp}-{}", name.to_string_lossy()));
        }
        std::fs::rename(file, &target)?;
        Ok(target)
    }

    /// Moves an imported bundle to `processed/`.
    pub fn accept(&self, file: &Path) -> std::io::Result<PathBuf> {
        self.move_to(file, &self.processed())
    }

    /// Moves a refused bundle to `rejected/` and writes why beside it.
    pub fn reject(&self, file: &Path, reason: &str) -> std::io::Result<PathBuf> {
        let target = self.move_to(file, &self.rejected())?;
        let mut reason_file = target.clone().into_os_string();
        reason_file.push(".reason.txt");
        std::fs::write(PathBuf::from(reason_file), format!("{reason}\n"))?;
        Ok(target)
    }

    /// Writes a bundle into `outbox/` (under `sub` if given) via a temporary name, so a reader
    /// never sees half a file. Returns its path.
    pub fn write_outbox(
        &self,
        sub: Option<&str>,
        name: &str,
        bytes: &[u8],
    ) -> std::io::Result<PathBuf> {
        let dir = match sub {
            Some(sub) => self.outbox().join(sub),
            None => self.outbox(),
        };
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.{BUNDLE_EXTENSION}"));
        let tmp = dir.join(format!("{name}.partial"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }
}

/// Whether a file's name makes it a bundle: `NAME.csb`, the ending in any case (a USB stick
/// written on Windows may say `.CSB`).
fn is_bundle_name(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(BUNDLE_EXTENSION))
}

/// What happened to one file of the inbox.
#[derive(Debug)]
pub enum InboxEvent {
    Imported {
        file: PathBuf,
        report: ImportReport,
    },
    Rejected {
        file: PathBuf,
        reason: String,
    },
    /// Not a bundle by its name: left where it is.
    Ignored {
        file: PathBuf,
    },
    /// A bundle that is not all there yet (still being copied?): retried until it has not
    /// changed for [`SETTLE_MS`], then rejected.
    Incomplete {
        file: PathBuf,
        reason: String,
    },
}

fn settled(file: &Path) -> bool {
    std::fs::metadata(file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age >= Duration::from_millis(SETTLE_MS))
}

/// Imports every settled bundle waiting in the inbox; reports what happened to each.
pub async fn import_pending(folders: &BundleFolders, replica: &ReplicaHandle) -> Vec<InboxEvent> {
    let mut events: Vec<InboxEvent> = folders
        .ignored()
        .unwrap_or_default()
        .into_iter()
        .map(|file| InboxEvent::Ignored { file })
        .collect();
    let Ok(files) = folders.pending() else {
        return events;
    };
    for file in files {
        let bytes = match std::fs::read(&file) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(file = %file.display(), "cannot read bundle yet: {e}");
                continue;
            }
        };
        let result = replica
            .call(move |r| import_bundle(r, &bytes, super::now_ms()))
            .await;
        let outcome = match result {
            Err(e) => {
                tracing::error!("replica gone while importing {}: {e}", file.display());
                break;
            }
            Ok(Ok(report)) => folders.accept(&file).map(|_| InboxEvent::Imported {
                file: file.clone(),
                report,
            }),
            Ok(Err(e @ ImportError::Bundle(BundleError::Truncated { .. }))) if !settled(&file) => {
                Ok(InboxEvent::Incomplete {
                    file: file.clone(),
                    reason: e.to_string(),
                })
            }
            Ok(Err(ImportError::Replica(e))) => {
                // A disk or database failure is not the bundle's fault: leave it for the next try.
                tracing::error!(file = %file.display(), "import failed, will retry: {e}");
                continue;
            }
            Ok(Err(e)) => {
                let reason = e.to_string();
                folders
                    .reject(&file, &reason)
                    .map(|_| InboxEvent::Rejected {
                        file: file.clone(),
                        reason,
                    })
            }
        };
        match outcome {
            Ok(event) => events.push(event),
            Err(e) => tracing::error!(file = %file.display(), "cannot move the bundle: {e}"),
        }
    }
    events
}

/// Watches the inbox until `shutdown` turns true, importing what arrives; every outcome is logged
/// and sent to `events` (if it has room).
pub async fn watch_inbox(
    folders: BundleFolders,
    replica: ReplicaHandle,
    events_out: Option<mpsc::Sender<InboxEvent>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), super::TransportError> {
    folders.ensure()?;
    let (tx, mut rx) = mpsc::channel::<()>(16);
    let mut watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        // Full means a scan is already due; the scan reads the whole inbox anyway.
        let _ = tx.try_send(());
    })
    .map_err(|e| super::TransportError::Io(std::io::Error::other(e.to_string())))?;
    watcher
        .watch(&folders.inbox(), notify::RecursiveMode::NonRecursive)
        .map_err(|e| super::TransportError::Io(std::io::Error::other(e.to_string())))?;
    tracing::info!(inbox = %folders.inbox().display(), "watching for bundles (NAME.csb)");
    // Files already reported as ignored or incomplete: said once, not at every scan.
    let mut reported: std::collections::BTreeSet<PathBuf> = Default::default();
    loop {
        let events = import_pending(&folders, &replica).await;
        let waiting: std::collections::BTreeSet<PathBuf> = events
            .iter()
            .filter_map(|e| match e {
                InboxEvent::Ignored { file } | InboxEvent::Incomplete { file, .. } => {
                    Some(file.clone())
                }
                _ => None,
            })
            .collect();
        for event in events {
            match &event {
                InboxEvent::Imported { file, report } => tracing::info!(
                    file = %file.display(), from = %report.from, applied = report.applied,
                    duplicates = report.duplicates, "bundle imported"
                ),
                InboxEvent::Rejected { file, reason } => {
                    tracing::warn!(file = %file.display(), "bundle rejected: {reason}")
                }
                InboxEvent::Ignored { file } => {
                    if reported.contains(file) {
                        continue;
                    }
                    tracing::warn!(
                        file = %file.display(),
                        "ignored: not a bundle by its name (bundles are NAME.{BUNDLE_EXTENSION}); left in the inbox"
                    )
                }
                InboxEvent::Incomplete { file, reason } => {
                    if reported.contains(file) {
                        continue;
                    }
                    tracing::warn!(
                        file = %file.display(),
                        "bundle not complete yet ({reason}): waiting for the copy to finish; refused if unchanged for {} s",
                        SETTLE_MS / 1_000
                    )
                }
            }
            if let Some(events) = &events_out {
                let _ = events.try_send(event);
            }
        }
        reported = waiting;
        tokio::select! {
            _ = rx.recv() => {
                // Let a burst of events (a copy in progress) settle into one scan.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while rx.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(Duration::from_millis(RESCAN_MS)) => {}
            _ = super::stopped(&mut shutdown) => break,
        }
    }
    drop(watcher);
    Ok(())
}
