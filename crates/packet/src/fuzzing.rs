//! The body of the fuzz target, shared with the test suite's fuzz smoke run: parse arbitrary bytes and, when they
//! parse, apply every rewrite and answer to them. Nothing here may panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{answer, parse_frame, rewrite, tunnel, FrameLayout, L3};

/// Exercises the parser and every rewrite on `data`, and on a copy whose IPv4 header checksum is made valid (so
/// that random inputs reach past the checksum check); returns whether either parsed.
pub fn exercise(data: &[u8]) -> bool {
    let parsed = exercise_one(data);
    match with_valid_ipv4_checksum(data) {
        Some(fixed) => exercise_one(&fixed) || parsed,
        None => parsed,
    }
}

/// `data` with the IPv4 header checksum recomputed, when it looks like untagged IPv4 with a whole header.
fn with_valid_ipv4_checksum(data: &[u8]) -> Option<Vec<u8>> {
    if data.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let header_len = usize::from(data.get(14)? & 0x0f) * 4;
    if header_len < 20 || data.len() < 14 + header_len {
        return None;
    }
    let mut fixed = data.to_vec();
    fixed[24..26].fill(0);
    let sum = crate::checksum::finish(crate::checksum::sum(&fixed[14..14 + header_len]));
    fixed[24..26].copy_from_slice(&sum.to_be_bytes());
    Some(fixed)
}

fn exercise_one(data: &[u8]) -> bool {
    let Ok(layout) = parse_frame(data) else {
        return false;
    };
    // Addresses and ports drawn from the input, of the frame's family and of the other one.
    let seed = data
        .iter()
        .fold(0u64, |acc, &b| acc.rotate_left(5) ^ u64::from(b));
    let v4 = IpAddr::V4(Ipv4Addr::from(seed as u32));
    let v6 = IpAddr::V6(Ipv6Addr::from(u128::from(seed) << 64 | u128::from(seed)));
    let port = (seed >> 32) as u16;
    let mac = [2, 0, 0, 0, 0, seed as u8];
    for addr in [v4, v6] {
        run(data, &layout, |frame| {
            rewrite::rewrite_destination(frame, &layout, &crate::WireAddr::from(addr), port).is_ok()
        });
        run(data, &layout, |frame| {
            rewrite::rewrite_source(frame, &layout, &crate::WireAddr::from(addr), port).is_ok()
        });
        run(data, &layout, |frame| {
            rewrite::rewrite_icmp_error_destination(frame, &layout, addr, addr, port).is_ok()
        });
        run(data, &layout, |frame| {
            rewrite::rewrite_icmp_error_source(frame, &layout, addr, addr, port).is_ok()
        });
        let outer = if addr.is_ipv4() { 20 } else { 40 };
        let mut room = vec![0u8; outer + data.len()];
        room[outer..].copy_from_slice(data);
        let _ = tunnel::encapsulate(&mut room, &layout, &addr.into(), &addr.into());
        let mut out = vec![0u8; 1600];
        let _ = answer::build_too_big(&mut out, data, &layout, addr, port, mac);
    }
    run(data, &layout, |frame| {
        rewrite::set_macs(frame, mac, mac).is_ok()
    });
    run(data, &layout, |frame| {
        answer::answer_arp(frame, &layout, mac).is_ok()
    });
    run(data, &layout, |frame| {
        answer::answer_echo(frame, &layout, mac).is_ok()
    });
    run(data, &layout, |frame| {
        answer::answer_neighbor_solicitation(frame, &layout, mac).is_ok()
    });
    run(data, &layout, |frame| {
        tunnel::decapsulate(frame, &layout).is_ok()
    });
    if layout.l3 == L3::Ipv4 || layout.l3 == L3::Ipv6 {
        let mut out = vec![0u8; 128];
        let _ = answer::build_arp_request(
            &mut out,
            mac,
            Ipv4Addr::from(seed as u32),
            Ipv4Addr::LOCALHOST,
            Some(port),
        );
        let _ = answer::build_neighbor_solicitation(
            &mut out,
            mac,
            Ipv6Addr::LOCALHOST,
            Ipv6Addr::from(u128::from(seed)),
            None,
        );
    }
    true
}

/// Runs `change` on a copy of `data`; when it succeeds on an IP frame, the result must still parse.
fn run(data: &[u8], layout: &FrameLayout, change: impl FnOnce(&mut [u8]) -> bool) {
    let mut frame = data.to_vec();
    if change(&mut frame) && matches!(layout.l3, L3::Ipv4 | L3::Ipv6) {
        let _ = parse_frame(&frame);
    }
}
