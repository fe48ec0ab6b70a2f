//! Client-address persistence through the public interface: a worked 300 s timeout, the capacity bound and the
//! budgeted expiry.

use std::net::{IpAddr, Ipv4Addr};

use balancer::persistence::{PersistenceFull, PersistenceTable};
use balancer::service::{BackendId, ServiceKey};

const TIMEOUT_MS: u64 = 300_000;

fn web() -> ServiceKey {
    ServiceKey {
        vip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
        port: 443,
        protocol: 6,
    }
}

fn client(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, last))
}

#[test]
fn a_client_keeps_its_backend_while_it_returns_within_the_timeout() {
    let mut table = PersistenceTable::new(16);
    table
        .record(client(7), web(), BackendId(3), TIMEOUT_MS, 0)
        .unwrap();
    // New connections at 100 s and 350 s refresh the binding (350 s is past the first expiry but the refresh at
    // 100 s moved it to 400 s).
    assert_eq!(table.lookup(client(7), web(), 100_000), Some(BackendId(3)));
    table
        .record(
            client(7),
            web(),
            BackendId(3),
            100_000 + TIMEOUT_MS,
            100_000,
        )
        .unwrap();
    assert_eq!(table.lookup(client(7), web(), 350_000), Some(BackendId(3)));
    // Silent for the whole timeout: the binding is gone and the client may be scheduled elsewhere.
    assert_eq!(table.lookup(client(7), web(), 400_000), None);
    table
        .record(
            client(7),
            web(),
            BackendId(5),
            400_000 + TIMEOUT_MS,
            400_000,
        )
        .unwrap();
    assert_eq!(table.lookup(client(7), web(), 400_001), Some(BackendId(5)));
    // Another service of the same client is independent.
    let other = ServiceKey { port: 80, ..web() };
    assert_eq!(table.lookup(client(7), other, 400_001), None);
}

#[test]
fn a_full_table_refuses_until_entries_expire() {
    let mut table = PersistenceTable::new(4);
    for last in 0..4 {
        table
            .record(client(last), web(), BackendId(1), 1_000, 0)
            .unwrap();
    }
    assert_eq!(
        table.record(client(9), web(), BackendId(1), 1_000, 10),
        Err(PersistenceFull)
    );
    // Updating an existing binding needs no room.
    table
        .record(client(2), web(), BackendId(2), 2_000, 10)
        .unwrap();
    assert_eq!(table.len(), 4);
    // Once entries have expired, recording reclaims one without an explicit sweep.
    table
        .record(client(9), web(), BackendId(1), 5_000, 1_500)
        .unwrap();
    assert!(table.len() <= table.capacity());
    assert_eq!(table.lookup(client(9), web(), 1_500), Some(BackendId(1)));
    assert_eq!(table.lookup(client(2), web(), 1_500), Some(BackendId(2)));
}

#[test]
fn expiry_examines_at_most_its_budget() {
    let mut table = PersistenceTable::new(64);
    for last in 0..64 {
        table
            .record(client(last), web(), BackendId(0), 10, 0)
            .unwrap();
    }
    let mut sweeps = 0;
    let mut removed = 0;
    while removed < 64 {
        let now = table.expire(11, 5);
        assert!(now <= 5);
        removed += now;
        sweeps += 1;
    }
    // 64 slots at 5 per sweep: 13 sweeps, no fewer.
    assert_eq!(sweeps, 13);
    assert!(table.is_empty());
    // Nothing live is ever removed.
    table
        .record(client(1), web(), BackendId(0), 100, 20)
        .unwrap();
    assert_eq!(table.expire(50, 64), 0);
    assert_eq!(table.lookup(client(1), web(), 50), Some(BackendId(0)));
}
