//! A TCP forwarder for fault tests: put it between a client and a server, then cut,
//! refuse or blackhole the connections on command.
//!
//! The proxy runs on its own thread with its own single-threaded tokio runtime, so it
//! works the same from plain `#[test]`s and from `#[tokio::test]`s of any flavor (even
//! on a paused clock: it never uses the caller's runtime or timers). Every control method
//! returns once the proxy has applied the change: after [`TcpProxy::disconnect`] returns,
//! every connection that existed has been reset; after [`TcpProxy::blackhole`] returns,
//! no byte that reaches the proxy afterwards is forwarded, either way.
//!
//! ```no_run
//! # fn main() -> Result<(), kvstore_testkit::server::ServerError> {
//! use kvstore_testkit::proxy::TcpProxy;
//! use kvstore_testkit::server::RedisServer;
//!
//! let redis = RedisServer::start()?;
//! let proxy = TcpProxy::start(([127, 0, 0, 1], redis.port()).into())?;
//! let url = format!("redis://{}", proxy.address()); // clients connect here
//! proxy.disconnect(); // every client connection is reset; reconnects work
//! # let _ = url;
//! # Ok(())
//! # }
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::server::ServerError;

/// How long a control method waits for the proxy thread to apply a change. The proxy
/// answers within milliseconds; this only bounds a bug.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// The size of each forwarding buffer (one per direction and connection).
const BUFFER_SIZE: usize = 16 * 1024;

/// What the proxy does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Forward bytes both ways.
    Forward,
    /// Reset every new connection as soon as it is accepted.
    Refuse,
    /// Accept, keep open, and forward nothing.
    Blackhole,
}

/// The state every connection task watches.
#[derive(Clone, Copy, Debug)]
struct Control {
    /// How new connections are handled.
    mode: Mode,
    /// Bumped to reset every connection that exists.
    close_epoch: u64,
    /// Bumped to blackhole every connection that exists.
    blackhole_epoch: u64,
}

/// A change requested by a control method.
#[derive(Clone, Copy, Debug)]
enum Op {
    Disconnect,
    Refuse,
    Blackhole,
    Restore,
}

/// A control request and where to acknowledge it once applied.
struct Command {
    op: Op,
    done: std_mpsc::Sender<()>,
}

/// A TCP forwarder on a free loopback port, for fault tests. See the [module docs](self).
///
/// Dropping it stops listening, resets every connection and ends its thread.
pub struct TcpProxy {
    address: SocketAddr,
    commands: Option<mpsc::UnboundedSender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Listen on `127.0.0.1:0` (a free port) and forward every connection to `target`,
    /// which is connected to anew for each accepted connection. When `target` cannot be
    /// reached, the client's connection is reset, as a client talking to a dead server
    /// directly would see.
    ///
    /// # Errors
    /// When no loopback port can be bound, or the proxy's runtime or thread cannot start.
    pub fn start(target: SocketAddr) -> Result<TcpProxy, ServerError> {
        let error = |what: &str, e: std::io::Error| ServerError(format!("tcp proxy: {what}: {e}"));
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| error("cannot bind a loopback port", e))?;
        let address = listener
            .local_addr()
            .map_err(|e| error("no local address", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| error("cannot make the listener non-blocking", e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| error("cannot build its runtime", e))?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener).map_err(|e| error("cannot register the listener", e))?
        };
        let (commands, inbox) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name(format!("tcp-proxy-{}", address.port()))
            .spawn(move || runtime.block_on(serve(listener, target, inbox)))
            .map_err(|e| error("cannot start its thread", e))?;
        Ok(TcpProxy {
            address,
            commands: Some(commands),
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:PORT`: where clients connect.
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Reset every current connection, both ways, at once (`RST` to the client and to
    /// the server; blackholed connections too). A client sees its next read or write on
    /// the old connection fail with "connection reset" (or, at worst, end of file); the
    /// server sees its side of the connection reset too.
    ///
    /// New connections are handled as before: forwarded normally, unless [`refuse`] or
    /// [`blackhole`] is in effect (this does not change the mode).
    ///
    /// [`refuse`]: TcpProxy::refuse
    /// [`blackhole`]: TcpProxy::blackhole
    ///
    /// # Panics
    /// If the proxy thread does not apply the change within 10 s (a bug).
    pub fn disconnect(&self) {
        self.control(Op::Disconnect);
    }

    /// Reset every current connection (as [`disconnect`]) and, until [`restore`], reset
    /// every new one as soon as it is accepted. A client's `connect` still succeeds (the
    /// kernel completes the handshake), but its first read fails with "connection reset"
    /// (or returns end of file) and its writes soon fail: to a client, a server that
    /// refuses service.
    ///
    /// [`disconnect`]: TcpProxy::disconnect
    /// [`restore`]: TcpProxy::restore
    ///
    /// # Panics
    /// As [`TcpProxy::disconnect`].
    pub fn refuse(&self) {
        self.control(Op::Refuse);
    }

    /// Make the network silent, as a crashed host or a dropped link would look: every
    /// current connection stays open (no `RST`, no `FIN`, in either direction) but every
    /// byte sent on it, either way, is silently dropped; new connections are accepted
    /// (so `connect` succeeds) and kept open, but nothing is ever forwarded on them (the
    /// server is never even connected to). A client's writes succeed and its reads wait
    /// until its own timeout.
    ///
    /// A connection blackholed once stays dead for good: bytes were lost in its stream,
    /// so [`restore`] does not revive it. It stays open and silent until the client
    /// closes it, or [`disconnect`] / [`refuse`] / dropping the proxy resets it; a client
    /// must reconnect to recover, as after a real network loss.
    ///
    /// [`restore`]: TcpProxy::restore
    /// [`disconnect`]: TcpProxy::disconnect
    /// [`refuse`]: TcpProxy::refuse
    ///
    /// # Panics
    /// As [`TcpProxy::disconnect`].
    pub fn blackhole(&self) {
        self.control(Op::Blackhole);
    }

    /// Back to normal: new connections are forwarded again. Connections closed by
    /// [`refuse`] stay closed and connections blackholed by [`blackhole`] stay dead
    /// (see there); forwarded connections that were never blackholed carry on.
    ///
    /// [`refuse`]: TcpProxy::refuse
    /// [`blackhole`]: TcpProxy::blackhole
    ///
    /// # Panics
    /// As [`TcpProxy::disconnect`].
    pub fn restore(&self) {
        self.control(Op::Restore);
    }

    /// Send `op` to the proxy thread and wait until it has been applied.
    fn control(&self, op: Op) {
        let Some(commands) = &self.commands else {
            return;
        };
        let (done, applied) = std_mpsc::channel();
        if commands.send(Command { op, done }).is_err() {
            // The proxy thread is gone, and with it every connection: nothing to do.
            return;
        }
        match applied.recv_timeout(CONTROL_TIMEOUT) {
            Ok(()) | Err(std_mpsc::RecvTimeoutError::Disconnected) => {}
            Err(std_mpsc::RecvTimeoutError::Timeout) => panic!(
                "tcp proxy {}: {op:?} was not applied within {CONTROL_TIMEOUT:?}",
                self.address
            ),
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // Closing the command channel makes the accept loop reset everything and return.
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpProxy")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// The proxy thread's main task: accept connections and apply control commands, until
/// the command channel closes.
async fn serve(
    listener: TcpListener,
    target: SocketAddr,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let (control, _) = watch::channel(Control {
        mode: Mode::Forward,
        close_epoch: 0,
        blackhole_epoch: 0,
    });
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // The state at accept time, and a receiver that has seen it: a command
                    // applied before the task first runs still counts as a change for it.
                    let start = *control.borrow();
                    if start.mode == Mode::Refuse {
                        reset(stream);
                    } else {
                        let watcher = control.subscribe();
                        connections.spawn(connection(stream, target, watcher, start));
                    }
                }
                // Transient (an aborted handshake) or resource exhaustion: do not spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            command = commands.recv() => {
                let Some(Command { op, done }) = command else { break };
                control.send_modify(|c| match op {
                    Op::Disconnect => c.close_epoch += 1,
                    Op::Refuse => {
                        c.mode = Mode::Refuse;
                        c.close_epoch += 1;
                    }
                    Op::Blackhole => {
                        c.mode = Mode::Blackhole;
                        c.blackhole_epoch += 1;
                    }
                    Op::Restore => c.mode = Mode::Forward,
                });
                if matches!(op, Op::Disconnect | Op::Refuse) {
                    // Every connection task resets its sockets and ends on the new epoch;
                    // nothing is accepted meanwhile, so this drains exactly the old ones.
                    while connections.join_next().await.is_some() {}
                }
                let _ = done.send(());
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    control.send_modify(|c| c.close_epoch += 1);
    while connections.join_next().await.is_some() {}
}

/// How a connection's forwarding phase ended.
enum Outcome {
    /// Both directions ended (`Ok`: both sent `FIN`) or one failed (`Err`).
    Finished(std::io::Result<()>),
    /// [`TcpProxy::disconnect`] or [`TcpProxy::refuse`]: reset.
    Closed,
    /// [`TcpProxy::blackhole`]: go silent.
    Blackholed,
}

/// Handle one accepted connection until it ends or is reset.
async fn connection(
    mut client: TcpStream,
    target: SocketAddr,
    mut control: watch::Receiver<Control>,
    start: Control,
) {
    let mut upstream = None;
    if start.mode == Mode::Forward {
        let _ = client.set_nodelay(true);
        let connected = tokio::select! {
            connected = TcpStream::connect(target) => connected,
            outcome = changed(&mut control, start) => match outcome {
                Outcome::Closed => return reset(client),
                _ => Err(std::io::Error::other("blackholed while connecting")),
            },
        };
        let mut server = match connected {
            Ok(server) => server,
            Err(_) if control.borrow().blackhole_epoch != start.blackhole_epoch => {
                return blackholed(client, None, control, start).await;
            }
            Err(_) => return reset(client),
        };
        let _ = server.set_nodelay(true);
        let outcome = {
            let watcher = control.clone();
            tokio::select! {
                result = forward(&mut client, &mut server, &watcher, start) => Outcome::Finished(result),
                outcome = changed(&mut control, start) => outcome,
            }
        };
        match outcome {
            Outcome::Finished(Ok(())) => return,
            Outcome::Finished(Err(_)) | Outcome::Closed => {
                reset(client);
                reset(server);
                return;
            }
            Outcome::Blackholed => upstream = Some(server),
        }
    }
    blackholed(client, upstream, control, start).await;
}

/// Keep a dead connection open, reading and dropping whatever either side sends, until
/// both sides close it or the proxy resets it.
async fn blackholed(
    mut client: TcpStream,
    mut server: Option<TcpStream>,
    mut control: watch::Receiver<Control>,
    start: Control,
) {
    let closed = {
        let silent = async {
            match &mut server {
                Some(server) => {
                    tokio::join!(discard(&mut client), discard(server));
                }
                None => discard(&mut client).await,
            }
        };
        let closed =
            async { while !matches!(changed(&mut control, start).await, Outcome::Closed) {} };
        tokio::select! {
            () = silent => false,
            () = closed => true,
        }
    };
    if closed {
        reset(client);
        if let Some(server) = server {
            reset(server);
        }
    }
}

/// Read and drop bytes until end of file or an error.
async fn discard(stream: &mut TcpStream) {
    let mut buffer = vec![0; BUFFER_SIZE];
    while let Ok(1..) = stream.read(&mut buffer).await {}
}

/// Wait until the control state says this connection (started under `start`) must be
/// reset or blackholed. The proxy shutting down counts as a reset.
async fn changed(control: &mut watch::Receiver<Control>, start: Control) -> Outcome {
    loop {
        if control.changed().await.is_err() {
            return Outcome::Closed;
        }
        let now = *control.borrow_and_update();
        if now.close_epoch != start.close_epoch {
            return Outcome::Closed;
        }
        if now.blackhole_epoch != start.blackhole_epoch {
            return Outcome::Blackholed;
        }
    }
}

/// Copy bytes both ways until both directions have ended (each end-of-file is passed on
/// as a `FIN`) or one fails.
async fn forward(
    client: &mut TcpStream,
    server: &mut TcpStream,
    control: &watch::Receiver<Control>,
    start: Control,
) -> std::io::Result<()> {
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    tokio::try_join!(
        pump(&mut client_read, &mut server_write, control, start),
        pump(&mut server_read, &mut client_write, control, start),
    )?;
    Ok(())
}

/// Copy one direction. Checks for a blackhole before every write, so no byte read after
/// [`TcpProxy::blackhole`] returned is ever forwarded; it then waits forever for the
/// caller's watch to end the forwarding.
async fn pump(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    control: &watch::Receiver<Control>,
    start: Control,
) -> std::io::Result<()> {
    let mut buffer = vec![0; BUFFER_SIZE];
    loop {
        let n = from.read(&mut buffer).await?;
        if control.borrow().blackhole_epoch != start.blackhole_epoch {
            std::future::pending::<()>().await;
        }
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buffer[..n]).await?;
    }
}

/// Close `stream` with a `RST` (`SO_LINGER` 0) instead of a `FIN`.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};

    use super::*;

    /// Long enough for anything on loopback; a test never waits this long when it passes.
    const BOUND: Duration = Duration::from_secs(5);
    /// How long a read must stay silent to count as blackholed.
    const SILENCE: Duration = Duration::from_millis(300);

    /// An echo server on a free loopback port: each connection gets its bytes back, and
    /// its `FIN` back once everything is echoed. The accept thread lives as long as the
    /// test process.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind echo server");
        let address = listener.local_addr().expect("echo server address");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut buffer = [0; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut buffer) {
                        if stream.write_all(&buffer[..n]).is_err() {
                            return;
                        }
                    }
                    let _ = stream.shutdown(Shutdown::Write);
                });
            }
        });
        address
    }

    fn connect(proxy: &TcpProxy) -> TcpStream {
        let stream = TcpStream::connect(proxy.address()).expect("connect to the proxy");
        stream.set_read_timeout(Some(BOUND)).expect("read timeout");
        stream
    }

    /// Send `text` and read it back through the proxy.
    fn round_trip(stream: &mut TcpStream, text: &str) {
        stream.write_all(text.as_bytes()).expect("write");
        let mut echoed = vec![0; text.len()];
        stream.read_exact(&mut echoed).expect("echo");
        assert_eq!(echoed, text.as_bytes());
    }

    /// The connection has been closed or reset: a read returns end of file or an error,
    /// without waiting out the read timeout.
    fn assert_closed(stream: &mut TcpStream) {
        let started = std::time::Instant::now();
        let mut buffer = [0; 16];
        match stream.read(&mut buffer) {
            Ok(0) => {}
            Ok(n) => panic!("read {n} bytes from a closed connection"),
            Err(e) => assert!(
                !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "the connection stayed open for {:?}",
                started.elapsed()
            ),
        }
    }

    /// Writes succeed but nothing comes back within [`SILENCE`].
    fn assert_silent(stream: &mut TcpStream) {
        stream
            .write_all(b"lost")
            .expect("a write into a blackhole succeeds");
        stream
            .set_read_timeout(Some(SILENCE))
            .expect("read timeout");
        let mut buffer = [0; 16];
        match stream.read(&mut buffer) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            other => panic!("a blackholed read should time out, got {other:?}"),
        }
        stream.set_read_timeout(Some(BOUND)).expect("read timeout");
    }

    #[test]
    fn forwards_both_ways_and_passes_on_end_of_file() {
        let proxy = TcpProxy::start(echo_server()).expect("proxy");
        assert_eq!(proxy.address(), format!("127.0.0.1:{}", proxy.port()));
        let mut client = connect(&proxy);
        round_trip(&mut client, "hello");
        round_trip(&mut client, &"x".repeat(200_000));
        client.write_all(b"last").expect("write");
        client.shutdown(Shutdown::Write).expect("half-close");
        let mut rest = Vec::new();
        client
            .read_to_end(&mut rest)
            .expect("echo, then end of file");
        assert_eq!(rest, b"last");
    }

    #[test]
    fn disconnect_resets_current_connections_and_accepts_new_ones() {
        let proxy = TcpProxy::start(echo_server()).expect("proxy");
        let mut old = connect(&proxy);
        round_trip(&mut old, "before");
        proxy.disconnect();
        assert_closed(&mut old);
        let mut new = connect(&proxy);
        round_trip(&mut new, "after");
    }

    #[test]
    fn refuse_closes_connections_until_restore() {
        let proxy = TcpProxy::start(echo_server()).expect("proxy");
        let mut old = connect(&proxy);
        round_trip(&mut old, "before");
        proxy.refuse();
        assert_closed(&mut old);
        // The kernel may complete the handshake; the proxy then resets it at once.
        if let Ok(mut refused) = TcpStream::connect(proxy.address()) {
            refused.set_read_timeout(Some(BOUND)).expect("read timeout");
            assert_closed(&mut refused);
        }
        proxy.restore();
        let mut new = connect(&proxy);
        round_trip(&mut new, "after");
    }

    #[test]
    fn blackhole_drops_bytes_silently_until_restore_for_new_connections() {
        let proxy = TcpProxy::start(echo_server()).expect("proxy");
        let mut old = connect(&proxy);
        round_trip(&mut old, "before");
        proxy.blackhole();
        assert_silent(&mut old);
        let mut during = connect(&proxy);
        assert_silent(&mut during);
        proxy.restore();
        let mut new = connect(&proxy);
        round_trip(&mut new, "after");
        // Blackholed connections stay dead (and open) after restore, until reset.
        assert_silent(&mut old);
        proxy.disconnect();
        assert_closed(&mut old);
        assert_closed(&mut during);
        assert_closed(&mut new);
        round_trip(&mut connect(&proxy), "reconnected");
    }

    #[test]
    fn drop_stops_listening_and_closes_connections() {
        let proxy = TcpProxy::start(echo_server()).expect("proxy");
        let address = proxy.address();
        let mut client = connect(&proxy);
        round_trip(&mut client, "hello");
        drop(proxy);
        assert_closed(&mut client);
        let refused = TcpStream::connect(&address);
        assert!(refused.is_err(), "the proxy port still accepts connections");
    }

    #[test]
    fn forwards_to_a_real_redis_server() {
        let redis = crate::server::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let proxy = TcpProxy::start(([127, 0, 0, 1], redis.port()).into()).expect("proxy");
        let mut client = connect(&proxy);
        client.write_all(b"PING\r\n").expect("write");
        let mut reply = [0; 7];
        client.read_exact(&mut reply).expect("reply");
        assert_eq!(&reply, b"+PONG\r\n");
    }

    #[tokio::test]
    async fn works_from_inside_a_tokio_runtime() {
        let proxy = TcpProxy::start(echo_server()).expect("proxy");
        let mut client = tokio::net::TcpStream::connect(proxy.address())
            .await
            .expect("connect");
        let mut echoed = [0; 5];
        client.write_all(b"hello").await.expect("write");
        tokio::time::timeout(BOUND, client.read_exact(&mut echoed))
            .await
            .expect("echo within the bound")
            .expect("echo");
        assert_eq!(&echoed, b"hello");
        proxy.disconnect();
        let mut buffer = [0; 5];
        let read = tokio::time::timeout(BOUND, client.read(&mut buffer))
            .await
            .expect("the reset arrives within the bound");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "read after disconnect: {read:?}"
        );
    }
}
