//! ipvsadm's edits on the running configuration: `add-service`, `remove-service`, `add-backend`,
//! `remove-backend`, `set-weight` (-A/-D/-a/-d/-e), each validated as a file is.

use std::net::SocketAddr;

use balancer::service::{ForwardingMode, ServiceKey};
use balancer::snapshot::describe_service;
use control::protocol::Request;

use crate::control_loop::ControlLoop;

/// ipvsadm's -A/-D/-a/-d/-e on the running configuration.
pub(super) fn edit(control: &mut ControlLoop, request: Request) -> Result<String, String> {
    use control::config::{BackendConfig, ServiceConfig};
    match request {
        Request::AddService {
            key,
            mode,
            scheduler,
        } => {
            let name = describe_service(&key);
            if key.port == 0 && !matches!(mode, ForwardingMode::Dr | ForwardingMode::Tun) {
                return Err(format!(
                    "service {name}: port 0 (all ports) is allowed in dr and tun modes only"
                ));
            }
            control.edit(|config| {
                if config.services.iter().any(|s| s.key == key) {
                    return Err(format!("service {name} exists"));
                }
                config
                    .services
                    .push(ServiceConfig::plain(key, mode, scheduler));
                Ok(format!("added service {name}"))
            })
        }
        Request::RemoveService { key } => {
            let name = describe_service(&key);
            control.edit(|config| {
                let before = config.services.len();
                config.services.retain(|s| s.key != key);
                if config.services.len() == before {
                    return Err(format!("no service {name}"));
                }
                Ok(format!("removed service {name}"))
            })
        }
        Request::AddBackend {
            key,
            backend,
            weight,
        } => edit_backend(control, key, backend, |service, position| {
            let name = describe_service(&key);
            if position.is_some() {
                return Err(format!("{backend} is already in {name}"));
            }
            let maps_ports = matches!(service.mode, ForwardingMode::Nat | ForwardingMode::FullNat);
            if !maps_ports && backend.port() != key.port {
                return Err(format!(
                    "{:?} cannot map ports: the backend port must be {}",
                    service.mode, key.port
                ));
            }
            if maps_ports && backend.port() == 0 {
                return Err("nat and fullnat backends need a port".into());
            }
            if backend.is_ipv4() != key.vip.is_ipv4() {
                return Err(format!(
                    "{backend} is not of the family of VIP {}; nothing changed",
                    key.vip
                ));
            }
            service
                .backends
                .push(BackendConfig::plain(backend.ip(), backend.port(), weight));
            Ok(format!("added {backend} to {name} with weight {weight}"))
        }),
        Request::RemoveBackend { key, backend } => {
            edit_backend(control, key, backend, |service, position| {
                let name = describe_service(&key);
                let index = position.ok_or_else(|| format!("{backend} is not in {name}"))?;
                service.backends.remove(index);
                Ok(format!("removed {backend} from {name}"))
            })
        }
        Request::SetWeight {
            key,
            backend,
            weight,
        } => edit_backend(control, key, backend, |service, position| {
            let name = describe_service(&key);
            let index = position.ok_or_else(|| format!("{backend} is not in {name}"))?;
            service.backends[index].weight = weight;
            Ok(format!("{backend} in {name} now has weight {weight}"))
        }),
        other => Err(format!("{other:?} is not an edit")),
    }
}

/// Applies `change` to the service `key`, given the position of `backend` in it.
fn edit_backend(
    control: &mut ControlLoop,
    key: ServiceKey,
    backend: SocketAddr,
    change: impl FnOnce(&mut control::config::ServiceConfig, Option<usize>) -> Result<String, String>,
) -> Result<String, String> {
    control.edit(|config| {
        let service = config
            .services
            .iter_mut()
            .find(|s| s.key == key)
            .ok_or_else(|| format!("no service {}", describe_service(&key)))?;
        let position = service
            .backends
            .iter()
            .position(|b| b.address == backend.ip() && b.port == backend.port());
        change(service, position)
    })
}
