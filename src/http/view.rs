//! Viewers: the live stream over a WebSocket (for the MSE page) and as a chunked HTTP response
//! (`/live.webm`, for ffplay, VLC, ffprobe, GStreamer).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::ws::{Message, WebSocket};
use warp::Reply;

use super::App;
use crate::hub::{Chunk, ChunkKind};

/// Chunks queued for one `/live.webm` response before its writer waits.
const HTTP_QUEUE: usize = 64;
/// A viewer's connection gets a keepalive after this long without media (the broadcast is
/// paused, or there is no source yet), so the idle-connection timeout never ends a viewer
/// who is only waiting.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);
/// An empty EBML Void element: valid anywhere in a WebM stream, skipped by every reader.
const VOID: &[u8] = &[0xEC, 0x80];

static NEXT_VIEWER: AtomicU64 = AtomicU64::new(1);

/// The text message sent before each init segment, telling the page how to set up MSE.
fn init_message(chunk: &Chunk) -> Option<Message> {
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
    Some(Message::text(json.to_string()))
}

/// Sends a close frame, best effort and bounded: a socket that is blocked (the reason we may
/// be closing it) may not take it.
async fn close<S>(tx: &mut S, code: u16, reason: &'static str)
where
    S: futures_util::Sink<Message> + Unpin,
{
    let _ = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        tx.send(Message::close_with(code, reason)),
    )
    .await;
}

/// Serves one WebSocket viewer until it leaves, the hub closes, or its socket stays blocked.
pub async fn websocket(socket: WebSocket, app: App, remote: Option<SocketAddr>) {
    let id = NEXT_VIEWER.fetch_add(1, Ordering::Relaxed);
    let mut viewer = app.hub.subscribe();
    tracing::info!(viewer = id, ?remote, via = "ws", "viewer joined");
    let (mut tx, mut rx) = socket.split();
    let timeout = app.config.viewer_send_timeout;
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    let reason = loop {
        tokio::select! {
            _ = keepalive.tick() => {
                if tokio::time::timeout(timeout, tx.send(Message::ping(Vec::new()))).await.is_err() {
                    app.hub.count_slow_drop();
                    close(&mut tx, 1008, "viewer too slow").await;
                    break "socket blocked too long";
                }
            }
            chunk = viewer.next() => {
                keepalive.reset();
                let Ok(chunk) = chunk else {
                    close(&mut tx, 1001, "server shutting down").await;
                    break "server shutting down";
                };
                let text = init_message(&chunk);
                let send = async {
                    if let Some(text) = text {
                        tx.feed(text).await?;
                    }
                    tx.send(Message::binary(chunk.bytes.clone())).await
                };
                match tokio::time::timeout(timeout, send).await {
                    Ok(Ok(())) => app.hub.count_sent(&chunk),
                    Ok(Err(_)) => break "socket error",
                    Err(_) => {
                        app.hub.count_slow_drop();
                        close(&mut tx, 1008, "viewer too slow").await;
                        break "socket blocked too long";
                    }
                }
            }
            msg = rx.next() => match msg {
                Some(Ok(msg)) if msg.is_close() => break "closed by viewer",
                Some(Ok(_)) => {}
                Some(Err(error)) if super::too_large(&error) => {
                    close(&mut tx, 1009, "viewers may send at most 4 KiB").await;
                    break "sent a message over the size limit";
                }
                Some(Err(_)) | None => break "connection lost",
            }
        }
    };
    tracing::info!(viewer = id, ?remote, via = "ws", reason, "viewer left");
}

/// `/live.webm`: the same stream as a chunked HTTP body.
pub fn http_stream(app: App, remote: Option<SocketAddr>) -> warp::reply::Response {
    let id = NEXT_VIEWER.fetch_add(1, Ordering::Relaxed);
    let content_type = match app.hub.stream_info() {
        Some(info) if !info.has_video => "audio/webm",
        _ => "video/webm",
    };
    let mut viewer = app.hub.subscribe();
    let (queue, body) =
        tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(HTTP_QUEUE);
    let timeout = app.config.viewer_send_timeout;
    tracing::info!(viewer = id, ?remote, via = "http", "viewer joined");
    // The writer runs apart from the response body so that a client that stops reading is
    // noticed (the queue stays full past the timeout) and dropped, instead of pinning the hub.
    tokio::spawn(async move {
        let mut started = false;
        let reason = loop {
            let next = match tokio::time::timeout(KEEPALIVE, viewer.next()).await {
                Ok(next) => next,
                // Quiet: a Void keeps the connection alive (only once the stream has begun:
                // a WebM file must start with its EBML header).
                Err(_) if started => {
                    match queue
                        .send_timeout(Ok(bytes::Bytes::from_static(VOID)), timeout)
                        .await
                    {
                        Ok(()) => continue,
                        Err(_) => break "client gone or blocked",
                    }
                }
                Err(_) => continue,
            };
            let Ok(chunk) = next else {
                break "server shutting down";
            };
            started = true;
            match queue.send_timeout(Ok(chunk.bytes.clone()), timeout).await {
                Ok(()) => app.hub.count_sent(&chunk),
                Err(tokio::sync::mpsc::error::SendTimeoutError::Timeout(_)) => {
                    app.hub.count_slow_drop();
                    break "client blocked too long";
                }
                Err(tokio::sync::mpsc::error::SendTimeoutError::Closed(_)) => {
                    break "closed by viewer"
                }
            }
        };
        tracing::info!(viewer = id, ?remote, via = "http", reason, "viewer left");
    });
    let mut response = warp::reply::stream(ReceiverStream::new(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type.parse().expect("valid header"));
    headers.insert(CACHE_CONTROL, "no-store".parse().expect("valid header"));
    response
}
