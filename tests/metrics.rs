//! `/metrics` on the real server: Prometheus text that a parser we did not write reads
//! (`prometheus-parse`), with values that match `/api/status` taken around the scrape.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use lenscast::source::Input;
use prometheus_parse::{Scrape, Value};

async fn fetch_metrics(addr: SocketAddr) -> (String, Scrape) {
    let (code, head, body) = http_get(addr, "/metrics", Duration::from_secs(2)).await;
    assert_eq!(code, 200, "{head}");
    assert_eq!(
        header(&head, "content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    let text = String::from_utf8(body).expect("UTF-8");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let parsed = Scrape::parse(lines).expect("Prometheus text format");
    (text, parsed)
}

/// The value of the sample `name` whose labels include `labels`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no {name} {labels:?}"));
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{name} is not a number: {other:?}"),
    }
}

fn typed_as(scrape: &Scrape, name: &str) -> &'static str {
    let sample = scrape.samples.iter().find(|s| s.metric == name).unwrap();
    match sample.value {
        Value::Counter(_) => "counter",
        Value::Gauge(_) => "gauge",
        Value::Histogram(_) => "histogram",
        Value::Summary(_) => "summary",
        Value::Untyped(_) => "untyped",
    }
}

/// `a <= v <= b`, for a counter scraped between two status snapshots.
fn between(name: &str, v: f64, a: &serde_json::Value, b: &serde_json::Value) {
    let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
    assert!(
        a <= v && v <= b,
        "{name}: {v} not within /api/status's {a}..{b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_match_the_status() {
    let server = start_with_hls(Some(Input::demo()), 6, false).await;
    let addr = server.addr;

    // One viewer of each transport, for the length of the test.
    let ws = tokio::spawn(ws_collect(addr, Duration::from_secs(6)));
    let http =
        tokio::spawn(async move { http_get(addr, "/live.webm", Duration::from_secs(6)).await });
    // Known HLS traffic: 3 playlists, 1 segment (whatever its state), 2 names that are not ours.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for _ in 0..3 {
        http_get(addr, "/hls/live.m3u8", Duration::from_secs(2)).await;
    }
    http_get(addr, "/hls/seg-0.ts", Duration::from_secs(2)).await;
    http_get(addr, "/hls/secret.txt", Duration::from_secs(2)).await;
    http_get(addr, "/hls/seg-x.ts", Duration::from_secs(2)).await;

    let before = status(addr).await;
    let (text, scrape) = fetch_metrics(addr).await;
    let after = status(addr).await;

    // Every sample has its TYPE; the parser saw the kinds we meant.
    for sample in &scrape.samples {
        let base = sample
            .metric
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            text.contains(&format!("# TYPE {base} ")),
            "{} has no TYPE line",
            sample.metric
        );
    }
    assert_eq!(typed_as(&scrape, "lenscast_viewers"), "gauge");
    assert_eq!(typed_as(&scrape, "lenscast_sent_bytes_total"), "counter");
    assert_eq!(
        typed_as(&scrape, "lenscast_pipeline_stage_seconds"),
        "histogram"
    );

    // Viewers by transport: one each, as /api/status counts two.
    assert_eq!(
        value(&scrape, "lenscast_viewers", &[("transport", "ws")]),
        1.0
    );
    assert_eq!(
        value(&scrape, "lenscast_viewers", &[("transport", "http")]),
        1.0
    );
    assert_eq!(before["viewers"], 2);
    assert_eq!(after["viewers"], 2);

    // Counters lie between the two snapshots taken around the scrape.
    let pairs = [
        ("lenscast_viewer_joins_total", "viewers_total"),
        ("lenscast_sent_bytes_total", "bytes_sent"),
        ("lenscast_sent_clusters_total", "clusters_sent"),
        ("lenscast_lag_resyncs_total", "lag_resyncs"),
        (
            "lenscast_slow_viewers_dropped_total",
            "slow_viewers_dropped",
        ),
    ];
    for (metric, field) in pairs {
        between(
            metric,
            value(&scrape, metric, &[]),
            &before[field],
            &after[field],
        );
    }
    assert!(value(&scrape, "lenscast_sent_bytes_total", &[]) > 10_000.0);
    for (metric, field) in [
        ("lenscast_frames_in_total", "frames_in"),
        ("lenscast_frames_out_total", "frames_out"),
        ("lenscast_frames_dropped_total", "frames_dropped"),
    ] {
        let v = value(&scrape, metric, &[]);
        between(
            metric,
            v,
            &before["pipeline"][field],
            &after["pipeline"][field],
        );
    }
    let segments = value(&scrape, "lenscast_hls_segments_total", &[]);
    let sequence = |s: &serde_json::Value| s["hls"]["latest_sequence"].as_f64().unwrap() + 1.0;
    assert!(
        sequence(&before) <= segments && segments <= sequence(&after),
        "{segments} HLS segments"
    );

    // The source, and no presenter.
    assert_eq!(before["source"]["state"], "live");
    assert_eq!(
        value(&scrape, "lenscast_source_state", &[("state", "live")]),
        1.0
    );
    assert_eq!(
        value(&scrape, "lenscast_source_state", &[("state", "ended")]),
        0.0
    );
    assert_eq!(value(&scrape, "lenscast_presenter_connected", &[]), 0.0);

    // HLS requests by kind: exactly what this test asked for.
    let hls = |kind| value(&scrape, "lenscast_hls_requests_total", &[("kind", kind)]);
    assert_eq!(hls("playlist"), 3.0);
    assert_eq!(hls("segment"), 1.0);
    assert_eq!(hls("other"), 2.0);

    // Stage times: a histogram per stage, counted for frames that went through it, with
    // cumulative buckets.
    for stage in ["decode", "detect", "encode", "arrival_to_broadcast"] {
        let sample = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "lenscast_pipeline_stage_seconds"
                    && s.labels.get("stage") == Some(stage)
            })
            .unwrap_or_else(|| panic!("no {stage} histogram"));
        let Value::Histogram(buckets) = &sample.value else {
            panic!("{stage}: {:?}", sample.value);
        };
        assert!(buckets.len() >= 5, "{stage}: {buckets:?}");
        assert!(
            buckets.windows(2).all(|w| w[0].count <= w[1].count),
            "{stage}: {buckets:?}"
        );
        let count = value(
            &scrape,
            "lenscast_pipeline_stage_seconds_count",
            &[("stage", stage)],
        );
        assert!(count >= 1.0, "{stage}: {count}");
        if stage != "detect" {
            // One per frame (detection runs at --detect-fps, on fewer).
            let frames_in = after["pipeline"]["frames_in"].as_f64().unwrap();
            assert!(count <= frames_in + 1.0, "{stage}: {count} of {frames_in}");
            assert!(count >= 30.0, "{stage}: {count}");
        }
    }

    let _ = ws.await;
    let _ = http.await;
    // Both viewers have gone: the gauges say so.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, later) = fetch_metrics(addr).await;
    assert_eq!(
        value(&later, "lenscast_viewers", &[("transport", "ws")]),
        0.0
    );
    assert_eq!(
        value(&later, "lenscast_viewers", &[("transport", "http")]),
        0.0
    );
    assert_eq!(value(&later, "lenscast_viewer_leaves_total", &[]), 2.0);
    server.shut_down().await;
}
