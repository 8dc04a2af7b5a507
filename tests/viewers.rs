//! The viewer connections themselves: the WebSocket protocol as our lean viewer socket speaks
//! it (checked by tungstenite as the client), and stalled viewers dropped after
//! `--viewer-timeout` without holding anyone else up.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use lenscast::http::conn::ConnLimits;
use lenscast::http::HttpConfig;
use lenscast::server::ServerConfig;
use lenscast::source::Input;
use lenscast::webm::{LiveMuxer, Output, StreamReader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;

/// Reads messages until one matches `wanted`, or panics after 5 s.
async fn until<S>(socket: &mut S, what: &str, wanted: impl Fn(&Message) -> bool) -> Message
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
            Ok(Some(Ok(message))) if wanted(&message) => return message,
            Ok(Some(Ok(_))) => continue,
            other => panic!("waiting for {what}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_websocket_answers_pings_closes_and_refuses_broken_frames() {
    let server = start(
        Some(Input::File(fixture_path("vp8.webm"))),
        HttpConfig::default(),
    )
    .await;
    let addr = server.addr;

    // A plain GET is told what the endpoint wants.
    let (code, _, body) = http_get(addr, "/ws/view", Duration::from_secs(2)).await;
    assert_eq!(code, 400);
    assert!(String::from_utf8_lossy(&body).contains("WebSocket upgrade"));

    // The init text, then binary media; a ping is answered with its payload; a close is
    // answered with a close, and the stream ends.
    let (mut viewer, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/view"))
        .await
        .unwrap();
    let first = until(&mut viewer, "init", |m| m.is_text()).await;
    assert!(first.to_text().unwrap().contains("\"type\":\"init\""));
    until(&mut viewer, "media", |m| m.is_binary()).await;
    viewer
        .send(Message::Ping(Bytes::from_static(b"lenscast")))
        .await
        .unwrap();
    let pong = until(&mut viewer, "pong", |m| m.is_pong()).await;
    assert_eq!(pong.into_data(), Bytes::from_static(b"lenscast"));
    viewer.close(None).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = viewer.next().await {}
    })
    .await;
    assert!(
        end.is_ok(),
        "the server did not end the stream after a close"
    );

    // A client frame without a mask breaks RFC 6455: close 1002.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(ws_view_request(addr).as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "the accept key of RFC 6455's example: {head}"
    );
    stream.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    let mut client =
        tokio_tungstenite::WebSocketStream::from_raw_socket(stream, Role::Client, None).await;
    let close = until(&mut client, "close", |m| m.is_close()).await;
    let Message::Close(Some(frame)) = close else {
        panic!("a close without a code: {close:?}")
    };
    assert_eq!(frame.code, CloseCode::Protocol);
    server.shut_down().await;
}

/// The init segment of a real file, as the remuxer makes it.
fn init_segment() -> Output {
    let mut reader = StreamReader::new();
    reader.push(&std::fs::read(fixture_path("vp8.webm")).unwrap());
    let mut muxer = LiveMuxer::new();
    while let Some(event) = reader.next_event().unwrap() {
        let mut out = Vec::new();
        muxer.push(event, &mut out);
        if let Some(init) = out.into_iter().find(|o| matches!(o, Output::Init(_))) {
            return init;
        }
    }
    panic!("no init segment in vp8.webm")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_viewers_are_dropped_after_the_viewer_timeout_and_others_keep_up() {
    let config = ServerConfig {
        passthrough: true,
        hls: None,
        connections: ConnLimits {
            write_timeout: Duration::from_secs(1),
            ..ConnLimits::default()
        },
        ..ServerConfig::default()
    };
    let server = start_server(config, None).await;
    let addr = server.addr;
    server.hub.publish([init_segment()]);
    let _stalled_ws = stalled_connection(addr, &ws_view_request(addr)).await;
    let http = format!("GET /live.webm HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let _stalled_http = stalled_connection(addr, &http).await;
    let healthy = tokio::spawn(ws_collect(addr, Duration::from_secs(6)));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 256 KiB keyframe Clusters at ~12 MB/s: the stalled sockets' buffers fill within a
    // second or two, then their writes wait for --viewer-timeout (1 s here).
    let mut published = 0usize;
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let cluster = Bytes::from(vec![published as u8; 256 * 1024]);
        published += cluster.len();
        server.hub.publish([Output::ClusterStart {
            bytes: cluster,
            keyframe: true,
        }]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = status(addr).await;
    assert_eq!(
        status["slow_viewers_dropped"], 2,
        "both stalled viewers (WebSocket and /live.webm) are dropped: {status}"
    );
    assert_eq!(status["viewers"], 1, "{status}");
    let received = healthy.await.unwrap();
    assert!(!received.closed, "the healthy viewer was disconnected");
    assert!(
        received.bytes.len() >= published * 9 / 10,
        "the healthy viewer fell behind: {} of {published} bytes",
        received.bytes.len()
    );
    server.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_writes_still_carry_a_stream_that_decodes() {
    // 100 ms between writes: each WebSocket message then carries about three frames (and
    // their audio), and /live.webm's writes likewise.
    let config = ServerConfig {
        passthrough: true,
        hls: None,
        viewer_batch: lenscast::hub::Batching::Every(Duration::from_millis(100)),
        ..ServerConfig::default()
    };
    let server = start_server(config, Some(Input::File(fixture_path("vp8-opus.webm")))).await;
    let addr = server.addr;
    let http = tokio::spawn(http_get(addr, "/live.webm", Duration::from_secs(3)));
    let (mut viewer, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/view"))
        .await
        .unwrap();
    let mut media = Vec::new();
    let mut messages = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, viewer.next()).await {
        if let Message::Binary(bytes) = message {
            messages += 1;
            media.extend_from_slice(&bytes);
        }
    }
    let frames = assert_decodes_from_start("batched WebSocket viewer", &media);
    // Unbatched, every video frame and every Opus packet (50 a second) would be a message of
    // its own: some 200 in 3 s. Batched: one per 100 ms, plus the init segment.
    assert!(
        messages <= 3000 / 100 + 3,
        "{messages} binary messages in 3 s ({frames} video frames): not batched"
    );
    let (code, _, body) = http.await.unwrap();
    assert_eq!(code, 200);
    assert_decodes_from_start("batched /live.webm viewer", &body);
    server.shut_down().await;
}
