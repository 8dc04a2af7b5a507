//! The latency readout's wire, against the real annotating server: clock pings on both
//! WebSockets, the presenter's capture origin carried to the viewers' stamps, viewers' reports
//! back to `/api/status` and the presenter, and pages that send too much or nonsense.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::{SinkExt, StreamExt};
use lenscast::http::HttpConfig;
use lenscast::pipeline::PipelineConfig;
use lenscast::source::Input;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Now on this machine's wall clock, in ms (the server's clock in these tests).
fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// The next text message of `kind` (JSON), skipping everything else; panics after `within`.
async fn next_of(socket: &mut Socket, kind: &str, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} message within {within:?}"));
        match message {
            Some(Ok(Message::Text(text))) => {
                let json: Value = serde_json::from_str(&text).unwrap();
                if json["type"] == kind {
                    return json;
                }
            }
            Some(Ok(_)) => {}
            other => panic!("waiting for {kind}: {other:?}"),
        }
    }
}

/// The annotating server with the demo face as its looped input.
async fn annotating_the_demo() -> TestServer {
    start_annotating(
        Some(Input::File(fixture_path("face.webm"))),
        PipelineConfig::default(),
        HttpConfig::default(),
    )
    .await
}

/// A viewer on `/ws/view`.
async fn view(addr: std::net::SocketAddr) -> Socket {
    let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/view?stamps=1"))
        .await
        .unwrap();
    socket
}

async fn send_json(socket: &mut Socket, json: Value) {
    socket.send(Message::text(json.to_string())).await.unwrap();
}

/// A ping with the page time `t` is answered with `t` and the server's clock.
async fn assert_pong(socket: &mut Socket, t: f64) {
    let before = now_ms();
    send_json(socket, serde_json::json!({"type": "ping", "t": t})).await;
    let pong = next_of(socket, "pong", Duration::from_secs(5)).await;
    // The page's own time comes back (to within float printing: pages use whole ms).
    let echoed = pong["t"].as_f64().unwrap();
    assert!((echoed - t).abs() < 0.001, "sent t={t}, got {echoed}");
    let server = pong["server_ms"].as_f64().unwrap();
    assert!(
        server >= before - 1.0 && server <= now_ms() + 1.0,
        "server_ms {server} outside [{before}, now]"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capture_clock_reaches_viewers_and_their_reports_come_back() {
    let server = start_annotating(None, PipelineConfig::default(), HttpConfig::default()).await;
    let addr = server.addr;
    let mut presenter = connect_presenter(addr, &format!("token={TOKEN}"))
        .await
        .unwrap();
    // A page whose clock is 7 s behind still gets its own time back, beside the server's.
    assert_pong(&mut presenter, now_ms() - 7000.0).await;
    // The presenter says its media time 0 was captured 10 s ago: every frame is then 10 s old
    // when it arrives (on top of the real time it took).
    const CLAIMED_AGE_MS: f64 = 10_000.0;
    send_json(
        &mut presenter,
        serde_json::json!({"type": "capture", "origin_ms": now_ms() - CLAIMED_AGE_MS}),
    )
    .await;
    let pieces = paced_pieces(&std::fs::read(fixture_path("mediarecorder-vp8.webm")).unwrap());
    let publishing = tokio::spawn(async move {
        publish(&mut presenter, &pieces, true).await;
        presenter
    });

    let mut viewer = view(addr).await;
    assert_pong(&mut viewer, 1234.5).await;
    // Stamps come with keyframe Clusters (one a second here); their capture times are the
    // presenter's claim, not the arrival.
    let mut ages = Vec::new();
    let mut media = Vec::new();
    for _ in 0..3 {
        let stamp = next_of(&mut viewer, "stamp", Duration::from_secs(5)).await;
        ages.push(now_ms() - stamp["capture_ms"].as_f64().unwrap());
        // Sent as it was broadcast: just now, on the server's clock.
        let sent_ago = now_ms() - stamp["sent_ms"].as_f64().unwrap();
        assert!((0.0..1000.0).contains(&sent_ago), "sent {sent_ago} ms ago");
        media.push(stamp["media_ms"].as_f64().unwrap());
    }
    for age in &ages {
        assert!(
            (CLAIMED_AGE_MS..CLAIMED_AGE_MS + 2000.0).contains(age),
            "stamp ages {ages:?}: the claimed capture origin was not used"
        );
    }
    assert!(
        media.windows(2).all(|w| w[0] < w[1]),
        "media times {media:?}"
    );

    // The viewer's report shows in /api/status and reaches the presenter.
    send_json(
        &mut viewer,
        serde_json::json!({"type": "latency", "ms": 321}),
    )
    .await;
    let latency = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let latency = status(addr).await["latency"].clone();
            if latency["viewers"]["viewers_reporting"] == 1 {
                return latency;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the report shows in /api/status");
    assert_eq!(latency["viewers"]["glass_to_glass_ms_p50"], 321.0);
    let upload = latency["capture_to_arrival_ms_p50"].as_f64().unwrap();
    assert!(
        (CLAIMED_AGE_MS - 500.0..CLAIMED_AGE_MS + 2000.0).contains(&upload),
        "capture to arrival {upload} ms"
    );
    let upload_p99 = latency["capture_to_arrival_ms_p99"].as_f64().unwrap();
    assert!(
        upload_p99 >= upload,
        "capture to arrival p99 {upload_p99} ms, p50 {upload} ms"
    );
    assert!(latency["arrival_to_broadcast_ms_p50"].as_f64().unwrap() > 0.0);

    let mut presenter = publishing.await.unwrap();
    let stats = next_of(&mut presenter, "stats", Duration::from_secs(3)).await;
    assert_eq!(stats["viewers"]["glass_to_glass_ms_p50"], 321.0);

    // The viewer leaves: its report no longer counts.
    viewer.close(None).await.unwrap();
    drop(viewer);
    tokio::time::timeout(Duration::from_secs(5), async {
        while status(addr).await["latency"]["viewers"]["viewers_reporting"] != 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a viewer that left stops counting");
    server.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_capture_clock_stamps_start_at_the_server() {
    // The demo (a file) says nothing of capture: its readout is server to screen.
    let server = annotating_the_demo().await;
    let mut viewer = view(server.addr).await;
    for _ in 0..2 {
        let stamp = next_of(&mut viewer, "stamp", Duration::from_secs(5)).await;
        let age = now_ms() - stamp["capture_ms"].as_f64().unwrap();
        assert!((0.0..1500.0).contains(&age), "stamp age {age} ms");
    }
    // Stamps are opt-in: a client that did not ask gets the "init" texts it always got.
    let plain = ws_collect(server.addr, Duration::from_millis(2500)).await;
    assert!(!plain.bytes.is_empty());
    assert!(
        plain.inits.iter().all(|text| text["type"] == "init"),
        "{:?}",
        plain.inits
    );
    server.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_floods_or_talks_nonsense_is_not_answered_and_not_harmed() {
    let server = annotating_the_demo().await;
    let addr = server.addr;
    let mut viewer = view(addr).await;
    // Nonsense and out-of-range figures are ignored; the connection stays.
    for text in [
        "not json",
        r#"{"type":"latency","ms":-5}"#,
        r#"{"type":"latency","ms":1e12}"#,
        r#"{"type":"capture","origin_ms":1}"#,
        r#"{"type":"ping"}"#,
    ] {
        viewer.send(Message::text(text)).await.unwrap();
    }
    // A flood of 200 pings at once: at most a second's allowance is answered.
    for t in 0..200 {
        send_json(&mut viewer, serde_json::json!({"type": "ping", "t": t})).await;
    }
    let mut pongs = 0;
    let mut media = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, viewer.next()).await {
        match message {
            Message::Text(text) if text.contains("\"pong\"") => pongs += 1,
            Message::Binary(bytes) => media += bytes.len(),
            _ => {}
        }
    }
    assert!(
        (1..=25).contains(&pongs),
        "{pongs} pongs for 200 pings at once"
    );
    assert!(media > 0, "the stream went on");
    assert_eq!(
        status(addr).await["latency"]["viewers"]["viewers_reporting"],
        0,
        "no report was taken from the nonsense"
    );
    // The allowance refills: a ping a second later is answered again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_pong(&mut viewer, 99.0).await;
    server.shut_down().await;
}
