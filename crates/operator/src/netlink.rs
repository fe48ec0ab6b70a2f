//! The few rtnetlink requests sluice makes on its kernel interfaces, synchronously and acknowledged: set a MAC,
//! bring a link up, add and remove an address.

use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// errno values the callers treat as "already so".
const EEXIST: i32 = 17;
const EADDRNOTAVAIL: i32 = 99;

/// A route netlink socket.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
}

/// The interface index of `name`, from sysfs.
pub fn interface_index(name: &str) -> Result<u32, String> {
    let path = format!("/sys/class/net/{name}/ifindex");
    let text = std::fs::read_to_string(&path)
        .map_err(|error| format!("interface {name}: {path}: {error}"))?;
    text.trim()
        .parse()
        .map_err(|_| format!("interface {name}: {path} holds {text:?}"))
}

impl Netlink {
    pub fn open() -> Result<Netlink, String> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|error| format!("netlink socket: {error}"))?;
        socket
            .bind_auto()
            .map_err(|error| format!("netlink bind: {error}"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|error| format!("netlink connect: {error}"))?;
        Ok(Netlink {
            socket,
            sequence: 0,
        })
    }

    /// Sends `message` and waits for the kernel's acknowledgement; `Err(errno)` when it refused.
    fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> Result<(), i32> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut packet =
            NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(message));
        packet.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        packet.header.sequence_number = self.sequence;
        packet.finalize();
        let mut buffer = vec![0; packet.header.length as usize];
        packet.serialize(&mut buffer[..]);
        self.socket
            .send(&buffer, 0)
            .map_err(|error| error.raw_os_error().unwrap_or(5))?;
        let mut receive = vec![0u8; 8192];
        loop {
            let size = self
                .socket
                .recv(&mut &mut receive[..], 0)
                .map_err(|error| error.raw_os_error().unwrap_or(5))?;
            let mut offset = 0;
            while offset < size {
                let reply: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&receive[offset..size]).map_err(|_| 74)?;
                let length = reply.header.length as usize;
                if reply.header.sequence_number == self.sequence {
                    if let NetlinkPayload::Error(error) = reply.payload {
                        return match error.code {
                            None => Ok(()),
                            Some(code) => Err(-code.get()),
                        };
                    }
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }

    /// Sets the MAC of interface `index` and brings it up.
    pub fn set_mac_and_up(&mut self, index: u32, mac: [u8; 6]) -> Result<(), String> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        message
            .attributes
            .push(LinkAttribute::Address(mac.to_vec()));
        self.request(RouteNetlinkMessage::SetLink(message), 0)
            .map_err(|errno| format!("setting the MAC of interface {index}: {}", describe(errno)))
    }

    fn address_message(index: u32, addr: IpAddr, prefix_len: u8) -> AddressMessage {
        let mut message = AddressMessage::default();
        message.header.family = if addr.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        message.header.prefix_len = prefix_len;
        message.header.index = index;
        message.attributes.push(AddressAttribute::Local(addr));
        message.attributes.push(AddressAttribute::Address(addr));
        message
    }

    /// Puts `addr/prefix_len` on interface `index` (present already is fine). IPv6 addresses skip duplicate
    /// address detection: the balancer owns them.
    pub fn add_address(&mut self, index: u32, addr: IpAddr, prefix_len: u8) -> Result<(), String> {
        let mut message = Netlink::address_message(index, addr, prefix_len);
        if addr.is_ipv6() {
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match self.request(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_REPLACE,
        ) {
            Ok(()) | Err(EEXIST) => Ok(()),
            Err(errno) => Err(format!(
                "adding {addr}/{prefix_len} to interface {index}: {}",
                describe(errno)
            )),
        }
    }

    /// Takes `addr/prefix_len` off interface `index` (absent already is fine).
    pub fn remove_address(
        &mut self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), String> {
        let message = Netlink::address_message(index, addr, prefix_len);
        match self.request(RouteNetlinkMessage::DelAddress(message), 0) {
            Ok(()) | Err(EADDRNOTAVAIL) => Ok(()),
            Err(errno) => Err(format!(
                "removing {addr}/{prefix_len} from interface {index}: {}",
                describe(errno)
            )),
        }
    }
}

fn describe(errno: i32) -> String {
    format!(
        "{} (errno {errno})",
        std::io::Error::from_raw_os_error(errno)
    )
}
