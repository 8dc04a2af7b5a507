//! HTTP: the pages, the viewer stream over WebSocket and chunked HTTP, status and health.
//!
//! Routes are small filter functions; handlers live beside them. State comes in through
//! `with_app`, as in warp's own examples.

mod assets;
mod bare;
pub mod conn;
pub mod hls;
mod origin;
pub mod publish;
pub mod tls;
mod view;
mod ws;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::http::Response;
use warp::Filter;

use crate::hub::Hub;
use crate::metrics::Transport;
use crate::source::Slot;
use publish::{PublishQuery, Publishing};

/// Errors of the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: String,
        #[source]
        error: std::io::Error,
    },
}

/// Largest WebSocket message a presenter may send: the largest element the reader accepts
/// (MediaRecorder's chunks are far smaller). Larger ones close with 1009.
const MAX_PUBLISH_MESSAGE: usize = crate::webm::reader::DEFAULT_MAX_ELEMENT;
/// Largest message a viewer may send: viewers only listen (a close frame, a ping), so a few
/// KiB is plenty, and tungstenite's 64 MiB default would let each viewer pin that much.
const MAX_VIEWER_MESSAGE: usize = 4 * 1024;

/// True if a WebSocket read failed because a message or frame was over our size limit.
pub(crate) fn too_large(error: &warp::Error) -> bool {
    use tokio_tungstenite::tungstenite;
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<tungstenite::Error>())
        .is_some_and(|error| matches!(error, tungstenite::Error::Capacity(_)))
}

/// Settings the handlers need.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Origins allowed to open WebSockets besides the server's own (exact `scheme://host:port`).
    pub allowed_origins: Vec<String>,
    /// Names this server may be reached as, besides IP addresses and `localhost`.
    pub allowed_hosts: Vec<String>,
    /// Origins whose pages may read `/hls/` and `/live.webm` (CORS); `*` for any.
    pub cors_origins: Vec<String>,
    /// A presenter that sends no media for this long is ended, and the input resumes.
    pub presenter_idle: Duration,
    /// Whether this listener speaks TLS (set by the server from `--tls-cert`): our pages'
    /// origin is then `https://`.
    pub tls: bool,
    /// `--relay-token`: edges that give it may pull `/relay.webm`; `None`: no relay endpoint.
    pub relay_token: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            cors_origins: Vec::new(),
            presenter_idle: Duration::from_secs(5),
            tls: false,
            relay_token: None,
        }
    }
}

/// What every handler gets: one cheap clone.
#[derive(Clone)]
pub struct App {
    pub hub: Hub,
    /// The source slot presenters claim (delivering to the pipeline, or the remuxer in
    /// passthrough mode).
    pub slot: Slot,
    pub publishing: Arc<Publishing>,
    /// The HLS mirror, unless `--no-hls`.
    pub hls: Option<Arc<crate::hls::HlsMirror>>,
    pub config: Arc<HttpConfig>,
    /// What viewers report of their glass-to-glass latency.
    pub latency: Arc<crate::latency::Reports>,
    /// `/metrics`.
    pub metrics: crate::metrics::Metrics,
    /// Edge mode: the origin this server relays (and proxies HLS from).
    pub relay: Option<Arc<crate::relay::Relay>>,
}

impl App {
    /// The text for `/metrics`, from the same figures as `/api/status`.
    pub fn metrics_text(&self) -> String {
        let pipeline = self.slot.pipeline().map(|p| p.stats());
        let hls = self.hls.as_ref().map(|h| h.status());
        let relay = self.relay.as_ref().map(|r| r.status());
        self.metrics.render(&crate::metrics::Snapshot {
            hub: &self.hub.status(),
            source: &self.slot.status(),
            pipeline: pipeline.as_ref(),
            hls: hls.as_ref(),
            relay: relay.as_ref(),
        })
    }

    /// The JSON for `/api/status`: the hub's figures, the pipeline's and the HLS mirror's.
    pub fn status(&self) -> serde_json::Value {
        let hub = self.hub.status();
        let mut source =
            serde_json::to_value(self.slot.status()).expect("source status serializes");
        source["stream"] = serde_json::to_value(&hub.stream).expect("stream info serializes");
        let mut status = serde_json::to_value(hub).expect("status serializes");
        if let Some(fields) = status.as_object_mut() {
            fields.remove("stream");
        }
        status["source"] = source;
        let mode = if self.slot.annotates() {
            "annotate"
        } else {
            "passthrough"
        };
        status["mode"] = mode.into();
        let pipeline = self.slot.pipeline().map(|p| p.stats());
        status["pipeline"] = serde_json::to_value(&pipeline).expect("stats serialize");
        let hls = self.hls.as_ref().map(|h| h.status());
        status["hls"] = serde_json::to_value(hls).expect("stats serialize");
        let relay = self.relay.as_ref().map(|r| r.status());
        status["relay"] = serde_json::to_value(relay).expect("stats serialize");
        // The latency budget: the server's own part (capture → arrival is the presenter's
        // recorder and upload; arrival → broadcast the pipeline) and what viewers see end to end.
        status["latency"] = serde_json::json!({
            "capture_to_arrival_ms_p50": pipeline.as_ref().and_then(|p| p.capture_to_arrival_ms_p50),
            "capture_to_arrival_ms_p99": pipeline.as_ref().and_then(|p| p.capture_to_arrival_ms_p99),
            "arrival_to_broadcast_ms_p50": pipeline.as_ref().map(|p| p.latency_ms_p50),
            "arrival_to_broadcast_ms_p99": pipeline.as_ref().map(|p| p.latency_ms_p99),
            "viewers": self.latency.summary(),
        });
        // The server's clock, for pages without a WebSocket (HLS) to sync to (see latency.rs).
        status["server_ms"] = crate::latency::WallTime::now().as_millis().into();
        status
    }
}

/// `/relay.webm?token=`.
#[derive(Debug, serde::Deserialize)]
struct RelayQuery {
    token: Option<String>,
}

/// GET, and HEAD for the same route: the same status and headers, no body (hyper leaves the
/// body out of a HEAD response). Players, CDNs and monitors probe with HEAD.
fn get_or_head() -> impl Filter<Extract = (), Error = warp::Rejection> + Copy {
    warp::get().or(warp::head()).unify()
}

fn with_app(app: App) -> impl Filter<Extract = (App,), Error = Infallible> + Clone {
    warp::any().map(move || app.clone())
}

/// All routes.
pub fn routes(app: App) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let index = warp::path::end()
        .and(get_or_head())
        .map(|| assets::response("index.html"));
    let page = warp::path::param::<String>()
        .and(warp::path::end())
        .and(get_or_head())
        .map(|name: String| assets::response(&name));
    let host = origin::check_host(app.config.clone());
    let health = warp::path!("healthz").and(get_or_head()).map(|| "ok\n");
    let status = warp::path!("api" / "status")
        .and(get_or_head())
        .and(with_app(app.clone()))
        .map(|app: App| {
            warp::reply::with_header(
                warp::reply::json(&app.status()),
                "cache-control",
                "no-store",
            )
        });
    let metrics = warp::path!("metrics")
        .and(get_or_head())
        .and(with_app(app.clone()))
        .map(|app: App| {
            let response = Response::builder()
                .header(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)
                .header(CACHE_CONTROL, "no-store")
                .body(app.metrics_text())
                .expect("static headers are valid");
            warp::Reply::into_response(response)
        });
    let ws_view = warp::path!("ws" / "view")
        .and(origin::check(app.config.clone()))
        .and(get_or_head())
        .and(ws::upgrade())
        .and(view::options())
        .and(with_app(app.clone()))
        .and(conn::remote())
        .map(
            |upgrade: Result<ws::Upgrade, &'static str>,
             options: view::Options,
             app: App,
             remote: Option<SocketAddr>| {
                match upgrade {
                    Ok(upgrade) => {
                        upgrade.reply(move |io| view::websocket(io, app, options, remote))
                    }
                    Err(reason) => ws::refuse(reason),
                }
            },
        );
    let hls_files = warp::path!("hls" / String)
        .and(get_or_head())
        // The raw query (blocking reload's `_HLS_msn`/`_HLS_part`, parsed strictly in
        // `hls::Reload`); `query::raw` refuses a request without one, hence the fallback.
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(with_app(app.clone()))
        .and(warp::header::optional::<String>("origin"))
        .then(
            |name: String, query: String, app: App, from: Option<String>| async move {
                let kind = crate::hls::file_kind(&name);
                if app.hls.is_some() || app.relay.is_some() {
                    app.hub.audience().hls_request();
                    app.metrics.hls_request(match kind {
                        Some(crate::hls::FileKind::Playlist) => "playlist",
                        Some(crate::hls::FileKind::Segment) => "segment",
                        Some(crate::hls::FileKind::Part { .. }) => "part",
                        None => "other",
                    });
                }
                let response = match (app.hls.clone(), app.relay.clone()) {
                    (Some(mirror), _) => hls::respond(&mirror, &name, &query).await,
                    // An edge: the origin's files, for names that can be ours only (nothing
                    // else is passed on to the origin).
                    (None, Some(relay)) if kind.is_some() => relay.fetch(&name, &query).await,
                    (None, Some(_)) => hls::response(std::path::Path::new(""), &name),
                    (None, None) => warp::Reply::into_response(warp::reply::with_status(
                        "the HLS mirror is off (--no-hls)\n",
                        warp::http::StatusCode::NOT_FOUND,
                    )),
                };
                origin::with_cors(response, from.as_deref(), &app.config)
            },
        );
    let hls_page = warp::path!("hls.html")
        .and(get_or_head())
        .map(|| assets::response("hls.html"));
    let hls_js = warp::path!("vendor" / "hls.min.js")
        .and(get_or_head())
        .map(assets::hls_js);
    let present = warp::path!("present")
        .and(get_or_head())
        .map(|| assets::response("present.html"));
    let ws_publish = warp::path!("ws" / "publish")
        .and(warp::query::<PublishQuery>())
        .and(origin::check(app.config.clone()))
        // The upgrade is optional here so that a plain GET (all a page's `fetch` can send
        // after its WebSocket failed) still learns the real reason: 401 or 409.
        .and(warp::ws().map(Some).or(warp::any().map(|| None)).unify())
        .and(with_app(app.clone()))
        .and(conn::remote())
        .map(
            |query: PublishQuery,
             ws: Option<warp::ws::Ws>,
             app: App,
             remote: Option<SocketAddr>| {
                // Refuse before the upgrade, so a browser sees a real 401/409.
                if let Err(refusal) =
                    publish::precheck(&app, query.token.as_deref(), query.takeover, remote)
                {
                    if refusal.loggable() {
                        tracing::info!(?remote, ?refusal, "WebSocket publish refused");
                    }
                    return refusal.reply();
                }
                let Some(ws) = ws else {
                    return warp::Reply::into_response(warp::reply::with_status(
                        "this endpoint takes a WebSocket upgrade (or use PUT /publish)\n",
                        warp::http::StatusCode::BAD_REQUEST,
                    ));
                };
                let takeover = query.takeover;
                warp::Reply::into_response(
                    ws.max_message_size(MAX_PUBLISH_MESSAGE)
                        .max_frame_size(MAX_PUBLISH_MESSAGE)
                        .on_upgrade(move |socket| {
                            publish::websocket(socket, app, takeover, remote)
                        }),
                )
            },
        );
    let http_publish = warp::path!("publish")
        .and(warp::put().or(warp::post()).unify())
        .and(warp::query::<PublishQuery>())
        .and(with_app(app.clone()))
        .and(conn::remote())
        .and(warp::body::stream())
        .then(
            |query: PublishQuery, app: App, remote: Option<SocketAddr>, body| async move {
                if let Err(refusal) =
                    publish::precheck(&app, query.token.as_deref(), query.takeover, remote)
                {
                    if refusal.loggable() {
                        tracing::info!(?remote, ?refusal, "HTTP publish refused");
                    }
                    return refusal.reply();
                }
                warp::Reply::into_response(
                    publish::http_body(Box::pin(body), app, query.takeover, remote).await,
                )
            },
        );
    // The relay endpoint: the same stream for edges that give the origin's `--relay-token`.
    let relay_stream = warp::path!("relay.webm")
        .and(warp::get())
        .and(warp::query::<RelayQuery>())
        .and(with_app(app.clone()))
        .and(conn::remote())
        .map(|query: RelayQuery, app: App, remote: Option<SocketAddr>| {
            let allowed = match (&app.config.relay_token, &query.token) {
                (Some(expected), Some(given)) => {
                    publish::tokens_match(expected.as_bytes(), given.as_bytes())
                }
                _ => false,
            };
            match (&app.config.relay_token, allowed) {
                (None, _) => warp::Reply::into_response(warp::reply::with_status(
                    "no relay endpoint: start the origin with --relay-token\n",
                    warp::http::StatusCode::NOT_FOUND,
                )),
                (Some(_), false) => {
                    tracing::info!(?remote, "relay refused: wrong or missing token");
                    // Guesses count against the same per-address budget as publish tokens.
                    let from = remote
                        .map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |r| {
                            r.ip()
                        });
                    match app.publishing.wrong_token(from) {
                        throttled @ publish::Refusal::TooManyGuesses(_) => throttled.reply(),
                        _ => warp::Reply::into_response(warp::reply::with_status(
                            "a relay must give the origin's --relay-token\n",
                            warp::http::StatusCode::UNAUTHORIZED,
                        )),
                    }
                }
                (Some(_), true) => view::http_stream_as(app, remote, Transport::Relay),
            }
        });
    let live = warp::path!("live.webm")
        .and(get_or_head())
        .and(warp::method())
        .and(with_app(app))
        .and(conn::remote())
        .and(warp::header::optional::<String>("origin"))
        .map(
            |method: warp::http::Method,
             app: App,
             remote: Option<SocketAddr>,
             from: Option<String>| {
                let response = if method == warp::http::Method::HEAD {
                    // A probe, not a viewer: the stream's headers only.
                    view::http_head(&app)
                } else {
                    view::http_stream(app.clone(), remote)
                };
                origin::with_cors(response, from.as_deref(), &app.config)
            },
        );
    let all = status
        .or(metrics)
        .or(ws_view)
        .or(ws_publish)
        .or(http_publish)
        .or(present)
        .or(hls_files)
        .or(relay_stream)
        .or(hls_page)
        .or(hls_js)
        .or(live)
        .or(index)
        .or(page);
    // /healthz answers whatever the Host, for load balancers and probes that use an address
    // or a name of their own.
    // Boxed: hyper keeps room for the routes' future in every connection for as long as it
    // lives, and this chain's future is large; a long-lived `/live.webm` viewer then paid for
    // it. A box is freed once the response is made.
    health
        .or(host.and(all))
        .recover(origin::recover)
        .map(warp::Reply::into_response)
        .boxed()
}

/// Connections the kernel queues before we accept them. A join storm (hundreds of viewers a
/// second) must not find the queue full: Icecast's backlog of 5 stalls its joins for seconds.
/// Linux caps it at `net.core.somaxconn` (4096 by default since 5.4).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (an address or `name:port`) with a deep accept queue, with an error that
/// names it.
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener, HttpError> {
    let failed = |error| HttpError::Bind {
        addr: addr.to_string(),
        error,
    };
    let mut last_error = None;
    for resolved in tokio::net::lookup_host(addr).await.map_err(failed)? {
        let socket = if resolved.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        };
        let bound = socket.and_then(|socket| {
            // As std and tokio do: a restart can bind while old connections sit in TIME_WAIT.
            socket.set_reuseaddr(true)?;
            socket.bind(resolved)?;
            socket.listen(LISTEN_BACKLOG)
        });
        match bound {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(failed(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the name resolves to no address",
        )
    })))
}
