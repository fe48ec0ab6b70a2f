//! Worked examples and properties of the IPVS schedulers and the load table, through the public interface only.

use std::net::IpAddr;

use balancer::scheduler::{IpvsScheduler, LoadTable, SchedulerError};
use balancer::service::{Backend, BackendId, SchedulerKind};
use packet::FlowKey;
use proptest::prelude::*;

const TCP: u8 = 6;

fn backends(weights: &[u32]) -> Vec<Backend> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| Backend {
            id: BackendId(i as u32),
            addr: IpAddr::V4([10, 2, 0, 1 + i as u8].into()),
            port: 8080,
            weight,
            mac: None,
        })
        .collect()
}

fn flow(src: u32, dst: u32) -> FlowKey {
    FlowKey {
        src_addr: IpAddr::V4(src.into()),
        dst_addr: IpAddr::V4(dst.into()),
        src_port: 40000,
        dst_port: 80,
        protocol: TCP,
    }
}

fn open(load: &mut LoadTable, id: u32, active: u32, inactive: u32) {
    for _ in 0..active {
        load.connection_opened(BackendId(id), true);
    }
    for _ in 0..inactive {
        load.connection_opened(BackendId(id), false);
    }
}

fn letters(kind: SchedulerKind, weights: &[u32], picks: usize) -> String {
    let backends = backends(weights);
    let load = LoadTable::new(8);
    let mut scheduler = IpvsScheduler::new(kind, &backends).unwrap();
    (0..picks)
        .map(|_| {
            scheduler
                .pick(&backends, &load, &flow(1, 2), 0)
                .map_or('-', |i| (b'a' + i as u8) as char)
        })
        .collect()
}

fn pick_once(kind: SchedulerKind, backends: &[Backend], load: &LoadTable) -> Option<usize> {
    IpvsScheduler::new(kind, backends)
        .unwrap()
        .pick(backends, load, &flow(1, 2), 0)
}

#[test]
fn wrr_with_a_drained_backend_in_the_middle() {
    // Weights 4, 0, 2: gcd 2, maximum 4. Current weight 4 admits a; 2 admits a and c; b never.
    assert_eq!(letters(SchedulerKind::Wrr, &[4, 0, 2], 6), "aacaac");
    // Weights 4, 3, 2: the IPVS interleaving.
    assert_eq!(letters(SchedulerKind::Wrr, &[4, 3, 2], 9), "aababcabc");
    // Equal weights behave as rr.
    assert_eq!(letters(SchedulerKind::Wrr, &[5, 5, 5], 6), "abcabc");
}

#[test]
fn wlc_worked_loads() {
    let backends = backends(&[3, 1]);
    let mut load = LoadTable::new(4);
    // a: 2 active = 512 over weight 3 = 170.7; b: 1 active = 256 over weight 1 = 256: a.
    open(&mut load, 0, 2, 0);
    open(&mut load, 1, 1, 0);
    assert_eq!(pick_once(SchedulerKind::Wlc, &backends, &load), Some(0));
    // a: 3 active = 768 / 3 = 256 ties with b: the first wins, as IPVS (strictly less replaces).
    open(&mut load, 0, 1, 0);
    assert_eq!(pick_once(SchedulerKind::Wlc, &backends, &load), Some(0));
    // One inactive connection more on a (769 / 3 > 256): b.
    open(&mut load, 0, 0, 1);
    assert_eq!(pick_once(SchedulerKind::Wlc, &backends, &load), Some(1));
    // lc ignores weights: b's 256 is below a's 769.
    assert_eq!(pick_once(SchedulerKind::Lc, &backends, &load), Some(1));
}

#[test]
fn sed_and_nq_differ_on_an_idle_small_server() {
    // a: weight 1, idle. b: weight 10, one active connection.
    let backends = backends(&[1, 10]);
    let mut load = LoadTable::new(4);
    open(&mut load, 1, 1, 0);
    // sed: (0 + 1) / 1 = 1 against (1 + 1) / 10 = 0.2: the big busy server.
    assert_eq!(pick_once(SchedulerKind::Sed, &backends, &load), Some(1));
    // nq: an idle server is taken at once, whatever its weight.
    assert_eq!(pick_once(SchedulerKind::Nq, &backends, &load), Some(0));
    // Once a is busy too, nq falls back to sed's choice.
    open(&mut load, 0, 1, 0);
    assert_eq!(pick_once(SchedulerKind::Nq, &backends, &load), Some(1));
    // Inactive connections do not count for sed/nq: a stays "idle" with inactive ones only.
    let mut inactive_only = LoadTable::new(4);
    open(&mut inactive_only, 0, 0, 50);
    open(&mut inactive_only, 1, 1, 0);
    assert_eq!(
        pick_once(SchedulerKind::Nq, &backends, &inactive_only),
        Some(0)
    );
}

#[test]
fn dh_and_sh_refuse_when_everything_is_drained() {
    let backends = backends(&[0, 0, 0]);
    let load = LoadTable::new(4);
    for kind in [SchedulerKind::Dh, SchedulerKind::Sh] {
        let mut scheduler = IpvsScheduler::new(kind, &backends).unwrap();
        for host in 0..64 {
            assert_eq!(scheduler.pick(&backends, &load, &flow(host, host), 0), None);
        }
    }
}

#[test]
fn sh_keeps_clients_of_the_survivors_when_one_is_drained() {
    let mut servers = backends(&[1, 1, 1]);
    let load = LoadTable::new(4);
    let mut sh = IpvsScheduler::new(SchedulerKind::Sh, &servers).unwrap();
    let clients: Vec<FlowKey> = (0..300u32).map(|i| flow(0xc0a8_0000 + i * 7, 1)).collect();
    let before: Vec<usize> = clients
        .iter()
        .map(|f| sh.pick(&servers, &load, f, 0).unwrap())
        .collect();
    // Drain b without rebuilding: only b's clients move, and never to b.
    servers[1].weight = 0;
    for (f, &was) in clients.iter().zip(&before) {
        let now = sh.pick(&servers, &load, f, 0).unwrap();
        assert_ne!(now, 1);
        if was != 1 {
            assert_eq!(now, was);
        }
    }
}

#[test]
fn every_kind_survives_a_shorter_backend_list_than_it_was_built_for() {
    let built = backends(&[3, 2, 1, 4]);
    let shorter = backends(&[1]);
    let mut load = LoadTable::new(8);
    open(&mut load, 0, 3, 1);
    for kind in [
        SchedulerKind::Rr,
        SchedulerKind::Wrr,
        SchedulerKind::Lc,
        SchedulerKind::Wlc,
        SchedulerKind::Sed,
        SchedulerKind::Nq,
        SchedulerKind::Lblc,
        SchedulerKind::Lblcr,
        SchedulerKind::Dh,
        SchedulerKind::Sh,
    ] {
        let mut scheduler = IpvsScheduler::new(kind, &built).unwrap();
        for host in 0..32 {
            let picked = scheduler.pick(&shorter, &load, &flow(host, host ^ 0x5555), host.into());
            assert!(picked.is_none_or(|i| i < shorter.len()), "{kind:?}");
        }
        assert_eq!(scheduler.pick(&[], &load, &flow(1, 2), 0), None, "{kind:?}");
    }
}

#[test]
fn mh_is_refused_with_a_typed_error() {
    let err = IpvsScheduler::new(SchedulerKind::Mh, &backends(&[1, 1])).unwrap_err();
    assert_eq!(err, SchedulerError::Maglev);
    assert!(err.to_string().contains("maglev"));
}

#[test]
fn load_table_transitions_and_out_of_range_ids() {
    let mut load = LoadTable::new(2);
    load.connection_opened(BackendId(1), false);
    assert_eq!(
        (load.active(BackendId(1)), load.inactive(BackendId(1))),
        (0, 1)
    );
    load.became_active(BackendId(1));
    assert_eq!(
        (load.active(BackendId(1)), load.inactive(BackendId(1))),
        (1, 0)
    );
    load.became_inactive(BackendId(1));
    load.connection_closed(BackendId(1), false);
    assert_eq!(
        (load.active(BackendId(1)), load.inactive(BackendId(1))),
        (0, 0)
    );
    // Closing more than was opened stays at zero rather than wrapping.
    load.connection_closed(BackendId(1), true);
    assert_eq!(load.active(BackendId(1)), 0);
    // Ids beyond the capacity are ignored and read as zero.
    load.connection_opened(BackendId(2), true);
    load.became_active(BackendId(u32::MAX));
    assert_eq!(load.active(BackendId(2)), 0);
    assert_eq!(load.inactive(BackendId(u32::MAX)), 0);
}

proptest! {
    /// wlc picks an available backend whose overhead per weight is minimal.
    #[test]
    fn wlc_picks_a_minimum_per_weight(
        servers in proptest::collection::vec((0u32..6, 0u32..12, 0u32..12), 1..8),
    ) {
        let weights: Vec<u32> = servers.iter().map(|s| s.0).collect();
        let backends = backends(&weights);
        let mut load = LoadTable::new(8);
        for (id, &(_, active, inactive)) in servers.iter().enumerate() {
            open(&mut load, id as u32, active, inactive);
        }
        let picked = pick_once(SchedulerKind::Wlc, &backends, &load);
        let overhead = |b: &Backend| u128::from(load.active(b.id)) * 256 + u128::from(load.inactive(b.id));
        match picked {
            None => prop_assert!(weights.iter().all(|&w| w == 0)),
            Some(i) => {
                let chosen = &backends[i];
                prop_assert!(chosen.weight > 0);
                for other in backends.iter().filter(|b| b.weight > 0) {
                    prop_assert!(overhead(chosen) * u128::from(other.weight)
                        <= overhead(other) * u128::from(chosen.weight));
                }
            }
        }
    }

    /// LoadTable counts match a plain model through any sequence of events.
    #[test]
    fn load_table_matches_a_model(events in proptest::collection::vec((0u32..6, 0u8..4, any::<bool>()), 0..200)) {
        let mut load = LoadTable::new(4);
        let mut model = [(0i64, 0i64); 6];
        for (id, event, active) in events {
            let m = &mut model[id as usize];
            match event {
                0 => { load.connection_opened(BackendId(id), active); if active { m.0 += 1 } else { m.1 += 1 } }
                1 => { load.connection_closed(BackendId(id), active); if active { m.0 = (m.0 - 1).max(0) } else { m.1 = (m.1 - 1).max(0) } }
                2 => { load.became_active(BackendId(id)); m.1 = (m.1 - 1).max(0); m.0 += 1 }
                _ => { load.became_inactive(BackendId(id)); m.0 = (m.0 - 1).max(0); m.1 += 1 }
            }
        }
        for id in 0..6u32 {
            let expected = if id < 4 { model[id as usize] } else { (0, 0) };
            prop_assert_eq!(i64::from(load.active(BackendId(id))), expected.0);
            prop_assert_eq!(i64::from(load.inactive(BackendId(id))), expected.1);
        }
    }
}
