//! The server's life: executor threads, accepting connections (TLS
//! handshakes, the connection cap), and a drain on stop.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;

use super::slots::Slot;
use super::{conn, State};

/// Serves on `listener` with one executor thread per core (CPU-heavy work —
/// casts, compression — runs on the blocking pool instead), until `stop` is
/// closed: then no connection is accepted, idle ones are closed, and those
/// answering finish (for at most [`DRAIN`]) before this returns. At most
/// `max_connections` are open at once; more get a fast `503`.
pub fn run(
    listener: std::net::TcpListener,
    state: Arc<State>,
    max_connections: usize,
    stop: smol::channel::Receiver<()>,
) -> io::Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let executor = Arc::new(smol::Executor::new());
    for k in 1..threads {
        let ex = executor.clone();
        std::thread::Builder::new()
            .name(format!("weightcast-io-{k}"))
            .spawn(move || smol::block_on(ex.run(smol::future::pending::<()>())))?;
    }
    let listener = smol::net::TcpListener::try_from(listener)?;
    if let Some(heartbeat) = state.options.heartbeat.clone() {
        executor
            .spawn(async move {
                loop {
                    (heartbeat.beat)();
                    smol::Timer::after(heartbeat.every).await;
                }
            })
            .detach();
    }
    let open = state.metrics.connections_open.clone();
    let accepting = accept(listener, state, executor.clone(), max_connections, open.clone(), stop.clone());
    smol::block_on(executor.run(accepting.or(async {
        let _ = stop.recv().await;
    })));
    let in_flight = open.load(std::sync::atomic::Ordering::Relaxed);
    tracing::info!(in_flight, "stopping: no new connections; finishing those in flight");
    let deadline = Instant::now() + DRAIN;
    smol::block_on(executor.run(async {
        while open.load(std::sync::atomic::Ordering::Relaxed) > 0 && Instant::now() < deadline {
            smol::Timer::after(Duration::from_millis(20)).await;
        }
    }));
    let left = open.load(std::sync::atomic::Ordering::Relaxed);
    if left > 0 {
        tracing::warn!(left, "stopped with connections still open after {DRAIN:?}");
    }
    Ok(())
}

/// A TLS handshake, within [`HANDSHAKE_TIME`].
async fn handshake(
    acceptor: futures_rustls::TlsAcceptor,
    stream: smol::net::TcpStream,
    slot: &Slot,
) -> io::Result<futures_rustls::server::TlsStream<smol::net::TcpStream>> {
    acceptor
        .accept(stream)
        .or(async {
            smol::Timer::after(HANDSHAKE_TIME).await;
            Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake took too long"))
        })
        .or(async {
            slot.evicted().await;
            Err(io::Error::other("closed before its handshake ended, to make room for a new client"))
        })
        .await
}

/// How long a client may take over the TLS handshake.
const HANDSHAKE_TIME: Duration = Duration::from_secs(10);

/// How long a stopping server lets answers in flight finish.
pub const DRAIN: Duration = Duration::from_secs(30);

/// Raises this process's soft limit on open files to its hard limit (a
/// fleet's pollers each hold a connection: systemd's default soft limit is
/// 1,024). Returns the soft limit now in force.
pub fn raise_open_files_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum) {
        if soft < hard {
            let raised = rustix::process::Rlimit { current: Some(hard), maximum: Some(hard) };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                return hard;
            }
        }
    }
    limit.current.unwrap_or(u64::MAX)
}

/// The default connection cap for a soft open-files limit: what is left
/// after files, maps and the listener (64 kept aside).
pub fn default_max_connections(open_files: u64) -> usize {
    open_files.saturating_sub(64).clamp(16, 1 << 20) as usize
}

/// Accepts connections forever: an accept error (out of file descriptors,
/// a connection reset before it was taken) is logged once per burst and
/// waited out, never the end of the server.
async fn accept(
    listener: smol::net::TcpListener,
    state: Arc<State>,
    executor: Arc<smol::Executor<'static>>,
    max_connections: usize,
    open: Arc<std::sync::atomic::AtomicUsize>,
    stop: smol::channel::Receiver<()>,
) {
    let mut errors_in_a_row = 0u32;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                errors_in_a_row = 0;
                accepted
            }
            Err(e) => {
                state.metrics.accept_error();
                if errors_in_a_row == 0 {
                    tracing::warn!("accept failed, retrying while it lasts: {e}");
                }
                errors_in_a_row = errors_in_a_row.saturating_add(1);
                // Out of descriptors: give closing connections time to free some.
                let pause = Duration::from_millis(10u64 << errors_in_a_row.min(7));
                smol::Timer::after(pause).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let guard = ConnectionGuard::take(&open);
        // At the cap, the connection idle the longest makes room.
        let admitted = guard.count <= max_connections || state.slots.evict_idle();
        let slot = state.slots.open();
        let (state, stop) = (state.clone(), stop.clone());
        executor
            .spawn(async move {
                let result = match (admitted, &state.tls) {
                    (true, None) => conn::serve(stream.clone(), stream, state, stop, &slot).await,
                    (true, Some(tls)) => match handshake(tls.acceptor(), stream, &slot).await {
                        Ok(tls) => {
                            let (read, write) = futures_lite::io::split(tls);
                            conn::serve(read, write, state, stop, &slot).await
                        }
                        Err(e) => Err(e),
                    },
                    // Over the cap on TLS: closed (a 503 would cost a handshake).
                    (false, Some(_)) => {
                        state.metrics.refused();
                        Ok(())
                    }
                    (false, None) => {
                        state.metrics.refused();
                        conn::busy(stream).await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                drop(guard);
            })
            .detach();
    }
}

/// One open connection, counted while it lives.
struct ConnectionGuard {
    open: Arc<std::sync::atomic::AtomicUsize>,
    /// Open connections, this one included, when it was accepted.
    count: usize,
}

impl ConnectionGuard {
    fn take(open: &Arc<std::sync::atomic::AtomicUsize>) -> ConnectionGuard {
        let count = open.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        ConnectionGuard { open: open.clone(), count }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
