//! The control socket and the metrics endpoint as listeners of their own: one accepting thread per listener and a
//! short-lived thread per connection, each bounded in time (reading the request, waiting for the answer, writing
//! it) and in number. A client that connects and says nothing, or sends a byte a second, costs one thread until its
//! deadline and delays nobody: the control thread only ever sees complete requests, over a queue, and answers them
//! without waiting for any client.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use control::protocol::MAX_HTTP_HEAD;
use control::protocol::{parse_http_head, parse_request, HttpRequest, Request, MAX_CONTROL_LINE};
use crossbeam::channel::{bounded, Receiver, Sender};

/// Connections served at once per listener; one more is answered "busy" and closed.
pub const MAX_CONNECTIONS: usize = 512;
/// From accept to the end of the request.
pub const READ_DEADLINE: Duration = Duration::from_secs(2);
/// From the end of the request to the control thread's answer (a reload waits up to a second for the workers).
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(10);
/// For writing the answer.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(2);
/// How long a refused metrics connection is read from before it is closed.
const REFUSAL_DRAIN: Duration = Duration::from_millis(5);
/// How often an accepting thread looks at the stop flag.
const POLL_INTERVAL_MS: u16 = 50;
/// Connection threads only parse and copy bytes.
const CONNECTION_STACK: usize = 128 * 1024;

/// What a connection asks of the control thread.
pub enum Work {
    Control(Request),
    Metrics,
}

/// A complete request and where its answer goes (a channel of one: answering never blocks).
pub struct Job {
    pub work: Work,
    pub reply: Sender<String>,
}

/// Removes the control socket's file when dropped.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The bound listeners, not yet served.
pub struct Listeners {
    socket: Option<(UnixListener, SocketFile)>,
    metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds the control socket (mode 0600; a stale file from a killed run is replaced, a live sluice is not) and
    /// the metrics address.
    pub fn bind(socket: Option<&str>, metrics: Option<SocketAddr>) -> Result<Listeners, String> {
        let socket = match socket {
            Some(path) => {
                let path = PathBuf::from(path);
                if UnixStream::connect(&path).is_ok() {
                    return Err(format!(
                        "control socket {}: another sluice is listening there",
                        path.display()
                    ));
                }
                let _ = std::fs::remove_file(&path);
                let listener = UnixListener::bind(&path)
                    .map_err(|e| format!("control socket {}: {e}", path.display()))?;
                let file = SocketFile(path);
                std::fs::set_permissions(&file.0, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| format!("control socket {}: {e}", file.0.display()))?;
                listener.set_nonblocking(true).map_err(|e| e.to_string())?;
                Some((listener, file))
            }
            None => None,
        };
        let metrics = match metrics {
            Some(address) => {
                let listener = TcpListener::bind(address)
                    .map_err(|e| format!("metrics listener {address}: {e}"))?;
                listener.set_nonblocking(true).map_err(|e| e.to_string())?;
                log::info!("metrics on http://{address}/metrics");
                Some(listener)
            }
            None => None,
        };
        Ok(Listeners { socket, metrics })
    }

    /// Starts serving: complete requests arrive on the returned receiver.
    pub fn start(self) -> Result<(Server, Receiver<Job>), String> {
        let (jobs, receiver) = bounded(256);
        let stop = Arc::new(AtomicBool::new(false));
        let mut server = Server {
            stop: Arc::clone(&stop),
            acceptors: Vec::new(),
            socket_file: None,
        };
        if let Some((listener, file)) = self.socket {
            server.socket_file = Some(file);
            let jobs = jobs.clone();
            server.acceptors.push(spawn_acceptor(
                "ctl-accept",
                listener,
                Arc::clone(&stop),
                move |stream: UnixStream| serve_control(stream, &jobs),
                |mut stream: UnixStream| {
                    let _ = stream.write(b"error: busy, too many control connections\n");
                },
            )?);
        }
        if let Some(listener) = self.metrics {
            server.acceptors.push(spawn_acceptor(
                "metrics-accept",
                listener,
                Arc::clone(&stop),
                move |stream: TcpStream| serve_metrics(stream, &jobs),
                |mut stream: TcpStream| {
                    let _ = stream.write(&response(
                        "503 Service Unavailable",
                        "",
                        b"too many connections\n",
                        false,
                    ));
                    // Closing with the request unread would reset the connection and lose the 503: take what has
                    // arrived (a few milliseconds at most) first.
                    let _ = stream.shutdown(std::net::Shutdown::Write);
                    let until = Instant::now() + REFUSAL_DRAIN;
                    let mut scratch = [0u8; 1024];
                    while let Some(left) = until
                        .checked_duration_since(Instant::now())
                        .filter(|left| !left.is_zero())
                    {
                        let _ = stream.set_read_timeout(Some(left));
                        if !matches!(stream.read(&mut scratch), Ok(n) if n > 0) {
                            break;
                        }
                    }
                },
            )?);
        }
        Ok((server, receiver))
    }
}

/// The accepting threads; dropping it stops them (within [`POLL_INTERVAL_MS`]) and removes the socket file.
/// Connection threads are not waited for: each ends by its own deadlines.
pub struct Server {
    stop: Arc<AtomicBool>,
    acceptors: Vec<JoinHandle<()>>,
    socket_file: Option<SocketFile>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for acceptor in self.acceptors.drain(..) {
            let _ = acceptor.join();
        }
        self.socket_file.take();
    }
}

/// What both kinds of stream offer.
trait Connection: Read + Write + Send + 'static {
    fn set_read_deadline(&self, left: Duration) -> std::io::Result<()>;
    fn set_write_deadline(&self, left: Duration) -> std::io::Result<()>;
    fn set_blocking(&self) -> std::io::Result<()>;
}

macro_rules! connection {
    ($stream:ty) => {
        impl Connection for $stream {
            fn set_read_deadline(&self, left: Duration) -> std::io::Result<()> {
                self.set_read_timeout(Some(left))
            }
            fn set_write_deadline(&self, left: Duration) -> std::io::Result<()> {
                self.set_write_timeout(Some(left))
            }
            fn set_blocking(&self) -> std::io::Result<()> {
                self.set_nonblocking(false)
            }
        }
    };
}
connection!(UnixStream);
connection!(TcpStream);

trait Accept: AsFd + Send + 'static {
    type Stream: Connection;
    fn accept_one(&self) -> std::io::Result<Self::Stream>;
}

impl Accept for UnixListener {
    type Stream = UnixStream;
    fn accept_one(&self) -> std::io::Result<UnixStream> {
        self.accept().map(|(stream, _)| stream)
    }
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    fn accept_one(&self) -> std::io::Result<TcpStream> {
        self.accept().map(|(stream, _)| stream)
    }
}

fn spawn_acceptor<L: Accept>(
    name: &str,
    listener: L,
    stop: Arc<AtomicBool>,
    serve: impl Fn(L::Stream) + Send + Sync + 'static,
    refuse: impl Fn(L::Stream) + Send + 'static,
) -> Result<JoinHandle<()>, String> {
    let serve = Arc::new(serve);
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let mut ready = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                if !matches!(poll(&mut ready, PollTimeout::from(POLL_INTERVAL_MS)), Ok(count) if count > 0) {
                    continue;
                }
                loop {
                    let stream = match listener.accept_one() {
                        Ok(stream) => stream,
                        Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                        Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                        Err(error) => {
                            // Out of descriptors or the like: back off rather than spin.
                            log::warn!("accepting a connection: {error}");
                            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS as u64));
                            break;
                        }
                    };
                    if stream.set_blocking().is_err() {
                        continue;
                    }
                    if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                        active.fetch_sub(1, Ordering::SeqCst);
                        let _ = stream.set_write_deadline(Duration::from_millis(10));
                        refuse(stream);
                        continue;
                    }
                    let serve = Arc::clone(&serve);
                    let counted = Arc::clone(&active);
                    let spawned = std::thread::Builder::new()
                        .name("connection".into())
                        .stack_size(CONNECTION_STACK)
                        .spawn(move || {
                            serve(stream);
                            counted.fetch_sub(1, Ordering::SeqCst);
                        });
                    if spawned.is_err() {
                        active.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            }
        })
        .map_err(|error| format!("starting the {name} thread: {error}"))
}

/// Why reading a request stopped.
enum Received {
    /// `complete` said yes.
    Complete(Vec<u8>),
    /// The client closed its side first.
    Closed(Vec<u8>),
    TooLong,
    TimedOut,
    Failed,
}

/// Reads until `complete` accepts the bytes, the peer closes, `limit` bytes or `deadline`, whichever comes first:
/// the deadline holds however the bytes trickle in.
fn read_request<C: Connection>(
    stream: &mut C,
    deadline: Instant,
    limit: usize,
    complete: impl Fn(&[u8]) -> bool,
) -> Received {
    let mut buffer = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        if complete(&buffer) {
            return Received::Complete(buffer);
        }
        if buffer.len() >= limit {
            return Received::TooLong;
        }
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
        else {
            return Received::TimedOut;
        };
        if stream.set_read_deadline(left).is_err() {
            return Received::Failed;
        }
        let room = chunk.len().min(limit - buffer.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return Received::Closed(buffer),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return Received::Failed,
        }
    }
}

/// Writes all of `bytes` before `deadline`, or gives up.
fn write_answer<C: Connection>(stream: &mut C, bytes: &[u8], deadline: Instant) {
    let mut sent = 0;
    while sent < bytes.len() {
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
        else {
            return;
        };
        if stream.set_write_deadline(left).is_err() {
            return;
        }
        match stream.write(&bytes[sent..]) {
            Ok(0) => return,
            Ok(n) => sent += n,
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

/// Hands `work` to the control thread and waits (bounded) for its answer.
fn ask(jobs: &Sender<Job>, work: Work) -> Result<String, &'static str> {
    let (reply, answer) = bounded(1);
    jobs.send_timeout(Job { work, reply }, ANSWER_DEADLINE)
        .map_err(|_| "sluice is busy; try again")?;
    answer
        .recv_timeout(ANSWER_DEADLINE)
        .map_err(|_| "no answer in time; try again")
}

fn serve_control(mut stream: UnixStream, jobs: &Sender<Job>) {
    let deadline = Instant::now() + READ_DEADLINE;
    let answer = match read_request(&mut stream, deadline, MAX_CONTROL_LINE, |bytes| {
        bytes.contains(&b'\n')
    }) {
        Received::Complete(bytes) | Received::Closed(bytes) => {
            let line = bytes
                .split(|&byte| byte == b'\n')
                .next()
                .unwrap_or_default();
            match std::str::from_utf8(line) {
                Ok(line) => match parse_request(line.trim()) {
                    Ok(request) => ask(jobs, Work::Control(request))
                        .unwrap_or_else(|error| format!("error: {error}\n")),
                    Err(error) => format!("error: {error}\n"),
                },
                Err(_) => "error: the command is not UTF-8\n".into(),
            }
        }
        Received::TooLong => {
            format!("error: the command is longer than {MAX_CONTROL_LINE} bytes\n")
        }
        Received::TimedOut => format!(
            "error: no complete command within {} ms\n",
            READ_DEADLINE.as_millis()
        ),
        Received::Failed => return,
    };
    write_answer(
        &mut stream,
        answer.as_bytes(),
        Instant::now() + WRITE_DEADLINE,
    );
}

fn response(status: &str, extra: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4"
    } else {
        "text/plain"
    };
    let mut out = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

fn serve_metrics(mut stream: TcpStream, jobs: &Sender<Job>) {
    let deadline = Instant::now() + READ_DEADLINE;
    let request = match read_request(&mut stream, deadline, MAX_HTTP_HEAD, |bytes| {
        parse_http_head(bytes) != HttpRequest::Incomplete
    }) {
        Received::Complete(bytes) => parse_http_head(&bytes),
        // A client that closed its side after the request line still gets its answer.
        Received::Closed(mut bytes) => {
            bytes.extend_from_slice(b"\r\n\r\n");
            parse_http_head(&bytes)
        }
        Received::TooLong => HttpRequest::BadRequest,
        Received::TimedOut => {
            write_answer(
                &mut stream,
                &response(
                    "408 Request Timeout",
                    "",
                    b"no complete request in time\n",
                    false,
                ),
                Instant::now() + WRITE_DEADLINE,
            );
            return;
        }
        Received::Failed => return,
    };
    let answer = match request {
        HttpRequest::Metrics { head_only } => match ask(jobs, Work::Metrics) {
            Ok(body) => response("200 OK", "", body.as_bytes(), head_only),
            Err(error) => response(
                "503 Service Unavailable",
                "",
                format!("{error}\n").as_bytes(),
                head_only,
            ),
        },
        HttpRequest::NotFound => {
            response("404 Not Found", "", b"the metrics are at /metrics\n", false)
        }
        HttpRequest::MethodNotAllowed => response(
            "405 Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            b"GET or HEAD /metrics\n",
            false,
        ),
        HttpRequest::BadRequest | HttpRequest::Incomplete => {
            response("400 Bad Request", "", b"not an HTTP/1.x request\n", false)
        }
    };
    write_answer(&mut stream, &answer, Instant::now() + WRITE_DEADLINE);
}
