//! What an installation needs from the command-line definitions: manual pages (`sluice manpages DIR`) and shell
//! completions (`sluice completions SHELL`), generated from the same clap definitions the binary parses, so they
//! cannot drift from it. `scripts/install.sh` calls both.

use std::path::Path;

use clap_complete::Shell;

/// The sections of `sluice(1)` that clap does not know about.
const MANUAL_EXTRA: &str = "\
Configuration: /etc/sluice/sluice.toml under the systemd unit (see config/README.md for every key, \
config/OPERATIONS.md for ctl, the metrics and the log lines).

Signals: SIGHUP reloads the configuration (a file that fails validation is refused and the running one stays); \
SIGTERM and SIGINT stop the workers and remove the control socket.

systemd: sluice.service is Type=notify: READY=1 is sent once every worker is polling its queues, STOPPING=1 when \
it stops, RELOADING=1 then READY=1 around a reload. ExecReload sends SIGHUP.

Environment: RUST_LOG sets the log level (default info); NOTIFY_SOCKET is set by systemd.

See also: ipvsadm(8), keepalived.conf(5), dpdk-testpmd(1).";

/// Writes sluice.1 and one page per visible subcommand (sluice-run.1, ...) into `dir`.
pub fn write_manpages(command: clap::Command, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let command = command.after_long_help(MANUAL_EXTRA);
    clap_mangen::generate_to(command, dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(())
}

/// Prints the completion script for `shell` on standard output.
pub fn write_completions(mut command: clap::Command, shell: Shell) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut command, "sluice", &mut out);
    Ok(())
}
