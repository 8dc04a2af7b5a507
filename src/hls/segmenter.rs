//! Segmenter: pictures → H.264 (libx264) → MPEG-TS segments in memory, each also cut into
//! Low-Latency HLS parts (partial segments) of about 200 ms.
//!
//! Segments are cut where we force the keyframes, so every segment starts with an IDR frame
//! (with SPS and PPS in band) and plays on its own: the picture whose timestamp first reaches
//! `segment start + segment duration` is marked as an I frame (libx264 makes it an IDR:
//! `forced-idr`, and scene-cut keyframes are off so there are no others), and the packet it
//! becomes opens the next segment. With `tune=zerolatency` (no B-frames, no lookahead) each
//! picture comes out as its packet at once, so the two decisions agree.
//!
//! Parts are cut on the first picture at or past `part start + part duration`; they need no
//! keyframe, so only a segment's first part is independent. Every cut (segment or part) is
//! decided in one place, [`Segmenter::emit_video`], at the moment a video packet is about to
//! be written to the muxer: whatever else is written into the stream in between (audio
//! interleaved by timestamp) then lands on the right side of the cut.
//!
//! Each segment gets its own MPEG-TS muxer writing into a `Vec<u8>` through ffmpeg-next's safe
//! custom output (`StreamIo::from_write` + `output_to_stream`). At a part boundary the muxer is
//! flushed (see [`TsMuxer::flush`]) and the bytes written so far are the part; the segment's
//! bytes are its parts' bytes end to end, so a player fetching parts and one fetching the whole
//! segment get the same stream. A new muxer per segment costs a PAT/PMT per segment, which HLS
//! requires anyway. Within a segment, FFmpeg's mpegts muxer repeats PAT/PMT every 100 ms of
//! stream time (its default `pat_period`), so every ~200 ms part carries them as well.
//! Timestamps stay on one timeline across segments, so players see a continuous stream.
//!
//! Audio (AAC from [`crate::media::audio`]) goes into the same segments as a second stream.
//! The two streams are written in time order ([`Interleave`]): a picture waits until the
//! audio up to its time is in, so the audio just before a cut ends the old segment (or part)
//! and each segment's first audio packet starts within one AAC frame (21 ms) of its first
//! picture.
//!
//! FFmpeg 5.1's libx264 wrapper leaves packet durations at 0 (PLATFORM.md). Each packet is
//! held back until the next one arrives and gets the gap to it as its duration; the last
//! packet of a segment thereby ends exactly where the next segment starts. That holds the
//! mirror one frame behind.

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
/// far apart the two arrive from a live source (a recorder chunk: 20 ms from our presenter page,
/// up to a second from other tools).
const MAX_INTERLEAVE_WAIT_US: i64 = 500_000;

/// What the segmenter has completed, in publishing order.
#[derive(Debug)]
pub enum Finished {
    /// A part of the segment being written (all of a segment's parts come before it).
    Part(FinishedPart),
    /// A whole segment, after its parts.
    Segment(FinishedSegment),
}

/// One part (partial segment), muxed and complete.
#[derive(Debug)]
pub struct FinishedPart {
    /// Timestamp of its first picture, ms.
    pub start_ms: i64,
    /// From its first picture to the next part's first picture.
    pub duration: Duration,
    /// Starts with the segment's keyframe (the segment's first part).
    pub independent: bool,
    /// MPEG-TS packets; a segment's parts end to end are the segment's bytes.
    pub bytes: Vec<u8>,
}

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
    /// Nominal part length; `None` cuts whole segments only.
    pub part: Option<Duration>,
    /// Target bits per second.
    pub bitrate: usize,
    /// libx264 preset (`veryfast`, `ultrafast`, …).
    pub preset: String,
}

/// Turns pictures into finished parts and segments.
pub struct Segmenter {
    config: SegmenterConfig,
    segment_ms: i64,
    part_ms: Option<i64>,
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
    finished: Vec<Finished>,
}

impl Segmenter {
    /// A segmenter; libx264 opens at the first picture, at that picture's size.
    pub fn new(config: SegmenterConfig) -> Self {
        Segmenter {
            segment_ms: (config.segment.as_millis() as i64).max(1),
            part_ms: config.part.map(|part| (part.as_millis() as i64).max(1)),
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
    /// format than the first are scaled to the first's size (rounded down to even). Parts and
    /// segments this completes are collected for [`Segmenter::take_finished`]. On a muxing
    /// error the segment being written is dropped (never published half-made; parts already
    /// published stay orphans the next segment replaces) and the next one starts clean at the
    /// next boundary.
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

    /// Parts and segments completed since the last call, in publishing order.
    pub fn take_finished(&mut self) -> Vec<Finished> {
        std::mem::take(&mut self.finished)
    }

    /// Gives the held packet its duration (the gap to this one) and queues it for writing;
    /// holds this one.
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

    /// Writes a video packet into the stream, first cutting a segment (a keyframe at or past
    /// the segment's nominal end) or a part (any picture at or past the part's nominal end)
    /// there. The only place cuts are decided; a failure spoils the open segment only.
    fn emit_video(&mut self, packet: Packet) -> Result<(), HlsError> {
        let pts = packet.pts().ok_or(HlsError::NoTimestamp)?;
        let mut result = Ok(());
        let segment_cut = packet.is_key()
            && self
                .open
                .as_ref()
                .is_none_or(|open| pts >= open.start_ms + self.segment_ms);
        if segment_cut {
            if let Some(open) = self.open.take() {
                open.finish(pts, self.part_ms.is_some(), &mut self.finished);
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
                part_start_ms: pts,
                muxer,
            });
        } else if let (Some(open), Some(part_ms)) = (self.open.as_mut(), self.part_ms) {
            if pts >= open.part_start_ms + part_ms {
                if let Err(e) = open.cut_part(pts, &mut self.finished) {
                    result = Err(e);
                }
            }
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
    /// Where the part being written started.
    part_start_ms: i64,
    /// `None` once muxing failed: the segment is skipped.
    muxer: Option<TsMuxer>,
}

impl OpenSegment {
    /// Ends the part being written at `end_ms` (a new one starts there): its bytes are what
    /// the muxer has written since the last cut.
    fn cut_part(&mut self, end_ms: i64, finished: &mut Vec<Finished>) -> Result<(), HlsError> {
        let start_ms = std::mem::replace(&mut self.part_start_ms, end_ms);
        let Some(muxer) = self.muxer.as_mut() else {
            return Ok(());
        };
        match muxer.flush() {
            Ok(bytes) => {
                finished.push(Finished::Part(FinishedPart {
                    start_ms,
                    duration: millis_between(start_ms, end_ms),
                    independent: start_ms == self.start_ms,
                    bytes,
                }));
                Ok(())
            }
            Err(e) => {
                self.muxer = None;
                Err(e)
            }
        }
    }

    /// Completes the segment, which ends where the next starts (`end_ms`): its last part (with
    /// `parts`), then the segment, whose bytes are all of its parts' bytes.
    fn finish(self, end_ms: i64, parts: bool, finished: &mut Vec<Finished>) {
        let Some(mut muxer) = self.muxer else {
            return;
        };
        let before = std::mem::take(&mut muxer.written);
        let rest = match muxer.finish() {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(%error, "HLS segment could not be finished; skipped");
                return;
            }
        };
        let mut bytes = before;
        bytes.extend_from_slice(&rest);
        if parts {
            finished.push(Finished::Part(FinishedPart {
                start_ms: self.part_start_ms,
                duration: millis_between(self.part_start_ms, end_ms),
                independent: self.part_start_ms == self.start_ms,
                bytes: rest,
            }));
        }
        finished.push(Finished::Segment(FinishedSegment {
            start_ms: self.start_ms,
            duration: millis_between(self.start_ms, end_ms),
            bytes,
        }));
    }
}

fn millis_between(start_ms: i64, end_ms: i64) -> Duration {
    Duration::from_millis((end_ms - start_ms).max(0) as u64)
}

/// An MPEG-TS muxer writing one segment into memory.
struct TsMuxer {
    output: ffmpeg::format::context::Output,
    bytes: SharedBytes,
    /// The muxer's time base for the pictures (stream 0).
    video_time_base: Rational,
    /// The AAC stream's index and time base, if the segment has audio.
    audio: Option<(usize, Rational)>,
    /// The bytes of the parts cut so far (the segment's beginning).
    written: Vec<u8>,
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
            written: Vec::new(),
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

    /// Pushes everything written so far out of the muxer and hands back the bytes since the
    /// last flush (a part). The mpegts muxer writes each video packet's PES at once but may
    /// hold audio PES to fill them (AVFMT_ALLOW_FLUSH: a NULL packet writes those out). Its IO
    /// context buffers up to 32 KiB before calling our writer; with the default
    /// `flush_packets=-1` FFmpeg already empties it after every write, but that is an option,
    /// so `avio_flush` makes a part boundary not depend on it. ffmpeg-next wraps neither call,
    /// hence the raw ones.
    fn flush(&mut self) -> Result<Vec<u8>, HlsError> {
        // SAFETY: `output` owns a live format context whose header has been written and whose
        // `pb` is the custom IO context `output_to_stream` made (non-null, alive as long as
        // `output`). Both calls are made on this thread only, between packet writes, as
        // libavformat allows; neither keeps a pointer past the call.
        let flushed = unsafe {
            let context = self.output.as_mut_ptr();
            let flushed = ffmpeg::ffi::av_write_frame(context, std::ptr::null_mut());
            ffmpeg::ffi::avio_flush((*context).pb);
            flushed
        };
        if flushed < 0 {
            return Err(ffmpeg::Error::from(flushed).into());
        }
        let part = self.bytes.take();
        self.written.extend_from_slice(&part);
        Ok(part)
    }

    /// Writes the trailer and hands back the bytes since the last flush.
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

#[cfg(test)]
mod tests {
    use super::*;

    const FPS: i64 = 30;

    /// A moving diagonal pattern, so every picture costs the encoder something.
    fn picture(index: i64) -> VideoFrame {
        let (width, height) = (160, 120);
        let mut frame = VideoFrame::new(Pixel::YUV420P, width, height);
        for plane in 0..3 {
            let stride = frame.stride(plane);
            let rows = if plane == 0 { height } else { height / 2 } as usize;
            let data = frame.data_mut(plane);
            for y in 0..rows {
                for x in 0..stride {
                    data[y * stride + x] = ((x + y + index as usize * 4) % 200 + 16) as u8;
                }
            }
        }
        frame
    }

    /// `seconds` of 30 fps pictures (on whole-ms timestamps, as the mirror gives them) and
    /// one more picture, which closes the last segment.
    fn encode(part: Option<Duration>, seconds: i64) -> Vec<Finished> {
        let mut segmenter = Segmenter::new(SegmenterConfig {
            segment: Duration::from_secs(1),
            part,
            bitrate: 500_000,
            preset: "ultrafast".to_string(),
        });
        let mut finished = Vec::new();
        // Two frames more than the whole seconds: one is held back for its duration.
        for index in 0..=seconds * FPS + 1 {
            segmenter.push(picture(index), index * 1000 / FPS).unwrap();
            finished.extend(segmenter.take_finished());
        }
        finished
    }

    /// PIDs of the 188-byte TS packets in `bytes`, which must be whole packets.
    fn ts_pids(bytes: &[u8]) -> Vec<u16> {
        assert_eq!(
            bytes.len() % 188,
            0,
            "not whole TS packets: {}",
            bytes.len()
        );
        bytes
            .chunks(188)
            .map(|packet| {
                assert_eq!(packet[0], 0x47, "lost TS sync");
                u16::from(packet[1] & 0x1f) << 8 | u16::from(packet[2])
            })
            .collect()
    }

    #[test]
    fn parts_of_about_200_ms_make_up_each_segment_byte_for_byte() {
        let finished = encode(Some(Duration::from_millis(200)), 3);
        let mut parts: Vec<&FinishedPart> = Vec::new();
        let mut segments = 0;
        for item in &finished {
            match item {
                Finished::Part(part) => parts.push(part),
                Finished::Segment(segment) => {
                    segments += 1;
                    // Its parts came first, the first one independent and starting with it.
                    assert_eq!(parts.len(), 5, "segment at {} ms", segment.start_ms);
                    assert_eq!(parts[0].start_ms, segment.start_ms);
                    assert!(parts[0].independent);
                    assert!(parts[1..].iter().all(|p| !p.independent));
                    for pair in parts.windows(2) {
                        let end = pair[0].start_ms + pair[0].duration.as_millis() as i64;
                        assert_eq!(end, pair[1].start_ms, "parts are contiguous");
                    }
                    for part in &parts {
                        // Nominal 200 ms, cut on the first picture at or past it (33 ms apart).
                        let ms = part.duration.as_millis();
                        assert!((200..234).contains(&ms), "part of {ms} ms");
                        // Flushed whole at the cut, each carrying PAT (PID 0) and PMT.
                        let pids = ts_pids(&part.bytes);
                        assert!(pids.contains(&0), "a part without PAT");
                    }
                    assert_eq!(
                        parts.iter().map(|p| p.duration).sum::<Duration>(),
                        segment.duration
                    );
                    let joined: Vec<u8> = parts.iter().flat_map(|p| p.bytes.clone()).collect();
                    assert!(joined == segment.bytes, "parts differ from the segment");
                    parts.clear();
                }
            }
        }
        assert_eq!(segments, 3);

        // The real ffmpeg decodes a segment made of its parts, from a keyframe, cleanly.
        let Some(Finished::Segment(second)) = finished
            .iter()
            .filter(|f| matches!(f, Finished::Segment(_)))
            .nth(1)
        else {
            unreachable!()
        };
        let mut file = tempfile::Builder::new().suffix(".ts").tempfile().unwrap();
        file.write_all(&second.bytes).unwrap();
        let path = file.path().to_str().unwrap();
        let decoded = std::process::Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i", path, "-f", "null", "-"])
            .output()
            .unwrap();
        let errors = String::from_utf8_lossy(&decoded.stderr);
        assert!(decoded.status.success() && errors.is_empty(), "{errors}");
        let probed = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
            .args(["packet=flags", "-of", "csv=p=0", path])
            .output()
            .unwrap();
        let flags = String::from_utf8_lossy(&probed.stdout);
        let flags: Vec<&str> = flags.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(flags.len(), 30, "{flags:?}");
        assert!(flags[0].starts_with('K'), "{flags:?}");
        assert!(flags[1..].iter().all(|f| !f.starts_with('K')), "{flags:?}");
    }

    #[test]
    fn without_parts_only_whole_segments_come_out() {
        let finished = encode(None, 2);
        assert_eq!(finished.len(), 2);
        for item in &finished {
            let Finished::Segment(segment) = item else {
                panic!("a part without parts: {item:?}");
            };
            assert_eq!(segment.duration, Duration::from_secs(1));
            assert!(ts_pids(&segment.bytes).contains(&0));
        }
    }
}
