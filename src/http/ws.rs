//! WebSocket for viewers, with our own I/O.
//!
//! Why not tungstenite (through warp) here: a viewer connection only ever sends the chunks that
//! every other viewer gets too, and reads a ping or a close. tungstenite copies each payload
//! into a per-connection write buffer and writes once per message, and warp 0.4 cannot size
//! its 128 KiB per-connection read buffer: at thousands of viewers that is most of the CPU
//! and memory the fan-out costs. Here a wake-up's chunks go out as one binary message in one
//! vectored write, straight from the shared `Bytes`, and the read side keeps a buffer of a
//! few KiB. The frame format itself (headers, opcodes) is tungstenite's `FrameHeader`; only
//! the handshake plumbing and the I/O are ours. Presenters keep warp's WebSocket.

use std::future::Future;
use std::io::{Cursor, IoSlice};

use bytes::{Buf, Bytes, BytesMut};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use warp::http::{header, StatusCode};
use warp::Filter;

/// The upgraded connection.
pub type Io = TokioIo<hyper::upgrade::Upgraded>;

/// Errors of a viewer's WebSocket.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("a frame of {size} bytes is over the {limit} byte limit")]
    TooLarge { size: u64, limit: usize },
    #[error("not a valid WebSocket frame: {0}")]
    Protocol(&'static str),
    #[error("the connection closed")]
    Eof,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What a client sent that the server acts on.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Close,
    Ping(Bytes),
    /// A whole text message (the page's clock messages, see [`crate::latency`]).
    Text(Bytes),
    /// Pong, binary, continuation, a fragmented text: nothing a viewer needs to send us.
    Ignored,
}

/// A request to upgrade to a WebSocket, checked as RFC 6455 section 4.2.1 asks.
pub struct Upgrade {
    key: String,
    on_upgrade: OnUpgrade,
}

/// Extracts the upgrade, or why the request is not one (answered with 400).
pub fn upgrade(
) -> impl Filter<Extract = (Result<Upgrade, &'static str>,), Error = std::convert::Infallible> + Clone
{
    warp::header::headers_cloned()
        .and(warp::ext::optional::<OnUpgrade>())
        .map(
            |headers: header::HeaderMap, on_upgrade: Option<OnUpgrade>| {
                let has = |name: header::HeaderName, token: &str| {
                    headers.get_all(name).iter().any(|value| {
                        value.to_str().is_ok_and(|value| {
                            value
                                .split(',')
                                .any(|item| item.trim().eq_ignore_ascii_case(token))
                        })
                    })
                };
                if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, "websocket") {
                    return Err("this endpoint takes a WebSocket upgrade");
                }
                if !has(header::SEC_WEBSOCKET_VERSION, "13") {
                    return Err("only WebSocket version 13 is spoken here");
                }
                let key = headers
                    .get(header::SEC_WEBSOCKET_KEY)
                    .and_then(|key| key.to_str().ok())
                    .ok_or("the upgrade has no Sec-WebSocket-Key")?;
                let on_upgrade = on_upgrade.ok_or("this connection cannot be upgraded")?;
                Ok(Upgrade {
                    key: key.to_string(),
                    on_upgrade,
                })
            },
        )
}

/// A plain-text 400 for a request that is not an upgrade.
pub fn refuse(reason: &'static str) -> warp::reply::Response {
    warp::reply::Reply::into_response(warp::reply::with_status(
        format!("{reason}\n"),
        StatusCode::BAD_REQUEST,
    ))
}

impl Upgrade {
    /// The `101 Switching Protocols` answer; once the client has it, `on_open` runs with the
    /// connection.
    pub fn reply<F, Fut>(self, on_open: F) -> warp::reply::Response
    where
        F: FnOnce(Io) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => on_open(TokioIo::new(upgraded)).await,
                Err(error) => tracing::debug!(%error, "WebSocket upgrade failed"),
            }
        });
        let mut response = warp::reply::Response::default();
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, "upgrade".parse().expect("valid"));
        headers.insert(header::UPGRADE, "websocket".parse().expect("valid"));
        headers.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            accept.parse().expect("base64 is a valid header value"),
        );
        response
    }
}

/// Splits a connection into its reading and writing sides; the client's frames may be at
/// most `max_frame` bytes.
pub fn split(io: Io, max_frame: usize) -> (Reader, Writer) {
    let (read, write) = tokio::io::split(io);
    (
        Reader {
            half: read,
            buf: BytesMut::with_capacity(512),
            max_frame,
        },
        Writer { half: write },
    )
}

/// Frames from the client.
pub struct Reader {
    half: ReadHalf<Io>,
    buf: BytesMut,
    max_frame: usize,
}

impl Reader {
    /// The next frame the client sent. Cancel-safe: what was read stays in the buffer.
    pub async fn next(&mut self) -> Result<Incoming, WsError> {
        loop {
            if let Some(incoming) = self.parse()? {
                return Ok(incoming);
            }
            if self.half.read_buf(&mut self.buf).await? == 0 {
                return Err(WsError::Eof);
            }
        }
    }

    /// One whole frame off the buffer, if it has arrived.
    fn parse(&mut self) -> Result<Option<Incoming>, WsError> {
        let mut cursor = Cursor::new(&self.buf[..]);
        let Some((header, size)) = FrameHeader::parse(&mut cursor)
            .map_err(|_| WsError::Protocol("a frame header that does not parse"))?
        else {
            return Ok(None);
        };
        if size > self.max_frame as u64 {
            return Err(WsError::TooLarge {
                size,
                limit: self.max_frame,
            });
        }
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(WsError::Protocol("reserved bits set"));
        }
        let Some(mask) = header.mask else {
            return Err(WsError::Protocol("an unmasked frame from a client"));
        };
        let start = cursor.position() as usize;
        let end = start + size as usize;
        if self.buf.len() < end {
            self.buf.reserve(end - self.buf.len());
            return Ok(None);
        }
        let mut payload = self.buf.split_to(end);
        payload.advance(start);
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i % 4];
        }
        Ok(Some(match header.opcode {
            OpCode::Control(Control::Close) => Incoming::Close,
            OpCode::Control(Control::Ping) => Incoming::Ping(payload.freeze()),
            OpCode::Data(Data::Text) if header.is_final => Incoming::Text(payload.freeze()),
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                return Err(WsError::Protocol("a reserved opcode"))
            }
            _ => Incoming::Ignored,
        }))
    }
}

/// Frames to the client, each written with one vectored write where the socket takes it.
pub struct Writer {
    half: WriteHalf<Io>,
}

impl Writer {
    /// One binary message made of `parts`, in order.
    pub async fn binary(&mut self, parts: &[Bytes]) -> std::io::Result<()> {
        self.frame(
            OpCode::Data(Data::Binary),
            parts.iter().map(|part| &part[..]),
        )
        .await
    }

    /// One text message (`text` is UTF-8).
    pub async fn text(&mut self, text: &[u8]) -> std::io::Result<()> {
        self.frame(OpCode::Data(Data::Text), [text]).await
    }

    /// A ping, as a keepalive.
    pub async fn ping(&mut self) -> std::io::Result<()> {
        self.frame(OpCode::Control(Control::Ping), []).await
    }

    /// The answer to a ping.
    pub async fn pong(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.frame(OpCode::Control(Control::Pong), [payload]).await
    }

    /// A close frame with a status code and a reason (at most 123 bytes).
    pub async fn close(&mut self, code: u16, reason: &str) -> std::io::Result<()> {
        let reason = &reason.as_bytes()[..reason.len().min(123)];
        let code = code.to_be_bytes();
        self.frame(OpCode::Control(Control::Close), [&code[..], reason])
            .await?;
        self.half.flush().await
    }

    /// One frame of `parts`, written header and all with as few `writev`s as the socket takes.
    async fn frame<'a>(
        &mut self,
        opcode: OpCode,
        parts: impl IntoIterator<Item = &'a [u8]>,
    ) -> std::io::Result<()> {
        // The longest header is 14 bytes; it goes first, so its slot is kept until the size of
        // the parts is known.
        let mut header = [0u8; 14];
        let mut slices = vec![IoSlice::new(&[])];
        for part in parts {
            if !part.is_empty() {
                slices.push(IoSlice::new(part));
            }
        }
        let size: usize = slices.iter().map(|slice| slice.len()).sum();
        let mut unused = &mut header[..];
        FrameHeader {
            opcode,
            ..FrameHeader::default()
        }
        .format(size as u64, &mut unused)
        .map_err(std::io::Error::other)?;
        let header_len = 14 - unused.len();
        slices[0] = IoSlice::new(&header[..header_len]);
        super::bare::write_all_vectored(&mut self.half, &mut slices).await
    }
}
