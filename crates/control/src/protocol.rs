//! The two request grammars a running sluice answers, parsed without I/O so they can be fuzzed: one line of the
//! control socket (`sluice ctl`), and the head of an HTTP request to the metrics endpoint.

use std::net::SocketAddr;

use balancer::service::{ForwardingMode, SchedulerKind, ServiceKey};

/// The longest control line accepted, newline included.
pub const MAX_CONTROL_LINE: usize = 4096;
/// The longest HTTP request head accepted by the metrics endpoint.
pub const MAX_HTTP_HEAD: usize = 8192;

/// One command of the control socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    List,
    Stats,
    Rate,
    Conns,
    /// ipvsadm -Lnc: each connection with its state, expiry, client, VIP and backend, `limit` of them after
    /// skipping `offset`.
    Connections {
        filter: ConnectionFilter,
        offset: usize,
        limit: usize,
    },
    /// ipvsadm -L --timeout: the idle timeouts.
    Timeouts,
    /// ipvsadm --set TCP TCPFIN UDP: seconds, 0 leaves one as it is.
    SetTimeouts {
        tcp: u64,
        tcpfin: u64,
        udp: u64,
    },
    /// ipvsadm -Z: `stats` counts from now.
    Zero,
    /// ipvsadm -S: the running configuration (with `ctl` edits) as a configuration file.
    Save,
    /// The health of the connection-exception sync with the peers.
    Sync,
    Reload,
    Drain(SocketAddr),
    Undrain(SocketAddr),
    Trace {
        client: SocketAddr,
        vip: SocketAddr,
        protocol: u8,
    },
    AddService {
        key: ServiceKey,
        mode: ForwardingMode,
        scheduler: SchedulerKind,
    },
    RemoveService {
        key: ServiceKey,
    },
    AddBackend {
        key: ServiceKey,
        backend: SocketAddr,
        weight: u32,
    },
    RemoveBackend {
        key: ServiceKey,
        backend: SocketAddr,
    },
    SetWeight {
        key: ServiceKey,
        backend: SocketAddr,
        weight: u32,
    },
}

/// Which connections `connections` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionFilter {
    All,
    Service(ServiceKey),
    Backend(SocketAddr),
}

/// The most connections one `connections` answer lists.
pub const MAX_LISTED: usize = 10_000;

/// What the control socket answers to a line it cannot use.
pub const USAGE: &str =
    "commands are list, stats, rate, conns, connections [service VIP:PORT tcp|udp | backend ADDR:PORT] \
    [offset N] [limit N], timeout, set-timeout TCP TCPFIN UDP, zero, save, reload, drain ADDR:PORT, undrain ADDR:PORT, \
    trace CLIENT:PORT VIP:PORT [tcp|udp], add-service VIP:PORT tcp|udp MODE [SCHEDULER], \
    remove-service VIP:PORT tcp|udp, add-backend VIP:PORT tcp|udp ADDR:PORT [WEIGHT], \
    remove-backend VIP:PORT tcp|udp ADDR:PORT, set-weight VIP:PORT tcp|udp ADDR:PORT WEIGHT";

fn protocol_number(text: &str) -> Result<u8, String> {
    match text {
        "tcp" => Ok(6),
        "udp" => Ok(17),
        other => Err(format!("protocol {other:?}: tcp or udp")),
    }
}

fn endpoint(text: &str, what: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{what} {text:?} is not ADDRESS:PORT (write IPv6 as [addr]:port)"))
}

fn weight(text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .filter(|weight| *weight <= 65535)
        .ok_or_else(|| format!("weight {text:?}: 0 to 65535"))
}

/// `connections [service VIP:PORT tcp|udp | backend ADDR:PORT] [offset N] [limit N]`.
fn connections(args: &[&str]) -> Result<Request, String> {
    let mut filter = ConnectionFilter::All;
    let (mut offset, mut limit) = (0, 100);
    let mut words = args.iter();
    while let Some(&word) = words.next() {
        let mut take = |what: &str| {
            words
                .next()
                .copied()
                .ok_or_else(|| format!("connections: {word} needs {what}"))
        };
        match word {
            "service" => {
                let vip = endpoint(take("VIP:PORT")?, "VIP")?;
                let protocol = protocol_number(take("tcp|udp")?)?;
                filter = ConnectionFilter::Service(ServiceKey {
                    vip: vip.ip(),
                    port: vip.port(),
                    protocol,
                });
            }
            "backend" => filter = ConnectionFilter::Backend(endpoint(take("ADDR:PORT")?, "backend")?),
            "offset" | "limit" => {
                let text = take("a number")?;
                let number = text
                    .parse::<usize>()
                    .map_err(|_| format!("connections: {word} {text:?} is not a number"))?;
                if word == "offset" {
                    offset = number;
                } else if (1..=MAX_LISTED).contains(&number) {
                    limit = number;
                } else {
                    return Err(format!("connections: limit 1 to {MAX_LISTED}"));
                }
            }
            other => {
                return Err(format!(
                    "connections: {other:?}: use service VIP:PORT tcp|udp, backend ADDR:PORT, offset N, limit N"
                ))
            }
        }
    }
    Ok(Request::Connections {
        filter,
        offset,
        limit,
    })
}

/// Parses one control line (without its newline). Every error says what is wrong.
pub fn parse_request(line: &str) -> Result<Request, String> {
    if line.len() >= MAX_CONTROL_LINE {
        return Err(format!(
            "the command is longer than {MAX_CONTROL_LINE} bytes"
        ));
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&verb, args)) = words.split_first() else {
        return Err(format!("empty command: {USAGE}"));
    };
    let at_most = |count: usize| {
        if args.len() > count {
            Err(format!("{verb}: too many words ({USAGE})"))
        } else {
            Ok(())
        }
    };
    let service = || -> Result<ServiceKey, String> {
        let (Some(vip), Some(protocol)) = (args.first(), args.get(1)) else {
            return Err(format!("{verb}: give VIP:PORT and tcp|udp first"));
        };
        let vip = endpoint(vip, "VIP")?;
        Ok(ServiceKey {
            vip: vip.ip(),
            port: vip.port(),
            protocol: protocol_number(protocol)?,
        })
    };
    let backend = || -> Result<SocketAddr, String> {
        let text = args
            .get(2)
            .ok_or_else(|| format!("{verb}: give the backend as ADDR:PORT"))?;
        endpoint(text, "backend")
    };
    let request = match verb {
        "list" | "stats" | "rate" | "conns" | "sync" | "reload" | "save" | "zero" | "timeout" => {
            at_most(0)?;
            match verb {
                "list" => Request::List,
                "stats" => Request::Stats,
                "rate" => Request::Rate,
                "conns" => Request::Conns,
                "sync" => Request::Sync,
                "save" => Request::Save,
                "zero" => Request::Zero,
                "timeout" => Request::Timeouts,
                _ => Request::Reload,
            }
        }
        "connections" => connections(args)?,
        "set-timeout" => {
            at_most(3)?;
            let seconds = |index: usize| -> Result<u64, String> {
                let text = args
                    .get(index)
                    .ok_or("set-timeout TCP TCPFIN UDP (seconds; 0 leaves one as it is)")?;
                text.parse::<u64>()
                    .map_err(|_| format!("set-timeout: {text:?} is not a number of seconds"))
            };
            Request::SetTimeouts {
                tcp: seconds(0)?,
                tcpfin: seconds(1)?,
                udp: seconds(2)?,
            }
        }
        "drain" | "undrain" => {
            at_most(1)?;
            let address = endpoint(
                args.first()
                    .ok_or_else(|| format!("{verb}: give the backend as ADDR:PORT"))?,
                "backend",
            )?;
            if verb == "drain" {
                Request::Drain(address)
            } else {
                Request::Undrain(address)
            }
        }
        "trace" => {
            at_most(3)?;
            let (Some(client), Some(vip)) = (args.first(), args.get(1)) else {
                return Err("trace CLIENT:PORT VIP:PORT [tcp|udp]".into());
            };
            Request::Trace {
                client: endpoint(client, "client")?,
                vip: endpoint(vip, "VIP")?,
                protocol: protocol_number(args.get(2).copied().unwrap_or("tcp"))?,
            }
        }
        "add-service" => {
            at_most(4)?;
            let key = service()?;
            let mode = args
                .get(2)
                .and_then(|name| ForwardingMode::from_name(name))
                .ok_or("add-service: the mode is dr, nat, fullnat or tun")?;
            let name = args.get(3).copied().unwrap_or("mh");
            let scheduler = SchedulerKind::from_name(name)
                .ok_or_else(|| format!("scheduler {name:?}: use {}", SchedulerKind::NAMES))?;
            Request::AddService {
                key,
                mode,
                scheduler,
            }
        }
        "remove-service" => {
            at_most(2)?;
            Request::RemoveService { key: service()? }
        }
        "add-backend" => {
            at_most(4)?;
            Request::AddBackend {
                key: service()?,
                backend: backend()?,
                weight: args.get(3).map_or(Ok(1), |text| weight(text))?,
            }
        }
        "remove-backend" => {
            at_most(3)?;
            Request::RemoveBackend {
                key: service()?,
                backend: backend()?,
            }
        }
        "set-weight" => {
            at_most(4)?;
            let key = service()?;
            let backend = backend()?;
            let text = args.get(3).ok_or("set-weight: give the weight")?;
            Request::SetWeight {
                key,
                backend,
                weight: weight(text)?,
            }
        }
        other => return Err(format!("unknown command {other:?}: {USAGE}")),
    };
    Ok(request)
}

/// What the metrics endpoint does with a request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpRequest {
    /// The head is not complete yet: read more (up to [`MAX_HTTP_HEAD`]).
    Incomplete,
    /// `GET /metrics` (or `HEAD`; `head_only` says which).
    Metrics { head_only: bool },
    /// 404: another path.
    NotFound,
    /// 405: another method on /metrics.
    MethodNotAllowed,
    /// 400: not an HTTP/1.x request line, or a head over [`MAX_HTTP_HEAD`].
    BadRequest,
}

/// Classifies the bytes received so far of an HTTP request. Only the request line decides; the headers are read
/// and ignored (the endpoint answers and closes).
pub fn parse_http_head(head: &[u8]) -> HttpRequest {
    let end = head
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .or_else(|| head.windows(2).position(|window| window == b"\n\n"));
    if end.is_none() {
        return if head.len() >= MAX_HTTP_HEAD {
            HttpRequest::BadRequest
        } else {
            HttpRequest::Incomplete
        };
    }
    let line_end = head
        .iter()
        .position(|&byte| byte == b'\n')
        .unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return HttpRequest::BadRequest;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return HttpRequest::BadRequest;
    };
    if !version.starts_with("HTTP/1.")
        || method.is_empty()
        || !method.bytes().all(|byte| byte.is_ascii_uppercase())
        || !target.starts_with('/')
    {
        return HttpRequest::BadRequest;
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if path != "/metrics" {
        return HttpRequest::NotFound;
    }
    match method {
        "GET" => HttpRequest::Metrics { head_only: false },
        "HEAD" => HttpRequest::Metrics { head_only: true },
        _ => HttpRequest::MethodNotAllowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn control_lines() {
        assert_eq!(parse_request("list"), Ok(Request::List));
        assert_eq!(
            parse_request(" drain  10.1.0.1:80 "),
            Ok(Request::Drain("10.1.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            parse_request("set-weight 10.0.0.100:80 tcp 10.1.0.13:80 5"),
            Ok(Request::SetWeight {
                key: ServiceKey {
                    vip: "10.0.0.100".parse().unwrap(),
                    port: 80,
                    protocol: 6
                },
                backend: "10.1.0.13:80".parse().unwrap(),
                weight: 5
            })
        );
        for (line, needle) in [
            ("", "empty command"),
            ("lists", "unknown command"),
            ("list extra", "too many words"),
            ("drain 10.1.0.1", "not ADDRESS:PORT"),
            (
                "set-weight 10.0.0.100:80 tcp 10.1.0.13:80",
                "give the weight",
            ),
            (
                "set-weight 10.0.0.100:80 tcp 10.1.0.13:80 70000",
                "0 to 65535",
            ),
            ("add-service 10.0.0.100:80 sctp dr", "tcp or udp"),
            ("add-service 10.0.0.100:80 tcp bridge", "the mode is"),
            ("trace 1.2.3.4:5 10.0.0.100:80 icmp", "tcp or udp"),
        ] {
            let error = parse_request(line).unwrap_err();
            assert!(error.contains(needle), "{line:?}: {error}");
        }
        assert!(parse_request(&"a".repeat(MAX_CONTROL_LINE)).is_err());
    }

    #[test]
    fn http_heads() {
        assert_eq!(
            parse_http_head(b"GET /metrics HTTP/1.0\r\n"),
            HttpRequest::Incomplete
        );
        assert_eq!(
            parse_http_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            HttpRequest::Metrics { head_only: false }
        );
        assert_eq!(
            parse_http_head(b"HEAD /metrics?x=1 HTTP/1.0\n\n"),
            HttpRequest::Metrics { head_only: true }
        );
        assert_eq!(
            parse_http_head(b"GET / HTTP/1.0\r\n\r\n"),
            HttpRequest::NotFound
        );
        assert_eq!(
            parse_http_head(b"GET /metricsx HTTP/1.0\r\n\r\n"),
            HttpRequest::NotFound
        );
        assert_eq!(
            parse_http_head(b"POST /metrics HTTP/1.0\r\n\r\n"),
            HttpRequest::MethodNotAllowed
        );
        assert_eq!(
            parse_http_head(b"GET /metrics\r\n\r\n"),
            HttpRequest::BadRequest
        );
        assert_eq!(parse_http_head(b"\r\n\r\n"), HttpRequest::BadRequest);
        assert_eq!(
            parse_http_head(&[b'a'; MAX_HTTP_HEAD]),
            HttpRequest::BadRequest
        );
    }

    proptest! {
        #[test]
        fn no_line_panics(line in ".{0,200}") {
            let _ = parse_request(&line);
        }

        #[test]
        fn no_head_panics(head in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_http_head(&head);
        }

        #[test]
        fn well_formed_edits_round_trip(a in 1u8..255, port in 1u16.., backend_port in 1u16.., weight in 0u32..=65535) {
            let line = format!("set-weight 10.0.0.{a}:{port} udp [fd00::{a:x}]:{backend_port} {weight}");
            let parsed = parse_request(&line).unwrap();
            prop_assert_eq!(parsed, Request::SetWeight {
                key: ServiceKey { vip: format!("10.0.0.{a}").parse().unwrap(), port, protocol: 17 },
                backend: format!("[fd00::{a:x}]:{backend_port}").parse().unwrap(),
                weight,
            });
        }
    }
}
