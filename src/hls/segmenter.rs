//! Segmenter: pictures → H.264 (libx264) → one complete MPEG-TS file per segment, in memory.
//!
//! Segments are cut where we force the keyframes, so every segment starts with an IDR frame
//! (with SPS and PPS in band) and plays on its own: the picture whose timestamp first reaches
//! `segment start + segment duration` is marked as an I frame (libx264 makes it an IDR:
//! `forced-idr`, and scene-cut keyframes are off so there are no others), and the packet it
//! becomes opens the next segment. With `tune=zerolatency` (no B-frames, no lookahead) each
//! picture comes out as its packet at once, so the two decisions agree.
//!
//! Each segment gets its own short-lived MPEG-TS muxer writing into a `Vec<u8>` through
//! ffmpeg-next's safe custom output (`StreamIo::from_write` + `output_to_stream`). That costs a
//! PAT/PMT per segment, which HLS requires anyway, and makes each segment's bytes complete the
//! moment its trailer is written: no splitting of a long-lived muxer's byte stream. Timestamps
//! stay on one timeline across segments, so players see a continuous stream.
//!
//! FFmpeg 5.1's libx264 wrapper leaves packet durations at 0 (PLATFORM.md). Each packet is
//! held back until the next one arrives and gets the gap to it as its duration; the last
//! packet of a segment thereby ends exactly where the next segment starts. That holds the
//! mirror one frame behind, nothing next to HLS's seconds.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ffmpeg::format::Pixel;
use ffmpeg::util::frame::Video as VideoFrame;
use ffmpeg::{codec, Packet, Rational};
use ffmpeg_next as ffmpeg;

use super::HlsError;
use crate::media::scale::Scaler;

/// Encoder timestamps are milliseconds.
const TIME_BASE: Rational = Rational(1, 1000);

/// One segment, muxed and complete.
#[derive(Debug)]
pub struct FinishedSegment {
    /// Timestamp of its first picture, ms.
    pub start_ms: i64,
    /// From its first picture to the next segment's first picture.
    pub duration: Duration,
    /// A whole MPEG-TS file.
    pub bytes: Vec<u8>,
}

/// Encoder settings.
#[derive(Debug, Clone)]
pub struct SegmenterConfig {
    /// Nominal segment length.
    pub segment: Duration,
    /// Target bits per second.
    pub bitrate: usize,
    /// libx264 preset (`veryfast`, `ultrafast`, …).
    pub preset: String,
}

/// Turns pictures into finished segments.
pub struct Segmenter {
    config: SegmenterConfig,
    segment_ms: i64,
    encoder: Option<H264>,
    scaler: Scaler,
    /// Where the last forced keyframe was (the picture-side half of the cut rule).
    forced_at: Option<i64>,
    open: Option<OpenSegment>,
    /// The newest packet, waiting for the next one to learn its duration.
    held: Option<Packet>,
    finished: Vec<FinishedSegment>,
}

impl Segmenter {
    /// A segmenter; libx264 opens at the first picture, at that picture's size.
    pub fn new(config: SegmenterConfig) -> Self {
        Segmenter {
            segment_ms: (config.segment.as_millis() as i64).max(1),
            config,
            encoder: None,
            scaler: Scaler::default(),
            forced_at: None,
            open: None,
            held: None,
            finished: Vec::new(),
        }
    }

    /// The encoder's picture size, once the first picture has arrived.
    pub fn size(&self) -> Option<(u32, u32)> {
        self.encoder.as_ref().map(|e| (e.width, e.height))
    }

    /// Encodes one picture at `ts_ms` (strictly increasing). Pictures of another size or
    /// format than the first are scaled to the first's size (rounded down to even). Segments
    /// this completes are collected for [`Segmenter::take_finished`]. On a muxing error the
    /// segment being written is dropped (never published half-made) and the next one starts
    /// clean at the next boundary.
    pub fn push(&mut self, picture: VideoFrame, ts_ms: i64) -> Result<(), HlsError> {
        let encoder = match &mut self.encoder {
            Some(encoder) => encoder,
            // 4:2:0 H.264 needs even sides: an odd one loses its last pixel row or column.
            None => self.encoder.insert(H264::open(
                picture.width() & !1,
                picture.height() & !1,
                &self.config,
            )?),
        };
        let mut frame = if picture.format() == Pixel::YUV420P
            && (picture.width(), picture.height()) == (encoder.width, encoder.height)
        {
            picture
        } else {
            // Another size than the first picture's: kept in shape, letterboxed.
            self.scaler
                .picture(&picture, encoder.width, encoder.height)?
        };
        let boundary = self
            .forced_at
            .is_none_or(|start| ts_ms >= start + self.segment_ms);
        if boundary {
            self.forced_at = Some(ts_ms);
        }
        frame.set_kind(if boundary {
            ffmpeg::picture::Type::I
        } else {
            ffmpeg::picture::Type::None
        });
        frame.set_pts(Some(ts_ms));
        encoder.encoder.send_frame(&frame)?;
        let mut packets = Vec::new();
        loop {
            let mut packet = Packet::empty();
            match encoder.encoder.receive_packet(&mut packet) {
                Ok(()) => packets.push(packet),
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::util::error::EAGAIN => {
                    break
                }
                Err(ffmpeg::Error::Eof) => break,
                Err(e) => return Err(e.into()),
            }
        }
        let mut result = Ok(());
        for packet in packets {
            if let Err(e) = self.on_packet(packet) {
                // Keep going: later packets may open a fresh segment.
                result = result.and(Err(e));
            }
        }
        result
    }

    /// Segments completed since the last call, oldest first.
    pub fn take_finished(&mut self) -> Vec<FinishedSegment> {
        std::mem::take(&mut self.finished)
    }

    fn on_packet(&mut self, packet: Packet) -> Result<(), HlsError> {
        // libx264 always stamps its packets; with no B-frames dts equals pts.
        let pts = packet.pts().ok_or(HlsError::NoTimestamp)?;
        let mut result = Ok(());
        if let Some(mut held) = self.held.take() {
            held.set_duration(pts - held.pts().unwrap_or(pts));
            result = self.write(held);
        }
        let cut = packet.is_key()
            && self
                .open
                .as_ref()
                .is_none_or(|open| pts >= open.start_ms + self.segment_ms);
        if cut {
            if let Some(open) = self.open.take() {
                self.finished.extend(open.finish(pts));
            }
            let encoder = self.encoder.as_ref().expect("a packet implies an encoder");
            // A segment whose muxer failed still marks time, so the next cut stays on the grid.
            let muxer = match TsMuxer::new(&encoder.parameters) {
                Ok(muxer) => Some(muxer),
                Err(e) => {
                    result = result.and(Err(e));
                    None
                }
            };
            self.open = Some(OpenSegment {
                start_ms: pts,
                muxer,
            });
        }
        self.held = Some(packet);
        result
    }

    /// Writes a packet into the open segment; a failure spoils that segment only.
    fn write(&mut self, packet: Packet) -> Result<(), HlsError> {
        // Before the first keyframe there is no segment; nothing is lost (the first picture
        // is always forced to be one).
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        let Some(muxer) = open.muxer.as_mut() else {
            return Ok(());
        };
        if let Err(e) = muxer.write(packet) {
            open.muxer = None;
            return Err(e);
        }
        Ok(())
    }
}

/// libx264, opened for one picture size.
struct H264 {
    encoder: ffmpeg::encoder::Video,
    /// What each segment's TS stream is declared with.
    parameters: codec::Parameters,
    width: u32,
    height: u32,
}

impl H264 {
    fn open(width: u32, height: u32, config: &SegmenterConfig) -> Result<Self, HlsError> {
        crate::media::decode::init();
        let codec = ffmpeg::encoder::find_by_name("libx264").ok_or(HlsError::NoEncoder)?;
        let mut context = codec::Context::new_with_codec(codec);
        // One thread: this is a second encoder beside the pipeline's, and on our two cores
        // x264's slice threads cost a quarter more CPU in all (0.9 vs 1.2 s per 300 frames
        // at 640x480) for a per-frame speed-up HLS, with its seconds of latency, does not need.
        context.set_threading(codec::threading::Config {
            kind: codec::threading::Type::Slice,
            count: 1,
            ..Default::default()
        });
        let mut encoder = context.encoder().video()?;
        encoder.set_width(width);
        encoder.set_height(height);
        encoder.set_format(Pixel::YUV420P);
        encoder.set_time_base(TIME_BASE);
        // Only a hint for x264's level and VBV arithmetic; rate control follows the real
        // timestamps. Without it x264 would assume 1000 fps from the time base.
        encoder.set_frame_rate(Some((30, 1)));
        encoder.set_bit_rate(config.bitrate);
        encoder.set_max_b_frames(0);
        // We force every keyframe; x264's own maximum interval is only a backstop.
        encoder.set_gop(600);
        // No GLOBAL_HEADER flag: MPEG-TS wants Annex-B with SPS/PPS repeated in band before
        // each IDR, which is what libx264 does without it.
        let kbps = (config.bitrate / 1000).max(1);
        let mut options = ffmpeg::Dictionary::new();
        options.set("preset", &config.preset);
        options.set("tune", "zerolatency");
        options.set("forced-idr", "1");
        // No scene-cut keyframes (they would start no segment and only cost bits); a VBV of
        // one second keeps each segment near the bitrate, which players and CDNs plan around.
        options.set(
            "x264-params",
            &format!("scenecut=0:vbv-maxrate={kbps}:vbv-bufsize={kbps}"),
        );
        let encoder = encoder.open_as_with(codec, options)?;
        let parameters = codec::Parameters::from(&encoder);
        Ok(H264 {
            encoder,
            parameters,
            width,
            height,
        })
    }
}

/// The segment being written.
struct OpenSegment {
    start_ms: i64,
    /// `None` once muxing failed: the segment is skipped.
    muxer: Option<TsMuxer>,
}

impl OpenSegment {
    /// Completes the segment, which ends where the next starts (`end_ms`).
    fn finish(self, end_ms: i64) -> Option<FinishedSegment> {
        let bytes = match self.muxer?.finish() {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(%error, "HLS segment could not be finished; skipped");
                return None;
            }
        };
        Some(FinishedSegment {
            start_ms: self.start_ms,
            duration: Duration::from_millis((end_ms - self.start_ms).max(0) as u64),
            bytes,
        })
    }
}

/// An MPEG-TS muxer writing one segment into memory.
struct TsMuxer {
    output: ffmpeg::format::context::Output,
    bytes: SharedBytes,
    time_base: Rational,
}

impl TsMuxer {
    fn new(parameters: &codec::Parameters) -> Result<Self, HlsError> {
        let bytes = SharedBytes::default();
        let io = ffmpeg::format::context::StreamIo::from_write(bytes.clone())?;
        let mut output = ffmpeg::format::output_to_stream(io, None, Some("mpegts"))?;
        // The stream is described by the encoder's parameters; no codec is attached to it.
        let mut stream = output.add_stream(None::<ffmpeg::Codec>)?;
        stream.set_parameters(parameters.clone());
        output.write_header()?;
        // The muxer picks its own time base (1/90000) while writing the header.
        let time_base = output
            .stream(0)
            .map(|s| s.time_base())
            .ok_or(HlsError::NoTimestamp)?;
        Ok(TsMuxer {
            output,
            bytes,
            time_base,
        })
    }

    fn write(&mut self, mut packet: Packet) -> Result<(), HlsError> {
        if packet.dts().is_none() {
            packet.set_dts(packet.pts());
        }
        packet.set_stream(0);
        packet.rescale_ts(TIME_BASE, self.time_base);
        // One stream, in order: no interleaving queue needed.
        packet.write(&mut self.output)?;
        Ok(())
    }

    /// Writes the trailer and hands back the file's bytes.
    fn finish(mut self) -> Result<Vec<u8>, HlsError> {
        self.output.write_trailer()?;
        // Dropping the context flushes what is still in FFmpeg's IO buffer into `bytes`.
        drop(self.output);
        Ok(self.bytes.take())
    }
}

/// The `Write` end FFmpeg's IO context owns, shared with us to read the bytes back: the
/// context keeps the writer until it is dropped, and gives no way to borrow it. Only the
/// segmenter's thread touches it, so the lock is never contended.
#[derive(Clone, Default)]
struct SharedBytes(Arc<Mutex<Vec<u8>>>);

impl SharedBytes {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().expect("segment bytes lock"))
    }
}

impl Write for SharedBytes {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("segment bytes lock")
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
