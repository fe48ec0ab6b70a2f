//! The kernel exception path of `sluice run`: one DPDK `net_tap` per data port, whose kernel side carries the
//! port's MAC and addresses, so that the node's own traffic (BGP and BFD with the router, ssh, the kernel's ARP and
//! neighbour discovery) works through the data port while sluice owns the device.
//!
//! The taps are created with the EAL (`--vdev=net_tap_sl<N>,iface=<name>`, or with `kernel_device = "virtio_user"`
//! `--vdev=virtio_user<N>,path=/dev/vhost-net,...`, whose vhost-net backend makes a kernel tap of that name); when
//! sluice exits, however it exits, the kernel removes them with their addresses. IP forwarding is turned off on them: the kernel never routes
//! between sluice's ports for anyone.

use control::config::{Config, KernelDevice};

/// vhost-net, which `virtio_user` needs for a kernel interface.
pub const VHOST_NET: &str = "/dev/vhost-net";

use crate::netlink::{interface_index, Netlink};

/// The DPDK device name of port `index`'s kernel interface.
pub fn tap_device_name(config: &Config, index: usize) -> String {
    match config.network.kernel_device {
        KernelDevice::Tap => format!("net_tap_sl{index}"),
        KernelDevice::VirtioUser => format!("virtio_user{index}"),
    }
}

/// The `--vdev` arguments of the kernel interfaces, when the configuration asks for the exception path; an error
/// when `virtio_user` is asked for and this machine has no vhost-net.
pub fn tap_vdev_arguments(config: &Config) -> Result<Vec<String>, String> {
    if !enabled(config) {
        return Ok(Vec::new());
    }
    if config.network.kernel_device == KernelDevice::VirtioUser
        && !std::path::Path::new(VHOST_NET).exists()
    {
        return Err(format!(
            "kernel_device = \"virtio_user\" needs {VHOST_NET} (modprobe vhost_net); this machine has none: use \
             kernel_device = \"tap\""
        ));
    }
    let queues = config.workers.cores.len();
    Ok(config
        .ports
        .iter()
        .enumerate()
        .map(|(index, port)| {
            let name = tap_device_name(config, index);
            match config.network.kernel_device {
                KernelDevice::Tap => format!("--vdev={name},iface={}", port.kernel_interface),
                KernelDevice::VirtioUser => format!(
                    "--vdev={name},path={VHOST_NET},queues={queues},queue_size=1024,iface={}",
                    port.kernel_interface
                ),
            }
        })
        .collect())
}

/// Whether `config` runs the exception path (the balancer with `kernel_exception_path = true`).
pub fn enabled(config: &Config) -> bool {
    config.network.kernel_exception_path && config.pipe.is_none()
}

/// One port's kernel interface once it exists.
#[derive(Clone, Debug)]
pub struct KernelInterface {
    pub name: String,
    pub index: u32,
}

/// Gives each port's kernel interface the port's MAC and addresses, brings it up and turns forwarding off on it.
pub fn set_up(
    config: &Config,
    macs: &[[u8; 6]],
    netlink: &mut Netlink,
) -> Result<Vec<KernelInterface>, String> {
    let mut interfaces = Vec::new();
    for (port, mac) in config.ports.iter().zip(macs) {
        let name = &port.kernel_interface;
        let index = interface_index(name)
            .map_err(|error| format!("port {}: kernel interface: {error}", port.name))?;
        netlink
            .set_mac_and_up(index, *mac)
            .map_err(|error| format!("port {}: {name}: {error}", port.name))?;
        for family in ["ipv4", "ipv6"] {
            let path = format!("/proc/sys/net/{family}/conf/{name}/forwarding");
            if std::path::Path::new(&path).exists() {
                std::fs::write(&path, "0")
                    .map_err(|error| format!("port {}: {path}: {error}", port.name))?;
            }
        }
        for prefix in &port.addresses {
            netlink
                .add_address(index, prefix.addr, prefix.len)
                .map_err(|error| format!("port {}: {name}: {error}", port.name))?;
        }
        log::info!(
            "port {}: kernel interface {name} (ifindex {index}) with the port's MAC and {} addresses",
            port.name,
            port.addresses.len()
        );
        interfaces.push(KernelInterface {
            name: name.clone(),
            index,
        });
    }
    Ok(interfaces)
}
