//! The `sluice ctl` side of the control socket: one command out, the answer printed.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// `sluice ctl`: sends one command to the control socket and prints the answer.
pub fn client(socket: &Path, command: &[String]) -> Result<(), String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "control socket {}: {e} (is sluice running with [control] socket?)",
            socket.display()
        )
    })?;
    // sluice answers within its own deadlines (a reload within a few seconds); this bounds a stuck peer.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    stream
        .write_all(format!("{}\n", command.join(" ")).as_bytes())
        .map_err(|e| e.to_string())?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    print!("{answer}");
    if answer.starts_with("error:") {
        return Err("the command was refused".into());
    }
    Ok(())
}
