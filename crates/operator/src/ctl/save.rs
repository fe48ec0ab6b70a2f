//! `save` (ipvsadm -S): the running configuration as a file `sluice check` accepts, and what it does not keep.

use crate::control_loop::ControlLoop;

pub(super) fn save(control: &mut ControlLoop) -> String {
    let running = crate::control_loop::running_config(control);
    format!(
        "# The running configuration of sluice (generation {}), written by `sluice ctl save`: ctl edits,\n\
         # set-timeout and drains (a backend's `drained` key) included. Not kept: the comments and\n\
         # key order of the file it came from, and what is state rather than configuration (health,\n\
         # counters, connections).\n\n{}",
        control.generation,
        control::render::render(&running)
    )
}
