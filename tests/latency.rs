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

/// `name`'s audio and video re-muxed as a live WebCodecs presenter uploads them: each block
/// as it is encoded, so an Opus packet comes after the video frames of its 20 ms (here, after
/// those up to 25 ms past its start), and a block earlier than the one before it starts a
/// Cluster of its own.
fn upload_with_late_audio(name: &str) -> Vec<u8> {
    use lenscast::webm::ebml::{self, id, UNKNOWN_SIZE};
    use lenscast::webm::{Event, StreamReader};
    let file = std::fs::read(fixture_path(name)).unwrap();
    let mut reader = StreamReader::new();
    reader.push(&file);
    let (mut head_end, mut video_track) = (0, 0);
    let mut blocks = Vec::new();
    while let Some(event) = reader.next_event().unwrap() {
        match event {
            Event::Tracks(tracks) => {
                head_end = reader.position() as usize;
                video_track = tracks.video().unwrap().number;
            }
            Event::Block(b) => {
                let video = b.track == video_track;
                let sent = if video { b.timecode } else { b.timecode + 25 };
                blocks.push((sent, b.track, b.timecode, b.keyframe || !video, b.frame()));
            }
            _ => {}
        }
    }
    assert!(
        blocks.iter().any(|b| b.1 != video_track),
        "{name} has audio"
    );
    blocks.sort_by_key(|b| b.0);
    let mut out = file[..head_end].to_vec();
    let mut cluster: Option<(i64, i64)> = None; // (timestamp, last block's)
    for (_, track, timecode, keyframe, frame) in blocks {
        let fits =
            cluster.is_some_and(|(start, last)| timecode >= last && timecode - start < 30_000);
        if !fits || (keyframe && track == video_track) {
            ebml::write_id(&mut out, id::CLUSTER);
            out.extend_from_slice(&UNKNOWN_SIZE);
            ebml::write_uint(&mut out, id::TIMESTAMP, timecode as u64);
            cluster = Some((timecode, timecode));
        }
        let (start, _) = cluster.unwrap();
        cluster = Some((start, timecode));
        let mut block = vec![0x80 | track as u8];
        block.extend_from_slice(&((timecode - start) as i16).to_be_bytes());
        block.push(if keyframe { 0x80 } else { 0 });
        block.extend_from_slice(&frame);
        ebml::write_element(&mut out, id::SIMPLE_BLOCK, &block);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presenters_late_audio_gets_no_clusters_of_its_own_and_stamps_come_per_keyframe() {
    // The upload has several Clusters a second (every late audio packet opens one); what the
    // viewers get has one per keyframe: each track's blocks wait for the other's earlier ones.
    let upload = write_temp(&upload_with_late_audio("face-opus.webm"));
    let server = start_annotating(
        Some(Input::File(upload.path().to_path_buf())),
        PipelineConfig::default(),
        HttpConfig::default(),
    )
    .await;
    let mut viewer = view(server.addr).await;
    let mut bytes = Vec::new();
    let mut stamps = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, viewer.next()).await {
        match message {
            Message::Binary(b) => bytes.extend_from_slice(&b),
            Message::Text(text) => {
                let json: Value = serde_json::from_str(&text).unwrap();
                stamps += usize::from(json["type"] == "stamp");
            }
            _ => {}
        }
    }
    server.shut_down().await;
    // Cluster timestamps by our reader, keyframes by ffprobe.
    let mut reader = lenscast::webm::StreamReader::new();
    reader.push(&bytes);
    let mut clusters = Vec::new();
    while let Ok(Some(event)) = reader.next_event() {
        if let lenscast::webm::Event::ClusterStart { timecode, .. } = event {
            clusters.push(timecode as i64);
        }
    }
    let keyframes: Vec<i64> = packets(&bytes, "v")
        .into_iter()
        .filter(|&(_, key)| key)
        .map(|(pts, _)| pts)
        .collect();
    assert!(keyframes.len() >= 4, "keyframes {keyframes:?}");
    assert!(packets(&bytes, "a").len() > 100, "the stream carries audio");
    assert_eq!(
        clusters, keyframes,
        "a Cluster at each keyframe and nowhere else"
    );
    // One stamp per keyframe Cluster (the last may still have been on its way).
    assert!(
        stamps == clusters.len() || stamps + 1 == clusters.len(),
        "{stamps} stamps for {} Clusters",
        clusters.len()
    );
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
