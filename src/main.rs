//! The `lenscast` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lenscast::broadcast::Hub;
use lenscast::hls::{HlsConfig, HlsMirror};
use lenscast::http::publish::Publishing;
use lenscast::http::{self, App, HttpConfig};
use lenscast::ingest::{self, Input, Sink, Target};
use lenscast::pipeline::{Mode, Pipeline, PipelineConfig};

#[derive(Parser, Debug)]
#[command(
    name = "lenscast",
    version,
    about = "Live video broadcaster: one presenter, many viewers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the live stream: viewers at / (WebSocket /ws/view, HTTP /live.webm), presenters at
    /// /present (WebSocket /ws/publish, HTTP PUT /publish). Every frame is decoded, faces are
    /// boxed, and the video is re-encoded to VP8, unless --passthrough.
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to listen on. Use 127.0.0.1:0 for any free port (the URL is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,

    /// WebM source: a file (looped forever, paced by its own timestamps) or `-` for a live WebM
    /// byte stream on stdin (e.g. from `gst-launch-1.0 ... ! webmmux streamable=true ! fdsink`).
    /// Without it, the built-in demo video loops.
    #[arg(long, value_name = "PATH|-")]
    input: Option<String>,

    /// Broadcast the source's WebM as it is, without decoding or face detection (any codec,
    /// audio-only too).
    #[arg(long)]
    passthrough: bool,

    /// Token a presenter must give (`?token=`) to publish. If unset, one is generated and
    /// printed with the presenter URL.
    #[arg(long, env = "LENSCAST_PUBLISH_TOKEN", hide_env_values = true)]
    publish_token: Option<String>,

    /// Seconds between keyframes in the re-encoded stream (how long a new viewer may wait).
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    keyframe_interval: f64,

    /// Target bitrate of the re-encoded VP8 stream, in bits/s (suffixes k and M accepted).
    #[arg(long, default_value = "1M", value_parser = parse_bitrate)]
    bitrate: usize,

    /// Also accept WebSocket connections from pages on this origin (e.g. https://studio.example).
    /// Repeat for several; `*` allows any. The server's own origin is always allowed.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allow_origin: Vec<String>,

    /// Length of an HLS segment in seconds (the HLS mirror at /hls/live.m3u8).
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    hls_segment: f64,

    /// Turn the HLS mirror off (no H.264 encode, no /hls/ files).
    #[arg(long)]
    no_hls: bool,

    /// Disconnect a viewer whose connection accepts no data for this many seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    viewer_timeout: f64,

    /// Chunks kept for viewers that fall behind, before they skip to the next keyframe.
    #[arg(long, default_value_t = lenscast::broadcast::DEFAULT_CHANNEL_CAPACITY)]
    viewer_buffer: usize,
}

/// `800k`, `1.5M` or `1000000` to bits per second.
fn parse_bitrate(text: &str) -> Result<usize, String> {
    let (number, scale) = match text.strip_suffix(['k', 'K']) {
        Some(n) => (n, 1e3),
        None => match text.strip_suffix('M') {
            Some(n) => (n, 1e6),
            None => (text, 1.0),
        },
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a bitrate like 800k or 1.5M"))?;
    let bits = value * scale;
    if !(10e3..=50e6).contains(&bits) {
        return Err(format!("{text} is outside 10k..50M"));
    }
    Ok(bits as usize)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "lenscast=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args).await,
    }
}

/// Ctrl-C or SIGTERM (what `kill`, systemd and CI send), so the HLS directory is cleaned up.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// A random 128-bit token, hex encoded.
fn generate_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let input = match args.input.as_deref() {
        None => Input::Memory {
            name: "demo:face.webm".into(),
            bytes: bytes::Bytes::from_static(lenscast::DEMO_WEBM),
        },
        Some("-") => Input::Stdin,
        Some(path) => {
            let path = PathBuf::from(path);
            anyhow::ensure!(path.is_file(), "--input {}: no such file", path.display());
            Input::File(path)
        }
    };
    anyhow::ensure!(
        args.viewer_timeout > 0.0,
        "--viewer-timeout must be positive"
    );
    anyhow::ensure!(
        args.keyframe_interval >= 0.1,
        "--keyframe-interval must be at least 0.1 s"
    );
    anyhow::ensure!(
        (0.5..=10.0).contains(&args.hls_segment),
        "--hls-segment must be between 0.5 and 10 seconds"
    );
    let hub = Hub::new(args.viewer_buffer);
    let hls = if args.no_hls {
        None
    } else {
        let config = HlsConfig {
            segment: Duration::from_secs_f64(args.hls_segment),
            bitrate: args.bitrate,
            ..HlsConfig::default()
        };
        let mirror = HlsMirror::start(config).context("starting the HLS mirror")?;
        tracing::info!(dir = %mirror.dir().display(), "HLS mirror writing segments");
        Some(Arc::new(mirror))
    };
    let pipeline_config = PipelineConfig {
        bitrate: args.bitrate,
        keyframe_interval: Duration::from_secs_f64(args.keyframe_interval),
        ..PipelineConfig::default()
    };
    let sink = if args.passthrough {
        // Viewers get the source's own WebM; a decode-only pipeline feeds the HLS mirror.
        let mirror = match &hls {
            Some(hls) => Some(
                Pipeline::start(
                    hub.clone(),
                    PipelineConfig {
                        mode: Mode::MirrorOnly,
                        ..pipeline_config
                    },
                    Some(hls.clone()),
                )
                .context("starting the HLS mirror's decoder")?,
            ),
            None => None,
        };
        Sink::with_mirror(Target::Hub(hub.clone()), mirror)
    } else {
        Sink::new(Target::Pipeline(
            Pipeline::start(hub.clone(), pipeline_config, hls.clone())
                .context("starting the annotation pipeline")?,
        ))
    };
    let token = match args.publish_token {
        Some(token) if !token.is_empty() => token,
        _ => generate_token(),
    };
    let listener = http::bind(&args.listen).await?;
    let addr: SocketAddr = listener.local_addr().context("reading the bound address")?;
    let app = App {
        hub: hub.clone(),
        sink: sink.clone(),
        publishing: Arc::new(Publishing::new(token.clone())),
        hls: hls.clone(),
        config: Arc::new(HttpConfig {
            allowed_origins: args.allow_origin,
            viewer_send_timeout: Duration::from_secs_f64(args.viewer_timeout),
        }),
    };

    tokio::spawn(async move {
        // Errors are logged and shown in /api/status; the server keeps serving.
        let _ = ingest::run(input, sink).await;
    });

    let base = format!("http://{addr}");
    println!(
        "lenscast is serving ({})",
        if args.passthrough {
            "passthrough"
        } else {
            "annotating faces"
        }
    );
    println!("  viewer      {base}/");
    println!("  presenter   {base}/present?token={token}");
    println!("  stream      {base}/live.webm");
    if hls.is_some() {
        println!("  hls         {base}/hls.html  (playlist {base}/hls/live.m3u8)");
    }
    println!("  status      {base}/api/status");
    tracing::info!(%addr, passthrough = args.passthrough, "listening");

    http::serve(listener, app, shutdown_signal()).await;
    // The pipeline thread still holds the mirror and ends only with the process, so stop it
    // here: that finishes its thread and removes the run directory.
    if let Some(mirror) = hls {
        mirror.stop();
    }
    Ok(())
}
