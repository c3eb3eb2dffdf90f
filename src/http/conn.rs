//! One connection: requests are parsed by async-h1, answered by
//! [`super::respond`], and the response is written here, because async-h1's
//! own encoder copies every body through an 8 KiB buffer and reformats the
//! Date header per response. Writing ourselves sends each body chunk — often
//! a multi-megabyte slice of the memory-mapped model — in one `write` call,
//! and a bodiless answer (a 304) in one `write` with its head.

use std::cell::RefCell;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, FutureExt};
use http_types::{Method, Response};

use super::State;

/// How long a connection may sit between requests (or dribble headers).
const IDLE: Duration = Duration::from_secs(60);

/// Serves requests on `stream` until the client closes it, asks to, or idles.
pub(super) async fn serve(stream: smol::net::TcpStream, state: Arc<State>) -> io::Result<()> {
    let mut out = stream.clone();
    loop {
        let next =
            async { async_h1::server::decode(stream.clone()).await.map_err(|e| io::Error::other(e.to_string())) }.or(
                async {
                    smol::Timer::after(IDLE).await;
                    Ok(None)
                },
            );
        let Some((req, mut body)) = next.await? else { return Ok(()) };
        let method = req.method();
        let close = req.header("Connection").is_some_and(|c| c.as_str().eq_ignore_ascii_case("close"));
        let response = super::respond(&state, req).await;
        // A GET or HEAD has no body worth reading; drain whatever came.
        futures_lite::io::copy(&mut body, &mut futures_lite::io::sink()).await?;
        write(&mut out, method, response, close).await?;
        if close {
            return Ok(());
        }
    }
}

/// Writes a response: head, then the body chunk by chunk as the body reader
/// hands them out (framed by Content-Length when known, else chunked).
async fn write(out: &mut smol::net::TcpStream, method: Method, mut res: Response, close: bool) -> io::Result<()> {
    let body = res.take_body();
    let len = body.len();
    let status = res.status();
    let bodiless = status == http_types::StatusCode::NotModified || u16::from(status) < 200;
    let head = head(&res, if bodiless { Framing::None } else { len.map_or(Framing::Chunked, Framing::Length) }, close);
    if method == Method::Head || bodiless {
        out.write_all(&head).await?;
        return out.flush().await;
    }
    write_body(out, body.into_reader(), head, len.is_none()).await
}

/// How a body's end is told.
enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// Status line and headers, with the framing, `connection: close` and `date`.
fn head(res: &Response, framing: Framing, close: bool) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    let status = res.status();
    head.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", u16::from(status), status.canonical_reason()).as_bytes());
    for (name, values) in res.iter() {
        for v in values.iter() {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(v.as_str().as_bytes());
            head.extend_from_slice(b"\r\n");
        }
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

/// The body after `head`, whole chunks per write: small chunks ride with the
/// head (or the chunk-size line), large ones go in a write of their own.
async fn write_body(
    out: &mut smol::net::TcpStream,
    mut reader: impl AsyncBufRead + Unpin,
    head: Vec<u8>,
    chunked: bool,
) -> io::Result<()> {
    let mut pending_head = Some(head);
    loop {
        let chunk = reader.fill_buf().await?;
        let n = chunk.len();
        let mut frame = pending_head.take().unwrap_or_default();
        if n == 0 {
            if chunked {
                frame.extend_from_slice(b"0\r\n\r\n");
            }
            if !frame.is_empty() {
                out.write_all(&frame).await?;
            }
            break;
        }
        if chunked {
            frame.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        }
        if frame.len() + n <= 64 * 1024 {
            frame.extend_from_slice(chunk);
            if chunked {
                frame.extend_from_slice(b"\r\n");
            }
            out.write_all(&frame).await?;
        } else {
            if !frame.is_empty() {
                out.write_all(&frame).await?;
            }
            out.write_all(chunk).await?;
            if chunked {
                out.write_all(b"\r\n").await?;
            }
        }
        reader.consume(n);
    }
    out.flush().await
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
