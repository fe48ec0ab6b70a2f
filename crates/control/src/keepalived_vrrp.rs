//! The VRRP half of `sluice import-keepalived`: a keepalived.conf's `global_defs`, `vrrp_sync_group` and
//! `vrrp_instance` blocks as a VRRP-only keepalived configuration (for `keepalived --vrrp`) bound to sluice's kernel
//! interface, where keepalived puts the VIPs when it is MASTER and sluice follows them (`vip_owner = "vrrp"`).
//!
//! What changes on the way: every `interface` (and `dev` of a virtual address) becomes sluice's kernel interface,
//! because VRRP adverts and gratuitous ARPs must go through sluice's port; `track_interface` and the operator's
//! `track_script`s are replaced by one `vrrp_script` that asks sluice whether the VIP has a backend that can take
//! traffic, so that a node whose backends are all unreachable gives the VIP away; `dynamic_interfaces` is added
//! to `global_defs`, because sluice's interface goes and comes back with sluice. Everything else is carried as
//! written (priorities, `advert_int`, authentication, `nopreempt`, `preempt_delay`, unicast peers...), and the
//! notes name what was dropped.

use std::fmt::Write as _;

use crate::keepalived::Item;

/// Where the VRRP half binds, and how its health script reaches sluice.
#[derive(Clone, Debug)]
pub struct VrrpTarget {
    /// sluice's kernel interface (the tap of the port facing the VRRP segment).
    pub interface: String,
    /// The `sluice-vip-check` script (installed from `scripts/keepalived/sluice-vip-check`).
    pub check_script: String,
    /// sluice's control socket, which the script asks.
    pub socket: String,
}

/// The name of the `vrrp_script` the importer writes.
pub const CHECK_NAME: &str = "chk_sluice";

/// Blocks of a VRRP-only configuration that are dropped: they belong to the IPVS half or to the operator's own
/// scripts, which the sluice check replaces.
const DROPPED_IN_INSTANCE: [&str; 3] = ["track_interface", "track_script", "track_process"];

/// Whether `keyword` starts a block this half carries.
pub fn is_vrrp_block(keyword: &str) -> bool {
    matches!(
        keyword,
        "global_defs" | "vrrp_instance" | "vrrp_sync_group" | "vrrp_script"
    )
}

/// Writes `item` back in keepalived's syntax, indented by `depth`; words with spaces or quotes are quoted.
fn write_item(out: &mut String, item: &Item, depth: usize) {
    let indent = "    ".repeat(depth);
    let words: Vec<String> = item.words.iter().map(|word| quote(word)).collect();
    match &item.block {
        None => {
            let _ = writeln!(out, "{indent}{}", words.join(" "));
        }
        Some(block) => {
            let _ = writeln!(out, "{indent}{} {{", words.join(" "));
            for inner in block {
                write_item(out, inner, depth + 1);
            }
            let _ = writeln!(out, "{indent}}}");
        }
    }
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| !c.is_whitespace() && !matches!(c, '"' | '\\' | '{' | '}' | '#' | '!'));
    if plain {
        word.to_owned()
    } else {
        format!("\"{}\"", word.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// The VIPs of the `virtual_ipaddress` blocks of `items`' instances, as written (an address, maybe `/len`).
pub fn virtual_addresses(items: &[Item]) -> Vec<String> {
    let mut addresses = Vec::new();
    for instance in items
        .iter()
        .filter(|item| item.words.first().map(String::as_str) == Some("vrrp_instance"))
    {
        for inner in instance.block.iter().flatten() {
            if inner.words.first().map(String::as_str) == Some("virtual_ipaddress") {
                for address in inner.block.iter().flatten() {
                    if let Some(first) = address.words.first() {
                        let bare = first.split('/').next().unwrap_or(first);
                        addresses.push(bare.to_owned());
                    }
                }
            }
        }
    }
    addresses
}

/// The VRRP-only configuration for `items` (`None` when the file has no `vrrp_instance`), and the notes.
pub fn convert(items: &[Item], target: &VrrpTarget) -> Option<(String, Vec<String>)> {
    if !items
        .iter()
        .any(|item| item.words.first().map(String::as_str) == Some("vrrp_instance"))
    {
        return None;
    }
    let mut notes = Vec::new();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# VRRP only, for sluice: converted by `sluice import-keepalived`.\n# Run it with `keepalived --vrrp \
         --use-file <this file>` beside `sluice run` (vip_owner = \"vrrp\"): keepalived puts the VIPs on\n# \
         sluice's kernel interface {} when it is MASTER, and sluice answers for them while they are there.\n",
        target.interface
    );
    let mut global = Item {
        words: vec!["global_defs".into()],
        line: 0,
        block: Some(Vec::new()),
    };
    for item in items
        .iter()
        .filter(|item| item.words.first().map(String::as_str) == Some("global_defs"))
    {
        for inner in item.block.iter().flatten() {
            match inner.words.first().map(String::as_str) {
                Some(keyword) if keyword.starts_with("lvs_") || keyword == "dynamic_interfaces" => {
                    if keyword.starts_with("lvs_") {
                        notes.push(format!("line {}: `{keyword}` in global_defs is for IPVS: not carried (sluice balances)", inner.line));
                    }
                }
                _ => global
                    .block
                    .get_or_insert_with(Vec::new)
                    .push(inner.clone()),
            }
        }
    }
    let global_block = global.block.get_or_insert_with(Vec::new);
    // sluice's interface goes when sluice stops and comes back when it starts again.
    global_block.push(Item {
        words: vec!["dynamic_interfaces".into()],
        line: 0,
        block: None,
    });
    // The check reads sluice's control socket, which belongs to root: keepalived runs scripts as root only with
    // script security on (the script and its directories must then be writable by root alone).
    for words in [
        &["script_user", "root"][..],
        &["enable_script_security"][..],
    ] {
        let present = global_block
            .iter()
            .any(|inner| inner.words.first().map(String::as_str) == Some(words[0]));
        if !present {
            global_block.push(Item {
                words: words.iter().map(|word| word.to_string()).collect(),
                line: 0,
                block: None,
            });
        }
    }
    write_item(&mut out, &global, 0);
    let vips = virtual_addresses(items);
    if vips.is_empty() {
        notes.push(
            "no vrrp_instance has a virtual_ipaddress: keepalived will move no VIP, and chk_sluice has none to \
             check (it fails until one is added to its script line)"
                .to_owned(),
        );
    }
    let _ = writeln!(
        out,
        "\n# Fails while sluice is unreachable or has no backend that can take traffic for the VIPs: the instance\n\
         # then goes to FAULT and gives the VIPs to the other node. Three passes before the node takes them back\n\
         # leave its health checks a round to agree with the other node's: with mh, connections keep their backend\n\
         # only when both nodes built the same table.\nvrrp_script {CHECK_NAME} {{\n    script {}\n    \
         interval 1\n    fall 1\n    rise 3\n}}\n",
        quote(&format!("{} {} {}", target.check_script, target.socket, vips.join(" ")))
    );
    for item in items {
        match item.words.first().map(String::as_str) {
            Some("vrrp_sync_group") => {
                write_item(&mut out, item, 0);
                out.push('\n');
            }
            Some("vrrp_script") => notes.push(format!(
                "line {}: vrrp_script {} is replaced by {CHECK_NAME}, which asks sluice for the VIP's backends",
                item.line,
                item.words.get(1).map_or("", String::as_str)
            )),
            Some("vrrp_instance") => {
                write_item(&mut out, &instance(item, target, &mut notes), 0);
                out.push('\n');
            }
            _ => {}
        }
    }
    Some((out, notes))
}

/// One `vrrp_instance` bound to sluice's interface and tracking sluice.
fn instance(item: &Item, target: &VrrpTarget, notes: &mut Vec<String>) -> Item {
    let name = item.words.get(1).map_or("", String::as_str);
    let mut block = Vec::new();
    for inner in item.block.iter().flatten() {
        let keyword = inner.words.first().map(String::as_str).unwrap_or("");
        match keyword {
            "interface" => {
                if inner.words.get(1) != Some(&target.interface) {
                    notes.push(format!(
                        "line {}: vrrp_instance {name}: interface {} becomes sluice's kernel interface {}",
                        inner.line,
                        inner.words.get(1).map_or("", String::as_str),
                        target.interface
                    ));
                }
            }
            "virtual_ipaddress" | "virtual_ipaddress_excluded" => {
                let mut addresses = inner.clone();
                for address in addresses.block.iter_mut().flatten() {
                    if let Some(position) = address.words.iter().position(|word| word == "dev") {
                        if let Some(device) = address.words.get_mut(position + 1) {
                            *device = target.interface.clone();
                        }
                    }
                }
                block.push(addresses);
            }
            keyword if DROPPED_IN_INSTANCE.contains(&keyword) => notes.push(format!(
                "line {}: vrrp_instance {name}: `{keyword}` is replaced by track_script {CHECK_NAME}",
                inner.line
            )),
            _ => block.push(inner.clone()),
        }
    }
    block.insert(
        0,
        Item {
            words: vec!["interface".into(), target.interface.clone()],
            line: 0,
            block: None,
        },
    );
    block.push(Item {
        words: vec!["track_script".into()],
        line: 0,
        block: Some(vec![Item {
            words: vec![CHECK_NAME.into()],
            line: 0,
            block: None,
        }]),
    });
    Item {
        words: item.words.clone(),
        line: item.line,
        block: Some(block),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keepalived::parse;

    const MASTER: &str = r#"
global_defs {
   router_id LVS_DEVEL
   lvs_sync_daemon eth0 VI_1
}
vrrp_script chk_http_port {
    script "/usr/bin/killall -0 nginx"
    interval 2
    weight -20
}
vrrp_instance VI_1 {
    state MASTER
    interface eth0
    virtual_router_id 51
    priority 150
    advert_int 1
    authentication {
        auth_type PASS
        auth_pass "se cret"
    }
    track_script {
        chk_http_port
    }
    virtual_ipaddress {
        192.168.1.100/24 dev eth0 label eth0:1
    }
}
vrrp_sync_group VG_1 {
    group {
        VI_1
    }
}
"#;

    fn target() -> VrrpTarget {
        VrrpTarget {
            interface: "sl-wan".into(),
            check_script: "/usr/local/lib/sluice/sluice-vip-check".into(),
            socket: "/run/sluice.sock".into(),
        }
    }

    #[test]
    fn an_instance_is_bound_to_the_tap_and_tracks_sluice() {
        let (text, notes) = convert(&parse(MASTER).unwrap(), &target()).unwrap();
        let reparsed = parse(&text).unwrap();
        let instance = reparsed
            .iter()
            .find(|item| item.words[0] == "vrrp_instance")
            .unwrap();
        let block = instance.block.as_ref().unwrap();
        let words = |keyword: &str| {
            block
                .iter()
                .find(|inner| inner.words[0] == keyword)
                .map(|inner| inner.words.clone())
        };
        assert_eq!(words("interface").unwrap(), ["interface", "sl-wan"]);
        assert_eq!(words("priority").unwrap(), ["priority", "150"]);
        assert!(
            text.contains("192.168.1.100/24 dev sl-wan label eth0:1"),
            "{text}"
        );
        assert!(text.contains("auth_pass \"se cret\""), "{text}");
        assert!(text.contains("dynamic_interfaces"), "{text}");
        assert!(
            text.contains("chk_sluice") && !text.contains("chk_http_port"),
            "{text}"
        );
        assert!(text.contains("/run/sluice.sock 192.168.1.100\""), "{text}");
        assert!(text.contains("vrrp_sync_group VG_1"), "{text}");
        assert!(!text.contains("lvs_sync_daemon"), "{text}");
        for needle in ["lvs_sync_daemon", "chk_http_port", "interface eth0"] {
            assert!(
                notes.iter().any(|note| note.contains(needle)),
                "{needle}: {notes:?}"
            );
        }
    }

    #[test]
    fn master_and_backup_stay_different() {
        let backup = MASTER.replace("MASTER", "BACKUP").replace("150", "100");
        let (master, _) = convert(&parse(MASTER).unwrap(), &target()).unwrap();
        let (backup, _) = convert(&parse(&backup).unwrap(), &target()).unwrap();
        assert!(master.contains("state MASTER") && master.contains("priority 150"));
        assert!(backup.contains("state BACKUP") && backup.contains("priority 100"));
    }

    #[test]
    fn no_instance_no_vrrp_half() {
        assert!(convert(
            &parse("global_defs {\n router_id a\n}\n").unwrap(),
            &target()
        )
        .is_none());
    }
}
