//! The `lenscast` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lenscast::broadcast::Hub;
use lenscast::http::{self, App, HttpConfig};
use lenscast::ingest::{self, Input};

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
    /// Serve the live stream to viewers (page at /, WebSocket at /ws/view, HTTP at /live.webm).
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

    /// Broadcast the source's WebM as it is, without decoding (any codec, audio-only too).
    /// Currently the only mode.
    #[arg(long)]
    passthrough: bool,

    /// Also accept WebSocket connections from pages on this origin (e.g. https://studio.example).
    /// Repeat for several; `*` allows any. The server's own origin is always allowed.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allow_origin: Vec<String>,

    /// Disconnect a viewer whose connection accepts no data for this many seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    viewer_timeout: f64,

    /// Chunks kept for viewers that fall behind, before they skip to the next keyframe.
    #[arg(long, default_value_t = lenscast::broadcast::DEFAULT_CHANNEL_CAPACITY)]
    viewer_buffer: usize,
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
    let hub = Hub::new(args.viewer_buffer);
    let listener = http::bind(&args.listen).await?;
    let addr: SocketAddr = listener.local_addr().context("reading the bound address")?;
    let app = App {
        hub: hub.clone(),
        config: Arc::new(HttpConfig {
            allowed_origins: args.allow_origin,
            viewer_send_timeout: Duration::from_secs_f64(args.viewer_timeout),
        }),
    };

    let ingest_hub = hub.clone();
    tokio::spawn(async move {
        // Errors are logged and shown in /api/status by the hub; the server keeps serving.
        let _ = ingest::run(input, ingest_hub).await;
    });

    let base = format!("http://{addr}");
    println!("lenscast is serving");
    println!("  viewer      {base}/");
    println!("  stream      {base}/live.webm");
    println!("  status      {base}/api/status");
    tracing::info!(%addr, passthrough = args.passthrough, "listening");

    http::serve(listener, app, async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    })
    .await;
    Ok(())
}
