//! The `service` subcommand of `store-agent` and `hq-server`: `install | uninstall | start |
//! stop | status | unit`, the same on both and on every platform that has a service manager
//! (systemd on Linux, the Service Control Manager on Windows).
//!
//! Each binary describes itself in a [`Host`] (which program, its default data folder, how to
//! check a data folder is set up, how to run in the foreground) and hands the parsed command to
//! [`execute`].

use crate::{Program, SERVICE_USER, SYSTEMD_UNIT_DIR, ServiceSpec, SpecError};
use std::path::{Path, PathBuf};

/// `service …`
#[derive(Debug, clap::Subcommand)]
pub enum ServiceCommand {
    /// Install as a service that starts at boot and restarts on failure, and start it.
    Install {
        /// The data folder (`init` made it); default as for the other commands.
        #[arg(long)]
        data: Option<PathBuf>,
        /// The account the service runs as (Linux; created if missing).
        #[arg(long, default_value = SERVICE_USER)]
        user: String,
        /// Install and enable, but do not start now.
        #[arg(long)]
        no_start: bool,
        /// Where the systemd unit is written (Linux).
        #[arg(long, default_value = SYSTEMD_UNIT_DIR)]
        unit_dir: PathBuf,
    },
    /// Stop the service and remove it (the data folder stays).
    Uninstall {
        #[arg(long, default_value = SYSTEMD_UNIT_DIR)]
        unit_dir: PathBuf,
    },
    /// Start the installed service.
    Start,
    /// Stop the installed service gracefully.
    Stop,
    /// What the service manager says of the service.
    Status,
    /// Print the service definition `install` would write (a systemd unit), touching nothing.
    Unit {
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value = SERVICE_USER)]
        user: String,
        /// The binary the unit runs (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// An instance template (`NAME@.service`) running on /var/lib/chainsync/INSTANCE.
        #[arg(long)]
        template: bool,
    },
    /// The entry point the Windows Service Control Manager starts (not for use by hand).
    #[command(hide = true)]
    Run {
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

/// How a binary runs in the foreground until the receiver turns true.
pub type RunFn = fn(&Path, tokio::sync::watch::Receiver<bool>) -> Result<(), String>;

/// What a binary tells [`execute`] about itself.
pub struct Host {
    pub program: Program,
    /// The data folder when `--data` is not given.
    pub default_data: &'static str,
    /// Checks that a data folder holds a set-up program; returns the other folders it writes
    /// (a bundle folder) as configured (a relative one is taken relative to the data folder,
    /// the service's working directory).
    pub inspect: fn(&Path) -> Result<Vec<PathBuf>, String>,
    /// Runs the program in the foreground (used by the Windows service entry point).
    pub run: RunFn,
}

impl Host {
    /// Where logs go when the Windows SCM starts this program (`service run`, no console): a
    /// file in the data folder. `None` for every other command (stderr, or systemd's journal).
    pub fn service_log_file(&self, command: &ServiceCommand) -> Option<PathBuf> {
        match command {
            ServiceCommand::Run { data } => Some(crate::windows_log_file(
                data.as_deref().unwrap_or(Path::new(self.default_data)),
            )),
            _ => None,
        }
    }
}

/// Why a `service` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Systemd(#[from] crate::systemd::SystemdError),
    #[error("{0}")]
    Windows(String),
    #[error("the data folder {path}: {why}")]
    DataFolder { path: PathBuf, why: String },
    #[error("{0}")]
    Unsupported(String),
}

/// Runs one `service` command, printing what it did.
pub fn execute(host: &Host, command: ServiceCommand) -> Result<(), CliError> {
    let program = host.program;
    match command {
        ServiceCommand::Install {
            data,
            user,
            no_start,
            unit_dir,
        } => {
            let spec = spec_for(host, data, &user, None, true)?;
            install(&spec, &unit_dir, !no_start)
        }
        ServiceCommand::Uninstall { unit_dir } => uninstall(program, &unit_dir),
        ServiceCommand::Start => control(program, "start"),
        ServiceCommand::Stop => control(program, "stop"),
        ServiceCommand::Status => status(program),
        ServiceCommand::Unit {
            data,
            user,
            binary,
            template,
        } => {
            let binary = match binary {
                Some(b) => b,
                None => this_binary()?,
            };
            if template {
                print!("{}", crate::systemd_template(program, &binary, &user));
            } else {
                let spec = spec_for(host, data, &user, Some(binary), false)?;
                print!("{}", crate::systemd_unit(&spec));
            }
            Ok(())
        }
        ServiceCommand::Run { data } => {
            let data = data.unwrap_or_else(|| PathBuf::from(host.default_data));
            run_under_service_manager(host, &data)
        }
    }
}

/// The spec for this binary on `data`. With `set_up`, the folder must hold a set-up program
/// (made absolute); without (printing a unit for a package), a folder that does not exist yet is
/// taken as given and must be absolute.
fn spec_for(
    host: &Host,
    data: Option<PathBuf>,
    user: &str,
    binary: Option<PathBuf>,
    set_up: bool,
) -> Result<ServiceSpec, CliError> {
    let data = data.unwrap_or_else(|| PathBuf::from(host.default_data));
    let data = match std::fs::canonicalize(&data) {
        Ok(found) => found,
        Err(_) if !set_up => data,
        Err(e) => {
            return Err(CliError::DataFolder {
                path: data,
                why: format!(
                    "{e} (set it up with `{} init` first)",
                    host.program.binary()
                ),
            });
        }
    };
    let also_writes = match (host.inspect)(&data) {
        Ok(folders) => folders
            .into_iter()
            .map(|f| if f.is_absolute() { f } else { data.join(f) })
            .collect(),
        Err(_) if !set_up => Vec::new(),
        Err(why) => return Err(CliError::DataFolder { path: data, why }),
    };
    let binary = match binary {
        Some(b) => b,
        None => this_binary()?,
    };
    Ok(ServiceSpec::new(
        host.program,
        &binary,
        &data,
        user,
        also_writes,
    )?)
}

fn this_binary() -> Result<PathBuf, CliError> {
    std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|e| CliError::Unsupported(format!("finding this program's own path: {e}")))
}

#[cfg(target_os = "linux")]
fn install(spec: &ServiceSpec, unit_dir: &Path, start: bool) -> Result<(), CliError> {
    let path = crate::systemd::install(spec, unit_dir, start)?;
    let name = spec.program.service_name();
    println!(
        "installed {name} ({}), enabled at boot{}, running as {} on {}",
        path.display(),
        if start { " and started" } else { "" },
        spec.user,
        spec.data_dir.display()
    );
    println!(
        "status: {} service status · logs: journalctl -u {name}",
        spec.program.binary()
    );
    Ok(())
}

#[cfg(target_os = "linux")]
fn uninstall(program: Program, unit_dir: &Path) -> Result<(), CliError> {
    let path = crate::systemd::uninstall(program, unit_dir)?;
    println!(
        "{} stopped and removed ({} deleted; the data folder and the account stay)",
        program.service_name(),
        path.display()
    );
    Ok(())
}

#[cfg(target_os = "linux")]
fn control(program: Program, verb: &str) -> Result<(), CliError> {
    crate::systemd::control(program, verb)?;
    println!("{}: {verb} done", program.service_name());
    Ok(())
}

#[cfg(target_os = "linux")]
fn status(program: Program) -> Result<(), CliError> {
    for (key, value) in crate::systemd::status(program)? {
        println!("{key:<16} {value}");
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn run_under_service_manager(host: &Host, data: &Path) -> Result<(), CliError> {
    Err(CliError::Unsupported(format!(
        "`service run` is the Windows service entry point; on Linux systemd runs `{} {} --data {}`",
        host.program.binary(),
        host.program.run_command(),
        data.display()
    )))
}

#[cfg(windows)]
fn install(spec: &ServiceSpec, _unit_dir: &Path, start: bool) -> Result<(), CliError> {
    let def = crate::windows_definition(spec.program, &spec.binary, &spec.data_dir);
    crate::windows::install(&def, start).map_err(|e| CliError::Windows(e.to_string()))?;
    println!(
        "installed {} (automatic, delayed start; restarts after 5 s, 30 s, 60 s){}; logs: {}",
        def.name,
        if start { ", started" } else { "" },
        def.log_file.display()
    );
    Ok(())
}

#[cfg(windows)]
fn uninstall(program: Program, _unit_dir: &Path) -> Result<(), CliError> {
    crate::windows::uninstall(program).map_err(|e| CliError::Windows(e.to_string()))?;
    println!(
        "{} stopped and removed (the data folder stays)",
        program.service_name()
    );
    Ok(())
}

#[cfg(windows)]
fn control(program: Program, verb: &str) -> Result<(), CliError> {
    crate::windows::control(program, verb).map_err(|e| CliError::Windows(e.to_string()))?;
    println!("{}: {verb} done", program.service_name());
    Ok(())
}

#[cfg(windows)]
fn status(program: Program) -> Result<(), CliError> {
    let state = crate::windows::status(program).map_err(|e| CliError::Windows(e.to_string()))?;
    println!("{} {state}", program.service_name());
    Ok(())
}

#[cfg(windows)]
fn run_under_service_manager(host: &Host, data: &Path) -> Result<(), CliError> {
    crate::windows::run(host.program, data, host.run).map_err(|e| CliError::Windows(e.to_string()))
}

#[cfg(not(any(target_os = "linux", windows)))]
fn install(spec: &ServiceSpec, _unit_dir: &Path, _start: bool) -> Result<(), CliError> {
    Err(unsupported(spec.program))
}

#[cfg(not(any(target_os = "linux", windows)))]
fn uninstall(program: Program, _unit_dir: &Path) -> Result<(), CliError> {
    Err(unsupported(program))
}

#[cfg(not(any(target_os = "linux", windows)))]
fn control(program: Program, _verb: &str) -> Result<(), CliError> {
    Err(unsupported(program))
}

#[cfg(not(any(target_os = "linux", windows)))]
fn status(program: Program) -> Result<(), CliError> {
    Err(unsupported(program))
}

#[cfg(not(any(target_os = "linux", windows)))]
fn run_under_service_manager(host: &Host, _data: &Path) -> Result<(), CliError> {
    Err(unsupported(host.program))
}

#[cfg(not(any(target_os = "linux", windows)))]
fn unsupported(program: Program) -> CliError {
    CliError::Unsupported(format!(
        "no service manager support on this platform: run `{} {}` under your own",
        program.binary(),
        program.run_command()
    ))
}
