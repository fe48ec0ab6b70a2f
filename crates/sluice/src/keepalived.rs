//! `sluice import-keepalived`: prints the sluice configuration equivalent to a keepalived.conf's virtual servers on
//! stdout and the notes on stderr; the conversion itself is `control::keepalived`.

use std::path::Path;

/// The subcommand: the configuration on stdout, the notes on stderr; an error (and nothing on stdout) when the
/// file cannot be converted into a configuration `sluice check` accepts.
pub fn import(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (toml, notes) =
        control::keepalived::convert(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    print!("{toml}");
    for note in notes {
        eprintln!("{}: {note}", path.display());
    }
    Ok(())
}
