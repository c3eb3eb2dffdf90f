//! One updater at a time per `--dest`: an exclusive `flock` on `DEST/.lock`,
//! as dpkg locks its database. Two `pull`s on one folder (a cron job beside
//! the service) otherwise shared `.partial` files and deleted each other's
//! temporary folders: first installs failed in 8 of 8 tries.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::fs::{flock, FlockOperation};

/// The lock, held until dropped (the kernel releases it if the process dies).
pub(super) struct Lock {
    _file: File,
}

/// The lock file's name under `--dest`.
pub(super) const LOCK_FILE: &str = ".lock";

impl Lock {
    /// Takes the lock of the folder `root`, waiting for whoever holds it
    /// (named in the log: the file holds the holder's pid and command).
    /// `what` is this process's command, written for the next waiter.
    pub(super) fn take(root: &Path, what: &str) -> io::Result<Lock> {
        let path = root.join(LOCK_FILE);
        // O_NOFOLLOW: a link planted at .lock must not make us truncate its target.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open the lock file {}: {e}", path.display())))?;
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() { "another weightcast process" } else { holder };
            tracing::info!(lock = %path.display(), "waiting for {holder}, which is updating this folder");
            flock(&file, FlockOperation::LockExclusive)
                .map_err(|e| io::Error::other(format!("cannot lock {}: {e}", path.display())))?;
        }
        file.set_len(0)?;
        file.rewind()?;
        let _ = writeln!(file, "pid {} ({what})", std::process::id());
        Ok(Lock { _file: file })
    }
}
