//! lenscast: a live video broadcaster. One presenter streams, many viewers watch.
//!
//! # Layout
//!
//! Data flows through one module per stage, in this order:
//!
//! - [`ingest`]: where WebM bytes come from (a looped file paced in real time, stdin) and the
//!   async loop that feeds them through the reader.
//! - [`webm`]: our own incremental EBML stream reader (bytes in, events out, synchronous and
//!   byte-exact) and the live muxer that turns the events of one source after another into a
//!   single viewer stream (init segment, unknown-size Clusters, forward-only timestamps).
//! - [`broadcast`]: the hub. Caches the init segment and the latest keyframe Cluster so a new
//!   viewer starts at once, and fans chunks out over a `tokio::sync::broadcast` channel; a
//!   viewer that lags skips to the next keyframe Cluster.
//! - [`http`]: warp routes: the viewer page, `/ws/view`, `/live.webm`, `/api/status`, `/healthz`.
//!
//! The binary (`main.rs`) parses the command line and wires these together.

pub mod broadcast;
pub mod http;
pub mod ingest;
pub mod webm;

/// The built-in demo: a face video from `fixtures/`, looped when no `--input` is given.
pub const DEMO_WEBM: &[u8] = include_bytes!("../fixtures/face.webm");
