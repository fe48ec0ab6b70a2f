//! `sluice import-keepalived`: prints the sluice configuration equivalent to a keepalived.conf's virtual servers on
//! stdout and the notes on stderr, and writes its VRRP instances, bound to sluice's kernel interface, where
//! `--vrrp-out` says; the conversion itself is `control::keepalived` and `control::keepalived_vrrp`.

use std::path::{Path, PathBuf};

/// Where the VRRP half goes and what it calls.
#[derive(clap::Args, Debug)]
pub struct VrrpArgs {
    /// Write the VRRP-only keepalived configuration (for `keepalived --vrrp`) here.
    #[arg(long)]
    pub vrrp_out: Option<PathBuf>,
    /// The `sluice-vip-check` script keepalived runs (shipped as scripts/keepalived/sluice-vip-check).
    #[arg(long, default_value = "/usr/local/lib/sluice/sluice-vip-check")]
    pub check_script: String,
    /// sluice's control socket, written into both halves.
    #[arg(long, default_value = "/run/sluice.sock")]
    pub socket: String,
}

/// The subcommand: the configuration on stdout, the notes on stderr; an error (and nothing on stdout) when the
/// file cannot be converted into a configuration `sluice check` accepts.
pub fn import(path: &Path, vrrp: &VrrpArgs) -> Result<(), String> {
    let mut target = control::keepalived::default_vrrp_target();
    target.check_script = vrrp.check_script.clone();
    target.socket = vrrp.socket.clone();
    let converted = control::keepalived::convert_file(path, &target)?;
    match (&converted.keepalived, &vrrp.vrrp_out) {
        (Some(keepalived), Some(out)) => std::fs::write(out, keepalived)
            .map_err(|e| format!("{}: {e}", out.display()))?,
        (Some(_), None) => eprintln!(
            "{}: the file has VRRP instances: pass --vrrp-out FILE to write keepalived's VRRP-only configuration",
            path.display()
        ),
        (None, Some(out)) => eprintln!(
            "{}: no vrrp_instance: nothing written to {}",
            path.display(),
            out.display()
        ),
        (None, None) => {}
    }
    print!("{}", converted.sluice);
    for note in converted.notes {
        eprintln!("{}: {note}", path.display());
    }
    Ok(())
}
