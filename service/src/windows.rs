//! Windows: the store agent or HQ as a real Windows service (windows-service crate).
//!
//! `cfg(windows)` only, and not compiled on the Linux machines this project is built on: kept
//! small, with everything that can be decided elsewhere (name, arguments, start type, failure
//! actions, log file) in [`crate::windows_definition`], which Linux tests check.
//!
//! - `install` registers the service (automatic, delayed start, as LocalSystem), sets its
//!   description and failure actions (restart after 5 s, 30 s, 60 s; count reset after a day;
//!   also on an exit with an error) and starts it.
//! - `run` is what the SCM starts (`service run --data DIR`): it registers the control handler,
//!   reports Running, runs the program until Stop or Shutdown arrives, turns that into the
//!   program's graceful shutdown, and reports Stopped with the program's exit code.

use crate::cli::RunFn;
use crate::{Program, WindowsDefinition};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

/// Registers and (if `start`) starts the service described by `def`.
pub fn install(def: &WindowsDefinition, start: bool) -> windows_service::Result<()> {
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )?;
    let info = ServiceInfo {
        name: OsString::from(&def.name),
        display_name: OsString::from(&def.display_name),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: def.executable.clone(),
        launch_arguments: def.arguments.iter().map(OsString::from).collect(),
        dependencies: vec![],
        account_name: None, // LocalSystem
        account_password: None,
    };
    let service = manager.create_service(
        &info,
        ServiceAccess::CHANGE_CONFIG | ServiceAccess::START | ServiceAccess::QUERY_STATUS,
    )?;
    service.set_description(&def.description)?;
    service.set_delayed_auto_start(def.delayed_auto_start)?;
    service.update_failure_actions(ServiceFailureActions {
        reset_period: ServiceFailureResetPeriod::After(def.failure_reset),
        reboot_msg: None,
        command: None,
        actions: Some(
            def.restart_delays
                .iter()
                .map(|delay| ServiceAction {
                    action_type: ServiceActionType::Restart,
                    delay: *delay,
                })
                .collect(),
        ),
    })?;
    service.set_failure_actions_on_non_crash_failures(def.restart_on_error_exit)?;
    if start {
        service.start::<&str>(&[])?;
    }
    Ok(())
}

/// Stops (if running) and deletes the service.
pub fn uninstall(program: Program) -> windows_service::Result<()> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)?;
    let service = manager.open_service(
        program.service_name(),
        ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
    )?;
    if service.query_status()?.current_state != ServiceState::Stopped {
        let _ = service.stop();
    }
    service.delete()
}

/// `start` or `stop`.
pub fn control(program: Program, verb: &str) -> windows_service::Result<()> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)?;
    let service = manager.open_service(
        program.service_name(),
        ServiceAccess::START | ServiceAccess::STOP | ServiceAccess::QUERY_STATUS,
    )?;
    if verb == "start" {
        service.start::<&str>(&[])
    } else {
        service.stop().map(|_| ())
    }
}

/// The service's state as the SCM reports it.
pub fn status(program: Program) -> windows_service::Result<String> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)?;
    let service = manager.open_service(program.service_name(), ServiceAccess::QUERY_STATUS)?;
    let status = service.query_status()?;
    Ok(format!(
        "{:?} (pid {})",
        status.current_state,
        status
            .process_id
            .map_or_else(|| "-".to_owned(), |p| p.to_string())
    ))
}

/// What the SCM's entry point needs (it takes no arguments of ours).
struct Entry {
    program: Program,
    data: PathBuf,
    run: RunFn,
}

static ENTRY: OnceLock<Entry> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

/// Hands this process to the SCM (blocks until the service stops).
pub fn run(program: Program, data: &Path, run: RunFn) -> windows_service::Result<()> {
    let _ = ENTRY.set(Entry {
        program,
        data: data.to_owned(),
        run,
    });
    service_dispatcher::start(program.service_name(), ffi_service_main)
}

fn service_main(_arguments: Vec<OsString>) {
    if let Err(e) = serve() {
        tracing::error!("service: {e}");
    }
}

fn serve() -> windows_service::Result<()> {
    let Some(entry) = ENTRY.get() else {
        return Ok(());
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            let _ = stop.send(true);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let status = service_control_handler::register(entry.program.service_name(), handler)?;
    let report = |state, exit: u32, wait_hint: Duration| {
        status.set_service_status(ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: if state == ServiceState::Running {
                ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
            } else {
                ServiceControlAccept::empty()
            },
            exit_code: ServiceExitCode::Win32(exit),
            checkpoint: 0,
            wait_hint,
            process_id: None,
        })
    };
    report(ServiceState::Running, 0, Duration::default())?;
    let result = (entry.run)(&entry.data, shutdown);
    if let Err(e) = &result {
        tracing::error!("{} stopped with an error: {e}", entry.program.binary());
    }
    // A non-zero exit code makes the SCM apply the failure actions (restart).
    report(
        ServiceState::Stopped,
        u32::from(result.is_err()),
        Duration::default(),
    )
}
