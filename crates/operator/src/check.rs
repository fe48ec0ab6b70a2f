//! `sluice check`: validates a configuration file as `sluice run` would before it touches a device
//! (`crate::validate`), and prints what it describes.

use std::path::Path;

/// Prints the warnings and a summary of the file; `Err` holds the message `sluice run` would stop with.
pub fn check(path: &Path) -> Result<(), String> {
    let config = control::config::Config::load(path).map_err(|e| e.to_string())?;
    let checked = crate::validate::validate_for_check(&config)?;
    for warning in &config.warnings {
        println!("warning: {warning}");
    }
    for warning in checked
        .iter()
        .chain(&crate::cluster::cluster_warnings(&config))
    {
        println!("warning: {warning}");
    }
    println!(
        "{}: {} ports, {} workers, {} services{}",
        config.origin,
        config.ports.len(),
        config.workers.cores.len(),
        config.services.len(),
        if config.pipe.is_some() { ", pipe" } else { "" }
    );
    for service in &config.services {
        println!(
            "  {} {:?} {:?}: {} backends",
            balancer::snapshot::describe_service(&service.key),
            service.mode,
            service.scheduler,
            service.backends.len()
        );
    }
    Ok(())
}
