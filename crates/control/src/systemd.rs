//! systemd's service notification protocol (sd_notify(3)): one datagram of `KEY=VALUE` lines to the socket named by
//! `$NOTIFY_SOCKET`. A `Type=notify` unit waits for `READY=1` before it counts the service as started, so sluice
//! sends it only once its workers are forwarding. Written with std's `UnixDatagram` rather than linking libsystemd:
//! the protocol is one `sendto`.

use std::os::unix::net::UnixDatagram;

/// The environment variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (for instance `"READY=1\nSTATUS=forwarding"`) to systemd when sluice runs under it. `Ok(false)`
/// when `$NOTIFY_SOCKET` is not set (started by hand): nothing to tell.
pub fn notify(state: &str) -> Result<bool, String> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(socket) => {
            let socket = socket
                .to_str()
                .ok_or_else(|| format!("{NOTIFY_SOCKET} is not UTF-8"))?
                .to_owned();
            notify_to(&socket, state).map(|()| true)
        }
        None => Ok(false),
    }
}

/// Sends `state` to the notification socket `socket`: a path, or an abstract name written `@name`.
pub fn notify_to(socket: &str, state: &str) -> Result<(), String> {
    let sender = UnixDatagram::unbound().map_err(|error| format!("{NOTIFY_SOCKET}: {error}"))?;
    let sent = if let Some(name) = socket.strip_prefix('@') {
        abstract_address(name).and_then(|address| sender.send_to_addr(state.as_bytes(), &address))
    } else if socket.starts_with('/') {
        sender.send_to(state.as_bytes(), socket)
    } else {
        return Err(format!(
            "{NOTIFY_SOCKET}={socket:?} is neither a path nor an abstract socket name"
        ));
    };
    match sent {
        Ok(n) if n == state.len() => Ok(()),
        Ok(n) => Err(format!(
            "{NOTIFY_SOCKET} {socket}: sent {n} of {} bytes",
            state.len()
        )),
        Err(error) => Err(format!("{NOTIFY_SOCKET} {socket}: {error}")),
    }
}

fn abstract_address(name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_socket_receives_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        notify_to(path.to_str().unwrap(), "READY=1\nSTATUS=forwarding").unwrap();
        let mut buffer = [0u8; 64];
        let n = receiver.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"READY=1\nSTATUS=forwarding");
    }

    #[test]
    fn an_abstract_socket_receives_the_state() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("sluice-notify-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&address).unwrap();
        notify_to(&format!("@{name}"), "STOPPING=1").unwrap();
        let mut buffer = [0u8; 64];
        let n = receiver.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"STOPPING=1");
    }

    #[test]
    fn a_relative_name_or_a_missing_socket_is_an_error() {
        assert!(notify_to("relative", "READY=1")
            .unwrap_err()
            .contains("neither a path"));
        assert!(notify_to("/nonexistent/sluice-notify", "READY=1")
            .unwrap_err()
            .contains("/nonexistent/sluice-notify"));
    }
}
