//! `sluice check` refuses what `sluice run` refuses, in the same words, and `run` refuses it before the EAL
//! starts: a backend with no route, a metrics or sync address the host does not have, a control socket in a
//! missing directory, two workers on a device with one queue pair, a port VLAN outside 1 to 4094. (One backend in
//! two NAT services, the fourth file of issue 16, is no longer refused by either: see balancer's decision tests and
//! scripts/netns/operator.sh.)

use std::path::Path;
use std::process::Command;

mod common;
use common::{two_pcap_ports, write_empty_pcap};

/// A two-port configuration on pcap vdevs (one queue pair each) with `rest` appended.
fn config(dir: &Path, rest: &str) -> String {
    format!("{}{rest}\n", two_pcap_ports(dir))
}

/// Runs `sluice <verb> --config path`: (success, stderr).
fn sluice(verb: &str, path: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([verb, "--config"])
        .arg(path)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The line `sluice: ...` a failed command ends with.
fn refusal(stderr: &str) -> &str {
    stderr
        .lines()
        .rev()
        .find(|line| line.starts_with("sluice: "))
        .unwrap_or_else(|| panic!("no refusal in:\n{stderr}"))
}

/// `check` and `run` both refuse `text`, with the same message, which contains `expected`; `run` before a worker.
fn refused_alike(text: &str, expected: &str) {
    refused_alike_edited(text, |config| config, expected);
}

/// [`refused_alike`] for the configuration `edit` makes of the two-port one with `text` appended.
fn refused_alike_edited(text: &str, edit: impl Fn(String) -> String, expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    write_empty_pcap(&dir.path().join("empty.pcap"));
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, edit(config(dir.path(), text))).unwrap();
    let (checked, check_err) = sluice("check", &path);
    assert!(!checked, "check passed:\n{check_err}");
    let (ran, run_err) = sluice("run", &path);
    assert!(!ran, "run passed:\n{run_err}");
    assert_eq!(refusal(&check_err), refusal(&run_err));
    assert!(refusal(&check_err).contains(expected), "{check_err}");
    assert!(
        !run_err.contains("polling on CPU") && !run_err.contains("EAL"),
        "run got as far as the EAL:\n{run_err}"
    );
}

const SERVICE: &str = "[[service]]\nvip = \"10.0.0.100\"\nport = 80\nmode = \"dr\"\n";

#[test]
fn a_backend_with_no_route() {
    refused_alike(
        &format!("{SERVICE}[[service.backend]]\naddress = \"192.0.2.7\"\n"),
        "no route to backend 192.0.2.7:80",
    );
}

#[test]
fn a_metrics_address_the_host_does_not_have() {
    refused_alike(
        &format!(
            "{SERVICE}[[service.backend]]\naddress = \"10.1.0.11\"\n[control]\nmetrics = \"192.0.2.1:9100\"\n"
        ),
        "metrics listener 192.0.2.1:9100",
    );
}

#[test]
fn two_workers_on_a_single_queue_device() {
    refused_alike(
        &format!(
            "[workers]\ncores = [0, 1]\n{SERVICE}[[service.backend]]\naddress = \"10.1.0.11\"\n"
        ),
        "port client: device net_pcap0 has 1 queue pair and there are 2 workers",
    );
}

#[test]
fn a_control_socket_in_a_missing_directory() {
    refused_alike(
        &format!(
            "{SERVICE}[[service.backend]]\naddress = \"10.1.0.11\"\n[control]\nsocket = \"/nonexistent-sluice-dir/ctl.sock\"\n"
        ),
        "control socket /nonexistent-sluice-dir/ctl.sock: No such file or directory",
    );
}

#[test]
fn a_sync_address_the_host_does_not_have() {
    refused_alike(
        &format!(
            "{SERVICE}[[service.backend]]\naddress = \"10.1.0.11\"\n[sync]\nlisten = \"192.0.2.1:8472\"\n\
             peers = [\"192.0.2.2:8472\"]\nkey = \"00112233445566778899aabbccddeeff\"\n"
        ),
        "sync: listen 192.0.2.1:8472",
    );
}

#[test]
fn a_port_vlan_outside_1_to_4094() {
    for vlan in [0, 4095] {
        refused_alike_edited(
            &format!("{SERVICE}[[service.backend]]\naddress = \"10.1.0.11\"\n"),
            |config| {
                config.replace(
                    "addresses = [\"10.0.0.1/24\"]\n",
                    &format!("addresses = [\"10.0.0.1/24\"]\nvlan = {vlan}\n"),
                )
            },
            &format!("port vlan: {vlan} is not a VLAN id a port can be on"),
        );
    }
}
