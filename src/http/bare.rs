//! Endless responses on the bare connection: `GET /live.webm` (and `/relay.webm`) are routed
//! by warp as usual, but their response is written here, not by hyper.
//!
//! Why not hyper: an HTTP/1 connection in hyper keeps an 8 KiB read buffer and its own write
//! buffers for as long as it lives, and the builder cannot size them. A `/live.webm` viewer is
//! one response that lasts for hours, so those buffers were half of what each viewer cost
//! (23 KiB per viewer against 10.5 KiB on `/ws/view`, whose upgrade leaves hyper behind).
//! Here the request head is read into a small buffer that is freed once it is parsed, the
//! response head is written once, and each wake-up's chunks go out in one vectored write
//! straight from the shared `Bytes`, as on `/ws/view`.
//!
//! Every other request (and anything this module does not fully understand: HTTP/1.0, a
//! body, a head that does not parse or is too large) goes to hyper with the bytes already
//! read put back in front of the stream ([`Rewind`]), so hyper sees the connection as if
//! nothing had touched it.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use warp::http::{header, Method, Response, Version};

/// Paths whose `GET` is an endless stream, answered here.
const ENDLESS: &[&str] = &["/live.webm", "/relay.webm"];

/// The most of a request head read before giving up and handing the connection to hyper
/// (which applies its own limits to the rest).
const MAX_HEAD: usize = 8 * 1024;
/// Headers parsed at most; a request with more goes to hyper.
const MAX_HEADERS: usize = 64;
/// A client may send this much on a stream's connection after its request (a pipelined
/// request that will never be answered); more, and the connection is closed.
const MAX_DISCARDED: usize = 64 * 1024;
/// Slices per `writev`: Linux takes at most 1024 (IOV_MAX).
const MAX_SLICES: usize = 512;
/// Each data frame takes three slices (size line, data, CRLF).
const MAX_FRAMES_PER_WRITE: usize = MAX_SLICES / 3;

/// A request answered here (it has no body).
pub type Request = warp::http::Request<http_body_util::Empty<Bytes>>;

/// What the start of a connection turned out to be.
#[allow(clippy::large_enum_variant)] // as `Parsed`
pub enum Head {
    /// A `GET` of an endless stream, ready for warp.
    /// `extra` bytes came after the head: a request pipelined behind an endless one can
    /// never be answered, and they count against what the client may send (see [`respond`]).
    Endless { request: Request, extra: usize },
    /// Anything else: the bytes read so far, for hyper.
    Other(Bytes),
    /// The client closed, or sent nothing within the header timeout.
    Gone,
}

/// Reads the first request's head (at most [`MAX_HEAD`] bytes, within `timeout`) and sorts it.
pub async fn read_head<S>(io: &mut S, timeout: Duration) -> Head
where
    S: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let reading = async {
        loop {
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            match parse(&buf) {
                Parsed::Partial if buf.len() < MAX_HEAD => {
                    if buf.capacity() == buf.len() {
                        buf.reserve(buf.len().min(MAX_HEAD - buf.len()));
                    }
                }
                Parsed::Partial | Parsed::Other => return Some(None),
                Parsed::Endless { request, extra } => return Some(Some((request, extra))),
            }
        }
    };
    match tokio::time::timeout(timeout, reading).await {
        Ok(Some(Some((request, extra)))) => Head::Endless { request, extra },
        Ok(Some(None)) => Head::Other(buf.freeze()),
        // hyper would close such a connection without a word too.
        Ok(None) | Err(_) => Head::Gone,
    }
}

// Made once per connection and consumed at once: boxing the request would save nothing.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Partial,
    Other,
    Endless { request: Request, extra: usize },
}

/// Parses `buf` as a request head; only a complete, plain `GET` of an endless path, with no
/// body, over HTTP/1.1 is ours.
fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let end = match request.parse(buf) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some("GET"), Some(target), Some(1)) = (request.method, request.path, request.version)
    else {
        return Parsed::Other;
    };
    let path = target.split('?').next().unwrap_or_default();
    if !ENDLESS.contains(&path) {
        return Parsed::Other;
    }
    let mut builder = warp::http::Request::builder()
        .method(Method::GET)
        .uri(target)
        .version(Version::HTTP_11);
    for h in request.headers.iter() {
        let body = [header::CONTENT_LENGTH, header::TRANSFER_ENCODING];
        if body
            .iter()
            .any(|name| h.name.eq_ignore_ascii_case(name.as_str()))
            && h.value != b"0"
        {
            return Parsed::Other;
        }
        if h.name.eq_ignore_ascii_case(header::UPGRADE.as_str()) {
            return Parsed::Other;
        }
        builder = builder.header(h.name, h.value);
    }
    // A header name or value that `http` refuses: hyper gives the proper 400.
    match builder.body(http_body_util::Empty::new()) {
        Ok(request) => Parsed::Endless {
            request,
            extra: buf.len() - end,
        },
        Err(_) => Parsed::Other,
    }
}

/// Writes `response` (warp's answer to an endless path: the stream, or a refusal) and closes
/// the connection. Errors are the connection's (a viewer gone or blocked), for the log.
/// `discarded` bytes came after the request already.
pub async fn respond<S, B>(
    io: &mut S,
    response: Response<B>,
    mut discarded: usize,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let (parts, mut body) = response.into_parts();
    let known_length = if body.is_end_stream() {
        Some(0)
    } else {
        body.size_hint().exact()
    };
    let head = response_head(&parts, known_length);
    io.write_all(&head).await?;
    drop(head);
    let chunked = known_length.is_none();
    // Small: it lives in every viewer's task, and only ever catches what a client should not send.
    let mut discard = [0u8; 64];
    let mut frames: Vec<Bytes> = Vec::new();
    loop {
        // Waiting for the stream, the connection is read too: a client that leaves is noticed
        // now, not at the next write (a paused stream writes every 15 s only).
        let first = tokio::select! {
            frame = body.frame() => frame,
            read = io.read(&mut discard) => match read {
                Ok(0) => return Ok(()),
                Ok(n) if discarded + n <= MAX_DISCARDED => {
                    discarded += n;
                    continue;
                }
                Ok(_) => return Err(std::io::Error::other("the client sent too much on a stream")),
                Err(error) => return Err(error),
            },
        };
        let Some(first) = first else { break };
        // Whatever else is ready now goes in the same write (hyper did the same: the body
        // decides how much is ready, see hub::Batching).
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            frames.push(data);
                        }
                    }
                }
                // The stream broke: end without the last chunk, so the client sees it cut.
                Err(_) => return Err(std::io::Error::other("the response body failed")),
            }
            if frames.len() < MAX_FRAMES_PER_WRITE {
                next = body.frame().now_or_never().flatten();
            }
        }
        write_frames(io, &frames, chunked).await?;
        frames.clear();
    }
    if chunked {
        io.write_all(b"0\r\n\r\n").await?;
    }
    io.shutdown().await
}

/// The status line and headers, with the framing hyper would have added, a `Date`, and
/// `Connection: close` (the connection ends with this response).
fn response_head(parts: &warp::http::response::Parts, known_length: Option<u64>) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    let status = parts.status;
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    let mut add = |name: &str, value: &[u8]| {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    };
    for (name, value) in &parts.headers {
        let framing = [
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::CONNECTION,
        ];
        if !framing.contains(name) {
            add(name.as_str(), value.as_bytes());
        }
    }
    if !parts.headers.contains_key(header::DATE) {
        add(
            "date",
            httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes(),
        );
    }
    match known_length {
        Some(length) => add("content-length", length.to_string().as_bytes()),
        None => add("transfer-encoding", b"chunked"),
    }
    add("connection", b"close");
    head.extend_from_slice(b"\r\n");
    head
}

/// Writes `frames` in as few `writev`s as the socket takes, each framed as an HTTP chunk if
/// `chunked`.
async fn write_frames<S>(io: &mut S, frames: &[Bytes], chunked: bool) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    // "{size:x}\r\n" is at most 18 bytes; all size lines share one buffer.
    let mut sizes = Vec::with_capacity(if chunked { frames.len() * 18 } else { 0 });
    let mut ends = Vec::with_capacity(frames.len());
    if chunked {
        for frame in frames {
            use std::io::Write;
            let _ = write!(sizes, "{:x}\r\n", frame.len());
            ends.push(sizes.len());
        }
    }
    let mut slices = Vec::with_capacity(frames.len() * 3);
    let mut start = 0;
    for (i, frame) in frames.iter().enumerate() {
        if chunked {
            slices.push(IoSlice::new(&sizes[start..ends[i]]));
            start = ends[i];
        }
        slices.push(IoSlice::new(frame));
        if chunked {
            slices.push(IoSlice::new(b"\r\n"));
        }
    }
    write_all_vectored(io, &mut slices).await
}

/// Writes every slice, in order, with as few `writev`s as the socket takes (at most
/// [`MAX_SLICES`] each).
pub async fn write_all_vectored<S>(
    io: &mut S,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    while !slices.is_empty() {
        let batch = slices.len().min(MAX_SLICES);
        let written = io.write_vectored(&slices[..batch]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

/// A stream with bytes already read from it put back in front, for hyper.
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Frees the head's buffer now, not when the connection ends.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_get_of_an_endless_path_is_ours() {
        let ours = |head: &str| matches!(parse(head.as_bytes()), Parsed::Endless { .. });
        assert!(ours("GET /live.webm HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(ours("GET /relay.webm?token=x HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(ours("GET /live.webm HTTP/1.1\r\nContent-Length: 0\r\n\r\n"));
        for other in [
            "HEAD /live.webm HTTP/1.1\r\n\r\n",
            "GET /live.webm HTTP/1.0\r\n\r\n",
            "GET /live.webmx HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET /live.webm HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "GET /live.webm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /live.webm HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET /live.webm HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ] {
            assert!(!ours(other), "{other:?} is not ours");
        }
        assert!(matches!(
            parse(b"GET /live.webm HTTP/1.1\r\nHo"),
            Parsed::Partial
        ));
    }

    #[tokio::test]
    async fn what_was_read_is_read_again_first() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.expect("write");
        drop(client);
        let mut rewound = Rewind::new(Bytes::from_static(b"hello"), server);
        let mut all = String::new();
        rewound.read_to_string(&mut all).await.expect("read");
        assert_eq!(all, "hello world");
    }
}
