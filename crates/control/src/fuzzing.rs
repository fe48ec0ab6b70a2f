//! The bodies of the fuzz targets in `crates/control/fuzz`, shared with the test suite's smoke runs. Each takes
//! arbitrary bytes and panics only when an invariant breaks: no input may panic the parsers, an accepted
//! configuration must turn into a snapshot spec and a snapshot (or a clean error), and the keepalived importer's
//! output must be accepted by the configuration parser.

use balancer::snapshot::Snapshot;

use crate::config::{BackendIdRegistry, Config};
use crate::protocol::{parse_http_head, parse_request, HttpRequest, Request};

/// Maglev tables above this many slots are validated but not built here: a fuzzer's memory limit is not the point.
const LARGEST_TABLE_BUILT: u32 = 1 << 17;

/// The configuration parser through validation, snapshot spec and snapshot. Returns whether the text was accepted.
pub fn config(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(config) = Config::parse(text, "fuzz.toml") else {
        return false;
    };
    build(&config);
    true
}

fn build(config: &Config) {
    let macs = vec![[2, 0, 0, 0, 0, 1]; config.ports.len()];
    let mut registry = BackendIdRegistry::new();
    let spec = config
        .snapshot_spec(&macs, &mut registry)
        .unwrap_or_else(|error| panic!("a validated configuration has no snapshot spec: {error}"));
    if config.network.maglev_table_size.get() <= LARGEST_TABLE_BUILT {
        // Routing errors (a backend on no subnet) are the snapshot's to report; a panic is not.
        let _ = Snapshot::build(&spec, 1);
    }
    // Every duration is in range, so the schedule arithmetic cannot overflow.
    for service in &config.services {
        for backend in &service.backends {
            for check in &backend.health_checks {
                let now = std::time::Instant::now();
                let _ = now
                    + check.connect_timeout
                    + check.delay_loop
                    + check.delay_before_retry
                    + check.warmup;
                if let crate::config::CheckKind::Misc { timeout, .. } = &check.kind {
                    let _ = now + *timeout;
                }
            }
            let _ = std::time::Instant::now() + backend.notify.timeout;
        }
    }
}

/// The keepalived importer: its output, when it gives one, must be a configuration sluice accepts.
pub fn keepalived(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok((toml, _notes)) = crate::keepalived::convert(text) else {
        return false;
    };
    let config = Config::parse(&toml, "imported.toml").unwrap_or_else(|error| {
        panic!("the importer wrote a file the parser refuses: {error}\n{toml}")
    });
    build(&config);
    true
}

/// The control-socket line parser and the metrics endpoint's request-head parser.
pub fn ctl(data: &[u8]) -> bool {
    let line = String::from_utf8_lossy(data);
    let accepted = parse_request(line.trim()).is_ok();
    if let Ok(Request::SetWeight { weight, .. } | Request::AddBackend { weight, .. }) =
        parse_request(line.trim())
    {
        assert!(weight <= 65535);
    }
    let head = parse_http_head(data);
    // A complete head stays complete whatever follows it (the body is never read).
    if head != HttpRequest::Incomplete && head != HttpRequest::BadRequest {
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"trailing body");
        assert_eq!(parse_http_head(&longer), head);
    }
    accepted || matches!(head, HttpRequest::Metrics { .. })
}
