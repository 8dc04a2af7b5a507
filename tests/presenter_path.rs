//! The presenter path as a user meets it: webcams of other shapes, presenters that go quiet or
//! send hostile timestamps, and shutting the server down with clients still connected. Real
//! server, real FFmpeg/OpenCV; ffmpeg judges what viewers got.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use lenscast::http::HttpConfig;
use lenscast::pipeline::PipelineConfig;
use lenscast::source::Input;
use lenscast::webm::{Event, StreamReader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Runs ffmpeg with `args`, panicking with its error output if it fails.
fn ffmpeg(args: &[&str]) {
    let output = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg runs");
    assert!(output.status.success(), "ffmpeg {args:?}: {output:?}");
}

/// A 3 s, 30 fps VP8 WebM of `width`x`height`: a white square (side `side`) centred on black.
fn square_video(dir: &Path, width: u32, height: u32, side: u32) -> Vec<u8> {
    let path = dir.join(format!("square-{width}x{height}.webm"));
    let source = format!("color=black:size={width}x{height}:rate=30:duration=3");
    let filter = format!(
        "drawbox=x={}:y={}:w={side}:h={side}:color=white:t=fill,format=yuv420p",
        (width - side) / 2,
        (height - side) / 2
    );
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &source,
        "-vf",
        &filter,
        "-c:v",
        "libvpx",
        "-b:v",
        "800k",
        "-g",
        "30",
        "-an",
        path.to_str().unwrap(),
    ]);
    std::fs::read(path).unwrap()
}

/// The 16:9 face fixture scaled to `width`x`height` (as a 1280x720 webcam would send it).
fn face_video(dir: &Path, width: u32, height: u32) -> Vec<u8> {
    if (width, height) == (640, 360) {
        return std::fs::read(fixture_path("face-16x9.webm")).unwrap();
    }
    let path = dir.join(format!("face-{width}x{height}.webm"));
    ffmpeg(&[
        "-i",
        fixture_path("face-16x9.webm").to_str().unwrap(),
        "-vf",
        &format!("scale={width}:{height}"),
        "-c:v",
        "libvpx",
        "-b:v",
        "1500k",
        "-g",
        "30",
        "-an",
        path.to_str().unwrap(),
    ]);
    std::fs::read(path).unwrap()
}

/// Every video frame of a WebM byte stream as raw RGB24 pictures of `width`x`height`.
fn rgb_frames(bytes: &[u8], width: usize, height: usize) -> Vec<Vec<u8>> {
    let mut file = tempfile::Builder::new().suffix(".webm").tempfile().unwrap();
    file.write_all(bytes).unwrap();
    let output = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(file.path())
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    output
        .stdout
        .chunks_exact(width * height * 3)
        .map(<[u8]>::to_vec)
        .collect()
}

/// The bounding box (x0, y0, x1, y1) of pixels for which `hit(r, g, b)` holds.
fn bounding_box(
    frame: &[u8],
    width: usize,
    hit: impl Fn(u8, u8, u8) -> bool,
) -> Option<(usize, usize, usize, usize)> {
    let mut found: Option<(usize, usize, usize, usize)> = None;
    for (i, p) in frame.chunks_exact(3).enumerate() {
        if hit(p[0], p[1], p[2]) {
            let (x, y) = (i % width, i / width);
            found = Some(match found {
                None => (x, y, x, y),
                Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x), y1.max(y)),
            });
        }
    }
    found
}

/// Mean brightness of rows `rows` (to tell a letterboxed presenter frame from a demo frame).
fn mean_rows(frame: &[u8], width: usize, rows: std::ops::Range<usize>) -> f64 {
    let bytes = &frame[rows.start * width * 3..rows.end * width * 3];
    bytes.iter().map(|&b| b as f64).sum::<f64>() / bytes.len() as f64
}

/// Publishes `video` over the WebSocket at real time while a viewer watches; returns what the
/// viewer received.
async fn publish_and_watch(addr: SocketAddr, video: &[u8]) -> Received {
    let viewer = tokio::spawn(ws_collect(addr, Duration::from_secs(6)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut presenter = connect_presenter(addr, &format!("token={TOKEN}"))
        .await
        .expect("presenter connects");
    let closed = publish(&mut presenter, &paced_pieces(video), true).await;
    assert!(
        closed.is_none(),
        "the server refused the upload: {closed:?}"
    );
    let received = viewer.await.unwrap();
    assert!(!received.closed, "the viewer was disconnected");
    received
}

/// The annotating server with the 640x480 demo running.
async fn start_demo(http: HttpConfig) -> TestServer {
    start_annotating(Some(Input::demo()), PipelineConfig::default(), http).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_by_nine_presenters_keep_their_shape_while_the_4_3_demo_runs() {
    let server = start_demo(HttpConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    for (width, height, side) in [(640u32, 360u32, 120u32), (1280, 720, 240)] {
        let video = square_video(dir.path(), width, height, side);
        let received = publish_and_watch(server.addr, &video).await;
        assert_eq!(
            received.inits.len(),
            1,
            "one init: the output never changed size"
        );
        assert_eq!(received.inits[0]["width"], 640);
        assert_eq!(received.inits[0]["height"], 480);
        let frames = rgb_frames(&received.bytes, 640, 480);
        // The presenter's frames: a black picture (the demo's is bright).
        let mut ratios = Vec::new();
        for frame in &frames {
            if mean_rows(frame, 640, 0..480) > 60.0 {
                continue;
            }
            if let Some((x0, y0, x1, y1)) =
                bounding_box(frame, 640, |r, g, b| r > 128 && g > 128 && b > 128)
            {
                let (w, h) = ((x1 - x0 + 1) as f64, (y1 - y0 + 1) as f64);
                ratios.push(w / h);
                // Letterboxed: 16:9 inside 640x480 leaves 60-row bars; the square is centred.
                assert!((y0 as i64 - 180).abs() <= 3, "square top at {y0}");
            }
        }
        assert!(
            ratios.len() >= 30,
            "{width}x{height}: only {} presenter frames reached the viewer",
            ratios.len()
        );
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        assert!(
            (median - 1.0).abs() <= 0.03,
            "{width}x{height}: the square came out {median:.3}:1"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn face_boxes_sit_on_the_face_of_a_16_9_presenter() {
    let server = start_demo(HttpConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    // The fixture's face centre is at (315, 150) of 640x360; letterboxed into 640x480 it moves
    // down by the 60-row bar. A 1280x720 camera lands on the same output pixels.
    let centre = (315usize, 150usize + 60);
    for (width, height) in [(640u32, 360u32), (1280, 720)] {
        let video = face_video(dir.path(), width, height);
        let received = publish_and_watch(server.addr, &video).await;
        let frames = rgb_frames(&received.bytes, 640, 480);
        let presenter: Vec<&Vec<u8>> = frames
            .iter()
            .filter(|f| mean_rows(f, 640, 0..50) < 30.0 && mean_rows(f, 640, 430..480) < 30.0)
            .collect();
        assert!(
            presenter.len() >= 60,
            "{width}x{height}: only {} letterboxed frames",
            presenter.len()
        );
        let green = |r: u8, g: u8, b: u8| g > 200 && r < 120 && b < 120;
        // From the first frame with a box on (detection has run), count frames whose box
        // holds the face centre.
        let first = presenter
            .iter()
            .position(|f| bounding_box(f, 640, green).is_some())
            .expect("a face box appears");
        let judged = &presenter[first..];
        let on_face = judged
            .iter()
            .filter(|f| {
                bounding_box(f, 640, green).is_some_and(|(x0, y0, x1, y1)| {
                    (x0..=x1).contains(&centre.0) && (y0..=y1).contains(&centre.1)
                })
            })
            .count();
        let share = on_face as f64 / judged.len() as f64;
        assert!(
            share >= 0.9,
            "{width}x{height}: the box held the face centre in {on_face} of {} frames",
            judged.len()
        );
    }
}

/// The bytes of `video` up to its first Cluster: the EBML header, Segment start, Info, Tracks.
fn header_and_tracks(video: &[u8]) -> Vec<u8> {
    let mut reader = StreamReader::new();
    reader.push(video);
    while let Some(event) = reader.next_event().unwrap() {
        if matches!(event, Event::Tracks(_)) {
            return video[..reader.position() as usize].to_vec();
        }
    }
    panic!("no Tracks");
}

async fn wait_for_source(addr: SocketAddr, name: &str, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let status = status(addr).await;
        if status["source"]["name"] == name && status["source"]["state"] == "live" {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "source {name} not live: {}",
            status["source"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_presenter_is_ended_and_the_demo_resumes() {
    let idle = Duration::from_secs(2);
    let server = start_demo(HttpConfig {
        presenter_idle: idle,
        ..HttpConfig::default()
    })
    .await;
    wait_for_source(server.addr, "demo:face.webm", Duration::from_secs(5)).await;
    let viewer = tokio::spawn(ws_collect(server.addr, Duration::from_secs(9)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let head = header_and_tracks(&std::fs::read(fixture_path("face.webm")).unwrap());

    // Over the WebSocket: header and Tracks, then silence.
    let mut presenter = connect_presenter(server.addr, &format!("token={TOKEN}"))
        .await
        .unwrap();
    let started = Instant::now();
    assert!(
        publish(&mut presenter, &[(Duration::ZERO, head.clone())], false)
            .await
            .is_none()
    );
    wait_for_source(server.addr, "presenter:ws", Duration::from_secs(2)).await;
    let closed = wait_closed(&mut presenter).await;
    let took = started.elapsed();
    assert_eq!(closed.code, Some(1008), "{closed:?}");
    assert!(closed.reason.contains("no media"), "{closed:?}");
    assert!(
        took >= idle - Duration::from_millis(100) && took <= idle + Duration::from_secs(1),
        "ended after {took:?}"
    );
    let status = wait_for_source(server.addr, "demo:face.webm", Duration::from_secs(1)).await;
    assert_eq!(status["pipeline"]["presenter_connected"], false);

    // Over HTTP PUT: the same rule, answered 408.
    let mut put = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "PUT /publish?token={TOKEN} HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        server.addr,
        head.len()
    );
    put.write_all(request.as_bytes()).await.unwrap();
    put.write_all(&head).await.unwrap();
    put.write_all(b"\r\n").await.unwrap();
    let started = Instant::now();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), put.read(&mut answer))
        .await
        .expect("the server answers the idle upload")
        .unwrap();
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("no media"), "{answer}");
    assert!(
        took <= idle + Duration::from_secs(1),
        "answered after {took:?}"
    );
    wait_for_source(server.addr, "demo:face.webm", Duration::from_secs(1)).await;

    // The viewer stayed connected through both, and its stream still decodes.
    let received = viewer.await.unwrap();
    assert!(!received.closed);
    let frames = assert_decodes_from_start("viewer", &received.bytes);
    assert!(frames > 100, "only {frames} frames in 9 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_timestamps_end_their_source_and_never_reach_the_next() {
    let server = start_annotating(None, PipelineConfig::default(), HttpConfig::default()).await;
    let frames = frames_of("vp8.webm"); // 320x240, 15 fps, a keyframe every 15 frames
    let (first, second) = (&frames[..15], &frames[15..30]);
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("TimestampScale 1 ns", webm_stream(1, &[(0, first)], 67)),
        (
            "TimestampScale 10 s",
            webm_stream(10_000_000_000, &[(0, first)], 1),
        ),
        (
            "a block at -2^62",
            webm_stream(
                1_000_000,
                &[(0, first), ((-(1i64 << 62)) as u64, second)],
                67,
            ),
        ),
        (
            "a jump of +10 h",
            webm_stream(1_000_000, &[(0, first), (36_000_000, second)], 67),
        ),
    ];
    for (what, bytes) in &hostile {
        let mut presenter = connect_presenter(server.addr, &format!("token={TOKEN}"))
            .await
            .unwrap();
        let closed = refused(&mut presenter, &[(Duration::ZERO, bytes.clone())]).await;
        assert!(
            matches!(closed.code, Some(1003 | 1008)),
            "{what}: closed with {closed:?}"
        );
        let reason = closed.reason.to_lowercase();
        assert!(
            reason.contains("timestamp") || reason.contains("jumped"),
            "{what}: {closed:?}"
        );
        let status = status(server.addr).await;
        assert_eq!(status["source"]["state"], "ended", "{what}");
    }

    // The next source: a real file at real time. Its frames come out at its own spacing
    // (15 fps = 66.7 ms), not squeezed together by what the hostile sources sent.
    let viewer = tokio::spawn(ws_collect(server.addr, Duration::from_secs(4)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut presenter = connect_presenter(server.addr, &format!("token={TOKEN}"))
        .await
        .unwrap();
    let video = std::fs::read(fixture_path("vp8.webm")).unwrap();
    assert!(publish(&mut presenter, &paced_pieces(&video), true)
        .await
        .is_none());
    let received = viewer.await.unwrap();
    let packets = packets(&received.bytes, "v");
    assert!(packets.len() >= 30, "only {} frames", packets.len());
    let gaps: Vec<i64> = packets[10..].windows(2).map(|w| w[1].0 - w[0].0).collect();
    let mut sorted = gaps.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    assert!(
        (60..=73).contains(&median),
        "median gap {median} ms: {gaps:?}"
    );
    assert!(gaps.iter().all(|&g| g >= 30), "frames squeezed: {gaps:?}");
}

/// Reads a raw HTTP response until the connection ends; returns everything read.
fn read_to_end_thread(mut stream: std::net::TcpStream) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stream.read_to_end(&mut all);
        all
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_viewers_and_uploads_and_exits_within_3_s() {
    let (child, url) = spawn_binary(
        &["serve", "--listen", "127.0.0.1:0", "--publish-token", TOKEN],
        Stdio::null(),
    );
    let mut server = KillOnDrop(child);
    let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    // Wait for media to flow and the HLS mirror to have a directory.
    let dir = hls_dir_of(server.0.id()).await;
    wait_for_source(addr, "demo:face.webm", Duration::from_secs(10)).await;

    // A WebSocket viewer, reading until the server closes.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/view"))
        .await
        .unwrap();
    let ws_viewer = tokio::spawn(async move {
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    });
    // A /live.webm viewer.
    let mut live = std::net::TcpStream::connect(addr).unwrap();
    live.write_all(format!("GET /live.webm HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let live_viewer = read_to_end_thread(live);
    // A client that sent half a request.
    let mut half = std::net::TcpStream::connect(addr).unwrap();
    half.write_all(format!("GET /api/status HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())
        .unwrap();
    let half_client = read_to_end_thread(half);
    // A presenter mid-upload (header sent, nothing more yet).
    let mut presenter = connect_presenter(addr, &format!("token={TOKEN}"))
        .await
        .unwrap();
    let head = header_and_tracks(&std::fs::read(fixture_path("face.webm")).unwrap());
    assert!(publish(&mut presenter, &[(Duration::ZERO, head)], false)
        .await
        .is_none());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    sigterm(&server.0);
    let exited = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "still running 3 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exited.success(), "{exited:?}");
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert_eq!(
        ws_viewer.await.unwrap(),
        Some(1001),
        "the WS viewer got a close"
    );
    let live = live_viewer.join().unwrap();
    assert!(
        live.ends_with(b"0\r\n\r\n"),
        "/live.webm ended without the last chunk ({} bytes)",
        live.len()
    );
    let presenter_closed = wait_closed(&mut presenter).await;
    assert_eq!(presenter_closed.code, Some(1001), "{presenter_closed:?}");
    half_client.join().unwrap();
}
