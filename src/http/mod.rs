//! HTTP: the pages, the viewer stream over WebSocket and chunked HTTP, status and health.
//!
//! Routes are small filter functions; handlers live beside them. State comes in through
//! `with_app`, as in warp's own examples.

mod assets;
mod origin;
mod view;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use warp::Filter;

use crate::broadcast::Hub;

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

/// Settings the handlers need.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Origins allowed to open WebSockets besides the server's own (exact `scheme://host:port`).
    pub allowed_origins: Vec<String>,
    /// A viewer whose socket accepts nothing for this long is disconnected.
    pub viewer_send_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            allowed_origins: Vec::new(),
            viewer_send_timeout: Duration::from_secs(10),
        }
    }
}

/// What every handler gets: one cheap clone.
#[derive(Debug, Clone)]
pub struct App {
    pub hub: Hub,
    pub config: Arc<HttpConfig>,
}

fn with_app(app: App) -> impl Filter<Extract = (App,), Error = Infallible> + Clone {
    warp::any().map(move || app.clone())
}

/// All routes.
pub fn routes(app: App) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone {
    let index = warp::path::end()
        .and(warp::get())
        .map(|| assets::response("index.html"));
    let page = warp::path::param::<String>()
        .and(warp::path::end())
        .and(warp::get())
        .map(|name: String| assets::response(&name));
    let health = warp::path!("healthz").and(warp::get()).map(|| "ok\n");
    let status = warp::path!("api" / "status")
        .and(warp::get())
        .and(with_app(app.clone()))
        .map(|app: App| {
            warp::reply::with_header(
                warp::reply::json(&app.hub.status()),
                "cache-control",
                "no-store",
            )
        });
    let ws_view = warp::path!("ws" / "view")
        .and(origin::check(app.config.clone()))
        .and(warp::ws())
        .and(with_app(app.clone()))
        .and(warp::addr::remote())
        .map(|ws: warp::ws::Ws, app: App, remote: Option<SocketAddr>| {
            ws.on_upgrade(move |socket| view::websocket(socket, app, remote))
        });
    let live = warp::path!("live.webm")
        .and(warp::get())
        .and(with_app(app))
        .and(warp::addr::remote())
        .map(|app: App, remote: Option<SocketAddr>| view::http_stream(app, remote));
    health
        .or(status)
        .or(ws_view)
        .or(live)
        .or(index)
        .or(page)
        .recover(origin::recover)
}

/// Serves `routes` on an already bound listener until `shutdown` completes.
/// Tests bind `127.0.0.1:0` and read the port from the listener.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    warp::serve(routes(app))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}

/// Binds `addr`, with an error that names it.
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener, HttpError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| HttpError::Bind {
            addr: addr.to_string(),
            error,
        })
}
