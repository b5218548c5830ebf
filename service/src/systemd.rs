//! systemd, from both sides: installing and controlling a unit through `systemctl` (the
//! `service` commands), and, inside the running service, the sd_notify protocol: `READY=1` once
//! the program serves, `STOPPING=1` when it begins a graceful stop, and `WATCHDOG=1` pings sent
//! only while the program's own health check passes, so that systemd restarts a process that
//! hangs as well as one that dies.
//!
//! Outside systemd (no `NOTIFY_SOCKET`), the notify functions do nothing.
//!
//! Invariants: `install` checks everything it can (systemd running, the spec, the data folder)
//! before it changes anything; it writes the unit through a temporary file and a rename, so a
//! unit file is never half written.

use crate::{Program, ServiceSpec, systemd_unit};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::sync::watch;

/// What went wrong talking to systemd.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("systemd is not running on this machine (no /run/systemd/system): {0}")]
    NotRunning(String),
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Whether systemd manages this machine (the check `sd_booted` makes).
pub fn is_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// The unit file's path for `program` in `unit_dir`.
pub fn unit_path(program: Program, unit_dir: &Path) -> PathBuf {
    unit_dir.join(format!("{}.service", program.service_name()))
}

/// Installs `spec` as a unit in `unit_dir`: creates the service account if missing, gives it
/// the data folder, writes the unit, enables it, and starts it unless `start` is false.
pub fn install(spec: &ServiceSpec, unit_dir: &Path, start: bool) -> Result<PathBuf, SystemdError> {
    if !is_running() {
        return Err(SystemdError::NotRunning(format!(
            "nothing was installed; run `{}` under your service manager, or print the unit with \
             `{} service unit`",
            foreground_command(spec),
            spec.program.binary()
        )));
    }
    ensure_user(&spec.user, &spec.data_dir)?;
    for dir in std::iter::once(&spec.data_dir).chain(&spec.also_writes) {
        run(
            "chown",
            &["-R", &format!("{0}:{0}", spec.user), &dir.to_string_lossy()],
        )?;
    }
    let path = unit_path(spec.program, unit_dir);
    write_atomically(&path, &systemd_unit(spec))?;
    let name = spec.program.service_name();
    systemctl(&["daemon-reload"])?;
    if start {
        systemctl(&["enable", "--now", name])?;
    } else {
        systemctl(&["enable", name])?;
    }
    Ok(path)
}

/// Stops and disables the unit and removes its file; the data folder and the account stay.
pub fn uninstall(program: Program, unit_dir: &Path) -> Result<PathBuf, SystemdError> {
    if !is_running() {
        return Err(SystemdError::NotRunning("nothing to uninstall".into()));
    }
    let name = program.service_name();
    let path = unit_path(program, unit_dir);
    // Disabling a unit that is not installed fails; removing what is there matters more.
    let disabled = systemctl(&["disable", "--now", name]);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => disabled.map(|_| ())?,
        Err(source) => {
            return Err(SystemdError::Io {
                what: "removing",
                path,
                source,
            });
        }
    }
    systemctl(&["daemon-reload"])?;
    Ok(path)
}

/// `systemctl start|stop|restart NAME`.
pub fn control(program: Program, verb: &str) -> Result<(), SystemdError> {
    if !is_running() {
        return Err(SystemdError::NotRunning(format!(
            "no service to {verb}; `{} {}` runs it by hand",
            program.binary(),
            program.run_command()
        )));
    }
    systemctl(&[verb, program.service_name()]).map(|_| ())
}

/// The properties `service status` prints, as systemd reports them.
pub const STATUS_PROPERTIES: [&str; 7] = [
    "LoadState",
    "ActiveState",
    "SubState",
    "MainPID",
    "NRestarts",
    "ExecMainStatus",
    "StatusText",
];

/// `(property, value)` of the unit, for `service status`.
pub fn status(program: Program) -> Result<Vec<(String, String)>, SystemdError> {
    if !is_running() {
        return Err(SystemdError::NotRunning(
            "no service installed here to report on".into(),
        ));
    }
    let props = STATUS_PROPERTIES.join(",");
    let out = systemctl(&["show", "-p", &props, program.service_name()])?;
    Ok(parse_show(&out))
}

/// Parses `systemctl show` output (`Key=value` lines).
pub fn parse_show(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn foreground_command(spec: &ServiceSpec) -> String {
    std::iter::once(spec.binary.to_string_lossy().into_owned())
        .chain(spec.run_args())
        .collect::<Vec<_>>()
        .join(" ")
}

fn ensure_user(user: &str, home: &Path) -> Result<(), SystemdError> {
    if Command::new("id")
        .args(["-u", user])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    run(
        "useradd",
        &[
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            &home.to_string_lossy(),
            "--shell",
            "/usr/sbin/nologin",
            user,
        ],
    )
    .map(|_| ())
}

fn systemctl(args: &[&str]) -> Result<String, SystemdError> {
    run("systemctl", args)
}

fn run(program: &str, args: &[&str]) -> Result<String, SystemdError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| SystemdError::Command {
            command: command.clone(),
            status: "could not start".into(),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(SystemdError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn write_atomically(path: &Path, text: &str) -> Result<(), SystemdError> {
    let io = |what, source| SystemdError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("service.tmp");
    std::fs::write(&tmp, text).map_err(|e| io("writing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("renaming into", e))
}

// ------------------------------------------------------------------ inside the service

/// Tells systemd the service is ready, with a one-line status (`systemctl status` shows it).
pub fn notify_ready(status: &str) {
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// Tells systemd a graceful stop has begun.
pub fn notify_stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

fn notify(state: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!("telling systemd {state:?}: {e}");
    }
}

/// How often to ping systemd's watchdog: half its timeout, if the unit has one.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_interval`] from the environment systemd sets, as libsystemd's
/// `sd_watchdog_enabled` reads it: `WATCHDOG_USEC` is the timeout; `WATCHDOG_PID`, when set,
/// must name this process (a child started by the service must not ping for it). (The
/// sd-notify crate also requires `WATCHDOG_PID` to be set; libsystemd does not.)
pub fn watchdog_interval_from(
    usec: Option<&str>,
    pid: Option<&str>,
    my_pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(my_pid)
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

/// Pings systemd's watchdog every [`watchdog_interval`] while `check` passes within that
/// interval, until `shutdown` turns true. A check that fails or hangs is logged and not pinged
/// for, so systemd restarts the service once its watchdog timeout passes. Returns at once
/// outside systemd or without a watchdog.
pub async fn watchdog<F, Fut>(mut check: F, mut shutdown: watch::Receiver<bool>)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let Some(interval) = watchdog_interval() else {
        return;
    };
    loop {
        match tokio::time::timeout(interval, check()).await {
            Ok(Ok(())) => notify(&[sd_notify::NotifyState::Watchdog]),
            Ok(Err(why)) => tracing::warn!("health check failed, watchdog not pinged: {why}"),
            Err(_) => tracing::warn!(
                "health check took over {} ms, watchdog not pinged",
                interval.as_millis()
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
