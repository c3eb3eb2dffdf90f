//! Writes that survive a power cut: a new file written and fsynced (a link
//! at its path not followed), and a folder fsynced after a rename or a new
//! entry in it.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// An I/O error that names what was done to which path.
pub(super) fn context(what: &str, path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Writes a new file and fsyncs it; a link at `path` is not followed.
pub(super) fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| context("cannot create", path, e))?;
    f.write_all(bytes).map_err(|e| context("cannot write", path, e))?;
    f.sync_all().map_err(|e| context("cannot sync", path, e))
}

pub(super) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path).and_then(|d| d.sync_all()).map_err(|e| context("cannot sync", path, e))
}
