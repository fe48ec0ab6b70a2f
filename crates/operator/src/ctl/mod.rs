//! Operating a running sluice: the control socket (a Unix socket, mode 0600, one text command per connection) that
//! `sluice ctl` talks to, and the Prometheus text endpoint. Connections are read and written off the control thread
//! (see `serve.rs`), each within its deadlines; the control thread gets complete requests over a queue and answers
//! them between its other duties, never by a worker and never waiting for a client. This file owns the queue and
//! sends each request (parsed by `control::protocol`) to the verbs of its family, one file each.

mod client;
mod counters;
mod edit;
mod list;
mod save;
mod timeouts;
mod trace;

pub use client::client;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use control::protocol::Request;
use crossbeam::channel::{Receiver, RecvTimeoutError};

use crate::control_loop::ControlLoop;
use crate::serve::{Job, Listeners, Server, Work};

/// Requests handled per turn of the control loop before it looks at its other duties again.
const JOBS_PER_TURN: usize = 64;

/// The control socket and the metrics endpoint of a running sluice.
pub struct Endpoints {
    /// Dropping it stops the accepting threads and removes the socket file.
    _server: Server,
    jobs: Receiver<Job>,
    /// The counters sampled over fixed windows, for `rate`.
    rate: crate::rate::RateWindow,
}

impl Endpoints {
    /// Binds the control socket and the metrics listener the configuration names and starts accepting: requests
    /// wait in a queue until the control loop's first [`Endpoints::serve`].
    pub fn open(socket: Option<&str>, metrics: Option<SocketAddr>) -> Result<Endpoints, String> {
        Endpoints::start(Listeners::bind(socket, metrics)?)
    }

    /// Starts accepting on listeners bound earlier (`sluice run` binds them before the EAL starts, so that an
    /// address it cannot use stops it before any device is touched).
    pub fn start(listeners: Listeners) -> Result<Endpoints, String> {
        let (server, jobs) = listeners.start()?;
        Ok(Endpoints {
            _server: server,
            jobs,
            rate: Default::default(),
        })
    }

    /// Answers the requests that are complete, waiting up to 5 ms for the first: the control loop's pause.
    pub fn serve(&mut self, control: &mut ControlLoop, config_path: &Path) {
        self.rate.tick(&control.stats, Instant::now());
        let pause = Duration::from_millis(5);
        let first = match self.jobs.recv_timeout(pause) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => return,
            // Neither endpoint is configured: nothing will ever come.
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(pause);
                return;
            }
        };
        let mut job = Some(first);
        for _ in 0..JOBS_PER_TURN {
            let Some(Job { work, reply }) = job.take() else {
                break;
            };
            let answer = match work {
                Work::Control(request) => self.command(request, control, config_path),
                Work::Metrics => crate::metrics::metrics(control),
            };
            // A channel of one, for this answer only: never blocks; a client that gave up is not waited for.
            let _ = reply.try_send(answer);
            job = self.jobs.try_recv().ok();
        }
    }

    fn command(
        &mut self,
        request: Request,
        control: &mut ControlLoop,
        config_path: &Path,
    ) -> String {
        let outcome = |result: Result<String, String>| match result {
            Ok(message) => format!("{message}\n"),
            Err(error) => format!("error: {error}\n"),
        };
        match request {
            Request::List => list::list(control),
            Request::Stats => crate::service_stats::service_stats(
                &control.config,
                &mut control.registry,
                &control.stats,
                &control.zeroed,
            ),
            Request::Timeouts => timeouts::show(control),
            Request::SetTimeouts { tcp, tcpfin, udp } => {
                outcome(timeouts::set(control, tcp, tcpfin, udp))
            }
            Request::Zero => counters::zero(control),
            Request::Rate => self.rate.answer(control),
            Request::Conns => list::connection_counts(&control.stats),
            Request::Connections {
                filter,
                offset,
                limit,
            } => crate::connections::list(control, filter, offset, limit),
            Request::Save => save::save(control),
            Request::Sync => match &control.sync {
                Some(sync) => sync.describe(Instant::now()),
                None => "sync: not configured (no [sync] section)\n".into(),
            },
            Request::Reload => {
                let result = control.reload(config_path);
                control.observed.count_reload(&result);
                match &result {
                    Ok(message) => log::info!("ctl: {message}"),
                    Err(error) => log::error!("ctl: {error}"),
                }
                outcome(result)
            }
            Request::Drain(address) => outcome(logged(control.set_drained(address, true))),
            Request::Undrain(address) => outcome(logged(control.set_drained(address, false))),
            Request::Trace {
                client,
                vip,
                protocol,
            } => trace::trace(control, client, vip, protocol),
            edit_request => outcome(logged(edit::edit(control, edit_request))),
        }
    }
}

/// A change asked over the control socket goes to the log as well as to the caller.
fn logged(result: Result<String, String>) -> Result<String, String> {
    match &result {
        Ok(message) => log::info!("ctl: {message}"),
        Err(error) => log::warn!("ctl: refused: {error}"),
    }
    result
}
