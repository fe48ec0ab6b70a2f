//! keepalived's checker knobs in sluice's configuration: several checkers per backend, MISC_CHECK, warmup, alpha,
//! notify commands, quorum, hysteresis and the sorry server parse into what the control loop uses, and each mistake
//! is an error naming the line and the field.

use std::time::Duration;

use control::config::{CheckKind, Config, OnFailure};

const BASE: &str = r#"[[port]]
name = "a"
device = "net_ring0"
addresses = ["10.0.0.1/24", "fd00::1/64"]
"#;
const SERVICE: &str = "[[service]]\nvip = \"10.0.0.100\"\nport = 80\nmode = \"dr\"\n";

fn parse(rest: &str) -> Config {
    Config::parse(&format!("{BASE}{SERVICE}{rest}"), "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

#[track_caller]
fn assert_error(rest: &str, line: usize, needles: &[&str]) {
    let error = Config::parse(&format!("{BASE}{SERVICE}{rest}"), "test.toml")
        .unwrap_err()
        .to_string();
    assert!(error.starts_with(&format!("test.toml:{line}:")), "{error}");
    for needle in needles {
        assert!(error.contains(needle), "{error:?} lacks {needle:?}");
    }
}

#[test]
fn several_checkers_misc_warmup_alpha_and_notify_parse() {
    let config = parse(
        "alpha = true\n\
         [[service.backend]]\naddress = \"10.0.0.11\"\nnotify_up = \"/usr/local/bin/up web\"\n\
         notify_down = \"logger down\"\nnotify_timeout = 2.5\n\
         [[service.backend.health_check]]\ntype = \"tcp\"\nwarmup = 3\n\
         [[service.backend.health_check]]\ntype = \"misc\"\nmisc_path = \"/usr/local/bin/check 10.0.0.11\"\n\
         misc_timeout = 4\non_failure = \"inhibit\"\n\
         [[service.backend]]\naddress = \"10.0.0.12\"\nalpha = false\n",
    );
    let backend = &config.services[0].backends[0];
    assert_eq!(backend.health_checks.len(), 2);
    assert_eq!(backend.health_checks[0].kind, CheckKind::Tcp);
    assert_eq!(backend.health_checks[0].warmup, Duration::from_secs(3));
    assert_eq!(
        backend.health_checks[1].kind,
        CheckKind::Misc {
            command: "/usr/local/bin/check 10.0.0.11".into(),
            timeout: Duration::from_secs(4)
        }
    );
    assert_eq!(backend.health_checks[1].on_failure, OnFailure::Inhibit);
    assert!(backend.inhibit_on_failure());
    assert!(backend.alpha, "the service's alpha is the default");
    assert_eq!(backend.notify.up.as_deref(), Some("/usr/local/bin/up web"));
    assert_eq!(backend.notify.down.as_deref(), Some("logger down"));
    assert_eq!(backend.notify.timeout, Duration::from_millis(2500));
    assert!(
        !config.services[0].backends[1].alpha,
        "a backend's alpha overrides"
    );
    assert_eq!(config.services[0].quorum, 1);
    assert_eq!(config.services[0].hysteresis, 0);
}

#[test]
fn one_checker_table_still_parses_and_misc_timeout_defaults_to_delay_loop() {
    let config = parse(
        "[[service.backend]]\naddress = \"10.0.0.11\"\n[service.backend.health_check]\ntype = \"misc\"\n\
         misc_path = \"true\"\ndelay_loop = 7\n",
    );
    let checks = &config.services[0].backends[0].health_checks;
    assert_eq!(checks.len(), 1);
    assert_eq!(
        checks[0].kind,
        CheckKind::Misc {
            command: "true".into(),
            timeout: Duration::from_secs(7)
        }
    );
}

#[test]
fn quorum_hysteresis_and_the_sorry_server_parse() {
    let config = parse(
        "quorum = 3\nhysteresis = 1\nsorry_server = { address = \"10.0.0.30\", weight = 2 }\n\
         [[service.backend]]\naddress = \"10.0.0.11\"\nweight = 2\n[[service.backend]]\naddress = \"10.0.0.12\"\nweight = 2\n",
    );
    let service = &config.services[0];
    assert_eq!((service.quorum, service.hysteresis), (3, 1));
    let sorry = service.sorry_server.as_ref().unwrap();
    assert_eq!(sorry.address.to_string(), "10.0.0.30");
    assert_eq!((sorry.port, sorry.weight), (80, 2));
    assert_eq!(service.all_backends().count(), 3);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn an_unreachable_quorum_and_a_quorum_without_sorry_server_are_warned_about() {
    let config = parse("quorum = 5\n[[service.backend]]\naddress = \"10.0.0.11\"\nweight = 2\n");
    let warnings = config.warnings.join("\n");
    assert!(
        warnings.contains("the quorum can never be reached"),
        "{warnings}"
    );
    assert!(
        warnings.contains("quorum without a sorry_server"),
        "{warnings}"
    );
}

#[test]
fn mistakes_name_the_line_and_the_field() {
    let backend = "[[service.backend]]\naddress = \"10.0.0.11\"\n";
    // Lines: BASE is 4, SERVICE 4 more; the rest starts at line 9.
    assert_error("quorum = 0\n", 9, &["quorum 0", "1 and more"]);
    assert_error("quorum = -1\n", 9, &["service quorum", "allowed 0 to"]);
    assert_error(
        "quorum = 2\nhysteresis = 2\n",
        10,
        &["hysteresis 2 must be below the quorum 2"],
    );
    assert_error(
        "sorry_server = { address = \"fd00::30\" }\n",
        9,
        &["sorry_server address", "not of the family"],
    );
    assert_error(
        &format!("sorry_server = {{ address = \"10.0.0.11\" }}\n{backend}"),
        9,
        &["sorry_server 10.0.0.11:80: listed twice"],
    );
    assert_error(
        "sorry_server = { address = \"10.0.0.30\", notify_up = \"x\" }\n",
        9,
        &["sorry_server takes address, port, weight and mac only"],
    );
    assert_error(
        "sorry_server = { address = \"10.0.0.30\", port = 81 }\n",
        9,
        &["sorry_server port: 81 differs from the service port 80"],
    );
    assert_error(
        &format!("{backend}health_check = \"tcp\"\n"),
        11,
        &["health_check: a table", "several checkers"],
    );
    assert_error(
        &format!("{backend}[service.backend.health_check]\ntype = \"misc\"\n"),
        11,
        &["misc_path: a misc check needs a command line"],
    );
    assert_error(
        &format!("{backend}[service.backend.health_check]\ntype = \"tcp\"\nmisc_path = \"x\"\n"),
        11,
        &["misc_path and misc_timeout apply to type = \"misc\""],
    );
    assert_error(
        &format!("{backend}[service.backend.health_check]\ntype = \"misc\"\nmisc_path = \"x\"\nconnect_port = 80\n"),
        11,
        &["do not apply to a misc check"],
    );
    assert_error(
        &format!("{backend}[service.backend.health_check]\ntype = \"misc\"\nmisc_path = \"x\"\nmisc_timeout = 0\n"),
        11,
        &["misc_timeout = 0: allowed 0.01 to 3600 seconds"],
    );
    assert_error(
        &format!("{backend}[service.backend.health_check]\ntype = \"tcp\"\nwarmup = -1\n"),
        11,
        &["warmup = -1: allowed 0 to 3600 seconds"],
    );
    assert_error(
        &format!("{backend}[[service.backend.health_check]]\ntype = \"tcp\"\nbogus = 1\n"),
        11,
        &["health_check: unknown field `bogus`"],
    );
    assert_error(
        &format!("{backend}notify_up = \"  \"\n"),
        11,
        &["backend notify_up: a command line"],
    );
    assert_error(
        &format!("{backend}notify_timeout = 0\n"),
        11,
        &["backend notify_timeout = 0: allowed 0.01 to 3600 seconds"],
    );
    let many = "[[service.backend.health_check]]\ntype = \"tcp\"\n".repeat(17);
    assert_error(
        &format!("{backend}{many}"),
        11,
        &["at most 16 checkers per backend"],
    );
}
