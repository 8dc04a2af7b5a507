//! TLS on the real server (`--tls-cert`, `--tls-key`), with a self-signed certificate made
//! here by rcgen and trusted by our rustls client: a wss viewer, an https PUT publish, the
//! Origin check with an https page's origin, and clear errors for bad files.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use lenscast::http::tls::TlsFiles;
use lenscast::http::HttpConfig;
use lenscast::server::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const NAME: &str = "lenscast.test";

/// A self-signed certificate for `lenscast.test` and 127.0.0.1, written to a temp dir.
struct Certificate {
    _dir: tempfile::TempDir,
    files: TlsFiles,
    der: CertificateDer<'static>,
}

fn certificate() -> Certificate {
    let made = rcgen::generate_simple_self_signed(vec![NAME.to_string(), "127.0.0.1".into()])
        .expect("rcgen makes a certificate");
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    };
    std::fs::write(&files.cert, made.cert.pem()).unwrap();
    std::fs::write(&files.key, made.key_pair.serialize_pem()).unwrap();
    Certificate {
        _dir: dir,
        files,
        der: made.cert.der().clone(),
    }
}

async fn start_tls(cert: &Certificate) -> TestServer {
    let config = ServerConfig {
        tls: Some(cert.files.clone()),
        hls: None,
        http: HttpConfig {
            allowed_hosts: vec![NAME.to_string()],
            ..HttpConfig::default()
        },
        ..ServerConfig::default()
    };
    start_server(config, None).await
}

/// A TLS connection to the server that trusts only `cert`, for the name `lenscast.test`.
async fn connect(
    addr: SocketAddr,
    cert: &Certificate,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(NAME).unwrap(), tcp)
        .await
        .expect("the TLS handshake succeeds with the trusted certificate")
}

/// A plain HTTP/1.1 GET over TLS; returns the head and body.
async fn https_get(addr: SocketAddr, cert: &Certificate, path: &str) -> (String, Vec<u8>) {
    let mut tls = connect(addr, cert).await;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {NAME}:{}\r\nConnection: close\r\n\r\n",
        addr.port()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut response)).await;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    (head, response[split + 4..].to_vec())
}

/// Opens `wss://lenscast.test:PORT/ws/view` with `origin`; returns the socket or the status.
async fn wss_view(
    addr: SocketAddr,
    cert: &Certificate,
    origin: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>, u16> {
    let tls = connect(addr, cert).await;
    let mut request = format!("wss://{NAME}:{}/ws/view", addr.port())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    match tokio_tungstenite::client_async(request, tls).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(error) => panic!("wss connect: {error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_viewer_watches_an_https_publish() {
    let cert = certificate();
    let server = start_tls(&cert).await;
    let addr = server.addr;
    let origin = format!("https://{NAME}:{}", addr.port());

    // The viewer, over wss, from the server's own https origin.
    let mut socket = wss_view(addr, &cert, &origin).await.expect("wss upgrade");
    let viewer = tokio::spawn(async move {
        let mut bytes = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, socket.next()).await {
            if let Message::Binary(data) = message {
                bytes.extend_from_slice(&data);
            }
        }
        bytes
    });

    // The presenter: a chunked PUT over https, paced in real time for about 4 s.
    let mut put = connect(addr, &cert).await;
    let head = format!(
        "PUT /publish?token={TOKEN} HTTP/1.1\r\nHost: {NAME}:{}\r\nTransfer-Encoding: chunked\r\n\r\n",
        addr.port()
    );
    put.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let pieces = paced_pieces(&std::fs::read(fixture_path("face.webm")).unwrap());
    for (due, piece) in pieces
        .iter()
        .take_while(|(due, _)| *due < Duration::from_secs(4))
    {
        tokio::time::sleep_until((started + *due).into()).await;
        put.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .await
            .unwrap();
        put.write_all(piece).await.unwrap();
        put.write_all(b"\r\n").await.unwrap();
    }
    let (status_head, status_body) = https_get(addr, &cert, "/api/status").await;
    assert!(status_head.starts_with("HTTP/1.1 200"), "{status_head}");
    let status: serde_json::Value = serde_json::from_slice(&status_body).unwrap();
    assert_eq!(status["source"]["presenter"], true, "{status}");
    assert_eq!(status["pipeline"]["input"], "presenter:http", "{status}");
    assert!(
        status["pipeline"]["frames_in"].as_u64().unwrap() > 30,
        "{status}"
    );
    put.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), put.read(&mut answer))
        .await
        .expect("the server answers the finished upload")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 2"), "{answer}");

    // The viewer saw the presenter's frames, boxed and re-encoded, in a stream that decodes.
    let bytes = viewer.await.unwrap();
    let frames = assert_decodes_from_start("wss viewer", &bytes);
    assert!(frames >= 60, "{frames} frames over wss");
    server.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_checks_use_the_https_scheme() {
    let cert = certificate();
    let server = start_tls(&cert).await;
    let port = server.addr.port();
    // Our own page, now https.
    assert!(
        wss_view(server.addr, &cert, &format!("https://{NAME}:{port}"))
            .await
            .is_ok()
    );
    // The same name over http is another origin; another site is refused too.
    for origin in [
        format!("http://{NAME}:{port}"),
        "https://evil.example".to_string(),
    ] {
        match wss_view(server.addr, &cert, &origin).await {
            Err(code) => assert_eq!(code, 403, "{origin}"),
            Ok(_) => panic!("{origin} was let in"),
        }
    }
    server.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_tls_port_ends_only_that_connection() {
    let cert = certificate();
    let server = start_tls(&cert).await;
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the plain connection is closed, not left hanging"
    );
    assert!(
        !String::from_utf8_lossy(&answer).contains("ok"),
        "no plaintext answer"
    );
    // A TLS client right after is served.
    let (head, body) = https_get(server.addr, &cert, "/healthz").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok\n");
    server.shut_down().await;
}

#[test]
fn bad_certificate_files_are_clear_errors() {
    let cert = certificate();
    let build = |files: TlsFiles| {
        Server::new(ServerConfig {
            tls: Some(files),
            hls: None,
            ..ServerConfig::default()
        })
        .err()
        .map(|e| e.to_string())
        .expect("refused")
    };
    let missing = cert.files.cert.with_file_name("nope.pem");
    let error = build(TlsFiles {
        cert: missing.clone(),
        key: cert.files.key.clone(),
    });
    assert!(error.contains(&missing.display().to_string()), "{error}");
    // A certificate where the key should be.
    let error = build(TlsFiles {
        cert: cert.files.cert.clone(),
        key: cert.files.cert.clone(),
    });
    assert!(error.contains("private key"), "{error}");
    assert!(
        error.contains(&cert.files.cert.display().to_string()),
        "{error}"
    );
    // A key where the certificate should be.
    let error = build(TlsFiles {
        cert: cert.files.key.clone(),
        key: cert.files.key.clone(),
    });
    assert!(error.contains("no PEM certificate"), "{error}");
}
