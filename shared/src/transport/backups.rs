//! Online backups of a node's SQLite database, and restoring one.
//!
//! A backup is taken with SQLite's online backup API from a read-only connection of its own,
//! in one step: it copies one consistent snapshot of the database while the node keeps writing
//! (WAL: writers do not wait for readers). It is written under a temporary name, checked
//! (`PRAGMA integrity_check`), flushed to disk and only then renamed into the backup folder, so
//! a backup listed is a whole one. Names carry the time taken: `{prefix}-{unix ms}.db`.
//!
//! Restoring replaces the database file by a checked copy of a backup, through a temporary
//! name and a rename, and removes the old WAL. What the node must do next (a store: wait for
//! HQ's heads before writing, so it never forks its own streams) is the caller's.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The backup folder inside a node's data folder.
pub const BACKUP_FOLDER: &str = "backups";
/// Default time between scheduled backups: six hours.
pub const BACKUP_INTERVAL_MS_DEFAULT: u64 = 6 * 60 * 60 * 1000;
/// Default number of scheduled backups kept (two days at the default interval).
pub const BACKUPS_KEPT_DEFAULT: usize = 8;
/// [`BACKUP_INTERVAL_MS_DEFAULT`], for configuration defaults.
pub fn default_interval_ms() -> u64 {
    BACKUP_INTERVAL_MS_DEFAULT
}

/// [`BACKUPS_KEPT_DEFAULT`], for configuration defaults.
pub fn default_kept() -> usize {
    BACKUPS_KEPT_DEFAULT
}

/// How long a backup waits for a lock held by a writer checkpointing, in all.
const BACKUP_BUSY_WAIT_MS: u64 = 30_000;

/// Why a backup or a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("backup: {0}")]
    Io(#[from] std::io::Error),
    /// The copy does not pass SQLite's integrity check.
    #[error("backup {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    /// The database stayed locked for longer than the backup waits.
    #[error("backup: the database stayed locked for {BACKUP_BUSY_WAIT_MS} ms")]
    Busy,
}

/// A backup in the backup folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFile {
    pub path: PathBuf,
    /// When it was taken (Unix ms), from its name.
    pub taken_ms: u64,
    pub bytes: u64,
}

impl std::fmt::Display for BackupFile {
    /// `path  2026-12-02T17:56:00.123Z  123456 bytes`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let when = i64::try_from(self.taken_ms)
            .ok()
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
            .map_or_else(|| self.taken_ms.to_string(), |t| t.to_string());
        write!(f, "{}  {when}  {} bytes", self.path.display(), self.bytes)
    }
}

/// The node a database (a backup) belongs to, from its `meta` table.
pub fn node_of(path: &Path) -> Result<String, BackupError> {
    check(path)?;
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let node: Vec<u8> = conn
        .query_row("SELECT value FROM meta WHERE key = 'node'", [], |r| {
            r.get(0)
        })
        .map_err(|e| BackupError::Damaged {
            path: path.to_owned(),
            reason: format!("not a chainsync database: {e}"),
        })?;
    Ok(String::from_utf8_lossy(&node).into_owned())
}

/// Takes a backup of the database at `db` into `folder` now; returns it.
pub fn backup_now(
    db: &Path,
    folder: &Path,
    prefix: &str,
    now_ms: u64,
) -> Result<BackupFile, BackupError> {
    std::fs::create_dir_all(folder)?;
    let name = format!("{prefix}-{now_ms}.db");
    let path = folder.join(&name);
    let partial = folder.join(format!(".{name}.partial"));
    let _ = std::fs::remove_file(&partial);
    {
        let source = rusqlite::Connection::open_with_flags(
            db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        source.busy_timeout(Duration::from_secs(5))?;
        let mut copy = rusqlite::Connection::open(&partial)?;
        copy_whole(&source, &mut copy)?;
        // The copy stands alone: no WAL beside it.
        copy.pragma_update(None, "journal_mode", "DELETE")?;
    }
    check(&partial)?;
    std::fs::File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, &path)?;
    sync_folder(folder)?;
    let bytes = std::fs::metadata(&path)?.len();
    Ok(BackupFile {
        path,
        taken_ms: now_ms,
        bytes,
    })
}

/// Copies every page of `source` into `copy` in one backup step (one consistent snapshot),
/// waiting out a lock for at most [`BACKUP_BUSY_WAIT_MS`].
fn copy_whole(
    source: &rusqlite::Connection,
    copy: &mut rusqlite::Connection,
) -> Result<(), BackupError> {
    use rusqlite::backup::{Backup, StepResult};
    let backup = Backup::new(source, copy)?;
    let pause = Duration::from_millis(50);
    for _ in 0..BACKUP_BUSY_WAIT_MS / 50 {
        match backup.step(-1)? {
            StepResult::Done => return Ok(()),
            // A step of -1 copies everything; `More` would only follow a partial step.
            StepResult::More => continue,
            StepResult::Busy | StepResult::Locked => std::thread::sleep(pause),
            _ => std::thread::sleep(pause),
        }
    }
    Err(BackupError::Busy)
}

/// Checks that the database at `path` passes `PRAGMA integrity_check`.
pub fn check(path: &Path) -> Result<(), BackupError> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let verdict: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| BackupError::Damaged {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if verdict != "ok" {
        return Err(BackupError::Damaged {
            path: path.to_owned(),
            reason: verdict,
        });
    }
    Ok(())
}

/// The backups of `prefix` in `folder`, newest first.
pub fn list(folder: &Path, prefix: &str) -> Result<Vec<BackupFile>, BackupError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(taken_ms) = name
            .to_str()
            .and_then(|n| {
                n.strip_prefix(prefix)?
                    .strip_prefix('-')?
                    .strip_suffix(".db")
            })
            .and_then(|ms| ms.parse::<u64>().ok())
        else {
            continue;
        };
        out.push(BackupFile {
            path: entry.path(),
            taken_ms,
            bytes: entry.metadata()?.len(),
        });
    }
    out.sort_by_key(|b| std::cmp::Reverse(b.taken_ms));
    Ok(out)
}

/// `backup list` as lines: each backup, newest first, or that there is none.
pub fn list_lines(folder: &Path, prefix: &str) -> Result<Vec<String>, BackupError> {
    let listed = list(folder, prefix)?;
    if listed.is_empty() {
        return Ok(vec![format!("no backups in {}", folder.display())]);
    }
    Ok(listed.iter().map(ToString::to_string).collect())
}

/// Removes all but the newest `keep` backups of `prefix`; returns what it removed.
pub fn prune(folder: &Path, prefix: &str, keep: usize) -> Result<Vec<PathBuf>, BackupError> {
    let mut removed = Vec::new();
    for old in list(folder, prefix)?.into_iter().skip(keep.max(1)) {
        std::fs::remove_file(&old.path)?;
        removed.push(old.path);
    }
    Ok(removed)
}

/// Replaces the database at `db` by a checked copy of `backup` (its WAL and shared-memory
/// files removed). The node must not be running.
pub fn restore(backup: &Path, db: &Path) -> Result<(), BackupError> {
    check(backup)?;
    let folder = db.parent().unwrap_or(Path::new("."));
    let partial = folder.join(".restore.partial");
    std::fs::copy(backup, &partial)?;
    std::fs::File::open(&partial)?.sync_all()?;
    for suffix in ["-wal", "-shm"] {
        let mut side = db.as_os_str().to_owned();
        side.push(suffix);
        match std::fs::remove_file(PathBuf::from(side)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    std::fs::rename(&partial, db)?;
    sync_folder(folder)?;
    Ok(())
}

/// Flushes a folder's entries (a rename is durable once its folder is).
fn sync_folder(folder: &Path) -> Result<(), BackupError> {
    #[cfg(unix)]
    std::fs::File::open(folder)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = folder;
    Ok(())
}

/// Takes a backup every `interval_ms` (the first one `interval_ms` after start) and keeps the
/// newest `keep`, until `shutdown`. A failed backup is logged and tried again next time.
pub async fn run_schedule(
    db: PathBuf,
    folder: PathBuf,
    prefix: &'static str,
    interval_ms: u64,
    keep: usize,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if interval_ms == 0 {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(interval_ms)) => {}
            _ = super::stopped(&mut shutdown) => return,
        }
        let (db, folder) = (db.clone(), folder.clone());
        let taken = tokio::task::spawn_blocking(move || {
            let taken = backup_now(&db, &folder, prefix, super::now_ms())?;
            let removed = prune(&folder, prefix, keep)?;
            Ok::<_, BackupError>((taken, removed))
        })
        .await;
        match taken {
            Ok(Ok((taken, removed))) => tracing::info!(
                backup = %taken.path.display(),
                bytes = taken.bytes,
                removed = removed.len(),
                "scheduled backup taken"
            ),
            Ok(Err(e)) => tracing::error!("scheduled backup failed: {e}"),
            Err(e) => tracing::error!("scheduled backup task failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db_with_rows(path: &Path, rows: i64) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
            .unwrap();
        for n in 0..rows {
            conn.execute("INSERT INTO t VALUES (?1)", [n]).unwrap();
        }
        conn
    }

    fn rows(path: &Path) -> i64 {
        rusqlite::Connection::open(path)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    // A backup holds what was committed when it was taken, stands alone (no WAL), is listed
    // newest first, pruned to the newest kept, and restores over a database that moved on.
    #[test]
    fn backup_list_prune_and_restore() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("node.db");
        let folder = dir.path().join(BACKUP_FOLDER);
        let writer = db_with_rows(&db, 10);
        let first = backup_now(&db, &folder, "node", 1_000).unwrap();
        db_with_rows(&db, 5);
        let second = backup_now(&db, &folder, "node", 2_000).unwrap();
        backup_now(&db, &folder, "node", 3_000).unwrap();
        std::fs::write(folder.join("notes.txt"), "not a backup").unwrap();
        assert_eq!(rows(&first.path), 10);
        assert_eq!(rows(&second.path), 15);
        let mut wal = first.path.as_os_str().to_owned();
        wal.push("-wal");
        assert!(!PathBuf::from(wal).exists());
        let listed: Vec<u64> = list(&folder, "node")
            .unwrap()
            .iter()
            .map(|b| b.taken_ms)
            .collect();
        assert_eq!(listed, vec![3_000, 2_000, 1_000]);
        let removed = prune(&folder, "node", 2).unwrap();
        assert_eq!(removed, vec![first.path.clone()]);
        assert!(folder.join("notes.txt").exists(), "only backups are pruned");

        drop(writer);
        db_with_rows(&db, 100);
        restore(&second.path, &db).unwrap();
        assert_eq!(rows(&db), 15, "the database is the backup's again");
    }

    // A damaged backup is refused by name and the database is left as it was.
    #[test]
    fn a_damaged_backup_is_refused_and_nothing_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("node.db");
        drop(db_with_rows(&db, 3));
        let bad = dir.path().join("bad.db");
        std::fs::write(&bad, b"SQLite format 3\0 and then nothing of the kind").unwrap();
        let err = restore(&bad, &db).unwrap_err();
        assert!(err.to_string().contains("bad.db"), "{err}");
        assert_eq!(rows(&db), 3);
    }
}
