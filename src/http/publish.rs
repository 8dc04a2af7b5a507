//! Presenters: `GET /ws/publish?token=…` (the browser's MediaRecorder chunks over a WebSocket)
//! and `PUT`/`POST /publish?token=…` (a chunked WebM body from ffmpeg or gst-launch).
//!
//! Rules, checked before any upgrade or body is read:
//! - the token must match (`401` otherwise);
//! - one presenter at a time: while one is live, another gets `409` unless it asks to take
//!   over with `takeover=1`, which ends the current presenter's connection with a reason.
//!
//! Either way the upload is one continuous WebM byte stream, cut anywhere (MediaRecorder's
//! first chunk can be a single byte), fed through the same [`Feeder`] as every source.

use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Buf;
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::sync::watch;
use warp::http::StatusCode;
use warp::ws::{Message, WebSocket};

use super::App;
use crate::ingest::{wait_until, Feeder, IngestError};

/// The publish token and the presenter slot.
#[derive(Debug)]
pub struct Publishing {
    token: String,
    /// The live presenter's lease number and the switch that tells it to stop.
    live: Mutex<Option<(u64, watch::Sender<bool>)>>,
    next_lease: std::sync::atomic::AtomicU64,
}

/// A presenter's claim on the slot; releases it when dropped.
pub struct Lease<'a> {
    publishing: &'a Publishing,
    number: u64,
    /// Becomes true when another presenter takes over.
    pub kicked: watch::Receiver<bool>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut live = self.publishing.live.lock().expect("presenter lock");
        if live.as_ref().is_some_and(|(n, _)| *n == self.number) {
            *live = None;
        }
    }
}

const BUSY: &str = "a presenter is already live; add takeover=1 to the URL to replace them\n";

/// Why a presenter was turned away before publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadToken,
    Busy,
}

impl Refusal {
    /// The HTTP answer for this refusal.
    pub fn reply(self) -> warp::reply::WithStatus<&'static str> {
        match self {
            Refusal::BadToken => warp::reply::with_status(
                "missing or wrong publish token (see the presenter URL printed at start)\n",
                StatusCode::UNAUTHORIZED,
            ),
            Refusal::Busy => warp::reply::with_status(BUSY, StatusCode::CONFLICT),
        }
    }
}

impl Publishing {
    /// Publishing guarded by `token`.
    pub fn new(token: String) -> Self {
        Publishing {
            token,
            live: Mutex::new(None),
            next_lease: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// Checks the token in constant time (no early exit that would leak a matching prefix).
    pub fn token_ok(&self, given: Option<&str>) -> bool {
        let Some(given) = given else {
            return false;
        };
        let (a, b) = (given.as_bytes(), self.token.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Checks whether a presenter could start now (for refusing before an upgrade).
    pub fn precheck(&self, token: Option<&str>, takeover: bool) -> Result<(), Refusal> {
        if !self.token_ok(token) {
            return Err(Refusal::BadToken);
        }
        if !takeover && self.live.lock().expect("presenter lock").is_some() {
            return Err(Refusal::Busy);
        }
        Ok(())
    }

    /// Claims the slot (kicking the current presenter out if `takeover`).
    pub fn claim(&self, takeover: bool) -> Result<Lease<'_>, Refusal> {
        let mut live = self.live.lock().expect("presenter lock");
        if let Some((_, kick)) = live.as_ref() {
            if !takeover {
                return Err(Refusal::Busy);
            }
            kick.send_replace(true);
        }
        let number = self
            .next_lease
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (kick, kicked) = watch::channel(false);
        *live = Some((number, kick));
        Ok(Lease {
            publishing: self,
            number,
            kicked,
        })
    }
}

/// Ends a presenter's source even if its handler is dropped mid-upload. hyper drops a
/// request's handler when the connection fails (e.g. `IncompleteMessage` when a client goes
/// away mid-body), and without this the source would stay "live" and the demo never resume.
struct Presenting {
    sink: crate::ingest::Sink,
    id: u64,
    reason: Option<String>,
}

impl Presenting {
    async fn begin(sink: &crate::ingest::Sink, name: &str) -> Self {
        let id = sink.begin(name, true).await;
        Presenting {
            sink: sink.clone(),
            id,
            reason: None,
        }
    }

    /// Ends the source now, with `reason`.
    async fn end(mut self, reason: &str) {
        self.reason = None;
        self.sink.end(self.id, reason, true).await;
    }
}

impl Drop for Presenting {
    fn drop(&mut self) {
        if let Some(reason) = self.reason.take() {
            let (sink, id) = (self.sink.clone(), self.id);
            // Drop cannot await: finish on the runtime (we are always inside it here).
            tokio::spawn(async move { sink.end(id, &reason, true).await });
        }
    }
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

/// WebSocket close codes: 1008 policy violation (too fast, taken over), 1003 unsupported data.
fn close_code(error: &IngestError) -> u16 {
    match error {
        IngestError::Webm { .. } | IngestError::Codec { .. } | IngestError::NoVideo(_) => 1003,
        _ => 1008,
    }
}

/// A WebSocket close reason must fit in 123 bytes.
fn close_reason(text: &str) -> String {
    let mut end = text.len().min(123);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// One presenter over a WebSocket. Binary messages are WebM bytes; every second the server
/// sends a text message with the pipeline's figures for the presenter page to show.
pub async fn websocket(socket: WebSocket, app: App, takeover: bool, remote: Option<SocketAddr>) {
    let (mut tx, mut rx) = socket.split();
    let mut lease = match app.publishing.claim(takeover) {
        Ok(lease) => lease,
        Err(_) => {
            let _ = tx
                .send(Message::close_with(1008u16, "a presenter is already live"))
                .await;
            return;
        }
    };
    let name = "presenter:ws";
    tracing::info!(?remote, takeover, "presenter connected over WebSocket");
    let mut presenting = Presenting::begin(&app.sink, name).await;
    presenting.reason = Some("presenter connection lost".into());
    let mut feeder = Feeder::new(name, app.sink.clone(), presenting.id, None, true);
    let mut received: u64 = 0;
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    let outcome: Result<&str, IngestError> = loop {
        tokio::select! {
            message = rx.next() => match message {
                Some(Ok(message)) if message.is_binary() => {
                    received += message.as_bytes().len() as u64;
                    if let Err(error) = feeder.feed(message.as_bytes()).await {
                        break Err(error);
                    }
                }
                Some(Ok(message)) if message.is_close() => break Ok("presenter stopped"),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break Ok("presenter connection lost"),
            },
            _ = wait_until(&mut lease.kicked, true) => {
                break Ok("another presenter took over");
            }
            _ = ticker.tick() => {
                let stats = serde_json::json!({
                    "type": "stats",
                    "received_bytes": received,
                    "pipeline": app.sink.pipeline().map(|p| p.stats()),
                });
                if tx.send(Message::text(stats.to_string())).await.is_err() {
                    break Ok("presenter connection lost");
                }
            }
        }
    };
    let reason = match &outcome {
        Ok(reason) => reason.to_string(),
        Err(error) => error.to_string(),
    };
    let code = outcome.as_ref().map_or_else(close_code, |_| 1000);
    let _ = tx
        .send(Message::close_with(code, close_reason(&reason)))
        .await;
    presenting.end(&reason).await;
    match outcome {
        Ok(_) => tracing::info!(?remote, received, reason, "presenter left"),
        Err(_) => tracing::warn!(?remote, received, reason, "presenter refused"),
    }
}

/// One presenter as a chunked HTTP body (`PUT`/`POST /publish`). Answers when the body ends:
/// 200 with a summary, 400 with the reason the stream was refused, 409 when taken over.
pub async fn http_body<S, B>(
    body: S,
    app: App,
    takeover: bool,
    remote: Option<SocketAddr>,
) -> warp::reply::WithStatus<String>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let mut body = body;
    let Ok(mut lease) = app.publishing.claim(takeover) else {
        return warp::reply::with_status(BUSY.to_string(), StatusCode::CONFLICT);
    };
    let name = "presenter:http";
    tracing::info!(?remote, takeover, "presenter connected over HTTP");
    let mut presenting = Presenting::begin(&app.sink, name).await;
    presenting.reason = Some("upload connection lost".into());
    let mut feeder = Feeder::new(name, app.sink.clone(), presenting.id, None, true);
    let mut received: u64 = 0;
    let outcome: Result<&str, IngestError> = loop {
        tokio::select! {
            chunk = body.next() => match chunk {
                Some(Ok(mut chunk)) => {
                    let mut failed = None;
                    while chunk.has_remaining() {
                        let piece = chunk.chunk();
                        let len = piece.len();
                        received += len as u64;
                        if let Err(error) = feeder.feed(piece).await {
                            failed = Some(error);
                            break;
                        }
                        chunk.advance(len);
                    }
                    if let Some(error) = failed {
                        break Err(error);
                    }
                }
                Some(Err(_)) => break Ok("upload interrupted"),
                None => break Ok("upload finished"),
            },
            _ = wait_until(&mut lease.kicked, true) => break Ok("another presenter took over"),
        }
    };
    let (status, reason) = match &outcome {
        Ok(reason) if *reason == "another presenter took over" => {
            (StatusCode::CONFLICT, reason.to_string())
        }
        Ok(reason) => (StatusCode::OK, reason.to_string()),
        Err(error) => (StatusCode::BAD_REQUEST, error.to_string()),
    };
    presenting.end(&reason).await;
    tracing::info!(?remote, received, reason, "presenter left");
    warp::reply::with_status(format!("{reason}; received {received} bytes\n"), status)
}
