//! Edge mode (`lenscast serve --relay http://origin:8080`): this server pulls another
//! lenscast's live stream and serves its own viewers exactly as the origin does (`/ws/view`,
//! `/live.webm`, the pages, the join cache, the lag policy), so one origin feeds many edges
//! and each edge feeds thousands of viewers. Edges chain: an edge's stream is a stream like
//! the origin's.
//!
//! The pulled stream is a source like any other: it goes through the slot and the remuxer
//! (an edge is always passthrough: the origin already boxed the faces), so the edge keeps its
//! own continuous timeline. When the origin goes away the source ends, the edge's viewers stay
//! connected (the hub never closes them for a source's end), and the relay reconnects with
//! backoff; the origin's stream, when it returns, continues on the edge's same timeline.
//!
//! What it pulls: `/live.webm`, or, when given `--relay-token`, the origin's `/relay.webm`
//! with that token (an origin started with `--relay-token` keeps its relay endpoint for the
//! edges that know it).
//!
//! HLS on an edge is a proxy of the origin's (see [`Relay::fetch`]), not a mirror of its own:
//! a mirror means a decoder and an H.264 encoder per edge (a core each) to make the same
//! segments the origin already made, and different segment boundaries on every edge, so a
//! cache in front could not share them between edges. Proxied, every edge serves the origin's
//! segments, and a CDN or nginx in front caches them once.
//!
//! The HTTP client is hyper's own (the stack warp serves on), one connection per request:
//! the stream is one long response, and HLS proxying is a handful of small requests a second.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use warp::http::{Request, Response, Uri};

use crate::clock::MediaTime;
use crate::source::Slot;
use crate::source::{Feeder, IngestError, SourceKind};

/// The first wait before reconnecting; doubles on each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Connecting and receiving the response head, per attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A stream that sends nothing this long is taken as lost (the origin sends keepalives when
/// it has no media, so silence means a dead connection).
const READ_TIMEOUT: Duration = Duration::from_secs(15);
/// The most an HLS proxy response may hold (a segment is about a second of video).
const MAX_PROXIED_BODY: usize = 32 * 1024 * 1024;
/// How long an HLS request through the edge may take in all, head and body: the origin holds
/// a blocking playlist reload for up to three target durations (3 s with 1 s segments, more
/// with longer ones) before it answers at all.
const PROXY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an edge asks the origin how far its stream has got, to know its lag behind it.
const LAG_POLL: Duration = Duration::from_secs(1);
/// The most an origin's `/api/status` may hold.
const MAX_STATUS_BODY: usize = 1024 * 1024;

/// Why relaying failed (each attempt; the relay itself never gives up).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("--relay {0}: give an http:// URL of the origin, e.g. http://origin:8080")]
    BadUrl(String),
    #[error("connecting to the origin {origin}: {error}")]
    Connect {
        origin: String,
        #[source]
        error: std::io::Error,
    },
    #[error("the origin {0} did not answer in time")]
    Timeout(String),
    #[error("HTTP to the origin: {0}")]
    Http(#[from] hyper::Error),
    #[error("the origin answered {status} to {path}")]
    Status {
        status: warp::http::StatusCode,
        path: String,
    },
    #[error("the origin's response is over {MAX_PROXIED_BODY} bytes")]
    TooLarge,
    #[error("the origin's /api/status has no media_end_ms (not a lenscast, or no media yet)")]
    NoMediaEnd,
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

/// Where the origin is and how to ask it.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `host:port` of the origin.
    pub authority: String,
    /// The origin's path prefix (empty, or e.g. `/lenscast` behind a proxy), no trailing `/`.
    pub prefix: String,
    /// The origin's `--relay-token`, if it set one.
    pub token: Option<String>,
}

impl RelayConfig {
    /// Parses `--relay URL`: `http://host[:port][/prefix]`.
    pub fn parse(url: &str, token: Option<String>) -> Result<Self, RelayError> {
        let bad = || RelayError::BadUrl(url.to_string());
        let uri: Uri = url.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("http") || uri.query().is_some() {
            return Err(bad());
        }
        let authority = uri.authority().ok_or_else(bad)?;
        let port = authority.port_u16().unwrap_or(80);
        Ok(RelayConfig {
            authority: format!("{}:{port}", authority.host()),
            prefix: uri.path().trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
        })
    }

    /// The stream's path on the origin.
    fn stream_path(&self) -> String {
        match &self.token {
            Some(token) => format!(
                "{}/relay.webm?token={}",
                self.prefix,
                percent_encoding::utf8_percent_encode(token, percent_encoding::NON_ALPHANUMERIC)
            ),
            None => format!("{}/live.webm", self.prefix),
        }
    }

    /// A name for logs and `/api/status` (never the token).
    pub fn name(&self) -> String {
        format!("relay:{}{}", self.authority, self.prefix)
    }
}

/// Figures for `/api/status` and `/metrics`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RelayStatus {
    /// The origin, as `relay:host:port`.
    pub origin: String,
    pub connected: bool,
    /// Connections made after the first.
    pub reconnects: u64,
    pub received_bytes: u64,
    /// How long ago the origin last sent anything, s (while connected).
    pub last_data_age_s: Option<f64>,
    /// How far the media received is behind the newest the origin has published, s: the
    /// origin's `media_end_ms` (asked every second) less the newest block time received.
    /// Known while connected to a lenscast origin that has media.
    pub lag_s: Option<f64>,
    /// The latest failure, if any.
    pub last_error: Option<String>,
}

/// The relay's shared state: the origin, and how the pulling goes. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    connected: AtomicBool,
    connections: AtomicU64,
    received: AtomicU64,
    /// A std lock, held only to copy.
    progress: Mutex<Progress>,
}

/// How the pulling goes, for [`RelayStatus`].
#[derive(Debug, Default)]
struct Progress {
    /// When the last bytes came.
    last_data: Option<Instant>,
    last_error: Option<String>,
    /// The newest block time received on this connection (the origin's timeline).
    received: Option<MediaTime>,
    /// See [`RelayStatus::lag_s`].
    lag: Option<Duration>,
}

impl Relay {
    pub fn new(config: RelayConfig) -> Self {
        Relay {
            config,
            connected: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            received: AtomicU64::new(0),
            progress: Mutex::new(Progress::default()),
        }
    }

    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        // A panic while holding it leaves only figures behind.
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> RelayStatus {
        let connected = self.connected.load(Ordering::Relaxed);
        let progress = self.progress();
        RelayStatus {
            origin: self.config.name(),
            connected,
            reconnects: self.connections.load(Ordering::Relaxed).saturating_sub(1),
            received_bytes: self.received.load(Ordering::Relaxed),
            last_data_age_s: progress
                .last_data
                .filter(|_| connected)
                .map(|at| at.elapsed().as_secs_f64()),
            lag_s: progress
                .lag
                .filter(|_| connected)
                .map(|lag| lag.as_secs_f64()),
            last_error: progress.last_error.clone(),
        }
    }

    /// Pulls the origin's stream into `slot` until the slot closes (shutdown), and keeps
    /// track of how far behind the origin it is.
    pub async fn run(self: Arc<Self>, slot: Slot) {
        tokio::select! {
            () = self.pull(slot) => {}
            () = self.watch_lag() => {}
        }
    }

    /// Every [`LAG_POLL`] while connected, asks the origin for the newest media time it has
    /// published and compares it with the newest received. The stream's own timestamps can
    /// not tell this alone: the origin's timeline pauses while it has no source, so media
    /// time falling behind the wall clock is not lag.
    async fn watch_lag(&self) {
        let path = format!("{}/api/status", self.config.prefix);
        let mut failing = false;
        loop {
            tokio::time::sleep(LAG_POLL).await;
            if !self.connected.load(Ordering::Relaxed) {
                self.progress().lag = None;
                continue;
            }
            let lag = self.origin_media_end(&path).await.map(|origin_end| {
                let received = self.progress().received.unwrap_or(MediaTime::ZERO);
                (origin_end - received).max(MediaTime::ZERO).to_duration()
            });
            match &lag {
                Err(error) if !failing => {
                    tracing::debug!(%error, "relay cannot tell its lag behind the origin")
                }
                _ => {}
            }
            failing = lag.is_err();
            self.progress().lag = lag.ok();
        }
    }

    /// The origin's `media_end_ms`.
    async fn origin_media_end(&self, path: &str) -> Result<MediaTime, RelayError> {
        let response = self.get(path).await?;
        let body = http_body_util::Limited::new(response.into_body(), MAX_STATUS_BODY)
            .collect()
            .await
            .map_err(|_| RelayError::TooLarge)?
            .to_bytes();
        let status: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| RelayError::NoMediaEnd)?;
        let ms = status["media_end_ms"]
            .as_f64()
            .filter(|ms| ms.is_finite() && *ms >= 0.0)
            .ok_or(RelayError::NoMediaEnd)?;
        Ok(MediaTime::from_nanos((ms * 1e6) as i64))
    }

    /// Pulls the origin's stream into `slot` until the slot closes (shutdown): connects,
    /// feeds, and on any failure ends the source (viewers stay) and tries again with backoff.
    /// The slot is claimed only once the origin answers, so an outage is one "origin lost"
    /// for the viewers and the log, not one per attempt.
    async fn pull(&self, slot: Slot) {
        let name = self.config.name();
        let path = self.config.stream_path();
        let mut backoff = MIN_BACKOFF;
        let mut outage: Option<Instant> = None;
        loop {
            let response = tokio::select! {
                response = self.get(&path) => response,
                () = slot.closed() => return,
            };
            let response = match response {
                Ok(response) => response,
                Err(error) => {
                    let reason = error.to_string();
                    if outage.is_none() {
                        tracing::warn!(origin = %name, %reason, "relay cannot reach the origin; retrying with backoff");
                        outage = Some(Instant::now());
                    } else {
                        tracing::debug!(origin = %name, %reason, "relay retry failed");
                    }
                    self.progress().last_error = Some(reason);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = slot.closed() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let guard = match slot.claim(&name, SourceKind::Input, false).await {
                Ok(guard) => guard,
                // A presenter on the edge itself: let it finish, then reconnect.
                Err(crate::source::ClaimError::Busy) => {
                    drop(response);
                    if slot.wait_for_no_presenter().await.is_err() {
                        return;
                    }
                    continue;
                }
                Err(crate::source::ClaimError::Closed) => return,
            };
            let count = self.connections.fetch_add(1, Ordering::Relaxed);
            match outage.take() {
                Some(since) => tracing::info!(
                    origin = %name,
                    after_s = since.elapsed().as_secs_f64(),
                    "relay reconnected"
                ),
                None => tracing::info!(origin = %name, reconnect = count > 0, "relay connected"),
            }
            self.progress().received = None;
            self.connected.store(true, Ordering::Relaxed);
            backoff = MIN_BACKOFF;
            let mut feeder = Feeder::new(guard, None, false);
            let result = self.feed(response.into_body(), &mut feeder).await;
            self.connected.store(false, Ordering::Relaxed);
            if let Err(RelayError::Ingest(IngestError::Ended { .. })) = result {
                // The slot was taken (a presenter) or closed (shutdown): not the origin's fault.
                if slot.wait_for_no_presenter().await.is_err() {
                    return;
                }
                continue;
            }
            let reason = match &result {
                Ok(()) => "the origin ended the stream".to_string(),
                Err(error) => error.to_string(),
            };
            tracing::warn!(origin = %name, %reason, "relay lost the origin; reconnecting");
            outage = Some(Instant::now());
            self.progress().last_error = Some(reason.clone());
            feeder.end(&format!("origin lost: {reason}")).await;
        }
    }

    /// One connection's stream: its bytes into the feeder until it ends or fails.
    async fn feed(&self, mut body: Incoming, feeder: &mut Feeder) -> Result<(), RelayError> {
        loop {
            let frame = match tokio::time::timeout(READ_TIMEOUT, body.frame()).await {
                Err(_) => return Err(RelayError::Timeout(self.config.authority.clone())),
                Ok(None) => return Ok(feeder.finish()?),
                Ok(Some(frame)) => frame?,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            self.received
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            self.progress().last_data = Some(Instant::now());
            feeder.feed(&data).await?;
            if let Some(latest) = feeder.latest_media() {
                let mut progress = self.progress();
                progress.received = progress.received.max(Some(latest));
            }
        }
    }

    /// A GET to the origin; the response once its head has arrived (2xx only).
    async fn get(&self, path: &str) -> Result<Response<Incoming>, RelayError> {
        let response = self.request(path, CONNECT_TIMEOUT).await?;
        if !response.status().is_success() {
            return Err(RelayError::Status {
                status: response.status(),
                // The path without the query: it may hold the token.
                path: path.split('?').next().unwrap_or_default().to_string(),
            });
        }
        Ok(response)
    }

    /// A GET to the origin; the response once its head has arrived within `timeout`.
    async fn request(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<Response<Incoming>, RelayError> {
        let authority = &self.config.authority;
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(authority)
                .await
                .map_err(|error| RelayError::Connect {
                    origin: authority.clone(),
                    error,
                })?;
            let _ = tcp.set_nodelay(true);
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            // The connection runs beside the request; it ends when the response body is done.
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "relay connection ended");
                }
            });
            let request = Request::get(path)
                .header("host", authority.as_str())
                .header(
                    "user-agent",
                    concat!("lenscast-relay/", env!("CARGO_PKG_VERSION")),
                )
                .body(Empty::<Bytes>::new())
                .map_err(|_| RelayError::BadUrl(path.to_string()))?;
            Ok::<_, RelayError>(sender.send_request(request).await?)
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| RelayError::Timeout(authority.clone()))?
    }

    /// Fetches `/hls/<name>?<query>` from the origin for the edge's own HLS clients: the
    /// origin's status, type, caching and body, so a cache in front behaves as at the origin.
    /// Waits as long as the origin holds a blocking playlist reload.
    pub async fn fetch(&self, name: &str, query: &str) -> warp::reply::Response {
        let path = if query.is_empty() {
            format!("{}/hls/{name}", self.config.prefix)
        } else {
            format!("{}/hls/{name}?{query}", self.config.prefix)
        };
        let fetched = async {
            let response = self.request(&path, PROXY_TIMEOUT).await?;
            let (head, body) = response.into_parts();
            let body = http_body_util::Limited::new(body, MAX_PROXIED_BODY)
                .collect()
                .await
                .map_err(|_| RelayError::TooLarge)?
                .to_bytes();
            Ok::<_, RelayError>((head, body))
        };
        match tokio::time::timeout(PROXY_TIMEOUT, fetched).await {
            Ok(Ok((head, body))) => {
                let mut response = warp::reply::Response::new(body.into());
                *response.status_mut() = head.status;
                for name in [
                    warp::http::header::CONTENT_TYPE,
                    warp::http::header::CACHE_CONTROL,
                ] {
                    if let Some(value) = head.headers.get(&name) {
                        response.headers_mut().insert(name, value.clone());
                    }
                }
                response
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, name, "HLS proxy failed");
                bad_gateway(&format!("the origin could not be reached: {error}\n"))
            }
            Err(_) => bad_gateway("the origin did not answer in time\n"),
        }
    }
}

fn bad_gateway(text: &str) -> warp::reply::Response {
    let mut response = warp::reply::Response::new(text.to_string().into());
    *response.status_mut() = warp::http::StatusCode::BAD_GATEWAY;
    response.headers_mut().insert(
        warp::http::header::CACHE_CONTROL,
        "no-store".parse().expect("valid"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls() {
        let config = RelayConfig::parse("http://origin:8080", None).unwrap();
        assert_eq!(config.authority, "origin:8080");
        assert_eq!(config.stream_path(), "/live.webm");
        assert_eq!(config.name(), "relay:origin:8080");
        let config = RelayConfig::parse("http://10.0.0.2/lenscast/", Some("a b&c".into())).unwrap();
        assert_eq!(config.authority, "10.0.0.2:80");
        assert_eq!(config.stream_path(), "/lenscast/relay.webm?token=a%20b%26c");
        assert!(!config.name().contains("a b"));
        for bad in [
            "origin:8080",
            "https://origin",
            "ftp://x",
            "http://",
            "http://o/?x=1",
            "",
        ] {
            assert!(RelayConfig::parse(bad, None).is_err(), "{bad}");
        }
        // An empty token is no token.
        let config = RelayConfig::parse("http://o:1", Some(String::new())).unwrap();
        assert_eq!(config.stream_path(), "/live.webm");
    }
}
