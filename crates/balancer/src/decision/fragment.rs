//! Fragments: placed by the service's Maglev table on the hash of addresses and protocol, so that later fragments,
//! which carry no ports, follow the first.

use packet::{Fragment, FrameLayout};

use super::request::forward_request;
use super::{Action, DropReason, WorkerState};
use crate::conntrack::{Endpoint, Forwarding};
use crate::maglev::address_hash;
use crate::service::ForwardingMode;
use crate::snapshot::Snapshot;

impl WorkerState {
    pub(super) fn fragment_request(&self, snapshot: &Snapshot, layout: &FrameLayout) -> Action {
        let flow = layout.flow;
        let service = match layout.fragment {
            Fragment::First { .. } => {
                snapshot.service_for(flow.dst_addr, flow.dst_port, flow.protocol)
            }
            _ => snapshot.fragment_service(flow.dst_addr, flow.protocol),
        };
        let Some((_, service)) = service else {
            return Action::Drop(DropReason::FragmentUnsupported);
        };
        if service.mode == ForwardingMode::FullNat {
            return Action::Drop(DropReason::FragmentUnsupported);
        }
        let hash = address_hash(flow.src_addr, flow.dst_addr, flow.protocol);
        let Some(index) = service.maglev.lookup(hash) else {
            return Action::Drop(DropReason::NoBackend);
        };
        let backend = &service.backends[index];
        let conn = Forwarding {
            backend_endpoint: Endpoint {
                addr: backend.addr,
                port: if service.mode == ForwardingMode::Nat {
                    backend.port
                } else {
                    flow.dst_port
                },
            },
            local: None,
            backend: backend.id,
            mode: service.mode,
        };
        forward_request(snapshot, service, &conn, layout, true)
    }
}
