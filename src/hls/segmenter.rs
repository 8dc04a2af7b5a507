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
//! Audio (AAC from [`crate::media::audio`]) goes into the same segments as a second stream.
//! The two streams are written in time order ([`Interleave`]): a picture waits until the
//! audio up to its time is in, so the audio just before a cut ends the old segment and each
//! segment's first audio packet starts within one AAC frame (21 ms) of its first picture.
//!
//! FFmpeg 5.1's libx264 wrapper leaves packet durations at 0 (PLATFORM.md). Each packet is
//! held back until the next one arrives and gets the gap to it as its duration; the last
//! packet of a segment thereby ends exactly where the next segment starts. That holds the
//! mirror one frame behind, nothing next to HLS's seconds.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ffmpeg::format::Pixel;
use ffmpeg::util::frame::Video as VideoFrame;
use ffmpeg::{codec, Packet, Rational};
use ffmpeg_next as ffmpeg;

use super::HlsError;
use crate::media::audio::{self, AacPacket};
use crate::media::scale::Scaler;

/// Encoder timestamps are milliseconds.
const TIME_BASE: Rational = Rational(1, 1000);

/// The longest a picture waits for the audio up to its time (or audio for the pictures): a
/// source whose audio stalls (or whose pictures do) must not stall the mirror. Well above how
/// far apart the two arrive from a live source (a recorder chunk, 100 ms here).
const MAX_INTERLEAVE_WAIT_US: i64 = 500_000;

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
    /// Packets on their way to the muxer, in time order.
    interleave: Interleave,
    /// The AAC stream's parameters, once the mirror has audio: every segment opened from then
    /// on has the audio stream.
    audio: Option<codec::Parameters>,
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
            interleave: Interleave::default(),
            audio: None,
            finished: Vec::new(),
        }
    }

    /// Gives segments opened from now on an AAC stream with these parameters (the mirror's
    /// encoder: the same for its life).
    pub fn enable_audio(&mut self, parameters: &codec::Parameters) {
        self.audio = Some(parameters.clone());
    }

    /// Whether the source now playing sends audio: if so, pictures wait (up to
    /// [`MAX_INTERLEAVE_WAIT_US`]) for the audio up to their time before they are written.
    pub fn expect_audio(&mut self, expected: bool) -> Result<(), HlsError> {
        self.interleave.wait_for_audio = expected;
        self.drain()
    }

    /// Adds AAC packets (timed in samples on the same timeline as the pictures' ms).
    pub fn push_audio(&mut self, packets: Vec<AacPacket>) -> Result<(), HlsError> {
        for packet in packets {
            self.interleave.push_audio(packet);
        }
        self.drain()
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
        if let Some(mut held) = self.held.take() {
            held.set_duration(pts - held.pts().unwrap_or(pts));
            self.interleave.push_video(held);
        }
        // The held packet's time already bounds what pictures can still come.
        self.interleave.video_horizon = Some(pts * 1000);
        self.held = Some(packet);
        self.drain()
    }

    /// Writes every packet whose turn has come (see [`Interleave`]); a failure spoils the
    /// segment it happened in only, and writing goes on.
    fn drain(&mut self) -> Result<(), HlsError> {
        let mut result = Ok(());
        while let Some(next) = self.interleave.next() {
            let written = match next {
                Next::Video(packet) => self.emit_video(packet),
                Next::Audio(packet) => self.emit_audio(packet),
            };
            result = result.and(written);
        }
        result
    }

    /// Writes a picture's packet, first cutting a new segment if this keyframe opens one: the
    /// one place segment boundaries are decided, at the moment of writing, after the audio
    /// that comes before it.
    fn emit_video(&mut self, packet: Packet) -> Result<(), HlsError> {
        let pts = packet.pts().ok_or(HlsError::NoTimestamp)?;
        let mut result = Ok(());
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
            let muxer = match TsMuxer::new(&encoder.parameters, self.audio.as_ref()) {
                Ok(muxer) => Some(muxer),
                Err(e) => {
                    result = Err(e);
                    None
                }
            };
            self.open = Some(OpenSegment {
                start_ms: pts,
                muxer,
            });
        }
        result.and(self.write(packet, Stream::Video))
    }

    /// Writes an AAC packet into the open segment, if it has an audio stream. Audio before the
    /// first picture, or before the segment that first has the stream, is left out.
    fn emit_audio(&mut self, packet: AacPacket) -> Result<(), HlsError> {
        self.write(packet.packet, Stream::Audio)
    }

    /// Writes a packet into the open segment; a failure spoils that segment only.
    fn write(&mut self, packet: Packet, stream: Stream) -> Result<(), HlsError> {
        // Before the first keyframe there is no segment; no picture is lost (the first picture
        // is always forced to be one).
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        let Some(muxer) = open.muxer.as_mut() else {
            return Ok(());
        };
        if let Err(e) = muxer.write(packet, stream) {
            open.muxer = None;
            return Err(e);
        }
        Ok(())
    }
}

/// The streams of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Video,
    Audio,
}

/// What [`Interleave`] lets out next.
enum Next {
    Video(Packet),
    Audio(AacPacket),
}

/// Puts picture and audio packets in time order for the muxer (HLS segments are cut on
/// pictures, and each segment must hold the audio of its own time span). A packet goes out
/// when no packet of the other stream can still come before it: the other stream has a
/// packet queued that is later, or has been seen up to its time. A stream that falls
/// [`MAX_INTERLEAVE_WAIT_US`] behind the other is not waited for.
#[derive(Default)]
struct Interleave {
    /// Picture packets, pts in ms.
    video: VecDeque<Packet>,
    /// AAC packets, pts in samples.
    audio: VecDeque<AacPacket>,
    /// The newest time each stream has reached, µs (a picture counts once it is encoded,
    /// even while held for its duration).
    video_horizon: Option<i64>,
    audio_horizon: Option<i64>,
    /// Whether audio is coming at all (the source has an audio track).
    wait_for_audio: bool,
}

impl Interleave {
    fn push_video(&mut self, packet: Packet) {
        self.video.push_back(packet);
    }

    fn push_audio(&mut self, packet: AacPacket) {
        let at = audio_us(packet.pts);
        self.audio_horizon = Some(self.audio_horizon.map_or(at, |h| h.max(at)));
        self.audio.push_back(packet);
        // Audio with no picture to go with yet is kept only for so long.
        while let (Some(first), None) = (self.audio.front(), self.video_horizon) {
            if at - audio_us(first.pts) <= MAX_INTERLEAVE_WAIT_US {
                break;
            }
            self.audio.pop_front();
        }
    }

    fn next(&mut self) -> Option<Next> {
        let video = self.video.front().map(|p| p.pts().unwrap_or(0) * 1000);
        let audio = self.audio.front().map(|p| audio_us(p.pts));
        let take_video = match (video, audio) {
            (Some(v), Some(a)) => v <= a,
            (Some(v), None) => {
                let audio_in = self.audio_horizon.is_some_and(|h| h >= v);
                let audio_behind = self
                    .audio_horizon
                    .is_none_or(|h| self.video_horizon.unwrap_or(v) - h > MAX_INTERLEAVE_WAIT_US);
                if !(!self.wait_for_audio || audio_in || audio_behind) {
                    return None;
                }
                true
            }
            (None, Some(a)) => {
                let video_in = self.video_horizon.is_some_and(|h| h >= a);
                let video_behind = self
                    .video_horizon
                    .is_some_and(|h| self.audio_horizon.unwrap_or(a) - h > MAX_INTERLEAVE_WAIT_US);
                if !(video_in || video_behind) {
                    return None;
                }
                false
            }
            (None, None) => return None,
        };
        if take_video {
            self.video.pop_front().map(Next::Video)
        } else {
            self.audio.pop_front().map(Next::Audio)
        }
    }
}

/// An AAC time (samples) in µs.
fn audio_us(samples: i64) -> i64 {
    samples * 1_000_000 / audio::SAMPLE_RATE as i64
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
    /// The muxer's time base for the pictures (stream 0).
    video_time_base: Rational,
    /// The AAC stream's index and time base, if the segment has audio.
    audio: Option<(usize, Rational)>,
}

impl TsMuxer {
    fn new(video: &codec::Parameters, audio: Option<&codec::Parameters>) -> Result<Self, HlsError> {
        let bytes = SharedBytes::default();
        let io = ffmpeg::format::context::StreamIo::from_write(bytes.clone())?;
        let mut output = ffmpeg::format::output_to_stream(io, None, Some("mpegts"))?;
        // Streams are described by the encoders' parameters; no codec is attached to them.
        output
            .add_stream(None::<ffmpeg::Codec>)?
            .set_parameters(video.clone());
        if let Some(audio) = audio {
            output
                .add_stream(None::<ffmpeg::Codec>)?
                .set_parameters(audio.clone());
        }
        output.write_header()?;
        // The muxer picks its own time base (1/90000) while writing the header.
        let time_base = |index| {
            output
                .stream(index)
                .map(|s| s.time_base())
                .ok_or(HlsError::NoTimestamp)
        };
        let video_time_base = time_base(0)?;
        let audio = match audio {
            Some(_) => Some((1, time_base(1)?)),
            None => None,
        };
        Ok(TsMuxer {
            output,
            bytes,
            video_time_base,
            audio,
        })
    }

    /// Writes a packet of `stream`; audio into a segment without the audio stream is left out.
    fn write(&mut self, mut packet: Packet, stream: Stream) -> Result<(), HlsError> {
        let (index, from, to) = match stream {
            Stream::Video => (0, TIME_BASE, self.video_time_base),
            Stream::Audio => match self.audio {
                Some((index, to)) => (index, audio::TIME_BASE, to),
                None => return Ok(()),
            },
        };
        if packet.dts().is_none() {
            packet.set_dts(packet.pts());
        }
        packet.set_stream(index);
        packet.rescale_ts(from, to);
        // Already in time order (Interleave): FFmpeg's interleaving queue is not needed.
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
