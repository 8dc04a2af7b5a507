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
//! in the same Cluster, whatever their tracks. Sources send their blocks in time order, and
//! the pipeline handles them one by one, so audio is written the moment it comes, unless the
//! caller says video from before it may still come (a decoder that reorders pictures): then
//! it waits in a short queue until video has caught up. The audio is what sets a player's live
//! edge (its buffered range is where audio and video overlap, and an Opus packet comes later
//! than the frames beside it), so a wait for the next video frame there is latency for
//! viewers. Should a block still come before the last one in its Cluster (a source whose
//! tracks are not in time order), it starts a Cluster of its own; such a Cluster does not
//! start at a keyframe, and viewers do not join at it.

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

/// Writes one live WebM stream as viewer-stream chunks ([`Output`]s), ready for the hub.
#[derive(Debug)]
pub struct LiveWriter {
    tracks: OutputTracks,
    /// Timestamp (ms ticks) of the open Cluster, if one is open.
    cluster: Option<i64>,
    /// Ticks of the last block written to the open Cluster (no block may go before it).
    last_block: i64,
    pending_audio: VecDeque<(MediaTime, Bytes)>,
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

    /// Writes one encoded video frame (after any audio it has caught up with) into `out`.
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
        let video_time = MediaTime::from_millis(ticks);
        self.flush_audio(out, |t| t <= video_time);
        let opened = self.place(ticks, keyframe);
        if self.cluster.is_some() {
            // A keyframe refers to nothing; any other frame to the one before it.
            let reference = previous.filter(|_| !keyframe).map(|last| last - ticks);
            let block = self.video_block(ticks, duration, reference, frame);
            if let Some(head) = opened {
                out.push(head);
            }
            out.push(Output::Block(block));
        }
    }

    /// Takes one audio frame and writes into `out` what can be written now: all of it, unless
    /// `video_pending` (video frames from before `time` may still come), when audio waits
    /// for video to catch up (at most MAX_AUDIO_HOLD).
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
        self.pending_audio.push_back((time, frame));
        let video = self
            .last_video
            .map(|(last, _)| MediaTime::from_millis(last));
        self.flush_audio(out, |t| {
            !video_pending || video.is_some_and(|v| t <= v) || time - t > MAX_AUDIO_HOLD
        });
    }

    fn flush_audio(&mut self, out: &mut Vec<Output>, ready: impl Fn(MediaTime) -> bool) {
        while let Some((time, _)) = self.pending_audio.front() {
            if !ready(*time) {
                break;
            }
            let (time, frame) = self.pending_audio.pop_front().expect("front exists");
            // Audio before the first video keyframe has no Cluster to go in; drop it.
            if self.cluster.is_none() {
                continue;
            }
            let ticks = time.as_ticks(SCALE);
            out.extend(self.place(ticks, false));
            out.push(Output::Block(self.simple_block(AUDIO_TRACK, ticks, &frame)));
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
        writer.video(ms(66), false, b"vp8 frame", &mut outputs);
        assert_eq!(outputs.len(), before + 4);
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
                (VIDEO_TRACK, 66)
            ]
        );
        assert_in_order(&clusters);
    }

    #[test]
    fn a_block_before_the_last_one_starts_a_cluster_of_its_own() {
        let mut writer = with_audio();
        let mut outputs = vec![writer.init()];
        writer.video(ms(0), true, b"vp8 keyframe", &mut outputs);
        writer.video(ms(33), false, b"vp8 frame", &mut outputs);
        // Audio that comes after later video (a source out of time order).
        writer.audio(ms(10), Bytes::from_static(b"opus"), false, &mut outputs);
        // Audio far ahead of stalled video goes out after MAX_AUDIO_HOLD, and the video that
        // comes after it is older.
        for t in (100..=700).step_by(20) {
            writer.audio(ms(t), Bytes::from_static(b"opus"), true, &mut outputs);
        }
        writer.video(ms(66), false, b"vp8 frame", &mut outputs);
        writer.video(ms(100), false, b"vp8 frame", &mut outputs);
        // Video catching up lets out the audio still held.
        writer.video(ms(720), false, b"vp8 frame", &mut outputs);
        let clusters = clusters(&outputs);
        assert_in_order(&clusters);
        let starts: Vec<_> = clusters.iter().map(|c| c.0).collect();
        assert_eq!(starts, [0, 10, 66], "{clusters:?}");
        // Only the first starts at a keyframe: viewers join there alone.
        assert_eq!(cluster_starts(&outputs), [true, false, false]);
        // Nothing was lost: 5 video frames and 32 audio blocks.
        let count = |track| {
            clusters
                .iter()
                .flat_map(|c| &c.1)
                .filter(|b| b.0 == track)
                .count()
        };
        assert_eq!((count(VIDEO_TRACK), count(AUDIO_TRACK)), (5, 32));
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
