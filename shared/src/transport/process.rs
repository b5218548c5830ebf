//! What both binaries do the same way at their edges: logging set-up, waiting for a stop signal,
//! writing files so that a reader never sees half of one, and importing a bundle file from the
//! command line with a progress bar.

use std::path::Path;

/// Sends logs to stderr, readable (`json = false`) or one JSON object per line; `RUST_LOG` sets the
/// level (default `info`).
pub fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Sends logs to `file` (appended; its folder created), for a service with no console (the
/// Windows SCM). `RUST_LOG` sets the level (default `info`).
pub fn init_file_logs(file: &Path) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(out))
        .init();
    Ok(())
}

/// Imports a bundle read from `file`, all or nothing, showing progress on stderr (a bar on a
/// terminal; nothing when stderr is not one).
pub fn import_bundle_with_bar(
    replica: &mut crate::replica::Replica,
    bytes: &[u8],
    file: &Path,
) -> Result<crate::bundle::ImportReport, crate::bundle::ImportError> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} change sets ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(format!("importing {}", file.display()));
    let result = crate::bundle::import_bundle_with_progress(
        replica,
        bytes,
        super::now_ms(),
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    );
    bar.finish_and_clear();
    result
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Writes a file that must not exist yet, under a temporary name first and then renamed, so that
/// a half-written file (a bundle, say) is never taken for a whole one.
pub fn write_new_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if path.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} already exists", path.display()),
        ));
    }
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Reads a bundle file, refusing one larger than any bundle before reading it.
pub fn read_bundle_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let len = std::fs::metadata(path)?.len();
    if len > crate::bundle::BUNDLE_BYTES_MAX as u64 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is {len} bytes, larger than any bundle", path.display()),
        ));
    }
    std::fs::read(path)
}
