//! Property tests of the Maglev table: full, deterministic, order-independent and proportional to weight.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use balancer::maglev::{
    address_hash, flow_hash, MaglevError, MaglevTable, TableSize, MAX_TABLE_SIZE, MIN_TABLE_SIZE,
};
use balancer::service::{Backend, BackendId};
use packet::FlowKey;
use proptest::prelude::*;

const SIZES: [u32; 5] = [251, 257, 1009, 4093, 65_537];

fn address(raw: u32, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            (raw >> 16) as u16,
            raw as u16,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::from(raw))
    }
}

/// Backend sets with distinct (address, port), in arbitrary order, with the given weight strategy.
fn backend_set(weight: impl Strategy<Value = u32>) -> impl Strategy<Value = Vec<Backend>> {
    prop::collection::vec((any::<u32>(), any::<bool>(), 0u16..4, weight), 0..40).prop_map(|raw| {
        let mut seen = std::collections::HashSet::new();
        raw.into_iter()
            .filter(|(addr, v6, port, _)| seen.insert((*addr, *v6, *port)))
            .enumerate()
            .map(|(i, (addr, v6, port, weight))| Backend {
                id: BackendId(i as u32),
                addr: address(addr, v6),
                port,
                weight,
                mac: None,
            })
            .collect()
    })
}

fn check_table(backends: &[Backend], size: TableSize) -> Result<MaglevTable, TestCaseError> {
    let table =
        MaglevTable::build(backends, size).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let m = u128::from(size.get());
    let active: Vec<&Backend> = backends.iter().filter(|b| b.weight > 0).collect();
    if active.is_empty() {
        prop_assert!(!table.is_populated());
        prop_assert_eq!(table.lookup(12345), None);
        return Ok(table);
    }
    // Full: every slot owned by a backend of the list with non-zero weight.
    prop_assert_eq!(table.slots().len(), size.get() as usize);
    for index in table.slots() {
        prop_assert!(index < backends.len() && backends[index].weight > 0);
    }
    // Proportional: M w/W - 2 < c < (M + N) w/W + 1, with N the number of backends of non-zero weight.
    let total_weight: u128 = active.iter().map(|b| u128::from(b.weight)).sum();
    let n = active.len() as u128;
    for (b, &count) in backends.iter().zip(&table.slot_counts()) {
        let (c, w) = (u128::from(count), u128::from(b.weight));
        if w == 0 {
            prop_assert_eq!(count, 0);
            continue;
        }
        prop_assert!(
            c * total_weight + 2 * total_weight > m * w,
            "{:?} owns {} of {}, w {} W {}",
            b.id,
            c,
            m,
            w,
            total_weight
        );
        prop_assert!(
            c * total_weight < (m + n) * w + total_weight,
            "{:?} owns {} of {}, w {} W {}",
            b.id,
            c,
            m,
            w,
            total_weight
        );
    }
    Ok(table)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn full_deterministic_order_free_and_proportional(
        backends in backend_set(prop_oneof![Just(0u32), 1u32..20]),
        size_choice in 0..SIZES.len(),
        rotation in 0usize..40,
    ) {
        let size = TableSize::new(SIZES[size_choice]).unwrap();
        let table = check_table(&backends, size)?;
        prop_assert_eq!(&MaglevTable::build(&backends, size).unwrap(), &table);
        let mut shuffled = backends.clone();
        shuffled.reverse();
        if !shuffled.is_empty() {
            let by = rotation % shuffled.len();
            shuffled.rotate_left(by);
        }
        let rebuilt = check_table(&shuffled, size)?;
        prop_assert_eq!(rebuilt.digest(), table.digest());
        for hash in [0u64, 7, 1 << 40, u64::MAX] {
            let a = table.lookup(hash).map(|i| (backends[i].addr, backends[i].port));
            let b = rebuilt.lookup(hash).map(|i| (shuffled[i].addr, shuffled[i].port));
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn extreme_weights_stay_proportional(backends in backend_set(prop_oneof![Just(u32::MAX), 1u32..=u32::MAX])) {
        check_table(&backends, TableSize::new(1009).unwrap())?;
    }

    #[test]
    fn duplicates_are_a_typed_error(backends in backend_set(0u32..5), pick in any::<prop::sample::Index>(), weight in 0u32..5) {
        prop_assume!(!backends.is_empty());
        let mut with_duplicate = backends.clone();
        let original = &backends[pick.index(backends.len())];
        let duplicate = Backend { id: BackendId(999), weight, ..original.clone() };
        with_duplicate.insert(pick.index(with_duplicate.len() + 1), duplicate);
        let error = MaglevTable::build(&with_duplicate, TableSize::default()).unwrap_err();
        prop_assert_eq!(error, MaglevError::DuplicateBackend { addr: original.addr, port: original.port });
    }

    #[test]
    fn table_size_accepts_exactly_primes_in_range(size in prop_oneof![0u32..70_000, any::<u32>()]) {
        let is_prime = size >= 2 && (2..).take_while(|d: &u64| d * d <= u64::from(size)).all(|d| u64::from(size) % d != 0);
        match TableSize::new(size) {
            Ok(valid) => prop_assert!(valid.get() == size && is_prime && (MIN_TABLE_SIZE..=MAX_TABLE_SIZE).contains(&size)),
            Err(MaglevError::TooSmall(s)) => prop_assert!(s == size && size < MIN_TABLE_SIZE),
            Err(MaglevError::TooLarge(s)) => prop_assert!(s == size && size > MAX_TABLE_SIZE),
            Err(MaglevError::NotPrime(s)) => prop_assert!(s == size && !is_prime),
            Err(other) => prop_assert!(false, "unexpected {other}"),
        }
    }

    #[test]
    fn ipv4_hashes_like_its_mapped_form(src in any::<u32>(), dst in any::<u32>(), sport in any::<u16>(), dport in any::<u16>(), protocol in any::<u8>()) {
        let (s4, d4) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
        let v4 = FlowKey { src_addr: IpAddr::V4(s4), dst_addr: IpAddr::V4(d4), src_port: sport, dst_port: dport, protocol };
        let mapped = FlowKey { src_addr: IpAddr::V6(s4.to_ipv6_mapped()), dst_addr: IpAddr::V6(d4.to_ipv6_mapped()), ..v4 };
        prop_assert_eq!(flow_hash(&v4), flow_hash(&mapped));
        prop_assert_eq!(address_hash(v4.src_addr, v4.dst_addr, protocol), address_hash(mapped.src_addr, mapped.dst_addr, protocol));
        // Direction matters: the reverse flow is a different key.
        if src != dst || sport != dport {
            prop_assert_ne!(flow_hash(&v4), flow_hash(&v4.reversed()));
        }
    }
}
