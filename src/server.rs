//! The server: wires source → pipeline (or remuxer) → hub → http together, and owns shutdown.
//!
//! [`Server::new`] is the one constructor: the binary, the integration tests and the
//! benchmarks all build the server through it, so they run the same parts wired the same
//! way. [`Server::run`] serves on a bound listener until `shutdown` completes, and then, in
//! this order and within [`SHUTDOWN_GRACE`] whatever clients do:
//! 1. the source slot closes: the current source (a presenter's upload too) ends, and the
//!    demo or `--input` stops;
//! 2. the hub closes: every viewer, WebSocket or `/live.webm`, gets the end of its stream;
//! 3. the listener stops accepting, and connections get until the grace period ends to finish
//!    (a client that sent half a request does not hold the process);
//! 4. the pipeline threads stop and the HLS mirror removes its directory.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::hls::{HlsConfig, HlsError, HlsMirror};
use crate::http::conn::ConnLimits;
use crate::http::publish::Publishing;
use crate::http::{self, App, HttpConfig};
use crate::hub::Hub;
use crate::media::Resolution;
use crate::pipeline::{Mode, Pipeline, PipelineConfig, PipelineError};
use crate::source::{self, Input, Slot, Target};

/// How long shutdown waits for connections to finish before the server returns anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("starting the HLS mirror: {0}")]
    Hls(#[from] HlsError),
    #[error("starting the pipeline: {0}")]
    Pipeline(#[from] PipelineError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::http::tls::TlsError),
}

/// Everything the server needs to know, from the command line or a test.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the broadcast comes from when no presenter is live.
    pub input: Input,
    /// Broadcast sources' own WebM instead of decoding and annotating.
    pub passthrough: bool,
    /// The token a presenter must give.
    pub token: String,
    /// Encoder and overload settings (the mode follows from `passthrough`).
    pub pipeline: PipelineConfig,
    /// The HLS mirror, if on.
    pub hls: Option<HlsConfig>,
    pub http: HttpConfig,
    /// Serve https and wss with this certificate and key (`--tls-cert`, `--tls-key`).
    pub tls: Option<crate::http::tls::TlsFiles>,
    /// Edge mode: pull this origin's stream instead of running `input` (`--relay`); the
    /// server is then passthrough, and its HLS a proxy of the origin's.
    pub relay: Option<crate::relay::RelayConfig>,
    /// What the hub keeps for viewers that fall behind (chunks and bytes).
    pub viewer_buffer: crate::hub::Limits,
    /// How often viewers that keep up are written to.
    pub viewer_batch: crate::hub::Batching,
    /// The largest picture a source may send when it is decoded.
    pub max_resolution: Resolution,
    /// Connection cap and timeouts.
    pub connections: ConnLimits,
    /// Pause a looped input (the demo, `--input FILE`) while nobody watches.
    pub pause_unwatched: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            input: Input::demo(),
            passthrough: false,
            token: String::new(),
            pipeline: PipelineConfig::default(),
            hls: Some(HlsConfig::default()),
            http: HttpConfig::default(),
            tls: None,
            relay: None,
            viewer_buffer: crate::hub::Limits::default(),
            viewer_batch: crate::hub::Batching::Auto,
            max_resolution: Resolution::DEFAULT,
            connections: ConnLimits::default(),
            pause_unwatched: true,
        }
    }
}

/// A built server, ready to run. See the module docs.
pub struct Server {
    app: App,
    input: Option<Input>,
    pipelines: Vec<Pipeline>,
    limits: ConnLimits,
    pause_unwatched: bool,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

impl Server {
    /// Builds every part (hub, HLS mirror, pipeline or remuxer, slot, routes' state) without
    /// listening yet.
    pub fn new(mut config: ServerConfig) -> Result<Self, ServerError> {
        // First: a wrong certificate path must fail before any thread starts.
        let tls = config
            .tls
            .as_ref()
            .map(crate::http::tls::server_config)
            .transpose()?;
        config.http.tls = tls.is_some();
        let relay = config
            .relay
            .clone()
            .map(|relay| Arc::new(crate::relay::Relay::new(relay)));
        if relay.is_some() {
            // The origin boxed the faces and makes the HLS segments: an edge only forwards.
            config.passthrough = true;
            config.hls = None;
        }
        let hub = Hub::with_batching(config.viewer_buffer, config.viewer_batch);
        let metrics = crate::metrics::Metrics::new();
        config.pipeline.stages = metrics.stage_times();
        let hls = match &config.hls {
            Some(hls) => {
                let mirror = HlsMirror::start(hls.clone())?;
                tracing::info!(dir = %mirror.dir().display(), "HLS mirror writing segments");
                Some(Arc::new(mirror))
            }
            None => None,
        };
        let mut pipelines = Vec::new();
        let slot = if config.passthrough {
            // Viewers get the source's own WebM; a decode-only pipeline feeds the HLS mirror.
            let mirror = match &hls {
                Some(hls) => Some(Pipeline::start(
                    hub.clone(),
                    PipelineConfig {
                        mode: Mode::MirrorOnly,
                        max_resolution: config.max_resolution,
                        ..config.pipeline.clone()
                    },
                    Some(hls.clone()),
                )?),
                None => None,
            };
            pipelines.extend(mirror.clone());
            Slot::new(Target::remux(hub.clone()), mirror, config.max_resolution)
        } else {
            let pipeline = Pipeline::start(
                hub.clone(),
                PipelineConfig {
                    mode: Mode::Annotate,
                    max_resolution: config.max_resolution,
                    ..config.pipeline.clone()
                },
                hls.clone(),
            )?;
            pipelines.push(pipeline.clone());
            Slot::new(Target::Pipeline(pipeline), None, config.max_resolution)
        };
        let app = App {
            hub,
            slot,
            publishing: Arc::new(Publishing::new(config.token.clone())),
            hls,
            config: Arc::new(config.http.clone()),
            latency: Arc::default(),
            metrics,
            relay: relay.clone(),
        };
        Ok(Server {
            app,
            // An edge's source is the origin.
            input: relay.is_none().then_some(config.input),
            pipelines,
            limits: config.connections,
            pause_unwatched: config.pause_unwatched,
            tls,
        })
    }

    /// Starts with no input: the stream waits for a presenter.
    pub fn without_input(mut self) -> Self {
        self.input = None;
        self
    }

    /// The state every route shares (hub, slot, HLS mirror, ...).
    pub fn app(&self) -> &App {
        &self.app
    }

    /// Serves on `listener` until `shutdown` completes, then shuts everything down (see the
    /// module docs). Tests bind `127.0.0.1:0` and read the port from the listener.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()> + Send) {
        let Server {
            app,
            input,
            pipelines,
            limits,
            pause_unwatched,
            tls,
        } = self;
        let input_task = input.map(|input| {
            let slot = app.slot.clone();
            let audience = pause_unwatched.then(|| app.hub.audience().clone());
            tokio::spawn(async move {
                // Errors are logged and shown in /api/status; the server keeps serving.
                let _ = source::run(input, slot, audience).await;
            })
        });
        let relay_task = app
            .relay
            .clone()
            .map(|relay| tokio::spawn(relay.run(app.slot.clone())));
        let (closing, closed) = tokio::sync::watch::channel(false);
        let hub = app.hub.clone();
        let on_stall: http::conn::StallHook = Arc::new(move || hub.count_slow_drop());
        let stop = async move {
            let mut closed = closed;
            let _ = closed.wait_for(|closed| *closed).await;
        };
        let serving = http::conn::serve(
            listener,
            http::routes(app.clone()),
            limits,
            on_stall,
            tls,
            stop,
        );
        tokio::pin!(serving);
        tokio::select! {
            _ = &mut serving => {}
            _ = shutdown => {}
        }
        tracing::info!("shutting down");
        app.slot.close();
        app.hub.close();
        closing.send_replace(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut serving)
            .await
            .is_err()
        {
            tracing::info!("connections still open after the grace period; closing them");
        }
        for task in input_task.into_iter().chain(relay_task) {
            task.abort();
        }
        let stopping = tokio::task::spawn_blocking(move || {
            for pipeline in &pipelines {
                pipeline.stop();
            }
            if let Some(mirror) = &app.hls {
                mirror.stop();
            }
        });
        if tokio::time::timeout(Duration::from_secs(1), stopping)
            .await
            .is_err()
        {
            tracing::warn!("the pipeline did not stop within 1 s");
        }
        tracing::info!("stopped");
    }
}
