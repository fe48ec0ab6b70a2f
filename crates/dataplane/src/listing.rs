//! `sluice ctl connections` (ipvsadm -Lnc): a worker lists its own connections between bursts, a bounded stretch
//! of its table per poll, so that listing a million connections never holds it from its queues for longer than
//! one stretch. The control thread walks each worker's table stretch by stretch and brings the buffers to fill,
//! so that nothing is allocated on the worker.

use std::net::IpAddr;

use balancer::conntrack::{ConnTable, Endpoint};
use balancer::service::ServiceKey;
use crossbeam::channel::{Receiver, Sender};
use packet::FlowKey;

/// Table slots a worker looks at for one query: about as long as a burst takes.
pub const SLOTS_PER_QUERY: usize = 8192;

/// Which connections to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnFilter {
    All,
    Service(ServiceKey),
    Backend(IpAddr, u16),
}

/// One connection as the listing shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRow {
    /// client -> VIP:vport.
    pub client: FlowKey,
    pub backend: Endpoint,
    /// FULLNAT's local address and port.
    pub local: Option<Endpoint>,
    /// The IPVS name of the TCP state (`NONE` for UDP).
    pub state: &'static str,
    pub expires_in_ms: u64,
}

/// Look at slots `start..start + SLOTS_PER_QUERY`, and fill `rows` up to its capacity.
#[derive(Debug)]
pub struct ListingQuery {
    pub filter: ConnFilter,
    pub start: usize,
    pub rows: Vec<ConnRow>,
}

/// A worker's answer: `rows` filled, and the slot to ask from next (`None` at the end of the table).
#[derive(Debug)]
pub struct ListingPage {
    pub worker: u16,
    pub rows: Vec<ConnRow>,
    pub next: Option<usize>,
}

/// The channels a worker answers listing queries on.
pub struct ListingChannel {
    pub queries: Receiver<ListingQuery>,
    pub answers: Sender<ListingPage>,
}

impl ConnFilter {
    fn matches(&self, client: &FlowKey, backend: Endpoint) -> bool {
        match *self {
            ConnFilter::All => true,
            ConnFilter::Service(key) => {
                client.dst_addr == key.vip
                    && client.dst_port == key.port
                    && client.protocol == key.protocol
            }
            ConnFilter::Backend(addr, port) => backend.addr == addr && backend.port == port,
        }
    }
}

/// Answers `query` from `conns` at `now_ms`: live connections only.
pub fn answer(conns: &ConnTable, worker: u16, query: ListingQuery, now_ms: u64) -> ListingPage {
    let ListingQuery {
        filter,
        start,
        mut rows,
    } = query;
    let room = rows.capacity();
    let mut next = start.saturating_add(SLOTS_PER_QUERY);
    for (id, conn) in conns.iter_slots(start, SLOTS_PER_QUERY) {
        if rows.len() >= room {
            next = id.index();
            break;
        }
        if conn.expires_at <= now_ms || !filter.matches(&conn.client, conn.backend_endpoint) {
            continue;
        }
        rows.push(ConnRow {
            client: conn.client,
            backend: conn.backend_endpoint,
            local: conn.local,
            state: conn.tcp_state.name(),
            expires_in_ms: conn.expires_at - now_ms,
        });
    }
    ListingPage {
        worker,
        rows,
        next: (next < conns.capacity()).then_some(next),
    }
}
