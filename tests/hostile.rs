//! Hostile clients against the real binary: each attack ends only its own connection, with
//! the documented status or close code, while /healthz stays OK, a viewer's stream keeps
//! decoding, and the server's peak RSS stays within +100 MB of where it started.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Peak RSS (VmHWM) of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// The real binary annotating the demo, with the test token; and its address.
async fn hostile_target(extra: &[&str]) -> (KillOnDrop, SocketAddr) {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--publish-token",
        TOKEN,
        "--no-hls",
    ];
    args.extend_from_slice(extra);
    let (child, url) = spawn_binary(&args, Stdio::null());
    let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    // Wait until media flows, so the baseline RSS includes the running pipeline.
    for _ in 0..100 {
        if status(addr).await["source"]["state"] == "live" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    (KillOnDrop(child), addr)
}

/// After an attack: /healthz answers, a new viewer's stream decodes, and peak RSS grew by
/// less than 100 MB.
async fn assert_unharmed(what: &str, server: &KillOnDrop, addr: SocketAddr, baseline_kib: u64) {
    let (code, _, body) = http_get(addr, "/healthz", Duration::from_secs(2)).await;
    assert_eq!((code, body.as_slice()), (200, b"ok\n".as_slice()), "{what}");
    // The demo takes the slot back from the attacker: wait for that, so the viewer below
    // does not join in the middle of the switch (in passthrough its stream would then hold
    // two init segments, which is fine for MSE but not one file for ffmpeg to judge).
    for _ in 0..50 {
        let source = &status(addr).await["source"];
        if source["state"] == "live" && !source["presenter"].as_bool().unwrap_or(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = ws_collect(addr, Duration::from_millis(2500)).await;
    assert!(!received.closed, "{what}: the viewer was disconnected");
    assert_decodes_from_start(what, &received.bytes);
    let peak = peak_rss_kib(server.0.id());
    assert!(
        peak < baseline_kib + 100 * 1024,
        "{what}: peak RSS {peak} KiB, baseline {baseline_kib} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_websocket_messages_close_with_1009() {
    let (server, addr) = hostile_target(&[]).await;
    let baseline = peak_rss_kib(server.0.id());

    // A viewer only listens: a 64 KiB message is over its 4 KiB limit.
    let (mut viewer, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/view"))
        .await
        .unwrap();
    viewer
        .send(Message::binary(vec![0u8; 64 * 1024]))
        .await
        .unwrap();
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(5), viewer.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(1009));

    // A presenter's message may be as large as the largest element we accept (16 MiB).
    let mut presenter = connect_presenter(addr, &format!("token={TOKEN}"))
        .await
        .unwrap();
    let _ = presenter
        .send(Message::binary(vec![0u8; 17 * 1024 * 1024]))
        .await;
    let closed = wait_closed(&mut presenter).await;
    assert_eq!(closed.code, Some(1009), "{closed:?}");
    assert_unharmed("oversized messages", &server, addr, baseline).await;
}

/// Sends `body` as one chunked PUT and returns the status line and body of the answer.
async fn put(addr: SocketAddr, body: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /publish?token={TOKEN} HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for piece in body.chunks(32 * 1024) {
        let chunk = [format!("{:x}\r\n", piece.len()).as_bytes(), piece, b"\r\n"].concat();
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_uploads_are_refused_with_the_reason() {
    let (server, addr) = hostile_target(&[]).await;
    let baseline = peak_rss_kib(server.0.id());
    let frames = frames_of("vp8.webm");
    let good = webm_stream(1_000_000, &[(0, &frames[..15])], 67);

    // Cut off inside a block: 400 naming the truncation, not 200 "upload finished".
    let answer = put(addr, &good[..good.len() - 7]).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("cut off"), "{answer}");

    // An element that declares 1 TiB.
    let mut huge = good.clone();
    huge.extend_from_slice(&[0xEC, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00]);
    let answer = put(addr, &huge).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("limit"), "{answer}");

    // Seventeen tracks.
    let mut tracks = Vec::new();
    for number in 1..=17u64 {
        let mut entry = Vec::new();
        lenscast::webm::ebml::write_uint(
            &mut entry,
            lenscast::webm::ebml::id::TRACK_NUMBER,
            number,
        );
        lenscast::webm::ebml::write_uint(&mut entry, lenscast::webm::ebml::id::TRACK_TYPE, 1);
        lenscast::webm::ebml::write_element(
            &mut entry,
            lenscast::webm::ebml::id::CODEC_ID,
            b"V_VP8",
        );
        lenscast::webm::ebml::write_element(
            &mut tracks,
            lenscast::webm::ebml::id::TRACK_ENTRY,
            &entry,
        );
    }
    let mut many = good[..good.len()].to_vec();
    let at = header_len_before_tracks(&many);
    many.truncate(at);
    lenscast::webm::ebml::write_element(&mut many, lenscast::webm::ebml::id::TRACKS, &tracks);
    let answer = put(addr, &many).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("more than 16 tracks"), "{answer}");

    // A VP8 keyframe whose header claims 16000x16000 (a decoder memory bomb).
    let mut bomb_frames = frames[..15].to_vec();
    let key = &mut bomb_frames[0].0;
    key[6..8].copy_from_slice(&16000u16.to_le_bytes());
    key[8..10].copy_from_slice(&16000u16.to_le_bytes());
    let answer = put(addr, &webm_stream(1_000_000, &[(0, &bomb_frames)], 67)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("16000x16000"), "{answer}");
    assert!(answer.contains("max-resolution"), "{answer}");

    assert_unharmed("malformed uploads", &server, addr, baseline).await;
}

/// Where Tracks begins in a stream made by `webm_stream` (after header, Segment and Info).
fn header_len_before_tracks(stream: &[u8]) -> usize {
    let mut reader = lenscast::webm::StreamReader::new();
    reader.push(stream);
    let mut before = 0;
    while let Some(event) = reader.next_event().unwrap() {
        if matches!(event, lenscast::webm::Event::Tracks(_)) {
            return before;
        }
        before = reader.position() as usize;
    }
    panic!("no Tracks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_hosts_and_origins_are_refused() {
    let (server, addr) = hostile_target(&["--allow-host", "live.example.org"]).await;
    let baseline = peak_rss_kib(server.0.id());
    let upgrade = |host: String, origin: String| async move {
        view_upgrade_status(addr, Some(&host), &origin).await
    };
    // DNS rebinding: the attacker's name in both Host and Origin.
    assert_eq!(
        upgrade("attacker.example".into(), "http://attacker.example".into()).await,
        403
    );
    // Same authority, other scheme.
    assert_eq!(
        upgrade(addr.to_string(), format!("https://{addr}")).await,
        403
    );
    // Ours: the address, and a name given with --allow-host.
    assert_eq!(
        upgrade(addr.to_string(), format!("http://{addr}")).await,
        101
    );
    assert_eq!(
        upgrade("live.example.org".into(), "http://live.example.org".into()).await,
        101
    );
    // Plain requests too; /healthz answers probes whatever their Host.
    let get = |host: &'static str, path: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).to_string()
    };
    assert!(get("attacker.example", "/api/status")
        .await
        .starts_with("HTTP/1.1 403"));
    assert!(get("attacker.example", "/healthz")
        .await
        .starts_with("HTTP/1.1 200"));
    assert_unharmed("foreign hosts", &server, addr, baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_no_server_paths() {
    let input = fixture_path("vp8.webm");
    let (_server, addr) =
        hostile_target(&["--input", input.to_str().unwrap(), "--passthrough"]).await;
    let (_, _, body) = http_get(addr, "/api/status", Duration::from_secs(2)).await;
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains("/fixtures/"), "{text}");
    assert!(!text.contains("/tmp/"), "{text}");
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status["source"]["name"], "file:vp8.webm");
}

#[test]
fn absurd_command_line_values_are_refused_without_a_panic() {
    for args in [
        ["--viewer-timeout", "inf"],
        ["--keyframe-interval", "1e300"],
        ["--presenter-idle", "NaN"],
        ["--hls-segment", "1e9"],
        ["--max-resolution", "0x0"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_lenscast"))
            .arg("serve")
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(args[0]), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// A chunked PUT with `query`; returns the answer's status code.
async fn put_status(addr: SocketAddr, query: &str, body: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /publish?{query} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let _ = stream.write_all(body).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).to_string();
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guessing_is_throttled_and_the_right_token_still_works() {
    let (server, addr) = hostile_target(&[]).await;
    let baseline = peak_rss_kib(server.0.id());
    let mut codes = Vec::new();
    let mut retry_after = None;
    for i in 0..12 {
        let (code, answer) = put_status(addr, &format!("token=guess{i}"), b"x").await;
        codes.push(code);
        if code == 429 {
            retry_after = answer.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("retry-after: ")
                    .map(str::to_string)
            });
        }
    }
    assert_eq!(&codes[..5], &[401; 5], "{codes:?}");
    assert!(codes[5..].iter().all(|&c| c == 429), "{codes:?}");
    assert!(retry_after.is_some_and(|s| s.trim().parse::<u64>().is_ok_and(|s| s >= 1)));
    // The token holder is never throttled: a real (tiny, cut-off) upload is judged on its
    // merits, not refused as a guess.
    let (code, answer) = put_status(addr, &format!("token={TOKEN}"), b"\x1a\x45").await;
    assert_eq!(code, 400, "{answer}");
    assert_unharmed("token guessing", &server, addr, baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_idle_and_surplus_connections_are_closed() {
    let (server, addr) = hostile_target(&[
        "--max-connections",
        "8",
        "--header-timeout",
        "1",
        "--idle-timeout",
        "2",
    ])
    .await;
    let baseline = peak_rss_kib(server.0.id());
    // Slowloris: eight connections with half a request each fill the server.
    let mut slow = Vec::new();
    for _ in 0..8 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET /api/status HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())
            .await
            .unwrap();
        slow.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, _, _) = http_get(addr, "/healthz", Duration::from_secs(2)).await;
    assert_eq!(code, 503, "a ninth connection is refused at once");
    // The header timeout closes them.
    for mut stream in slow {
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a half-sent request was kept open");
    }
    // A connection that never sends a byte is closed by the idle timeout.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a silent connection was kept open");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_unharmed("slow connections", &server, addr, baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_faster_than_real_time_are_refused_however_they_are_stamped() {
    let (server, addr) = hostile_target(&[]).await;
    let baseline = peak_rss_kib(server.0.id());
    let frames = frames_of("vp8.webm");
    // 40 concatenated streams of 1 s each, sent at once: each restarts at time 0.
    let one = webm_stream(1_000_000, &[(0, &frames[..15])], 67);
    let concatenated = one.repeat(40);
    let (code, answer) = put_status(addr, &format!("token={TOKEN}"), &concatenated).await;
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("faster than real time"), "{answer}");
    // 1,800 frames all stamped 0.
    let mut still = Vec::new();
    for _ in 0..120 {
        still.extend_from_slice(&frames[..15]);
    }
    let zero = webm_stream(1_000_000, &[(0, &still)], 0);
    let (code, answer) = put_status(addr, &format!("token={TOKEN}"), &zero).await;
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("faster than real time"), "{answer}");
    assert_unharmed("too fast", &server, addr, baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_viewer_pins_no_more_than_the_viewer_buffer() {
    // Passthrough, so the presenter's large frames reach the hub as they are; and a viewer
    // timeout long enough that only the byte budget can bound what the stalled viewer pins.
    let (server, addr) = hostile_target(&["--passthrough", "--viewer-timeout", "300"]).await;
    let baseline = peak_rss_kib(server.0.id());
    let _stalled = stalled_connection(addr, &ws_view_request(addr)).await;

    // 30 Clusters, each one keyframe padded to 4 MiB: 120 MiB in all, sent as fast as the
    // upload ceiling allows (5 MB/s after the first 25 MB of slack: five blocks at once).
    const BLOCK: usize = 4 * 1024 * 1024;
    let (mut frame, keyframe) = frames_of("vp8.webm")[0].clone();
    assert!(keyframe);
    frame.resize(BLOCK, 0);
    let header = webm_stream(1_000_000, &[], 0);
    let mut pieces = vec![(Duration::ZERO, header.clone())];
    for i in 0..30u64 {
        let one = webm_stream(1_000_000, &[(i * 900, &[(frame.clone(), true)])], 0);
        let due = Duration::from_millis(i.saturating_sub(4) * 900);
        pieces.push((due, one[header.len()..].to_vec()));
    }
    let mut presenter = connect_presenter(addr, &format!("token={TOKEN}"))
        .await
        .unwrap();
    let closed = publish(&mut presenter, &pieces, true).await;
    assert!(closed.is_none(), "the upload was refused: {closed:?}");
    let held = status(addr).await["buffered_bytes"].as_u64().unwrap();
    assert!(
        held <= 16 * 1024 * 1024 + BLOCK as u64,
        "the hub holds {held} bytes"
    );
    let _ = presenter.close(None).await;
    assert_unharmed("stalled viewer", &server, addr, baseline).await;
}
