//! lenscast's media clock and WebM handling, apart from the server so that it builds in
//! seconds, without FFmpeg or OpenCV: what the fuzz targets (`fuzz/`) exercise.
//!
//! - [`clock`]: `MediaTime`, `TimestampScale`, a source's timestamp checks, the output
//!   timeline.
//! - [`webm`]: the incremental EBML stream reader (bytes in, events out), the live writer
//!   (encoded frames to viewer-stream chunks) and the remuxer (a passthrough source's events
//!   to the same chunks).
//!
//! The `lenscast` crate re-exports both as `lenscast::clock` and `lenscast::webm`.

pub mod clock;
pub mod webm;
