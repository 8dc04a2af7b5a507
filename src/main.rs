//! The `lenscast` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lenscast::hls::HlsConfig;
use lenscast::http::conn::ConnLimits;
use lenscast::http::{self, HttpConfig};
use lenscast::pipeline::PipelineConfig;
use lenscast::server::{Server, ServerConfig};
use lenscast::source::Input;

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
    #[arg(long, default_value = "1", value_name = "SECONDS", value_parser = seconds(0.1, 60.0))]
    keyframe_interval: Duration,

    /// Face detections per second at most (on the newest picture; boxes are drawn on every
    /// frame from the latest detection). 0 detects back to back: a whole core for the detector.
    #[arg(long, default_value = "5", value_name = "FPS", value_parser = clap::value_parser!(u32).range(0..=120))]
    detect_fps: u32,

    /// Target bitrate of the re-encoded VP8 stream, in bits/s (suffixes k and M accepted).
    #[arg(long, default_value = "1M", value_parser = parse_bitrate)]
    bitrate: usize,

    /// Also accept WebSocket connections from pages on this origin (e.g. https://studio.example).
    /// Repeat for several; `*` allows any. The server's own origin is always allowed.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allow_origin: Vec<String>,

    /// Let pages on this origin (e.g. https://player.example) read /hls/ and /live.webm from
    /// another site (CORS: Access-Control-Allow-Origin). Repeat for several; `*` allows any.
    /// Default: none, so only our own pages can.
    #[arg(long = "cors-origin", value_name = "ORIGIN", value_parser = cors_origin)]
    cors_origin: Vec<String>,

    /// Serve https and wss (same listener, same paths) with this PEM certificate chain. Needed
    /// for presenters on other machines: browsers give pages a camera only over https (or on
    /// localhost). Give --tls-key too.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The PEM private key (PKCS#8, PKCS#1 or SEC1) for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Edge mode: pull the live stream of the lenscast at this URL (e.g. http://origin:8080)
    /// and serve it to this server's own viewers, reconnecting with backoff when the origin
    /// goes away (viewers stay connected). Implies --passthrough; /hls/ is proxied from the
    /// origin. Edges chain: an edge's URL works here too.
    #[arg(long, value_name = "URL", conflicts_with = "input")]
    relay: Option<String>,

    /// On an origin: edges must give this token to pull /relay.webm. On an edge (with
    /// --relay): the origin's token, given when pulling (and this edge accepts it from its own
    /// edges). Without it edges pull the public /live.webm.
    #[arg(
        long,
        env = "LENSCAST_RELAY_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    relay_token: Option<String>,

    /// Also answer requests whose Host header is this name (e.g. live.example.org), as when
    /// behind a proxy or on a DNS name. Repeat for several. IP addresses and `localhost` are
    /// always accepted; any other name is refused with 403, which stops DNS-rebinding pages.
    #[arg(long = "allow-host", value_name = "NAME")]
    allow_host: Vec<String>,

    /// Length of an HLS segment in seconds (the HLS mirror at /hls/live.m3u8).
    #[arg(long, default_value = "1", value_name = "SECONDS", value_parser = seconds(0.5, 10.0))]
    hls_segment: Duration,

    /// Length of a Low-Latency HLS part in milliseconds (hls.js and Safari then play about a
    /// second behind instead of several segments); 0 writes plain HLS, whole segments only.
    #[arg(long, default_value_t = 200, value_name = "MS", value_parser = hls_part_ms)]
    hls_part_ms: u64,

    /// Turn the HLS mirror off (no H.264 encode, no /hls/ files).
    #[arg(long)]
    no_hls: bool,

    /// Disconnect a viewer whose connection accepts no data for this many seconds. Also how
    /// much of the stream is kept for viewers that fall behind: one further behind skips ahead
    /// to the newest keyframe.
    #[arg(long, default_value = "10", value_name = "SECONDS", value_parser = seconds(0.1, 3600.0))]
    viewer_timeout: Duration,

    /// End a presenter that sends no media for this many seconds (its header alone does not
    /// count); the demo or --input then resumes.
    #[arg(long, default_value = "5", value_name = "SECONDS", value_parser = seconds(0.5, 3600.0))]
    presenter_idle: Duration,

    /// The largest picture a source may send (when it is decoded: annotating, or the HLS
    /// mirror in --passthrough), as WIDTHxHEIGHT. Portrait fits too (1080x1920 under
    /// 1920x1080). A presenter over it is refused with the reason.
    #[arg(long, default_value = "1920x1080", value_name = "WxH")]
    max_resolution: lenscast::media::Resolution,

    /// Connections served at once (viewers, presenters, page loads); past it new connections
    /// get 503 at once.
    #[arg(long, default_value_t = 10_000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,

    /// Seconds a client has to send a request's headers before its connection is closed
    /// (stops slowloris clients).
    #[arg(long, default_value = "10", value_name = "SECONDS", value_parser = seconds(0.5, 600.0))]
    header_timeout: Duration,

    /// Seconds a connection may sit with nothing read or written before it is closed. Viewers
    /// waiting for a broadcast get keepalives, so only dead connections hit this.
    #[arg(long, default_value = "60", value_name = "SECONDS", value_parser = seconds(1.0, 86400.0))]
    idle_timeout: Duration,

    /// How often a viewer is written to: `auto` writes every frame at once while fewer than
    /// 200 watch, at most every 50 ms from 200, every 100 ms from 500 and every 250 ms from
    /// 1000 (each write costs CPU per viewer, whatever its size: at 1000 viewers 250 ms costs
    /// about 40% less CPU than 100 ms, for 75 ms more latency on average); a number of
    /// milliseconds fixes the pause (0: every frame at once, lowest latency).
    #[arg(long, default_value = "auto", value_name = "auto|MS", value_parser = viewer_batch)]
    viewer_batch: lenscast::hub::Batching,

    /// Keep the demo or --input file running while nobody watches. By default it pauses 5 s
    /// after the last viewer leaves (and the last HLS request), so an idle server burns no
    /// CPU, and resumes when someone comes (a stdin source or a presenter always runs).
    #[arg(long)]
    always_on: bool,

    /// Chunks kept for viewers that fall behind, before they skip to the next keyframe.
    #[arg(long, default_value_t = lenscast::hub::DEFAULT_CHANNEL_CAPACITY as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    viewer_buffer: u64,

    /// Bytes kept for viewers that fall behind (e.g. 16MiB, 512KiB), and the most the cache
    /// for joining viewers holds. Bounds the server's memory however large the source's
    /// frames are and however long a viewer stalls.
    #[arg(long, default_value = "16MiB", value_name = "SIZE", value_parser = byte_size(64 * 1024, 1 << 30))]
    viewer_buffer_bytes: usize,
}

/// Every connection is a file descriptor, and the usual soft limit (1024) is far below the
/// viewers one box can serve: raise it to the hard limit, and say what we got.
fn raise_open_files_limit(max_connections: u64) {
    // Descriptors besides connections: the listener, the input, FFmpeg, HLS files, logs.
    const SPARE: u64 = 64;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < max_connections + SPARE => tracing::warn!(
            limit,
            max_connections,
            "the open files limit is below --max-connections: raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower --max-connections"
        ),
        Ok(limit) => tracing::info!(limit, "open files limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open files limit"),
    }
}

/// `*`, or an origin as browsers send it: `http://` or `https://`, a host, maybe a port, no path.
fn cors_origin(text: &str) -> Result<String, String> {
    let authority = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"));
    match authority {
        _ if text == "*" => Ok(text.to_string()),
        Some(authority) if !authority.is_empty() && !authority.contains(['/', '?', '#']) => {
            Ok(text.to_string())
        }
        _ => Err(format!(
            "{text:?}: give an origin like https://player.example or http://host:8080, or *"
        )),
    }
}

/// `auto`, or a pause between writes to a viewer in milliseconds (at most a second).
fn viewer_batch(text: &str) -> Result<lenscast::hub::Batching, String> {
    if text == "auto" {
        return Ok(lenscast::hub::Batching::Auto);
    }
    match text.parse::<u64>() {
        Ok(ms) if ms <= 1000 => Ok(lenscast::hub::Batching::Every(Duration::from_millis(ms))),
        _ => Err(format!("{text:?}: use auto or 0..1000 milliseconds")),
    }
}

/// A parser for a byte size within `min..=max`, like `16MiB`, `512 KiB` or `20MB` (the
/// `bytesize` crate's syntax: KiB/MiB/GiB are binary, kB/MB/GB decimal).
fn byte_size(min: u64, max: u64) -> impl Fn(&str) -> Result<usize, String> + Clone {
    move |text: &str| {
        let size: bytesize::ByteSize = text
            .parse()
            .map_err(|error| format!("{text:?} is not a size: {error}"))?;
        if !(min..=max).contains(&size.as_u64()) {
            return Err(format!(
                "{text:?} is out of range ({} to {})",
                bytesize::ByteSize(min).display().iec(),
                bytesize::ByteSize(max).display().iec()
            ));
        }
        Ok(size.as_u64() as usize)
    }
}

/// A parser for a number of seconds within `min..=max` (so `inf`, `NaN` and absurd values
/// are refused with a clear message instead of panicking later).
fn seconds(min: f64, max: f64) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |text: &str| {
        let value: f64 = text
            .parse()
            .map_err(|_| format!("{text:?} is not a number of seconds"))?;
        if !(min..=max).contains(&value) {
            return Err(format!("{text} is outside {min}..{max} seconds"));
        }
        Ok(Duration::from_secs_f64(value))
    }
}

/// `--hls-part-ms`: 0 (no parts) or 50..=2000 ms; a part must stay shorter than a segment.
fn hls_part_ms(text: &str) -> Result<u64, String> {
    let ms: u64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number of milliseconds"))?;
    if ms != 0 && !(50..=2000).contains(&ms) {
        return Err(format!("{ms} ms is outside 50..2000 (or 0 for no parts)"));
    }
    Ok(ms)
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

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run())
}

/// glibc gives each thread that allocates its own malloc arena, up to 8 per core, and every
/// arena keeps its own free space: with thousands of connections allocating on both runtime
/// workers, that is RSS no viewer uses (1 MiB of 64 at 1,000 `/live.webm` viewers in
/// `make bench`). One arena per core is what a 2-core server needs. It must be set before
/// the runtime's threads first allocate; `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        // SAFETY: mallopt only sets a malloc parameter; called before any other thread runs.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, cores.clamp(1, 64) as libc::c_int);
        }
    }
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "lenscast=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args).await?,
    }
    // Everything we started has stopped; do not wait for a thread still blocked reading
    // stdin (tokio's stdin reads on a blocking thread the runtime would wait for).
    std::process::exit(0);
}

/// Ctrl-C or SIGTERM (what `kill`, systemd and CI send), so the HLS directory is cleaned up.
async fn shutdown_signal(mut term: tokio::signal::unix::Signal) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A random 128-bit token, hex encoded.
fn generate_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    raise_open_files_limit(args.max_connections as u64);
    let input = match args.input.as_deref() {
        None => Input::demo(),
        Some("-") => Input::Stdin,
        Some(path) => {
            let path = PathBuf::from(path);
            anyhow::ensure!(path.is_file(), "--input {}: no such file", path.display());
            Input::File(path)
        }
    };
    let token = match args.publish_token {
        Some(token) if !token.is_empty() => token,
        _ => generate_token(),
    };
    let config = ServerConfig {
        input,
        passthrough: args.passthrough,
        token: token.clone(),
        pipeline: PipelineConfig {
            bitrate: args.bitrate,
            keyframe_interval: args.keyframe_interval,
            detect_interval: (args.detect_fps > 0)
                .then(|| Duration::from_secs_f64(1.0 / f64::from(args.detect_fps))),
            ..PipelineConfig::default()
        },
        hls: (!args.no_hls).then(|| HlsConfig {
            segment: args.hls_segment,
            part: (args.hls_part_ms > 0).then(|| Duration::from_millis(args.hls_part_ms)),
            bitrate: args.bitrate,
            ..HlsConfig::default()
        }),
        http: HttpConfig {
            allowed_origins: args.allow_origin,
            allowed_hosts: args.allow_host,
            cors_origins: args.cors_origin,
            presenter_idle: args.presenter_idle,
            // Set by the server from `tls` below.
            tls: false,
            relay_token: args.relay_token.clone().filter(|t| !t.is_empty()),
        },
        relay: match args.relay.as_deref() {
            Some(url) => Some(lenscast::relay::RelayConfig::parse(
                url,
                args.relay_token.clone(),
            )?),
            None => None,
        },
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(lenscast::http::tls::TlsFiles { cert, key }),
            _ => None,
        },
        viewer_batch: args.viewer_batch,
        viewer_buffer: lenscast::hub::Limits {
            chunks: args.viewer_buffer as usize,
            bytes: args.viewer_buffer_bytes,
            // A viewer further behind than this has taken nothing for that long, or is too far
            // behind to be live: either way it skips ahead rather than the ring holding more.
            age: args.viewer_timeout,
        },
        max_resolution: args.max_resolution,
        connections: ConnLimits {
            max_connections: args.max_connections as usize,
            header_timeout: args.header_timeout,
            idle_timeout: args.idle_timeout,
            write_timeout: args.viewer_timeout,
        },
        pause_unwatched: !args.always_on,
    };
    // Installed before anything starts, so a SIGTERM at any moment shuts down cleanly.
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // Bound first: a taken port or a bad name fails before any encoder starts.
    let listener = http::bind(&args.listen).await?;
    let tls = config.tls.is_some();
    let relay_name = config.relay.as_ref().map(|r| r.name());
    let server = Server::new(config).context("starting the server")?;
    let addr: SocketAddr = listener.local_addr().context("reading the bound address")?;
    let scheme = if tls { "https" } else { "http" };
    let base = format!("{scheme}://{addr}");
    let mode = match (&args.relay, args.passthrough) {
        // Not the URL itself: scripts take the first http:// URL printed for this server's.
        (Some(_), _) => format!("edge of {}", relay_name.as_deref().unwrap_or("the origin")),
        (None, true) => "passthrough".to_string(),
        (None, false) => "annotating faces".to_string(),
    };
    println!("lenscast is serving ({mode})");
    println!("  viewer      {base}/");
    println!("  presenter   {base}/present?token={token}");
    println!("  stream      {base}/live.webm");
    if !args.no_hls || args.relay.is_some() {
        println!("  hls         {base}/hls.html  (playlist {base}/hls/live.m3u8)");
    }
    println!("  status      {base}/api/status");
    tracing::info!(%addr, passthrough = args.passthrough, tls, "listening");
    server.run(listener, shutdown_signal(term)).await;
    Ok(())
}
