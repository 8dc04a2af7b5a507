//! lenscast: a live video broadcaster. One presenter streams, many viewers watch, and the
//! server looks at every frame.
//!
//! # Layout
//!
//! Data flows through one module per stage, in this order:
//!
//! - [`ingest`]: where WebM bytes come from (the looped demo or a file, paced in real time;
//!   stdin; a presenter's upload) and the [`ingest::Feeder`] that runs them through the reader
//!   into the [`ingest::Sink`], which admits one source at a time.
//! - [`decode`]: compressed video frames to pictures (ffmpeg-next: VP8, VP9, H.264).
//! - [`annotate`]: Haar-cascade face detection (OpenCV) on its own thread, boxes drawn on
//!   every picture.
//! - [`encode`]: pictures to VP8 with libvpx in realtime mode.
//! - [`webm`]: our own live WebM writer, our incremental EBML stream reader (bytes in, events
//!   out, synchronous and byte-exact), and the live muxer that turns the events of one
//!   source after another into a single viewer stream (init segment, unknown-size Clusters,
//!   forward-only timestamps).
//! - [`hls`]: the HLS mirror: the same annotated pictures encoded again to H.264 (libx264),
//!   cut into MPEG-TS segments on forced keyframes, with a sliding live playlist, written
//!   atomically into a directory made for the run.
//! - [`broadcast`]: the hub. Caches the init segment and the latest keyframe Cluster so a new
//!   viewer starts at once, and fans chunks out over a `tokio::sync::broadcast` channel; a
//!   viewer that lags skips to the next keyframe Cluster.
//! - [`http`]: warp routes: pages, viewers (`/ws/view`, `/live.webm`), presenters
//!   (`/ws/publish`, `PUT /publish`), `/api/status`, `/healthz`.
//!
//! [`pipeline`] is the thread that drives decode → annotate → encode → webm for the sources
//! (with `--passthrough`, sources feed the hub directly). The binary (`main.rs`) parses the
//! command line and wires these together.

pub mod annotate;
pub mod broadcast;
pub mod decode;
pub mod encode;
pub mod hls;
pub mod http;
pub mod ingest;
pub mod pipeline;
pub mod webm;

/// The built-in demo: a face video from `fixtures/`, looped when no `--input` is given.
pub const DEMO_WEBM: &[u8] = include_bytes!("../fixtures/face.webm");
