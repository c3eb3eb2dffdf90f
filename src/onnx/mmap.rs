//! The one place weightcast memory-maps files: a model and its external data
//! are served straight from their maps, so a response copies no weights.
//!
//! A map is only as good as the file under it: if the file is truncated
//! while mapped, touching the lost pages raises SIGBUS and ends the process;
//! if it is rewritten in place, the bytes change under digests computed
//! earlier. Neither can be prevented from here, so the precondition travels
//! to the callers as `unsafe`: whoever maps a file promises that it is only
//! ever replaced by renaming a new file over it (as `weightcast pull` and
//! the README's instructions do), never modified in place.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use bytes::Bytes;

/// The whole of `file`, mapped read-only (an empty file gives empty bytes:
/// a zero-length map is an error on Linux).
///
/// # Safety
///
/// The file must not be truncated or written to for as long as the returned
/// bytes, or any slice of them, live. Replacing it by renaming another file
/// over its path is fine: the map keeps the old inode.
pub(crate) unsafe fn map(file: &File) -> std::io::Result<Bytes> {
    if file.metadata()?.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: read-only map; the caller upholds that the file is not changed
    // in place while the map lives (this function's contract).
    let map = unsafe { memmap2::Mmap::map(file) }?;
    Ok(Bytes::from_owner(map))
}

/// Opens `path` for reading if it is a regular file: a FIFO, device or
/// directory named by a model (or its external data) is refused, and the
/// open never blocks (a FIFO with no writer would hang `open` forever).
pub(crate) fn open_regular(path: &Path) -> io::Result<File> {
    let refuse = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("is {what}, not a regular file"));
    let kind = std::fs::metadata(path)?.file_type();
    if !kind.is_file() {
        return Err(refuse(describe(kind)));
    }
    // O_NONBLOCK: should the path be swapped for a FIFO after the check.
    let file =
        std::fs::OpenOptions::new().read(true).custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32).open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(refuse(describe(kind)));
    }
    Ok(file)
}

fn describe(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else {
        "not a file"
    }
}
