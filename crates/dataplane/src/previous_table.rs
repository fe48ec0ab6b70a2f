//! The optional grace period of a node without peers (`[network] previous_table_grace`): after a snapshot changes
//! a Maglev table, the worker keeps the tables it replaced for the grace period and lets its side table consult
//! them for non-SYN frames without a connection (`balancer::exceptions`). The kept tables are then handed back to
//! the control thread like any retired ones, so nothing is freed on the worker.

use balancer::decision::{WorkerState, WorkerTables};
use balancer::exceptions::maglev_tables_differ;
use std::sync::Arc;

/// The tables a worker keeps for the grace period.
pub struct PreviousTable {
    grace_ms: u64,
    kept: Option<WorkerTables>,
}

impl PreviousTable {
    /// A grace period of `grace_ms`; 0 keeps nothing.
    pub fn new(grace_ms: u64) -> PreviousTable {
        PreviousTable {
            grace_ms,
            kept: None,
        }
    }

    /// `old` was replaced by `new` at `now_ms`: returns what to retire now (`old` itself, or the tables kept
    /// before it when `old` is kept in their place).
    pub fn replaced(
        &mut self,
        old: WorkerTables,
        new: &WorkerTables,
        state: &mut WorkerState,
        now_ms: u64,
    ) -> Option<WorkerTables> {
        if self.grace_ms == 0 || !maglev_tables_differ(&old.snapshot, &new.snapshot) {
            return Some(old);
        }
        state.exceptions.remember_previous(
            Arc::clone(&old.snapshot),
            now_ms.saturating_add(self.grace_ms),
        );
        self.kept.replace(old)
    }

    /// Once the grace period is over, the kept tables to retire.
    pub fn expired(&mut self, state: &mut WorkerState, now_ms: u64) -> Option<WorkerTables> {
        if self.kept.is_some() && state.exceptions.forget_previous(now_ms) {
            return self.kept.take();
        }
        None
    }
}
