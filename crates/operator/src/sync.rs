//! Connection exceptions shared with the cluster's other nodes over UDP (`[sync]`), run by the control thread: it
//! collects what the workers' scans find, sends each exception to every peer and again with a growing interval
//! until the connection it describes would expire, sends the whole current set to a peer that says hello with a
//! boot id not seen before (a node that just joined or restarted), and hands the peers' exceptions to the worker
//! that owns each flow. Every datagram is authenticated (`crate::sync_wire`); a forged, stale or replayed one, or
//! one from an address that is not a configured peer, is dropped and counted.
//!
//! It also keeps the health of the sync per peer (messages and bytes sent and received, refusals, the last hello and
//! the peer's table digest) and warns when a peer's digest differs from ours for longer than a reload takes.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use balancer::exceptions::{owner_worker, ConnException};
use balancer::service::SchedulerKind;
use balancer::snapshot::Snapshot;
use control::sync_config::SyncConfig;
use crossbeam::channel::{bounded, Receiver, Sender};
use dataplane::exceptions::{ExceptionLinks, ExceptionStats};
use packet::FlowKey;
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::sync_wire::{self, Kind, Message, Refusal, ReplayGuard, MAX_DATAGRAM, MAX_RECORDS};

/// A hello goes to every peer this often.
pub const HELLO_INTERVAL: Duration = Duration::from_secs(1);
/// How long peers' digests may differ before a warning: longer than a reload or a health verdict takes to reach
/// every node (checks run at least every few seconds).
pub const DIGEST_GRACE: Duration = Duration::from_secs(5);
/// Datagrams read per turn of the control loop.
const RECEIVE_PER_TURN: usize = 1024;
/// Exceptions taken from the workers per turn.
const COLLECT_PER_TURN: usize = 65_536;
/// Exceptions the workers' scans may have queued for the control thread (a full queue pauses the scans).
const FOUND_QUEUE: usize = 65_536;
/// Peers' exceptions queued for one worker, and how many it stores per turn.
const WORKER_QUEUE: usize = 65_536;
const STORE_PER_TURN: usize = 1024;

/// What one peer did, as `sluice ctl sync` and the metrics show it.
#[derive(Clone, Debug, Default)]
pub struct PeerHealth {
    pub sent_messages: u64,
    pub sent_bytes: u64,
    pub sent_exceptions: u64,
    pub received_messages: u64,
    pub received_exceptions: u64,
    pub rejected_forged: u64,
    pub rejected_replayed: u64,
    pub rejected_malformed: u64,
    pub send_errors: u64,
    pub last_hello: Option<Instant>,
    pub boot: Option<u64>,
    pub digest: Option<u64>,
    /// Since when the peer's digest differs from ours (while it does).
    pub digest_differs_since: Option<Instant>,
    warned: bool,
}

struct Peer {
    address: SocketAddr,
    guard: ReplayGuard,
    health: PeerHealth,
    /// The peer said hello with a new boot id: it gets the full set on this turn.
    wants_full_set: bool,
}

/// Exceptions found together, sent together: each round is sent again when due, with the interval doubled up to
/// the maximum, until every exception in it has expired.
struct Round {
    exceptions: Vec<(ConnException, Instant)>,
    due: Instant,
    interval: Duration,
}

/// A peer's exception kept for newcomers: which peer said it (it is not sent back there), until when.
struct Relayed {
    exception: ConnException,
    from: usize,
    expires: Instant,
}

/// The node's side of the sync.
pub struct SyncNode {
    config: SyncConfig,
    socket: UdpSocket,
    boot: u64,
    sequence: u64,
    peers: Vec<Peer>,
    found: Receiver<ConnException>,
    to_workers: Vec<Sender<ConnException>>,
    rounds: Vec<Round>,
    /// The peers' exceptions, until they expire: a node that joins gets them with ours, so that a flow whose node
    /// died before the newcomer said hello still finds its backend there. Bounded; the newest are kept.
    relayed: HashMap<FlowKey, Relayed>,
    relay_capacity: usize,
    digest: u64,
    last_hello: Option<Instant>,
    /// Received exceptions a worker's queue had no room for.
    pub dropped_for_workers: u64,
    /// Datagrams from addresses that are not configured peers.
    pub unknown_senders: u64,
    buffer: Vec<u8>,
    workers: Vec<Arc<ExceptionStats>>,
}

/// The digest of every Maglev table in `snapshot` together (by service key), to compare nodes at a glance.
pub fn tables_digest(snapshot: &Snapshot) -> u64 {
    let mut tables: Vec<_> = snapshot
        .services()
        .iter()
        .filter(|service| service.scheduler == SchedulerKind::Mh)
        .map(|service| (service.key, service.maglev.digest()))
        .collect();
    tables.sort_unstable();
    let mut hasher = Sha256::new();
    for (key, digest) in tables {
        hasher.update(format!("{key:?}={digest:016x};").as_bytes());
    }
    let bytes = hasher.finalize();
    u64::from_be_bytes(bytes[..8].try_into().unwrap_or([0; 8]))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl SyncNode {
    /// Binds the listen address and makes the channels to and from `workers` workers: give each its
    /// [`ExceptionLinks`] (and a side table of `config.side_table`), then the workers' counters to
    /// [`SyncNode::watch_workers`].
    pub fn open(
        config: SyncConfig,
        workers: usize,
    ) -> Result<(SyncNode, Vec<ExceptionLinks>), String> {
        let (found_tx, found) = bounded(FOUND_QUEUE);
        let mut to_workers = Vec::with_capacity(workers);
        let mut links = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (to_worker, incoming) = bounded(WORKER_QUEUE);
            to_workers.push(to_worker);
            links.push(ExceptionLinks {
                incoming,
                found: found_tx.clone(),
                scan_budget: config.scan_budget,
                store_budget: STORE_PER_TURN,
            });
        }
        let socket = UdpSocket::bind(config.listen)
            .map_err(|error| format!("sync: listen {}: {error}", config.listen))?;
        socket
            .set_nonblocking(true)
            .map_err(|error| format!("sync: {error}"))?;
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_micros() as u64);
        // Random enough to tell two starts apart: the clock and the process id through SHA-256.
        let boot_bytes = Sha256::digest(format!("{now_us}/{}", std::process::id()).as_bytes());
        let boot = u64::from_be_bytes(boot_bytes[..8].try_into().unwrap_or([0; 8]));
        let peers = config
            .peers
            .iter()
            .map(|&address| Peer {
                address,
                guard: ReplayGuard::default(),
                health: PeerHealth::default(),
                wants_full_set: false,
            })
            .collect();
        let relay_capacity = config.side_table.saturating_mul(workers.max(1));
        let node = SyncNode {
            config,
            socket,
            boot,
            sequence: now_us,
            peers,
            found,
            to_workers,
            rounds: Vec::new(),
            relayed: HashMap::new(),
            relay_capacity,
            digest: 0,
            last_hello: None,
            dropped_for_workers: 0,
            unknown_senders: 0,
            buffer: Vec::with_capacity(MAX_DATAGRAM),
            workers: Vec::new(),
        };
        Ok((node, links))
    }

    /// The workers' exception counters, for `sluice ctl sync` and the metrics.
    pub fn watch_workers(&mut self, stats: Vec<Arc<ExceptionStats>>) {
        self.workers = stats;
    }

    /// The workers' counters summed: scans started and finished, exceptions found, stored, refused, used, held.
    pub fn worker_totals(&self) -> [u64; 7] {
        let mut totals = [0u64; 7];
        for stats in &self.workers {
            for (total, counter) in totals.iter_mut().zip([
                &stats.scans_started,
                &stats.scans_finished,
                &stats.found,
                &stats.stored,
                &stats.refused,
                &stats.used,
                &stats.held,
            ]) {
                *total += counter.load(Ordering::Relaxed);
            }
        }
        totals
    }

    /// The digest this node announces: call it with each new snapshot.
    pub fn set_snapshot(&mut self, snapshot: &Snapshot) {
        self.digest = tables_digest(snapshot);
    }

    /// Exceptions this node is sending (again) until they expire.
    pub fn pending(&self) -> usize {
        self.rounds.iter().map(|round| round.exceptions.len()).sum()
    }

    pub fn peers(&self) -> impl Iterator<Item = (SocketAddr, &PeerHealth)> {
        self.peers.iter().map(|peer| (peer.address, &peer.health))
    }

    /// One turn: take what the workers found, read the peers' datagrams, send what is due and the hellos.
    pub fn turn(&mut self, now: Instant) {
        self.collect(now);
        self.receive(now);
        self.send_due(now);
        self.send_full_sets(now);
        if self
            .last_hello
            .is_none_or(|last| now.duration_since(last) >= HELLO_INTERVAL)
        {
            self.last_hello = Some(now);
            self.relayed.retain(|_, relayed| relayed.expires > now);
            for index in 0..self.peers.len() {
                self.send(index, Kind::Hello, &[], now);
            }
        }
        self.check_digests(now);
    }

    fn collect(&mut self, now: Instant) {
        let mut fresh = Vec::new();
        while fresh.len() < COLLECT_PER_TURN {
            let Ok(exception) = self.found.try_recv() else {
                break;
            };
            let expires = now + Duration::from_millis(u64::from(exception.lifetime_ms));
            fresh.push((exception, expires));
        }
        if fresh.is_empty() {
            return;
        }
        // Sent at once, then again after the resend interval.
        let batch: Vec<ConnException> = fresh.iter().map(|(exception, _)| *exception).collect();
        for index in 0..self.peers.len() {
            self.send_all(index, &batch, now);
        }
        self.rounds.push(Round {
            exceptions: fresh,
            due: now + self.config.resend_interval,
            interval: self.config.resend_interval,
        });
    }

    fn receive(&mut self, now: Instant) {
        let mut datagram = [0u8; MAX_DATAGRAM + 1];
        for _ in 0..RECEIVE_PER_TURN {
            let (len, from) = match self.socket.recv_from(&mut datagram) {
                Ok(received) => received,
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) => {
                    log::debug!("sync: receive: {error}");
                    break;
                }
            };
            let Some(index) = self.peers.iter().position(|peer| peer.address == from) else {
                self.unknown_senders += 1;
                continue;
            };
            let message = sync_wire::decode(&datagram[..len], &self.config.key);
            let peer = &mut self.peers[index];
            let message = match message
                .and_then(|message| peer.guard.accept(&message, unix_ms()).map(|()| message))
            {
                Ok(message) => message,
                Err(refusal) => {
                    match refusal {
                        Refusal::BadTag => peer.health.rejected_forged += 1,
                        Refusal::Replayed => peer.health.rejected_replayed += 1,
                        Refusal::Malformed => peer.health.rejected_malformed += 1,
                    }
                    continue;
                }
            };
            peer.health.received_messages += 1;
            peer.health.digest = Some(message.digest);
            if message.kind == Kind::Hello {
                peer.health.last_hello = Some(now);
            }
            if peer.health.boot != Some(message.boot) {
                // A peer seen for the first time or restarted: it gets everything we are sending.
                peer.health.boot = Some(message.boot);
                peer.wants_full_set = true;
            }
            peer.health.received_exceptions += message.exceptions.len() as u64;
            let workers = self.to_workers.len() as u16;
            for exception in &message.exceptions {
                if self.relayed.len() < self.relay_capacity
                    || self.relayed.contains_key(&exception.flow)
                {
                    let expires = now + Duration::from_millis(u64::from(exception.lifetime_ms));
                    let relayed = Relayed {
                        exception: *exception,
                        from: index,
                        expires,
                    };
                    self.relayed.insert(exception.flow, relayed);
                }
                let owner = usize::from(owner_worker(&exception.flow, workers));
                let delivered = self
                    .to_workers
                    .get(owner)
                    .is_some_and(|worker| worker.try_send(*exception).is_ok());
                if !delivered {
                    self.dropped_for_workers += 1;
                }
            }
        }
    }

    fn send_due(&mut self, now: Instant) {
        let mut due = Vec::new();
        let max_interval = self.config.resend_max_interval;
        self.rounds.retain_mut(|round| {
            round.exceptions.retain(|(_, expires)| *expires > now);
            if round.exceptions.is_empty() {
                return false;
            }
            if round.due <= now {
                due.extend(
                    round
                        .exceptions
                        .iter()
                        .map(|(exception, expires)| ConnException {
                            lifetime_ms: remaining_ms(*expires, now),
                            ..*exception
                        }),
                );
                round.interval = (round.interval * 2).min(max_interval);
                round.due = now + round.interval;
            }
            true
        });
        if due.is_empty() {
            return;
        }
        for index in 0..self.peers.len() {
            self.send_all(index, &due, now);
        }
    }

    fn send_full_sets(&mut self, now: Instant) {
        for index in 0..self.peers.len() {
            if !std::mem::take(&mut self.peers[index].wants_full_set) {
                continue;
            }
            let ours = self
                .rounds
                .iter()
                .flat_map(|round| round.exceptions.iter())
                .map(|(exception, expires)| (exception, *expires));
            let theirs = self
                .relayed
                .values()
                .filter(|relayed| relayed.from != index)
                .map(|relayed| (&relayed.exception, relayed.expires));
            let everything: Vec<ConnException> = ours
                .chain(theirs)
                .filter(|(_, expires)| *expires > now)
                .map(|(exception, expires)| ConnException {
                    lifetime_ms: remaining_ms(expires, now),
                    ..*exception
                })
                .collect();
            if !everything.is_empty() {
                log::info!(
                    "sync: {} said hello with a new boot id: sending it {} exceptions",
                    self.peers[index].address,
                    everything.len()
                );
                self.send_all(index, &everything, now);
            }
        }
    }

    fn send_all(&mut self, index: usize, exceptions: &[ConnException], now: Instant) {
        for chunk in exceptions.chunks(MAX_RECORDS) {
            self.send(index, Kind::Exceptions, chunk, now);
        }
    }

    fn send(&mut self, index: usize, kind: Kind, exceptions: &[ConnException], _now: Instant) {
        self.sequence += 1;
        let message = Message {
            kind,
            boot: self.boot,
            sequence: self.sequence,
            sent_at_ms: unix_ms(),
            digest: self.digest,
            exceptions: exceptions.to_vec(),
        };
        sync_wire::encode(&message, &self.config.key, &mut self.buffer);
        let peer = &mut self.peers[index];
        match self.socket.send_to(&self.buffer, peer.address) {
            Ok(sent) => {
                peer.health.sent_messages += 1;
                peer.health.sent_bytes += sent as u64;
                peer.health.sent_exceptions += exceptions.len() as u64;
            }
            Err(_) => peer.health.send_errors += 1,
        }
    }

    fn check_digests(&mut self, now: Instant) {
        let ours = self.digest;
        for peer in &mut self.peers {
            let health = &mut peer.health;
            match health.digest {
                Some(theirs) if theirs != ours => {
                    let since = *health.digest_differs_since.get_or_insert(now);
                    if !health.warned && now.duration_since(since) > DIGEST_GRACE {
                        health.warned = true;
                        log::warn!(
                            "sync: peer {}'s Maglev tables (digest {theirs:016x}) differ from ours ({ours:016x}) for \
                             more than {} s: different configurations or health verdicts; flows a router moves \
                             between us may break",
                            peer.address,
                            DIGEST_GRACE.as_secs()
                        );
                    }
                }
                _ => {
                    health.digest_differs_since = None;
                    health.warned = false;
                }
            }
        }
    }

    /// `sluice ctl sync`: one line per peer.
    pub fn describe(&self, now: Instant) -> String {
        let [started, finished, found, stored, refused, used, held] = self.worker_totals();
        let mut out = format!(
            "sync listen {} digest {:016x} pending {} unknown_senders {} dropped_for_workers {}\n\
             workers scans {started} finished {finished} found {found} stored {stored} refused {refused} \
             used {used} held {held}\n",
            self.config.listen,
            self.digest,
            self.pending(),
            self.unknown_senders,
            self.dropped_for_workers
        );
        for (address, health) in self.peers() {
            out.push_str(&format!(
                "peer {address} sent {} msgs {} bytes {} exceptions received {} msgs {} exceptions rejected \
                 forged {} replayed {} malformed {} last_hello {} digest {} differs_for {}\n",
                health.sent_messages,
                health.sent_bytes,
                health.sent_exceptions,
                health.received_messages,
                health.received_exceptions,
                health.rejected_forged,
                health.rejected_replayed,
                health.rejected_malformed,
                health
                    .last_hello
                    .map_or("never".into(), |at| format!("{}ms", now.duration_since(at).as_millis())),
                health
                    .digest
                    .map_or("-".into(), |digest| format!("{digest:016x}")),
                health.digest_differs_since.map_or("0ms".into(), |since| format!(
                    "{}ms",
                    now.duration_since(since).as_millis()
                )),
            ));
        }
        out
    }

    /// The Prometheus lines of the sync: every family with its HELP and TYPE, its samples together.
    pub fn metrics(&self, now: Instant) -> String {
        use control::observe::Exposition;
        let mut out = Exposition::new();
        let per_peer: [(&str, &str, &str, PeerCounter); 5] = [
            (
                "sluice_sync_messages_total",
                "Sync datagrams per peer and direction.",
                "direction",
                &[
                    ("sent", |h| h.sent_messages),
                    ("received", |h| h.received_messages),
                ],
            ),
            (
                "sluice_sync_sent_bytes_total",
                "Bytes of sync datagrams sent to a peer.",
                "",
                &[("", |h| h.sent_bytes)],
            ),
            (
                "sluice_sync_exceptions_total",
                "Connection exceptions per peer and direction.",
                "direction",
                &[
                    ("sent", |h| h.sent_exceptions),
                    ("received", |h| h.received_exceptions),
                ],
            ),
            (
                "sluice_sync_rejected_total",
                "Datagrams from a peer refused, by reason.",
                "reason",
                &[
                    ("forged", |h| h.rejected_forged),
                    ("replayed", |h| h.rejected_replayed),
                    ("malformed", |h| h.rejected_malformed),
                ],
            ),
            (
                "sluice_sync_send_errors_total",
                "Datagrams to a peer the kernel refused to send.",
                "",
                &[("", |h| h.send_errors)],
            ),
        ];
        for (name, help, label, values) in per_peer {
            out.family(name, "counter", help);
            for (value_label, pick) in values {
                for (address, health) in self.peers() {
                    let peer = address.to_string();
                    let mut labels = vec![("peer", peer.as_str())];
                    if !label.is_empty() {
                        labels.insert(0, (label, value_label));
                    }
                    out.sample(name, &labels, pick(health));
                }
            }
        }
        out.family(
            "sluice_sync_last_hello_seconds",
            "gauge",
            "Seconds since the peer's last hello.",
        );
        for (address, health) in self.peers() {
            if let Some(at) = health.last_hello {
                out.sample(
                    "sluice_sync_last_hello_seconds",
                    &[("peer", &address.to_string())],
                    format!("{:.3}", now.duration_since(at).as_secs_f64()),
                );
            }
        }
        out.family(
            "sluice_sync_peer_digest_info",
            "gauge",
            "Always 1: the digest of the peer's services and backends as a label (- before its first hello).",
        );
        for (address, health) in self.peers() {
            let digest = health
                .digest
                .map_or("-".into(), |digest| format!("{digest:016x}"));
            out.sample(
                "sluice_sync_peer_digest_info",
                &[("peer", &address.to_string()), ("digest", &digest)],
                1,
            );
        }
        out.family(
            "sluice_sync_digest_differs_seconds",
            "gauge",
            "Seconds the peer's digest has differed from this node's (0 while equal).",
        );
        for (address, health) in self.peers() {
            out.sample(
                "sluice_sync_digest_differs_seconds",
                &[("peer", &address.to_string())],
                format!(
                    "{:.3}",
                    health
                        .digest_differs_since
                        .map_or(0.0, |since| now.duration_since(since).as_secs_f64())
                ),
            );
        }
        let [started, finished, found, stored, refused, used, held] = self.worker_totals();
        out.family(
            "sluice_exception_scans_total",
            "counter",
            "The workers' scans for connection exceptions, started and finished.",
        );
        out.sample(
            "sluice_exception_scans_total",
            &[("state", "started")],
            started,
        );
        out.sample(
            "sluice_exception_scans_total",
            &[("state", "finished")],
            finished,
        );
        out.family(
            "sluice_exceptions_total",
            "counter",
            "Connection exceptions found by the workers, stored from peers, refused, and used to forward.",
        );
        for (event, value) in [
            ("found", found),
            ("stored", stored),
            ("refused", refused),
            ("used", used),
        ] {
            out.sample("sluice_exceptions_total", &[("event", event)], value);
        }
        out.family(
            "sluice_exceptions_held",
            "gauge",
            "Connection exceptions the workers hold.",
        );
        out.sample("sluice_exceptions_held", &[], held);
        out.family(
            "sluice_sync_digest_info",
            "gauge",
            "Always 1: the digest of this node's services and backends as a label.",
        );
        out.sample(
            "sluice_sync_digest_info",
            &[("digest", &format!("{:016x}", self.digest))],
            1,
        );
        out.family(
            "sluice_sync_pending_exceptions",
            "gauge",
            "Exceptions waiting to be sent to the peers.",
        );
        out.sample("sluice_sync_pending_exceptions", &[], self.pending());
        out.family(
            "sluice_sync_unknown_senders_total",
            "counter",
            "Datagrams from addresses that are not configured peers.",
        );
        out.sample(
            "sluice_sync_unknown_senders_total",
            &[],
            self.unknown_senders,
        );
        out.family(
            "sluice_sync_dropped_for_workers_total",
            "counter",
            "Exceptions from peers dropped because a worker's queue was full.",
        );
        out.sample(
            "sluice_sync_dropped_for_workers_total",
            &[],
            self.dropped_for_workers,
        );
        out.finish()
    }
}

/// A per-peer counter's label values and how to read each.
type PeerCounter = &'static [(&'static str, fn(&PeerHealth) -> u64)];

fn remaining_ms(expires: Instant, now: Instant) -> u32 {
    expires
        .saturating_duration_since(now)
        .as_millis()
        .min(u128::from(u32::MAX)) as u32
}

/// The sync `config` asks for (none without a `[sync]` section), and each worker's links to it.
#[allow(clippy::type_complexity)]
pub fn open(
    config: &control::config::Config,
    workers: usize,
) -> Result<(Option<SyncNode>, Vec<Option<ExceptionLinks>>), String> {
    let Some(sync) = &config.sync else {
        return Ok((None, Vec::new()));
    };
    let (node, links) = SyncNode::open(sync.clone(), workers)?;
    log::info!(
        "sync: listening on {} for {} peers",
        sync.listen,
        sync.peers.len()
    );
    Ok((Some(node), links.into_iter().map(Some).collect()))
}

#[cfg(test)]
mod tests;
