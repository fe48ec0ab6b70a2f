//! `sluice import-keepalived`: the `virtual_server` / `real_server` blocks of a keepalived.conf as a sluice
//! configuration, with a message for every directive that cannot be carried over.
//!
//! The grammar is keepalived's: whitespace-separated words, `{` and `}` as tokens of their own, `"quoted strings"`
//! (with `\"` and `\\` escapes) as one word, and `#` or `!` starting a comment where a word could start. Braces must
//! balance and blocks nest at most [`MAX_DEPTH`] deep; a value that should be a number and is not is an error with
//! its line. Every value is written into TOML escaped, and the result is validated with the configuration parser
//! before it is returned: the output is always a file `sluice check` accepts, or an error says why not.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::keepalived_vrrp::{is_vrrp_block, VrrpTarget};

/// The deepest nesting of blocks accepted (keepalived's own files nest four deep).
pub const MAX_DEPTH: usize = 32;
/// The deepest chain of `include`s followed (a file including itself ends here).
pub const MAX_INCLUDE_DEPTH: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String, usize),
    Open(usize),
    Close(usize),
    End,
}

/// One directive: its words (the keyword first), the line it is on, and its block when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub words: Vec<String>,
    pub line: usize,
    pub block: Option<Vec<Item>>,
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let mut chars = line.chars().peekable();
        let mut word = String::new();
        let flush = |word: &mut String, tokens: &mut Vec<Token>| {
            if !word.is_empty() {
                tokens.push(Token::Word(std::mem::take(word), number));
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '{' | '}' => {
                    flush(&mut word, &mut tokens);
                    tokens.push(if c == '{' {
                        Token::Open(number)
                    } else {
                        Token::Close(number)
                    });
                }
                c if c.is_whitespace() => flush(&mut word, &mut tokens),
                '#' | '!' if word.is_empty() => break,
                '"' if word.is_empty() => {
                    let mut closed = false;
                    let mut quoted = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '"' => {
                                closed = true;
                                break;
                            }
                            '\\' => match chars.next() {
                                Some(escaped) => quoted.push(escaped),
                                None => break,
                            },
                            other => quoted.push(other),
                        }
                    }
                    if !closed {
                        return Err(format!("line {number}: a quoted string is not closed"));
                    }
                    tokens.push(Token::Word(quoted, number));
                }
                other => word.push(other),
            }
        }
        flush(&mut word, &mut tokens);
        tokens.push(Token::End);
    }
    Ok(tokens)
}

/// The directives of a keepalived configuration; unbalanced braces and nesting beyond [`MAX_DEPTH`] are errors.
pub fn parse(text: &str) -> Result<Vec<Item>, String> {
    struct Open {
        header: Vec<String>,
        line: usize,
        opened_on: usize,
        parent: Vec<Item>,
    }
    let mut stack: Vec<Open> = Vec::new();
    let mut items: Vec<Item> = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut line = 0;
    let flush = |words: &mut Vec<String>, items: &mut Vec<Item>, line: usize| {
        if !words.is_empty() {
            items.push(Item {
                words: std::mem::take(words),
                line,
                block: None,
            });
        }
    };
    for token in tokenize(text)? {
        match token {
            Token::Word(word, number) => {
                if words.is_empty() {
                    line = number;
                }
                words.push(word);
            }
            Token::End => flush(&mut words, &mut items, line),
            Token::Open(number) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(format!(
                        "line {number}: blocks nested deeper than {MAX_DEPTH}"
                    ));
                }
                // `keyword args` on one line and `{` on the next belong together.
                let (header, header_line) = if words.is_empty() {
                    match items.last() {
                        Some(last) if last.block.is_none() => {
                            let last = items.pop().expect("checked");
                            (last.words, last.line)
                        }
                        _ => (Vec::new(), number),
                    }
                } else {
                    (std::mem::take(&mut words), line)
                };
                stack.push(Open {
                    header,
                    line: header_line,
                    opened_on: number,
                    parent: std::mem::take(&mut items),
                });
            }
            Token::Close(number) => {
                flush(&mut words, &mut items, line);
                let Some(open) = stack.pop() else {
                    return Err(format!("line {number}: a `}}` closes nothing"));
                };
                let block = std::mem::replace(&mut items, open.parent);
                items.push(Item {
                    words: open.header,
                    line: open.line,
                    block: Some(block),
                });
            }
        }
    }
    flush(&mut words, &mut items, line);
    if let Some(open) = stack.last() {
        return Err(format!(
            "line {}: this `{{` is never closed ({} block{} open at the end of the file)",
            open.opened_on,
            stack.len(),
            if stack.len() == 1 { "" } else { "s" }
        ));
    }
    Ok(items)
}

/// `text` as a TOML basic string.
pub fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A persistence granularity as keepalived takes it: a netmask of the VIP's family (`255.255.255.0`,
/// `ffff:ffff:ffff:ffff::`) or a prefix length (`24`, `/64`).
fn granularity_bits(text: &str, v4: bool) -> Option<u32> {
    let max = if v4 { 32 } else { 128 };
    if let Ok(bits) = text.trim_start_matches('/').parse::<u32>() {
        return (bits <= max).then_some(bits);
    }
    let bits: u128 = match text.parse::<IpAddr>().ok()? {
        IpAddr::V4(mask) if v4 => u128::from(u32::from(mask)) << 96,
        IpAddr::V6(mask) if !v4 => u128::from(mask),
        _ => return None,
    };
    (bits.leading_ones() + bits.trailing_zeros() == 128).then(|| bits.leading_ones())
}

/// `status_code` as keepalived writes it (`200`, `200-299`, `200,204`) when it names one status, which is what
/// sluice's HTTP check expects; several statuses are an error saying so.
fn status_code(item: &Item) -> Result<u64, String> {
    let text = value(item, "status_code")?;
    let mut statuses = Vec::new();
    for part in text.split(',') {
        let (low, high) = part.split_once('-').unwrap_or((part, part));
        match (low.trim().parse::<u64>(), high.trim().parse::<u64>()) {
            (Ok(low), Ok(high)) if low <= high => statuses.push((low, high)),
            _ => {
                return Err(format!(
                    "line {}: status_code {text:?} is not a status, a range or a list of them",
                    item.line
                ))
            }
        }
    }
    match statuses.as_slice() {
        [(low, high)] if low == high => Ok(*low),
        _ => Err(format!(
            "line {}: status_code {text} accepts several statuses; sluice's HTTP check expects one: write the one \
             the backend answers",
            item.line
        )),
    }
}

fn word(item: &Item, index: usize) -> Option<&str> {
    item.words.get(index).map(String::as_str)
}

/// The value of a directive (its second word), required.
fn value<'a>(item: &'a Item, what: &str) -> Result<&'a str, String> {
    word(item, 1).ok_or_else(|| format!("line {}: {what} needs a value", item.line))
}

fn integer(item: &Item, what: &str) -> Result<u64, String> {
    let text = value(item, what)?;
    text.parse::<u64>()
        .map_err(|_| format!("line {}: {what} {text:?} is not a whole number", item.line))
}

fn port_number(text: &str, line: usize, what: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .map_err(|_| format!("line {line}: {what} port {text:?} is not a number from 0 to 65535"))
}

/// Seconds as keepalived writes them (a number, possibly with a fraction), written back as a TOML float.
fn seconds(item: &Item, what: &str) -> Result<String, String> {
    let text = value(item, what)?;
    match text.parse::<f64>() {
        Ok(seconds)
            if seconds.is_finite() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
        {
            Ok(format!("{seconds:?}"))
        }
        _ => Err(format!(
            "line {}: {what} {text:?} is not a number of seconds",
            item.line
        )),
    }
}

/// Converts `text`; returns the TOML and the messages about what was not carried over. The TOML is accepted by
/// [`Config::parse`]; anything that would not be is an error naming the line. The VRRP half, if any, is left out
/// (see [`convert_pair`]); its notes are returned.
pub fn convert(text: &str) -> Result<(String, Vec<String>), String> {
    let converted = convert_pair(text, &default_vrrp_target())?;
    Ok((converted.sluice, converted.notes))
}

/// What a keepalived.conf becomes: sluice's configuration, and keepalived's VRRP-only configuration when the file
/// has `vrrp_instance` blocks.
#[derive(Debug)]
pub struct Converted {
    pub sluice: String,
    pub keepalived: Option<String>,
    pub notes: Vec<String>,
}

/// The imported port's kernel interface, the check script where the packaging puts it and the default control
/// socket.
pub fn default_vrrp_target() -> VrrpTarget {
    VrrpTarget {
        interface: crate::config::default_kernel_interface(IMPORTED_PORT),
        check_script: "/usr/local/lib/sluice/sluice-vip-check".into(),
        socket: "/run/sluice.sock".into(),
    }
}

/// The name of the one port the imported configuration has.
const IMPORTED_PORT: &str = "wan";

/// Converts `text` into both halves; the VRRP half is bound to `target`. `include` is not followed (there is no
/// file to be relative to): see [`convert_file`].
pub fn convert_pair(text: &str, target: &VrrpTarget) -> Result<Converted, String> {
    convert_items(parse(text)?, target)
}

/// Converts the keepalived configuration at `path`, with the files its `include` directives name, into both
/// halves.
pub fn convert_file(path: &Path, target: &VrrpTarget) -> Result<Converted, String> {
    let items = parse_file(path, 0)?;
    convert_items(items, target).map_err(|e| format!("{}: {e}", path.display()))
}

/// The directives of the file at `path` with each `include` replaced by the directives of the files it names.
fn parse_file(path: &Path, depth: usize) -> Result<Vec<Item>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let items = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    expand_includes(items, base, depth).map_err(|e| format!("{}: {e}", path.display()))
}

fn expand_includes(items: Vec<Item>, base: &Path, depth: usize) -> Result<Vec<Item>, String> {
    let mut expanded = Vec::with_capacity(items.len());
    for mut item in items {
        if word(&item, 0) == Some("include") && item.block.is_none() {
            let pattern = value(&item, "include")?;
            if depth >= MAX_INCLUDE_DEPTH {
                return Err(format!(
                    "line {}: include {pattern}: includes nested deeper than {MAX_INCLUDE_DEPTH}",
                    item.line
                ));
            }
            let files = include_matches(base, pattern)
                .map_err(|e| format!("line {}: include {pattern}: {e}", item.line))?;
            for file in files {
                expanded.extend(parse_file(&file, depth + 1)?);
            }
            continue;
        }
        if let Some(block) = item.block.take() {
            item.block = Some(expand_includes(block, base, depth)?);
        }
        expanded.push(item);
    }
    Ok(expanded)
}

/// The files an `include` pattern names, in name order: a path relative to the including file's directory, with
/// `*` and `?` allowed in its last component (as keepalived's glob).
fn include_matches(base: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let path = base.join(pattern);
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or("not a file name")?
        .to_owned();
    if !name.contains(['*', '?']) {
        return Ok(vec![path]);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|candidate| wildcard_match(&name, candidate))
        })
        .map(|entry| entry.path())
        .filter(|file| file.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Whether `text` matches `pattern`, where `*` is any run of characters and `?` any one.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), text.chars().collect());
    // The longest prefix of `pattern` matched so far, for every prefix of `text`: the classic table.
    let mut matched = vec![false; text.len() + 1];
    matched[0] = true;
    for &p in &pattern {
        let mut next = vec![false; text.len() + 1];
        if p == '*' {
            let mut any = false;
            for i in 0..=text.len() {
                any |= matched[i];
                next[i] = any;
            }
        } else {
            for i in 0..text.len() {
                next[i + 1] = matched[i] && (p == '?' || p == text[i]);
            }
        }
        matched = next;
    }
    matched[text.len()]
}

fn convert_items(items: Vec<Item>, target: &VrrpTarget) -> Result<Converted, String> {
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
    let _ = writeln!(out, "[[port]]\nname = \"{IMPORTED_PORT}\"\ndevice = \"0000:00:00.0\"     # the NIC's PCI address\naddresses = []\n");
    let mut services = String::new();
    let mut needs = Needs::default();
    for item in &items {
        match word(item, 0) {
            Some("virtual_server") => {
                convert_service(item, &mut services, &mut notes, &mut needs)?
            }
            Some(keyword) if is_vrrp_block(keyword) => {}
            Some(other) => notes.push(format!("line {}: `{other}` is not carried over (sluice balances; it does not do global settings or groups)", item.line)),
            None => notes.push(format!("line {}: a block without a keyword is ignored", item.line)),
        }
    }
    let vrrp = crate::keepalived_vrrp::convert(&items, target);
    if needs.any() || vrrp.is_some() {
        let _ = writeln!(out, "[network]");
        if vrrp.is_some() {
            let _ = writeln!(
                out,
                "# keepalived (the VRRP half of this import) puts the VIPs on the port's kernel interface when it is \
                 MASTER.\nkernel_exception_path = true\nvip_owner = \"vrrp\""
            );
        }
        let mut placeholder = |field: &str, value: &str, why: &str| {
            let _ = writeln!(out, "{field} = {value}   # a placeholder: set it");
            notes.push(format!(
                "{why} needs [network] {field}: a placeholder from the documentation range is written; set it"
            ));
        };
        if needs.fullnat_v4 || needs.fullnat_v6 {
            let mut addresses = Vec::new();
            if needs.fullnat_v4 {
                addresses.push(toml_string("192.0.2.1"));
            }
            if needs.fullnat_v6 {
                addresses.push(toml_string("2001:db8::1"));
            }
            placeholder(
                "local_addresses",
                &format!("[{}]", addresses.join(", ")),
                "fullnat",
            );
        }
        if needs.tun_v4 {
            placeholder("tunnel_source_v4", &toml_string("192.0.2.1"), "tun");
        }
        if needs.tun_v6 {
            placeholder("tunnel_source_v6", &toml_string("2001:db8::1"), "tun");
        }
        // keepalived.conf does not say which subnets the director is on: a gateway of each family the services
        // use gives every backend a route, so that the file passes `sluice check` as it is.
        for (used, gateway) in [(needs.v4, "192.0.2.254"), (needs.v6, "2001:db8::fe")] {
            if used {
                let _ = writeln!(
                    out,
                    "[[network.gateways]]   # a placeholder: set it, or give the port addresses on the backends' subnets\n\
                     port = \"{IMPORTED_PORT}\"\naddress = {}",
                    toml_string(gateway)
                );
            }
        }
        if needs.v4 || needs.v6 {
            notes.push(
                "the port has no addresses and a placeholder gateway per family is written: set the port's \
                 addresses and gateways"
                    .into(),
            );
        }
        let _ = writeln!(out);
    }
    if vrrp.is_some() {
        let _ = writeln!(
            out,
            "[control]\n# keepalived's track script asks here whether the VIPs have a backend.\nsocket = {}\n",
            toml_string(&target.socket)
        );
    }
    out.push_str(&services);
    if let Err(error) = Config::parse(&out, "the converted configuration")
        .map_err(|error| error.to_string())
        .and_then(|config| config.check_snapshot())
    {
        return Err(format!(
            "the converted configuration would be refused: {error}"
        ));
    }
    let keepalived = vrrp.map(|(keepalived, vrrp_notes)| {
        notes.extend(vrrp_notes);
        keepalived
    });
    Ok(Converted {
        sluice: out,
        keepalived,
        notes,
    })
}

/// What the services need in `[network]`.
#[derive(Default)]
struct Needs {
    /// Services of each family, whose backends need a route.
    v4: bool,
    v6: bool,
    fullnat_v4: bool,
    fullnat_v6: bool,
    tun_v4: bool,
    tun_v6: bool,
}

impl Needs {
    fn any(&self) -> bool {
        self.v4 || self.v6 || self.fullnat_v4 || self.fullnat_v6 || self.tun_v4 || self.tun_v6
    }
}

fn convert_service(
    item: &Item,
    out: &mut String,
    notes: &mut Vec<String>,
    needs: &mut Needs,
) -> Result<(), String> {
    let (Some(address), Some(port)) = (word(item, 1), word(item, 2)) else {
        notes.push(format!(
            "line {}: virtual_server {} is not carried over (fwmark and group services are not supported)",
            item.line,
            item.words[1..].join(" ")
        ));
        return Ok(());
    };
    if address == "fwmark" || address == "group" {
        notes.push(format!("line {}: virtual_server {address} {port} is not carried over (fwmark and group services are not supported)", item.line));
        return Ok(());
    }
    let vip: IpAddr = address.parse().map_err(|_| {
        format!(
            "line {}: virtual_server {address:?} is not an IP address",
            item.line
        )
    })?;
    let port = port_number(port, item.line, "virtual_server")?;
    let block = item.block.clone().unwrap_or_default();
    let mut protocol = "tcp";
    let mut mode = "nat";
    // keepalived's default scheduler.
    let mut scheduler = "wlc".to_owned();
    let mut persistence = None;
    let mut granularity = None;
    let mut delay_loop = None;
    let mut backends = Vec::new();
    // Service-level keys of keepalived's checker knobs, written right after the service's own.
    let mut knobs = String::new();
    let mut sorry_server = None;
    for directive in &block {
        let key = word(directive, 0).unwrap_or_default();
        match key {
            "quorum" | "hysteresis" => {
                let _ = writeln!(knobs, "{key} = {}", integer(directive, key)?);
            }
            "alpha" => {
                let _ = writeln!(knobs, "alpha = true");
            }
            "sorry_server" => {
                let (Some(address), Some(port_text)) = (word(directive, 1), word(directive, 2))
                else {
                    return Err(format!(
                        "line {}: sorry_server needs an address and a port",
                        directive.line
                    ));
                };
                let address: IpAddr = address.parse().map_err(|_| {
                    format!(
                        "line {}: sorry_server {address:?} is not an IP address",
                        directive.line
                    )
                })?;
                if address.is_ipv4() != vip.is_ipv4() {
                    return Err(format!(
                        "line {}: sorry_server {address} is not of the family of virtual_server {vip}",
                        directive.line
                    ));
                }
                let sorry_port = port_number(port_text, directive.line, "sorry_server")?;
                sorry_server = Some((address, sorry_port, directive.line));
            }
            "lb_algo" | "lvs_sched" => match value(directive, key)? {
                value @ ("rr" | "wrr" | "lc" | "wlc" | "lblc" | "lblcr" | "dh" | "sh" | "sed"
                | "nq" | "mh") => scheduler = value.to_owned(),
                other => notes.push(format!(
                    "line {}: lb_algo {other} has no sluice equivalent; wlc (keepalived's default) is used",
                    directive.line
                )),
            },
            "lb_kind" | "lvs_method" => match value(directive, key)?.to_uppercase().as_str() {
                "DR" => mode = "dr",
                "NAT" => mode = "nat",
                "TUN" => mode = "tun",
                "FNAT" | "FULLNAT" => mode = "fullnat",
                other => notes.push(format!(
                    "line {}: lb_kind {other} is not a mode sluice knows; nat is used",
                    directive.line
                )),
            },
            "protocol" => match value(directive, key)?.to_uppercase().as_str() {
                "TCP" => protocol = "tcp",
                "UDP" => protocol = "udp",
                other => notes.push(format!(
                    "line {}: protocol {other} is not supported; tcp is used",
                    directive.line
                )),
            },
            // keepalived's 0 is no persistence.
            "persistence_timeout" => {
                persistence = Some(integer(directive, key)?).filter(|timeout| *timeout > 0)
            }
            "persistence_granularity" => {
                let text = value(directive, key)?;
                match granularity_bits(text, vip.is_ipv4()) {
                    Some(bits) => granularity = Some(bits),
                    None => {
                        return Err(format!(
                            "line {}: persistence_granularity {text} is not a netmask or prefix length of the VIP's \
                             family",
                            directive.line
                        ))
                    }
                }
            }
            "delay_loop" => delay_loop = Some(seconds(directive, key)?),
            "real_server" => backends.push(directive.clone()),
            other => notes.push(format!(
                "line {}: `{other}` in virtual_server {address} {port} is not carried over",
                directive.line
            )),
        }
    }
    if vip.is_ipv4() {
        needs.v4 = true;
    } else {
        needs.v6 = true;
    }
    match (mode, vip.is_ipv4()) {
        ("fullnat", true) => needs.fullnat_v4 = true,
        ("fullnat", false) => needs.fullnat_v6 = true,
        ("tun", true) => needs.tun_v4 = true,
        ("tun", false) => needs.tun_v6 = true,
        _ => {}
    }
    let _ = writeln!(
        out,
        "# keepalived line {}\n[[service]]\nvip = {}\nport = {port}\nprotocol = {}\nmode = {}\nscheduler = {}",
        item.line,
        toml_string(&vip.to_string()),
        toml_string(protocol),
        toml_string(mode),
        toml_string(&scheduler)
    );
    if let Some(timeout) = persistence {
        let _ = writeln!(out, "persistence_timeout = {timeout}");
    }
    out.push_str(&knobs);
    if let Some((address, sorry_port, line)) = sorry_server {
        let address = toml_string(&address.to_string());
        if (mode == "dr" || mode == "tun") && sorry_port != port {
            notes.push(format!(
                "line {line}: sorry_server port {sorry_port}: {mode} cannot map ports; the service port {port} is used"
            ));
            let _ = writeln!(out, "sorry_server = {{ address = {address} }}");
        } else {
            let _ = writeln!(
                out,
                "sorry_server = {{ address = {address}, port = {sorry_port} }}"
            );
        }
    }
    match (granularity, persistence) {
        (Some(bits), Some(_)) => {
            let _ = writeln!(out, "persistence_netmask = {bits}");
        }
        (Some(_), None) => notes.push(format!(
            "line {}: persistence_granularity without persistence_timeout has no effect; not carried over",
            item.line
        )),
        (None, _) => {}
    }
    let _ = writeln!(out);
    let delay_loop = delay_loop.unwrap_or_else(|| "60.0".to_owned());
    for backend in backends {
        convert_backend(&backend, vip, &delay_loop, mode, port, out, notes)?;
    }
    Ok(())
}

fn convert_backend(
    item: &Item,
    vip: IpAddr,
    delay_loop: &str,
    mode: &str,
    service_port: u16,
    out: &mut String,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let (Some(address), Some(port_text)) = (word(item, 1), word(item, 2)) else {
        notes.push(format!(
            "line {}: real_server without address and port is skipped",
            item.line
        ));
        return Ok(());
    };
    let backend: IpAddr = address.parse().map_err(|_| {
        format!(
            "line {}: real_server {address:?} is not an IP address",
            item.line
        )
    })?;
    if backend.is_ipv4() != vip.is_ipv4() {
        return Err(format!(
            "line {}: real_server {backend} is not of the family of virtual_server {vip}",
            item.line
        ));
    }
    let port = port_number(port_text, item.line, "real_server")?;
    let _ = writeln!(
        out,
        "# keepalived line {}\n[[service.backend]]\naddress = {}",
        item.line,
        toml_string(&backend.to_string())
    );
    if (mode == "dr" || mode == "tun") && port != service_port {
        notes.push(format!("line {}: real_server {backend} {port}: {mode} cannot map ports; the service port {service_port} is used", item.line));
    } else {
        let _ = writeln!(out, "port = {port}");
    }
    let block = item.block.clone().unwrap_or_default();
    // Every checker of the real server: sluice takes the backend down when any fails, as keepalived does.
    let mut checks: Vec<String> = Vec::new();
    let mut inhibit = false;
    for directive in &block {
        let key = word(directive, 0).unwrap_or_default();
        match key {
            "weight" => {
                let _ = writeln!(out, "weight = {}", integer(directive, key)?);
            }
            "inhibit_on_failure" => inhibit = true,
            "notify_up" | "notify_down" => {
                let command = value(directive, key)?;
                let _ = writeln!(out, "{key} = {}", toml_string(command));
                if directive.words.len() > 2 {
                    notes.push(format!(
                        "line {}: {key}'s user and group are not carried over (sluice runs it as itself)",
                        directive.line
                    ));
                }
            }
            "TCP_CHECK" | "HTTP_GET" | "MISC_CHECK" => {
                let kind = match key {
                    "TCP_CHECK" => "tcp",
                    "HTTP_GET" => "http",
                    _ => "misc",
                };
                let mut check = String::new();
                let _ = writeln!(check, "type = \"{kind}\"\ndelay_loop = {delay_loop}");
                convert_check(directive, key, &mut check, notes)?;
                checks.push(check);
            }
            other => notes.push(format!("line {}: `{other}` in real_server {backend} {port} is not carried over (sluice checks TCP_CHECK, HTTP_GET and MISC_CHECK)", directive.line)),
        }
    }
    for check in checks {
        let _ = writeln!(
            out,
            "[[service.backend.health_check]]\n{check}on_failure = \"{}\"",
            if inhibit { "inhibit" } else { "remove" }
        );
    }
    let _ = writeln!(out);
    Ok(())
}

fn convert_check(
    directive: &Item,
    key: &str,
    check: &mut String,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let mut url_seen = false;
    for setting in directive.block.clone().unwrap_or_default() {
        let name = word(&setting, 0).unwrap_or_default();
        match name {
            "connect_timeout" | "delay_before_retry" | "warmup" => {
                let _ = writeln!(check, "{name} = {}", seconds(&setting, name)?);
            }
            "misc_path" if key == "MISC_CHECK" => {
                let _ = writeln!(
                    check,
                    "misc_path = {}",
                    toml_string(value(&setting, name)?)
                );
            }
            "misc_timeout" if key == "MISC_CHECK" => {
                let _ = writeln!(check, "misc_timeout = {}", seconds(&setting, name)?);
            }
            "connect_port" => {
                let port = port_number(value(&setting, name)?, setting.line, "connect_port")?;
                let _ = writeln!(check, "connect_port = {port}");
            }
            "connect_ip" => {
                let text = value(&setting, name)?;
                let ip: IpAddr = text.parse().map_err(|_| {
                    format!(
                        "line {}: connect_ip {text:?} is not an IP address",
                        setting.line
                    )
                })?;
                let _ = writeln!(check, "connect_ip = {}", toml_string(&ip.to_string()));
            }
            // keepalived retries N times after the first failure; sluice's retry counts every failure.
            "retry" | "nb_get_retry" => {
                let retries = integer(&setting, name)?;
                let _ = writeln!(check, "retry = {}", retries.saturating_add(1));
            }
            "url" if key == "HTTP_GET" && url_seen => {
                return Err(format!(
                    "line {}: a second url in HTTP_GET; sluice's HTTP check asks one path: keep the url that \
                     decides",
                    setting.line
                ))
            }
            "url" if key == "HTTP_GET" => {
                url_seen = true;
                for part in setting.block.clone().unwrap_or_default() {
                    match word(&part, 0).unwrap_or_default() {
                        "path" => {
                            let _ =
                                writeln!(check, "path = {}", toml_string(value(&part, "path")?));
                        }
                        "status_code" => {
                            let status = status_code(&part)?;
                            let _ = writeln!(check, "status = {status}");
                        }
                        other => notes.push(format!(
                            "line {}: url `{other}` is not carried over (digests are not checked)",
                            part.line
                        )),
                    }
                }
            }
            other => notes.push(format!(
                "line {}: `{other}` in {key} is not carried over",
                setting.line
            )),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn braces_quotes_and_comments() {
        let items = parse("a b{c \"d e\" # x\n\"f\\\"g\" ! y\n}\nz").unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].words, vec!["a", "b"]);
        let block = items[0].block.as_ref().unwrap();
        assert_eq!(block[0].words, vec!["c", "d e"]);
        assert_eq!(block[1].words, vec!["f\"g"]);
        assert_eq!(items[1].words, vec!["z"]);
        // `{` on the next line opens the previous line's block.
        let items = parse("virtual_server 10.0.0.1 80\n{\n lb_kind DR\n}\n").unwrap();
        assert_eq!(items.len(), 1);
        assert!(items[0].block.is_some());
        assert!(parse("a {\n b {\n}\n")
            .unwrap_err()
            .contains("line 1: this `{` is never closed (1 block"));
        assert!(parse("a }").unwrap_err().contains("closes nothing"));
        assert!(parse("a \"b")
            .unwrap_err()
            .contains("quoted string is not closed"));
        assert!(parse(&"{".repeat(50_000))
            .unwrap_err()
            .contains("nested deeper than 32"));
        assert!(parse(&format!("{}{}", "{".repeat(32), "}".repeat(32))).is_ok());
    }

    #[test]
    fn values_are_escaped_and_checked() {
        let converted = convert(
            "virtual_server 10.0.0.1 80 {\n real_server 10.0.0.2 80 {\n  HTTP_GET {\n   url {\n    path /a\"b\\c\n   }\n  }\n }\n}\n",
        )
        .unwrap()
        .0;
        assert!(converted.contains(r#"path = "/a\"b\\c""#), "{converted}");
        let config = Config::parse(&converted, "t").unwrap();
        assert_eq!(
            config.services[0].backends[0].health_checks[0].kind,
            crate::config::CheckKind::Http {
                path: "/a\"b\\c".into(),
                expected_status: 200
            }
        );
        for (text, needle) in [
            ("virtual_server 10.0.0.1 80 {\n delay_loop 5s\n}\n", "line 2: delay_loop \"5s\" is not a number of seconds"),
            ("virtual_server 10.0.0.1 http {\n}\n", "port \"http\""),
            ("virtual_server 10.0.0.1 80 {\n real_server 10.0.0.2 80 {\n  weight heavy\n }\n}\n", "line 3: weight"),
            ("virtual_server 10.0.0.1 80 {\n real_server 10.0.0.2 80 {\n  weight 70000\n }\n}\n", "would be refused"),
            ("virtual_server 10.0.0.1 80 {\n real_server fd00::2 80\n}\n", "family"),
            ("virtual_server 10.0.0.1 80 {\n real_server 10.0.0.2 80 {\n  HTTP_GET {\n   url {\n    path \"/a b\"\n   }\n  }\n }\n}\n", "path"),
        ] {
            let error = convert(text).unwrap_err();
            assert!(error.contains(needle), "{text:?}: {error}");
        }
        // FULLNAT and TUN get placeholders in [network], named in the notes.
        let (converted, notes) =
            convert("virtual_server 10.0.0.1 80 {\n lb_kind FNAT\n}\nvirtual_server fd00::1 80 {\n lb_kind TUN\n}\n")
                .unwrap();
        assert!(Config::parse(&converted, "t").is_ok(), "{converted}");
        assert!(
            notes.iter().any(|n| n.contains("local_addresses")),
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.contains("tunnel_source_v6")),
            "{notes:?}"
        );
    }

    proptest! {
        /// Whatever the input, the importer answers: an error, or a file the configuration parser accepts.
        #[test]
        fn output_always_parses(text in "[a-z_ {}\"#!\\\\\n0-9./:]{0,300}") {
            if let Ok((toml, _)) = convert(&text) {
                prop_assert!(Config::parse(&toml, "t").is_ok());
            }
        }

        #[test]
        fn keepalived_shaped_input_always_parses(
            vip in prop_oneof![Just("10.0.0.1"), Just("fd00::1"), Just("bad")],
            port in "[0-9a-z]{0,6}",
            kind in prop_oneof![Just("DR"), Just("NAT"), Just("TUN"), Just("FNAT"), Just("X")],
            weight in "[0-9a-z-]{0,6}",
            path in "[ -~]{0,12}",
            delay in "[0-9.e-]{0,6}",
        ) {
            let text = format!(
                "virtual_server {vip} {port} {{\n lb_kind {kind}\n delay_loop {delay}\n real_server 10.0.0.2 {port} {{\n  weight {weight}\n  HTTP_GET {{\n   url {{\n    path \"{}\"\n   }}\n  }}\n }}\n}}\n",
                path.replace('\\', "\\\\").replace('"', "\\\"")
            );
            if let Ok((toml, _)) = convert(&text) {
                prop_assert!(Config::parse(&toml, "t").is_ok(), "{}", toml);
            }
        }
    }
}
