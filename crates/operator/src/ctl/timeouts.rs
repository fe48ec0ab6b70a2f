//! ipvsadm's timeouts: `timeout` shows them (-L --timeout), `set-timeout` sets them (--set) in the running
//! configuration and in every worker, where each connection takes them at its next packet.

use crate::control_loop::ControlLoop;

/// `ipvsadm -L --timeout`, then every idle timeout in seconds.
pub(super) fn show(control: &ControlLoop) -> String {
    let t = control.config.network.timeouts;
    format!(
        "Timeout (tcp tcpfin udp): {} {} {}\n\
         all (seconds): established {} syn_sent {} syn_recv {} fin_wait {} time_wait {} close {} \
         close_wait {} last_ack {} listen {} syn_ack {} udp {} icmp {}\n",
        t.established / 1000,
        t.fin_wait / 1000,
        t.udp / 1000,
        t.established / 1000,
        t.syn_sent / 1000,
        t.syn_recv / 1000,
        t.fin_wait / 1000,
        t.time_wait / 1000,
        t.close / 1000,
        t.close_wait / 1000,
        t.last_ack / 1000,
        t.listen / 1000,
        t.synack / 1000,
        t.udp / 1000,
        t.icmp / 1000
    )
}

/// `ipvsadm --set`: the running configuration's timeouts (validated as the file's), then every worker's.
pub(super) fn set(
    control: &mut ControlLoop,
    tcp: u64,
    tcpfin: u64,
    udp: u64,
) -> Result<String, String> {
    let message = control.edit(|config| {
        let timeouts = &mut config.network.timeouts;
        for (seconds, field) in [
            (tcp, &mut timeouts.established),
            (tcpfin, &mut timeouts.fin_wait),
            (udp, &mut timeouts.udp),
        ] {
            if seconds > 0 {
                *field = seconds.saturating_mul(1000);
            }
        }
        Ok(format!(
            "timeouts (tcp tcpfin udp) now {} {} {}",
            timeouts.established / 1000,
            timeouts.fin_wait / 1000,
            timeouts.udp / 1000
        ))
    })?;
    control.push_timeouts()?;
    log::info!("ctl: {message}");
    Ok(message)
}
