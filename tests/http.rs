//! Plain HTTP as players, CDNs and monitors use it: HEAD on every GET route, CORS for the
//! routes other sites' players read (`/hls/`, `/live.webm`), and `/live.webm` however it is
//! asked for.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;
use lenscast::hls::HlsConfig;
use lenscast::http::HttpConfig;
use lenscast::server::ServerConfig;
use lenscast::source::Input;

/// A passthrough server on a looped file, with the HLS mirror and `cors_origins`.
async fn server(cors_origins: &[&str]) -> TestServer {
    let config = ServerConfig {
        passthrough: true,
        hls: Some(HlsConfig::default()),
        http: HttpConfig {
            cors_origins: cors_origins.iter().map(|o| o.to_string()).collect(),
            ..HttpConfig::default()
        },
        ..ServerConfig::default()
    };
    let server = start_server(config, Some(Input::File(fixture_path("vp8.webm")))).await;
    // Wait for the first HLS segment, so /hls/live.m3u8 exists.
    for _ in 0..100 {
        let (code, _, _) = http_get(server.addr, "/hls/live.m3u8", Duration::from_secs(2)).await;
        if code == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server
}

async fn head(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    http_request(addr, "HEAD", path, &[], Duration::from_secs(2)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_every_get_route_with_its_headers_and_no_body() {
    let server = server(&[]).await;
    let addr = server.addr;
    let paths = [
        "/",
        "/present",
        "/hls.html",
        "/viewer.js",
        "/api/status",
        "/healthz",
        "/hls/live.m3u8",
        "/vendor/hls.min.js",
        "/live.webm",
        "/no-such-page",
        "/hls/../Cargo.toml",
    ];
    for path in paths {
        let (get_code, get_head, _) = http_get(addr, path, Duration::from_millis(500)).await;
        let (code, head_head, body) = head(addr, path).await;
        assert_eq!(code, get_code, "HEAD {path}");
        assert_ne!(code, 405, "HEAD {path}");
        for name in ["content-type", "cache-control"] {
            assert_eq!(
                header(&head_head, name),
                header(&get_head, name),
                "HEAD {path}: {name}"
            );
        }
        assert!(
            body.is_empty(),
            "HEAD {path} sent a body of {} bytes",
            body.len()
        );
    }
    // A probe of the stream is not a viewer.
    let before = status(addr).await["viewers_total"].as_u64().unwrap();
    head(addr, "/live.webm").await;
    let after = status(addr).await["viewers_total"].as_u64().unwrap();
    assert_eq!(after, before, "HEAD /live.webm joined the stream");
    server.shut_down().await;
}

/// The CORS headers of `path` for a request from `origin`.
async fn cors(addr: SocketAddr, path: &str, origin: &str) -> (Option<String>, Option<String>) {
    let (code, head, _) = http_request(
        addr,
        "GET",
        path,
        &[("Origin", origin)],
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(code, 200, "{path}");
    (
        header(&head, "access-control-allow-origin"),
        header(&head, "vary"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_origin_lets_the_listed_origins_read_hls_and_the_stream() {
    let player = "https://player.example";
    let listed = server(&[player]).await;
    for path in ["/hls/live.m3u8", "/live.webm"] {
        let (allow, vary) = cors(listed.addr, path, player).await;
        assert_eq!(allow.as_deref(), Some(player), "{path}");
        assert_eq!(vary.as_deref(), Some("origin"), "{path}");
        let (allow, _) = cors(listed.addr, path, "https://elsewhere.example").await;
        assert_eq!(allow, None, "{path}: an origin not listed");
    }
    // Not on the other routes: the pages and status are ours alone.
    let (_, head, _) = http_request(
        listed.addr,
        "GET",
        "/api/status",
        &[("Origin", player)],
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(header(&head, "access-control-allow-origin"), None);
    listed.shut_down().await;

    // By default no other site may read them.
    let default = server(&[]).await;
    let (allow, _) = cors(default.addr, "/hls/live.m3u8", player).await;
    assert_eq!(allow, None);
    default.shut_down().await;

    let any = server(&["*"]).await;
    let (allow, _) = cors(any.addr, "/live.webm", player).await;
    assert_eq!(allow.as_deref(), Some("*"));
    any.shut_down().await;
}

/// The body of a response in `raw` that starts with its head: de-chunked if it is chunked,
/// as it is otherwise (HTTP/1.0 ends the body by closing).
fn body_of(label: &str, raw: &[u8]) -> Vec<u8> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{label}: no response head in {} bytes", raw.len()));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{label}: {head}"
    );
    let body = &raw[split + 4..];
    if header(&head, "transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        dechunk(body)
    } else {
        body.to_vec()
    }
}

/// Reads `stream` for `duration` (or until the server closes).
async fn read_for(stream: &mut tokio::net::TcpStream, duration: Duration) -> Vec<u8> {
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(duration, stream.read_to_end(&mut raw)).await;
    raw
}

/// `/live.webm` is answered on the bare connection when it is a connection's first request
/// (src/http/bare.rs) and by hyper otherwise: every way a player may ask gives the same
/// playable stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_webm_plays_however_it_is_asked_for() {
    let server = server(&[]).await;
    let addr = server.addr;
    let watch = Duration::from_secs(3);

    // The first request of a connection, its head arriving a few bytes at a time.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /live.webm HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: test\r\n\r\n");
    for piece in request.as_bytes().chunks(3) {
        slow.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let slow_task = tokio::spawn(async move { read_for(&mut slow, watch).await });

    // After another request on the same keep-alive connection.
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    second
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut first_response = Vec::new();
    while !first_response.ends_with(b"ok\n") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(2), second.read(&mut buf))
            .await
            .expect("/healthz answers")
            .unwrap();
        assert!(n > 0, "/healthz closed the connection");
        first_response.extend_from_slice(&buf[..n]);
    }
    second
        .write_all(format!("GET /live.webm HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let second_task = tokio::spawn(async move { read_for(&mut second, watch).await });

    // HTTP/1.0, whose body ends when the connection does.
    let mut old = tokio::net::TcpStream::connect(addr).await.unwrap();
    old.write_all(b"GET /live.webm HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let old_task = tokio::spawn(async move { read_for(&mut old, watch).await });

    for (label, task) in [
        ("first request, slow head", slow_task),
        ("second request on a keep-alive connection", second_task),
        ("HTTP/1.0", old_task),
    ] {
        let raw = task.await.unwrap();
        assert_decodes_from_start(label, &body_of(label, &raw));
    }
    server.shut_down().await;
}

/// A `/live.webm` client that keeps sending after its request (a flood, or requests that can
/// never be answered behind an endless one) is closed; the other viewers play on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_client_that_keeps_sending_is_closed_and_others_play_on() {
    let server = server(&[]).await;
    let addr = server.addr;
    let calm = tokio::spawn(http_get(addr, "/live.webm", Duration::from_secs(4)));
    let mut noisy = tokio::net::TcpStream::connect(addr).await.unwrap();
    noisy
        .write_all(format!("GET /live.webm HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (mut reader, mut writer) = noisy.into_split();
    let flood = tokio::spawn(async move {
        let junk = vec![b'x'; 16 * 1024];
        let mut sent = 0usize;
        while sent < 8 << 20 {
            match writer.write_all(&junk).await {
                Ok(()) => sent += junk.len(),
                Err(_) => break,
            }
        }
        sent
    });
    // The server closes it: the read ends (EOF or reset) well before the calm viewer's 4 s.
    let mut sink = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(3), reader.read_to_end(&mut sink)).await;
    assert!(
        ended.is_ok(),
        "the flooding client is still connected after 3 s"
    );
    let sent = flood.await.unwrap();
    assert!(
        sent < 8 << 20,
        "the server took all {sent} bytes of the flood"
    );
    let (code, _, body) = calm.await.unwrap();
    assert_eq!(code, 200);
    assert_decodes_from_start("the calm viewer", &body);
    server.shut_down().await;
}
