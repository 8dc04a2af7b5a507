//! Viewers: the live stream over a WebSocket (for the MSE page) and as a chunked HTTP response
//! (`/live.webm`, for ffplay, VLC, ffprobe, GStreamer).

use crate::metrics::{Transport, ViewerGuard};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, Sleep};
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::Reply;

use super::{ws, App, MAX_VIEWER_MESSAGE};
use crate::hub::{Chunk, ChunkKind, Hub, Viewer};
use crate::latency::{self, PageMessage};

/// A viewer's connection gets a keepalive after this long without media (the broadcast is
/// paused, or there is no source yet), so the idle-connection timeout never ends a viewer
/// who is only waiting.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// An empty EBML Void element: valid anywhere in a WebM stream, skipped by every reader.
const VOID: &[u8] = &[0xEC, 0x80];

static NEXT_VIEWER: AtomicU64 = AtomicU64::new(1);

/// Text messages a viewer's page may send per second (clock pings, latency reports).
const PAGE_MESSAGES_PER_SECOND: std::num::NonZeroU32 =
    std::num::NonZeroU32::new(20).expect("not zero");

/// The text message sent before each init segment, telling the page how to set up MSE.
fn init_message(chunk: &Chunk) -> Option<String> {
    let ChunkKind::Init(init) = &chunk.kind else {
        return None;
    };
    let info = &init.info;
    let json = serde_json::json!({
        "type": "init",
        "mime": info.mime,
        "width": info.width,
        "height": info.height,
    });
    Some(json.to_string())
}

/// What a `/ws/view` client asked for in its query.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// `?stamps=1`: send the capture stamps (see [`crate::latency`]). Opt-in, so that a
    /// client written before stamps existed, which may take any text message for an "init",
    /// gets exactly the messages it always did.
    pub stamps: bool,
}

/// The `/ws/view` query; anything it does not know (or cannot parse) is ignored.
pub fn options() -> impl warp::Filter<Extract = (Options,), Error = std::convert::Infallible> + Clone
{
    use warp::Filter;
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .map(|query: String| Options {
            stamps: query.split('&').any(|pair| pair == "stamps=1"),
        })
}

/// Writes one wake-up's chunks: media as one binary message; an init segment as its own
/// message after its "init" text (the page treats the message after that text as the init).
async fn send_batch(
    writer: &mut ws::Writer,
    batch: &[Chunk],
    options: Options,
) -> std::io::Result<()> {
    let mut media: Vec<bytes::Bytes> = Vec::with_capacity(batch.len());
    // Capture stamps first: they map media times, so their place among the media is free,
    // and the media stays one message.
    let stamps = batch.iter().filter_map(|chunk| chunk.stamp.as_ref());
    for stamp in stamps.filter(|_| options.stamps) {
        writer.text(&stamp.message).await?;
    }
    for chunk in batch {
        if let Some(text) = init_message(chunk) {
            if !media.is_empty() {
                writer.binary(&media).await?;
                media.clear();
            }
            writer.text(text.as_bytes()).await?;
            writer.binary(std::slice::from_ref(&chunk.bytes)).await?;
        } else {
            media.push(chunk.bytes.clone());
        }
    }
    if !media.is_empty() {
        writer.binary(&media).await?;
    }
    Ok(())
}

/// Why a write failed, for the log; a stalled socket (the connection layer's write timeout)
/// is the viewer being too slow.
fn write_failure(error: &std::io::Error) -> &'static str {
    if error.kind() == std::io::ErrorKind::TimedOut {
        "socket blocked too long"
    } else {
        "socket error"
    }
}

/// Serves one WebSocket viewer until it leaves, the hub closes, or its socket stays blocked
/// (the connection layer then fails its writes after `--viewer-timeout`).
pub async fn websocket(io: ws::Io, app: App, options: Options, remote: Option<SocketAddr>) {
    let id = NEXT_VIEWER.fetch_add(1, Ordering::Relaxed);
    let mut viewer = app.hub.subscribe();
    let _counted = app.metrics.viewer(Transport::WebSocket);
    tracing::info!(viewer = id, ?remote, via = "ws", "viewer joined");
    let (mut reader, mut writer) = ws::split(io, MAX_VIEWER_MESSAGE);
    let mut batch = Vec::new();
    // Made on the first text message: most viewers (players other than our page) send none.
    let mut limiter: Option<governor::DefaultDirectRateLimiter> = None;
    // One timer per viewer, re-armed only when it fires: sending notes the time instead.
    let mut last_sent = Instant::now();
    let keepalive = tokio::time::sleep(KEEPALIVE);
    tokio::pin!(keepalive);
    let reason = loop {
        tokio::select! {
            () = &mut keepalive => {
                if last_sent.elapsed() >= KEEPALIVE {
                    if let Err(error) = writer.ping().await {
                        break write_failure(&error);
                    }
                    last_sent = Instant::now();
                }
                keepalive.as_mut().reset(last_sent + KEEPALIVE);
            }
            next = viewer.next_batch(&mut batch) => {
                if next.is_err() {
                    close(&mut writer, 1001, "server shutting down").await;
                    break "server shutting down";
                }
                if let Err(error) = send_batch(&mut writer, &batch, options).await {
                    break write_failure(&error);
                }
                for chunk in &batch {
                    app.hub.count_sent(chunk);
                }
                batch.clear();
                last_sent = Instant::now();
                if let Some(pause) = app.hub.pause_between_writes() {
                    // Let the next write carry what arrives meanwhile (see hub::Batching).
                    tokio::time::sleep(pause).await;
                }
            }
            incoming = reader.next() => match incoming {
                Ok(ws::Incoming::Close) => {
                    close(&mut writer, 1000, "").await;
                    break "closed by viewer";
                }
                Ok(ws::Incoming::Ping(payload)) => {
                    if let Err(error) = writer.pong(&payload).await {
                        break write_failure(&error);
                    }
                }
                Ok(ws::Incoming::Text(text)) => {
                    // A page pings a few times a second at most; a flood is not answered.
                    let limiter = limiter.get_or_insert_with(|| {
                        governor::RateLimiter::direct(governor::Quota::per_second(PAGE_MESSAGES_PER_SECOND))
                    });
                    if limiter.check().is_err() {
                        continue;
                    }
                    match PageMessage::parse(&text) {
                        Ok(PageMessage::Ping { t }) => {
                            if let Err(error) = writer.text(latency::pong(t).as_bytes()).await {
                                break write_failure(&error);
                            }
                        }
                        Ok(PageMessage::Latency { ms }) => app.latency.report(id, ms),
                        Ok(PageMessage::Capture { .. }) => {}
                        Err(error) => tracing::debug!(viewer = id, %error, "viewer text ignored"),
                    }
                }
                Ok(ws::Incoming::Ignored) => {}
                Err(ws::WsError::TooLarge { .. }) => {
                    close(&mut writer, 1009, "viewers may send at most 4 KiB").await;
                    break "sent a message over the size limit";
                }
                Err(ws::WsError::Protocol(_)) => {
                    close(&mut writer, 1002, "not a valid WebSocket frame").await;
                    break "broke the WebSocket protocol";
                }
                Err(ws::WsError::Eof | ws::WsError::Io(_)) => break "connection lost",
            }
        }
    };
    app.latency.forget(id);
    tracing::info!(viewer = id, ?remote, via = "ws", reason, "viewer left");
}

/// Sends a close frame, best effort and bounded: a socket that is blocked (the reason we may
/// be closing it) may not take it.
async fn close(writer: &mut ws::Writer, code: u16, reason: &str) {
    let _ = tokio::time::timeout(Duration::from_millis(200), writer.close(code, reason)).await;
}

/// The headers `/live.webm` answers with.
fn stream_headers(app: &App, response: &mut warp::reply::Response) {
    let content_type = match app.hub.stream_info() {
        Some(info) if !info.has_video => "audio/webm",
        _ => "video/webm",
    };
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type.parse().expect("valid header"));
    headers.insert(CACHE_CONTROL, "no-store".parse().expect("valid header"));
}

/// `HEAD /live.webm`: the stream's headers, without joining it.
pub fn http_head(app: &App) -> warp::reply::Response {
    let mut response = warp::reply::Response::default();
    stream_headers(app, &mut response);
    response
}

/// `/live.webm`: the same stream as a chunked HTTP body.
///
/// The body reads the hub directly: hyper polls it whenever the socket can take more, and
/// writes everything that was ready in one go. A client that stops reading stops being
/// polled; the connection layer closes it after `--viewer-timeout`, and the hub's ring bounds
/// what it pinned meanwhile.
pub fn http_stream(app: App, remote: Option<SocketAddr>) -> warp::reply::Response {
    http_stream_as(app, remote, Transport::Http)
}

/// The `/live.webm` stream, counted in `/metrics` as `transport` (an edge on `/relay.webm`
/// is a relay, not a viewer).
pub fn http_stream_as(
    app: App,
    remote: Option<SocketAddr>,
    transport: Transport,
) -> warp::reply::Response {
    let id = NEXT_VIEWER.fetch_add(1, Ordering::Relaxed);
    tracing::info!(viewer = id, ?remote, via = ?transport, "viewer joined");
    let body = HttpViewer {
        viewer: app.hub.subscribe(),
        _counted: app.metrics.viewer(transport),
        hub: app.hub.clone(),
        keepalive: Box::pin(tokio::time::sleep(KEEPALIVE)),
        last_sent: Instant::now(),
        started: false,
        id,
        remote,
        reason: "closed by viewer or blocked too long",
    };
    let stream = futures_util::stream::unfold(body, |mut body| async move {
        let bytes = body.next().await?;
        Some((Ok::<_, std::io::Error>(bytes), body))
    });
    let mut response = warp::reply::stream(stream).into_response();
    stream_headers(&app, &mut response);
    response
}

/// One `/live.webm` viewer's body: chunks from the hub, and keepalives while it is quiet.
struct HttpViewer {
    viewer: Viewer,
    /// Counts this viewer in `/metrics` while it lives.
    _counted: ViewerGuard,
    hub: Hub,
    /// One timer per viewer, re-armed only when it fires: sending notes the time instead.
    keepalive: Pin<Box<Sleep>>,
    last_sent: Instant,
    /// False until the first chunk: a WebM file must start with its EBML header, not a Void.
    started: bool,
    id: u64,
    remote: Option<SocketAddr>,
    /// Why the body ended, for the log line when it is dropped.
    reason: &'static str,
}

impl HttpViewer {
    fn sent(&mut self, chunk: Chunk) -> Bytes {
        self.started = true;
        self.hub.count_sent(&chunk);
        self.last_sent = Instant::now();
        chunk.bytes
    }

    async fn next(&mut self) -> Option<Bytes> {
        // hyper keeps taking chunks while they are ready and writes them all at once when we
        // would wait: pausing then makes the next write carry more (see hub::Batching).
        match self.viewer.try_next() {
            Some(Ok(chunk)) => return Some(self.sent(chunk)),
            Some(Err(_)) => {
                self.reason = "server shutting down";
                return None;
            }
            None => {
                if let Some(pause) = self.hub.pause_between_writes() {
                    tokio::time::sleep(pause).await;
                }
            }
        }
        loop {
            tokio::select! {
                next = self.viewer.next() => {
                    let Ok(chunk) = next else {
                        self.reason = "server shutting down";
                        return None;
                    };
                    return Some(self.sent(chunk));
                }
                () = &mut self.keepalive => {
                    let quiet = self.last_sent.elapsed() >= KEEPALIVE;
                    if quiet {
                        self.last_sent = Instant::now();
                    }
                    self.keepalive.as_mut().reset(self.last_sent + KEEPALIVE);
                    if quiet && self.started {
                        return Some(Bytes::from_static(VOID));
                    }
                }
            }
        }
    }
}

impl Drop for HttpViewer {
    fn drop(&mut self) {
        tracing::info!(viewer = self.id, remote = ?self.remote, via = "http", reason = self.reason, "viewer left");
    }
}
