//! The annotation pipeline end to end: presenters publish real WebM (over the WebSocket, and
//! with the real ffmpeg CLI over HTTP PUT), the server decodes, detects faces, draws boxes and
//! re-encodes; viewers' bytes are judged by ffmpeg, ffprobe and pixel checks.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use lenscast::http::HttpConfig;
use lenscast::pipeline::PipelineConfig;
use lenscast::source::Input;
use lenscast::webm::writer::AUDIO_TRACK;
use tokio_tungstenite::tungstenite::{self, protocol::frame::coding::CloseCode, Message};

/// Bright-green pixels (the box colour) in video frame `index` of a WebM byte stream.
fn green_pixels(bytes: &[u8], index: usize) -> usize {
    let mut file = tempfile::Builder::new().suffix(".webm").tempfile().unwrap();
    std::io::Write::write_all(&mut file, bytes).unwrap();
    let output = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(file.path())
        .args(["-vf", &format!("select=eq(n\\,{index})"), "-frames:v", "1"])
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(!output.stdout.is_empty(), "frame {index} exists");
    output
        .stdout
        .chunks_exact(3)
        .filter(|p| p[1] > 200 && p[0] < 120 && p[2] < 120)
        .count()
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap()
}

async fn pipeline_status(addr: SocketAddr) -> serde_json::Value {
    status(addr).await["pipeline"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presenter_over_websocket_is_annotated_and_viewers_see_the_boxes() {
    let server = start_annotating(None, PipelineConfig::default(), HttpConfig::default()).await;
    let viewer = tokio::spawn(ws_collect(server.addr, Duration::from_secs(6)));
    let mut presenter = connect_presenter(server.addr, &format!("token={TOKEN}"))
        .await
        .expect("presenter accepted");
    let pieces = paced_pieces(&fixture("face.webm"));
    let sent = tokio::spawn(async move {
        let closed = publish(&mut presenter, &pieces[..pieces.len() * 2 / 3], true).await;
        (presenter, closed)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let live = pipeline_status(server.addr).await;
    assert_eq!(live["presenter_connected"], true, "{live}");
    assert_eq!(live["input"], "presenter:ws");
    let (mut presenter, closed) = sent.await.unwrap();
    assert!(
        closed.is_none(),
        "the server closed the presenter: {closed:?}"
    );
    presenter.close(None).await.unwrap();

    let received = viewer.await.unwrap();
    let frames = assert_decodes_from_start("viewer", &received.bytes);
    assert!(
        frames >= 60,
        "only {frames} annotated frames reached the viewer"
    );
    let stats = pipeline_status(server.addr).await;
    assert!(stats["faces_total"].as_u64().unwrap() > 10, "{stats}");
    assert_eq!(stats["width"], 640);
    // The box is really in the picture viewers decode, and the source had no such green.
    assert!(green_pixels(&received.bytes, 45) > 1000);
    assert!(green_pixels(&fixture("face.webm"), 45) < 50);
}

/// The real ffmpeg CLI publishes 4 s of face-opus.webm over HTTP PUT in real time, its video
/// encoded with `video` (arguments, a keyframe a second) and its Opus copied, in container
/// `format`; returns what a `/ws/view` viewer received meanwhile.
async fn ffmpeg_publishes(addr: SocketAddr, video: &[&str], format: &str) -> Received {
    let viewer = tokio::spawn(ws_collect(addr, Duration::from_secs(5)));
    let mut ffmpeg = Command::new("ffmpeg");
    ffmpeg
        .args(["-nostdin", "-v", "error", "-re", "-i"])
        .arg(fixture_path("face-opus.webm"))
        .args(["-t", "4"])
        .args(video)
        .args(["-g", "30", "-c:a", "copy", "-f", format, "-method", "PUT"])
        .arg(format!("http://{addr}/publish?token={TOKEN}"));
    // Off the runtime's threads: the server under test runs on them.
    let output = tokio::task::spawn_blocking(move || ffmpeg.output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success(), "ffmpeg: {output:?}");
    viewer.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ffmpeg_cli_publishes_over_http_put_with_opus_passed_through() {
    let server = start_annotating(None, PipelineConfig::default(), HttpConfig::default()).await;
    let vp8 = [
        "-c:v",
        "libvpx",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-b:v",
        "1M",
    ];
    let received = ffmpeg_publishes(server.addr, &vp8, "webm").await;
    assert_eq!(
        received.inits.last().unwrap()["mime"],
        "video/webm; codecs=\"vp8,opus\"",
        "the Opus track is passed through: {:?}",
        received.inits
    );
    // Only the last init counts for decoding: take the stream from its last init message on.
    let errors = ffmpeg_errors(&received.bytes);
    assert!(errors.trim().is_empty(), "{errors}");
    let audio = packets(&received.bytes, "a").len();
    assert!(
        audio > 50,
        "only {audio} Opus packets reached the viewer; {}",
        status(server.addr).await
    );
    assert!(packets(&received.bytes, "v").len() > 30);
    let stats = pipeline_status(server.addr).await;
    assert!(stats["faces_total"].as_u64().unwrap() > 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_faces_are_found_in_a_test_pattern() {
    let server = start_annotating(
        Some(Input::File(fixture_path("testsrc.webm"))),
        PipelineConfig::default(),
        HttpConfig::default(),
    )
    .await;
    let received = ws_collect(server.addr, Duration::from_secs(3)).await;
    assert_decodes_from_start("testsrc viewer", &received.bytes);
    let stats = pipeline_status(server.addr).await;
    assert!(stats["frames_out"].as_u64().unwrap() > 30, "{stats}");
    assert_eq!(stats["faces_total"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyframes_come_at_the_configured_spacing() {
    let config = PipelineConfig {
        keyframe_interval: Duration::from_millis(500),
        ..PipelineConfig::default()
    };
    let server = start_annotating(
        Some(Input::File(fixture_path("face.webm"))),
        config,
        HttpConfig::default(),
    )
    .await;
    let received = ws_collect(server.addr, Duration::from_secs(4)).await;
    assert_decodes_from_start("viewer", &received.bytes);
    let keyframes: Vec<i64> = packets(&received.bytes, "v")
        .into_iter()
        .filter(|(_, key)| *key)
        .map(|(pts, _)| pts)
        .collect();
    assert!(keyframes.len() >= 6, "{keyframes:?}");
    for gap in keyframes.windows(2).map(|w| w[1] - w[0]) {
        // 500 ms, rounded up to the next frame at 30 fps.
        assert!(
            (490..=570).contains(&gap),
            "keyframe gap {gap} ms: {keyframes:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frame_says_how_long_it_lasts_and_a_gap_starts_with_a_keyframe() {
    // Keyframes only where the writer asks for them, within this test.
    let config = PipelineConfig {
        keyframe_interval: Duration::from_secs(30),
        ..PipelineConfig::default()
    };
    let server = start_annotating(None, config, HttpConfig::default()).await;
    let viewer = tokio::spawn(ws_collect(server.addr, Duration::from_secs(5)));
    // 20 frames 33 ms apart, a 660 ms pause (a camera or recorder that stalled), 25 more.
    let frames = frames_of("vp8.webm");
    assert!(
        frames.len() >= 45 && frames[0].1,
        "vp8.webm: {} frames",
        frames.len()
    );
    let stream = webm_stream(
        1_000_000,
        &[(0, &frames[..20]), (1287, &frames[20..45])],
        33,
    );
    let mut presenter = connect_presenter(server.addr, &format!("token={TOKEN}"))
        .await
        .unwrap_or_else(|code| panic!("refused with {code}"));
    assert!(publish(&mut presenter, &paced_pieces(&stream), true)
        .await
        .is_none());
    let received = viewer.await.unwrap();
    assert_decodes_from_start("viewer", &received.bytes);
    let packets = packets_with_durations(&received.bytes, "v");
    assert!(packets.len() >= 40, "{packets:?}");
    // A browser's WebM parser holds back a frame without a duration until the next arrives.
    for (pts, duration, _) in &packets {
        assert!(
            duration.is_some_and(|d| (1..=250).contains(&d)),
            "frame at {pts} ms has duration {duration:?}: {packets:?}"
        );
    }
    let pause = packets
        .windows(2)
        .position(|w| w[1].0 - w[0].0 > 500)
        .unwrap_or_else(|| panic!("the pause is in the output: {packets:?}"));
    let (before, after) = (packets[pause], packets[pause + 1]);
    // The frame after the pause comes after more than twice the last one's duration, which
    // MSE takes for a discontinuity: it must be a keyframe, or players wait for the next one.
    assert!(
        after.0 - before.0 > 2 * before.1.unwrap(),
        "{before:?} {after:?}"
    );
    assert!(
        after.2,
        "the frame after the pause is a keyframe: {packets:?}"
    );
    // Steady frames are declared to last about their spacing, and need no keyframe.
    let keyframes: Vec<i64> = packets.iter().filter(|p| p.2).map(|p| p.0).collect();
    assert_eq!(keyframes, vec![packets[0].0, after.0], "{packets:?}");
    let steady = &packets[pause + 2..pause + 20];
    for w in steady.windows(2) {
        let spacing = w[1].0 - w[0].0;
        assert!(
            w[0].1.unwrap() >= spacing && w[0].1.unwrap() <= 2 * spacing,
            "{w:?}: {packets:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presenter_reconnect_keeps_the_viewer_stream_continuous() {
    let server = start_annotating(None, PipelineConfig::default(), HttpConfig::default()).await;
    let viewer = tokio::spawn(ws_collect(server.addr, Duration::from_secs(6)));
    let pieces = paced_pieces(&fixture("face.webm"));
    let two_seconds = &pieces[..60];
    for round in 0..2 {
        let mut presenter = connect_presenter(server.addr, &format!("token={TOKEN}"))
            .await
            .unwrap_or_else(|code| panic!("round {round}: refused with {code}"));
        assert!(publish(&mut presenter, two_seconds, true).await.is_none());
        // Vanish without a close frame, as a crashed browser tab would.
        drop(presenter);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let received = viewer.await.unwrap();
    assert_eq!(
        received.inits.len(),
        1,
        "the viewer never had to re-initialise"
    );
    assert!(!received.closed);
    let frames = assert_decodes_from_start("viewer across a reconnect", &received.bytes);
    assert!(frames > 90, "{frames} frames from two 2 s sessions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_end_only_their_own_connection() {
    // The demo keeps running through all of this; one viewer watches the whole time.
    let server = start_annotating(
        Some(Input::File(fixture_path("face.webm"))),
        PipelineConfig::default(),
        HttpConfig::default(),
    )
    .await;
    let addr = server.addr;
    let viewer = tokio::spawn(ws_collect(addr, Duration::from_secs(12)));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // No token, a wrong token: 401 before any upgrade.
    assert_eq!(connect_presenter(addr, "").await.err(), Some(401));
    assert_eq!(
        connect_presenter(addr, "token=wrong").await.err(),
        Some(401)
    );
    let (code, _, body) = http_put(addr, "/publish?token=wrong", b"\x1a\x45\xdf\xa3").await;
    assert_eq!(code, 401, "{}", String::from_utf8_lossy(&body));

    // Garbage.
    let mut socket = connect_presenter(addr, &format!("token={TOKEN}"))
        .await
        .unwrap();
    socket
        .send(Message::binary(&b"\x00\x01garbage"[..]))
        .await
        .unwrap();
    let closed = wait_closed(&mut socket).await;
    assert_eq!(
        closed.code,
        Some(u16::from(CloseCode::Unsupported)),
        "{closed:?}"
    );
    assert!(closed.reason.contains("not valid live WebM"), "{closed:?}");

    // A codec we cannot decode: the CodecID of a real file, renamed.
    let mut wrong_codec = fixture("vp8.webm");
    let at = wrong_codec.windows(5).position(|w| w == b"V_VP8").unwrap();
    wrong_codec[at..at + 5].copy_from_slice(b"V_XYZ");
    let mut socket = connect_presenter(addr, &format!("token={TOKEN}"))
        .await
        .unwrap();
    let closed = refused(&mut socket, &paced_pieces(&wrong_codec)[..3]).await;
    assert!(
        closed.reason.contains("V_XYZ is not supported"),
        "{closed:?}"
    );

    // An oversized element: a SimpleBlock claiming 1 GiB, inside a MediaRecorder recording's
    // unknown-size Cluster (in a known-size one, running past the Cluster is caught first).
    let good = fixture("mediarecorder-vp8.webm");
    let first_block = paced_pieces(&good)[0].1.len();
    let mut oversized = good[..first_block].to_vec();
    oversized.extend_from_slice(&[0xA3, 0x08, 0x40, 0, 0, 0]);
    let mut socket = connect_presenter(addr, &format!("token={TOKEN}"))
        .await
        .unwrap();
    socket.send(Message::binary(oversized)).await.unwrap();
    let closed = wait_closed(&mut socket).await;
    assert!(closed.reason.contains("limit"), "{closed:?}");

    // Far faster than real time: a 6 s file in one go.
    let mut socket = connect_presenter(addr, &format!("token={TOKEN}"))
        .await
        .unwrap();
    let closed = refused(&mut socket, &paced_pieces(&fixture("face.webm"))).await;
    assert_eq!(
        closed.code,
        Some(u16::from(CloseCode::Policy)),
        "{closed:?}"
    );
    assert!(closed.reason.contains("ahead of real time"), "{closed:?}");

    // One presenter at a time: 409, unless taking over, which ends the first with a reason.
    let pieces = paced_pieces(&fixture("face.webm"));
    let mut first = connect_presenter(addr, &format!("token={TOKEN}"))
        .await
        .unwrap();
    assert!(publish(&mut first, &pieces[..10], true).await.is_none());
    assert_eq!(
        connect_presenter(addr, &format!("token={TOKEN}"))
            .await
            .err(),
        Some(409)
    );
    let mut second = connect_presenter(addr, &format!("token={TOKEN}&takeover=1"))
        .await
        .expect("takeover accepted");
    let closed = wait_closed(&mut first).await;
    assert!(closed.reason.contains("took over"), "{closed:?}");
    assert_eq!(
        closed.code,
        Some(1000),
        "taken over is a normal end: {closed:?}"
    );
    // The new presenter vanishes mid-Cluster.
    let outcome = publish(&mut second, &pieces[..20], true).await;
    assert!(
        outcome.is_none(),
        "the new presenter was refused: {outcome:?}"
    );
    let half_block = &pieces[20].1[..pieces[20].1.len() / 2];
    second
        .send(Message::binary(half_block.to_vec()))
        .await
        .unwrap();
    drop(second);

    // Through all of it, the viewer kept a stream that decodes without one error.
    let received = viewer.await.unwrap();
    assert!(!received.closed, "the viewer was disconnected");
    assert_eq!(received.inits.len(), 1);
    let frames = assert_decodes_from_start("viewer during bad uploads", &received.bytes);
    assert!(
        frames > 200,
        "only {frames} frames in 12 s: {}",
        status(addr).await
    );
    let (code, _, _) = http_get(addr, "/healthz", Duration::from_secs(2)).await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_websocket_checks_origin() {
    let server = start_annotating(None, PipelineConfig::default(), HttpConfig::default()).await;
    use tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{}/ws/publish?token={TOKEN}", server.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
}

/// A raw HTTP PUT with a small body; returns (status, headers, body).
async fn http_put(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw)).await;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, raw[split + 4..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_from_mediarecorder_and_vp9_are_decoded() {
    let server = start_annotating(None, PipelineConfig::default(), HttpConfig::default()).await;
    // Chrome's `video/webm;codecs=h264` recording (Annex-B, no CodecPrivate), then VP9.
    for (name, codec) in [
        ("mediarecorder-h264.webm", "V_MPEG4/ISO/AVC"),
        ("vp9.webm", "V_VP9"),
    ] {
        let before = pipeline_status(server.addr).await["frames_out"]
            .as_u64()
            .unwrap_or(0);
        let mut presenter = connect_presenter(server.addr, &format!("token={TOKEN}"))
            .await
            .unwrap();
        let pieces = paced_pieces(&fixture(name));
        let viewer = tokio::spawn(ws_collect(server.addr, Duration::from_millis(2500)));
        let outcome = publish(&mut presenter, &pieces, true).await;
        assert!(outcome.is_none(), "{name}: refused: {outcome:?}");
        let stats = pipeline_status(server.addr).await;
        assert_eq!(stats["input_codec"], codec, "{stats}");
        assert_eq!(stats["decode_errors"], 0, "{name}: {stats}");
        let encoded = stats["frames_out"].as_u64().unwrap() - before;
        assert!(
            encoded > 30,
            "{name}: only {encoded} frames encoded: {stats}"
        );
        presenter.close(None).await.unwrap();
        assert_decodes_from_start(name, &viewer.await.unwrap().bytes);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gst_launch_publishes_through_a_chunked_put() {
    let server = start_annotating(None, PipelineConfig::default(), HttpConfig::default()).await;
    // gst-launch's own HTTP sink sends one PUT per buffer; one chunked PUT of the whole
    // stream is what /publish takes, and `curl -T -` makes exactly that from a pipe.
    let script = format!(
        "gst-launch-1.0 -q videotestsrc is-live=true num-buffers=90 \
         ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! vp8enc deadline=1 keyframe-max-dist=30 ! webmmux streamable=true ! fdsink fd=1 \
         | curl -sS -T - 'http://{}/publish?token={TOKEN}'",
        server.addr
    );
    let output = tokio::task::spawn_blocking(move || {
        Command::new("sh").args(["-c", &script]).output().unwrap()
    })
    .await
    .unwrap();
    let answer = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(answer.starts_with("upload finished"), "{answer}");
    let stats = pipeline_status(server.addr).await;
    assert!(stats["frames_out"].as_u64().unwrap() >= 60, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_publisher_that_vanishes_mid_body_is_released() {
    use tokio::io::AsyncWriteExt;
    let server = start_annotating(
        Some(Input::File(fixture_path("face.webm"))),
        PipelineConfig::default(),
        HttpConfig::default(),
    )
    .await;
    let addr = server.addr;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /publish?token={TOKEN} HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for (_, piece) in paced_pieces(&fixture("face.webm")).iter().take(15) {
        let chunk = [format!("{:x}\r\n", piece.len()).as_bytes(), piece, b"\r\n"].concat();
        stream.write_all(&chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(33)).await;
    }
    assert_eq!(pipeline_status(addr).await["input"], "presenter:http");
    // The connection dies with the body unfinished (no last chunk).
    drop(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stats = pipeline_status(addr).await;
        // The input is named by its file name only (/api/status shows no server paths).
        if stats["presenter_connected"] == false && stats["input"] == "file:face.webm" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the publisher was never released: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And a new presenter is not refused as busy.
    assert!(connect_presenter(addr, &format!("token={TOKEN}"))
        .await
        .is_ok());
}

/// The audio blocks a `/ws/view` viewer has received so far, read as they come.
struct AudioCount {
    socket: PublishSocket,
    reader: lenscast::webm::StreamReader,
    audio: usize,
}

impl AudioCount {
    /// Reads what the viewer has been sent until `audio` reaches `want`, for up to `wait`.
    async fn until(&mut self, want: usize, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        while self.audio < want {
            let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, self.socket.next()).await
            else {
                return false;
            };
            if let Message::Binary(bytes) = message {
                self.reader.push(&bytes);
                while let Some(event) = self.reader.next_event().unwrap() {
                    if matches!(event, lenscast::webm::Event::Block(b) if b.track == AUDIO_TRACK) {
                        self.audio += 1;
                    }
                }
            }
        }
        true
    }
}

/// A player's live edge is where its audio and video overlap, and Opus comes in 20-60 ms
/// packets later than the frames beside it: an audio block that waited at the server for the
/// next video frame (up to a frame interval) would be latency for every viewer. The source is
/// a real ffmpeg-made file (15 fps VP8, 20 ms Opus) sent block by block in time order, as
/// every muxer writes; after each audio block the viewer must have it before the next block
/// is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_reaches_viewers_without_waiting_for_the_next_video_frame() {
    let server = start_annotating(None, PipelineConfig::default(), HttpConfig::default()).await;
    let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws/view", server.addr))
        .await
        .expect("viewer connects");
    let mut viewer = AudioCount {
        socket,
        reader: lenscast::webm::StreamReader::new(),
        audio: 0,
    };
    let mut presenter = connect_presenter(server.addr, &format!("token={TOKEN}"))
        .await
        .expect("presenter accepted");
    let bytes = fixture("vp8-opus.webm");
    // Which track each piece ends with (paced_pieces cuts after every block).
    let mut reader = lenscast::webm::StreamReader::new();
    reader.push(&bytes);
    let (mut audio_track, mut tracks) = (None, Vec::new());
    while let Some(event) = reader.next_event().unwrap() {
        match event {
            lenscast::webm::Event::Tracks(t) => audio_track = t.audio().map(|a| a.number),
            lenscast::webm::Event::Block(b) => tracks.push(b.track),
            _ => {}
        }
    }
    let pieces = paced_pieces(&bytes);
    let started = tokio::time::Instant::now();
    let mut checked = 0;
    for (i, (due, piece)) in pieces.iter().enumerate() {
        tokio::time::sleep_until(started + *due).await;
        presenter
            .send(Message::binary(piece.clone()))
            .await
            .unwrap();
        if tracks.get(i).copied() != audio_track {
            continue;
        }
        if viewer.audio == 0 {
            // Audio before the first video keyframe has no Cluster to go in: wait for the
            // first block through to start checking.
            viewer.until(1, Duration::from_millis(200)).await;
            continue;
        }
        let want = viewer.audio + 1;
        assert!(
            viewer.until(want, Duration::from_secs(3)).await,
            "audio block {i} (at {due:?}) did not reach the viewer until more was sent \
             ({} audio blocks received)",
            viewer.audio
        );
        checked += 1;
    }
    // 3 s of 20 ms Opus: nearly all of its 150 blocks were checked.
    assert!(checked > 100, "only {checked} audio blocks checked");
    server.shut_down().await;
}

/// H.264 with B-frames: its blocks come in decode order with their times out of order, and
/// the decoder holds pictures back to put them in order (audio then waits for the video it
/// came beside). The viewer stream must still keep the order Chromium's WebM parser demands
/// (no block before the one written before it in its Cluster, none before the Cluster's own
/// time), every Cluster's video must start at a keyframe, and ffmpeg must decode sound and
/// pictures cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_beside_reordered_h264_stays_in_cluster_order() {
    let server = start_annotating(None, PipelineConfig::default(), HttpConfig::default()).await;
    let h264 = [
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-bf",
        "2",
        "-live",
        "1",
    ];
    let received = ffmpeg_publishes(server.addr, &h264, "matroska").await;
    let stats = pipeline_status(server.addr).await;
    assert_eq!(stats["input_codec"], "V_MPEG4/ISO/AVC", "{stats}");
    let mut reader = lenscast::webm::StreamReader::new();
    reader.push(&received.bytes);
    let (mut last, mut audio, mut video) = (None, 0, 0);
    let mut first_video = true;
    while let Some(event) = reader.next_event().unwrap() {
        match event {
            lenscast::webm::Event::ClusterStart { .. } => (last, first_video) = (None, true),
            lenscast::webm::Event::Block(b) => {
                if b.track != AUDIO_TRACK && std::mem::take(&mut first_video) {
                    assert!(
                        b.keyframe,
                        "a Cluster whose video starts with a delta frame: {b:?}"
                    );
                }
                assert!(
                    b.relative_timecode >= 0,
                    "a block before its Cluster: {b:?}"
                );
                assert!(
                    last.is_none_or(|last| b.timecode >= last),
                    "block at {} after one at {last:?} in the same Cluster",
                    b.timecode
                );
                last = Some(b.timecode);
                if b.track == AUDIO_TRACK {
                    audio += 1;
                } else {
                    video += 1;
                }
            }
            _ => {}
        }
    }
    assert!(
        audio > 50 && video > 30,
        "{audio} audio and {video} video blocks"
    );
    let errors = ffmpeg_errors(&received.bytes);
    assert!(errors.trim().is_empty(), "{errors}");
}
