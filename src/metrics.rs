//! `/metrics`: the server's figures in Prometheus's text format, for monitoring at scale
//! (`/api/status` stays, for the pages).
//!
//! Rendering, escaping and histogram buckets come from `metrics-exporter-prometheus`, used as
//! a plain recorder owned by this server, not installed as the process-wide one: a process
//! can hold several servers (the tests do), and each must report only its own figures.
//!
//! Two kinds of figures:
//! - counted where they happen: viewers by transport (a guard per connection), HLS requests
//!   by kind, and the pipeline's stage times (histograms, recorded by its thread);
//! - copied at each scrape from the same counters `/api/status` reads (the hub's bytes,
//!   joins and drops; the pipeline's frames; the source; the HLS mirror), so the two always
//!   agree and nothing is counted twice.

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::hls::HlsStatus;
use crate::hub::HubStatus;
use crate::pipeline::PipelineStats;
use crate::relay::RelayStatus;
use crate::source::slot::{SourceState, SourceStatus};

/// The content type of Prometheus's text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Histogram buckets for stage times, seconds: from half a millisecond (a decode) to a second
/// (something is badly wrong).
const STAGE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
];

/// The kinds of HLS request counted (see [`Metrics::hls_request`]).
const HLS_KINDS: [&str; 4] = ["playlist", "segment", "part", "other"];

/// The server's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// How a viewer watches.
#[derive(Debug, Clone, Copy)]
pub enum Transport {
    /// `/ws/view`.
    WebSocket,
    /// `/live.webm`.
    Http,
    /// `/relay.webm`: an edge pulling the stream.
    Relay,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "ws",
            Transport::Http => "http",
            Transport::Relay => "relay",
        }
    }
}

/// Counts one viewer in `lenscast_viewers{transport}` while it lives.
pub struct ViewerGuard(Gauge);

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The pipeline's stage-time histograms, handed to its thread.
#[derive(Clone)]
pub struct StageTimes {
    pub decode: Histogram,
    pub detect: Histogram,
    pub encode: Histogram,
    /// A frame's arrival at the server to its bytes in the broadcast.
    pub arrival_to_broadcast: Histogram,
}

impl Default for StageTimes {
    /// Histograms that record nothing (a pipeline without a server, as benches run it).
    fn default() -> Self {
        StageTimes {
            decode: Histogram::noop(),
            detect: Histogram::noop(),
            encode: Histogram::noop(),
            arrival_to_broadcast: Histogram::noop(),
        }
    }
}

impl std::fmt::Debug for StageTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StageTimes")
    }
}

/// Everything a scrape copies (the same values `/api/status` shows).
pub struct Snapshot<'a> {
    pub hub: &'a HubStatus,
    pub source: &'a SourceStatus,
    pub pipeline: Option<&'a PipelineStats>,
    pub hls: Option<&'a HlsStatus>,
    /// Edge mode only.
    pub relay: Option<&'a RelayStatus>,
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(STAGE_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        let metrics = Metrics {
            inner: Arc::new(Inner { recorder, handle }),
        };
        metrics.describe();
        // Series that exist from the start, at zero, so a dashboard has a line to draw.
        for transport in [Transport::WebSocket, Transport::Http, Transport::Relay] {
            metrics
                .gauge("lenscast_viewers", &[("transport", transport.label())])
                .set(0.0);
        }
        for kind in HLS_KINDS {
            metrics
                .counter("lenscast_hls_requests_total", &[("kind", kind)])
                .absolute(0);
        }
        metrics
    }

    /// Counts a viewer of `transport` until the guard is dropped.
    pub fn viewer(&self, transport: Transport) -> ViewerGuard {
        let gauge = self.gauge("lenscast_viewers", &[("transport", transport.label())]);
        gauge.increment(1.0);
        ViewerGuard(gauge)
    }

    /// Counts a request for an HLS file of `kind` (`playlist`, `segment`, `part`, `other`):
    /// how a cache in front shows that it works.
    pub fn hls_request(&self, kind: &'static str) {
        self.counter("lenscast_hls_requests_total", &[("kind", kind)])
            .increment(1);
    }

    /// The pipeline's stage histograms (`lenscast_pipeline_stage_seconds{stage}`).
    pub fn stage_times(&self) -> StageTimes {
        let stage = |name| self.histogram("lenscast_pipeline_stage_seconds", &[("stage", name)]);
        StageTimes {
            decode: stage("decode"),
            detect: stage("detect"),
            encode: stage("encode"),
            arrival_to_broadcast: stage("arrival_to_broadcast"),
        }
    }

    /// The text for `GET /metrics`: first copies the snapshot's figures in.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let hub = snapshot.hub;
        let counters = [
            ("lenscast_viewer_joins_total", hub.viewers_total),
            (
                "lenscast_viewer_leaves_total",
                hub.viewers_total.saturating_sub(hub.viewers),
            ),
            ("lenscast_sent_bytes_total", hub.bytes_sent),
            ("lenscast_sent_clusters_total", hub.clusters_sent),
            ("lenscast_lag_resyncs_total", hub.lag_resyncs),
            (
                "lenscast_slow_viewers_dropped_total",
                hub.slow_viewers_dropped,
            ),
            ("lenscast_received_bytes_total", hub.bytes_in),
        ];
        for (name, value) in counters {
            self.counter(name, &[]).absolute(value);
        }
        self.gauge("lenscast_join_cache_bytes", &[])
            .set(hub.join_cache_bytes as f64);
        self.gauge("lenscast_buffered_bytes", &[])
            .set(hub.buffered_bytes as f64);
        self.gauge("lenscast_uptime_seconds", &[]).set(hub.uptime_s);

        let source = snapshot.source;
        for (state, name) in [
            (SourceState::Idle, "idle"),
            (SourceState::Live, "live"),
            (SourceState::Ended, "ended"),
        ] {
            self.gauge("lenscast_source_state", &[("state", name)])
                .set(f64::from(u8::from(source.state == state)));
        }
        self.gauge("lenscast_presenter_connected", &[])
            .set(f64::from(u8::from(source.presenter)));

        if let Some(pipeline) = snapshot.pipeline {
            for (name, value) in [
                ("lenscast_frames_in_total", pipeline.frames_in),
                ("lenscast_frames_out_total", pipeline.frames_out),
                ("lenscast_frames_dropped_total", pipeline.frames_dropped),
                ("lenscast_decode_errors_total", pipeline.decode_errors),
                ("lenscast_faces_total", pipeline.faces_total),
            ] {
                self.counter(name, &[]).absolute(value);
            }
        }
        if let Some(hls) = snapshot.hls {
            for (name, value) in [
                (
                    "lenscast_hls_segments_total",
                    hls.latest_sequence.map_or(0, |s| s + 1),
                ),
                ("lenscast_hls_frames_encoded_total", hls.frames_encoded),
                ("lenscast_hls_frames_dropped_total", hls.frames_dropped),
            ] {
                self.counter(name, &[]).absolute(value);
            }
            self.gauge("lenscast_hls_segments_listed", &[])
                .set(hls.segments as f64);
            self.gauge("lenscast_hls_segments_on_disk", &[])
                .set(hls.segments_on_disk as f64);
        }
        if let Some(relay) = snapshot.relay {
            self.gauge("lenscast_relay_connected", &[])
                .set(f64::from(u8::from(relay.connected)));
            self.counter("lenscast_relay_reconnects_total", &[])
                .absolute(relay.reconnects);
            self.counter("lenscast_relay_received_bytes_total", &[])
                .absolute(relay.received_bytes);
            // NaN while disconnected: no data is arriving to be late.
            self.gauge("lenscast_relay_data_age_seconds", &[])
                .set(relay.last_data_age_s.unwrap_or(f64::NAN));
            // NaN while unknown: disconnected, or the origin does not say how far it is.
            self.gauge("lenscast_relay_lag_seconds", &[])
                .set(relay.lag_s.unwrap_or(f64::NAN));
        }
        self.inner.handle.render()
    }

    fn describe(&self) {
        for (name, help) in HELP {
            // The exporter keeps one HELP text per name whatever the kind: one call covers any.
            self.inner
                .recorder
                .describe_counter((*name).into(), None, (*help).into());
        }
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Counter {
        self.inner
            .recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Gauge {
        self.inner
            .recorder
            .register_gauge(&key(name, labels), &METADATA)
    }

    fn histogram(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Histogram {
        self.inner
            .recorder
            .register_histogram(&key(name, labels), &METADATA)
    }
}

/// The HELP line of each metric.
const HELP: &[(&str, &str)] = &[
    ("lenscast_viewers", "Viewers connected now, by transport."),
    ("lenscast_viewer_joins_total", "Viewers that have joined."),
    ("lenscast_viewer_leaves_total", "Viewers that have left."),
    (
        "lenscast_sent_bytes_total",
        "Stream bytes written to viewers.",
    ),
    (
        "lenscast_sent_clusters_total",
        "WebM Clusters (chunks of about a frame) started for viewers.",
    ),
    (
        "lenscast_lag_resyncs_total",
        "Times a viewer fell behind and was moved to the next keyframe.",
    ),
    (
        "lenscast_slow_viewers_dropped_total",
        "Viewers disconnected because their connection accepted nothing for too long.",
    ),
    (
        "lenscast_received_bytes_total",
        "Bytes received from sources.",
    ),
    (
        "lenscast_source_state",
        "1 for the source's current state (idle, live, ended).",
    ),
    (
        "lenscast_presenter_connected",
        "1 while a presenter is publishing.",
    ),
    (
        "lenscast_pipeline_stage_seconds",
        "Time per frame in each pipeline stage.",
    ),
    (
        "lenscast_frames_in_total",
        "Frames decoded from the source.",
    ),
    ("lenscast_frames_out_total", "Frames encoded for viewers."),
    (
        "lenscast_frames_dropped_total",
        "Frames dropped because they arrived too late to keep up.",
    ),
    (
        "lenscast_hls_segments_total",
        "HLS segments written since the start.",
    ),
    (
        "lenscast_hls_requests_total",
        "HLS requests by file kind (a cache in front shows here).",
    ),
    (
        "lenscast_faces_total",
        "Faces found, summed over detections.",
    ),
    (
        "lenscast_decode_errors_total",
        "Source frames that did not decode.",
    ),
    (
        "lenscast_join_cache_bytes",
        "Bytes cached for joining viewers (since the latest keyframe Cluster).",
    ),
    (
        "lenscast_buffered_bytes",
        "Bytes held for viewers that are behind.",
    ),
    (
        "lenscast_uptime_seconds",
        "Seconds since the server started.",
    ),
    (
        "lenscast_hls_segments_listed",
        "Segments in the HLS playlist now.",
    ),
    (
        "lenscast_hls_segments_on_disk",
        "HLS segment files on disk now.",
    ),
    (
        "lenscast_hls_frames_encoded_total",
        "Pictures encoded to H.264 for HLS.",
    ),
    (
        "lenscast_hls_frames_dropped_total",
        "Pictures the HLS mirror could not take (it was behind).",
    ),
    (
        "lenscast_relay_connected",
        "Edge mode: 1 while the origin's stream is being received.",
    ),
    (
        "lenscast_relay_reconnects_total",
        "Edge mode: connections to the origin after the first.",
    ),
    (
        "lenscast_relay_received_bytes_total",
        "Edge mode: stream bytes received from the origin.",
    ),
    (
        "lenscast_relay_data_age_seconds",
        "Edge mode: seconds since the origin last sent anything.",
    ),
    (
        "lenscast_relay_lag_seconds",
        "Edge mode: how far the media received is behind the newest the origin has published, s.",
    ),
];

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, *v)).collect();
    Key::from_parts(name, labels)
}
