//! `sluice import-keepalived` through the binary: a keepalived.conf becomes a configuration sluice accepts, and
//! what cannot be carried over is named with its line.

use std::process::Command;

use balancer::service::{ForwardingMode, SchedulerKind};
use control::config::{CheckKind, Config, OnFailure};

const KEEPALIVED: &str = r#"! Configuration File for keepalived
global_defs {
   router_id LVS_DEVEL
}

vrrp_instance VI_1 {
    state MASTER
    interface eth0
    virtual_router_id 51
}

virtual_server 192.0.2.10 80 {
    delay_loop 6
    lb_algo wrr
    lb_kind DR
    persistence_timeout 50
    persistence_granularity 255.255.255.0
    protocol TCP
    sorry_server 192.0.2.99 80
    quorum 2
    hysteresis 1
    alpha

    real_server 192.0.2.21 80 {
        weight 3
        inhibit_on_failure
        notify_up "/usr/local/bin/up.sh 192.0.2.21"
        notify_down /usr/local/bin/down.sh root
        TCP_CHECK {
            connect_timeout 3
            retry 3
            delay_before_retry 2
            warmup 4
        }
        MISC_CHECK {
            misc_path "/usr/local/bin/check.sh 192.0.2.21"
            misc_timeout 5
            misc_dynamic
        }
    }
    real_server 192.0.2.22 80 {
        weight 1
        HTTP_GET {
            url {
              path /healthz
              status_code 204
              digest 9b3a0c85a887a256d6939da88aabd8cd
            }
            connect_timeout 2
            nb_get_retry 2
        }
    }
}

virtual_server 192.0.2.11 53 {
    lb_algo fo
    lb_kind NAT
    protocol UDP
    real_server 10.1.0.5 5353 {
        weight 0
    }
}

virtual_server fwmark 7 {
    lb_kind DR
}
"#;

#[test]
fn a_keepalived_configuration_imports() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keepalived.conf");
    std::fs::write(&path, KEEPALIVED).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("import-keepalived")
        .arg(&path)
        .output()
        .unwrap();
    assert!(output.status.success());
    let toml = String::from_utf8(output.stdout).unwrap();
    let notes = String::from_utf8(output.stderr).unwrap();
    let config = Config::parse(&toml, "imported.toml").unwrap_or_else(|e| panic!("{e}\n{toml}"));
    assert_eq!(config.services.len(), 2);
    assert_eq!(config.network.vip_owner, control::vip_owner::VipOwner::Vrrp);
    let web = &config.services[0];
    assert_eq!(
        (web.mode, web.scheduler),
        (ForwardingMode::Dr, SchedulerKind::Wrr)
    );
    let persistence = web.persistence.unwrap();
    assert_eq!(
        (persistence.timeout_ms, persistence.prefix_v4),
        (50_000, 24)
    );
    assert_eq!(web.backends.len(), 2);
    assert_eq!(web.backends[0].weight, 3);
    let check = &web.backends[0].health_checks[0];
    assert_eq!(check.kind, CheckKind::Tcp);
    // keepalived's `retry 3` is four tries.
    assert_eq!((check.retry, check.on_failure), (4, OnFailure::Inhibit));
    assert_eq!(check.delay_loop, std::time::Duration::from_secs(6));
    assert_eq!(check.delay_before_retry, std::time::Duration::from_secs(2));
    assert_eq!(check.warmup, std::time::Duration::from_secs(4));
    // Both checkers of the real server, MISC_CHECK with its command and timeout.
    assert_eq!(
        web.backends[0].health_checks[1].kind,
        CheckKind::Misc {
            command: "/usr/local/bin/check.sh 192.0.2.21".into(),
            timeout: std::time::Duration::from_secs(5)
        }
    );
    assert_eq!(
        web.backends[0].notify.up.as_deref(),
        Some("/usr/local/bin/up.sh 192.0.2.21")
    );
    assert_eq!(
        web.backends[0].notify.down.as_deref(),
        Some("/usr/local/bin/down.sh")
    );
    // The virtual server's quorum, hysteresis, sorry server and alpha.
    assert_eq!((web.quorum, web.hysteresis), (2, 1));
    let sorry = web.sorry_server.as_ref().unwrap();
    assert_eq!(
        (sorry.address, sorry.port),
        ("192.0.2.99".parse().unwrap(), 80)
    );
    assert!(web.backends.iter().all(|backend| backend.alpha));
    let http = &web.backends[1].health_checks[0];
    assert_eq!(
        http.kind,
        CheckKind::Http {
            path: "/healthz".into(),
            expected_status: 204
        }
    );
    assert_eq!((http.retry, http.on_failure), (3, OnFailure::Remove));
    let dns = &config.services[1];
    assert_eq!(
        (dns.mode, dns.scheduler, dns.key.protocol),
        (ForwardingMode::Nat, SchedulerKind::Wlc, 17)
    );
    assert_eq!((dns.backends[0].port, dns.backends[0].weight), (5353, 0));
    for expected in [
        "the file has VRRP instances: pass --vrrp-out FILE",
        "line 8: vrrp_instance VI_1: interface eth0 becomes sluice's kernel interface sl-wan",
        "notify_down's user and group are not carried over",
        "`misc_dynamic` in MISC_CHECK is not carried over",
        "url `digest` is not carried over",
        "lb_algo fo has no sluice equivalent",
        "virtual_server fwmark 7 is not carried over",
    ] {
        assert!(
            notes.contains(expected),
            "{expected:?} missing from:\n{notes}"
        );
    }
}

#[test]
fn a_master_and_a_backup_import_to_two_different_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let mut halves = Vec::new();
    for (state, priority) in [("MASTER", 150), ("BACKUP", 100)] {
        let path = dir.path().join(format!("{state}.conf"));
        let text = KEEPALIVED
            .replace(
                "state MASTER",
                &format!("state {state}\n    priority {priority}"),
            )
            .replace(
                "virtual_router_id 51",
                "virtual_router_id 51\n    virtual_ipaddress {\n        192.0.2.10\n    }",
            );
        std::fs::write(&path, text).unwrap();
        let vrrp = dir.path().join(format!("{state}-vrrp.conf"));
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("import-keepalived")
            .arg(&path)
            .arg("--vrrp-out")
            .arg(&vrrp)
            .args(["--socket", "/run/sluice-test.sock"])
            .output()
            .unwrap();
        assert!(output.status.success());
        let toml = String::from_utf8(output.stdout).unwrap();
        let config = Config::parse(&toml, "imported.toml").unwrap();
        assert_eq!(
            config.control.socket.as_deref(),
            Some("/run/sluice-test.sock")
        );
        let keepalived = std::fs::read_to_string(&vrrp).unwrap();
        assert!(
            keepalived.contains(&format!("state {state}")),
            "{keepalived}"
        );
        assert!(
            keepalived.contains(&format!("priority {priority}")),
            "{keepalived}"
        );
        assert!(keepalived.contains("interface sl-wan"), "{keepalived}");
        assert!(
            keepalived.contains("/run/sluice-test.sock 192.0.2.10"),
            "{keepalived}"
        );
        assert!(!keepalived.contains("virtual_server"), "{keepalived}");
        halves.push((toml, keepalived));
    }
    // The services are the same on both directors; the VRRP halves differ.
    assert_eq!(halves[0].0, halves[1].0);
    assert_ne!(halves[0].1, halves[1].1);
}

#[test]
fn unbalanced_braces_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.conf");
    std::fs::write(&path, "virtual_server 10.0.0.1 80 {\n lb_kind DR\n}\n}\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("import-keepalived")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("closes nothing"));
}

fn import(text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keepalived.conf");
    std::fs::write(&path, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("import-keepalived")
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_input_is_a_non_zero_exit_with_the_reason() {
    for (text, needle) in [
        (
            "virtual_server 10.0.0.1 80 {\n lb_kind DR\n".to_owned(),
            "line 1: this `{` is never closed",
        ),
        ("{".repeat(50_000), "nested deeper than 32"),
        (
            "virtual_server 10.0.0.1 80 {\n delay_loop 5s\n}\n".to_owned(),
            "line 2: delay_loop \"5s\" is not a number of seconds",
        ),
        (
            "virtual_server 10.0.0.1 80 {\n real_server 10.0.0.2 80 {\n  TCP_CHECK {\n   connect_timeout 1e30\n  }\n }\n}\n"
                .to_owned(),
            "connect_timeout",
        ),
        (
            "virtual_server 10.0.0.1 80 {\n real_server 10.0.0.2 80\n real_server 10.0.0.2 80\n}\n".to_owned(),
            "listed twice",
        ),
    ] {
        let (code, stdout, stderr) = import(&text);
        assert_eq!(code, Some(1), "{needle}: {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
}

#[test]
fn values_are_escaped_into_a_file_sluice_check_accepts() {
    let (code, stdout, stderr) = import(
        "virtual_server 10.0.0.1 80 {\n lb_kind FNAT\n real_server 10.0.0.2 8080 {\n  HTTP_GET {\n   url {\n    path /a\"b\\c\n   }\n  }\n }\n}\n",
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(r#"path = "/a\"b\\c""#), "{stdout}");
    assert!(stderr.contains("local_addresses"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, &stdout).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// Imports the keepalived file `main` (with `others` beside it, for `include`): (exit code, stdout, stderr, the
/// exit code and output of `sluice check` on stdout when the import succeeded).
fn import_and_check(
    main: &str,
    others: &[(&str, &str)],
) -> (Option<i32>, String, String, Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in others {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let path = dir.path().join("keepalived.conf");
    std::fs::write(&path, main).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("import-keepalived")
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let checked = output.status.success().then(|| {
        let converted = dir.path().join("sluice.toml");
        std::fs::write(&converted, &stdout).unwrap();
        let check = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["check", "--config"])
            .arg(&converted)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "sluice check refused the import: {}\n{stdout}",
            String::from_utf8_lossy(&check.stderr)
        );
        String::from_utf8_lossy(&check.stdout).into_owned()
    });
    (output.status.code(), stdout, stderr, checked)
}

fn virtual_server(body: &str) -> String {
    format!("virtual_server 10.0.0.1 80 {{\n lb_kind NAT\n{body}}}\n")
}

/// Each keepalived feature of issue 16 imports into a file `sluice check` accepts, or is refused with a non-zero
/// exit and a message saying what to do.
#[test]
fn each_keepalived_feature_imports_faithfully_or_is_refused_clearly() {
    // The default scheduler is keepalived's: wlc.
    let (code, stdout, stderr, checked) =
        import_and_check(&virtual_server(" real_server 10.1.0.2 8080\n"), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("scheduler = \"wlc\""), "{stdout}");
    assert!(checked.unwrap().contains("Nat Wlc: 1 backends"));

    // `retry N` is N + 1 tries.
    let (code, stdout, stderr, _) = import_and_check(
        &virtual_server(" real_server 10.1.0.2 8080 {\n  TCP_CHECK {\n   retry 2\n  }\n }\n"),
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("retry = 3"), "{stdout}");

    // One status in any of keepalived's spellings is carried over; several are refused.
    for spelling in ["204", "204-204"] {
        let (code, stdout, stderr, _) = import_and_check(
            &virtual_server(&format!(
                " real_server 10.1.0.2 8080 {{\n  HTTP_GET {{\n   url {{\n    path /\n    status_code {spelling}\n   }}\n  }}\n }}\n"
            )),
            &[],
        );
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stdout.contains("status = 204"), "{stdout}");
    }
    for (body, needle) in [
        (
            " real_server 10.1.0.2 8080 {\n  HTTP_GET {\n   url {\n    path /\n    status_code 200-299\n   }\n  }\n }\n",
            "line 7: status_code 200-299 accepts several statuses; sluice's HTTP check expects one",
        ),
        (
            " real_server 10.1.0.2 8080 {\n  HTTP_GET {\n   url {\n    path /a\n   }\n   url {\n    path /b\n   }\n  }\n }\n",
            "line 8: a second url in HTTP_GET; sluice's HTTP check asks one path",
        ),
    ] {
        let (code, stdout, stderr, _) = import_and_check(&virtual_server(body), &[]);
        assert_eq!(code, Some(1), "{needle}: {stdout}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }

    // Several checkers per real server: all of them, each must pass.
    let (code, stdout, stderr, _) = import_and_check(
        &virtual_server(
            " real_server 10.1.0.2 8080 {\n  TCP_CHECK {\n  }\n  HTTP_GET {\n   url {\n    path /up\n   }\n  }\n }\n",
        ),
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout.matches("[[service.backend.health_check]]").count(),
        2,
        "{stdout}"
    );
    let config = Config::parse(&stdout, "imported.toml").unwrap();
    assert_eq!(config.services[0].backends[0].health_checks.len(), 2);

    // IPv6 persistence granularity, as a prefix length or a mask.
    for granularity in ["64", "ffff:ffff:ffff:ffff::"] {
        let (code, stdout, stderr, _) = import_and_check(
            &format!(
                "virtual_server fd00::1 80 {{\n lb_kind NAT\n persistence_timeout 60\n persistence_granularity {granularity}\n real_server fd01::2 80\n}}\n"
            ),
            &[],
        );
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stdout.contains("persistence_netmask = 64"), "{stdout}");
    }
    let (code, _, stderr, _) = import_and_check(
        "virtual_server fd00::1 80 {\n persistence_timeout 60\n persistence_granularity 255.255.255.0\n}\n",
        &[],
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(
            "line 3: persistence_granularity 255.255.255.0 is not a netmask or prefix length"
        ),
        "{stderr}"
    );

    // `include`, relative to the including file, with a wildcard.
    let (code, stdout, stderr, checked) = import_and_check(
        "include conf.d/*.conf\n",
        &[
            ("conf.d/a.conf", &virtual_server(" real_server 10.1.0.2 8080\n")),
            (
                "conf.d/b.conf",
                "virtual_server 10.0.0.2 53 {\n protocol UDP\n lb_kind NAT\n real_server 10.1.0.3 53\n}\n",
            ),
            ("conf.d/ignored.txt", "not keepalived"),
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("vip = \"10.0.0.1\"") && stdout.contains("vip = \"10.0.0.2\""),
        "{stdout}"
    );
    assert!(checked.unwrap().contains("2 services"));
    let (code, _, stderr, _) = import_and_check("include missing.conf\n", &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("missing.conf"), "{stderr}");
    let (code, _, stderr, _) = import_and_check("include keepalived.conf\n", &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("includes nested deeper than 8"), "{stderr}");
}
