//! lenscast: a live video broadcaster. One presenter streams, many viewers watch, and the
//! server looks at every frame.
//!
//! # Layout
//!
//! Data flows through one module per stage, in this order:
//!
//! - [`source`]: where WebM bytes come from (the looped demo or a file, paced in real time;
//!   stdin; a presenter's upload). The [`source::Slot`] is the one owner of which source is
//!   live; each source feeds its bytes through our reader and its checks in a
//!   [`source::Feeder`].
//! - [`clock`]: media time ([`clock::MediaTime`]), the sanity rules for a source's
//!   timestamps, and the output [`clock::Timeline`] that stays continuous across sources.
//! - [`media`]: decode (ffmpeg-next: VP8, VP9, H.264), scale (aspect kept, letterboxed into
//!   the output size), encode (libvpx VP8 in realtime mode).
//! - [`annotate`]: Haar-cascade face detection (OpenCV) on its own thread, boxes drawn on
//!   every picture.
//! - [`pipeline`]: the thread that drives decode → scale → annotate → encode → webm for the
//!   live source (with `--passthrough`, sources are remuxed instead).
//! - [`webm`]: our incremental EBML stream reader (bytes in, events out, synchronous and
//!   byte-exact), the live writer that turns encoded frames into viewer-stream chunks, and the
//!   remuxer that turns a passthrough source's events into the same chunks.
//! - [`hub`]: caches the init segment and the latest keyframe Cluster so a new viewer starts
//!   at once, and fans chunks out from a ring bounded in chunks and bytes; a viewer that falls
//!   off the ring skips to the next keyframe Cluster.
//! - [`hls`]: the HLS mirror: the same annotated pictures encoded again to H.264, cut into
//!   MPEG-TS segments and Low-Latency HLS parts with a sliding live playlist, written
//!   atomically into a run directory.
//! - [`http`]: warp routes: pages, viewers (`/ws/view`, `/live.webm`), presenters
//!   (`/ws/publish`, `PUT /publish`), `/api/status`, `/healthz`.
//! - [`latency`]: glass-to-glass latency: the server clock the pages sync to, the capture
//!   stamps on keyframe Clusters, and the viewers' reports.
//! - [`metrics`]: `/metrics` in Prometheus's text format (the same figures as `/api/status`,
//!   plus viewers by transport, HLS requests and stage-time histograms).
//! - [`relay`]: edge mode (`--relay URL`): pull another lenscast's stream, serve it as our own,
//!   proxy its HLS.
//! - [`audience`]: whether anyone watches (viewers, recent HLS requests), so a looped input
//!   pauses when nobody does.
//!
//! [`priority`] lowers the threads whose work may wait (detection, the HLS mirror) below the
//! frame path. [`server`] wires these together (the binary, the tests and the benchmarks all use
//! [`server::Server::new`]) and owns shutdown.

pub mod annotate;
pub mod audience;
pub mod hls;
pub mod http;
pub mod hub;
pub mod latency;
pub mod media;
pub mod metrics;
pub mod pipeline;
pub mod priority;
pub mod relay;
pub mod server;
pub mod source;

/// Media time and WebM live in their own crate (`crates/lenscast-webm`), so that they build,
/// test and fuzz without FFmpeg or OpenCV.
pub use lenscast_webm::{clock, webm};

/// The built-in demo: a face video from `fixtures/`, looped when no `--input` is given.
pub const DEMO_WEBM: &[u8] = include_bytes!("../fixtures/face.webm");
