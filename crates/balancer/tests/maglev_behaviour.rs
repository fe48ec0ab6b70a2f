//! Balance, disruption and weighting of the Maglev table on realistic backend sets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use balancer::maglev::{backend_identity, BackendIdentity, MaglevTable, TableSize};
use balancer::service::{Backend, BackendId};

fn backend(i: u32, weight: u32) -> Backend {
    Backend {
        id: BackendId(i),
        addr: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
        port: 8080,
        weight,
        mac: None,
    }
}

fn backends(n: u32, weight: u32) -> Vec<Backend> {
    (0..n).map(|i| backend(i, weight)).collect()
}

/// Owner identity of every slot, to compare tables built from different backend lists.
fn owners(table: &MaglevTable, backends: &[Backend]) -> Vec<BackendIdentity> {
    table
        .slots()
        .map(|index| backend_identity(backends[index].addr, backends[index].port))
        .collect()
}

fn moved(before: &[BackendIdentity], after: &[BackendIdentity]) -> usize {
    before.iter().zip(after).filter(|(a, b)| a != b).count()
}

#[test]
fn equal_weights_give_floor_or_ceil_slots() {
    for (m, n) in [
        (65_537u32, 1u32),
        (65_537, 7),
        (65_537, 100),
        (65_537, 1000),
        (655_373, 1000),
        (251, 250),
    ] {
        let list = backends(n, 3);
        let table = MaglevTable::build(&list, TableSize::new(m).unwrap()).unwrap();
        let (floor, ceil) = (m / n, m.div_ceil(n));
        for (i, &count) in table.slot_counts().iter().enumerate() {
            assert!(
                count == floor || count == ceil,
                "M={m} N={n}: backend {i} owns {count}"
            );
        }
    }
}

#[test]
fn removing_one_of_100_moves_under_2_percent_and_adding_it_back_restores() {
    let size = TableSize::default();
    let all = backends(100, 1);
    let full = MaglevTable::build(&all, size).unwrap();
    let full_owners = owners(&full, &all);
    for removed in [0usize, 37, 99] {
        let mut fewer = all.clone();
        let gone = fewer.remove(removed);
        let reduced = MaglevTable::build(&fewer, size).unwrap();
        let reduced_owners = owners(&reduced, &fewer);
        // The removed backend's own slots must move; count only the others, which ideally stay.
        let gone_identity = backend_identity(gone.addr, gone.port);
        let disrupted = full_owners
            .iter()
            .zip(&reduced_owners)
            .filter(|(before, after)| **before != gone_identity && before != after)
            .count();
        let total = moved(&full_owners, &reduced_owners);
        let fraction = total as f64 / f64::from(size.get());
        eprintln!("removed backend {removed}: {total} slots moved ({fraction:.4}), {disrupted} not its own");
        assert!(
            fraction < 0.02,
            "removing backend {removed} moved {total} slots ({fraction:.4})"
        );
        assert!(disrupted < total, "{disrupted} of {total}");

        let mut restored_list = fewer.clone();
        restored_list.insert(removed / 2, gone);
        let restored = MaglevTable::build(&restored_list, size).unwrap();
        assert_eq!(owners(&restored, &restored_list), full_owners);
        assert_eq!(restored.digest(), full.digest());
    }
}

#[test]
fn draining_equals_removing() {
    let size = TableSize::default();
    let mut list = backends(50, 2);
    let mut without = list.clone();
    without.remove(10);
    list[10].weight = 0;
    let drained = MaglevTable::build(&list, size).unwrap();
    let removed = MaglevTable::build(&without, size).unwrap();
    assert_eq!(drained.slot_counts()[10], 0);
    assert_eq!(owners(&drained, &list), owners(&removed, &without));
}

#[test]
fn changing_one_weight_moves_slots_mostly_to_or_from_that_backend() {
    let size = TableSize::default();
    let before_list = backends(20, 10);
    let before = owners(
        &MaglevTable::build(&before_list, size).unwrap(),
        &before_list,
    );
    for new_weight in [5u32, 20] {
        let mut after_list = before_list.clone();
        after_list[7].weight = new_weight;
        let after = owners(&MaglevTable::build(&after_list, size).unwrap(), &after_list);
        let changed = backend_identity(after_list[7].addr, after_list[7].port);
        let total = moved(&before, &after);
        let involving_changed = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b != a && (**b == changed || **a == changed))
            .count();
        let elsewhere = total - involving_changed;
        eprintln!("weight 10 -> {new_weight}: {involving_changed} slots to/from it, {elsewhere} between others");
        // Halving or doubling one of 20 weights moves about 1/40 to 1/21 of the table to or from that backend.
        assert!(
            involving_changed > (size.get() / 50) as usize,
            "{involving_changed}"
        );
        assert!(
            elsewhere * 4 < involving_changed,
            "weight {new_weight}: {elsewhere} others vs {involving_changed}"
        );
    }
}

#[test]
fn weight_two_owns_twice_weight_one() {
    let size = TableSize::default();
    let list: Vec<Backend> = (0..30)
        .map(|i| backend(i, if i % 3 == 0 { 2 } else { 1 }))
        .collect();
    let counts = MaglevTable::build(&list, size).unwrap().slot_counts();
    let total_weight: u32 = list.iter().map(|b| b.weight).sum();
    for (b, &count) in list.iter().zip(&counts) {
        let ideal = f64::from(size.get()) * f64::from(b.weight) / f64::from(total_weight);
        let error = (f64::from(count) - ideal).abs() / ideal;
        assert!(
            error < 0.01,
            "backend {:?} weight {} owns {count}, ideal {ideal:.1}",
            b.id,
            b.weight
        );
    }
    let heavy: u32 = counts.iter().step_by(3).sum();
    let light: u32 = counts.iter().sum::<u32>() - heavy;
    // 10 backends of weight 2 against 20 of weight 1: equal halves.
    assert!(
        heavy.abs_diff(light) < size.get() / 100,
        "{heavy} vs {light}"
    );
}

#[test]
fn zero_weight_owns_nothing_and_all_zero_is_empty() {
    let size = TableSize::default();
    let mut list = backends(5, 4);
    list[2].weight = 0;
    let table = MaglevTable::build(&list, size).unwrap();
    assert_eq!(table.slot_counts()[2], 0);
    assert!(table.slots().all(|index| index != 2));

    let drained = backends(5, 0);
    let empty = MaglevTable::build(&drained, size).unwrap();
    assert!(!empty.is_populated());
    assert_eq!(empty.slots().len(), 0);
    for hash in [0u64, 1, 65_537, u64::MAX] {
        assert_eq!(empty.lookup(hash), None);
        assert_eq!(empty.lookup_id(hash), None);
    }
    let none = MaglevTable::build(&[], size).unwrap();
    assert_eq!(none.lookup(42), None);
    assert_eq!(none.backend_count(), 0);
}

#[test]
fn lookup_is_slot_hash_mod_m_and_indexes_the_given_list() {
    let size = TableSize::default();
    let list = backends(10, 1);
    let table = MaglevTable::build(&list, size).unwrap();
    let slots: Vec<usize> = table.slots().collect();
    for hash in [0u64, 1, 65_536, 65_537, 123_456_789, u64::MAX] {
        let index = table.lookup(hash).unwrap();
        assert_eq!(index, slots[(hash % 65_537) as usize]);
        assert_eq!(table.lookup_id(hash), Some(list[index].id));
    }
}

#[test]
fn shuffled_list_gives_the_same_table() {
    let size = TableSize::default();
    let list: Vec<Backend> = (0..64)
        .map(|i| Backend {
            id: BackendId(i),
            addr: if i % 2 == 0 {
                IpAddr::V4(Ipv4Addr::from(0xc000_0200 + i))
            } else {
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16))
            },
            port: 80 + (i % 3) as u16,
            weight: 1 + i % 4,
            mac: None,
        })
        .collect();
    let table = MaglevTable::build(&list, size).unwrap();
    let mut reversed = list.clone();
    reversed.reverse();
    // Different ids for the same addresses must not matter either.
    let mut renumbered = list.clone();
    renumbered.rotate_left(17);
    for (i, b) in renumbered.iter_mut().enumerate() {
        b.id = BackendId(1000 + i as u32);
    }
    for other in [reversed, renumbered] {
        let rebuilt = MaglevTable::build(&other, size).unwrap();
        assert_eq!(rebuilt.digest(), table.digest());
        assert_eq!(owners(&rebuilt, &other), owners(&table, &list));
    }
}
