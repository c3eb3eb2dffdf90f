//! What the process sets up around a command: the allocator's arenas, the
//! log, a stop on SIGTERM/SIGINT, and what systemd is told (`Type=notify`:
//! ready, status, watchdog pings, stopping).

/// Logs on stderr, at info (debug with `-v`; RUST_LOG overrides), as text
/// or one JSON object per line.
pub(crate) fn init_logs(verbose: bool, format: &str) {
    use std::io::IsTerminal;
    let default = if verbose { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},async_io=warn,polling=warn")));
    // Colours only for a person at a terminal, not in journald or files.
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        "json" => logs.json().flatten_event(true).init(),
        _ => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// Responses allocate and free large buffers (a window of a cast, a piece
/// of a frame read from the cache folder) on many threads (the blocking
/// pool). glibc gives each thread an arena, up to 8 per core, and freed
/// memory stays in them: 8 concurrent zstd downloads of a 1 GB model left
/// +91 MiB resident. Two arenas hold that to +15 MiB at the same throughput
/// (a fixed 128 KiB mmap threshold did too, but cost 40% of zstd throughput
/// in page faults); measured with benches/memory.py.
pub(crate) fn return_large_buffers() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called first thing in
    // main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// A channel closed at the first SIGTERM or SIGINT (systemd's stop, Ctrl-C):
/// the server then drains and `serve` exits 0.
pub(crate) fn stop_on_signal() -> Result<smol::channel::Receiver<()>, String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot handle SIGTERM/SIGINT: {e}"))?;
    let (tx, rx) = smol::channel::bounded(1);
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let name = if signal == SIGTERM { "SIGTERM" } else { "SIGINT" };
            tracing::info!(signal = name, "asked to stop");
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            tx.close();
        }
    });
    Ok(rx)
}

/// Tells systemd (where `$NOTIFY_SOCKET` is set; a no-op elsewhere).
pub(crate) fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// The watchdog's ping at half of systemd's `WatchdogSec=` (its
/// `$WATCHDOG_USEC`), if the unit asks for one: run from the loop that does
/// the work, so a wedged loop stops the pings and systemd restarts us.
pub(crate) fn watchdog() -> Option<weightcast::http::Heartbeat> {
    let every = sd_notify::watchdog_enabled()? / 2;
    let beat = std::sync::Arc::new(|| notify(&[sd_notify::NotifyState::Watchdog]));
    Some(weightcast::http::Heartbeat { every, beat })
}

/// Ends `pull` at the first SIGTERM or SIGINT, telling systemd it stops: a
/// round may be cut anywhere (a version is installed by renames, partial
/// downloads resume, leftovers are removed at the next start).
pub(crate) fn exit_on_signal() -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot handle SIGTERM/SIGINT: {e}"))?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let name = if signal == SIGTERM { "SIGTERM" } else { "SIGINT" };
            tracing::info!(signal = name, "asked to stop");
            notify(&[sd_notify::NotifyState::Stopping]);
            std::process::exit(0);
        }
    });
    Ok(())
}

/// `work`, with the watchdog's pings while it runs (none without one).
pub(crate) async fn beating<T>(
    work: impl std::future::Future<Output = T>,
    heartbeat: Option<&weightcast::http::Heartbeat>,
) -> T {
    let Some(heartbeat) = heartbeat else { return work.await };
    let pings = async {
        loop {
            (heartbeat.beat)();
            smol::Timer::after(heartbeat.every).await;
        }
    };
    futures_lite::future::or(work, pings).await
}
