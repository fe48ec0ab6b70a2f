//! Control traffic under overload. When receive bursts keep coming back full on a port with a kernel interface
//! (`overload_after_full_turns` turns in a row: one full burst is only a clump of traffic), the worker is behind: the device's queue fills, and once it overflows the device drops frames blindly, the node's BGP
//! and BFD among them. So the worker reads on in the same turn, up to `overload_bursts` more bursts, stopping at the
//! first that is not full (caught up). From those it handles only the control frames (`kernel::is_control`) and
//! drops the rest as `overload_shed` without deciding, rewriting or transmitting them: reading and dropping a
//! frame costs a small part of forwarding it, so the queue stays short enough for control frames to get through,
//! and the worker still forwards a full burst every turn.
//!
//! A port without a kernel interface never sheds: a benchmark's full bursts are throughput, with no control
//! traffic behind them to protect.

use balancer::decision::{Action, DropReason};
use packet::FrameLayout;

use super::Engine;
use crate::io::{Burst, Frame, RxQueue, TxQueue};
use crate::kernel::is_control;

/// The default of `WorkerConfig::overload_bursts` (and of `[workers] overload_bursts`): a worker behind reads up to
/// 17 times as many frames as it forwards.
pub const OVERLOAD_BURSTS: usize = 16;

/// The default of `WorkerConfig::overload_after_full_turns`: eight turns of full bursts (256 frames at the usual
/// burst) forwarded without the queue draining.
pub const OVERLOAD_AFTER_FULL_TURNS: u32 = 8;

impl<R: RxQueue, T: TxQueue<Frame = R::Frame>> Engine<R, T> {
    /// Whether a burst of `received` frames on `port`, after the turns before it, says the worker is behind with
    /// control traffic to protect.
    #[inline(always)]
    pub(super) fn behind_on_control_port(&mut self, port: usize, received: usize) -> bool {
        let Some(full_turns) = self.full_turns.get_mut(port) else {
            return false;
        };
        if received < self.config.burst {
            *full_turns = 0;
            return false;
        }
        *full_turns = full_turns.saturating_add(1);
        *full_turns >= self.config.overload_after_full_turns
            && self.config.overload_bursts > 0
            && self
                .exception
                .as_ref()
                .is_some_and(|path| path.serves(port as u16))
    }
}

/// Reads on from `port` (into `received`, empty) while its bursts come back full, up to `overload_bursts` bursts;
/// control frames are handled as usual, the others dropped as `overload_shed`. Returns how many frames it read.
#[cold]
#[inline(never)]
pub(super) fn shed<R: RxQueue, T: TxQueue<Frame = R::Frame>>(
    engine: &mut Engine<R, T>,
    received: &mut Burst<R::Frame>,
    layout: &mut FrameLayout,
    verdict: &mut Action,
    port: usize,
    now_ms: u64,
) -> usize {
    let burst = engine.config.burst;
    let mut total = 0;
    for _ in 0..engine.config.overload_bursts {
        let got = engine.ports[port].rx.rx_burst(received, burst);
        total += got;
        for frame in received.drain(..) {
            let parsed =
                packet::parse_frame_into(frame.data(), frame.ipv4_checksum_good(), layout).is_ok();
            if parsed && is_control(layout, &engine.tables.snapshot) {
                engine.handle_one(frame, layout, port as u16, false, now_ms, verdict);
            } else {
                super::bump(&engine.stats.rx_bytes, frame.data().len() as u64);
                engine.drop_frame(frame, DropReason::OverloadShed);
            }
        }
        if got < burst {
            break;
        }
    }
    super::bump(&engine.stats.rx, total as u64);
    total
}
