//! The real server on 127.0.0.1:0, real sources, real clients; ffmpeg judges what viewers got.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use futures_util::FutureExt;
use lenscast::http::HttpConfig;
use lenscast::hub::{Chunk, ChunkKind, Hub, Limits, Viewer};
use lenscast::media::Resolution;
use lenscast::source::{self, Feeder, Input, Slot, SourceKind, Target};
use lenscast::webm::{Event, LiveMuxer, StreamReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_joining_at_different_moments_decode_from_their_first_frame() {
    // A 3 s file looped: the viewers below join before, during and after a loop boundary.
    let server = start(
        Some(Input::File(fixture_path("vp8-opus.webm"))),
        HttpConfig::default(),
    )
    .await;
    let mut viewers = Vec::new();
    for (i, delay_ms) in [200u64, 1500, 2900].into_iter().enumerate() {
        let addr = server.addr;
        viewers.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            (i, ws_collect(addr, Duration::from_millis(2600)).await)
        }));
    }
    for viewer in viewers {
        let (i, received) = viewer.await.unwrap();
        assert_eq!(received.inits.len(), 1, "viewer {i}: one init message");
        assert_eq!(
            received.inits[0]["mime"], "video/webm; codecs=\"vp8,opus\"",
            "viewer {i}"
        );
        let frames = assert_decodes_from_start(&format!("viewer {i}"), &received.bytes);
        // ~2.6 s at 15-30 fps; a join that waited for nothing gets most of them.
        assert!(frames >= 30, "viewer {i}: only {frames} video frames");
        assert!(!received.closed, "viewer {i} was disconnected");
    }
    let status = status(server.addr).await;
    assert_eq!(status["source"]["state"], "live");
    assert_eq!(status["viewers_total"], 3);
    assert!(status["bytes_sent"].as_u64().unwrap() > 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_loop_keeps_timestamps_moving_forward() {
    let server = start(
        Some(Input::File(fixture_path("vp8.webm"))),
        HttpConfig::default(),
    )
    .await;
    // vp8.webm is ~2 s: 5 s of viewing spans at least two loop boundaries.
    let received = ws_collect(server.addr, Duration::from_secs(5)).await;
    let frames = assert_decodes_from_start("looped viewer", &received.bytes);
    let file_frames = packets(&std::fs::read(fixture_path("vp8.webm")).unwrap(), "v").len();
    assert!(
        frames > file_frames + 10,
        "{frames} frames in 5 s of a {file_frames}-frame file: it did not loop"
    );
    // Our own reader agrees: Cluster timestamps only move forward.
    let mut reader = StreamReader::new();
    reader.push(&received.bytes);
    let mut timecodes = Vec::new();
    while let Some(event) = reader.next_event().unwrap() {
        if let Event::ClusterStart { timecode, .. } = event {
            timecodes.push(timecode);
        }
    }
    assert!(timecodes.windows(2).all(|w| w[1] > w[0]), "{timecodes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_webm_over_http_plays_in_ffmpeg() {
    let server = start(
        Some(Input::File(fixture_path("face.webm"))),
        HttpConfig::default(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (code, head, body) = http_get(server.addr, "/live.webm", Duration::from_secs(3)).await;
    assert_eq!(code, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: video/webm"),
        "{head}"
    );
    assert_decodes_from_start("/live.webm", &body);

    // And the real ffmpeg CLI reads the URL itself, as a user would.
    let url = format!("http://{}/live.webm", server.addr);
    assert_ffmpeg_reads_cleanly(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_only_opus_from_gst_launch_on_stdin_reaches_viewers() {
    // ~4 s of live Opus (200 buffers of 1024 samples at 48 kHz), then gst-launch exits.
    let mut gst = Command::new("gst-launch-1.0")
        .args(["-q", "audiotestsrc", "is-live=true", "num-buffers=200", "!"])
        .args(["audio/x-raw,rate=48000", "!", "opusenc", "!"])
        .args(["webmmux", "streamable=true", "!", "fdsink", "fd=1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("gst-launch-1.0 runs");
    let gst_out = gst.stdout.take().unwrap();
    let _gst = KillOnDrop(gst);
    let (_server, addr) = spawn_stdin_server(Stdio::from(gst_out));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = ws_collect(addr, Duration::from_secs(2)).await;
    assert_eq!(received.inits.len(), 1);
    assert_eq!(received.inits[0]["mime"], "audio/webm; codecs=\"opus\"");
    assert!(received.inits[0]["width"].is_null());
    let errors = ffmpeg_errors(&received.bytes);
    assert!(errors.trim().is_empty(), "{errors}");
    let audio = packets(&received.bytes, "a");
    assert!(audio.len() > 50, "only {} Opus packets in 2 s", audio.len());

    // When stdin ends the server keeps running, and a viewer stays connected, waiting.
    let waiting = tokio::spawn(ws_collect(addr, Duration::from_secs(6)));
    let mut ended = false;
    for _ in 0..100 {
        if status(addr).await["source"]["state"] == "ended" {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ended, "the source never showed as ended");
    let waiting = waiting.await.unwrap();
    assert!(
        !waiting.closed,
        "the viewer was disconnected when stdin ended"
    );
    let (code, _, body) = http_get(addr, "/healthz", Duration::from_secs(2)).await;
    assert_eq!((code, body.as_slice()), (200, b"ok\n".as_slice()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_stdin_ends_the_source_not_the_server() {
    let mut feeder = Command::new("sh")
        .args(["-c", "printf 'this is not webm at all'; sleep 30"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let feeder_out = feeder.stdout.take().unwrap();
    let _feeder = KillOnDrop(feeder);
    let (_server, addr) = spawn_stdin_server(Stdio::from(feeder_out));
    let mut reason = serde_json::Value::Null;
    for _ in 0..50 {
        let status = status(addr).await;
        if status["source"]["state"] == "ended" {
            reason = status["source"]["ended_reason"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reason = reason
        .as_str()
        .expect("source ended with a reason")
        .to_string();
    assert!(reason.contains("not valid live WebM"), "{reason}");
    let (code, _, _) = http_get(addr, "/healthz", Duration::from_secs(2)).await;
    assert_eq!(code, 200);
}

/// Feeds a whole file's events through the slot (passthrough) as one source, unpaced.
async fn feed(slot: &Slot, name: &str, path: &str) {
    let bytes = std::fs::read(fixture_path(path)).unwrap();
    let guard = slot.claim(name, SourceKind::Input, false).await.unwrap();
    let mut feeder = Feeder::new(guard, None, false);
    source::read_all(bytes.as_slice(), &mut feeder)
        .await
        .unwrap();
    feeder.end("end of stream").await;
}

/// Takes every chunk a viewer has ready without waiting.
fn drain(viewer: &mut Viewer) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    // `unconstrained`: tokio's coop budget would otherwise report Pending after ~128 receives.
    while let Some(Ok(chunk)) = tokio::task::unconstrained(viewer.next()).now_or_never() {
        chunks.push(chunk);
    }
    chunks
}

fn concat(chunks: &[Chunk]) -> Vec<u8> {
    chunks
        .iter()
        .flat_map(|c| c.bytes.iter().copied())
        .collect()
}

#[tokio::test]
async fn a_restarted_source_continues_the_same_timeline() {
    let hub = Hub::new(Limits {
        chunks: 100_000,
        bytes: usize::MAX,
        ..Limits::default()
    });
    let slot = Slot::new(Target::remux(hub.clone()), None, Resolution::DEFAULT);
    let mut viewer = hub.subscribe();
    // Two separate stdin-like sources, one after the other, both starting at timestamp 0.
    feed(&slot, "stdin", "vp8.webm").await;
    feed(&slot, "stdin", "vp8.webm").await;
    let chunks = drain(&mut viewer);
    let inits = chunks
        .iter()
        .filter(|c| matches!(c.kind, ChunkKind::Init(_)))
        .count();
    assert_eq!(inits, 1, "the same init segment is not sent twice");
    let bytes = concat(&chunks);
    let one = packets(&std::fs::read(fixture_path("vp8.webm")).unwrap(), "v").len();
    let frames = assert_decodes_from_start("restarted source", &bytes);
    assert_eq!(frames, 2 * one, "every frame of both sources arrived");
}

#[tokio::test]
async fn a_slow_viewer_resyncs_at_a_keyframe_cluster_and_others_lose_nothing() {
    let bytes = std::fs::read(fixture_path("vp8-opus.webm")).unwrap();
    // A channel of 32 chunks: a viewer that does not read for a second of video lags.
    let hub = Hub::new(Limits {
        chunks: 32,
        bytes: usize::MAX,
        ..Limits::default()
    });
    let mut fast = hub.subscribe();
    let mut slow = hub.subscribe();
    let mut fast_chunks = Vec::new();
    let mut slow_chunks = Vec::new();
    let mut reader = StreamReader::new();
    reader.push(&bytes);
    let mut muxer = LiveMuxer::new();
    let mut pushed = 0;
    while let Some(event) = reader.next_event().unwrap() {
        let mut out = Vec::new();
        muxer.push(event, &mut out);
        hub.publish(out);
        pushed += 1;
        fast_chunks.extend(drain(&mut fast));
        // The slow viewer reads only now and then, far less often than the channel turns over.
        if pushed % 150 == 0 {
            slow_chunks.extend(drain(&mut slow));
        }
    }
    slow_chunks.extend(drain(&mut slow));

    // The fast viewer got the whole stream: it decodes, and has every frame of the file.
    let file_frames = packets(&bytes, "v").len();
    let fast_frames = assert_decodes_from_start("fast viewer", &concat(&fast_chunks));
    assert_eq!(fast_frames, file_frames);

    // The slow viewer lagged, was counted, and every resume was at a keyframe Cluster,
    // so what it got still decodes without a single error.
    let status = hub.status();
    assert!(status.lag_resyncs >= 1, "the slow viewer never lagged");
    let slow_frames = assert_decodes_from_start("slow viewer", &concat(&slow_chunks));
    assert!(slow_frames < file_frames, "the slow viewer skipped frames");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_check_origin() {
    let server = start(
        Some(Input::File(fixture_path("vp8.webm"))),
        HttpConfig {
            allowed_origins: vec!["https://studio.example".into()],
            ..HttpConfig::default()
        },
    )
    .await;
    let addr = server.addr;
    let connect = |origin: &'static str| view_upgrade_status(addr, None, origin);
    let same_origin: &'static str = Box::leak(format!("http://{}", server.addr).into_boxed_str());
    assert_eq!(connect(same_origin).await, 101);
    assert_eq!(connect("https://studio.example").await, 101);
    assert_eq!(connect("http://evil.example").await, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_status_and_health_are_served() {
    let server = start(
        Some(Input::File(fixture_path("vp8.webm"))),
        HttpConfig::default(),
    )
    .await;
    let (code, head, body) = http_get(server.addr, "/", Duration::from_secs(2)).await;
    assert_eq!(code, 200);
    assert!(head.contains("text/html"));
    assert!(String::from_utf8_lossy(&body).contains("viewer.js"));
    let (code, head, _) = http_get(server.addr, "/viewer.js", Duration::from_secs(2)).await;
    assert_eq!(code, 200);
    assert!(head.contains("text/javascript"));
    for path in [
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/src/main.rs",
        "/nope.js",
    ] {
        let (code, _, _) = http_get(server.addr, path, Duration::from_secs(2)).await;
        assert_eq!(code, 404, "{path}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = status(server.addr).await;
    // The file's name, not its path: /api/status is public.
    assert_eq!(status["source"]["name"], "file:vp8.webm");
    assert_eq!(status["source"]["stream"]["width"], 320);
    assert_eq!(status["viewers"], 0);
    assert!(status["uptime_s"].as_f64().unwrap() > 0.0);
}
