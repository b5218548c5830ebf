use super::*;

fn spec(program: Program, data: &str) -> ServiceSpec {
    ServiceSpec::new(
        program,
        Path::new("/usr/bin/store-agent"),
        Path::new(data),
        SERVICE_USER,
        vec![],
    )
    .unwrap()
}

/// The value of `key=` in a unit (the first line that sets it).
fn setting<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

#[test]
fn the_store_agents_unit_runs_it_as_its_own_user_under_a_watchdog_and_restarts_it() {
    let unit = systemd_unit(&spec(Program::StoreAgent, "/var/lib/chainsync/store"));
    let want = [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        (
            "ExecStart",
            "\"/usr/bin/store-agent\" \"run\" \"--data\" \"/var/lib/chainsync/store\"",
        ),
        ("User", "chainsync"),
        ("Group", "chainsync"),
        ("WorkingDirectory", "/var/lib/chainsync/store"),
        ("Restart", "on-failure"),
        ("RestartSec", "5"),
        ("WatchdogSec", "30"),
        ("TimeoutStopSec", "30"),
        ("KillSignal", "SIGTERM"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "\"/var/lib/chainsync/store\""),
        ("StartLimitBurst", "10"),
        ("StartLimitIntervalSec", "600"),
        ("After", "network-online.target"),
        ("WantedBy", "multi-user.target"),
    ];
    for (key, value) in want {
        assert_eq!(setting(&unit, key), Some(value), "{key} in\n{unit}");
    }
    assert_eq!(setting(&unit, "LimitNOFILE"), None);
    // Sections in order, each once.
    let sections: Vec<&str> = unit.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(sections, ["[Unit]", "[Service]", "[Install]"]);
}

#[test]
fn hqs_unit_serves_and_may_hold_a_connection_per_store() {
    let unit = systemd_unit(&spec(Program::Hq, "/var/lib/chainsync/hq"));
    assert_eq!(
        setting(&unit, "ExecStart"),
        Some("\"/usr/bin/store-agent\" \"serve\" \"--data\" \"/var/lib/chainsync/hq\"")
    );
    assert_eq!(setting(&unit, "LimitNOFILE"), Some("65536"));
    assert!(
        setting(&unit, "Description")
            .is_some_and(|d| d.starts_with("chainsync headquarters server"))
    );
}

#[test]
fn a_bundle_folder_is_writable_too() {
    let spec = ServiceSpec::new(
        Program::StoreAgent,
        Path::new("/usr/bin/store-agent"),
        Path::new("/srv/store"),
        "shop",
        vec![PathBuf::from("/mnt/usb stick/bundles")],
    )
    .unwrap();
    let unit = systemd_unit(&spec);
    assert_eq!(
        setting(&unit, "ReadWritePaths"),
        Some("\"/srv/store\" \"/mnt/usb stick/bundles\"")
    );
    assert_eq!(setting(&unit, "User"), Some("shop"));
}

#[test]
fn words_are_quoted_so_they_reach_the_program_as_written() {
    let cases = [
        ("plain", "\"plain\""),
        ("/srv/my store", "\"/srv/my store\""),
        ("100%", "\"100%%\""),
        ("$HOME", "\"$$HOME\""),
        ("a\"b", "\"a\\\"b\""),
        ("a\\b", "\"a\\\\b\""),
        ("", "\"\""),
    ];
    for (word, quoted) in cases {
        assert_eq!(systemd_quote(word), quoted, "{word:?}");
    }
    let unit = systemd_unit(&spec(Program::StoreAgent, "/srv/50% off/$x"));
    assert_eq!(
        setting(&unit, "ExecStart"),
        Some("\"/usr/bin/store-agent\" \"run\" \"--data\" \"/srv/50%% off/$$x\"")
    );
    assert_eq!(setting(&unit, "WorkingDirectory"), Some("/srv/50%% off/$x"));
    assert_eq!(
        setting(&unit, "ReadWritePaths"),
        Some("\"/srv/50%% off/$x\"")
    );
}

#[test]
fn a_spec_refuses_what_a_unit_could_not_say() {
    let bin = Path::new("/usr/bin/store-agent");
    let data = Path::new("/var/lib/chainsync/store");
    let refused = [
        (
            bin,
            Path::new("store-data"),
            "chainsync",
            "must be an absolute path",
        ),
        (
            Path::new("store-agent"),
            data,
            "chainsync",
            "must be an absolute path",
        ),
        (
            bin,
            Path::new("/srv/a\nb"),
            "chainsync",
            "control character",
        ),
        (bin, Path::new("/srv/a\"b"), "chainsync", "quote"),
        (bin, Path::new("/srv/a\\b"), "chainsync", "backslash"),
        (bin, data, "", "not a valid account"),
        (bin, data, "Root", "not a valid account"),
        (bin, data, "-x", "not a valid account"),
        (bin, data, "a b", "not a valid account"),
        (bin, data, &"a".repeat(33), "not a valid account"),
    ];
    for (binary, data, user, why) in refused {
        let err = ServiceSpec::new(Program::StoreAgent, binary, data, user, vec![]).unwrap_err();
        assert!(
            err.to_string().contains(why),
            "{binary:?} {data:?} {user:?}: {err}"
        );
    }
    let err = ServiceSpec::new(
        Program::StoreAgent,
        bin,
        data,
        "chainsync",
        vec![PathBuf::from("bundles")],
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("a folder the service writes"),
        "{err}"
    );
}

#[test]
fn the_template_runs_one_service_per_instance_folder() {
    let unit = systemd_template(
        Program::StoreAgent,
        Path::new("/usr/bin/store-agent"),
        "chainsync",
    );
    assert_eq!(
        setting(&unit, "ExecStart"),
        Some("\"/usr/bin/store-agent\" \"run\" \"--data\" \"/var/lib/chainsync/%i\"")
    );
    assert_eq!(
        setting(&unit, "WorkingDirectory"),
        Some("/var/lib/chainsync/%i")
    );
    assert_eq!(
        setting(&unit, "ReadWritePaths"),
        Some("\"/var/lib/chainsync/%i\"")
    );
    assert_eq!(setting(&unit, "Type"), Some("notify"));
}

#[test]
fn the_windows_service_starts_delayed_at_boot_and_restarts_after_5_30_and_60_seconds() {
    let def = windows_definition(
        Program::StoreAgent,
        Path::new("C:/Program Files/chainsync/store-agent.exe"),
        Path::new("C:/ProgramData/chainsync/store"),
    );
    assert_eq!(def.name, "chainsync-store-agent");
    assert_eq!(def.display_name, "chainsync store agent");
    assert_eq!(
        def.arguments,
        ["service", "run", "--data", "C:/ProgramData/chainsync/store"]
    );
    assert!(def.delayed_auto_start);
    assert_eq!(
        def.restart_delays,
        [5, 30, 60].map(Duration::from_secs).to_vec()
    );
    assert_eq!(def.failure_reset, Duration::from_secs(86_400));
    assert!(def.restart_on_error_exit);
    assert_eq!(
        def.log_file,
        Path::new("C:/ProgramData/chainsync/store/logs/service.log")
    );
    let hq = windows_definition(Program::Hq, Path::new("C:/hq.exe"), Path::new("D:/hq"));
    assert_eq!(hq.name, "chainsync-hq");
    assert!(
        hq.description.contains("hq-server serve"),
        "{}",
        hq.description
    );
}

#[cfg(target_os = "linux")]
#[test]
fn systemctl_show_output_is_read_as_properties() {
    let text = "ActiveState=active\nSubState=running\nMainPID=4242\nStatusText=serving: S017 a=b\n";
    let props = systemd::parse_show(text);
    assert_eq!(props.len(), 4);
    assert_eq!(props[2], ("MainPID".to_owned(), "4242".to_owned()));
    assert_eq!(props[3].1, "serving: S017 a=b");
}

#[cfg(target_os = "linux")]
#[test]
fn the_watchdog_is_pinged_at_half_its_timeout_by_the_process_systemd_named() {
    let ms = |n| Some(Duration::from_millis(n));
    let cases = [
        (Some("30000000"), None, ms(15_000)),
        (Some("30000000"), Some("42"), ms(15_000)),
        (Some("30000000"), Some("43"), None),
        (Some("30000000"), Some("x"), None),
        (Some("0"), None, None),
        (Some("-5"), None, None),
        (Some("soon"), None, None),
        (None, Some("42"), None),
        (None, None, None),
    ];
    for (usec, pid, want) in cases {
        assert_eq!(
            systemd::watchdog_interval_from(usec, pid, 42),
            want,
            "{usec:?} {pid:?}"
        );
    }
}
