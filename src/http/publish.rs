//! Presenters: `GET /ws/publish?token=…` (the browser's MediaRecorder chunks over a WebSocket)
//! and `PUT`/`POST /publish?token=…` (a chunked WebM body from ffmpeg or gst-launch).
//!
//! Rules, checked before any upgrade or body is read:
//! - the token must match (`401` otherwise);
//! - one presenter at a time: while one is live, another gets `409` unless it asks to take
//!   over with `takeover=1`, which ends the current presenter's connection with a reason.
//!
//! Both transports run one handler body, [`present`]: the upload is one continuous WebM byte
//! stream, cut anywhere (MediaRecorder's first chunk can be a single byte), fed through a
//! [`Feeder`]. The body returns a typed [`Outcome`], which each transport maps to its own
//! answer: a WebSocket close code, or an HTTP status.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use bytes::{Buf, Bytes};
use futures_util::{SinkExt, Stream, StreamExt};
use warp::http::StatusCode;
use warp::ws::{Message, WebSocket};

use super::App;
use crate::latency::{self, PageMessage, WallTime};
use crate::source::{ClaimError, EndReason, Feeder, IngestError, SourceKind};

/// Wrong tokens answered per client address: a burst of this many...
const WRONG_TOKEN_BURST: u32 = 5;
/// ...then this many a minute; more get 429 until the budget refills. Guessing a 128-bit
/// token at 10 a minute is hopeless, and a presenter who mistyped waits seconds at most.
const WRONG_TOKENS_PER_MINUTE: u32 = 10;
/// Addresses remembered before forgetting those whose budget is full again (bounds memory).
const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// The publish token, and the budget of wrong guesses per client address.
pub struct Publishing {
    token: String,
    /// governor's keyed GCRA limiter: one small state per address, no timers.
    wrong_tokens: DefaultKeyedRateLimiter<IpAddr>,
    /// Wrong tokens refused with 429 since the last log line, so the log gets one line per
    /// allowed guess with a count, never one per attempt.
    throttled: AtomicU64,
}

impl std::fmt::Debug for Publishing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token: Debug output can end up in logs.
        f.debug_struct("Publishing").finish_non_exhaustive()
    }
}

/// Why a presenter was turned away before publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadToken,
    /// Too many wrong tokens from this address; try again after this long.
    TooManyGuesses(Duration),
    Claim(ClaimError),
}

impl Refusal {
    /// The HTTP answer for this refusal.
    pub fn reply(self) -> warp::reply::Response {
        use warp::Reply;
        let (text, status) = match self {
            Refusal::BadToken => (
                "missing or wrong publish token (see the presenter URL printed at start)".into(),
                StatusCode::UNAUTHORIZED,
            ),
            Refusal::TooManyGuesses(wait) => (
                format!(
                    "too many wrong publish tokens from this address; retry in {} s",
                    wait.as_secs() + 1
                ),
                StatusCode::TOO_MANY_REQUESTS,
            ),
            Refusal::Claim(error @ ClaimError::Busy) => (error.to_string(), StatusCode::CONFLICT),
            Refusal::Claim(error @ ClaimError::Closed) => {
                (error.to_string(), StatusCode::SERVICE_UNAVAILABLE)
            }
        };
        let mut response = warp::reply::with_status(format!("{text}\n"), status).into_response();
        if let Refusal::TooManyGuesses(wait) = self {
            let seconds = (wait.as_secs() + 1).to_string();
            if let Ok(value) = seconds.parse() {
                response.headers_mut().insert("retry-after", value);
            }
        }
        response
    }

    /// True for refusals worth a log line of their own (wrong tokens are logged, aggregated,
    /// by [`Publishing`]).
    pub fn loggable(self) -> bool {
        matches!(self, Refusal::Claim(_))
    }
}

impl Publishing {
    /// Publishing guarded by `token`.
    pub fn new(token: String) -> Self {
        let quota = Quota::per_minute(NonZeroU32::new(WRONG_TOKENS_PER_MINUTE).expect("non-zero"))
            .allow_burst(NonZeroU32::new(WRONG_TOKEN_BURST).expect("non-zero"));
        Publishing {
            token,
            wrong_tokens: DefaultKeyedRateLimiter::keyed(quota),
            throttled: AtomicU64::new(0),
        }
    }

    /// A wrong token from `from`: 401 while its budget lasts (logged with the count of
    /// attempts throttled since the last line), 429 after.
    pub(crate) fn wrong_token(&self, from: IpAddr) -> Refusal {
        if self.wrong_tokens.len() > MAX_TRACKED_ADDRESSES {
            self.wrong_tokens.retain_recent();
        }
        match self.wrong_tokens.check_key(&from) {
            Ok(()) => {
                let throttled = self.throttled.swap(0, Ordering::Relaxed);
                tracing::warn!(%from, throttled_since_last_line = throttled, "wrong publish token");
                Refusal::BadToken
            }
            Err(not_until) => {
                self.throttled.fetch_add(1, Ordering::Relaxed);
                Refusal::TooManyGuesses(not_until.wait_time_from(DefaultClock::default().now()))
            }
        }
    }

    /// Checks the token in constant time (no early exit that would leak a matching prefix).
    pub fn token_ok(&self, given: Option<&str>) -> bool {
        given.is_some_and(|given| tokens_match(self.token.as_bytes(), given.as_bytes()))
    }
}

/// Compares a secret with what a client gave in constant time for equal lengths (no early
/// exit that would leak a matching prefix). Publish and relay tokens both use it.
pub fn tokens_match(expected: &[u8], given: &[u8]) -> bool {
    expected.len() == given.len()
        && expected
            .iter()
            .zip(given)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Checks whether a presenter could start now (for refusing before an upgrade or body).
pub fn precheck(
    app: &App,
    token: Option<&str>,
    takeover: bool,
    remote: Option<SocketAddr>,
) -> Result<(), Refusal> {
    if !app.publishing.token_ok(token) {
        let from = remote.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |r| r.ip());
        return Err(app.publishing.wrong_token(from));
    }
    app.slot
        .check(SourceKind::Presenter, takeover)
        .map_err(Refusal::Claim)
}

/// Query parameters of both publish endpoints.
#[derive(Debug, serde::Deserialize)]
pub struct PublishQuery {
    pub token: Option<String>,
    #[serde(default, deserialize_with = "flag")]
    pub takeover: bool,
}

fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let value: String = serde::Deserialize::deserialize(d)?;
    Ok(matches!(value.as_str(), "1" | "true" | "yes" | ""))
}

/// What one read from a presenter's connection gave.
pub enum Incoming {
    /// WebM bytes.
    Media(Bytes),
    /// A text message: the page's clock messages (see [`crate::latency`]).
    Text(Bytes),
    /// Something to skip (a WebSocket ping or pong).
    Other,
    /// The presenter ended the upload cleanly (a close frame, or the end of the body).
    Finished,
    /// The connection failed.
    Lost,
    /// A WebSocket message over the size limit.
    TooLarge,
}

/// A presenter's connection, whatever carries it.
pub trait Transport {
    /// What the presenter is told when it ends its upload cleanly.
    const FINISHED: &'static str;
    /// What the log says when the connection fails.
    const LOST: &'static str;
    /// The next thing the presenter sent. Must be cancel-safe.
    fn next(&mut self) -> impl std::future::Future<Output = Incoming> + Send;
    /// Sends the presenter a status line (only the WebSocket can); false if the connection
    /// is gone.
    fn status(&mut self, json: String) -> impl std::future::Future<Output = bool> + Send;
}

/// How a presenter's upload ended.
#[derive(Debug)]
pub enum Outcome {
    /// The presenter stopped cleanly (with the transport's word for it).
    Finished(&'static str),
    /// The connection dropped (with the transport's word for it).
    Lost(&'static str),
    /// It lost the slot: taken over, or the server is shutting down.
    Ended(EndReason),
    /// No media arrived for this long.
    Idle(Duration),
    /// What it sent was refused.
    Refused(IngestError),
    /// One WebSocket message was larger than any element we accept.
    TooLarge,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Finished(what) | Outcome::Lost(what) => write!(f, "{what}"),
            Outcome::Ended(reason) => write!(f, "{reason}"),
            Outcome::Idle(after) => write!(f, "no media for {} s", after.as_secs_f64()),
            Outcome::Refused(error) => write!(f, "{error}"),
            Outcome::TooLarge => write!(
                f,
                "a WebSocket message was over the {} MiB limit",
                super::MAX_PUBLISH_MESSAGE >> 20
            ),
        }
    }
}

impl Outcome {
    /// The WebSocket close code: 1000 normal (also taken over: the broadcast went on, the
    /// presenter page shows it as a disconnect, not a refusal), 1001 going away (shutdown),
    /// 1003 unsupported data, 1008 policy (idle, too fast, timestamps out of range).
    pub fn close_code(&self) -> u16 {
        match self {
            Outcome::Finished(_) | Outcome::Lost(_) => 1000,
            Outcome::Ended(EndReason::ShuttingDown) => 1001,
            Outcome::Ended(_) => 1000,
            Outcome::Refused(
                IngestError::Webm { .. } | IngestError::Codec { .. } | IngestError::NoVideo(_),
            ) => 1003,
            Outcome::Idle(_) | Outcome::Refused(_) => 1008,
            Outcome::TooLarge => 1009,
        }
    }

    /// The HTTP status for the PUT answer.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Outcome::Finished(_) | Outcome::Lost(_) => StatusCode::OK,
            Outcome::Ended(EndReason::ShuttingDown) => StatusCode::SERVICE_UNAVAILABLE,
            Outcome::Ended(_) => StatusCode::CONFLICT,
            Outcome::Idle(_) => StatusCode::REQUEST_TIMEOUT,
            Outcome::Refused(_) => StatusCode::BAD_REQUEST,
            Outcome::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

/// The one presenter handler body: claims the slot, feeds what arrives, and ends when the
/// presenter stops, fails, idles, is refused or loses the slot. Returns how it ended and the
/// bytes received.
pub async fn present<T: Transport>(
    app: &App,
    transport: &mut T,
    name: &str,
    takeover: bool,
    remote: Option<SocketAddr>,
) -> Result<(Outcome, u64), ClaimError> {
    let guard = app
        .slot
        .claim(name, SourceKind::Presenter, takeover)
        .await?;
    tracing::info!(?remote, takeover, source = name, "presenter connected");
    let mut feeder = Feeder::new(guard, None, true);
    let idle = app.config.presenter_idle;
    let mut received: u64 = 0;
    let mut last_media = tokio::time::Instant::now();
    let mut blocks = 0;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let outcome = loop {
        tokio::select! {
            incoming = transport.next() => match incoming {
                Incoming::Media(bytes) => {
                    received += bytes.len() as u64;
                    if let Err(error) = feeder.feed(&bytes).await {
                        break match error {
                            IngestError::Ended { reason, .. } => Outcome::Ended(reason),
                            error => Outcome::Refused(error),
                        };
                    }
                    // Only whole media blocks count as activity: a trickle of bytes that
                    // never completes a frame is as idle as silence.
                    if feeder.blocks() != blocks {
                        blocks = feeder.blocks();
                        last_media = tokio::time::Instant::now();
                    }
                }
                Incoming::Text(text) => match PageMessage::parse(&text) {
                    Ok(PageMessage::Ping { t }) => {
                        if !transport.status(latency::pong(t)).await {
                            break Outcome::Lost(T::LOST);
                        }
                    }
                    Ok(PageMessage::Capture { origin_ms }) => {
                        feeder.capture_origin(WallTime::from_millis(origin_ms)).await;
                    }
                    // Only viewers report latency; an old or odd page's text changes nothing.
                    Ok(PageMessage::Latency { .. }) => {}
                    Err(error) => tracing::debug!(?remote, %error, "presenter text ignored"),
                },
                Incoming::Other => {}
                // A clean end must also end on an element boundary: a cut-off stream is
                // refused with the reason rather than reported as finished.
                Incoming::Finished => match feeder.finish() {
                    Ok(()) => break Outcome::Finished(T::FINISHED),
                    Err(error) => break Outcome::Refused(error),
                },
                Incoming::TooLarge => break Outcome::TooLarge,
                Incoming::Lost => break Outcome::Lost(T::LOST),
            },
            reason = feeder.superseded() => break Outcome::Ended(reason),
            _ = tokio::time::sleep_until(last_media + idle) => break Outcome::Idle(idle),
            _ = ticker.tick() => {
                let stats = serde_json::json!({
                    "type": "stats",
                    "received_bytes": received,
                    "pipeline": app.slot.pipeline().map(|p| p.stats()),
                    "viewers": app.latency.summary(),
                });
                if !transport.status(stats.to_string()).await {
                    break Outcome::Lost(T::LOST);
                }
            }
        }
    };
    let reason = outcome.to_string();
    if !matches!(outcome, Outcome::Ended(_)) {
        feeder.end(&reason).await;
    }
    match &outcome {
        Outcome::Refused(_) | Outcome::Idle(_) | Outcome::TooLarge => {
            tracing::warn!(?remote, received, %reason, "presenter ended")
        }
        _ => tracing::info!(?remote, received, %reason, "presenter left"),
    }
    Ok((outcome, received))
}

/// A WebSocket close reason must fit in 123 bytes.
fn close_reason(text: &str) -> String {
    let mut end = text.len().min(123);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// A presenter's WebSocket: binary messages are WebM bytes; status goes back as text.
struct WsTransport {
    socket: WebSocket,
}

impl Transport for WsTransport {
    const FINISHED: &'static str = "presenter stopped";
    const LOST: &'static str = "presenter connection lost";

    async fn next(&mut self) -> Incoming {
        match self.socket.next().await {
            Some(Ok(message)) if message.is_binary() => Incoming::Media(message.into_bytes()),
            Some(Ok(message)) if message.is_close() => Incoming::Finished,
            Some(Ok(message)) if message.is_text() => Incoming::Text(message.into_bytes()),
            Some(Ok(_)) => Incoming::Other,
            Some(Err(error)) if super::too_large(&error) => Incoming::TooLarge,
            Some(Err(_)) | None => Incoming::Lost,
        }
    }

    async fn status(&mut self, json: String) -> bool {
        self.socket.send(Message::text(json)).await.is_ok()
    }
}

/// One presenter over a WebSocket. Every second the server sends a text message with the
/// pipeline's figures for the presenter page to show.
pub async fn websocket(socket: WebSocket, app: App, takeover: bool, remote: Option<SocketAddr>) {
    let mut transport = WsTransport { socket };
    let (code, reason) = match present(&app, &mut transport, "presenter:ws", takeover, remote).await
    {
        Ok((outcome, _)) => (outcome.close_code(), outcome.to_string()),
        Err(error) => (1008, error.to_string()),
    };
    let socket = &mut transport.socket;
    let _ = socket
        .send(Message::close_with(code, close_reason(&reason)))
        .await;
    // Finish the closing handshake: read (and drop) what the presenter still had in flight
    // until its close reply. Closing the TCP socket with unread data in it makes the kernel
    // send a reset, and a browser that gets the reset first never sees our close frame or
    // its reason.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(message)) = socket.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
}

/// A presenter's HTTP request body.
struct BodyTransport<S> {
    body: S,
    /// The rest of the current body chunk, handed out piece by piece.
    pending: Option<Box<dyn Buf + Send>>,
}

impl<S, B> Transport for BodyTransport<S>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin + Send,
    B: Buf + Send + 'static,
{
    const FINISHED: &'static str = "upload finished";
    const LOST: &'static str = "upload interrupted";

    async fn next(&mut self) -> Incoming {
        loop {
            if let Some(buf) = self.pending.as_mut() {
                if buf.has_remaining() {
                    let len = buf.chunk().len();
                    return Incoming::Media(buf.copy_to_bytes(len));
                }
                self.pending = None;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.pending = Some(Box::new(chunk)),
                Some(Err(_)) => return Incoming::Lost,
                None => return Incoming::Finished,
            }
        }
    }

    async fn status(&mut self, _json: String) -> bool {
        // A request body has no way back until the response.
        true
    }
}

/// One presenter as a chunked HTTP body (`PUT`/`POST /publish`). Answers when the body ends:
/// 200 with a summary, 400 with the reason the stream was refused, 408 after going idle,
/// 409 when taken over.
pub async fn http_body<S, B>(
    body: S,
    app: App,
    takeover: bool,
    remote: Option<SocketAddr>,
) -> warp::reply::Response
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin + Send,
    B: Buf + Send + 'static,
{
    let mut transport = BodyTransport {
        body,
        pending: None,
    };
    match present(&app, &mut transport, "presenter:http", takeover, remote).await {
        Ok((outcome, received)) => warp::Reply::into_response(warp::reply::with_status(
            format!("{outcome}; received {received} bytes\n"),
            outcome.http_status(),
        )),
        Err(error) => Refusal::Claim(error).reply(),
    }
}
