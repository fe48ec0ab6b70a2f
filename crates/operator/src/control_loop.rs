//! The control thread of `sluice run`: it owns the running configuration and the backends' health, builds a new
//! snapshot off the data path whenever either changes (a SIGHUP reload, a health-check verdict), publishes it to
//! every worker over its bounded queue, takes retired tables back (so nothing is freed on a worker), and measures
//! how long the workers took to adopt it.

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use balancer::decision::WorkerTables;
use balancer::service::BackendId;
use balancer::snapshot::Snapshot;
use control::backend_state::{health_specs, refresh_down, Quorums};
use control::config::{BackendIdRegistry, Config};
use control::health::{HealthChecker, HealthEvent};
use crossbeam::channel::{Receiver as ChannelReceiver, Sender};
use dataplane::worker::WorkerStats;

/// Everything the control thread owns.
pub struct ControlLoop {
    pub config: Config,
    pub registry: BackendIdRegistry,
    pub port_macs: Vec<[u8; 6]>,
    pub generation: u64,
    pub publishers: Vec<Sender<WorkerTables>>,
    pub retired: Vec<ChannelReceiver<WorkerTables>>,
    pub stats: Vec<Arc<WorkerStats>>,
    /// Backends the health checks hold down.
    pub down: HashSet<BackendId>,
    /// Backends drained by `sluice ctl drain` (weight 0 until undrained or a reload).
    pub drained: HashSet<BackendId>,
    /// The snapshot the workers were last given.
    pub snapshot: Option<Arc<Snapshot>>,
    /// Per backend id, the counters when `sluice ctl zero` last ran (the workers' own counters only grow: the
    /// metrics endpoint's counters must never go back), subtracted in `stats`.
    pub zeroed: Vec<[u64; 5]>,
    pub health: Option<(HealthChecker, Receiver<HealthEvent>)>,
    /// Per worker: where trace queries go; and where every worker answers.
    pub trace_queries: Vec<Sender<dataplane::worker::TraceQuery>>,
    pub trace_answers: ChannelReceiver<dataplane::worker::TraceAnswer>,
    /// Per worker: where connection listings go; and where every worker answers.
    pub listing_queries: Vec<Sender<dataplane::listing::WorkerQuery>>,
    pub listing_answers: ChannelReceiver<dataplane::listing::WorkerAnswer>,
    /// The exception path's counters and the announced VIPs (`crate::cluster`).
    pub cluster: crate::cluster::ClusterView,
    /// Connection exceptions shared with the peers (`crate::sync`), when `[sync]` is configured.
    pub sync: Option<crate::sync::SyncNode>,
    /// VIPs left out of the snapshot because keepalived has not put them on the kernel interface
    /// (`crate::vip_owner`).
    pub withheld: BTreeSet<IpAddr>,
    /// The build, the reload counters and the device counters, for the metrics.
    pub observed: control::observe::Observed,
    /// Which services have lost their quorum (their sorry server serves).
    pub quorums: Quorums,
}

impl ControlLoop {
    /// Builds the current snapshot and publishes it to every worker; returns how long the workers took to use it
    /// (`None` if they did not within a second, for instance while stopping).
    pub fn publish(&mut self) -> Result<Option<Duration>, String> {
        let (spec, quorum_changes) = control::backend_state::effective_spec(
            &self.config,
            &self.port_macs,
            &mut self.registry,
            &self.down,
            &self.drained,
            &mut self.quorums,
        )?;
        for change in &quorum_changes {
            change.log();
        }
        let generation = self.generation + 1;
        let snapshot = Arc::new(
            crate::vip_owner::build_snapshot(&spec, generation, &self.withheld)
                .map_err(|e| e.to_string())?,
        );
        // Scheduler state is built here too: workers only swap a pointer.
        let tables: Vec<WorkerTables> = self
            .publishers
            .iter()
            .map(|_| WorkerTables::new(Arc::clone(&snapshot)))
            .collect();
        self.generation = generation;
        self.snapshot = Some(Arc::clone(&snapshot));
        if let Some(sync) = &mut self.sync {
            sync.set_snapshot(&snapshot);
        }
        let published = Instant::now();
        for (publisher, tables) in self.publishers.iter().zip(tables) {
            if publisher
                .send_timeout(tables, Duration::from_millis(100))
                .is_err()
            {
                return Err("a worker is not taking new tables".into());
            }
        }
        let deadline = published + Duration::from_secs(1);
        loop {
            self.collect_retired();
            let adopted = self
                .stats
                .iter()
                .all(|stats| stats.generation.load(Ordering::Acquire) >= generation);
            if adopted {
                return Ok(Some(published.elapsed()));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            // The control thread may share a CPU with a worker: give it the processor rather than spin.
            std::thread::sleep(Duration::from_micros(20));
        }
    }

    /// Gives every worker the running configuration's idle timeouts (they take them between bursts).
    pub fn push_timeouts(&mut self) -> Result<(), String> {
        use dataplane::listing::{WorkerAnswer, WorkerQuery};
        let wait = Duration::from_millis(500);
        while self.listing_answers.try_recv().is_ok() {}
        for (index, queries) in self.listing_queries.iter().enumerate() {
            let answered = queries
                .send_timeout(WorkerQuery::SetTimeouts(self.config.network.timeouts), wait)
                .ok()
                .and_then(|()| self.listing_answers.recv_timeout(wait).ok());
            if !matches!(answered, Some(WorkerAnswer::TimeoutsSet { .. })) {
                return Err(format!("worker {index} did not take the new timeouts"));
            }
        }
        Ok(())
    }

    /// Frees tables the workers handed back.
    pub fn collect_retired(&self) {
        for retired in &self.retired {
            while retired.try_recv().is_ok() {}
        }
    }

    /// Validates the file at `path` and, when it is good, applies its services and network settings. Ports, workers
    /// and EAL arguments need a restart: a change there is reported and not applied.
    pub fn reload(&mut self, path: &Path) -> Result<String, String> {
        let new = Config::load(path)
            .map_err(|error| format!("reload refused, the running configuration stays: {error}"))?;
        // What `sluice check` would print, in the log and in the answer.
        let mut warnings = String::new();
        for warning in &new.warnings {
            log::warn!("reload: {warning}");
            warnings.push_str(&format!("\nwarning: {warning}"));
        }
        let changes = describe_changes(&self.config, &new);
        let mut note = String::new();
        if new.ports != self.config.ports
            || new.workers != self.config.workers
            || new.eal_args != self.config.eal_args
            || new.control != self.config.control
            || new.sync != self.config.sync
        {
            note =
                "; ports, workers, [eal], [control] and [sync] changes need a restart and were not applied"
                    .into();
        }
        if new.network.vip_owner != self.config.network.vip_owner {
            // Following keepalived or announcing for BIRD is set up when sluice starts.
            note.push_str("; vip_owner needs a restart and was not applied");
        }
        let mut applied = new;
        applied.network.vip_owner = self.config.network.vip_owner;
        applied.ports = self.config.ports.clone();
        applied.workers = self.config.workers.clone();
        applied.eal_args = self.config.eal_args.clone();
        applied.control = self.config.control.clone();
        applied.sync = self.config.sync.clone();
        let previous = std::mem::replace(&mut self.config, applied);
        // A reload restates every weight: drains made by hand end, the file's (`drained = true`) hold.
        let drained = std::mem::replace(
            &mut self.drained,
            drained_in_file(&self.config, &mut self.registry),
        );
        // New backends with alpha take no traffic before their checks pass; unchecked ones are not held down.
        refresh_down(&previous, &self.config, &mut self.registry, &mut self.down);
        match self.publish() {
            Ok(took) => {
                let specs = health_specs(&self.config, &mut self.registry);
                if let Some((checker, _)) = &self.health {
                    checker.update(specs);
                } else if !specs.is_empty() {
                    self.health = Some(HealthChecker::start(specs));
                }
                if self.config.network.timeouts != previous.network.timeouts {
                    if let Err(error) = self.push_timeouts() {
                        note.push_str(&format!("; timeouts: {error}"));
                    }
                }
                Ok(format!(
                    "reload: generation {} with {} services in use{}{note}; applied: {changes}{warnings}",
                    self.generation,
                    self.config.services.len(),
                    took.map_or(String::new(), |t| format!(" after {} us", t.as_micros()))
                ))
            }
            Err(error) => {
                self.config = previous;
                self.drained = drained;
                Err(format!(
                    "reload refused ({error}); the running configuration stays"
                ))
            }
        }
    }

    /// Drains (weight 0: no new flows, existing ones stay) or undrains the backend at `address`, in every service
    /// that has it.
    pub fn set_drained(&mut self, address: SocketAddr, drained: bool) -> Result<String, String> {
        let ids: Vec<BackendId> = self
            .config
            .services
            .iter()
            .flat_map(|service| {
                service
                    .backends
                    .iter()
                    .filter(|b| b.address == address.ip() && b.port == address.port())
                    .map(move |b| (service.key, b.address, b.port))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|(key, addr, port)| self.registry.id(key, addr, port))
            .collect();
        if ids.is_empty() {
            return Err(format!("no backend {address} in any service"));
        }
        let previous = self.drained.clone();
        for id in &ids {
            if drained {
                self.drained.insert(*id);
            } else {
                self.drained.remove(id);
            }
        }
        let took = self.publish().inspect_err(|_| self.drained = previous)?;
        Ok(format!(
            "{} {address} in {} services: generation {}{}",
            if drained { "drained" } else { "undrained" },
            ids.len(),
            self.generation,
            took.map_or(String::new(), |t| format!(
                " in use after {} us",
                t.as_micros()
            ))
        ))
    }

    /// Applies `change` to the running configuration (not to the file: a reload restores the file's) and publishes
    /// it; a change the snapshot refuses leaves everything as it was.
    pub fn edit(
        &mut self,
        change: impl FnOnce(&mut Config) -> Result<String, String>,
    ) -> Result<String, String> {
        let mut edited = self.config.clone();
        let message = change(&mut edited)?;
        // The edited configuration is written out and read back: it passes exactly the checks a file does.
        let mut edited = Config::parse(&control::render::render(&edited), &self.config.origin)
            .map_err(|error| error.message)?;
        edited.warnings.clear();
        let previous = std::mem::replace(&mut self.config, edited);
        match self.publish() {
            Ok(took) => {
                let specs = health_specs(&self.config, &mut self.registry);
                if let Some((checker, _)) = &self.health {
                    checker.update(specs);
                }
                Ok(format!(
                    "{message}: generation {}{}",
                    self.generation,
                    took.map_or(String::new(), |t| format!(
                        " in use after {} us",
                        t.as_micros()
                    ))
                ))
            }
            Err(error) => {
                self.config = previous;
                Err(format!("refused ({error}); nothing changed"))
            }
        }
    }

    /// Withholds exactly `withheld` from the workers (the VRRP VIPs this node does not own now) and publishes
    /// when that changes anything.
    pub fn set_withheld(&mut self, withheld: BTreeSet<IpAddr>) -> Result<Option<Duration>, String> {
        if withheld == self.withheld {
            return Ok(None);
        }
        let previous = std::mem::replace(&mut self.withheld, withheld);
        self.publish().inspect_err(|_| self.withheld = previous)
    }

    /// The snapshot the workers were last given.
    pub fn current_snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.clone()
    }

    /// Applies health verdicts that arrived; republishes when one changed the table.
    pub fn apply_health_events(&mut self) {
        let Some((_, events)) = &self.health else {
            return;
        };
        let mut changed = false;
        while let Ok(event) = events.try_recv() {
            let id = BackendId(event.key);
            changed |= if event.up {
                self.down.remove(&id)
            } else {
                self.down.insert(id)
            };
            control::backend_state::announce(&event, &self.config, &self.registry);
        }
        if changed {
            match self.publish() {
                Ok(took) => log::info!(
                    "generation {} published after a health change{}",
                    self.generation,
                    took.map_or(String::new(), |t| format!(
                        ", in use after {} us",
                        t.as_micros()
                    ))
                ),
                Err(error) => log::error!("health change not applied: {error}"),
            }
        }
    }
}

/// What a reload from `old` to `new` changes in services, backends and network settings, in one line.
/// The backends the file says are drained (`drained = true`): the drains a start or a reload begins with.
pub fn drained_in_file(config: &Config, registry: &mut BackendIdRegistry) -> HashSet<BackendId> {
    let mut drained = HashSet::new();
    for service in &config.services {
        for backend in service.backends.iter().filter(|b| b.drained) {
            drained.insert(registry.id(service.key, backend.address, backend.port));
        }
    }
    drained
}

/// The running configuration as `sluice ctl save` writes it: the drains in force marked `drained = true`, whether
/// made by `ctl drain` or read from the file, and those ended by `ctl undrain` unmarked.
pub fn running_config(control: &mut ControlLoop) -> Config {
    let mut config = control.config.clone();
    for service in &mut config.services {
        for backend in &mut service.backends {
            let id = control
                .registry
                .id(service.key, backend.address, backend.port);
            backend.drained = control.drained.contains(&id);
        }
    }
    config
}

pub fn describe_changes(old: &Config, new: &Config) -> String {
    use balancer::snapshot::{describe_endpoint, describe_service};
    let mut parts = Vec::new();
    for service in &new.services {
        let name = describe_service(&service.key);
        let Some(before) = old.services.iter().find(|s| s.key == service.key) else {
            parts.push(format!(
                "service {name} added with {} backends",
                service.backends.len()
            ));
            continue;
        };
        if (before.quorum, before.hysteresis, &before.sorry_server)
            != (service.quorum, service.hysteresis, &service.sorry_server)
        {
            parts.push(format!(
                "service {name}: quorum {} hysteresis {}, sorry server {}",
                service.quorum,
                service.hysteresis,
                service
                    .sorry_server
                    .as_ref()
                    .map_or("none".into(), |sorry| {
                        describe_endpoint(sorry.address, sorry.port)
                    })
            ));
        }
        if (before.mode, before.scheduler, before.persistence)
            != (service.mode, service.scheduler, service.persistence)
        {
            parts.push(format!(
                "service {name} now {:?} {:?}{}",
                service.mode,
                service.scheduler,
                service.persistence.map_or(String::new(), |p| format!(
                    " persistent {} s",
                    p.timeout_ms / 1000
                ))
            ));
        }
        for backend in &service.backends {
            let endpoint = describe_endpoint(backend.address, backend.port);
            match before
                .backends
                .iter()
                .find(|b| (b.address, b.port) == (backend.address, backend.port))
            {
                None => parts.push(format!(
                    "backend {endpoint} added to {name} (weight {})",
                    backend.weight
                )),
                Some(previous) if previous.weight != backend.weight => parts.push(format!(
                    "backend {endpoint} in {name}: weight {} -> {}",
                    previous.weight, backend.weight
                )),
                Some(previous) if previous != backend => {
                    parts.push(format!("backend {endpoint} in {name}: settings changed"))
                }
                Some(_) => {}
            }
        }
        for backend in &before.backends {
            if !service
                .backends
                .iter()
                .any(|b| (b.address, b.port) == (backend.address, backend.port))
            {
                parts.push(format!(
                    "backend {} removed from {name}",
                    describe_endpoint(backend.address, backend.port)
                ));
            }
        }
    }
    for service in &old.services {
        if !new.services.iter().any(|s| s.key == service.key) {
            parts.push(format!(
                "service {} removed",
                describe_service(&service.key)
            ));
        }
    }
    if old.network != new.network {
        parts.push("[network] settings changed".into());
    }
    if parts.is_empty() {
        "nothing changed".into()
    } else {
        parts.join(", ")
    }
}

/// Registers SIGHUP: the returned flag is set when one arrives.
pub fn reload_signal() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    if let Err(error) = signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&flag))
    {
        log::warn!("no SIGHUP reload: {error}");
    }
    flag
}
