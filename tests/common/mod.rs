//! Helpers shared by the integration tests: a real server on 127.0.0.1:0, real WebSocket and
//! HTTP clients, and the real ffmpeg/ffprobe to judge what viewers received.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lenscast::broadcast::Hub;
use lenscast::hls::{HlsConfig, HlsMirror};
use lenscast::http::publish::Publishing;
use lenscast::http::{self, App, HttpConfig};
use lenscast::ingest::{self, Input, Sink, Target};
use lenscast::pipeline::{Mode, Pipeline, PipelineConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The publish token the in-process test servers use.
pub const TOKEN: &str = "test-token";

/// A server running inside the test process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub hub: Hub,
    pub sink: Sink,
    pub hls: Option<Arc<HlsMirror>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the real routes on 127.0.0.1:0 in passthrough mode, with `input` (if any).
pub async fn start(input: Option<Input>, config: HttpConfig) -> TestServer {
    let hub = Hub::default();
    start_with(hub.clone(), Target::Hub(hub), input, config).await
}

/// Starts the real routes in annotation mode with an HLS mirror (`window` segments listed).
pub async fn start_with_hls(input: Option<Input>, window: usize, passthrough: bool) -> TestServer {
    let hub = Hub::default();
    let mirror = Arc::new(
        HlsMirror::start(HlsConfig {
            window,
            ..HlsConfig::default()
        })
        .expect("HLS mirror starts"),
    );
    let config = PipelineConfig {
        mode: if passthrough {
            Mode::MirrorOnly
        } else {
            Mode::Annotate
        },
        ..PipelineConfig::default()
    };
    let pipeline = Pipeline::start(hub.clone(), config, Some(mirror.clone())).expect("pipeline");
    let sink = if passthrough {
        Sink::with_mirror(Target::Hub(hub.clone()), Some(pipeline))
    } else {
        Sink::new(Target::Pipeline(pipeline))
    };
    start_sink(hub, sink, Some(mirror), input, HttpConfig::default()).await
}

/// Starts the real routes in annotation mode (decode, detect faces, re-encode).
pub async fn start_annotating(
    input: Option<Input>,
    pipeline: PipelineConfig,
    config: HttpConfig,
) -> TestServer {
    let hub = Hub::default();
    let target =
        Target::Pipeline(Pipeline::start(hub.clone(), pipeline, None).expect("pipeline starts"));
    start_with(hub, target, input, config).await
}

async fn start_with(
    hub: Hub,
    target: Target,
    input: Option<Input>,
    config: HttpConfig,
) -> TestServer {
    start_sink(hub, Sink::new(target), None, input, config).await
}

async fn start_sink(
    hub: Hub,
    sink: Sink,
    hls: Option<Arc<HlsMirror>>,
    input: Option<Input>,
    config: HttpConfig,
) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = App {
        hub: hub.clone(),
        sink: sink.clone(),
        publishing: Arc::new(Publishing::new(TOKEN.to_string())),
        hls: hls.clone(),
        config: Arc::new(config),
    };
    let mut tasks = vec![tokio::spawn(http::serve(
        listener,
        app,
        std::future::pending(),
    ))];
    if let Some(input) = input {
        let sink = sink.clone();
        tasks.push(tokio::spawn(async move {
            let _ = ingest::run(input, sink).await;
        }));
    }
    TestServer {
        addr,
        hub,
        sink,
        hls,
        tasks,
    }
}

/// What a WebSocket viewer received: the init messages (JSON) and all binary bytes in order.
#[derive(Debug, Default)]
pub struct Received {
    pub inits: Vec<serde_json::Value>,
    pub bytes: Vec<u8>,
    pub closed: bool,
}

/// Connects to `/ws/view` and collects for `duration`.
pub async fn ws_collect(addr: SocketAddr, duration: Duration) -> Received {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/view"))
        .await
        .expect("ws connect");
    let mut received = Received::default();
    let deadline = tokio::time::Instant::now() + duration;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Binary(b)))) => received.bytes.extend_from_slice(&b),
            Ok(Some(Ok(Message::Text(t)))) => received
                .inits
                .push(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) | Ok(None) => {
                received.closed = true;
                break;
            }
        }
    }
    received
}

/// A plain HTTP/1.1 GET; returns (status, headers text, body). Reads until `limit` bytes of
/// body or `timeout`, so it also works on endless streams.
pub async fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> (u16, String, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut raw)).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response has headers");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, body)
}

/// Decodes a chunked body (tolerating a cut-off last chunk).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).unwrap().trim(), 16)
            .unwrap_or(0);
        raw = &raw[line_end + 2..];
        if size == 0 {
            break;
        }
        let take = size.min(raw.len());
        out.extend_from_slice(&raw[..take]);
        if take < size || raw.len() < size + 2 {
            break;
        }
        raw = &raw[size + 2..];
    }
    out
}

pub async fn status(addr: SocketAddr) -> serde_json::Value {
    let (code, _, body) = http_get(addr, "/api/status", Duration::from_secs(5)).await;
    assert_eq!(code, 200);
    serde_json::from_slice(&body).unwrap()
}

/// Writes `bytes` to a temp file and has ffmpeg decode every frame. Returns ffmpeg's error
/// output, which must be empty for a clean stream. A stream cut off mid-block at the end
/// is normal for a live capture, so the last partial element is trimmed first.
pub fn ffmpeg_errors(bytes: &[u8]) -> String {
    let file = write_temp(bytes);
    let output = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(file.path())
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    if !output.status.success() {
        return format!("ffmpeg failed ({}): {stderr}", output.status);
    }
    stderr
}

/// ffprobe's per-packet (stream index, pts, flags) for the given stream type (`v` or `a`).
pub fn packets(bytes: &[u8], stream: &str) -> Vec<(i64, bool)> {
    let file = write_temp(bytes);
    let output = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            stream,
            "-show_entries",
            "packet=pts,flags",
        ])
        .args(["-of", "csv=p=0"])
        .arg(file.path())
        .output()
        .expect("ffprobe runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut parts = line.split(',');
            let pts = parts.next()?.parse().ok()?;
            let flags = parts.next().unwrap_or("");
            Some((pts, flags.starts_with('K')))
        })
        .collect()
}

fn write_temp(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".webm").tempfile().unwrap();
    std::io::Write::write_all(&mut file, bytes).unwrap();
    file
}

/// Asserts that `bytes` is a viewer stream that decodes cleanly from its first video frame
/// with strictly increasing video timestamps; returns the number of video packets.
pub fn assert_decodes_from_start(label: &str, bytes: &[u8]) -> usize {
    assert!(bytes.len() > 1000, "{label}: only {} bytes", bytes.len());
    let errors = ffmpeg_errors(bytes);
    assert!(
        errors.trim().is_empty(),
        "{label}: ffmpeg reported: {errors}"
    );
    let video = packets(bytes, "v");
    assert!(!video.is_empty(), "{label}: no video packets");
    assert!(video[0].1, "{label}: first video packet is not a keyframe");
    assert!(
        video.windows(2).all(|w| w[1].0 > w[0].0),
        "{label}: video timestamps not increasing: {:?}",
        video.iter().map(|p| p.0).collect::<Vec<_>>()
    );
    video.len()
}

/// The real binary, started with `args`; returns it and the base URL it printed.
pub fn spawn_binary(args: &[&str], stdin: Stdio) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lenscast"))
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("lenscast starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let started = Instant::now();
    let url = loop {
        let line = lines
            .next()
            .expect("lenscast printed its URL")
            .expect("stdout readable");
        if let Some(at) = line.find("http://") {
            let url = line[at..].trim_end_matches('/').to_string();
            break url.trim_end_matches("/").to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no URL printed"
        );
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}

/// Kills the child when dropped, so a failing test leaves no server behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real ffmpeg CLI reads `url` for 2 s of media and decodes it without a single error.
pub async fn assert_ffmpeg_reads_cleanly(url: String) {
    let output = tokio::task::spawn_blocking(move || {
        Command::new("ffmpeg")
            .args([
                "-nostdin", "-v", "error", "-i", &url, "-t", "2", "-f", "null", "-",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(errors.is_empty(), "{errors}");
}

/// The real binary in passthrough mode reading `stdin`; returns it and its address.
pub fn spawn_stdin_server(stdin: Stdio) -> (KillOnDrop, SocketAddr) {
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--input",
        "-",
        "--passthrough",
    ];
    let (server, url) = spawn_binary(&args, stdin);
    let addr = url.trim_start_matches("http://").parse().unwrap();
    (KillOnDrop(server), addr)
}
