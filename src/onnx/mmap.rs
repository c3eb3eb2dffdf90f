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
