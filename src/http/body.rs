//! A response body made of chunks that are either ready (slices of the model's
//! memory map, cached blobs) or computed on the blocking pool when the reader
//! comes near them (one chunk ahead), so a model of any size streams without
//! being built in memory and without compressing on the executor's threads.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_lite::io::{AsyncBufRead, AsyncRead};
use futures_lite::Future;

pub(super) use crate::encode::{Chunk, Compute};

/// A chunk in the queue; `Option<usize>` is the length announced for it.
enum Slot {
    Ready(Bytes),
    Later(Option<usize>, Compute),
    Running(Option<usize>, Pin<Box<dyn Future<Output = io::Result<Bytes>> + Send + Sync>>),
}

/// Chunk jobs running at once, across all responses. A job holds its input
/// and output in memory while it runs — up to 4 MiB of tensor data and its
/// zstd frame for a one-frame answer — so without a bound, clients asking
/// at once for many distinct bodies made the server hold that much per job
/// (2,000 distinct `names=` selections from 200 connections: 638 to 1,062
/// MiB peak RSS and up to 105 threads; with it, about 200 MiB and 11).
/// Twice the cores keeps them busy while some jobs read cache files; jobs
/// wait for a permit as futures, not as blocked threads.
static JOBS: LazyLock<Arc<async_lock::Semaphore>> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    Arc::new(async_lock::Semaphore::new(2 * cores))
});

/// `job` on the blocking pool once a permit is free; the permit goes with
/// the job, so it is held until the job ends even if the response is dropped.
fn run_job(job: Compute) -> Pin<Box<dyn Future<Output = io::Result<Bytes>> + Send + Sync>> {
    Box::pin(async move {
        let permit = JOBS.acquire_arc().await;
        smol::unblock(move || {
            let _permit = permit;
            job()
        })
        .await
    })
}

/// The body's length, if every chunk's length is known now.
pub(super) fn known_len(chunks: &[Chunk]) -> Option<usize> {
    chunks
        .iter()
        .map(|c| match c {
            Chunk::Ready(b) => Some(b.len()),
            Chunk::Sized(n, _) => Some(*n),
            Chunk::Later(_) => None,
        })
        .sum()
}

/// Bytes [start, end) of a body whose chunks all have known lengths (Range
/// requests); chunks outside are dropped, chunks across an edge are cut.
pub(super) fn slice(chunks: Vec<Chunk>, start: usize, end: usize) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut at = 0;
    for c in chunks {
        let len = match &c {
            Chunk::Ready(b) => b.len(),
            Chunk::Sized(n, _) => *n,
            Chunk::Later(_) => return Vec::new(), // callers check known_len first
        };
        let (from, to) = (start.max(at), end.min(at + len));
        if from < to {
            let (a, b) = (from - at, to - at);
            out.push(match c {
                Chunk::Ready(bytes) => Chunk::Ready(bytes.slice(a..b)),
                Chunk::Sized(n, f) if a == 0 && b == n => Chunk::Sized(n, f),
                Chunk::Sized(_, f) => Chunk::Sized(b - a, Box::new(move || f().map(|bytes| bytes.slice(a..b)))),
                Chunk::Later(f) => Chunk::Later(f),
            });
        }
        at += len;
    }
    out
}

/// Parses a single-range `Range: bytes=…` header against a body of `total`
/// bytes: `Some(Ok((start, end_exclusive)))`, `Some(Err(()))` when not
/// satisfiable, `None` when the header is not a single byte range (then the
/// whole body is sent, as RFC 9110 allows).
pub(super) fn parse_range(header: &str, total: usize) -> Option<Result<(usize, usize), ()>> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let suffix: usize = b.parse().ok()?;
        if suffix == 0 {
            return Some(Err(()));
        }
        (total.saturating_sub(suffix), total)
    } else {
        let start: usize = a.parse().ok()?;
        let end = if b.is_empty() { total } else { b.parse::<usize>().ok()?.saturating_add(1).min(total) };
        if start >= total || start >= end {
            return Some(Err(()));
        }
        (start, end)
    };
    Some(Ok(range))
}

/// Streams chunks in order.
pub(super) struct ChunkReader {
    queue: VecDeque<Slot>,
    current: Bytes,
    /// What the chunks come from, kept alive while they are sent: a version
    /// of a model counts as held until its last response ends (the store
    /// loads no third version meanwhile).
    _source: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl ChunkReader {
    pub(super) fn new(chunks: Vec<Chunk>) -> ChunkReader {
        let queue = chunks
            .into_iter()
            .map(|c| match c {
                Chunk::Ready(b) => Slot::Ready(b),
                Chunk::Later(f) => Slot::Later(None, f),
                Chunk::Sized(n, f) => Slot::Later(Some(n), f),
            })
            .collect();
        ChunkReader { queue, current: Bytes::new(), _source: None }
    }

    /// Keeps `source` alive as long as the body.
    pub(super) fn holding(self, source: Arc<dyn std::any::Any + Send + Sync>) -> ChunkReader {
        ChunkReader { _source: Some(source), ..self }
    }

    /// Starts the work of the chunk at `at` on the blocking pool.
    fn start(&mut self, at: usize) {
        if let Some(slot) = self.queue.get_mut(at) {
            if matches!(slot, Slot::Later(..)) {
                if let Slot::Later(expect, job) = std::mem::replace(slot, Slot::Ready(Bytes::new())) {
                    *slot = Slot::Running(expect, run_job(job));
                }
            }
        }
    }
}

impl AsyncBufRead for ChunkReader {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        while this.current.is_empty() {
            // The chunk after the current one is prepared while this one is sent.
            this.start(0);
            this.start(1);
            match this.queue.front_mut() {
                None => return Poll::Ready(Ok(&[])),
                Some(Slot::Ready(b)) => {
                    this.current = std::mem::take(b);
                    this.queue.pop_front();
                }
                Some(Slot::Running(expect, task)) => match task.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(b)) if expect.is_some_and(|n| n != b.len()) => {
                        tracing::error!("response chunk is {} bytes, {expect:?} were announced", b.len());
                        this.queue.clear();
                        return Poll::Ready(Err(io::Error::other("chunk length differs from the announced length")));
                    }
                    Poll::Ready(Ok(b)) => {
                        this.current = b;
                        this.queue.pop_front();
                    }
                    Poll::Ready(Err(e)) => {
                        // The status line is already sent: all we can do is cut
                        // the body short, which framing lets a client detect.
                        tracing::error!("response body failed mid-stream: {e}");
                        this.queue.clear();
                        return Poll::Ready(Err(e));
                    }
                },
                Some(Slot::Later(..)) => this.start(0),
            }
        }
        Poll::Ready(Ok(&this.current[..]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        let _ = this.current.split_to(amt.min(this.current.len()));
    }
}

impl AsyncRead for ChunkReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let n = match self.as_mut().poll_fill_buf(cx) {
            Poll::Ready(Ok(data)) => {
                let n = data.len().min(buf.len());
                buf[..n].copy_from_slice(&data[..n]);
                n
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        self.consume(n);
        Poll::Ready(Ok(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::AsyncReadExt;

    #[test]
    fn chunk_jobs_of_all_responses_run_a_few_at_a_time() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let job = |k: u8| -> Chunk {
            let (running, most) = (running.clone(), most.clone());
            Chunk::Later(Box::new(move || {
                most.fetch_max(running.fetch_add(1, SeqCst) + 1, SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(10));
                running.fetch_sub(1, SeqCst);
                Ok(Bytes::from(vec![k; 3]))
            }))
        };
        // 32 responses of 4 computed chunks each, read at once: each reader
        // alone would start two jobs at a time, 64 in all (32 were seen at
        // once without the bound).
        let readers: Vec<_> = (0..32u8)
            .map(|r| {
                let mut reader = ChunkReader::new((0..4).map(|k| job(r ^ k)).collect());
                smol::spawn(async move {
                    let mut out = Vec::new();
                    reader.read_to_end(&mut out).await.map(|_| out)
                })
            })
            .collect();
        for (r, task) in readers.into_iter().enumerate() {
            let want: Vec<u8> = (0..4u8).flat_map(|k| [r as u8 ^ k; 3]).collect();
            assert_eq!(smol::block_on(task).unwrap(), want);
        }
        let permits = 2 * std::thread::available_parallelism().map_or(2, |n| n.get());
        assert!(most.load(SeqCst) <= permits, "{} jobs at once, {permits} permits", most.load(SeqCst));
    }

    #[test]
    fn ready_and_computed_chunks_come_out_in_order() {
        let chunks = vec![
            Chunk::Ready(Bytes::from_static(b"ab")),
            Chunk::Later(Box::new(|| Ok(Bytes::from_static(b"cd")))),
            Chunk::Later(Box::new(|| Ok(Bytes::from_static(b"")))),
            Chunk::Ready(Bytes::from_static(b"e")),
        ];
        assert_eq!(known_len(&chunks), None);
        let mut out = Vec::new();
        smol::block_on(ChunkReader::new(chunks).read_to_end(&mut out)).unwrap();
        assert_eq!(out, b"abcde");
    }

    #[test]
    fn a_failed_chunk_is_an_error_not_a_short_success() {
        let chunks =
            vec![Chunk::Ready(Bytes::from_static(b"ab")), Chunk::Later(Box::new(|| Err(io::Error::other("boom"))))];
        let mut out = Vec::new();
        assert!(smol::block_on(ChunkReader::new(chunks).read_to_end(&mut out)).is_err());
    }

    #[test]
    fn a_chunk_of_the_wrong_announced_length_aborts_the_body() {
        let chunks = vec![Chunk::Sized(3, Box::new(|| Ok(Bytes::from_static(b"ab"))))];
        assert_eq!(known_len(&chunks), Some(3));
        let mut out = Vec::new();
        assert!(smol::block_on(ChunkReader::new(chunks).read_to_end(&mut out)).is_err());
    }

    #[test]
    fn ranges_cut_across_chunks() {
        let chunks = || {
            vec![
                Chunk::Ready(Bytes::from_static(b"abc")),
                Chunk::Sized(3, Box::new(|| Ok(Bytes::from_static(b"def")))),
                Chunk::Ready(Bytes::from_static(b"gh")),
            ]
        };
        for (start, end, want) in [(0, 8, &b"abcdefgh"[..]), (2, 5, b"cde"), (4, 8, b"efgh"), (7, 8, b"h")] {
            let part = slice(chunks(), start, end);
            assert_eq!(known_len(&part), Some(end - start));
            let mut out = Vec::new();
            smol::block_on(ChunkReader::new(part).read_to_end(&mut out)).unwrap();
            assert_eq!(out, want, "{start}..{end}");
        }
        assert_eq!(parse_range("bytes=2-4", 8), Some(Ok((2, 5))));
        assert_eq!(parse_range("bytes=5-", 8), Some(Ok((5, 8))));
        assert_eq!(parse_range("bytes=-3", 8), Some(Ok((5, 8))));
        assert_eq!(parse_range("bytes=2-100", 8), Some(Ok((2, 8))));
        assert_eq!(parse_range("bytes=8-", 8), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,4-5", 8), None);
        assert_eq!(parse_range("lines=1-2", 8), None);
    }
}
