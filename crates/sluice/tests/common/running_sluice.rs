//! A `sluice run` child under test: its output read line by line as it comes (stderr, and stdout when piped), a
//! wait for the line a test expects, the whole log for the messages of failed assertions, and the process stopped
//! (SIGTERM, then SIGKILL) when the test ends however it ends.

use std::io::{BufRead, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// How long a sluice that is dropped still running has to stop on SIGTERM before it is killed.
const STOP_ON_DROP: Duration = Duration::from_secs(10);
/// How long [`RunningSluice::terminate`] waits for the process to exit.
const TERMINATE_WITHIN: Duration = Duration::from_secs(20);
/// How long the output of a process that exited may still take to be read.
const DRAIN_WITHIN: Duration = Duration::from_secs(2);

/// One line of the child's output, when it was read and whether it came on stdout.
struct Line {
    at: Instant,
    text: String,
    from_stdout: bool,
}

pub struct RunningSluice {
    pub child: Child,
    lines: Receiver<Line>,
    /// Every line read so far (stderr and stdout as they came), each ended by a newline.
    pub log: String,
    /// The stdout lines read so far (only when stdout is piped), each ended by a newline.
    pub stdout: String,
}

/// A sluice that has exited: how long it took from the request, how, and all it wrote.
pub struct Stopped {
    pub took: Duration,
    pub status: ExitStatus,
    pub log: String,
    pub stdout: String,
}

impl RunningSluice {
    /// `sluice run --config config` with info logging, without systemd's notification socket, stdout discarded
    /// and stderr piped: what [`RunningSluice::start`] runs, for a test to adjust before [`RunningSluice::adopt`].
    pub fn command(config: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// [`RunningSluice::command`] spawned.
    pub fn start(config: &Path) -> RunningSluice {
        RunningSluice::adopt(RunningSluice::command(config).spawn().unwrap())
    }

    /// [`RunningSluice::start`] with stdout read too: into the log, and on its own into
    /// [`RunningSluice::stdout`] (where sluice writes its summary at exit).
    pub fn start_with_stdout(config: &Path) -> RunningSluice {
        RunningSluice::adopt(
            RunningSluice::command(config)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    /// A sluice spawned elsewhere with its stderr piped; its stdout too is read when piped.
    pub fn adopt(mut child: Child) -> RunningSluice {
        let (send, lines) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("sluice's stderr is piped");
        if let Some(stdout) = child.stdout.take() {
            read_lines(stdout, true, send.clone());
        }
        read_lines(stderr, false, send);
        RunningSluice {
            child,
            lines,
            log: String::new(),
            stdout: String::new(),
        }
    }

    /// Waits (at most `within`) for a line read from now on that contains `needle`, and returns it.
    #[track_caller]
    pub fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        self.wait_for_timed(needle, within).1
    }

    /// [`RunningSluice::wait_for`], with when the line was read.
    #[track_caller]
    pub fn wait_for_timed(&mut self, needle: &str, within: Duration) -> (Instant, String) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.keep(&line);
                    if line.text.contains(needle) {
                        return (line.at, line.text);
                    }
                }
                Err(_) => panic!("no {needle:?} within {within:?} in:\n{}", self.log),
            }
        }
    }

    /// Sends signal `name` (HUP, TERM, ...) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, and how the process exited (within 20 s, else the test fails) and how long it took.
    #[track_caller]
    pub fn terminate(self) -> Stopped {
        let asked = Instant::now();
        self.signal("TERM");
        self.exit_since(asked, TERMINATE_WITHIN)
    }

    /// Waits (at most `within`) for the process to exit on its own.
    #[track_caller]
    pub fn wait_exit(self, within: Duration) -> Stopped {
        self.exit_since(Instant::now(), within)
    }

    #[track_caller]
    fn exit_since(mut self, since: Instant, within: Duration) -> Stopped {
        let deadline = since + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let took = since.elapsed();
                self.drain();
                return Stopped {
                    took,
                    status,
                    log: std::mem::take(&mut self.log),
                    stdout: std::mem::take(&mut self.stdout),
                };
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("sluice did not stop within {within:?}:\n{}", self.log);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Reads what the exited process left in its pipes, until they close.
    fn drain(&mut self) {
        let deadline = Instant::now() + DRAIN_WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.keep(&line),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn keep(&mut self, line: &Line) {
        self.log.push_str(&line.text);
        self.log.push('\n');
        if line.from_stdout {
            self.stdout.push_str(&line.text);
            self.stdout.push('\n');
        }
    }
}

/// Sends each line of `from` on `to` as it is read, from a thread of its own.
fn read_lines(from: impl Read + Send + 'static, from_stdout: bool, to: Sender<Line>) {
    std::thread::spawn(move || {
        for text in std::io::BufReader::new(from).lines().map_while(Result::ok) {
            let line = Line {
                at: Instant::now(),
                text,
                from_stdout,
            };
            if to.send(line).is_err() {
                break;
            }
        }
    });
}

impl Drop for RunningSluice {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_ON_DROP;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
