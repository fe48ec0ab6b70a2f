//! A worker's part in sharing connection exceptions (`balancer::exceptions`), all of it between bursts: when a new
//! snapshot changes a Maglev table it walks the connection table a slot budget at a time and queues what it finds
//! for the control thread (a full queue pauses the walk, never the loop); and it stores a bounded number of the
//! peers' exceptions per turn in its side table.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use balancer::decision::WorkerState;
use balancer::exceptions::{maglev_tables_differ, ConnException, ExceptionScan, ScanProgress};
use balancer::snapshot::Snapshot;
use crossbeam::channel::{Receiver, Sender};

/// The channels and budgets of one worker's exception sharing.
pub struct ExceptionLinks {
    /// The peers' exceptions for flows this worker owns, from the control thread.
    pub incoming: Receiver<ConnException>,
    /// The exceptions this worker's scans find, to the control thread.
    pub found: Sender<ConnException>,
    /// Connection-table slots examined per turn of the loop while a scan runs.
    pub scan_budget: usize,
    /// Received exceptions stored per turn.
    pub store_budget: usize,
}

/// What one worker counted, written only by it.
#[derive(Debug, Default)]
pub struct ExceptionStats {
    /// Scans started (a changed table) and finished (the whole table walked).
    pub scans_started: AtomicU64,
    pub scans_finished: AtomicU64,
    /// Exceptions found by scans and queued for the peers.
    pub found: AtomicU64,
    /// Peers' exceptions stored in the side table, refused (table full of live ones), and used (a non-SYN frame
    /// without a connection matched one and became a connection to its backend).
    pub stored: AtomicU64,
    pub refused: AtomicU64,
    pub used: AtomicU64,
    /// Entries in the side table now.
    pub held: AtomicU64,
}

/// One worker's exception sharing: its links, its scan and its counters.
pub struct ExceptionSync {
    links: ExceptionLinks,
    scan: ExceptionScan,
    stats: Arc<ExceptionStats>,
    found: u64,
}

impl ExceptionSync {
    pub fn new(links: ExceptionLinks) -> ExceptionSync {
        ExceptionSync {
            links,
            scan: ExceptionScan::default(),
            stats: Arc::new(ExceptionStats::default()),
            found: 0,
        }
    }

    pub fn stats(&self) -> Arc<ExceptionStats> {
        Arc::clone(&self.stats)
    }

    /// A new snapshot replaced `old`: when a Maglev table changed, the walk starts (again) from the first slot.
    pub fn tables_changed(&mut self, old: &Snapshot, new: &Snapshot) {
        if maglev_tables_differ(old, new) {
            self.scan.restart();
            bump(&self.stats.scans_started);
        }
    }

    /// This turn's share: store what the peers sent, then advance the scan by its budget.
    pub fn between_bursts(&mut self, state: &mut WorkerState, snapshot: &Snapshot, now_ms: u64) {
        for _ in 0..self.links.store_budget {
            let Some(exception) = crate::control_queue::take_ready(&self.links.incoming) else {
                break;
            };
            state.exceptions.store(&exception, now_ms);
        }
        if self.scan.is_running() {
            let found = &self.links.found;
            let mut queued = 0u64;
            let progress = self.scan.step(
                &state.conns,
                snapshot,
                now_ms,
                self.links.scan_budget,
                |exception| {
                    let sent = found.try_send(exception).is_ok();
                    queued += u64::from(sent);
                    sent
                },
            );
            self.found += queued;
            self.stats.found.store(self.found, Ordering::Relaxed);
            if matches!(progress, ScanProgress::Finished { .. }) {
                bump(&self.stats.scans_finished);
            }
        }
        let table = state.exceptions.stats();
        self.stats.stored.store(table.stored, Ordering::Relaxed);
        self.stats
            .refused
            .store(table.refused_full, Ordering::Relaxed);
        self.stats.used.store(table.used, Ordering::Relaxed);
        self.stats
            .held
            .store(state.exceptions.len() as u64, Ordering::Relaxed);
    }
}

/// Adds one to a counter only this worker writes.
fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}
