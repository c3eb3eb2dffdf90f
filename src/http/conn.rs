//! One connection: request heads are read and parsed here (httparse), the
//! request answered by [`super::respond`], and the response written here.
//!
//! Why not async-h1's server half: it answers nothing to HTTP/1.0, drops
//! pipelined requests (a fresh buffer per request loses bytes already read),
//! closes the connection without a status on a malformed head, and its body
//! reader has no deadline. Its encoder also copies every body through an
//! 8 KiB buffer. Here one buffered reader lives as long as the connection,
//! every read and write has a deadline, every malformed head gets its `400`,
//! `414` or `431`, and each body chunk — often a multi-megabyte slice of the
//! memory-mapped model — goes out in as few `write` calls as the deadline
//! allows.
//!
//! Limits (nginx's defaults where it has one): a head of at most 16 KiB and
//! 100 headers; 10 s to send the first request's head (nginx: 60 s,
//! `client_header_timeout`), 60 s between requests (nginx's keep-alive: 75
//! s) — and while it waits for a head a connection is idle: the first
//! closed when `max_connections` are open and a new client comes
//! (`slots`); request bodies
//! (meaningless on GET/HEAD) of at most 64 KiB, read within 60 s; a
//! response must leave at 1 MiB a minute or faster.

use std::cell::RefCell;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::io::BufReader;
use futures_lite::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt};
use http_types::{Method, Request, Response, StatusCode, Url};

use super::{ApiError, State};

/// How long a connection may sit between requests, or take to send a head.
const IDLE: Duration = Duration::from_secs(60);
/// How long a new connection may take to send its first request's head.
const FIRST_HEAD: Duration = Duration::from_secs(10);
/// How long a request body may take to arrive.
const BODY_TIME: Duration = Duration::from_secs(60);
/// A response must progress by [`WRITE_SLICE`] bytes in every this long.
const WRITE_TIME: Duration = Duration::from_secs(60);
/// See [`WRITE_TIME`].
const WRITE_SLICE: usize = 1 << 20;
/// Largest request head (request line and headers).
const MAX_HEAD: usize = 16 << 10;
/// Most headers in a request.
const MAX_HEADERS: usize = 100;
/// Largest request body read (and dropped: GET and HEAD take none).
const MAX_BODY: u64 = 64 << 10;

/// Serves requests on `stream`, in order, until the client closes it, asks
/// to, idles, or sends something that is not HTTP/1.x.
/// Plain TCP passes two handles of one socket; TLS the halves of its
/// stream (`futures_lite::io::split`).
pub(super) async fn serve(
    read: impl AsyncRead + Unpin,
    mut out: impl AsyncWrite + Unpin,
    state: Arc<State>,
    stop: smol::channel::Receiver<()>,
    slot: &super::slots::Slot,
) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(MAX_HEAD, read);
    let mut pace = Pace::new();
    let mut limit = FIRST_HEAD;
    loop {
        // Between requests a stopping server closes the connection, and so
        // does one that needs the slot for a new client.
        slot.idle();
        let stopping = async {
            let _ = stop
                .recv()
                .or(async {
                    slot.evicted().await;
                    Ok(())
                })
                .await;
            Ok(None)
        };
        let read = match deadline(limit, read_head(&mut reader).or(stopping)).await {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(()),
            Err(e) => return Err(e),
        };
        slot.busy();
        limit = IDLE;
        let parsed = match read.and_then(|h| request(&h, Some(&state))) {
            Ok(parsed) => parsed,
            Err(refusal) => return refuse(&mut out, &mut reader, refusal).await,
        };
        if let Err(refusal) = drain_body(&mut reader, parsed.body).await {
            return refuse(&mut out, &mut reader, refusal).await;
        }
        match parsed.answer {
            Answer::NotModified(headers) => {
                let headers = headers.iter().map(|(name, value)| (*name, value.as_str()));
                write_all(&mut out, &mut pace, &head(StatusCode::NotModified, headers, Framing::None, parsed.close))
                    .await?;
                out.flush().await?;
            }
            Answer::Respond(request) => {
                let method = request.method();
                let response = super::respond(&state, *request).await;
                let zstd = response.header("Content-Encoding").is_some_and(|e| e.as_str() == "zstd");
                let sent = write(&mut out, &mut pace, method, response, parsed.close, parsed.http10).await;
                state.metrics.body_bytes(zstd, *sent.as_ref().unwrap_or(&0));
                sent?;
            }
        }
        if parsed.close {
            return Ok(());
        }
    }
}

/// `fut`, or a `TimedOut` error once `limit` has passed.
async fn deadline<T>(limit: Duration, fut: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    fut.or(async {
        smol::Timer::after(limit).await;
        Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))
    })
    .await
}

/// A connection over the cap: a `503` with `Retry-After`, then closed.
pub(super) async fn busy(stream: smol::net::TcpStream) -> io::Result<()> {
    let mut stream = stream;
    let detail = "the server holds as many connections as it may; retry in a second";
    let response =
        ApiError::new(StatusCode::ServiceUnavailable, "busy", detail).with_header("Retry-After", "1").into_response();
    deadline(Duration::from_secs(5), write(&mut stream, &mut Pace::new(), Method::Get, response, true, false)).await?;
    let mut reader = stream.clone();
    linger(&mut stream, &mut reader).await
}

/// A request the connection cannot answer normally: the status it gets
/// before the connection closes.
pub(crate) struct Refusal {
    status: StatusCode,
    detail: String,
}

fn refusal(status: StatusCode, detail: impl Into<String>) -> Refusal {
    Refusal { status, detail: detail.into() }
}

/// Answers a refusal (JSON error body, `connection: close`) and ends.
async fn refuse(
    out: &mut (impl AsyncWrite + Unpin),
    reader: &mut (impl futures_lite::AsyncRead + Unpin),
    r: Refusal,
) -> io::Result<()> {
    let reason = r.status.canonical_reason().to_lowercase();
    let response = ApiError::new(r.status, reason, r.detail).into_response();
    write(out, &mut Pace::new(), Method::Get, response, true, false).await?;
    linger(out, reader).await
}

/// Closes after an early answer the way nginx's `lingering_close` does: the
/// write side first, then what the client is still sending is read and
/// dropped for a moment, so the kernel does not reset the connection (and
/// throw away the answer) because unread bytes were left.
async fn linger(
    out: &mut (impl AsyncWrite + Unpin),
    reader: &mut (impl futures_lite::AsyncRead + Unpin),
) -> io::Result<()> {
    // The write side's close: a FIN on TCP (`shutdown`), close_notify and
    // then a FIN on TLS.
    let _ = deadline(LINGER_TIME, out.close()).await;
    let mut rest = reader.take(LINGER_BYTES);
    let _ = deadline(LINGER_TIME, futures_lite::io::copy(&mut rest, &mut futures_lite::io::sink())).await;
    Ok(())
}

/// How long, and for how many bytes, [`linger`] reads.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: u64 = 4 << 20;

/// The next request head (up to and including the blank line), `None` when
/// the client closed cleanly between requests, or the refusal for a head
/// that is too long.
async fn read_head(reader: &mut BufReader<impl AsyncRead + Unpin>) -> io::Result<Option<Result<Vec<u8>, Refusal>>> {
    let mut head: Vec<u8> = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return match head.iter().all(|b| b.is_ascii_whitespace()) {
                true => Ok(None),
                false => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-head")),
            };
        }
        let before = head.len();
        head.extend_from_slice(buf);
        // Leading empty lines before a request line are allowed (RFC 9112 2.2).
        let start = head.iter().position(|b| !matches!(b, b'\r' | b'\n')).unwrap_or(head.len());
        if head.get(start) == Some(&TLS_HANDSHAKE) {
            // An https:// client on a plain HTTP port: closed now, so it
            // fails its handshake at once instead of waiting out a timeout.
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a TLS handshake on a plain HTTP port"));
        }
        if let Some(end) = find_blank_line(&head[start..]) {
            let end = start + end;
            reader.consume(end - before);
            head.truncate(end);
            return Ok(Some(Ok(head.split_off(start))));
        }
        let n = buf.len();
        reader.consume(n);
        if head.len() - start > MAX_HEAD {
            let line_ended = head[start..].windows(2).any(|w| w == b"\r\n");
            return Ok(Some(Err(match line_ended {
                false => refusal(StatusCode::UriTooLong, format!("the request line is over {MAX_HEAD} bytes")),
                true => refusal(
                    StatusCode::RequestHeaderFieldsTooLarge,
                    format!("the request head is over {MAX_HEAD} bytes"),
                ),
            })));
        }
    }
}

/// The first byte of a TLS handshake record (a ClientHello); no HTTP
/// request line starts with it.
const TLS_HANDSHAKE: u8 = 0x16;

/// End of the first `\r\n\r\n` (or bare `\n\n`) in `buf`.
fn find_blank_line(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A parsed request and how its connection goes on.
pub(crate) struct Parsed {
    answer: Answer,
    /// Bytes of request body that follow the head.
    body: u64,
    /// Close after answering (HTTP/1.0 without keep-alive, or asked).
    close: bool,
    http10: bool,
}

/// What a parsed request needs.
enum Answer {
    /// A device's poll for what it holds: the `304`'s headers (`poll`).
    NotModified(Vec<(&'static str, String)>),
    /// Anything else: the request, for [`super::respond`] (boxed: a
    /// `Request` is 400 bytes, a poll's answer 24).
    Respond(Box<Request>),
}

/// Parses a head into a request, or the refusal it deserves; with `state`,
/// a poll for a manifest the client holds is answered at once.
pub(crate) fn request(head: &[u8], state: Option<&super::State>) -> Result<Parsed, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(refusal(StatusCode::BadRequest, "incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refusal(StatusCode::RequestHeaderFieldsTooLarge, format!("more than {MAX_HEADERS} headers")))
        }
        Err(e) => return Err(refusal(StatusCode::BadRequest, format!("malformed request head: {e}"))),
    }
    let http10 = req.version == Some(0);
    let method: Method = req.method.unwrap_or_default().parse().map_err(|_| {
        refusal(StatusCode::MethodNotAllowed, format!("{} is not served; use GET or HEAD", req.method.unwrap_or("")))
    })?;
    let path = req.path.unwrap_or("/");
    let header = |name: &str| req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let body = body_length(header("Content-Length"), header("Transfer-Encoding"))?;
    let connection = header("Connection").map(|c| String::from_utf8_lossy(c).to_ascii_lowercase());
    let close = match connection.as_deref() {
        Some(c) if c.contains("close") => true,
        Some(c) if c.contains("keep-alive") => false,
        _ => http10,
    };
    let poll = super::poll::Poll { method: req.method.unwrap_or(""), path, headers: req.headers };
    if let Some(headers) = state.and_then(|state| super::poll::not_modified(state, &poll)) {
        return Ok(Parsed { answer: Answer::NotModified(headers), body, close, http10 });
    }
    let host = match header("Host") {
        Some(h) => std::str::from_utf8(h).map_err(|_| refusal(StatusCode::BadRequest, "Host is not UTF-8"))?,
        None if http10 => "localhost",
        None => return Err(refusal(StatusCode::BadRequest, "HTTP/1.1 requests must carry Host")),
    };
    if !path.starts_with('/') {
        return Err(refusal(StatusCode::BadRequest, "the request target must be a path (origin form)"));
    }
    let url = Url::parse(&format!("http://{host}{path}"))
        .map_err(|e| refusal(StatusCode::BadRequest, format!("bad request target or Host: {e}")))?;
    let mut request = Request::new(method, url);
    for h in req.headers.iter() {
        // httparse lets obs-text (bytes over 0x7F) through in values;
        // http-types panics on them: refuse them here (found by fuzzing).
        let value = std::str::from_utf8(h.value)
            .ok()
            .filter(|v| v.is_ascii())
            .ok_or_else(|| refusal(StatusCode::BadRequest, format!("header {} is not ASCII", h.name)))?;
        request.append_header(h.name, value);
    }
    Ok(Parsed { answer: Answer::Respond(Box::new(request)), body, close, http10 })
}

/// The request body's length: `Content-Length` (at most [`MAX_BODY`]); a
/// chunked body is refused (no GET or HEAD needs one).
fn body_length(content_length: Option<&[u8]>, transfer_encoding: Option<&[u8]>) -> Result<u64, Refusal> {
    if transfer_encoding.is_some() {
        return Err(refusal(StatusCode::BadRequest, "request bodies are not accepted (Transfer-Encoding)"));
    }
    let Some(value) = content_length else { return Ok(0) };
    let n: u64 = std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| refusal(StatusCode::BadRequest, "Content-Length is not a number"))?;
    if n > MAX_BODY {
        return Err(refusal(StatusCode::PayloadTooLarge, format!("request bodies are at most {MAX_BODY} bytes")));
    }
    Ok(n)
}

/// Reads and drops a request body of `n` bytes within [`BODY_TIME`].
async fn drain_body(reader: &mut BufReader<impl AsyncRead + Unpin>, n: u64) -> Result<(), Refusal> {
    if n == 0 {
        return Ok(());
    }
    let mut body = (&mut *reader).take(n);
    let copied = deadline(BODY_TIME, futures_lite::io::copy(&mut body, &mut futures_lite::io::sink())).await;
    match copied {
        Ok(got) if got == n => Ok(()),
        Ok(_) => Err(refusal(StatusCode::BadRequest, "the request body ended before its Content-Length")),
        Err(_) => Err(refusal(StatusCode::RequestTimeout, "the request body did not arrive in time")),
    }
}

/// Writes a response: head, then the body chunk by chunk as the body reader
/// hands them out (framed by Content-Length when known, else chunked).
async fn write(
    out: &mut (impl AsyncWrite + Unpin),
    pace: &mut Pace,
    method: Method,
    mut res: Response,
    close: bool,
    http10: bool,
) -> io::Result<u64> {
    let body = res.take_body();
    let len = body.len();
    let status = res.status();
    let bodiless = status == StatusCode::NotModified || u16::from(status) < 200;
    if bodiless {
        // `take_body` copied the empty body's type (application/octet-stream)
        // into the head: a 304 stands for a representation of another type.
        res.remove_header("Content-Type");
    }
    // HTTP/1.0 has no chunked encoding: a body of unknown length ends with
    // the connection.
    let framing = match (bodiless, len) {
        (true, _) => Framing::None,
        (false, Some(n)) => Framing::Length(n),
        (false, None) if http10 => Framing::None,
        (false, None) => Framing::Chunked,
    };
    let close = close || (http10 && len.is_none() && !bodiless);
    let chunked = matches!(framing, Framing::Chunked);
    let headers = res.iter().flat_map(|(name, values)| values.iter().map(move |v| (name.as_str(), v.as_str())));
    let head = head(status, headers, framing, close);
    if method == Method::Head || bodiless {
        write_all(out, pace, &head).await?;
        out.flush().await?;
        return Ok(0);
    }
    let zstd = res.header("Content-Encoding").is_some_and(|v| v.as_str() == "zstd");
    write_body(out, pace, body.into_reader(), head, chunked, zstd).await
}

/// How fast a stuck connection must drain: once a write would block, the
/// client has [`WRITE_TIME`] to take [`WRITE_SLICE`] bytes; only then does
/// the clock stop (and start afresh when a write blocks again). A client that keeps up never meets the clock; one
/// that stops reading is cut off (and the model version its download pinned
/// released) even though the kernel still lets a few bytes through now and
/// then (a zero-window probe takes 64 KiB about once a minute, which keeps a
/// plain per-write timeout from ever firing). One per connection, so answers
/// to pipelined requests cannot renew it a response at a time.
struct Pace {
    written: usize,
    /// Set while the connection is behind: (bytes written when it fell
    /// behind, when its time runs out).
    behind: Option<(usize, std::time::Instant)>,
}

impl Pace {
    fn new() -> Pace {
        Pace { written: 0, behind: None }
    }

    /// Counts `n` bytes taken; a client behind that has taken
    /// [`WRITE_SLICE`] since it fell behind has caught up.
    fn wrote(&mut self, n: usize) {
        self.written += n;
        if self.behind.is_some_and(|(since, _)| self.written - since >= WRITE_SLICE) {
            self.behind = None;
        }
    }
}

/// Writes `bytes` at no less than the [`Pace`].
async fn write_all(out: &mut (impl AsyncWrite + Unpin), pace: &mut Pace, bytes: &[u8]) -> io::Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        let n = match futures_lite::future::poll_once(out.write(&bytes[at..])).await {
            Some(result) => result?,
            None => {
                let (_, until) = *pace.behind.get_or_insert((pace.written, std::time::Instant::now() + WRITE_TIME));
                let left = until.saturating_duration_since(std::time::Instant::now());
                deadline(left, out.write(&bytes[at..])).await?
            }
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        at += n;
        pace.wrote(n);
    }
    Ok(())
}

/// How a body's end is told.
enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// Status line and headers, with the framing, `connection: close` and `date`.
fn head<'a>(
    status: StatusCode,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
    framing: Framing,
    close: bool,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(u16::from(status).to_string().as_bytes());
    head.push(b' ');
    head.extend_from_slice(reason(status).as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes()),
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None => {}
    }
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    DATE.with(|d| head.extend_from_slice(d.borrow_mut().header()));
    head.extend_from_slice(b"\r\n");
    head
}

/// The status line's reason phrase: RFC 9110's, where http-types 2.12 has
/// another ("304 Modified", which `curl -v` and `wget -S` then show).
fn reason(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NotModified => "Not Modified",
        StatusCode::NonAuthoritativeInformation => "Non-Authoritative Information",
        StatusCode::MultipleChoice => "Multiple Choices",
        StatusCode::RequestedRangeNotSatisfiable => "Range Not Satisfiable",
        StatusCode::PayloadTooLarge => "Content Too Large",
        StatusCode::UnprocessableEntity => "Unprocessable Content",
        other => other.canonical_reason(),
    }
}

/// The body after `head`, whole chunks per write: small chunks ride with the
/// head (or the chunk-size line), large ones go in a write of their own.
///
/// With `carry` (zstd bodies), each write but the body's last ends one byte
/// before its chunk does, and that byte leads the next write (chunked: the
/// next HTTP chunk). A zstd body's chunks are its frames, and httpx 0.28's
/// decoder fails on a read that ends exactly where a frame ends
/// (encode/httpx discussion 3538); writes and HTTP chunks that end there
/// would make nearly every read do so.
async fn write_body(
    out: &mut (impl AsyncWrite + Unpin),
    pace: &mut Pace,
    mut reader: impl AsyncBufRead + Unpin,
    head: Vec<u8>,
    chunked: bool,
    carry: bool,
) -> io::Result<u64> {
    let mut pending_head = Some(head);
    let mut carried: Option<u8> = None;
    let mut sent = 0u64;
    loop {
        let chunk = reader.fill_buf().await?;
        let n = chunk.len();
        let mut frame = pending_head.take().unwrap_or_default();
        if n == 0 {
            if let Some(byte) = carried {
                match chunked {
                    true => frame.extend_from_slice(&[b'1', b'\r', b'\n', byte, b'\r', b'\n']),
                    false => frame.push(byte),
                }
            }
            if chunked {
                frame.extend_from_slice(b"0\r\n\r\n");
            }
            if !frame.is_empty() {
                write_all(out, pace, &frame).await?;
            }
            break;
        }
        let (data, kept) = match carry {
            true => chunk.split_at(n - 1),
            false => (chunk, &[][..]),
        };
        let size = data.len() + usize::from(carried.is_some());
        if chunked && size > 0 {
            frame.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        }
        frame.extend(carried.take());
        if frame.len() + data.len() <= 64 * 1024 {
            frame.extend_from_slice(data);
            if chunked && size > 0 {
                frame.extend_from_slice(b"\r\n");
            }
            write_all(out, pace, &frame).await?;
        } else {
            // A carried byte or a size line goes with the data's first bytes:
            // a write of its own could be a read of its own.
            let (first, rest) = data.split_at(if frame.is_empty() { 0 } else { data.len().min(16 << 10) });
            frame.extend_from_slice(first);
            write_all(out, pace, &frame).await?;
            write_all(out, pace, rest).await?;
            if chunked {
                write_all(out, pace, b"\r\n").await?;
            }
        }
        carried = kept.first().copied();
        reader.consume(n);
        sent += n as u64;
    }
    out.flush().await?;
    Ok(sent)
}

/// The Date header, formatted once per second per thread.
struct CachedDate {
    second: u64,
    line: Vec<u8>,
}

impl CachedDate {
    fn header(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second || self.line.is_empty() {
            self.second = second;
            self.line = format!("date: {}\r\n", httpdate::fmt_http_date(now)).into_bytes();
        }
        &self.line
    }
}

thread_local! {
    static DATE: RefCell<CachedDate> = const { RefCell::new(CachedDate { second: 0, line: Vec::new() }) };
}
