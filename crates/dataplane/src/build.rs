//! Building one worker: its per-core state (connection table, scheduler load, persistence, exceptions), its first
//! tables and the two queues the control thread keeps to publish new tables and take retired ones back. `sluice run`
//! (on DPDK ports) and the benchmark worker (on in-memory frames) both build theirs here, so that they cannot drift.

use std::sync::Arc;

use balancer::conntrack::{ConnTable, EdgeHooks, Timeouts};
use balancer::decision::{WorkerPlace, WorkerState, WorkerTables};
use balancer::exceptions::ExceptionTable;
use balancer::neighbor::NeighborTable;
use balancer::persistence::PersistenceTable;
use balancer::port_alloc::PortAllocator;
use balancer::scheduler::LoadTable;
use balancer::snapshot::Snapshot;
use crossbeam::channel::{bounded, Receiver, Sender};

use crate::io::{RxQueue, TxQueue};
use crate::worker::{HandoffLinks, PortQueues, TableUpdates, Worker, WorkerConfig};

/// Tables a worker can be sent before it has taken the previous ones (it takes them once per poll).
const PUBLISH_QUEUE: usize = 4;
/// Retired tables a worker can hand back before the control thread collects them.
const RETIRED_QUEUE: usize = 8;

/// Everything one worker is made of besides its queues and its handoff links.
pub struct WorkerPlan {
    pub place: WorkerPlace,
    /// Connections its table holds, and how many of them may take a second entry (NAT, FULLNAT, IPv6 DR/TUN).
    pub conntrack_capacity: usize,
    pub two_entry_connections: usize,
    pub timeouts: Timeouts,
    /// FULLNAT's local addresses and this worker's share of their ports, when a service needs them.
    pub local_ports: Option<PortAllocator>,
    /// What the I/O edge lends the connection table (huge-page advice, prefetch).
    pub hooks: EdgeHooks,
    /// Per-backend scheduler load is kept for ids below this.
    pub backend_ids: usize,
    pub persistence_entries: usize,
    /// Shared by every worker.
    pub neighbors: Arc<NeighborTable>,
    /// Connection exceptions shared with sync peers; `ExceptionTable::disabled()` without `[sync]`.
    pub exceptions: ExceptionTable,
    pub config: WorkerConfig,
}

/// The control thread's ends of a worker's table queues.
pub struct WorkerControl {
    pub publish: Sender<WorkerTables>,
    pub retired: Receiver<WorkerTables>,
}

impl WorkerPlan {
    /// The worker over `ports` (index = port number in `snapshot`), starting with `snapshot`'s tables.
    pub fn build<R: RxQueue, T: TxQueue<Frame = R::Frame>>(
        self,
        snapshot: Arc<Snapshot>,
        ports: Vec<PortQueues<R, T>>,
        handoffs: HandoffLinks<R::Frame>,
    ) -> Result<(Worker<R, T>, WorkerControl), String> {
        let conns = ConnTable::with_hooks(
            self.conntrack_capacity,
            self.two_entry_connections,
            self.timeouts,
            self.local_ports,
            self.hooks,
        )
        .map_err(|e| format!("connection table: {e}"))?;
        let state = WorkerState {
            place: self.place,
            conns,
            load: LoadTable::new(self.backend_ids),
            persistence: PersistenceTable::new(self.persistence_entries),
            neighbors: self.neighbors,
            exceptions: self.exceptions,
        };
        let (publish, incoming) = bounded(PUBLISH_QUEUE);
        let (retired, retired_rx) = bounded(RETIRED_QUEUE);
        let worker = Worker::new(
            state,
            WorkerTables::new(snapshot),
            ports,
            handoffs,
            TableUpdates { incoming, retired },
            self.config,
        );
        Ok((
            worker,
            WorkerControl {
                publish,
                retired: retired_rx,
            },
        ))
    }
}
