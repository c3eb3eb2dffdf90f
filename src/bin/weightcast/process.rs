//! What the process sets up around a command: the allocator's arenas, the
//! log, and a stop on SIGTERM/SIGINT.

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
