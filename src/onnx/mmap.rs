//! The one place weightcast memory-maps files: a model and its external data
//! are served straight from their maps, so a response copies no weights.
//!
//! A map is only as good as the file under it: if the file is truncated
//! while mapped, touching the lost pages raises SIGBUS and ends the process;
//! if it is rewritten in place (`cp new.onnx served.onnx`, scp, an editor),
//! the bytes change under digests computed earlier. So what is mapped is a
//! [`snapshot`]: a private copy nobody else can open — a reflink where the
//! file system shares blocks (btrfs, XFS: instant, no space), else a copy
//! (`copy_file_range`) — in an unnamed file (`O_TMPFILE`) beside the model,
//! gone when the last map of it goes. Its cost, measured: a copy of the
//! model's size on disk while it is served (see PERFORMANCE.md).

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
pub fn open_regular(path: &Path) -> io::Result<File> {
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

/// An empty unnamed file (`O_TMPFILE`) in `dir`, or where `dir` refuses one
/// (read-only, no `O_TMPFILE`), in the system's temporary folder: no other
/// process can open it, and it is gone when its last handle or map goes.
pub(crate) fn private_file(dir: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
    let mode = Mode::RUSR | Mode::WUSR;
    let private = rustix::fs::openat(rustix::fs::CWD, dir, flags, mode)
        .or_else(|_| rustix::fs::openat(rustix::fs::CWD, std::env::temp_dir(), flags, mode))?;
    Ok(File::from(private))
}

/// A private copy of `file` that no other process can change: an unnamed
/// file (`O_TMPFILE`) in `dir` — on the same file system, so a reflink can
/// share its blocks — or, where `dir` refuses one (read-only, no
/// `O_TMPFILE`), in the system's temporary folder. The copy is a reflink
/// when the file system has them, else a full copy.
pub(crate) fn snapshot(file: &File, dir: &Path) -> io::Result<File> {
    let mut private = private_file(dir)?;
    if rustix::fs::ioctl_ficlone(&private, file).is_err() {
        // std's copy uses copy_file_range: in the kernel, no user-space buffer.
        let mut source = file;
        io::copy(&mut source, &mut private)?;
    }
    Ok(private)
}
