//! Our live WebM writer: each encoded frame becomes bytes the moment it exists.
//!
//! libavformat's WebM muxer writes every Cluster with a known size, so it holds a whole Cluster
//! (about one keyframe interval, ~1 s) before emitting anything (see PLATFORM.md). A live
//! stream cannot wait that long, so we write the EBML ourselves: a Segment and Clusters of
//! unknown size, a new Cluster at each video keyframe, one block per frame.
//!
//! Each video frame is a BlockGroup with a BlockDuration, not a bare SimpleBlock: a browser's
//! WebM parser (Chromium's `WebMClusterParser`) holds back a block that has no duration until
//! the next block of its track arrives, to learn how long it lasts, and holds every other track
//! back to the same time. Without a duration each frame would reach the player one frame
//! interval late (33 ms at 30 fps, more at lower rates). The duration we declare is the longest
//! interval between the last second's frames (no live writer can know the next frame's time),
//! gaps left out: a frame that lasts longer than the media after it reads as media in hand.
//! The MSE spec (coded frame processing) reads a frame more than twice the previous frame's
//! duration after it as a discontinuity, and Chromium then drops frames up to the next
//! keyframe, so [`LiveWriter::needs_keyframe`] tells the encoder to start anew after such a gap.
//! Opus blocks stay SimpleBlocks: parsers read an Opus packet's duration from the packet.
//!
//! Chromium's WebM parser refuses a block whose timestamp is before the block written before it
//! in the same Cluster, whatever their tracks, so the writer puts blocks out in time order.
//! Sources send their blocks in time order, but the two tracks reach the writer apart: video
//! after its decode and encode (late when the machine is busy), audio as it comes (a live
//! presenter's Opus packet only once its 20 ms are over, after the video frames captured
//! beside it). So a block waits while the other track's next block is due before it (that
//! block's time is the last one's plus the shortest recent interval), at most MAX_DUE_HOLD;
//! and audio also waits when the caller says video from before it may still come (a decoder
//! that reorders pictures), until video has caught up, at most MAX_AUDIO_HOLD.
//!
//! Neither wait costs a viewer latency: a player's buffered range is where audio and video
//! overlap, so it can play a frame only once the audio beside it is in, whichever is written
//! first. Not waiting costs every viewer work: a block out of order would need a Cluster of its
//! own, and a live presenter's stream would carry several a second instead of one per keyframe,
//! each one more thing for every viewer's MSE to parse (and, before, each with a capture stamp
//! to send). Should a block still come before the last one in its Cluster (a wait ran out, or a
//! source whose tracks are not in time order), it starts a Cluster of its own; such a Cluster
//! does not start at a keyframe, and viewers do not join at it.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::ebml::{self, id, UNKNOWN_SIZE};
use super::{InitSegment, Output, StreamInfo};
use crate::clock::{MediaTime, TimestampScale};

/// Track numbers in our output.
pub const VIDEO_TRACK: u64 = 1;
pub const AUDIO_TRACK: u64 = 2;

/// Audio older than this (relative to the newest audio) is written even if video lags, so a
/// stalled video path never holds audio back for long.
const MAX_AUDIO_HOLD: MediaTime = MediaTime::from_millis(500);
/// A block this far (ticks) past the other track's next block is written even though that
/// block has not come, so a track that stalled or ended holds the other back by this much at
/// most.
const MAX_DUE_HOLD: i64 = 100;
/// The interval (ticks) assumed between audio packets until two have come (Opus's usual 20 ms).
const FIRST_AUDIO_INTERVAL: i64 = 20;
/// How many recent audio intervals the next packet's due time is worked out from.
const AUDIO_INTERVALS: usize = 8;
/// Block times wobble by a tick or two (capture clocks in µs, our ticks in ms): a block is
/// written without waiting only if it comes at least this much before the other track's next
/// block is due, and else it waits for that block.
const DUE_MARGIN: i64 = 2;

/// Our output's TimestampScale: 1 ms, what every WebM player expects.
const SCALE: TimestampScale = TimestampScale::MILLISECOND;

/// How far back the frame intervals go that set a video block's duration.
const DURATION_WINDOW: MediaTime = MediaTime::from_millis(1000);
/// The first video block's duration, before any interval is known.
const FIRST_DURATION: MediaTime = MediaTime::from_millis(100);
/// The longest duration a video block is given (a source of 2 frames a second): the player
/// takes a block's duration for media it holds, so a long one would read as media in hand.
const MAX_DURATION: MediaTime = MediaTime::from_millis(500);

/// The audio track we pass through: Opus as it came from the upload.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioTrack {
    pub codec_private: Option<Bytes>,
    pub sample_rate: f64,
    pub channels: u32,
}

/// What the output stream carries.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTracks {
    pub width: u32,
    pub height: u32,
    pub audio: Option<AudioTrack>,
}

/// A video frame waiting for audio from before it, with what its block will say.
#[derive(Debug)]
struct HeldFrame {
    ticks: i64,
    duration: i64,
    /// The ReferenceBlock (relative ticks), None for a keyframe.
    reference: Option<i64>,
    keyframe: bool,
    frame: Bytes,
}

/// The earliest block waiting to be written, and its time.
#[derive(Debug, Clone, Copy)]
enum Pending {
    Audio(MediaTime),
    Video(i64),
}

/// Whether a block at `ticks` may go before the other track's next block, due at `due` (its
/// last block's time plus its shortest recent interval: block times wobble, and a due time too
/// early only makes a block wait for one the player needs anyway, while one too late lets that
/// block come after it); or may go anyway, its track's newest block (`newest`) being
/// MAX_DUE_HOLD past the due time.
fn before_due(ticks: i64, due: i64, newest: i64) -> bool {
    ticks <= due - DUE_MARGIN || newest - due > MAX_DUE_HOLD
}

/// Writes one live WebM stream as viewer-stream chunks ([`Output`]s), ready for the hub.
#[derive(Debug)]
pub struct LiveWriter {
    tracks: OutputTracks,
    /// Timestamp (ms ticks) of the open Cluster, if one is open.
    cluster: Option<i64>,
    /// Ticks of the last block written to the open Cluster (no block may go before it).
    last_block: i64,
    pending_audio: VecDeque<(MediaTime, Bytes)>,
    /// Video frames waiting for audio from before them, oldest first.
    pending_video: VecDeque<HeldFrame>,
    /// The last audio packet taken (ticks).
    last_audio: Option<i64>,
    /// The intervals (ticks) between the last AUDIO_INTERVALS audio packets, oldest first.
    audio_intervals: VecDeque<i64>,
    /// Whether video from before the newest audio may still come (the caller's last word).
    video_pending: bool,
    /// Ticks of the last video block and the duration (ticks) it was given.
    last_video: Option<(i64, i64)>,
    /// Intervals between video frames over the last DURATION_WINDOW: (ticks of the later
    /// frame, interval in ticks), oldest first.
    intervals: VecDeque<(i64, i64)>,
}

impl LiveWriter {
    /// A writer for `tracks`; send its [`init`](Self::init) first.
    pub fn new(tracks: OutputTracks) -> Self {
        LiveWriter {
            tracks,
            cluster: None,
            last_block: 0,
            pending_audio: VecDeque::new(),
            pending_video: VecDeque::new(),
            last_audio: None,
            audio_intervals: VecDeque::new(),
            video_pending: false,
            last_video: None,
            intervals: VecDeque::new(),
        }
    }

    /// The tracks this writer was made for.
    pub fn tracks(&self) -> &OutputTracks {
        &self.tracks
    }

    /// The init segment: EBML header, unknown-size Segment, Info and Tracks.
    pub fn init(&self) -> Output {
        let mut out = Vec::with_capacity(256);
        let mut header = Vec::new();
        ebml::write_uint(&mut header, 0x4286, 1); // EBMLVersion
        ebml::write_uint(&mut header, 0x42F7, 1); // EBMLReadVersion
        ebml::write_uint(&mut header, 0x42F2, 4); // EBMLMaxIDLength
        ebml::write_uint(&mut header, 0x42F3, 8); // EBMLMaxSizeLength
        ebml::write_element(&mut header, id::DOC_TYPE, b"webm");
        ebml::write_uint(&mut header, 0x4287, 4); // DocTypeVersion
        ebml::write_uint(&mut header, 0x4285, 2); // DocTypeReadVersion
        ebml::write_element(&mut out, id::EBML, &header);

        ebml::write_id(&mut out, id::SEGMENT);
        out.extend_from_slice(&UNKNOWN_SIZE);

        let mut info = Vec::new();
        ebml::write_uint(&mut info, id::TIMESTAMP_SCALE, SCALE.nanos());
        ebml::write_element(&mut info, id::MUXING_APP, b"lenscast");
        ebml::write_element(&mut info, id::WRITING_APP, b"lenscast");
        ebml::write_element(&mut out, id::INFO, &info);

        let mut tracks = Vec::new();
        let mut video = Vec::new();
        ebml::write_uint(&mut video, id::TRACK_NUMBER, VIDEO_TRACK);
        ebml::write_uint(&mut video, id::TRACK_UID, VIDEO_TRACK);
        ebml::write_uint(&mut video, id::TRACK_TYPE, 1);
        ebml::write_element(&mut video, id::CODEC_ID, b"V_VP8");
        let mut dims = Vec::new();
        ebml::write_uint(&mut dims, id::PIXEL_WIDTH, self.tracks.width as u64);
        ebml::write_uint(&mut dims, id::PIXEL_HEIGHT, self.tracks.height as u64);
        ebml::write_element(&mut video, id::VIDEO, &dims);
        ebml::write_element(&mut tracks, id::TRACK_ENTRY, &video);
        if let Some(audio) = &self.tracks.audio {
            let mut entry = Vec::new();
            ebml::write_uint(&mut entry, id::TRACK_NUMBER, AUDIO_TRACK);
            ebml::write_uint(&mut entry, id::TRACK_UID, AUDIO_TRACK);
            ebml::write_uint(&mut entry, id::TRACK_TYPE, 2);
            ebml::write_element(&mut entry, id::CODEC_ID, b"A_OPUS");
            if let Some(private) = &audio.codec_private {
                ebml::write_element(&mut entry, id::CODEC_PRIVATE, private);
            }
            let mut settings = Vec::new();
            ebml::write_element(
                &mut settings,
                id::SAMPLING_FREQUENCY,
                &audio.sample_rate.to_be_bytes(),
            );
            ebml::write_uint(&mut settings, id::CHANNELS, audio.channels as u64);
            ebml::write_element(&mut entry, id::AUDIO, &settings);
            ebml::write_element(&mut tracks, id::TRACK_ENTRY, &entry);
        }
        ebml::write_element(&mut out, id::TRACKS, &tracks);
        let has_audio = self.tracks.audio.is_some();
        let info = StreamInfo {
            mime: if has_audio {
                "video/webm; codecs=\"vp8,opus\"".into()
            } else {
                "video/webm; codecs=\"vp8\"".into()
            },
            codecs: if has_audio {
                vec!["V_VP8".into(), "A_OPUS".into()]
            } else {
                vec!["V_VP8".into()]
            },
            width: Some(self.tracks.width),
            height: Some(self.tracks.height),
            has_video: true,
            has_audio,
        };
        Output::Init(Arc::new(InitSegment {
            bytes: Bytes::from(out),
            info,
        }))
    }

    /// True if a video frame at `time` must be a keyframe for players to take it at once: it
    /// comes more than twice the last frame's declared duration after that frame, which MSE
    /// reads as a discontinuity (Chromium then drops what follows up to the next keyframe).
    pub fn needs_keyframe(&self, time: MediaTime) -> bool {
        self.parted_at(time.as_ticks(SCALE))
    }

    /// True if a gap over twice the last video block's duration comes before `ticks`.
    fn parted_at(&self, ticks: i64) -> bool {
        self.last_video
            .is_some_and(|(last, duration)| ticks - last > 2 * duration)
    }

    /// Takes one encoded video frame and writes into `out` what can be written now: the frame
    /// (after any audio it has caught up with) unless audio from before it may still come.
    pub fn video(&mut self, time: MediaTime, keyframe: bool, frame: &[u8], out: &mut Vec<Output>) {
        let ticks = time.as_ticks(SCALE);
        // A block's time must not go back within the video track.
        let ticks = self
            .last_video
            .map_or(ticks, |(last, _)| ticks.max(last + 1));
        let previous = self.last_video.map(|(last, _)| last);
        // A gap the player takes for a discontinuity is not the stream's pace.
        let paced = previous.filter(|_| !self.parted_at(ticks));
        let duration = self.duration_after(paced, ticks);
        self.last_video = Some((ticks, duration));
        self.pending_video.push_back(HeldFrame {
            ticks,
            duration,
            // A keyframe refers to nothing; any other frame to the one before it.
            reference: previous.filter(|_| !keyframe).map(|last| last - ticks),
            keyframe,
            frame: Bytes::copy_from_slice(frame),
        });
        self.drain(out);
    }

    /// Takes one audio frame and writes into `out` what can be written now: all of it (and
    /// any video that waited for it), unless `video_pending` (video frames from before `time`
    /// may still come), when audio waits for video to catch up (at most MAX_AUDIO_HOLD).
    pub fn audio(
        &mut self,
        time: MediaTime,
        frame: Bytes,
        video_pending: bool,
        out: &mut Vec<Output>,
    ) {
        if self.tracks.audio.is_none() {
            return;
        }
        let ticks = time.as_ticks(SCALE);
        if let Some(last) = self.last_audio {
            // Opus packets last 2.5 to 120 ms; a longer interval is a gap, not the pace.
            self.audio_intervals.push_back((ticks - last).clamp(2, 120));
            if self.audio_intervals.len() > AUDIO_INTERVALS {
                self.audio_intervals.pop_front();
            }
        }
        self.last_audio = Some(ticks);
        self.video_pending = video_pending;
        self.pending_audio.push_back((time, frame));
        self.drain(out);
    }

    /// Writes everything still waiting, in time order: for a source that ended, whose other
    /// track will not catch up.
    pub fn flush(&mut self, out: &mut Vec<Output>) {
        while let Some(next) = self.next_pending() {
            self.write_pending(next, out);
        }
    }

    /// Writes waiting blocks in time order while the earliest of them may go.
    fn drain(&mut self, out: &mut Vec<Output>) {
        while let Some(next) = self.next_pending() {
            let ready = match next {
                Pending::Audio(time) => self.audio_ready(time),
                Pending::Video(ticks) => self.video_ready(ticks),
            };
            if !ready {
                break;
            }
            self.write_pending(next, out);
        }
    }

    /// The earliest waiting block (video first at equal times: it may open a Cluster).
    fn next_pending(&self) -> Option<Pending> {
        let audio = self.pending_audio.front().map(|(time, _)| *time);
        let video = self.pending_video.front().map(|held| held.ticks);
        match (audio, video) {
            (Some(a), Some(v)) if a.as_ticks(SCALE) < v => Some(Pending::Audio(a)),
            (_, Some(v)) => Some(Pending::Video(v)),
            (Some(a), None) => Some(Pending::Audio(a)),
            (None, None) => None,
        }
    }

    /// Audio at `time` may go unless video from before it may still come: a frame the
    /// decoder holds back (`video_pending`), or the next frame, when it is due before `time`.
    fn audio_ready(&self, time: MediaTime) -> bool {
        let newest = self.pending_audio.back().map_or(time, |(t, _)| *t);
        let Some((last, _)) = self.last_video else {
            // No video yet: this audio has no Cluster to go in, nor anything to wait for.
            return true;
        };
        let ticks = time.as_ticks(SCALE);
        if ticks <= last {
            return true;
        }
        if self.video_pending {
            return newest - time > MAX_AUDIO_HOLD;
        }
        let Some(interval) = self.intervals.iter().map(|&(_, i)| i).min() else {
            return true;
        };
        before_due(ticks, last + interval, newest.as_ticks(SCALE))
    }

    /// Video at `ticks` may go unless an audio packet from before it may still come.
    fn video_ready(&self, ticks: i64) -> bool {
        let newest = self.last_video.map_or(ticks, |(last, _)| last);
        let Some(last) = self.last_audio else {
            // No audio track: nothing to wait for. No packet yet: the first may be from
            // before this frame (a live presenter's is).
            return self.tracks.audio.is_none() || newest - ticks > MAX_DUE_HOLD;
        };
        let interval = self.audio_intervals.iter().copied().min();
        before_due(
            ticks,
            last + interval.unwrap_or(FIRST_AUDIO_INTERVAL),
            newest,
        )
    }

    fn write_pending(&mut self, next: Pending, out: &mut Vec<Output>) {
        match next {
            Pending::Audio(_) => {
                let (time, frame) = self.pending_audio.pop_front().expect("front exists");
                // Audio before the first video keyframe has no Cluster to go in; drop it.
                if self.cluster.is_none() {
                    return;
                }
                let ticks = time.as_ticks(SCALE);
                out.extend(self.place(ticks, false));
                out.push(Output::Block(self.simple_block(AUDIO_TRACK, ticks, &frame)));
            }
            Pending::Video(_) => {
                let held = self.pending_video.pop_front().expect("front exists");
                let opened = self.place(held.ticks, held.keyframe);
                if self.cluster.is_some() {
                    let block =
                        self.video_block(held.ticks, held.duration, held.reference, &held.frame);
                    out.extend(opened);
                    out.push(Output::Block(block));
                }
            }
        }
    }

    /// Makes room for a block at `ticks`: the start of a new Cluster (to write before the
    /// block) when it is a keyframe (a join point) or does not fit the open one, else nothing.
    /// A block fits when it is not before the Cluster's last block (which also keeps its
    /// relative timestamp from going negative, which Chromium refuses too) and within the
    /// relative timestamp's 16 bits.
    fn place(&mut self, ticks: i64, keyframe: bool) -> Option<Output> {
        let fits = self
            .cluster
            .is_some_and(|c| ticks >= self.last_block && ticks - c <= i16::MAX as i64);
        if fits && !keyframe {
            self.last_block = ticks;
            return None;
        }
        Some(self.open_cluster(ticks, keyframe))
    }

    fn open_cluster(&mut self, ticks: i64, keyframe: bool) -> Output {
        let ticks = ticks.max(0);
        let mut head = Vec::with_capacity(16);
        ebml::write_id(&mut head, id::CLUSTER);
        head.extend_from_slice(&UNKNOWN_SIZE);
        ebml::write_uint(&mut head, id::TIMESTAMP, ticks as u64);
        self.cluster = Some(ticks);
        self.last_block = ticks;
        Output::ClusterStart {
            bytes: Bytes::from(head),
            keyframe,
        }
    }

    /// The duration (ticks) of a video frame at `ticks`, `previous` being the frame before it
    /// unless a gap parted them: the longest interval over the last DURATION_WINDOW (the last
    /// frame's duration when a gap emptied it), at least 1 and at most MAX_DURATION.
    fn duration_after(&mut self, previous: Option<i64>, ticks: i64) -> i64 {
        if let Some(previous) = previous {
            self.intervals.push_back((ticks, ticks - previous));
        }
        let since = ticks - DURATION_WINDOW.as_ticks(SCALE);
        while self.intervals.front().is_some_and(|&(at, _)| at < since) {
            self.intervals.pop_front();
        }
        let longest = self.intervals.iter().map(|&(_, interval)| interval).max();
        longest
            .or(self.last_video.map(|(_, duration)| duration))
            .unwrap_or(FIRST_DURATION.as_ticks(SCALE))
            .clamp(1, MAX_DURATION.as_ticks(SCALE))
    }

    /// An audio frame as a SimpleBlock (every Opus frame is a keyframe). The frame is copied
    /// once, here, into the bytes every viewer shares.
    fn simple_block(&self, track: u64, ticks: i64, frame: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(frame.len() + 12);
        ebml::write_id(&mut out, id::SIMPLE_BLOCK);
        ebml::write_size(&mut out, frame.len() as u64 + 4);
        self.block_header(&mut out, track, ticks, 0x80);
        out.extend_from_slice(frame);
        Bytes::from(out)
    }

    /// A video frame as a BlockGroup: the Block, its BlockDuration and, unless it is a
    /// keyframe, a ReferenceBlock to the frame before (`reference`, relative ticks).
    fn video_block(
        &self,
        ticks: i64,
        duration: i64,
        reference: Option<i64>,
        frame: &[u8],
    ) -> Bytes {
        let mut tail = Vec::with_capacity(8);
        ebml::write_uint(&mut tail, id::BLOCK_DURATION, duration as u64);
        if let Some(reference) = reference {
            ebml::write_int(&mut tail, id::REFERENCE_BLOCK, reference);
        }
        let block_size = frame.len() as u64 + 4;
        let mut block_head = Vec::with_capacity(16);
        ebml::write_id(&mut block_head, id::BLOCK);
        ebml::write_size(&mut block_head, block_size);
        let group_size = block_head.len() as u64 + block_size + tail.len() as u64;
        let mut out = Vec::with_capacity(group_size as usize + 9);
        ebml::write_id(&mut out, id::BLOCK_GROUP);
        ebml::write_size(&mut out, group_size);
        out.extend_from_slice(&block_head);
        // A Block's flags have no keyframe bit: the ReferenceBlock says it.
        self.block_header(&mut out, VIDEO_TRACK, ticks, 0x00);
        out.extend_from_slice(frame);
        out.extend_from_slice(&tail);
        Bytes::from(out)
    }

    /// The 4 bytes every block starts with: track, time relative to the Cluster, flags.
    fn block_header(&self, out: &mut Vec<u8>, track: u64, ticks: i64, flags: u8) {
        let cluster = self.cluster.expect("a Cluster is open");
        let relative = (ticks - cluster) as i16;
        out.push(0x80 | track as u8); // track number as a 1-byte VINT
        out.extend_from_slice(&relative.to_be_bytes());
        out.push(flags);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webm::{Event, StreamReader};

    fn ms(v: i64) -> MediaTime {
        MediaTime::from_millis(v)
    }

    /// What our reader finds in the writer's `outputs`, sent one after the other.
    fn read_back(outputs: &[Output]) -> Vec<Event> {
        let mut reader = StreamReader::new();
        for output in outputs {
            reader.push(output.bytes());
        }
        std::iter::from_fn(|| reader.next_event().unwrap()).collect()
    }

    #[test]
    fn clusters_start_at_keyframes_and_audio_interleaves_in_order() {
        let mut writer = with_audio();
        let mut outputs = vec![writer.init()];
        for i in 0..60i64 {
            // Audio runs ahead of video, as behind a decoder that reorders pictures.
            writer.audio(
                ms(i * 20 + 15),
                Bytes::from_static(b"opus"),
                true,
                &mut outputs,
            );
            if i % 2 == 0 {
                writer.video(ms(i * 20), i % 30 == 0, b"vp8 frame", &mut outputs);
            }
        }
        // The chunks say what they are: two keyframe Cluster starts, blocks otherwise.
        assert_eq!(cluster_starts(&outputs), [true, true]);
        let mut clusters = Vec::new();
        let mut blocks = Vec::new();
        for event in read_back(&outputs) {
            match event {
                Event::ClusterStart { timecode, .. } => clusters.push(timecode),
                Event::Block(b) => blocks.push((b.track, b.timecode, b.keyframe)),
                _ => {}
            }
        }
        assert_eq!(clusters, vec![0, 600]);
        assert!(blocks.windows(2).all(|w| w[1].1 >= w[0].1), "{blocks:?}");
        let video: Vec<_> = blocks.iter().filter(|b| b.0 == VIDEO_TRACK).collect();
        assert_eq!(video.len(), 30);
        assert!(video[0].2 && video[15].2 && !video[1].2);
    }

    fn with_audio() -> LiveWriter {
        LiveWriter::new(OutputTracks {
            width: 64,
            height: 48,
            audio: Some(AudioTrack {
                codec_private: None,
                sample_rate: 48_000.0,
                channels: 2,
            }),
        })
    }

    /// The keyframe flag of each Cluster start among the writer's outputs.
    fn cluster_starts(outputs: &[Output]) -> Vec<bool> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::ClusterStart { keyframe, .. } => Some(*keyframe),
                _ => None,
            })
            .collect()
    }

    /// A Cluster read back: its timecode and its blocks as (track, timecode, relative timecode).
    type Cluster = (i64, Vec<(u64, i64, i16)>);

    fn clusters(outputs: &[Output]) -> Vec<Cluster> {
        let mut clusters: Vec<(i64, Vec<_>)> = Vec::new();
        for event in read_back(outputs) {
            match event {
                Event::ClusterStart { timecode, .. } => clusters.push((timecode as i64, vec![])),
                Event::Block(b) => clusters
                    .last_mut()
                    .expect("a block inside a Cluster")
                    .1
                    .push((b.track, b.timecode, b.relative_timecode)),
                _ => {}
            }
        }
        clusters
    }

    /// Chromium's rule: in a Cluster, no block before the Cluster or the block before it.
    fn assert_in_order(clusters: &[Cluster]) {
        for (start, blocks) in clusters {
            assert!(
                blocks.iter().all(|b| b.2 >= 0),
                "before its Cluster at {start}: {blocks:?}"
            );
            assert!(
                blocks.windows(2).all(|w| w[1].1 >= w[0].1),
                "out of order: {blocks:?}"
            );
        }
    }

    #[test]
    fn audio_goes_out_at_once_unless_video_from_before_it_may_still_come() {
        let mut writer = with_audio();
        let mut outputs = vec![writer.init()];
        // The first packet has no Cluster to go in, but says when the next is due (20).
        writer.audio(ms(0), Bytes::from_static(b"opus"), false, &mut outputs);
        writer.video(ms(0), true, b"vp8 keyframe", &mut outputs);
        // Video at 0, then audio at 20: with nothing pending it is written at once.
        let before = outputs.len();
        writer.audio(ms(20), Bytes::from_static(b"opus"), false, &mut outputs);
        assert_eq!(outputs.len(), before + 1);
        // With video pending it waits for the frame that passes it, and goes out before it.
        writer.audio(ms(40), Bytes::from_static(b"opus"), true, &mut outputs);
        assert_eq!(outputs.len(), before + 1);
        writer.video(ms(33), false, b"vp8 frame", &mut outputs);
        assert_eq!(outputs.len(), before + 2);
        // The frame at 66 lets the audio at 40 out, but waits itself for the packet due at 60.
        writer.video(ms(66), false, b"vp8 frame", &mut outputs);
        assert_eq!(outputs.len(), before + 3);
        writer.audio(ms(60), Bytes::from_static(b"opus"), false, &mut outputs);
        assert_eq!(outputs.len(), before + 5);
        let clusters = clusters(&outputs);
        assert_eq!(clusters.len(), 1, "{clusters:?}");
        let tracks_and_times: Vec<_> = clusters[0].1.iter().map(|b| (b.0, b.1)).collect();
        assert_eq!(
            tracks_and_times,
            [
                (VIDEO_TRACK, 0),
                (AUDIO_TRACK, 20),
                (VIDEO_TRACK, 33),
                (AUDIO_TRACK, 40),
                (AUDIO_TRACK, 60),
                (VIDEO_TRACK, 66)
            ]
        );
        assert_in_order(&clusters);
    }

    #[test]
    fn a_block_before_the_last_one_starts_a_cluster_of_its_own() {
        let mut writer = with_audio();
        let mut outputs = vec![writer.init()];
        writer.audio(ms(0), Bytes::from_static(b"opus"), false, &mut outputs);
        writer.video(ms(0), true, b"vp8 keyframe", &mut outputs);
        // The audio due at 20 does not come: video waits MAX_DUE_HOLD for it, then goes.
        for t in [33, 66, 100, 133] {
            writer.video(ms(t), false, b"vp8 frame", &mut outputs);
        }
        // Then it comes, after later video.
        writer.audio(ms(20), Bytes::from_static(b"opus"), false, &mut outputs);
        // Audio far ahead of stalled video (a decoder holding pictures) goes out after
        // MAX_AUDIO_HOLD, and the video that comes after it is older.
        for t in (140..=740).step_by(20) {
            writer.audio(ms(t), Bytes::from_static(b"opus"), true, &mut outputs);
        }
        writer.video(ms(166), false, b"vp8 frame", &mut outputs);
        writer.video(ms(200), false, b"vp8 frame", &mut outputs);
        // Video catching up lets out the audio still held; the source then ends, and the frame
        // that waited for audio due at 760 goes out.
        writer.video(ms(760), false, b"vp8 frame", &mut outputs);
        writer.flush(&mut outputs);
        let clusters = clusters(&outputs);
        assert_in_order(&clusters);
        let starts: Vec<_> = clusters.iter().map(|c| c.0).collect();
        assert_eq!(starts, [0, 20, 166], "{clusters:?}");
        // Only the first starts at a keyframe: viewers join there alone.
        assert_eq!(cluster_starts(&outputs), [true, false, false]);
        // Nothing was lost but the packet before the first Cluster.
        assert_eq!(
            (count(&clusters, VIDEO_TRACK), count(&clusters, AUDIO_TRACK)),
            (8, 32)
        );
    }

    /// Counts the blocks of `track` in `clusters`.
    fn count(clusters: &[Cluster], track: u64) -> usize {
        clusters
            .iter()
            .flat_map(|c| &c.1)
            .filter(|b| b.0 == track)
            .count()
    }

    #[test]
    fn blocks_wait_for_the_other_tracks_earlier_block_so_clusters_start_at_keyframes_only() {
        // A live presenter: 30 fps video reaching the writer 5 ms after capture, but every
        // seventh frame 45 ms (a busy encoder; the frames behind it queue up), and Opus
        // packets of 20 ms, their times wobbling by a tick, reaching it 3 ms after their 20 ms
        // are over. So audio often comes after the video beside it, and sometimes before.
        #[derive(Clone, Copy, PartialEq)]
        enum Arrival {
            Video(i64),
            Audio(i64),
        }
        let mut arrivals = Vec::new();
        let mut video_came = 0;
        for i in 0..90i64 {
            let t = i * 1000 / 30;
            video_came = (t + if i % 7 == 3 { 45 } else { 5 }).max(video_came);
            arrivals.push((video_came, Arrival::Video(t)));
        }
        for i in 0..150i64 {
            let a = i * 20 + [0, 1, -1][i as usize % 3];
            arrivals.push((a + 23, Arrival::Audio(a)));
        }
        arrivals.sort_by_key(|(at, _)| *at);
        let came = |arrival| arrivals.iter().find(|(_, a)| *a == arrival).unwrap().0;
        // The other track's first block at or after `t`, when it came (or never).
        let other_reached = |video: bool, t: i64| {
            arrivals
                .iter()
                .filter(|(_, a)| match *a {
                    Arrival::Audio(x) => video && x >= t,
                    Arrival::Video(x) => !video && x >= t,
                })
                .map(|(at, _)| *at)
                .min()
                .unwrap_or(i64::MAX)
        };
        let mut writer = with_audio();
        let mut outputs = vec![writer.init()];
        // Each block as it is written: (track, time, the arrival that let it out).
        let mut written = Vec::new();
        for &(at, arrival) in &arrivals {
            let before = outputs.len();
            match arrival {
                Arrival::Video(t) => writer.video(ms(t), t % 1000 == 0, b"vp8", &mut outputs),
                Arrival::Audio(a) => {
                    writer.audio(ms(a), Bytes::from_static(b"opus"), false, &mut outputs)
                }
            }
            let mut sent = vec![writer.init()];
            sent.extend(outputs[1..before].iter().cloned());
            let known = clusters(&sent).iter().map(|c| c.1.len()).sum::<usize>();
            sent.extend(outputs[before..].iter().cloned());
            for block in clusters(&sent).iter().flat_map(|c| &c.1).skip(known) {
                written.push((block.0, block.1, at));
            }
        }
        writer.flush(&mut outputs);
        let clusters = clusters(&outputs);
        assert_in_order(&clusters);
        // One Cluster per keyframe, as many as there were keyframes: none for late blocks.
        assert_eq!(cluster_starts(&outputs), [true, true, true], "{clusters:?}");
        let starts: Vec<_> = clusters.iter().map(|c| c.0).collect();
        assert_eq!(starts, [0, 1000, 2000]);
        // Nothing lost (audio before the first keyframe has no Cluster to go in).
        assert_eq!(count(&clusters, VIDEO_TRACK), 90);
        assert_eq!(count(&clusters, AUDIO_TRACK), 150);
        // A block waited only until the other track reached its time (which a player needs
        // anyway before it can play it), never later.
        assert_eq!(written.len(), 240);
        for &(track, t, at) in &written {
            let video = track == VIDEO_TRACK;
            let own = came(if video {
                Arrival::Video(t)
            } else {
                Arrival::Audio(t)
            });
            let bound = own.max(other_reached(video, t));
            assert!(
                at <= bound,
                "track {track} at {t} ms out at {at}, due by {bound}"
            );
        }
    }

    #[test]
    fn video_waits_at_most_max_due_hold_for_audio_that_stopped() {
        let mut writer = with_audio();
        let mut outputs = vec![writer.init()];
        writer.video(ms(0), true, b"vp8 keyframe", &mut outputs);
        for a in (0..=100).step_by(20) {
            writer.audio(ms(a), Bytes::from_static(b"opus"), false, &mut outputs);
        }
        // The audio stops; its next packet was due at 120.
        let mut held = Vec::new();
        for t in (33..=330).step_by(33) {
            let before = outputs.len();
            writer.video(ms(t), false, b"vp8 frame", &mut outputs);
            if outputs.len() == before {
                held.push(t);
            }
        }
        // Frames past the due audio wait while the newest is within MAX_DUE_HOLD of it.
        assert_eq!(held, [132, 165, 198]);
        let written = count(&clusters(&outputs), VIDEO_TRACK);
        assert_eq!(written, 11, "all but none held once 231 passed 120 + 100");
        // What still waits at the end of a source goes out on flush.
        writer.audio(ms(120), Bytes::from_static(b"opus"), false, &mut outputs);
        writer.video(ms(363), false, b"vp8 frame", &mut outputs);
        writer.flush(&mut outputs);
        let clusters = clusters(&outputs);
        assert_eq!(count(&clusters, VIDEO_TRACK), 12);
        assert_eq!(count(&clusters, AUDIO_TRACK), 7);
    }

    #[test]
    fn video_frames_last_the_longest_recent_interval_and_a_gap_asks_for_a_keyframe() {
        let mut writer = LiveWriter::new(OutputTracks {
            width: 64,
            height: 48,
            audio: None,
        });
        let mut outputs = vec![writer.init()];
        // 30 fps with the unevenness of a browser's timers.
        let mut times = vec![0i64];
        for i in 0..39 {
            times.push(times[i] + [30, 36, 33][i % 3]);
        }
        for (i, &t) in times.iter().enumerate() {
            assert!(!writer.needs_keyframe(ms(t)), "frame {i} at {t} ms");
            writer.video(ms(t), i == 0, b"vp8 frame", &mut outputs);
        }
        // Over twice the last frame's 36 ms is a discontinuity to a player.
        let last = *times.last().unwrap();
        assert!(!writer.needs_keyframe(ms(last + 72)));
        assert!(writer.needs_keyframe(ms(last + 73)));
        writer.video(ms(last + 600), true, b"vp8 keyframe", &mut outputs);
        writer.video(ms(last + 633), false, b"vp8 frame", &mut outputs);
        // A pause longer than the window: the pace is the one from before.
        assert!(writer.needs_keyframe(ms(last + 2133)));
        writer.video(ms(last + 2133), true, b"vp8 keyframe", &mut outputs);

        let blocks: Vec<_> = read_back(&outputs)
            .into_iter()
            .filter_map(|event| match event {
                Event::Block(b) => Some((b.timecode, b.duration, b.keyframe)),
                _ => None,
            })
            .collect();
        assert_eq!(blocks.len(), 43, "{blocks:?}");
        // The first frame has no interval yet; then the longest of the last second's.
        assert_eq!(blocks[0], (0, Some(100), true));
        assert_eq!(blocks[1], (30, Some(30), false));
        assert!(
            blocks[2..40].iter().all(|b| b.1 == Some(36) && !b.2),
            "{blocks:?}"
        );
        // The gap is not the pace: the frames after it last as long as those before.
        assert_eq!(blocks[40], (last + 600, Some(36), true));
        assert_eq!(blocks[41], (last + 633, Some(36), false));
        assert_eq!(blocks[42], (last + 2133, Some(36), true));
    }
}
