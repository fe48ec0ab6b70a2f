//! Golden vectors of the cross-node Maglev contract: hash function, seeds, byte layouts and population. Any
//! change that breaks one of these moves flows between balancer nodes running different versions.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use balancer::maglev::{
    address_hash, backend_identity, flow_hash, permutation, MaglevTable, TableSize, FLOW_SEED,
    OFFSET_SEED, SKIP_SEED,
};
use balancer::service::{Backend, BackendId};
use packet::{ip_protocol, FlowKey};

fn golden_backends() -> Vec<Backend> {
    let v4 = |last: u8, port: u16, weight: u32, id: u32| Backend {
        id: BackendId(id),
        addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)),
        port,
        weight,
        mac: None,
    };
    vec![
        v4(1, 80, 1, 1),
        v4(2, 80, 1, 2),
        v4(3, 80, 2, 3),
        v4(4, 80, 0, 4),
        v4(5, 8080, 3, 5),
        Backend {
            id: BackendId(6),
            addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            port: 443,
            weight: 1,
            mac: None,
        },
    ]
}

fn tcp_v4() -> FlowKey {
    FlowKey {
        src_addr: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
        dst_addr: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)),
        src_port: 51_000,
        dst_port: 80,
        protocol: ip_protocol::TCP,
    }
}

fn udp_v6() -> FlowKey {
    FlowKey {
        src_addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x99)),
        dst_addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10)),
        src_port: 40_000,
        dst_port: 53,
        protocol: ip_protocol::UDP,
    }
}

#[test]
fn seeds_are_pinned() {
    assert_eq!(OFFSET_SEED, 0x736c_7569_6365_6f66);
    assert_eq!(SKIP_SEED, 0x736c_7569_6365_736b);
    assert_eq!(FLOW_SEED, 0x736c_7569_6365_666c);
}

#[test]
fn hash_is_published_xxh64() {
    // Reference vectors from the xxHash specification's test suite.
    assert_eq!(xxhash_rust::xxh64::xxh64(b"", 0), 0xef46_db37_51d8_e999);
}

#[test]
fn flow_hash_golden() {
    assert_eq!(flow_hash(&tcp_v4()), GOLDEN_TCP_V4);
    assert_eq!(flow_hash(&udp_v6()), GOLDEN_UDP_V6);
    let key = tcp_v4();
    assert_eq!(
        address_hash(key.src_addr, key.dst_addr, key.protocol),
        GOLDEN_ADDRESS_V4
    );
    // The layout, spelled out: the flow hash is XXH64 of these 37 bytes.
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 51, 100, 7]);
    bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 10]);
    bytes.extend_from_slice(&51_000u16.to_be_bytes());
    bytes.extend_from_slice(&80u16.to_be_bytes());
    bytes.push(6);
    assert_eq!(xxhash_rust::xxh64::xxh64(&bytes, FLOW_SEED), GOLDEN_TCP_V4);
    bytes.truncate(32);
    bytes.push(6);
    assert_eq!(
        xxhash_rust::xxh64::xxh64(&bytes, FLOW_SEED),
        GOLDEN_ADDRESS_V4
    );
}

#[test]
fn permutation_golden() {
    let identity = backend_identity(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 80);
    assert_eq!(
        permutation(&identity, TableSize::default()),
        GOLDEN_PERMUTATION_65537
    );
    assert_eq!(
        permutation(&identity, TableSize::new(1_000_003).unwrap()),
        GOLDEN_PERMUTATION_1000003
    );
}

#[test]
fn table_golden() {
    let backends = golden_backends();
    let table = MaglevTable::build(&backends, TableSize::default()).unwrap();
    assert_eq!(table.digest(), GOLDEN_DIGEST_65537);
    assert_eq!(table.slot_counts(), GOLDEN_COUNTS_65537);
    let small = MaglevTable::build(&backends, TableSize::new(251).unwrap()).unwrap();
    let first: Vec<u32> = small
        .slots()
        .take(24)
        .map(|index| backends[index].id.0)
        .collect();
    assert_eq!(first, GOLDEN_FIRST_SLOTS_251);
    assert_eq!(
        table.lookup_id(flow_hash(&tcp_v4())),
        Some(BackendId(GOLDEN_TCP_V4_BACKEND))
    );
}

const CHILD_ENV: &str = "SLUICE_MAGLEV_DIGEST_CHILD";

#[test]
fn same_table_in_a_child_process() {
    let table = MaglevTable::build(&golden_backends(), TableSize::new(655_373).unwrap()).unwrap();
    let line = format!("maglev-digest={:#018x}", table.digest());
    if std::env::var_os(CHILD_ENV).is_some() {
        println!("{line}");
        return;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let output = Command::new(exe)
        .args([
            "--exact",
            "same_table_in_a_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .expect("run the test binary as a child");
    assert!(
        output.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    // libtest may print the test name on the same line, before the child's output.
    let child_line = stdout
        .lines()
        .find_map(|l| l.find("maglev-digest=").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("child printed no digest: {stdout}"));
    assert_eq!(child_line.trim_end(), line);
}

// Values computed once by this implementation and pinned; they must never change.
const GOLDEN_TCP_V4: u64 = 0x489c_44f1_6c03_80eb;
const GOLDEN_UDP_V6: u64 = 0x620d_5b65_5e21_313a;
const GOLDEN_ADDRESS_V4: u64 = 0x7329_a56f_dff4_2c37;
const GOLDEN_PERMUTATION_65537: (u32, u32) = (64_821, 20_653);
const GOLDEN_PERMUTATION_1000003: (u32, u32) = (344_498, 678_289);
const GOLDEN_DIGEST_65537: u64 = 0xca69_377f_974a_ca0e;
// Weights 1, 1, 2, 0, 3, 1 over 65537 slots: exactly proportional, the spare slot to the heaviest.
const GOLDEN_COUNTS_65537: [u32; 6] = [8192, 8192, 16_384, 0, 24_577, 8192];
const GOLDEN_FIRST_SLOTS_251: [u32; 24] = [
    1, 2, 5, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 3, 6, 6, 3, 5, 1, 5, 5, 5, 2,
];
const GOLDEN_TCP_V4_BACKEND: u32 = 3;
