//! Helpers shared by the integration tests: a real server on 127.0.0.1:0, real WebSocket and
//! HTTP clients, and the real ffmpeg/ffprobe to judge what viewers received.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use lenscast::hls::{HlsConfig, HlsMirror};
use lenscast::http::{App, HttpConfig};
use lenscast::hub::Hub;
use lenscast::pipeline::PipelineConfig;
use lenscast::server::{Server, ServerConfig};
use lenscast::source::{Input, Slot};
use lenscast::webm::ebml::{self, id, UNKNOWN_SIZE};
use lenscast::webm::{Event, StreamReader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{self, Message};

pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The publish token the in-process test servers use.
pub const TOKEN: &str = "test-token";

/// A server running inside the test process, built by the same constructor as the binary.
pub struct TestServer {
    pub addr: SocketAddr,
    pub app: App,
    pub hub: Hub,
    pub slot: Slot,
    pub hls: Option<Arc<HlsMirror>>,
    /// Completing it shuts the server down, as SIGTERM does for the binary.
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Shuts the server down the way the binary does on SIGTERM, and waits until it has.
    pub async fn shut_down(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Builds the server from `config` and runs it on 127.0.0.1:0.
pub async fn start_server(config: ServerConfig, input: Option<Input>) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_server_on(listener, config, input)
}

/// Builds the server from `config` and runs it on `listener` (e.g. a port a stopped server
/// had, to restart it where its clients look for it).
pub fn start_server_on(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    input: Option<Input>,
) -> TestServer {
    let server = Server::new(ServerConfig {
        input: input.clone().unwrap_or_else(Input::demo),
        token: TOKEN.to_string(),
        ..config
    })
    .expect("the server builds");
    let server = if input.is_none() {
        server.without_input()
    } else {
        server
    };
    let app = server.app().clone();
    let addr = listener.local_addr().unwrap();
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(listener, async move {
        let _ = stop.await;
    }));
    TestServer {
        addr,
        hub: app.hub.clone(),
        slot: app.slot.clone(),
        hls: app.hls.clone(),
        app,
        shutdown: Some(shutdown),
        task: Some(task),
    }
}

/// Starts the real server on 127.0.0.1:0 in passthrough mode without HLS, with `input` (if any).
pub async fn start(input: Option<Input>, config: HttpConfig) -> TestServer {
    let config = ServerConfig {
        passthrough: true,
        hls: None,
        http: config,
        ..ServerConfig::default()
    };
    start_server(config, input).await
}

/// Starts the real server with an HLS mirror (`window` segments listed), annotating unless
/// `passthrough`.
pub async fn start_with_hls(input: Option<Input>, window: usize, passthrough: bool) -> TestServer {
    let config = ServerConfig {
        passthrough,
        hls: Some(HlsConfig {
            window,
            ..HlsConfig::default()
        }),
        ..ServerConfig::default()
    };
    start_server(config, input).await
}

/// Starts the real server in annotation mode (decode, detect faces, re-encode), without HLS.
pub async fn start_annotating(
    input: Option<Input>,
    pipeline: PipelineConfig,
    config: HttpConfig,
) -> TestServer {
    let config = ServerConfig {
        pipeline,
        hls: None,
        http: config,
        ..ServerConfig::default()
    };
    start_server(config, input).await
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

/// A plain HTTP/1.1 GET; returns (status, headers text, body). Reads until the server
/// closes or `timeout`, so it also works on endless streams.
pub async fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> (u16, String, Vec<u8>) {
    http_request(addr, "GET", path, &[], timeout).await
}

/// A plain HTTP/1.1 request with extra `headers`, read as [`http_get`] reads.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> (u16, String, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
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

/// The value of header `name` in a response head, if present.
pub fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_string())
    })
}

/// Decodes a chunked body (tolerating a cut-off last chunk).
pub fn dechunk(mut raw: &[u8]) -> Vec<u8> {
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
        // The encoder's time base is the stream's (1 ms), not 1/frame-rate: frames 33 and
        // 34 ms apart round onto the same tick of a 29.97 fps grid, and the null muxer then
        // reports "non monotonically increasing dts" for a stream that has none.
        .args(["-enc_time_base", "-1", "-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    if !output.status.success() {
        return format!("ffmpeg failed ({}): {stderr}", output.status);
    }
    stderr
}

/// ffprobe's per-packet (pts, keyframe) for the given stream type (`v` or `a`).
pub fn packets(bytes: &[u8], stream: &str) -> Vec<(i64, bool)> {
    packets_with_durations(bytes, stream)
        .into_iter()
        .map(|(pts, _, key)| (pts, key))
        .collect()
}

/// ffprobe's per-packet (pts, duration if any, keyframe) for the given stream type (`v` or
/// `a`), in the stream's time base (ms for ours).
pub fn packets_with_durations(bytes: &[u8], stream: &str) -> Vec<(i64, Option<i64>, bool)> {
    let file = write_temp(bytes);
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", stream])
        .args([
            "-show_entries",
            "packet=pts,duration,flags",
            "-of",
            "csv=p=0",
        ])
        .arg(file.path())
        .output()
        .expect("ffprobe runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut parts = line.split(',');
            let pts = parts.next()?.parse().ok()?;
            let duration = parts.next()?.parse().ok();
            let flags = parts.next().unwrap_or("");
            Some((pts, duration, flags.starts_with('K')))
        })
        .collect()
}

/// `bytes` in a temporary .webm file, removed when the handle drops.
pub fn write_temp(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".webm").tempfile().unwrap();
    std::io::Write::write_all(&mut file, bytes).unwrap();
    file
}

/// Asserts that `bytes` is a viewer stream that decodes cleanly from its first video frame
/// with strictly increasing video timestamps; returns the number of video packets.
pub fn assert_decodes_from_start(label: &str, bytes: &[u8]) -> usize {
    assert!(bytes.len() > 1000, "{label}: only {} bytes", bytes.len());
    let errors = ffmpeg_errors(bytes);
    if !errors.trim().is_empty() {
        // Keep the stream for whoever reads the failure (a flake may not come back).
        let kept = std::env::temp_dir().join(format!(
            "lenscast-failed-{}-{}.webm",
            label.replace(|c: char| !c.is_ascii_alphanumeric(), "-"),
            std::process::id()
        ));
        let _ = std::fs::write(&kept, bytes);
        panic!(
            "{label}: ffmpeg reported: {errors} (stream kept in {})",
            kept.display()
        );
    }
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

/// The HLS run directory of the lenscast process `pid` (`/api/status` does not show it: a
/// server path is nothing a viewer needs). Waits up to 10 s for it to appear.
pub async fn hls_dir_of(pid: u32) -> PathBuf {
    let prefix = format!("lenscast-hls-{pid}-");
    for _ in 0..100 {
        let found = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .find(|entry| entry.file_name().to_string_lossy().starts_with(&prefix));
        if let Some(entry) = found {
            return entry.path();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no HLS directory for process {pid}");
}

/// Opens `/ws/view` with the given Host (default: the address) and Origin headers; returns
/// 101 if the upgrade succeeded, else the HTTP status of the refusal.
pub async fn view_upgrade_status(addr: SocketAddr, host: Option<&str>, origin: &str) -> u16 {
    use tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/ws/view")
        .into_client_request()
        .unwrap();
    if let Some(host) = host {
        request.headers_mut().insert("host", host.parse().unwrap());
    }
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// A raw `/ws/view` upgrade request, with RFC 6455's example key (its accept value is
/// `s3pPLMBiTxaQ9kYGzzhZRbK+xOo=`).
pub fn ws_view_request(addr: SocketAddr) -> String {
    format!(
        "GET /ws/view HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A connection with a tiny receive buffer that sends `request` and then never reads, so the
/// server's writes to it block early (a stalled viewer).
pub async fn stalled_connection(addr: SocketAddr, request: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// Sends `child` SIGTERM, as `kill`, systemd or a container runtime would.
pub fn sigterm(child: &Child) {
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success(), "kill -TERM {pid}: {sent:?}");
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

/// A file cut at block boundaries, each piece with the time it is due (real-time pacing).
pub fn paced_pieces(bytes: &[u8]) -> Vec<(Duration, Vec<u8>)> {
    let mut reader = StreamReader::new();
    reader.push(bytes);
    let mut pieces = Vec::new();
    let mut start = 0usize;
    let mut first_ms = None;
    while let Some(event) = reader.next_event().unwrap() {
        if let Event::Block(block) = event {
            let ms = block.time.as_millis();
            let first = *first_ms.get_or_insert(ms);
            let end = reader.position() as usize;
            let due = Duration::from_millis((ms - first).max(0) as u64);
            pieces.push((due, bytes[start..end].to_vec()));
            start = end;
        }
    }
    if start < bytes.len() {
        let due = pieces.last().map_or(Duration::ZERO, |p| p.0);
        pieces.push((due, bytes[start..].to_vec()));
    }
    pieces
}

/// How a publish over the WebSocket ended: the server's close frame, if any.
#[derive(Debug)]
pub struct Closed {
    pub code: Option<u16>,
    pub reason: String,
}

pub type PublishSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connect_presenter(addr: SocketAddr, query: &str) -> Result<PublishSocket, u16> {
    let url = format!("ws://{addr}/ws/publish?{query}");
    match tokio_tungstenite::connect_async(url).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("unexpected connect error: {e}"),
    }
}

/// Sends `pieces` on their schedule (or at once, unpaced); stops early if the server closes.
/// Returns the server's close frame, or None if we finished and closed first.
pub async fn publish(
    socket: &mut PublishSocket,
    pieces: &[(Duration, Vec<u8>)],
    paced: bool,
) -> Option<Closed> {
    let started = tokio::time::Instant::now();
    for (due, piece) in pieces {
        if paced {
            tokio::time::sleep_until(started + *due).await;
        }
        if socket.send(Message::binary(piece.clone())).await.is_err() {
            break;
        }
        // Notice a close from the server without blocking the schedule.
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(1), socket.next()).await
        {
            if let Ok(Message::Close(frame)) = message {
                return Some(closed(frame));
            }
        }
    }
    None
}

fn closed(frame: Option<tungstenite::protocol::CloseFrame>) -> Closed {
    Closed {
        code: frame.as_ref().map(|f| u16::from(f.code)),
        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
    }
}

/// Waits for the server to close the socket; returns its close frame.
pub async fn wait_closed(socket: &mut PublishSocket) -> Closed {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return closed(frame),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => {
                return Closed {
                    code: None,
                    reason: "connection dropped without a close frame".into(),
                }
            }
            Err(_) => panic!("the server never closed the socket"),
        }
    }
}

/// Publishes and returns how the server closed the socket (it must close it).
pub async fn refused(socket: &mut PublishSocket, pieces: &[(Duration, Vec<u8>)]) -> Closed {
    match publish(socket, pieces, false).await {
        Some(closed) => closed,
        None => wait_closed(socket).await,
    }
}

/// One video frame: its bytes and whether it is a keyframe.
pub type Frame = (Vec<u8>, bool);

/// The video frames of a real file.
pub fn frames_of(name: &str) -> Vec<Frame> {
    let mut reader = StreamReader::new();
    reader.push(&std::fs::read(fixture_path(name)).unwrap());
    let mut frames = Vec::new();
    while let Some(event) = reader.next_event().unwrap() {
        if let Event::Block(block) = event {
            frames.push((block.frame().to_vec(), block.keyframe));
        }
    }
    frames
}

/// A live-style WebM (unknown sizes) carrying `frames` (320x240 VP8), whose Info says
/// `scale` ns per tick, with one Cluster per (timestamp, frames) group.
pub fn webm_stream(scale: u64, clusters: &[(u64, &[Frame])], tick_per_frame: i16) -> Vec<u8> {
    let mut out = Vec::new();
    let mut header = Vec::new();
    ebml::write_element(&mut header, id::DOC_TYPE, b"webm");
    ebml::write_element(&mut out, id::EBML, &header);
    ebml::write_id(&mut out, id::SEGMENT);
    out.extend_from_slice(&UNKNOWN_SIZE);
    let mut info = Vec::new();
    ebml::write_uint(&mut info, id::TIMESTAMP_SCALE, scale);
    ebml::write_element(&mut out, id::INFO, &info);
    let mut entry = Vec::new();
    ebml::write_uint(&mut entry, id::TRACK_NUMBER, 1);
    ebml::write_uint(&mut entry, id::TRACK_TYPE, 1);
    ebml::write_element(&mut entry, id::CODEC_ID, b"V_VP8");
    let mut video = Vec::new();
    ebml::write_uint(&mut video, id::PIXEL_WIDTH, 320);
    ebml::write_uint(&mut video, id::PIXEL_HEIGHT, 240);
    ebml::write_element(&mut entry, id::VIDEO, &video);
    let mut tracks = Vec::new();
    ebml::write_element(&mut tracks, id::TRACK_ENTRY, &entry);
    ebml::write_element(&mut out, id::TRACKS, &tracks);
    for (timestamp, frames) in clusters {
        ebml::write_id(&mut out, id::CLUSTER);
        out.extend_from_slice(&UNKNOWN_SIZE);
        ebml::write_uint(&mut out, id::TIMESTAMP, *timestamp);
        for (i, (frame, keyframe)) in frames.iter().enumerate() {
            let mut block = vec![0x81];
            block.extend_from_slice(&(i as i16 * tick_per_frame).to_be_bytes());
            block.push(if *keyframe { 0x80 } else { 0 });
            block.extend_from_slice(frame);
            ebml::write_element(&mut out, id::SIMPLE_BLOCK, &block);
        }
    }
    out
}
