//! What the control thread asks a worker about its own state, answered between bursts, one question per poll:
//! its connections for `sluice ctl connections` (ipvsadm -Lnc), a bounded stretch of its table per question, so
//! that listing a million connections never holds it from its queues for longer than one stretch; and its active
//! and inactive connections per backend for `sluice ctl list` (ActiveConn, InActConn); and new idle timeouts
//! (`sluice ctl set-timeout`, a reload). The control thread brings
//! the buffers to fill, so that nothing is allocated on the worker.

use std::net::IpAddr;

use balancer::conntrack::{ConnTable, Endpoint, Timeouts};
use balancer::scheduler::LoadTable;
use balancer::service::{BackendId, ServiceKey};
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

/// A question for one worker.
#[derive(Debug)]
pub enum WorkerQuery {
    Connections(ListingQuery),
    /// (active, inactive) connections of backend ids `0..capacity`, into this buffer.
    Load(Vec<(u32, u32)>),
    /// Idle timeouts from now on (ipvsadm --set).
    SetTimeouts(Timeouts),
}

/// A worker's answer.
#[derive(Debug)]
pub enum WorkerAnswer {
    Connections(ListingPage),
    Load {
        worker: u16,
        counts: Vec<(u32, u32)>,
    },
    TimeoutsSet {
        worker: u16,
    },
}

/// The channels a worker answers questions on.
pub struct ListingChannel {
    pub queries: Receiver<WorkerQuery>,
    pub answers: Sender<WorkerAnswer>,
}

/// Answers `query` from the worker's connection table and scheduler load at `now_ms`.
pub fn answer_query(
    conns: &mut ConnTable,
    load: &LoadTable,
    worker: u16,
    query: WorkerQuery,
    now_ms: u64,
) -> WorkerAnswer {
    match query {
        WorkerQuery::Connections(query) => {
            WorkerAnswer::Connections(answer(conns, worker, query, now_ms))
        }
        WorkerQuery::Load(mut counts) => {
            let ids = counts.capacity();
            counts.extend((0..ids).map(|id| {
                let id = BackendId(id as u32);
                (load.active(id), load.inactive(id))
            }));
            WorkerAnswer::Load { worker, counts }
        }
        WorkerQuery::SetTimeouts(timeouts) => {
            conns.set_timeouts(timeouts);
            WorkerAnswer::TimeoutsSet { worker }
        }
    }
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
