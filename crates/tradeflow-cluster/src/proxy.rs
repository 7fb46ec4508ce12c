//! A chaos TCP proxy that sits between Kafka clients and one Kafka broker and injects network faults on demand.
//!
//! One proxy serves one broker, and the broker advertises the proxy's address, so every client
//! connection (bootstrap and the ones opened after metadata) passes through it. Each accepted
//! connection is joined to the current upstream and carried as two independent directions:
//!
//! - Latency and jitter apply per chunk: a chunk read at `t` is written no earlier than
//!   `t + latency + U(0, jitter)`, and never before the chunk read ahead of it, so a direction is
//!   never reordered. Lowering the latency (or healing) also shortens the waits under way.
//! - Bandwidth is a token bucket per direction per connection, saving up at most
//!   [`BANDWIDTH_BURST_MS`] of sending time.
//! - A blackhole keeps connections open (and accepts new ones) but discards every byte in both
//!   directions, counting it; healing stops the discarding, and what was discarded stays lost.
//! - [`ChaosProxy::reset_connections`] aborts every open connection on both sides with a TCP RST.
//! - Jitter comes from ChaCha8 seeded by the proxy's seed, one stream per connection and
//!   direction, so the same seed and the same connection order draw the same delays.
//!
//! The proxy runs on a thread of its own with a current-thread tokio runtime, so it is driven
//! from sync code or from inside any runtime alike; control goes through a watch channel, mutexes
//! and atomics, never through `block_on` on the caller's thread.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::debug;

/// Most bytes one read takes from a socket, and so the largest chunk a queue holds.
pub const CHUNK_BYTES_MAX: usize = 32 * 1024;
/// Most chunks queued between the reader and the writer of one direction: a full queue stops the
/// reader, so a slow writer (latency, bandwidth) pushes back on the sender through TCP instead of
/// growing memory.
pub const CHUNKS_IN_FLIGHT_MAX: usize = 64;
/// Most connections open at once; more are refused with a RST, because each may hold
/// 2 × [`CHUNKS_IN_FLIGHT_MAX`] × [`CHUNK_BYTES_MAX`] bytes and a connection storm must not
/// exhaust memory.
pub const CONNECTIONS_MAX: usize = 1024;
/// Largest latency and largest jitter honoured, each in milliseconds; larger values are clamped
/// so that due times cannot overflow.
pub const DELAY_MS_MAX: u64 = 600_000;
/// How much sending time a token bucket may save up: small, so that a limited connection cannot
/// burst far above its rate after idling.
pub const BANDWIDTH_BURST_MS: u64 = 10;
/// How long connecting to the upstream may take before the client connection is closed.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`ChaosProxy::reset_connections`] waits for the proxy thread to confirm the resets,
/// so that a stuck proxy thread cannot hang the caller.
pub const RESET_WAIT_MAX: Duration = Duration::from_secs(2);
/// Pause after a failed accept (for example out of file descriptors), so the loop does not spin.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(50);

/// The faults a proxy applies; the default is none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Chaos {
    /// Delay added to every chunk in each direction, in milliseconds (clamped to [`DELAY_MS_MAX`]).
    pub latency_ms: u64,
    /// Upper bound of a uniform random delay added per chunk on top of the latency, in
    /// milliseconds (clamped to [`DELAY_MS_MAX`]).
    pub jitter_ms: u64,
    /// Bytes per second each direction of each connection may carry; `None` is unlimited and
    /// `Some(0)` holds every byte until the limit changes.
    pub bandwidth_bytes_per_s: Option<u64>,
    /// Discard every byte in both directions while keeping the connections open.
    pub blackhole: bool,
}

/// What a proxy has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProxyStats {
    /// Client connections accepted, including those then refused.
    pub connections_accepted: u64,
    /// Client connections open now.
    pub connections_open: u64,
    /// Connections aborted by [`ChaosProxy::reset_connections`].
    pub connections_reset: u64,
    /// Client connections refused because [`CONNECTIONS_MAX`] were open.
    pub connections_rejected: u64,
    /// Client connections closed because the upstream refused or did not answer in time.
    pub upstream_connect_failures: u64,
    /// Bytes written to the upstream.
    pub bytes_client_to_upstream: u64,
    /// Bytes written to clients.
    pub bytes_upstream_to_client: u64,
    /// Bytes discarded by the blackhole, both directions together.
    pub bytes_blackholed: u64,
}

/// A proxy error, naming what was being done, the address and what the system said.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listening socket could not be opened.
    #[error("chaos proxy: listening on {address}: {reason}")]
    Listen {
        /// The address asked for.
        address: SocketAddr,
        /// What the system said.
        reason: String,
    },
    /// The proxy could not be started after its socket was open.
    #[error("chaos proxy on {address}: {operation}: {reason}")]
    Start {
        /// The proxy's address.
        address: SocketAddr,
        /// What was being done.
        operation: &'static str,
        /// What the system said.
        reason: String,
    },
}

/// A running chaos proxy; dropping it closes its listener and every connection.
pub struct ChaosProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How a connection confirms that it has been reset.
type ResetAck = std::sync::mpsc::Sender<()>;

/// State shared by the handle and the proxy thread.
struct Shared {
    chaos: watch::Sender<Chaos>,
    upstream: Mutex<SocketAddr>,
    /// The open connections by index, each with the channel that tells it to reset.
    connections: Mutex<HashMap<u64, oneshot::Sender<ResetAck>>>,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    connections_accepted: AtomicU64,
    connections_open: AtomicU64,
    connections_reset: AtomicU64,
    connections_rejected: AtomicU64,
    upstream_connect_failures: AtomicU64,
    bytes_client_to_upstream: AtomicU64,
    bytes_upstream_to_client: AtomicU64,
    bytes_blackholed: AtomicU64,
}

impl ChaosProxy {
    /// Listens on 127.0.0.1:`listen_port` (0 = any free port) and forwards every accepted connection to `upstream`.
    pub fn start(listen_port: u16, upstream: SocketAddr, seed: u64) -> Result<ChaosProxy, ProxyError> {
        let requested = SocketAddr::from((Ipv4Addr::LOCALHOST, listen_port));
        let listener = std::net::TcpListener::bind(requested).map_err(|error| ProxyError::Listen {
            address: requested,
            reason: error.to_string(),
        })?;
        let start_error = |operation: &'static str, address: SocketAddr, reason: String| ProxyError::Start {
            address,
            operation,
            reason,
        };
        let address = listener
            .local_addr()
            .map_err(|error| start_error("reading the listener's address", requested, error.to_string()))?;
        // Tokio takes over a std listener only when it is non-blocking.
        listener
            .set_nonblocking(true)
            .map_err(|error| start_error("making the listener non-blocking", address, error.to_string()))?;

        let (chaos, _) = watch::channel(Chaos::default());
        let shared = Arc::new(Shared {
            chaos,
            upstream: Mutex::new(upstream),
            connections: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        });
        let (stop, stop_receiver) = oneshot::channel();
        // The runtime is built and the listener registered on the proxy thread, so that no
        // runtime is ever created or dropped on the caller's thread (which may be a runtime's).
        let (ready, ready_receiver) = std::sync::mpsc::sync_channel(1);
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("chaos-proxy-{}", address.port()))
            .spawn(move || run(listener, address, thread_shared, seed, stop_receiver, ready))
            .map_err(|error| start_error("spawning the proxy thread", address, error.to_string()))?;
        let started = match ready_receiver.recv() {
            Ok(started) => started,
            Err(_) => Err(start_error(
                "starting the proxy thread",
                address,
                "the thread ended before listening".into(),
            )),
        };
        if let Err(error) = started {
            if thread.join().is_err() {
                debug!(%address, "chaos proxy: the thread panicked while starting");
            }
            return Err(error);
        }
        debug!(%address, %upstream, seed, "chaos proxy: listening");
        Ok(ChaosProxy {
            address,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where clients connect (and what the broker must advertise).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Where new connections go from now on (for a broker restarted on a new port); open
    /// connections keep their upstream.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        debug!(address = %self.address, %upstream, "chaos proxy: new upstream");
        *lock(&self.shared.upstream) = upstream;
    }

    /// The upstream new connections go to.
    pub fn upstream(&self) -> SocketAddr {
        *lock(&self.shared.upstream)
    }

    /// Applies `chaos` to open and new connections.
    pub fn set(&self, chaos: Chaos) {
        debug!(address = %self.address, ?chaos, "chaos proxy: set");
        self.shared.chaos.send_replace(chaos);
    }

    /// The faults applied now.
    pub fn chaos(&self) -> Chaos {
        *self.shared.chaos.borrow()
    }

    /// Back to [`Chaos::default()`]: no delay, no limit, no blackhole.
    pub fn heal(&self) {
        self.set(Chaos::default());
    }

    /// Closes every open connection, client side and upstream side, with a TCP RST and returns
    /// how many were closed. It blocks until the proxy thread confirms (at most
    /// [`RESET_WAIT_MAX`]), so the resets have been sent when it returns. New connections are
    /// served normally.
    pub fn reset_connections(&self) -> usize {
        let signals: Vec<_> = lock(&self.shared.connections).drain().map(|(_, signal)| signal).collect();
        let (ack, acks) = std::sync::mpsc::channel();
        let signalled = signals.into_iter().filter_map(|signal| signal.send(ack.clone()).ok()).count();
        // Only the connections hold senders now, so the wait below ends when every one of them
        // has confirmed or ended without resetting.
        drop(ack);
        let deadline = std::time::Instant::now() + RESET_WAIT_MAX;
        let mut reset = 0;
        while reset < signalled {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match acks.recv_timeout(left) {
                Ok(()) => reset += 1,
                Err(_) => break,
            }
        }
        debug!(address = %self.address, reset, "chaos proxy: reset connections");
        reset
    }

    /// What the proxy has done since it started.
    pub fn stats(&self) -> ProxyStats {
        let counters = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ProxyStats {
            connections_accepted: get(&counters.connections_accepted),
            connections_open: get(&counters.connections_open),
            connections_reset: get(&counters.connections_reset),
            connections_rejected: get(&counters.connections_rejected),
            upstream_connect_failures: get(&counters.upstream_connect_failures),
            bytes_client_to_upstream: get(&counters.bytes_client_to_upstream),
            bytes_upstream_to_client: get(&counters.bytes_upstream_to_client),
            bytes_blackholed: get(&counters.bytes_blackholed),
        }
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        // Dropping the stop sender wakes the accept loop, which returns; the thread then drops
        // its runtime, and with it every connection task and socket.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            debug!(address = %self.address, "chaos proxy: the thread panicked");
        }
        debug!(address = %self.address, "chaos proxy: stopped");
    }
}

/// Locks a mutex, carrying on after a panic elsewhere: every value behind these locks is valid
/// at all times.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The proxy thread: its runtime, then the accept loop until the handle is dropped.
fn run(
    listener: std::net::TcpListener,
    address: SocketAddr,
    shared: Arc<Shared>,
    seed: u64,
    stop: oneshot::Receiver<()>,
    ready: std::sync::mpsc::SyncSender<Result<(), ProxyError>>,
) {
    let failed = |operation: &'static str, error: io::Error| {
        Err(ProxyError::Start {
            address,
            operation,
            reason: error.to_string(),
        })
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            // The caller waits on this channel; if it is gone there is no one left to tell.
            let _ = ready.send(failed("building the proxy runtime", error));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                let _ = ready.send(failed("registering the listener", error));
                return;
            }
        };
        if ready.send(Ok(())).is_ok() {
            serve(listener, shared, seed, stop).await;
        }
    });
}

/// Accepts connections until `stop` fires (or its sender is dropped).
async fn serve(listener: TcpListener, shared: Arc<Shared>, seed: u64, mut stop: oneshot::Receiver<()>) {
    let mut index_next: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let (client, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                debug!(%error, "chaos proxy: accept failed");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };
        let index = index_next;
        index_next = index_next.wrapping_add(1);
        shared.counters.connections_accepted.fetch_add(1, Ordering::Relaxed);
        let reset = {
            let mut connections = lock(&shared.connections);
            if connections.len() >= CONNECTIONS_MAX {
                None
            } else {
                let (signal, reset) = oneshot::channel();
                connections.insert(index, signal);
                Some(reset)
            }
        };
        let Some(reset) = reset else {
            debug!(%peer, "chaos proxy: too many connections, refusing one");
            shared.counters.connections_rejected.fetch_add(1, Ordering::Relaxed);
            abort(&client);
            continue;
        };
        shared.counters.connections_open.fetch_add(1, Ordering::Relaxed);
        let registration = Registration {
            shared: Arc::clone(&shared),
            index,
        };
        tokio::spawn(relay(registration, peer, client, reset, seed));
    }
}

/// An open connection's entry in the registry and the open count, removed on drop so that a
/// connection ending any way (even cancelled with the runtime) is accounted for.
struct Registration {
    shared: Arc<Shared>,
    index: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.shared.connections).remove(&self.index);
        self.shared.counters.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ClientToUpstream,
    UpstreamToClient,
}

impl Direction {
    /// The ChaCha stream of this direction of connection `index`: distinct per connection and
    /// direction, so that one connection's traffic does not shift another's delays.
    fn stream(self, index: u64) -> u64 {
        let offset = match self {
            Direction::ClientToUpstream => 0,
            Direction::UpstreamToClient => 1,
        };
        index.wrapping_mul(2).wrapping_add(offset)
    }

    fn forwarded(self, counters: &Counters) -> &AtomicU64 {
        match self {
            Direction::ClientToUpstream => &counters.bytes_client_to_upstream,
            Direction::UpstreamToClient => &counters.bytes_upstream_to_client,
        }
    }
}

/// How a connection ended.
enum Ended {
    /// Both directions reached end of stream and were half-closed in turn.
    Closed,
    /// A socket failed; both sides are aborted, as the peer of a broken connection would see.
    Failed(io::Error),
    /// [`ChaosProxy::reset_connections`] asked for a reset.
    Reset(ResetAck),
}

/// Carries one client connection: connects to the upstream, then forwards both directions until
/// they end, a socket fails or a reset is asked for.
async fn relay(registration: Registration, peer: SocketAddr, mut client: TcpStream, reset: oneshot::Receiver<ResetAck>, seed: u64) {
    let shared = Arc::clone(&registration.shared);
    let index = registration.index;
    let mut reset = std::pin::pin!(reset_requested(reset));
    let upstream_address = *lock(&shared.upstream);
    let connect = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream_address));
    let connected = tokio::select! {
        ack = &mut reset => {
            finish_reset(&shared, registration, [client], ack);
            return;
        }
        connected = connect => connected,
    };
    let mut upstream = match connected {
        Ok(Ok(upstream)) => upstream,
        failed => {
            let reason = match failed {
                Ok(Err(error)) => error.to_string(),
                _ => format!("no answer within {UPSTREAM_CONNECT_TIMEOUT:?}"),
            };
            debug!(index, %peer, upstream = %upstream_address, reason, "chaos proxy: upstream refused, closing the client");
            shared.counters.upstream_connect_failures.fetch_add(1, Ordering::Relaxed);
            // A RST is what a client connecting to a refusing broker directly would have seen.
            abort(&client);
            return;
        }
    };
    debug!(index, %peer, upstream = %upstream_address, "chaos proxy: connection open");
    // The proxy adds delay only on purpose: Nagle's algorithm would add its own.
    for stream in [&client, &upstream] {
        if let Err(error) = stream.set_nodelay(true) {
            debug!(index, %error, "chaos proxy: setting TCP_NODELAY failed");
        }
    }
    match forward(&shared, index, seed, &mut client, &mut upstream, reset.as_mut()).await {
        Ended::Closed => debug!(index, %peer, "chaos proxy: connection closed"),
        Ended::Failed(error) => {
            debug!(index, %peer, %error, "chaos proxy: connection failed, aborting both sides");
            abort(&client);
            abort(&upstream);
        }
        Ended::Reset(ack) => finish_reset(&shared, registration, [client, upstream], ack),
    }
}

/// Resolves when a reset is asked for; never if the handle is gone, since then the runtime is
/// going away with every connection anyway.
async fn reset_requested(reset: oneshot::Receiver<ResetAck>) -> ResetAck {
    match reset.await {
        Ok(ack) => ack,
        Err(_) => std::future::pending().await,
    }
}

/// Closes `streams` with a RST, counts the reset, unregisters, and only then confirms, so that
/// the caller sees the connection gone from the stats when the reset returns.
fn finish_reset<const N: usize>(shared: &Shared, registration: Registration, streams: [TcpStream; N], ack: ResetAck) {
    for stream in &streams {
        abort(stream);
    }
    drop(streams);
    shared.counters.connections_reset.fetch_add(1, Ordering::Relaxed);
    debug!(index = registration.index, "chaos proxy: connection reset");
    drop(registration);
    // The caller may have stopped waiting; the reset happened all the same.
    let _ = ack.send(());
}

/// Sets `SO_LINGER` to zero so that closing the socket sends a RST instead of a FIN.
fn abort(stream: &TcpStream) {
    if let Err(error) = stream.set_zero_linger() {
        debug!(%error, "chaos proxy: setting SO_LINGER 0 failed, the close will be a FIN");
    }
}

/// Runs both directions of a connection until they end, one fails or a reset is asked for.
async fn forward(
    shared: &Shared,
    index: u64,
    seed: u64,
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    reset: Pin<&mut impl Future<Output = ResetAck>>,
) -> Ended {
    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    let (to_upstream, from_client) = mpsc::channel(CHUNKS_IN_FLIGHT_MAX);
    let (to_client, from_upstream) = mpsc::channel(CHUNKS_IN_FLIGHT_MAX);
    let counters = &shared.counters;
    let up = Direction::ClientToUpstream;
    let down = Direction::UpstreamToClient;
    let directions = async {
        tokio::try_join!(
            read_chunks(
                client_read,
                to_upstream,
                shared.chaos.subscribe(),
                Delays::new(seed, up.stream(index)),
                counters
            ),
            write_chunks(upstream_write, from_client, shared.chaos.subscribe(), up, counters),
            read_chunks(
                upstream_read,
                to_client,
                shared.chaos.subscribe(),
                Delays::new(seed, down.stream(index)),
                counters
            ),
            write_chunks(client_write, from_upstream, shared.chaos.subscribe(), down, counters),
        )
    };
    tokio::select! {
        ended = directions => match ended {
            Ok(_) => Ended::Closed,
            Err(error) => Ended::Failed(error),
        },
        ack = reset => Ended::Reset(ack),
    }
}

/// Bytes read from one side, waiting to be written to the other.
struct Chunk {
    bytes: Vec<u8>,
    read_at: Instant,
    due: Instant,
}

/// Reads chunks from `source`, discards them in a blackhole, and queues the others with their due
/// time; end of stream (held while blackholed) drops the queue, which tells the writer to half-close.
async fn read_chunks(
    mut source: ReadHalf<'_>,
    queue: mpsc::Sender<Chunk>,
    mut chaos: watch::Receiver<Chaos>,
    mut delays: Delays,
    counters: &Counters,
) -> io::Result<()> {
    let mut buffer = vec![0u8; CHUNK_BYTES_MAX];
    let mut due_previous = Instant::now();
    loop {
        let read = source.read(&mut buffer).await?;
        if read == 0 {
            // A FIN does not cross a partition either: the end of stream is passed on only once
            // the blackhole lifts, as a retransmitted FIN would be.
            while chaos.borrow_and_update().blackhole {
                chaos_changed(&mut chaos).await;
            }
            return Ok(());
        }
        let current = *chaos.borrow();
        if current.blackhole {
            counters.bytes_blackholed.fetch_add(read as u64, Ordering::Relaxed);
            continue;
        }
        let read_at = Instant::now();
        // Never before the chunk ahead, so that jitter delays but does not reorder.
        let due = (read_at + delays.draw(&current)).max(due_previous);
        due_previous = due;
        // Copying out keeps a small chunk small while the read buffer stays full-sized.
        let chunk = Chunk {
            bytes: buffer[..read].to_vec(),
            read_at,
            due,
        };
        if queue.send(chunk).await.is_err() {
            // The writer is gone only when its side failed, which ends the connection anyway.
            return Ok(());
        }
    }
}

/// Writes queued chunks to `sink` once due, through the bandwidth limit, discarding them if a
/// blackhole starts meanwhile; half-closes `sink` when the queue ends.
async fn write_chunks(
    mut sink: WriteHalf<'_>,
    mut queue: mpsc::Receiver<Chunk>,
    mut chaos: watch::Receiver<Chaos>,
    direction: Direction,
    counters: &Counters,
) -> io::Result<()> {
    let mut bucket = TokenBucket::new();
    while let Some(chunk) = queue.recv().await {
        wait_until_due(&chunk, &mut chaos).await;
        let mut rest = chunk.bytes.as_slice();
        while !rest.is_empty() {
            let current = *chaos.borrow_and_update();
            // Bytes in flight when the link goes dark are lost too, as on a real partition.
            if current.blackhole {
                counters.bytes_blackholed.fetch_add(rest.len() as u64, Ordering::Relaxed);
                break;
            }
            let slice = match current.bandwidth_bytes_per_s {
                None => rest.len(),
                Some(rate) => match bucket.grant(rate, rest.len(), Instant::now()) {
                    Grant::Bytes(slice) => slice,
                    Grant::WaitFor(wait) => {
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = chaos_changed(&mut chaos) => {}
                        }
                        continue;
                    }
                    Grant::Stalled => {
                        chaos_changed(&mut chaos).await;
                        continue;
                    }
                },
            };
            let (now, later) = rest.split_at(slice);
            sink.write_all(now).await?;
            direction.forwarded(counters).fetch_add(now.len() as u64, Ordering::Relaxed);
            rest = later;
        }
    }
    // The peer may be gone already; the other direction reports that if it matters.
    if let Err(error) = sink.shutdown().await {
        debug!(?direction, %error, "chaos proxy: half-closing failed");
    }
    Ok(())
}

/// Waits until `chunk` is due, waking on chaos changes so that lowering the latency (or healing)
/// releases chunks early instead of holding them for the old delay.
async fn wait_until_due(chunk: &Chunk, chaos: &mut watch::Receiver<Chaos>) {
    loop {
        let current = *chaos.borrow_and_update();
        let due = chunk.due.min(chunk.read_at + delay_max(&current));
        if Instant::now() >= due {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep_until(due) => return,
            () = chaos_changed(chaos) => {}
        }
    }
}

/// Resolves on the next chaos change; never if the handle is gone, since then the runtime is
/// going away with every connection anyway.
async fn chaos_changed(chaos: &mut watch::Receiver<Chaos>) {
    if chaos.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Draws each chunk's delay: the latency plus a uniform jitter from a ChaCha8 stream, so that the
/// same seed and stream give the same delays.
struct Delays {
    rng: ChaCha8Rng,
}

impl Delays {
    fn new(seed: u64, stream: u64) -> Delays {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Delays { rng }
    }

    /// `latency + U(0, jitter)` inclusive, both clamped to [`DELAY_MS_MAX`]; no jitter draws nothing.
    fn draw(&mut self, chaos: &Chaos) -> Duration {
        let latency_ms = chaos.latency_ms.min(DELAY_MS_MAX);
        let jitter_ms_max = chaos.jitter_ms.min(DELAY_MS_MAX);
        let jitter_ms = if jitter_ms_max == 0 {
            0
        } else {
            self.rng.random_range(0..=jitter_ms_max)
        };
        Duration::from_millis(latency_ms + jitter_ms)
    }
}

/// The longest delay `chaos` can draw.
fn delay_max(chaos: &Chaos) -> Duration {
    Duration::from_millis(chaos.latency_ms.min(DELAY_MS_MAX) + chaos.jitter_ms.min(DELAY_MS_MAX))
}

/// What a token bucket allows now.
#[derive(Debug, PartialEq)]
enum Grant {
    /// Write this many bytes now.
    Bytes(usize),
    /// Not enough tokens: ask again after this long.
    WaitFor(Duration),
    /// The rate is zero: nothing passes until it changes.
    Stalled,
}

/// A token bucket counting bytes, refilled at the current rate and holding at most
/// [`BANDWIDTH_BURST_MS`] of it.
struct TokenBucket {
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    fn new() -> TokenBucket {
        TokenBucket {
            tokens: 0.0,
            refilled_at: Instant::now(),
        }
    }

    /// The bucket's size at `rate`: never under one byte, so that every rate makes progress.
    fn capacity(rate: u64) -> f64 {
        (rate as f64 * BANDWIDTH_BURST_MS as f64 / 1000.0).max(1.0)
    }

    /// How much of `wanted` bytes may be written at `now` at `rate` bytes per second. Writes are
    /// cut to the bucket's size, so that a large chunk is spread over time instead of bursting.
    fn grant(&mut self, rate: u64, wanted: usize, now: Instant) -> Grant {
        if rate == 0 {
            return Grant::Stalled;
        }
        let capacity = Self::capacity(rate);
        let elapsed = now.saturating_duration_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate as f64).min(capacity);
        self.refilled_at = now;
        let slice = wanted.min(capacity as usize).max(1);
        if self.tokens >= slice as f64 {
            self.tokens -= slice as f64;
            Grant::Bytes(slice)
        } else {
            Grant::WaitFor(Duration::from_secs_f64((slice as f64 - self.tokens) / rate as f64))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpStream as StdTcpStream;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant as StdInstant;

    /// Long enough for anything a test waits on to happen, short enough to fail a stuck test.
    const WAIT_MAX: Duration = Duration::from_secs(5);

    /// An echo server on a loopback port, one thread per connection; returns its address and how
    /// many connections it accepted.
    fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind echo server");
        let address = listener.local_addr().expect("echo address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let Ok(mut reader) = stream.try_clone() else { return };
                    let _ = std::io::copy(&mut reader, &mut stream);
                });
            }
        });
        (address, accepted)
    }

    fn connect(proxy: &ChaosProxy) -> StdTcpStream {
        let stream = StdTcpStream::connect(proxy.address()).expect("connect to proxy");
        stream.set_read_timeout(Some(WAIT_MAX)).expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        stream
    }

    fn round_trip(stream: &mut StdTcpStream, message: &[u8]) -> Vec<u8> {
        stream.write_all(message).expect("write");
        let mut reply = vec![0u8; message.len()];
        stream.read_exact(&mut reply).expect("read echo");
        reply
    }

    /// Polls `condition` until it holds or [`WAIT_MAX`] passes, for counters updated just after
    /// the bytes they count.
    fn eventually(condition: impl Fn() -> bool) -> bool {
        let deadline = StdInstant::now() + WAIT_MAX;
        while StdInstant::now() < deadline {
            if condition() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        condition()
    }

    /// Sends `bytes` from another thread while reading the echo here, so neither side's socket
    /// buffers fill up and deadlock; returns the echo.
    fn echo_concurrently(stream: &StdTcpStream, bytes: Vec<u8>) -> Vec<u8> {
        let mut writer = stream.try_clone().expect("clone stream");
        let length = bytes.len();
        let sending = std::thread::spawn(move || writer.write_all(&bytes).expect("write"));
        let mut reader = stream.try_clone().expect("clone stream");
        let mut echoed = vec![0u8; length];
        reader.read_exact(&mut echoed).expect("read echo");
        sending.join().expect("sender");
        echoed
    }

    #[test]
    fn proxy_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ChaosProxy>();
    }

    #[test]
    fn bytes_pass_unchanged_both_ways() {
        let (upstream, _) = echo_server();
        let proxy = ChaosProxy::start(0, upstream, 1).expect("start");
        let stream = connect(&proxy);
        let pattern: Vec<u8> = (0..1024 * 1024u32).map(|i| (i.wrapping_mul(31) % 251) as u8).collect();
        let echoed = echo_concurrently(&stream, pattern.clone());
        assert!(echoed == pattern, "the echo differs from what was sent");
        let size = pattern.len() as u64;
        assert!(eventually(|| {
            let stats = proxy.stats();
            stats.bytes_client_to_upstream == size && stats.bytes_upstream_to_client == size
        }));
        let stats = proxy.stats();
        assert_eq!(
            (stats.connections_accepted, stats.connections_open, stats.bytes_blackholed),
            (1, 1, 0)
        );
        drop(stream);
        assert!(
            eventually(|| proxy.stats().connections_open == 0),
            "closing the client closes the connection"
        );
    }

    #[test]
    fn latency_delays_each_direction() {
        let (upstream, _) = echo_server();
        let proxy = ChaosProxy::start(0, upstream, 2).expect("start");
        proxy.set(Chaos {
            latency_ms: 200,
            ..Chaos::default()
        });
        assert_eq!(proxy.chaos().latency_ms, 200);
        let mut stream = connect(&proxy);
        let started = StdInstant::now();
        assert_eq!(round_trip(&mut stream, b"ping"), b"ping");
        let elapsed = started.elapsed();
        // 200 ms there and 200 ms back.
        assert!(elapsed >= Duration::from_millis(400), "round trip took {elapsed:?}");
    }

    #[test]
    fn blackhole_discards_until_healed() {
        let (upstream, _) = echo_server();
        let proxy = ChaosProxy::start(0, upstream, 3).expect("start");
        let mut stream = connect(&proxy);
        assert_eq!(round_trip(&mut stream, b"before"), b"before");

        proxy.set(Chaos {
            blackhole: true,
            ..Chaos::default()
        });
        stream.write_all(b"lost").expect("write");
        stream.set_read_timeout(Some(Duration::from_millis(300))).expect("read timeout");
        let mut reply = [0u8; 16];
        match stream.read(&mut reply) {
            Err(error) => assert!(matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{error}"),
            Ok(read) => panic!("{read} bytes came through a blackhole"),
        }
        // A connection opened during the blackhole is accepted and blackholed too.
        let mut late = connect(&proxy);
        late.write_all(b"late").expect("write");
        assert!(eventually(|| proxy.stats().bytes_blackholed == 8));
        assert_eq!(proxy.stats().connections_open, 2, "blackholed connections stay open");

        proxy.heal();
        assert_eq!(proxy.chaos(), Chaos::default());
        stream.set_read_timeout(Some(WAIT_MAX)).expect("read timeout");
        assert_eq!(round_trip(&mut stream, b"after"), b"after", "what was discarded stays lost");
        assert_eq!(round_trip(&mut late, b"again"), b"again");
    }

    #[test]
    fn reset_connections_sends_rst_and_new_connections_work() {
        let (upstream, _) = echo_server();
        let proxy = ChaosProxy::start(0, upstream, 4).expect("start");
        let mut stream = connect(&proxy);
        assert_eq!(round_trip(&mut stream, b"hello"), b"hello");

        assert_eq!(proxy.reset_connections(), 1);
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(read) => assert_eq!(read, 0, "a reset connection delivered data"),
            Err(error) => assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}"),
        }
        let stats = proxy.stats();
        assert_eq!((stats.connections_reset, stats.connections_open), (1, 0));
        assert_eq!(proxy.reset_connections(), 0);

        let mut fresh = connect(&proxy);
        assert_eq!(round_trip(&mut fresh, b"again"), b"again");
    }

    #[test]
    fn bandwidth_limits_throughput() {
        let (upstream, _) = echo_server();
        let proxy = ChaosProxy::start(0, upstream, 5).expect("start");
        proxy.set(Chaos {
            bandwidth_bytes_per_s: Some(100_000),
            ..Chaos::default()
        });
        let stream = connect(&proxy);
        let bytes: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
        let started = StdInstant::now();
        let echoed = echo_concurrently(&stream, bytes.clone());
        let elapsed = started.elapsed();
        assert!(echoed == bytes, "the echo differs from what was sent");
        assert!(
            elapsed >= Duration::from_millis(400),
            "50,000 bytes at 100,000 B/s took {elapsed:?}"
        );
    }

    #[test]
    fn token_bucket_spreads_writes() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new();
        bucket.refilled_at = start;
        assert_eq!(bucket.grant(0, 10, start), Grant::Stalled);
        // 100,000 B/s saves up at most 10 ms, 1,000 bytes.
        let later = start + Duration::from_secs(1);
        assert_eq!(bucket.grant(100_000, 50_000, later), Grant::Bytes(1_000));
        assert_eq!(bucket.grant(100_000, 50_000, later), Grant::WaitFor(Duration::from_millis(10)));
    }

    #[test]
    fn jitter_is_reproducible() {
        let chaos = Chaos {
            latency_ms: 10,
            jitter_ms: 50,
            ..Chaos::default()
        };
        let draws = |seed: u64, stream: u64| -> Vec<Duration> {
            let mut delays = Delays::new(seed, stream);
            (0..200).map(|_| delays.draw(&chaos)).collect()
        };
        let first = draws(42, 0);
        assert_eq!(first, draws(42, 0), "the same seed and stream draw the same delays");
        assert_ne!(first, draws(43, 0), "another seed draws other delays");
        assert_ne!(first, draws(42, 1), "another stream draws other delays");
        assert!(first.iter().all(|delay| (10..=60).contains(&delay.as_millis())));
        assert!(first.iter().any(|delay| *delay != first[0]), "jitter varies");
        let mut delays = Delays::new(42, 0);
        let steady = Chaos {
            latency_ms: 7,
            ..Chaos::default()
        };
        assert_eq!(delays.draw(&steady), Duration::from_millis(7));
        assert_eq!(delay_max(&chaos), Duration::from_millis(60));
    }

    #[test]
    fn refused_upstream_closes_the_client() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let upstream = closed.local_addr().expect("address");
        drop(closed);
        let proxy = ChaosProxy::start(0, upstream, 6).expect("start");
        let mut stream = connect(&proxy);
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(read) => assert_eq!(read, 0),
            Err(error) => assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}"),
        }
        assert!(eventually(|| proxy.stats().upstream_connect_failures == 1));
    }

    #[test]
    fn set_upstream_redirects_new_connections() {
        let (first, first_accepted) = echo_server();
        let (second, second_accepted) = echo_server();
        let proxy = ChaosProxy::start(0, first, 7).expect("start");
        let mut old = connect(&proxy);
        assert_eq!(round_trip(&mut old, b"one"), b"one");
        proxy.set_upstream(second);
        assert_eq!(proxy.upstream(), second);
        let mut new = connect(&proxy);
        assert_eq!(round_trip(&mut new, b"two"), b"two");
        assert_eq!(round_trip(&mut old, b"still"), b"still", "open connections keep their upstream");
        assert_eq!(
            (first_accepted.load(Ordering::SeqCst), second_accepted.load(Ordering::SeqCst)),
            (1, 1)
        );
    }

    /// Driving the proxy from inside a runtime must neither panic nor deadlock.
    #[tokio::test(flavor = "current_thread")]
    async fn works_inside_a_runtime_and_drop_closes_connections() {
        let (upstream, _) = echo_server();
        let proxy = ChaosProxy::start(0, upstream, 8).expect("start");
        let mut stream = TcpStream::connect(proxy.address()).await.expect("connect");
        stream.write_all(b"async").await.expect("write");
        let mut reply = [0u8; 5];
        tokio::time::timeout(WAIT_MAX, stream.read_exact(&mut reply))
            .await
            .expect("echo in time")
            .expect("read echo");
        assert_eq!(&reply, b"async");
        proxy.set(Chaos {
            latency_ms: 1,
            ..Chaos::default()
        });
        proxy.heal();
        let address = proxy.address();
        drop(proxy);
        let mut byte = [0u8; 1];
        let after_drop = tokio::time::timeout(WAIT_MAX, stream.read(&mut byte))
            .await
            .expect("closed in time");
        assert!(matches!(after_drop, Ok(0) | Err(_)), "dropping the proxy closes its connections");
        assert!(TcpStream::connect(address).await.is_err(), "dropping the proxy closes its listener");
    }
}
