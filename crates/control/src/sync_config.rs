//! The `[sync]` section: sharing connection exceptions with the cluster's other nodes (see the issue "connection
//! exceptions shared between nodes" and `config/README.md`). Every value has a range; a file outside it is refused
//! with the reason.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// The section as written.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSync {
    listen: Option<String>,
    #[serde(default)]
    peers: Vec<String>,
    key: Option<String>,
    resend_interval: Option<f64>,
    resend_max_interval: Option<f64>,
    side_table: Option<usize>,
    scan_budget: Option<usize>,
}

/// Ranges of the section's values.
pub mod limits {
    /// Peers of one node.
    pub const MAX_PEERS: usize = 64;
    /// The shared key, in bytes (written as twice as many hex digits).
    pub const MIN_KEY_BYTES: usize = 16;
    pub const MAX_KEY_BYTES: usize = 64;
    /// Seconds between the first sends of an exception, and the longest interval its backoff reaches.
    pub const RESEND_SECONDS: std::ops::RangeInclusive<f64> = 0.05..=60.0;
    pub const RESEND_MAX_SECONDS: std::ops::RangeInclusive<f64> = 0.05..=3600.0;
    /// Exceptions each worker's side table holds.
    pub const SIDE_TABLE: std::ops::RangeInclusive<usize> = 16..=(1 << 24);
    /// Connection-table slots a worker examines per turn while it looks for exceptions.
    pub const SCAN_BUDGET: std::ops::RangeInclusive<usize> = 16..=(1 << 20);
}

/// A validated `[sync]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    /// Where this node receives its peers' messages (UDP).
    pub listen: SocketAddr,
    /// The other nodes' listen addresses: messages go there, and only messages from these addresses count.
    pub peers: Vec<SocketAddr>,
    /// The shared key every message is authenticated with (HMAC-SHA-256).
    pub key: Vec<u8>,
    /// An exception is sent again after this long, then after twice as long, up to `resend_max_interval`, until
    /// the connection it describes would expire.
    pub resend_interval: Duration,
    pub resend_max_interval: Duration,
    pub side_table: usize,
    pub scan_budget: usize,
}

impl SyncConfig {
    pub const DEFAULT_RESEND_SECONDS: f64 = 1.0;
    pub const DEFAULT_RESEND_MAX_SECONDS: f64 = 30.0;
    pub const DEFAULT_SIDE_TABLE: usize = 65_536;
    pub const DEFAULT_SCAN_BUDGET: usize = 4096;

    /// Validates the section; the message names the field and the allowed range.
    pub(crate) fn validate(raw: &RawSync) -> Result<SyncConfig, String> {
        let address = |text: &str, field: &str| {
            text.trim().parse::<SocketAddr>().map_err(|_| {
                format!("sync {field}: {text:?} is not ADDRESS:PORT (IPv6 as [addr]:port)")
            })
        };
        let listen = address(
            raw.listen
                .as_deref()
                .ok_or("sync: listen = \"ADDRESS:PORT\" is required")?,
            "listen",
        )?;
        if listen.port() == 0 {
            return Err("sync listen: a port from 1 to 65535".into());
        }
        if raw.peers.is_empty() || raw.peers.len() > limits::MAX_PEERS {
            return Err(format!("sync peers: 1 to {} addresses", limits::MAX_PEERS));
        }
        let mut peers = Vec::with_capacity(raw.peers.len());
        for text in &raw.peers {
            let peer = address(text, "peers")?;
            if peer.ip().is_unspecified() || peer.port() == 0 {
                return Err(format!(
                    "sync peers: {peer} is not a node's address and port"
                ));
            }
            if peer == listen || peers.contains(&peer) {
                return Err(format!(
                    "sync peers: {peer} is listed twice or is this node's listen address"
                ));
            }
            peers.push(peer);
        }
        let key_text = raw
            .key
            .as_deref()
            .ok_or("sync: key = \"HEX\" is required (the shared key)")?;
        let key =
            decode_hex(key_text.trim()).ok_or("sync key: hexadecimal digits, two per byte")?;
        if !(limits::MIN_KEY_BYTES..=limits::MAX_KEY_BYTES).contains(&key.len()) {
            return Err(format!(
                "sync key: {} to {} bytes ({} to {} hex digits)",
                limits::MIN_KEY_BYTES,
                limits::MAX_KEY_BYTES,
                2 * limits::MIN_KEY_BYTES,
                2 * limits::MAX_KEY_BYTES
            ));
        }
        let seconds = |value: Option<f64>,
                       default: f64,
                       field: &str,
                       range: std::ops::RangeInclusive<f64>| {
            let value = value.unwrap_or(default);
            if !(value.is_finite() && range.contains(&value)) {
                return Err(format!(
                    "sync {field} = {value}: allowed {} to {} seconds",
                    range.start(),
                    range.end()
                ));
            }
            Ok(Duration::from_secs_f64(value))
        };
        let resend_interval = seconds(
            raw.resend_interval,
            Self::DEFAULT_RESEND_SECONDS,
            "resend_interval",
            limits::RESEND_SECONDS,
        )?;
        let resend_max_interval = seconds(
            raw.resend_max_interval,
            Self::DEFAULT_RESEND_MAX_SECONDS.max(resend_interval.as_secs_f64()),
            "resend_max_interval",
            limits::RESEND_MAX_SECONDS,
        )?;
        if resend_max_interval < resend_interval {
            return Err("sync resend_max_interval: at least resend_interval".into());
        }
        let count = |value: Option<usize>,
                     default: usize,
                     field: &str,
                     range: std::ops::RangeInclusive<usize>| {
            let value = value.unwrap_or(default);
            if range.contains(&value) {
                Ok(value)
            } else {
                Err(format!(
                    "sync {field} = {value}: allowed {} to {}",
                    range.start(),
                    range.end()
                ))
            }
        };
        Ok(SyncConfig {
            listen,
            peers,
            key,
            resend_interval,
            resend_max_interval,
            side_table: count(
                raw.side_table,
                Self::DEFAULT_SIDE_TABLE,
                "side_table",
                limits::SIDE_TABLE,
            )?,
            scan_budget: count(
                raw.scan_budget,
                Self::DEFAULT_SCAN_BUDGET,
                "scan_budget",
                limits::SCAN_BUDGET,
            )?,
        })
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SyncConfig, String> {
        let raw: RawSync = toml::from_str(text).map_err(|e| e.to_string())?;
        SyncConfig::validate(&raw)
    }

    const KEY: &str = "key = \"00112233445566778899aabbccddeeff\"";

    #[test]
    fn a_complete_section_is_accepted_with_defaults() {
        let sync = parse(&format!(
            "listen = \"10.0.0.1:7100\"\npeers = [\"10.0.0.2:7100\"]\n{KEY}"
        ))
        .unwrap();
        assert_eq!(sync.peers.len(), 1);
        assert_eq!(sync.key.len(), 16);
        assert_eq!(sync.resend_interval, Duration::from_secs(1));
        assert_eq!(sync.side_table, SyncConfig::DEFAULT_SIDE_TABLE);
    }

    #[test]
    fn values_out_of_range_are_refused_with_the_reason() {
        for (text, reason) in [
            (format!("peers = [\"10.0.0.2:7100\"]\n{KEY}"), "listen"),
            (format!("listen = \"10.0.0.1:7100\"\n{KEY}"), "peers"),
            ("listen = \"10.0.0.1:7100\"\npeers = [\"10.0.0.2:7100\"]".into(), "key"),
            (
                "listen = \"10.0.0.1:7100\"\npeers = [\"10.0.0.2:7100\"]\nkey = \"0011\"".into(),
                "16 to 64 bytes",
            ),
            (
                "listen = \"10.0.0.1:7100\"\npeers = [\"10.0.0.2:7100\"]\nkey = \"zz112233445566778899aabbccddeeff\"".into(),
                "hexadecimal",
            ),
            (format!("listen = \"10.0.0.1:7100\"\npeers = [\"10.0.0.1:7100\"]\n{KEY}"), "twice"),
            (
                format!("listen = \"10.0.0.1:7100\"\npeers = [\"10.0.0.2:7100\"]\n{KEY}\nresend_interval = 0.0"),
                "resend_interval",
            ),
            (
                format!("listen = \"10.0.0.1:7100\"\npeers = [\"10.0.0.2:7100\"]\n{KEY}\nside_table = 1"),
                "side_table",
            ),
            (
                format!("listen = \"10.0.0.1:7100\"\npeers = [\"10.0.0.2:7100\"]\n{KEY}\nscan_budget = 0"),
                "scan_budget",
            ),
        ] {
            let error = parse(&text).unwrap_err();
            assert!(error.contains(reason), "{text}: {error}");
        }
    }
}
