//! Running `store-agent` and `hq-server` as operating-system services.
//!
//! - This module, platform-neutral and tested on Linux: what a service runs ([`ServiceSpec`]:
//!   which program, which data folder, which account), the systemd unit for it
//!   ([`systemd_unit`], also as an instance template), and the Windows service definition
//!   ([`windows_definition`]: start at boot, delayed; restart after 5 s, 30 s, 60 s; failure
//!   count reset after a day).
//! - [`cli`]: the `service` subcommand both binaries share, and readiness ([`ready`],
//!   [`stopping`], [`watchdog`]) that does the right thing under each service manager.
//! - `systemd` (Linux): `install|uninstall|start|stop|status` through `systemctl`; readiness,
//!   stopping and a watchdog that pings only while the process's own health check passes, through
//!   the sd-notify protocol.
//! - `windows` (`cfg(windows)` only; not compiled on the Linux build machines): the same commands
//!   through the Service Control Manager, and the service entry point that turns a Stop from the
//!   SCM into the program's graceful shutdown.
//!
//! Invariants: a unit names absolute paths only and quotes every argument, so a data folder with
//! spaces or `%` runs as written; generating a definition touches nothing on the machine.

pub mod cli;
#[cfg(target_os = "linux")]
pub mod systemd;
#[cfg(windows)]
pub mod windows;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The two programs that run as services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    StoreAgent,
    Hq,
}

impl Program {
    /// The service's name (systemd unit without `.service`, Windows service name).
    pub fn service_name(self) -> &'static str {
        match self {
            Program::StoreAgent => "chainsync-store-agent",
            Program::Hq => "chainsync-hq",
        }
    }

    /// What the service manager shows.
    pub fn display_name(self) -> &'static str {
        match self {
            Program::StoreAgent => "chainsync store agent",
            Program::Hq => "chainsync headquarters server",
        }
    }

    /// The binary's file name (without `.exe`).
    pub fn binary(self) -> &'static str {
        match self {
            Program::StoreAgent => "store-agent",
            Program::Hq => "hq-server",
        }
    }

    /// The data folder a package installs for (Linux).
    pub fn default_data_dir(self) -> &'static str {
        match self {
            Program::StoreAgent => "/var/lib/chainsync/store",
            Program::Hq => "/var/lib/chainsync/hq",
        }
    }

    /// The subcommand that runs the program in the foreground until told to stop.
    fn run_command(self) -> &'static str {
        match self {
            Program::StoreAgent => "run",
            Program::Hq => "serve",
        }
    }
}

/// The account a service runs as on Linux, created by `service install` and by the package.
pub const SERVICE_USER: &str = "chainsync";

/// Where `service install` writes systemd units.
pub const SYSTEMD_UNIT_DIR: &str = "/etc/systemd/system";

/// How often the service manager expects a watchdog ping; it restarts a service that misses one.
pub const WATCHDOG_SEC: u64 = 30;

/// How long the service manager waits for a graceful stop before killing the process.
pub const STOP_TIMEOUT_SEC: u64 = 30;

/// Restart delays after the first, second and later failures (Windows' failure actions; systemd
/// restarts after the first delay, and stops trying after [`START_LIMIT_BURST`] failures within
/// [`START_LIMIT_INTERVAL_SEC`]).
pub const RESTART_DELAYS: [Duration; 3] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(60),
];

/// The failure count starts again after a day without a failure (Windows).
pub const FAILURE_RESET: Duration = Duration::from_secs(24 * 3600);

/// systemd gives up restarting after this many failures ...
pub const START_LIMIT_BURST: u32 = 10;
/// ... within this many seconds (then an operator must look: `service status` says so).
pub const START_LIMIT_INTERVAL_SEC: u64 = 600;

/// Why a service definition cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("{what} must be an absolute path, not {path:?}")]
    NotAbsolute { what: &'static str, path: PathBuf },
    #[error("{what} {path:?} is not valid UTF-8")]
    NotUtf8 { what: &'static str, path: PathBuf },
    #[error("{what} {path:?} contains a control character, a quote or a backslash")]
    Unquotable { what: &'static str, path: PathBuf },
    #[error("service user {0:?} is not a valid account name (a-z, 0-9, -, _, up to 32)")]
    BadUser(String),
}

/// One service: which program, from where, on which data folder, as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub program: Program,
    /// Absolute path of the binary the service runs.
    pub binary: PathBuf,
    /// Absolute path of the data folder (`init` made it).
    pub data_dir: PathBuf,
    /// The account it runs as (Linux).
    pub user: String,
    /// Other folders it writes (a bundle folder), absolute.
    pub also_writes: Vec<PathBuf>,
}

impl ServiceSpec {
    /// A checked spec: absolute UTF-8 paths without control characters, a plain account name.
    pub fn new(
        program: Program,
        binary: &Path,
        data_dir: &Path,
        user: &str,
        also_writes: Vec<PathBuf>,
    ) -> Result<Self, SpecError> {
        check_path("the program", binary)?;
        check_path("the data folder", data_dir)?;
        for path in &also_writes {
            check_path("a folder the service writes", path)?;
        }
        let user_ok = !user.is_empty()
            && user.len() <= 32
            && user
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && !user.starts_with('-');
        if !user_ok {
            return Err(SpecError::BadUser(user.to_owned()));
        }
        Ok(Self {
            program,
            binary: binary.to_owned(),
            data_dir: data_dir.to_owned(),
            user: user.to_owned(),
            also_writes,
        })
    }

    /// The program's arguments when run by the service manager: run in the foreground on the
    /// data folder. (On Windows the entry point is `service run`, which registers with the
    /// Service Control Manager first.)
    pub fn run_args(&self) -> Vec<String> {
        vec![
            self.program.run_command().to_owned(),
            "--data".to_owned(),
            path_text(&self.data_dir),
        ]
    }
}

fn check_path(what: &'static str, path: &Path) -> Result<(), SpecError> {
    let text = path.to_str().ok_or_else(|| SpecError::NotUtf8 {
        what,
        path: path.to_owned(),
    })?;
    if !path.is_absolute() {
        return Err(SpecError::NotAbsolute {
            what,
            path: path.to_owned(),
        });
    }
    if text
        .chars()
        .any(|c| c.is_control() || c == '"' || c == '\\')
    {
        return Err(SpecError::Unquotable {
            what,
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Paths are checked to be UTF-8 by [`ServiceSpec::new`].
fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// One word of a systemd `Exec*=` line: double-quoted, with `\` and `"` escaped and systemd's
/// specifier `%` and variable `$` doubled, so that it reaches the program exactly as given.
pub fn systemd_quote(word: &str) -> String {
    let mut out = String::with_capacity(word.len() + 2);
    out.push('"');
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A path in a systemd setting that takes a space-separated list (`ReadWritePaths=`): quoted,
/// `%` doubled (such settings expand specifiers, not variables). [`ServiceSpec::new`] refused
/// quotes and backslashes in paths.
fn systemd_list_path(path: &Path) -> String {
    format!("\"{}\"", path_text(path).replace('%', "%%"))
}

/// A path in a systemd setting that takes one path (`WorkingDirectory=`): unquoted (quotes
/// would be taken literally), `%` doubled.
fn systemd_single_path(path: &Path) -> String {
    path_text(path).replace('%', "%%")
}

/// The systemd unit for `spec`: `Type=notify` with a watchdog, restarted on failure, as its own
/// user, writing only its data folder (and any folder in `also_writes`), logging to the journal.
pub fn systemd_unit(spec: &ServiceSpec) -> String {
    let exec = std::iter::once(path_text(&spec.binary))
        .chain(spec.run_args())
        .map(|w| systemd_quote(&w))
        .collect::<Vec<_>>()
        .join(" ");
    let writes = std::iter::once(&spec.data_dir)
        .chain(&spec.also_writes)
        .map(|p| systemd_list_path(p))
        .collect::<Vec<_>>()
        .join(" ");
    unit_text(
        spec.program,
        &exec,
        &spec.user,
        &systemd_single_path(&spec.data_dir),
        &writes,
        &format!("data folder {}", systemd_single_path(&spec.data_dir)),
    )
}

/// An instance template (`chainsync-store-agent@.service`) for several services of one program
/// on one machine: instance `NAME` runs on `/var/lib/chainsync/NAME`
/// (`systemctl enable --now chainsync-store-agent@S017`).
pub fn systemd_template(program: Program, binary: &Path, user: &str) -> String {
    let exec = [
        systemd_quote(&path_text(binary)),
        systemd_quote(program.run_command()),
        systemd_quote("--data"),
        // `%i` must reach systemd unescaped: it is the instance name.
        "\"/var/lib/chainsync/%i\"".to_owned(),
    ]
    .join(" ");
    unit_text(
        program,
        &exec,
        user,
        "/var/lib/chainsync/%i",
        "\"/var/lib/chainsync/%i\"",
        "instance %i",
    )
}

fn unit_text(
    program: Program,
    exec: &str,
    user: &str,
    working_dir: &str,
    writes: &str,
    what: &str,
) -> String {
    let limit_nofile = match program {
        // HQ holds a QUIC connection and a database handle per store; the agent a few.
        Program::Hq => "LimitNOFILE=65536\n",
        Program::StoreAgent => "",
    };
    format!(
        "\
# Generated by `{binary} service install` (chainsync). Edit with `systemctl edit`.
[Unit]
Description={display} ({what})
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec={START_LIMIT_INTERVAL_SEC}
StartLimitBurst={START_LIMIT_BURST}

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec}
User={user}
Group={user}
WorkingDirectory={working_dir}
Restart=on-failure
RestartSec={restart}
WatchdogSec={WATCHDOG_SEC}
TimeoutStopSec={STOP_TIMEOUT_SEC}
KillSignal=SIGTERM
{limit_nofile}NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths={writes}
UMask=0077

[Install]
WantedBy=multi-user.target
",
        binary = program.binary(),
        display = program.display_name(),
        restart = RESTART_DELAYS[0].as_secs(),
    )
}

/// What a Windows service is registered with, platform-neutral so that Linux tests check it;
/// `windows.rs` hands it to the Service Control Manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowsDefinition {
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub executable: PathBuf,
    /// `service run --data DIR`: the entry point that registers with the SCM.
    pub arguments: Vec<String>,
    /// Start at boot, after the other automatic services (delayed auto-start).
    pub delayed_auto_start: bool,
    /// Restart after each delay in turn ([`RESTART_DELAYS`]).
    pub restart_delays: Vec<Duration>,
    /// Failure count reset ([`FAILURE_RESET`]).
    pub failure_reset: Duration,
    /// Also restart when the program exits with an error rather than crashing.
    pub restart_on_error_exit: bool,
    /// The log file under the data folder (no journal on Windows).
    pub log_file: PathBuf,
}

/// The log file of a service run by the Windows SCM, under its data folder.
pub fn windows_log_file(data_dir: &Path) -> PathBuf {
    data_dir.join("logs").join("service.log")
}

/// The Windows service definition for `program` at `executable` on `data_dir`. Windows paths are
/// not checked for being absolute here (a Linux `Path` does not know `C:\`); `windows.rs` does.
pub fn windows_definition(
    program: Program,
    executable: &Path,
    data_dir: &Path,
) -> WindowsDefinition {
    WindowsDefinition {
        name: program.service_name().to_owned(),
        display_name: program.display_name().to_owned(),
        description: format!(
            "{} (chainsync): runs `{} {}` on {}",
            program.display_name(),
            program.binary(),
            program.run_command(),
            data_dir.display()
        ),
        executable: executable.to_owned(),
        arguments: vec![
            "service".to_owned(),
            "run".to_owned(),
            "--data".to_owned(),
            path_text(data_dir),
        ],
        delayed_auto_start: true,
        restart_delays: RESTART_DELAYS.to_vec(),
        failure_reset: FAILURE_RESET,
        restart_on_error_exit: true,
        log_file: windows_log_file(data_dir),
    }
}

/// Tells the service manager the program serves (systemd: `READY=1` with `status`). Nothing
/// outside a service manager.
pub fn ready(status: &str) {
    #[cfg(target_os = "linux")]
    systemd::notify_ready(status);
    #[cfg(not(target_os = "linux"))]
    let _ = status;
}

/// Tells the service manager a graceful stop has begun.
pub fn stopping() {
    #[cfg(target_os = "linux")]
    systemd::notify_stopping();
}

/// Pings the service manager's watchdog while `check` passes, until `shutdown` (systemd; returns
/// at once elsewhere or without a watchdog).
pub async fn watchdog<F, Fut>(check: F, shutdown: tokio::sync::watch::Receiver<bool>)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    #[cfg(target_os = "linux")]
    systemd::watchdog(check, shutdown).await;
    #[cfg(not(target_os = "linux"))]
    let _ = (check, shutdown);
}

/// A program's life under a service manager, as one task: says it is ready (with `status`),
/// pings the watchdog while `check` passes, and says it is stopping when `shutdown` turns true.
pub async fn supervise<F, Fut>(
    status: String,
    check: F,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    ready(&status);
    watchdog(check, shutdown.clone()).await;
    let _ = shutdown.wait_for(|stop| *stop).await;
    stopping();
}

#[cfg(test)]
mod tests;
