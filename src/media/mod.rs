//! Media: compressed frames to pictures and back, with FFmpeg (ffmpeg-next).
//!
//! - [`decode`]: VP8, VP9 and H.264 frames from the source into pictures.
//! - [`scale`]: any decoded picture into a YUV420P picture of the output size, its aspect
//!   ratio kept (letterboxed or pillarboxed).
//! - [`encode`]: pictures to VP8 with libvpx in realtime mode.

pub mod decode;
pub mod encode;
pub mod scale;
