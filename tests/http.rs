//! Plain HTTP as players, CDNs and monitors use it: HEAD on every GET route, and CORS for the
//! routes other sites' players read (`/hls/`, `/live.webm`).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

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
