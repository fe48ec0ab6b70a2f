//! `sluice import-keepalived`: the `virtual_server` / `real_server` blocks of a keepalived.conf as a sluice
//! configuration, with a message for every directive that cannot be carried over.

use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String, usize),
    Open,
    Close,
    End,
}

/// One directive: its words (the keyword first), the line it is on, and its block when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub words: Vec<String>,
    pub line: usize,
    pub block: Option<Vec<Item>>,
}

fn tokenize(text: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let content = line.split(['#', '!']).next().unwrap_or_default();
        for word in content
            .replace('{', " { ")
            .replace('}', " } ")
            .split_whitespace()
        {
            tokens.push(match word {
                "{" => Token::Open,
                "}" => Token::Close,
                other => Token::Word(other.to_owned(), number + 1),
            });
        }
        tokens.push(Token::End);
    }
    tokens
}

fn parse_items(tokens: &[Token], at: &mut usize) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let mut words = Vec::new();
    let mut line = 0;
    while *at < tokens.len() {
        let token = tokens[*at].clone();
        *at += 1;
        match token {
            Token::Word(word, number) => {
                if words.is_empty() {
                    line = number;
                }
                words.push(word);
            }
            Token::End => {
                if !words.is_empty() {
                    items.push(Item {
                        words: std::mem::take(&mut words),
                        line,
                        block: None,
                    });
                }
            }
            Token::Open => {
                let block = parse_items(tokens, at)?;
                items.push(Item {
                    words: std::mem::take(&mut words),
                    line,
                    block: Some(block),
                });
            }
            Token::Close => {
                if !words.is_empty() {
                    items.push(Item {
                        words: std::mem::take(&mut words),
                        line,
                        block: None,
                    });
                }
                return Ok(items);
            }
        }
    }
    if !words.is_empty() {
        items.push(Item {
            words,
            line,
            block: None,
        });
    }
    Ok(items)
}

/// The directives of a keepalived configuration.
pub fn parse(text: &str) -> Result<Vec<Item>, String> {
    let tokens = tokenize(text);
    let mut at = 0;
    let items = parse_items(&tokens, &mut at)?;
    if at < tokens.len() {
        let line = tokens[..at]
            .iter()
            .rev()
            .find_map(|token| match token {
                Token::Word(_, line) => Some(*line),
                _ => None,
            })
            .unwrap_or(0);
        return Err(format!("line {line}: a `}}` closes nothing"));
    }
    Ok(items)
}

fn netmask_bits(mask: &str) -> Option<u32> {
    let addr: std::net::Ipv4Addr = mask.parse().ok()?;
    let bits = u32::from(addr);
    (bits.leading_ones() + bits.trailing_zeros() == 32).then(|| bits.leading_ones())
}

fn word(item: &Item, index: usize) -> Option<&str> {
    item.words.get(index).map(String::as_str)
}

/// Converts `text`; returns the TOML and the messages about what was not carried over.
pub fn convert(text: &str) -> Result<(String, Vec<String>), String> {
    let items = parse(text)?;
    let mut out = String::new();
    let mut notes = Vec::new();
    let _ = writeln!(
        out,
        "# Converted from a keepalived configuration by `sluice import-keepalived`."
    );
    let _ = writeln!(
        out,
        "# Set the EAL arguments, the ports (devices and addresses) and the workers before use.\n"
    );
    let _ = writeln!(out, "[eal]\nargs = [\"--in-memory\", \"-l\", \"0\"]\n");
    let _ = writeln!(out, "[[port]]\nname = \"wan\"\ndevice = \"0000:00:00.0\"     # the NIC's PCI address\naddresses = []\n");
    for item in &items {
        match word(item, 0) {
            Some("virtual_server") => convert_service(item, &mut out, &mut notes),
            Some(other) => notes.push(format!("line {}: `{other}` is not carried over (sluice balances; it does not do VRRP, global settings or groups)", item.line)),
            None => {}
        }
    }
    Ok((out, notes))
}

fn convert_service(item: &Item, out: &mut String, notes: &mut Vec<String>) {
    let (Some(address), Some(port)) = (word(item, 1), word(item, 2)) else {
        notes.push(format!("line {}: virtual_server {} is not carried over (fwmark and group services are not supported)", item.line, item.words[1..].join(" ")));
        return;
    };
    if address == "fwmark" || address == "group" || address.parse::<std::net::IpAddr>().is_err() {
        notes.push(format!("line {}: virtual_server {address} {port} is not carried over (fwmark and group services are not supported)", item.line));
        return;
    }
    let block = item.block.clone().unwrap_or_default();
    let mut protocol = "tcp".to_owned();
    let mut mode = "nat".to_owned();
    let mut scheduler = "mh".to_owned();
    let mut persistence = None;
    let mut granularity = None;
    let mut delay_loop = "60".to_owned();
    let mut backends = Vec::new();
    for directive in &block {
        let key = word(directive, 0).unwrap_or_default();
        let value = word(directive, 1).unwrap_or_default().to_owned();
        match key {
            "lb_algo" | "lvs_sched" => match value.as_str() {
                "rr" | "wrr" | "lc" | "wlc" | "lblc" | "lblcr" | "dh" | "sh" | "sed" | "nq"
                | "mh" => scheduler = value,
                other => notes.push(format!(
                    "line {}: lb_algo {other} has no sluice equivalent; mh (Maglev) is used",
                    directive.line
                )),
            },
            "lb_kind" | "lvs_method" => match value.to_uppercase().as_str() {
                "DR" => mode = "dr".into(),
                "NAT" => mode = "nat".into(),
                "TUN" => mode = "tun".into(),
                "FNAT" | "FULLNAT" => mode = "fullnat".into(),
                other => notes.push(format!(
                    "line {}: lb_kind {other} is not a mode sluice knows; nat is used",
                    directive.line
                )),
            },
            "protocol" => match value.to_uppercase().as_str() {
                "TCP" => protocol = "tcp".into(),
                "UDP" => protocol = "udp".into(),
                other => notes.push(format!(
                    "line {}: protocol {other} is not supported; tcp is used",
                    directive.line
                )),
            },
            "persistence_timeout" => persistence = Some(value),
            "persistence_granularity" => match netmask_bits(&value) {
                Some(bits) => granularity = Some(bits),
                None => notes.push(format!(
                    "line {}: persistence_granularity {value} is not an IPv4 netmask",
                    directive.line
                )),
            },
            "delay_loop" => delay_loop = value,
            "real_server" => backends.push(directive.clone()),
            other => notes.push(format!(
                "line {}: `{other}` in virtual_server {address} {port} is not carried over",
                directive.line
            )),
        }
    }
    if matches!(mode.as_str(), "fullnat") {
        notes.push(format!(
            "line {}: fullnat needs [network] local_addresses: add them",
            item.line
        ));
    }
    if matches!(mode.as_str(), "tun") {
        notes.push(format!(
            "line {}: tun needs [network] tunnel_source_v4/v6: add them",
            item.line
        ));
    }
    let _ = writeln!(out, "[[service]]\nvip = \"{address}\"\nport = {port}\nprotocol = \"{protocol}\"\nmode = \"{mode}\"\nscheduler = \"{scheduler}\"");
    if let Some(timeout) = persistence {
        let _ = writeln!(out, "persistence_timeout = {timeout}");
    }
    if let Some(bits) = granularity {
        let _ = writeln!(out, "persistence_netmask = {bits}");
    }
    let _ = writeln!(out);
    for backend in backends {
        convert_backend(&backend, &delay_loop, &mode, port, out, notes);
    }
}

fn convert_backend(
    item: &Item,
    delay_loop: &str,
    mode: &str,
    service_port: &str,
    out: &mut String,
    notes: &mut Vec<String>,
) {
    let (Some(address), Some(port)) = (word(item, 1), word(item, 2)) else {
        notes.push(format!(
            "line {}: real_server without address and port is skipped",
            item.line
        ));
        return;
    };
    let _ = writeln!(out, "[[service.backend]]\naddress = \"{address}\"");
    if (mode == "dr" || mode == "tun") && port != service_port {
        notes.push(format!("line {}: real_server {address} {port}: {mode} cannot map ports; the service port {service_port} is used", item.line));
    } else {
        let _ = writeln!(out, "port = {port}");
    }
    let block = item.block.clone().unwrap_or_default();
    let mut check = String::new();
    let mut inhibit = false;
    for directive in &block {
        let key = word(directive, 0).unwrap_or_default();
        match key {
            "weight" => {
                let _ = writeln!(out, "weight = {}", word(directive, 1).unwrap_or("1"));
            }
            "inhibit_on_failure" => inhibit = true,
            "TCP_CHECK" | "HTTP_GET" => {
                let kind = if key == "TCP_CHECK" { "tcp" } else { "http" };
                let _ = writeln!(check, "type = \"{kind}\"\ndelay_loop = {delay_loop}");
                for setting in directive.block.clone().unwrap_or_default() {
                    let name = word(&setting, 0).unwrap_or_default();
                    let value = word(&setting, 1).unwrap_or_default();
                    match name {
                        "connect_timeout" | "delay_before_retry" | "connect_port" => {
                            let _ = writeln!(check, "{name} = {value}");
                        }
                        "connect_ip" => {
                            let _ = writeln!(check, "connect_ip = \"{value}\"");
                        }
                        "retry" | "nb_get_retry" => {
                            let _ = writeln!(check, "retry = {value}");
                        }
                        "url" => {
                            for part in setting.block.clone().unwrap_or_default() {
                                match word(&part, 0).unwrap_or_default() {
                                    "path" => {
                                        let _ = writeln!(check, "path = \"{}\"", word(&part, 1).unwrap_or("/"));
                                    }
                                    "status_code" => {
                                        let _ = writeln!(check, "status = {}", word(&part, 1).unwrap_or("200"));
                                    }
                                    other => notes.push(format!("line {}: url `{other}` is not carried over (digests are not checked)", part.line)),
                                }
                            }
                        }
                        other => notes.push(format!("line {}: `{other}` in {key} is not carried over", setting.line)),
                    }
                }
            }
            other => notes.push(format!("line {}: `{other}` in real_server {address} {port} is not carried over (sluice checks TCP_CHECK and HTTP_GET)", directive.line)),
        }
    }
    if !check.is_empty() {
        let _ = writeln!(
            out,
            "[service.backend.health_check]\n{check}on_failure = \"{}\"",
            if inhibit { "inhibit" } else { "remove" }
        );
    }
    let _ = writeln!(out);
}

/// The subcommand: prints the configuration on stdout and the notes on stderr.
pub fn import(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (toml, notes) = convert(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    print!("{toml}");
    for note in notes {
        eprintln!("{}: {note}", path.display());
    }
    Ok(())
}
