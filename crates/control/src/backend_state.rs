//! What each backend weighs in the workers' table, from the configuration and the backends' state: the health
//! verdicts (a backend that is down is removed, or kept at weight 0 with `on_failure = "inhibit"`), drains (weight
//! 0), and each service's quorum (keepalived's `quorum` and `hysteresis`: while the healthy weight is below it, the
//! service's sorry server takes all the traffic and the real backends leave the table; when it returns they come
//! back and the sorry server leaves). Also what a health change sets off: its one log line and the backend's
//! `notify_up`/`notify_down` command, run on a thread of its own with its timeout.
//!
//! Everything here is a function of its inputs except the quorum, whose hysteresis needs the previous state
//! ([`Quorums`]). `ctl list` and the metrics show the same decisions the snapshot is built from.

use std::collections::HashSet;
use std::net::IpAddr;

use balancer::service::{BackendId, ServiceKey};
use balancer::snapshot::{describe_endpoint, describe_service, SnapshotSpec};

use crate::config::{BackendConfig, BackendIdRegistry, Config, ServiceConfig};
use crate::health::{HealthCheckSpec, HealthEvent};

/// Which services have lost their quorum.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Quorums {
    lost: HashSet<ServiceKey>,
}

/// One service's quorum after an update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumChange {
    pub service: ServiceKey,
    pub up: bool,
    pub healthy_weight: u64,
    pub quorum: u32,
    pub hysteresis: u32,
    pub sorry: bool,
}

impl QuorumChange {
    /// Logs the change: losing the quorum is a warning, regaining it information.
    pub fn log(&self) {
        if self.up {
            log::info!("{}", self.describe());
        } else {
            log::warn!("{}", self.describe());
        }
    }

    /// The log line of the change.
    pub fn describe(&self) -> String {
        let name = describe_service(&self.service);
        if self.up {
            format!(
                "quorum: service {name} regained its quorum (healthy weight {} >= {} + hysteresis {}){}",
                self.healthy_weight,
                self.quorum,
                self.hysteresis,
                if self.sorry {
                    ": the real backends take the traffic back from the sorry server"
                } else {
                    ""
                }
            )
        } else {
            format!(
                "quorum: service {name} lost its quorum (healthy weight {} < {} - hysteresis {}){}",
                self.healthy_weight,
                self.quorum,
                self.hysteresis,
                if self.sorry {
                    ": the sorry server takes the traffic"
                } else {
                    "; no sorry_server, the healthy backends keep it"
                }
            )
        }
    }
}

/// The sum of the weights of `service`'s real backends that are up and not drained: what its quorum is held
/// against.
pub fn healthy_weight(
    service: &ServiceConfig,
    registry: &mut BackendIdRegistry,
    down: &HashSet<BackendId>,
    drained: &HashSet<BackendId>,
) -> u64 {
    service
        .backends
        .iter()
        .filter(|backend| {
            let id = registry.id(service.key, backend.address, backend.port);
            !down.contains(&id) && !drained.contains(&id)
        })
        .map(|backend| u64::from(backend.weight))
        .sum()
}

impl Quorums {
    pub fn is_lost(&self, service: &ServiceKey) -> bool {
        self.lost.contains(service)
    }

    /// Brings every service's quorum up to date with the backends' state; returns the services whose quorum
    /// changed. keepalived's rule: lost when the healthy weight is 0 or below `quorum - hysteresis`, regained at
    /// `quorum + hysteresis`, so a weight between the two keeps the state it has.
    pub fn update(
        &mut self,
        config: &Config,
        registry: &mut BackendIdRegistry,
        down: &HashSet<BackendId>,
        drained: &HashSet<BackendId>,
    ) -> Vec<QuorumChange> {
        let mut changes = Vec::new();
        let mut present = HashSet::new();
        for service in &config.services {
            present.insert(service.key);
            let weight = healthy_weight(service, registry, down, drained);
            let quorum = u64::from(service.quorum);
            let hysteresis = u64::from(service.hysteresis);
            let lost = self.lost.contains(&service.key);
            let now_lost = if lost {
                weight < quorum + hysteresis
            } else {
                weight == 0 || weight < quorum.saturating_sub(hysteresis)
            };
            // A service without backends has nothing to lose: it drops its traffic either way unless a sorry server
            // is configured, which then serves it.
            let now_lost =
                now_lost && (!service.backends.is_empty() || service.sorry_server.is_some());
            if now_lost != lost {
                if now_lost {
                    self.lost.insert(service.key);
                } else {
                    self.lost.remove(&service.key);
                }
                changes.push(QuorumChange {
                    service: service.key,
                    up: !now_lost,
                    healthy_weight: weight,
                    quorum: service.quorum,
                    hysteresis: service.hysteresis,
                    sorry: service.sorry_server.is_some(),
                });
            }
        }
        self.lost.retain(|key| present.contains(key));
        changes
    }
}

/// Why a backend has the weight it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendState {
    Up,
    /// Held down by its checks, out of the table.
    Down,
    /// Held down by its checks, in the table at weight 0 (`on_failure = "inhibit"`).
    Inhibited,
    Drained,
    /// A real backend out of the table while the sorry server serves (quorum lost).
    QuorumLost,
    /// The sorry server while the quorum holds: out of the table.
    SorryStandby,
    /// The sorry server taking the traffic.
    SorryActive,
}

impl BackendState {
    pub fn name(self) -> &'static str {
        match self {
            BackendState::Up => "up",
            BackendState::Down => "down",
            BackendState::Inhibited => "down-inhibited",
            BackendState::Drained => "drained",
            BackendState::QuorumLost => "quorum-lost",
            BackendState::SorryStandby => "sorry-standby",
            BackendState::SorryActive => "sorry-active",
        }
    }
}

/// A backend's (or the sorry server's) place in the workers' table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub id: BackendId,
    pub address: IpAddr,
    pub port: u16,
    pub configured_weight: u32,
    /// `None`: not in the table.
    pub weight: Option<u32>,
    pub state: BackendState,
    pub sorry: bool,
    pub healthy: bool,
    pub drained: bool,
}

/// The decisions for `service`'s real backends then its sorry server, in the order of [`ServiceConfig::all_backends`].
pub fn decide(
    service: &ServiceConfig,
    registry: &mut BackendIdRegistry,
    down: &HashSet<BackendId>,
    drained: &HashSet<BackendId>,
    quorums: &Quorums,
) -> Vec<Decision> {
    let sorry_serves = quorums.is_lost(&service.key) && service.sorry_server.is_some();
    let mut decisions = Vec::with_capacity(service.backends.len() + 1);
    for backend in &service.backends {
        let id = registry.id(service.key, backend.address, backend.port);
        let healthy = !down.contains(&id);
        let is_drained = drained.contains(&id);
        let (weight, state) = if sorry_serves {
            (None, BackendState::QuorumLost)
        } else if !healthy && backend.inhibit_on_failure() {
            (Some(0), BackendState::Inhibited)
        } else if !healthy {
            (None, BackendState::Down)
        } else if is_drained {
            (Some(0), BackendState::Drained)
        } else {
            (Some(backend.weight), BackendState::Up)
        };
        decisions.push(Decision {
            id,
            address: backend.address,
            port: backend.port,
            configured_weight: backend.weight,
            weight,
            state,
            sorry: false,
            healthy,
            drained: is_drained,
        });
    }
    if let Some(sorry) = &service.sorry_server {
        let id = registry.id(service.key, sorry.address, sorry.port);
        let is_drained = drained.contains(&id);
        let (weight, state) = if sorry_serves {
            let weight = if is_drained { 0 } else { sorry.weight };
            (Some(weight), BackendState::SorryActive)
        } else {
            (None, BackendState::SorryStandby)
        };
        decisions.push(Decision {
            id,
            address: sorry.address,
            port: sorry.port,
            configured_weight: sorry.weight,
            weight,
            state,
            sorry: true,
            healthy: true,
            drained: is_drained,
        });
    }
    decisions
}

/// The snapshot spec of `config` with every backend at the weight [`decide`] gives it (out of the table when
/// `None`). Brings the quorums up to date first and returns their changes, for the log.
pub fn effective_spec(
    config: &Config,
    port_macs: &[[u8; 6]],
    registry: &mut BackendIdRegistry,
    down: &HashSet<BackendId>,
    drained: &HashSet<BackendId>,
    quorums: &mut Quorums,
) -> Result<(SnapshotSpec, Vec<QuorumChange>), String> {
    let changes = quorums.update(config, registry, down, drained);
    let mut spec = config
        .snapshot_spec(port_macs, registry)
        .map_err(|e| e.to_string())?;
    for (service, configured) in spec.services.iter_mut().zip(&config.services) {
        let weights: std::collections::HashMap<BackendId, Option<u32>> =
            decide(configured, registry, down, drained, quorums)
                .into_iter()
                .map(|decision| (decision.id, decision.weight))
                .collect();
        let mut kept = Vec::with_capacity(service.backends.len());
        for mut backend in service.backends.drain(..) {
            if let Some(Some(weight)) = weights.get(&backend.id) {
                backend.weight = *weight;
                kept.push(backend);
            }
        }
        service.backends = kept;
    }
    Ok((spec, changes))
}

/// The health checks `config` asks for, keyed by backend id (the sorry server is not checked, as in keepalived).
pub fn health_specs(
    config: &Config,
    registry: &mut BackendIdRegistry,
) -> Vec<(u32, HealthCheckSpec)> {
    let mut specs = Vec::new();
    for service in &config.services {
        for backend in &service.backends {
            if backend.health_checks.is_empty() {
                continue;
            }
            let id = registry.id(service.key, backend.address, backend.port);
            specs.push((
                id.0,
                HealthCheckSpec {
                    target: std::net::SocketAddr::new(backend.address, backend.port),
                    checks: backend.health_checks.clone(),
                    alpha: backend.alpha,
                },
            ));
        }
    }
    specs
}

/// The backends of `config` that start down: those with `alpha` (and checks) that `previous` did not have, so
/// they take no traffic before their checks pass. `previous` is `None` at start.
pub fn alpha_newcomers(
    previous: Option<&Config>,
    config: &Config,
    registry: &mut BackendIdRegistry,
) -> Vec<BackendId> {
    let known = |key: &ServiceKey, backend: &BackendConfig| {
        previous.is_some_and(|previous| {
            previous.services.iter().any(|service| {
                service.key == *key
                    && service.backends.iter().any(|b| {
                        (b.address, b.port) == (backend.address, backend.port)
                            && b.alpha
                            && !b.health_checks.is_empty()
                    })
            })
        })
    };
    let mut ids = Vec::new();
    for service in &config.services {
        for backend in &service.backends {
            // Every backend is asked its id, in the file's order, so that ids follow the file as without alpha.
            let id = registry.id(service.key, backend.address, backend.port);
            if backend.alpha && !backend.health_checks.is_empty() && !known(&service.key, backend) {
                ids.push(id);
            }
        }
    }
    ids
}

/// Brings the backends held down up to date after the configuration changed from `previous` to `config`: a
/// backend that no longer has checks is no longer held down (nothing would ever bring it up), and a new backend
/// with `alpha` starts down.
pub fn refresh_down(
    previous: &Config,
    config: &Config,
    registry: &mut BackendIdRegistry,
    down: &mut HashSet<BackendId>,
) {
    let checked: HashSet<BackendId> = health_specs(config, registry)
        .into_iter()
        .map(|(key, _)| BackendId(key))
        .collect();
    down.retain(|id| checked.contains(id));
    down.extend(alpha_newcomers(Some(previous), config, registry));
}

/// The one log line of a health change, naming the service, and the backend's notify command for it, started on
/// a thread of its own (bounded by its `notify_timeout`; its outcome is logged).
pub fn announce(event: &HealthEvent, config: &Config, registry: &BackendIdRegistry) {
    crate::health::log_change(event, registry);
    let id = BackendId(event.key);
    let Some((key, address, port)) = registry.ids().get(&id).copied() else {
        return;
    };
    let Some(backend) = config
        .services
        .iter()
        .filter(|service| service.key == key)
        .flat_map(|service| service.backends.iter())
        .find(|backend| (backend.address, backend.port) == (address, port))
    else {
        return;
    };
    let command = if event.up {
        &backend.notify.up
    } else {
        &backend.notify.down
    };
    if let Some(command) = command {
        notify(
            command.clone(),
            key,
            address,
            port,
            event.up,
            backend.notify.timeout,
        );
    }
}

/// Runs a notify command off the control thread.
fn notify(
    command: String,
    service: ServiceKey,
    address: IpAddr,
    port: u16,
    up: bool,
    timeout: std::time::Duration,
) {
    let state = if up { "up" } else { "down" };
    let which = if up { "notify_up" } else { "notify_down" };
    let backend = describe_endpoint(address, port);
    let service_name = describe_service(&service);
    let env = vec![
        ("SLUICE_SERVICE", service_name.clone()),
        ("SLUICE_BACKEND", backend.clone()),
        ("SLUICE_BACKEND_ADDRESS", address.to_string()),
        ("SLUICE_BACKEND_PORT", port.to_string()),
        ("SLUICE_STATE", state.to_owned()),
    ];
    let spawned = std::thread::Builder::new()
        .name("notify".into())
        .stack_size(64 * 1024)
        .spawn(move || match crate::script::run(&command, &env, timeout) {
            Ok(()) => {
                log::info!("{which}: service {service_name} backend {backend}: {command:?} ran")
            }
            Err(error) => {
                log::warn!("{which}: service {service_name} backend {backend}: {command:?} {error}")
            }
        });
    if let Err(error) = spawned {
        log::warn!("{which}: cannot start a thread for the command: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[[port]]
name = "p"
device = "net_null0"
addresses = ["10.0.0.1/24"]
"#;

    fn config(service: &str) -> Config {
        Config::parse(&format!("{BASE}{service}"), "t.toml").unwrap()
    }

    fn service(quorum: u32, hysteresis: u32) -> String {
        format!(
            "[[service]]\nvip = \"10.0.0.100\"\nport = 80\nmode = \"dr\"\nquorum = {quorum}\nhysteresis = {hysteresis}\n\
             sorry_server = {{ address = \"10.0.0.30\" }}\n\
             [[service.backend]]\naddress = \"10.0.0.11\"\nweight = 2\n\
             [[service.backend]]\naddress = \"10.0.0.12\"\nweight = 2\n\
             [[service.backend]]\naddress = \"10.0.0.13\"\nweight = 2\n"
        )
    }

    fn ids(config: &Config, registry: &mut BackendIdRegistry) -> Vec<BackendId> {
        let service = &config.services[0];
        service
            .all_backends()
            .map(|b| registry.id(service.key, b.address, b.port))
            .collect()
    }

    #[test]
    fn the_sorry_server_serves_while_the_quorum_is_lost_with_hysteresis() {
        let config = config(&service(4, 1));
        let mut registry = BackendIdRegistry::new();
        let id = ids(&config, &mut registry);
        let mut quorums = Quorums::default();
        let drained = HashSet::new();
        let mut down = HashSet::new();
        let weights =
            |quorums: &Quorums, down: &HashSet<BackendId>, registry: &mut BackendIdRegistry| {
                decide(&config.services[0], registry, down, &drained, quorums)
                    .iter()
                    .map(|d| d.weight)
                    .collect::<Vec<_>>()
            };
        assert!(quorums
            .update(&config, &mut registry, &down, &drained)
            .is_empty());
        assert_eq!(
            weights(&quorums, &down, &mut registry),
            [Some(2), Some(2), Some(2), None]
        );
        // 4 healthy: not below 4 - 1.
        down.insert(id[0]);
        assert!(quorums
            .update(&config, &mut registry, &down, &drained)
            .is_empty());
        // 2 healthy: below 3, lost; the real backends leave, the sorry server serves.
        down.insert(id[1]);
        let changes = quorums.update(&config, &mut registry, &down, &drained);
        assert_eq!(changes.len(), 1);
        assert!(!changes[0].up);
        assert!(changes[0]
            .describe()
            .contains("the sorry server takes the traffic"));
        assert_eq!(
            weights(&quorums, &down, &mut registry),
            [None, None, None, Some(1)]
        );
        // 4 healthy: not yet 4 + 1; still lost.
        down.remove(&id[1]);
        assert!(quorums
            .update(&config, &mut registry, &down, &drained)
            .is_empty());
        // 6 healthy: regained; the sorry server leaves.
        down.remove(&id[0]);
        let changes = quorums.update(&config, &mut registry, &down, &drained);
        assert!(changes[0].up);
        assert_eq!(
            weights(&quorums, &down, &mut registry),
            [Some(2), Some(2), Some(2), None]
        );
    }

    #[test]
    fn inhibit_keeps_a_down_backend_at_weight_zero_and_drain_zeroes_a_healthy_one() {
        let text = "[[service]]\nvip = \"10.0.0.100\"\nport = 80\nmode = \"dr\"\n\
             [[service.backend]]\naddress = \"10.0.0.11\"\nweight = 5\n[service.backend.health_check]\ntype = \"tcp\"\n\
             on_failure = \"inhibit\"\n\
             [[service.backend]]\naddress = \"10.0.0.12\"\nweight = 7\n";
        let config = config(text);
        let mut registry = BackendIdRegistry::new();
        let id = ids(&config, &mut registry);
        let down = HashSet::from([id[0]]);
        let drained = HashSet::from([id[1]]);
        let decisions = decide(
            &config.services[0],
            &mut registry,
            &down,
            &drained,
            &Quorums::default(),
        );
        assert_eq!(decisions[0].weight, Some(0));
        assert_eq!(decisions[0].state, BackendState::Inhibited);
        assert_eq!(decisions[0].configured_weight, 5);
        assert_eq!(decisions[1].weight, Some(0));
        assert_eq!(decisions[1].state, BackendState::Drained);
    }

    #[test]
    fn alpha_backends_start_down_only_when_new() {
        let text = "[[service]]\nvip = \"10.0.0.100\"\nport = 80\nmode = \"dr\"\nalpha = true\n\
             [[service.backend]]\naddress = \"10.0.0.11\"\n[service.backend.health_check]\ntype = \"tcp\"\n\
             [[service.backend]]\naddress = \"10.0.0.12\"\nalpha = false\n[service.backend.health_check]\ntype = \"tcp\"\n\
             [[service.backend]]\naddress = \"10.0.0.13\"\n";
        let config = config(text);
        let mut registry = BackendIdRegistry::new();
        let id = ids(&config, &mut registry);
        assert_eq!(alpha_newcomers(None, &config, &mut registry), [id[0]]);
        assert!(alpha_newcomers(Some(&config), &config, &mut registry).is_empty());
    }

    #[test]
    fn a_backend_whose_checks_are_removed_is_no_longer_held_down() {
        let checked = "[[service]]\nvip = \"10.0.0.100\"\nport = 80\nmode = \"dr\"\n\
             [[service.backend]]\naddress = \"10.0.0.11\"\n[service.backend.health_check]\ntype = \"tcp\"\n\
             [[service.backend]]\naddress = \"10.0.0.12\"\n[service.backend.health_check]\ntype = \"tcp\"\n";
        let before = config(checked);
        let after =
            config(&checked.replacen("[service.backend.health_check]\ntype = \"tcp\"\n", "", 1));
        let mut registry = BackendIdRegistry::new();
        let id = ids(&before, &mut registry);
        let mut down = HashSet::from([id[0], id[1]]);
        refresh_down(&before, &after, &mut registry, &mut down);
        assert_eq!(down, HashSet::from([id[1]]));
    }
}
