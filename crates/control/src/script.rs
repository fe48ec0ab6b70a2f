//! Commands an operator configures (MISC_CHECK's `misc_path`, `notify_up`, `notify_down`) run with `/bin/sh -c`
//! in a process group of their own, bounded in time: at the deadline the whole group is killed, so a script that
//! hangs (or leaves a child behind) costs nothing after its timeout. Callers run this on a thread of their own,
//! never on the control thread.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Runs `command` with the extra environment `env`; `Ok` when it exits with status 0 within `timeout`, otherwise
/// why not (its exit status, the signal that ended it, or the timeout).
pub fn run(command: &str, env: &[(&str, String)], timeout: Duration) -> Result<(), String> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|error| format!("cannot start /bin/sh -c {command:?}: {error}"))?;
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return describe(status),
            Ok(None) => {}
            Err(error) => return Err(format!("waiting for {command:?}: {error}")),
        }
        if Instant::now() >= deadline {
            // The group id is the child's pid (process_group(0)); its own children die with it.
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "killed after its timeout of {} ms",
                timeout.as_millis()
            ));
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

fn describe(status: ExitStatus) -> Result<(), String> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return Ok(());
    }
    match (status.code(), status.signal()) {
        (Some(code), _) => Err(format!("exited with status {code}")),
        (None, Some(signal)) => Err(format!("ended by signal {signal}")),
        (None, None) => Err(format!("ended with {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_zero_passes_and_others_say_why() {
        assert_eq!(run("exit 0", &[], Duration::from_secs(5)), Ok(()));
        assert_eq!(
            run("exit 3", &[], Duration::from_secs(5)),
            Err("exited with status 3".into())
        );
        assert_eq!(
            run("kill -TERM $$", &[], Duration::from_secs(5)),
            Err("ended by signal 15".into())
        );
    }

    #[test]
    fn the_environment_reaches_the_command() {
        let env = [("SLUICE_STATE", "down".to_owned())];
        assert_eq!(
            run(
                "test \"$SLUICE_STATE\" = down",
                &env,
                Duration::from_secs(5)
            ),
            Ok(())
        );
    }

    #[test]
    fn a_command_that_hangs_is_killed_with_its_children_at_the_timeout() {
        let started = Instant::now();
        let outcome = run("sleep 30 & sleep 30; wait", &[], Duration::from_millis(200));
        assert_eq!(outcome, Err("killed after its timeout of 200 ms".into()));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}
