//! Edge mode on loopback: an origin, two edges and an edge of an edge, with viewers on each.
//! Every viewer's stream decodes from its first byte; the edges' viewers get every frame the
//! origin's viewer got; the origin is stopped and started again mid-stream and the edges'
//! viewers stay connected and carry on; the relay token; HLS proxied from the origin.

mod common;

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use lenscast::http::HttpConfig;
use lenscast::relay::RelayConfig;
use lenscast::server::ServerConfig;
use lenscast::source::Input;
use lenscast::webm::{Event, StreamReader};

/// How long the viewers watch (the issue asks for 60 s; `LENSCAST_RELAY_SECONDS` shortens it
/// for a quick local run).
fn watch_seconds() -> u64 {
    std::env::var("LENSCAST_RELAY_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

fn origin_config(relay_token: Option<&str>) -> ServerConfig {
    ServerConfig {
        hls: Some(lenscast::hls::HlsConfig::default()),
        http: HttpConfig {
            relay_token: relay_token.map(str::to_string),
            ..HttpConfig::default()
        },
        // The origin runs its demo whether or not anyone watches, like a live camera.
        pause_unwatched: false,
        ..ServerConfig::default()
    }
}

async fn start_edge(origin: SocketAddr, token: Option<&str>) -> TestServer {
    let config = ServerConfig {
        relay: Some(
            RelayConfig::parse(&format!("http://{origin}"), token.map(str::to_string)).unwrap(),
        ),
        http: HttpConfig {
            relay_token: token.map(str::to_string),
            ..HttpConfig::default()
        },
        ..ServerConfig::default()
    };
    start_server(config, None).await
}

/// A hash of each video frame a viewer received, in order (what identifies a frame across
/// servers: the edges put the same frames on their own timelines).
fn video_frames(bytes: &[u8]) -> Vec<u64> {
    let mut reader = StreamReader::new();
    reader.push(bytes);
    let mut video = None;
    let mut frames = Vec::new();
    // A capture cut off mid-element at the end is normal: stop at the first error.
    while let Ok(Some(event)) = reader.next_event() {
        match event {
            Event::Tracks(tracks) => video = tracks.video().map(|t| t.number),
            Event::Block(block) if Some(block.track) == video => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                block.frame().hash(&mut hasher);
                frames.push(hasher.finish());
            }
            _ => {}
        }
    }
    frames
}

/// The time of the last block in a captured stream, ms.
fn last_block_ms(bytes: &[u8]) -> f64 {
    let mut reader = StreamReader::new();
    reader.push(bytes);
    let mut last = 0;
    while let Ok(Some(event)) = reader.next_event() {
        if let Event::Block(block) = event {
            last = last.max(block.time.as_nanos());
        }
    }
    last as f64 / 1e6
}

async fn wait_for_relay(addr: SocketAddr, connected: bool) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = status(addr).await;
        if status["relay"]["connected"] == connected {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay never became connected={connected}: {}",
            status["relay"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_and_an_edge_of_an_edge_lose_nothing_the_origin_sends() {
    let seconds = watch_seconds();
    let origin = start_server(origin_config(None), Some(Input::demo())).await;
    let edge_a = start_edge(origin.addr, None).await;
    let edge_b = start_edge(origin.addr, None).await;
    let edge_of_edge = start_edge(edge_a.addr, None).await;
    for edge in [&edge_a, &edge_b, &edge_of_edge] {
        wait_for_relay(edge.addr, true).await;
    }

    // One viewer per server, all for the same time.
    let watch = Duration::from_secs(seconds);
    let viewers: Vec<_> = [origin.addr, edge_a.addr, edge_b.addr, edge_of_edge.addr]
        .into_iter()
        .map(|addr| tokio::spawn(ws_collect(addr, watch)))
        .collect();
    let mut received = Vec::new();
    for viewer in viewers {
        received.push(viewer.await.unwrap());
    }
    // Where each server's media ends now, just after its viewer stopped capturing.
    let mut media_ends = Vec::new();
    for addr in [origin.addr, edge_a.addr, edge_b.addr, edge_of_edge.addr] {
        media_ends.push(status(addr).await["media_end_ms"].as_f64());
    }
    let labels = ["origin", "edge a", "edge b", "edge of edge a"];
    for (label, got) in labels.iter().zip(&received) {
        assert!(!got.closed, "{label}'s viewer was disconnected");
        let frames = assert_decodes_from_start(label, &got.bytes);
        assert!(
            frames as u64 >= seconds * 20,
            "{label}: {frames} frames in {seconds} s"
        );
    }

    // Every frame the origin's viewer got, the edges' viewers got too, but for the first
    // second (an edge viewer joins at the edge's keyframe) and the last (still on its way
    // through up to two relays when the capture stopped).
    let origin_frames = video_frames(&received[0].bytes);
    let margin = 30;
    assert!(
        origin_frames.len() > 2 * margin,
        "{} frames",
        origin_frames.len()
    );
    let expected = &origin_frames[margin..origin_frames.len() - margin];
    for (label, got) in labels.iter().zip(&received).skip(1) {
        let frames: HashSet<u64> = video_frames(&got.bytes).into_iter().collect();
        let missing = expected.iter().filter(|f| !frames.contains(f)).count();
        assert_eq!(
            missing,
            0,
            "{label} lacks {missing} of the {} frames the origin's viewer got",
            expected.len()
        );
    }

    // Each server's media_end_ms is on the timeline its viewers get: just after the last
    // block its viewer received.
    for (label, (end, got)) in labels.iter().zip(media_ends.into_iter().zip(&received)) {
        let end = end.unwrap_or_else(|| panic!("{label} has no media_end_ms"));
        let last = last_block_ms(&got.bytes);
        assert!(
            end >= last && end - last < 3000.0,
            "{label}: media_end_ms {end}, its viewer's last block at {last} ms"
        );
    }
    // Each edge knows how far behind the server it pulls from it is: a fraction of a second
    // on loopback (a frame or two, and what the poll's round trip adds).
    for (label, edge) in labels[1..].iter().zip([&edge_a, &edge_b, &edge_of_edge]) {
        let lag = wait_for_lag(edge.addr, |lag| lag < 0.5).await;
        println!("{label}: {lag:.3} s behind");
    }

    for edge in [edge_of_edge, edge_a, edge_b] {
        edge.shut_down().await;
    }
    origin.shut_down().await;
}

/// Waits (up to 15 s) until the edge's `relay.lag_s` meets `ok`, and returns it; also checks
/// that `/metrics` says the same.
async fn wait_for_lag(addr: SocketAddr, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let relay = status(addr).await["relay"].clone();
        if let Some(lag) = relay["lag_s"].as_f64().filter(|lag| ok(*lag)) {
            let (_, _, metrics) = http_get(addr, "/metrics", Duration::from_secs(2)).await;
            let metrics = String::from_utf8(metrics).unwrap();
            let line = metrics
                .lines()
                .find(|l| l.starts_with("lenscast_relay_lag_seconds "))
                .unwrap_or_else(|| panic!("no lag in /metrics:\n{metrics}"));
            let value: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            assert!(
                value.is_finite() && value >= 0.0 && (value - lag).abs() < 2.0,
                "/metrics says {line}, /api/status {lag}"
            );
            return lag;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay's lag never came right: {relay}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A stand-in origin on loopback: `/live.webm` sends `stream` at once and then holds the
/// connection open; `/api/status` says its media ends at `media_end_ms`.
async fn fake_origin(
    stream: Vec<u8>,
    media_end_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> SocketAddr {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stream = std::sync::Arc::new(stream);
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let stream = stream.clone();
            let media_end_ms = media_end_ms.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                if head.starts_with("GET /live.webm ") {
                    let chunk = format!("HTTP/1.1 200 OK\r\ncontent-type: video/webm\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n", stream.len());
                    socket.write_all(chunk.as_bytes()).await.unwrap();
                    socket.write_all(&stream).await.unwrap();
                    socket.write_all(b"\r\n").await.unwrap();
                    // More is coming, as from a live origin: hold the stream open.
                    tokio::time::sleep(Duration::from_secs(60)).await;
                } else if head.starts_with("GET /api/status ") {
                    let body = serde_json::json!({
                        "media_end_ms": media_end_ms.load(Ordering::Relaxed) as f64,
                    })
                    .to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                } else {
                    let _ = socket
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_behind_the_origin_is_what_the_origin_has_that_the_edge_has_not() {
    // The edge's lag is the origin's newest media time less the newest it received, so a
    // stand-in origin that says it is ahead by a known amount makes a known lag.
    use std::sync::atomic::{AtomicU64, Ordering};
    let stream = std::fs::read(fixture_path("face.webm")).unwrap();
    let last_ms = last_block_ms(&stream).round() as u64;
    assert!(last_ms > 1000, "the fixture is {last_ms} ms long");
    let media_end_ms = std::sync::Arc::new(AtomicU64::new(last_ms + 4000));
    let origin = fake_origin(stream, media_end_ms.clone()).await;
    let edge = start_edge(origin, None).await;
    wait_for_relay(edge.addr, true).await;

    // Once the edge has taken in the whole stream: the 4 s it lacks.
    wait_for_lag(edge.addr, |lag| (lag - 4.0).abs() < 0.01).await;
    // The origin's media ends where the edge's does: no lag.
    media_end_ms.store(last_ms, Ordering::Relaxed);
    wait_for_lag(edge.addr, |lag| lag < 0.01).await;
    edge.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_viewers_stay_through_an_origin_restart() {
    let origin = start_server(origin_config(None), Some(Input::demo())).await;
    let origin_addr = origin.addr;
    let edge = start_edge(origin_addr, None).await;
    let edge_of_edge = start_edge(edge.addr, None).await;
    wait_for_relay(edge.addr, true).await;
    wait_for_relay(edge_of_edge.addr, true).await;

    let viewers: Vec<_> = [edge.addr, edge_of_edge.addr]
        .into_iter()
        .map(|addr| tokio::spawn(ws_collect(addr, Duration::from_secs(14))))
        .collect();
    let http_viewer = tokio::spawn({
        let addr = edge.addr;
        async move { http_get(addr, "/live.webm", Duration::from_secs(14)).await }
    });

    // The origin goes away mid-stream...
    tokio::time::sleep(Duration::from_secs(4)).await;
    origin.shut_down().await;
    let status = wait_for_relay(edge.addr, false).await;
    assert!(
        status["relay"]["last_error"].is_string(),
        "{}",
        status["relay"]
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // ...and comes back on the same address.
    let listener = tokio::net::TcpListener::bind(origin_addr)
        .await
        .expect("the origin's port again");
    let origin = start_server_on(listener, origin_config(None), Some(Input::demo()));
    let status = wait_for_relay(edge.addr, true).await;
    assert!(status["relay"]["reconnects"].as_u64().unwrap() >= 1);

    let labels = ["edge (ws)", "edge of edge (ws)"];
    for (label, viewer) in labels.iter().zip(viewers) {
        let got = viewer.await.unwrap();
        assert!(!got.closed, "{label}'s viewer was disconnected");
        // One stream, decodable from its first byte, with frames from before the outage and
        // after it (14 s of watching, about 3 of them without an origin).
        let frames = assert_decodes_from_start(label, &got.bytes);
        assert!(frames >= 200, "{label}: only {frames} frames");
    }
    let (code, _, body) = http_viewer.await.unwrap();
    assert_eq!(code, 200);
    let frames = assert_decodes_from_start("edge (/live.webm)", &body);
    assert!(frames >= 200, "edge /live.webm: only {frames} frames");

    edge_of_edge.shut_down().await;
    edge.shut_down().await;
    origin.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_token_and_hls_through_an_edge() {
    let origin = start_server(origin_config(Some("relay-secret")), Some(Input::demo())).await;
    // Without the token, /relay.webm is refused; with it, it streams.
    let (code, _, body) = http_get(
        origin.addr,
        "/relay.webm?token=nope",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(code, 401, "{}", String::from_utf8_lossy(&body));
    let (code, _, _) = http_get(origin.addr, "/relay.webm", Duration::from_secs(2)).await;
    assert_eq!(code, 401);

    let edge = start_edge(origin.addr, Some("relay-secret")).await;
    wait_for_relay(edge.addr, true).await;
    let got = ws_collect(edge.addr, Duration::from_secs(3)).await;
    assert_decodes_from_start("token edge", &got.bytes);
    // The origin counts the edge as a relay, not a viewer of its own.
    let metrics = http_get(origin.addr, "/metrics", Duration::from_secs(2))
        .await
        .2;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("lenscast_viewers{transport=\"relay\"} 1"),
        "{metrics}"
    );
    // The token never shows in the edge's status.
    let status = status(edge.addr).await;
    assert!(!status.to_string().contains("relay-secret"), "{status}");

    // HLS on the edge is the origin's, proxied: same playlist, segments play in ffmpeg.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let playlist = loop {
        let (code, head, body) =
            http_get(edge.addr, "/hls/live.m3u8", Duration::from_secs(5)).await;
        let text = String::from_utf8_lossy(&body).to_string();
        if code == 200 && text.contains(".ts") {
            assert!(
                head.to_ascii_lowercase()
                    .contains("application/vnd.apple.mpegurl"),
                "{head}"
            );
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no playlist via the edge"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let segment = playlist
        .lines()
        .rfind(|l| l.starts_with("seg-"))
        .expect("a segment");
    let (code, head, from_edge) = http_get(
        edge.addr,
        &format!("/hls/{segment}"),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(code, 200, "{head}");
    assert!(head.to_ascii_lowercase().contains("immutable"), "{head}");
    let (_, _, from_origin) = http_get(
        origin.addr,
        &format!("/hls/{segment}"),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        from_edge, from_origin,
        "the edge serves the origin's segment bytes"
    );
    // Names that cannot be ours are not passed on.
    let (code, _, _) = http_get(edge.addr, "/hls/..%2fsecret", Duration::from_secs(2)).await;
    assert_eq!(code, 404);
    let url = format!("http://{}/hls/live.m3u8", edge.addr);
    assert_ffmpeg_reads_cleanly(url).await;

    edge.shut_down().await;
    origin.shut_down().await;
}
