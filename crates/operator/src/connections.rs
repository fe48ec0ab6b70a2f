//! `sluice ctl connections`, ipvsadm -Lnc: the connections the workers hold, with state, expiry, client, VIP and
//! backend. Each worker lists its table a stretch per poll (`dataplane::listing`); this walks every worker's
//! table stretch by stretch, within a deadline, and lays the rows out as ipvsadm does.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use balancer::snapshot::describe_endpoint;
use control::protocol::ConnectionFilter;
use dataplane::listing::{ConnFilter, ConnRow, ListingQuery, WorkerAnswer, WorkerQuery};

use crate::control_loop::ControlLoop;

/// How long one listing may take before it answers with what it has.
const DEADLINE: Duration = Duration::from_secs(5);
/// How long one worker may take to answer one query (it answers once per poll).
const QUERY_WAIT: Duration = Duration::from_millis(500);

/// (active, inactive) connections per backend id, summed over the workers; `None` when a worker did not answer
/// in time.
pub fn load(control: &ControlLoop, ids: usize) -> Option<Vec<(u32, u32)>> {
    let mut sums = vec![(0u32, 0u32); ids];
    while control.listing_answers.try_recv().is_ok() {}
    for queries in &control.listing_queries {
        queries
            .send_timeout(WorkerQuery::Load(Vec::with_capacity(ids)), QUERY_WAIT)
            .ok()?;
        let Ok(WorkerAnswer::Load { counts, .. }) =
            control.listing_answers.recv_timeout(QUERY_WAIT)
        else {
            return None;
        };
        for (sum, (active, inactive)) in sums.iter_mut().zip(counts) {
            sum.0 += active;
            sum.1 += inactive;
        }
    }
    Some(sums)
}

/// `limit` connections matching `filter` after skipping `offset`, worker by worker, in table order.
pub fn list(
    control: &mut ControlLoop,
    filter: ConnectionFilter,
    offset: usize,
    limit: usize,
) -> String {
    let filter = match filter {
        ConnectionFilter::All => ConnFilter::All,
        ConnectionFilter::Service(key) => ConnFilter::Service(key),
        ConnectionFilter::Backend(address) => ConnFilter::Backend(address.ip(), address.port()),
    };
    let deadline = Instant::now() + DEADLINE;
    let wanted = offset.saturating_add(limit);
    let mut rows: Vec<ConnRow> = Vec::new();
    let mut complete = true;
    while control.listing_answers.try_recv().is_ok() {}
    'workers: for queries in &control.listing_queries {
        let mut start = Some(0);
        while let Some(from) = start {
            if rows.len() >= wanted {
                break 'workers;
            }
            let query = ListingQuery {
                filter,
                start: from,
                rows: Vec::with_capacity(wanted - rows.len()),
            };
            let wait = QUERY_WAIT.min(deadline.saturating_duration_since(Instant::now()));
            let answered = queries
                .send_timeout(WorkerQuery::Connections(query), wait)
                .ok()
                .and_then(|()| control.listing_answers.recv_timeout(wait).ok());
            let Some(WorkerAnswer::Connections(page)) = answered else {
                complete = false;
                break 'workers;
            };
            rows.extend(page.rows);
            start = page.next;
        }
    }
    let mut out = String::from("IPVS connection entries\npro expire state       source                    virtual                   destination\n");
    for row in rows.iter().skip(offset).take(limit) {
        let seconds = row.expires_in_ms / 1000;
        let _ = writeln!(
            out,
            "{:<3} {:02}:{:02} {:<11} {:<25} {:<25} {}",
            crate::service_stats::protocol_name(row.client.protocol),
            seconds / 60,
            seconds % 60,
            row.state,
            describe_endpoint(row.client.src_addr, row.client.src_port),
            describe_endpoint(row.client.dst_addr, row.client.dst_port),
            describe_endpoint(row.backend.addr, row.backend.port),
        );
    }
    let shown = rows.len().saturating_sub(offset).min(limit);
    if !complete {
        let _ = writeln!(out, "(incomplete: a worker did not answer in time)");
    } else if rows.len() >= wanted {
        let _ = writeln!(
            out,
            "({shown} shown; more: connections ... offset {})",
            offset + shown
        );
    }
    out
}
