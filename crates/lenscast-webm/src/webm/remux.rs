//! The remuxer (for passthrough sources): reader events from one source after another in, one
//! endless viewer stream of [`Output`] chunks out, on the shared output [`Timeline`].
//!
//! What it does to the stream, and why:
//! - The init segment is the source's EBML header, a Segment of unknown size (a live stream has
//!   no end), its Info with Duration voided (a duration makes players treat the stream as a file
//!   that ends), and its Tracks as received. SeekHead, Cues, Tags and the like are dropped: they
//!   point at byte offsets that mean nothing to a viewer who joined late.
//! - Every Cluster is written with an unknown size and a rewritten Timestamp, so the viewer's
//!   timeline only moves forward across file loops and source restarts. Blocks are forwarded as
//!   the original `Bytes`: their timestamps are relative to the Cluster, so they need no change.
//! - A Cluster's head (its header plus any audio blocks before the first video block) is held
//!   back until the first video block shows whether the Cluster starts at a keyframe. Chrome's
//!   MediaRecorder writes Clusters that start with audio, and some that do not start at a video
//!   keyframe at all, so the Cluster boundary alone is not a safe join point.

use std::sync::Arc;

use bytes::Bytes;

use super::codecs;
use super::ebml::{self, id, UNKNOWN_SIZE};
use super::reader::{Block, Event, Info, Tracks};
use crate::clock::{MediaTime, Timeline, TimestampScale};

/// A Cluster head is flushed without waiting for video once it holds this much audio.
const MAX_PENDING_HEAD: usize = 256 * 1024;

/// What viewers need to know about a stream, beside its bytes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StreamInfo {
    /// MIME type with codecs, as passed to `MediaSource.isTypeSupported`.
    pub mime: String,
    /// Matroska codec IDs, in track order.
    pub codecs: Vec<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub has_video: bool,
    pub has_audio: bool,
}

impl StreamInfo {
    /// What a source's Tracks describe.
    pub fn from_tracks(tracks: &Tracks) -> Self {
        let video = tracks.video();
        StreamInfo {
            mime: codecs::mime_type(tracks),
            codecs: tracks.tracks.iter().map(|t| t.codec_id.clone()).collect(),
            width: video.and_then(|v| v.width),
            height: video.and_then(|v| v.height),
            has_video: video.is_some(),
            has_audio: tracks.audio().is_some(),
        }
    }
}

/// An initialization segment (EBML header + Segment start + Info + Tracks) and what it describes.
#[derive(Debug, Clone, PartialEq)]
pub struct InitSegment {
    pub bytes: Bytes,
    pub info: StreamInfo,
}

/// A piece of the viewer stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A new initialization segment (the first, or one whose bytes differ from the last).
    Init(Arc<InitSegment>),
    /// The start of a Cluster: header, Timestamp and any blocks before its first video block.
    /// `keyframe` is true when a viewer can start decoding here.
    ClusterStart { bytes: Bytes, keyframe: bool },
    /// A block continuing the current Cluster.
    Block(Bytes),
}

impl Output {
    /// The bytes this piece adds to the viewer stream.
    pub fn bytes(&self) -> &Bytes {
        match self {
            Output::Init(init) => &init.bytes,
            Output::ClusterStart { bytes, .. } | Output::Block(bytes) => bytes,
        }
    }
}

/// The source currently being read: what we know of it so far.
#[derive(Debug, Default)]
struct Source {
    header: Option<Bytes>,
    info: Option<Info>,
    tracks: Option<Tracks>,
    video_track: Option<u64>,
}

/// A Cluster whose head is held until its first video block arrives.
#[derive(Debug)]
struct PendingHead {
    bytes: Vec<u8>,
}

/// See the module docs. Synchronous: events in, outputs out.
#[derive(Debug)]
pub struct LiveMuxer {
    source: Source,
    init: Option<Arc<InitSegment>>,
    pending: Option<PendingHead>,
    in_cluster: bool,
    /// Output timestamp scale of the current init segment (the source's own).
    scale: TimestampScale,
    timeline: Timeline,
}

impl Default for LiveMuxer {
    fn default() -> Self {
        Self::new()
    }
}

impl LiveMuxer {
    /// A muxer with no stream yet.
    pub fn new() -> Self {
        LiveMuxer {
            source: Source::default(),
            init: None,
            pending: None,
            in_cluster: false,
            scale: TimestampScale::default(),
            timeline: Timeline::new(),
        }
    }

    /// The current initialization segment, once a source has sent its Tracks.
    pub fn init(&self) -> Option<&Arc<InitSegment>> {
        self.init.as_ref()
    }

    /// The newest output time of any block so far.
    pub fn latest(&self) -> Option<MediaTime> {
        self.timeline.latest()
    }

    /// Forget the current source (it ended or a new one takes over): the next stream's
    /// timestamps will be placed right after the last block viewers got.
    pub fn end_source(&mut self, out: &mut Vec<Output>) {
        self.flush_pending(out, false);
        self.source = Source::default();
        self.in_cluster = false;
        self.timeline.restart();
    }

    /// Feeds one reader event; the resulting viewer stream pieces are appended to `out`.
    pub fn push(&mut self, event: Event, out: &mut Vec<Output>) {
        match event {
            Event::Header { bytes, .. } => {
                self.end_source(out);
                self.source.header = Some(bytes);
            }
            Event::SegmentStart { .. } => {}
            Event::Info(info) => self.source.info = Some(info),
            Event::Tracks(tracks) => self.tracks(tracks, out),
            Event::ClusterStart { time, .. } => self.cluster_start(time, out),
            Event::Block(block) => self.block(block, out),
            Event::ClusterEnd => {
                self.flush_pending(out, false);
                self.in_cluster = false;
            }
        }
    }

    fn tracks(&mut self, tracks: Tracks, out: &mut Vec<Output>) {
        self.source.video_track = tracks.video().map(|t| t.number);
        let init = build_init(
            self.source.header.as_ref(),
            self.source.info.as_ref(),
            &tracks,
        );
        let scale = self
            .source
            .info
            .as_ref()
            .map(|i| i.timestamp_scale)
            .unwrap_or_default();
        self.source.tracks = Some(tracks);
        // A file loop sends the same init again: viewers already have it, so send nothing.
        if self.init.as_ref().map(|i| &i.bytes) != Some(&init.bytes) {
            let init = Arc::new(init);
            self.init = Some(init.clone());
            self.scale = scale;
            out.push(Output::Init(init));
        }
    }

    fn cluster_start(&mut self, time: MediaTime, out: &mut Vec<Output>) {
        self.flush_pending(out, false);
        // The first Cluster of a source goes where the last frames viewers got end, so the
        // timeline has neither a gap (players stall at gaps) nor an overlap.
        let tick = MediaTime::from_nanos(self.scale.nanos() as i64);
        let out_time = self.timeline.map(time, tick);
        let out_timecode = out_time.as_ticks(self.scale).max(0) as u64;
        let mut head = Vec::with_capacity(64);
        ebml::write_id(&mut head, id::CLUSTER);
        head.extend_from_slice(&UNKNOWN_SIZE);
        ebml::write_uint(&mut head, id::TIMESTAMP, out_timecode);
        self.pending = Some(PendingHead { bytes: head });
        self.in_cluster = true;
    }

    fn block(&mut self, block: Block, out: &mut Vec<Output>) {
        if !self.in_cluster {
            return;
        }
        self.timeline.place(block.track, block.time);
        let is_video = Some(block.track) == self.source.video_track;

        let Some(pending) = self.pending.as_mut() else {
            out.push(Output::Block(block.bytes));
            return;
        };
        let audio_only = self.source.video_track.is_none();
        if is_video || audio_only {
            let keyframe = audio_only || block.keyframe;
            self.flush_pending(out, keyframe);
            out.push(Output::Block(block.bytes));
        } else {
            pending.bytes.extend_from_slice(&block.bytes);
            if pending.bytes.len() > MAX_PENDING_HEAD {
                self.flush_pending(out, false);
            }
        }
    }

    fn flush_pending(&mut self, out: &mut Vec<Output>, keyframe: bool) {
        if let Some(head) = self.pending.take() {
            let keyframe = keyframe || self.source.video_track.is_none();
            out.push(Output::ClusterStart {
                bytes: Bytes::from(head.bytes),
                keyframe,
            });
        }
    }
}

/// Builds the init segment from a source's header, Info and Tracks.
fn build_init(header: Option<&Bytes>, info: Option<&Info>, tracks: &Tracks) -> InitSegment {
    let mut bytes = Vec::with_capacity(256 + tracks.bytes.len());
    match header {
        Some(header) => bytes.extend_from_slice(header),
        None => {
            let mut payload = Vec::new();
            ebml::write_element(&mut payload, id::DOC_TYPE, b"webm");
            ebml::write_element(&mut bytes, id::EBML, &payload);
        }
    }
    ebml::write_id(&mut bytes, id::SEGMENT);
    bytes.extend_from_slice(&UNKNOWN_SIZE);
    match info {
        Some(info) => {
            let start = bytes.len();
            bytes.extend_from_slice(&info.bytes);
            void_duration(&mut bytes[start..]);
        }
        None => {
            let mut payload = Vec::new();
            ebml::write_uint(&mut payload, id::TIMESTAMP_SCALE, 1_000_000);
            ebml::write_element(&mut bytes, id::INFO, &payload);
        }
    }
    bytes.extend_from_slice(&tracks.bytes);
    InitSegment {
        bytes: Bytes::from(bytes),
        info: StreamInfo::from_tracks(tracks),
    }
}

/// Replaces the Duration child of a whole Info element with a Void of the same length.
fn void_duration(info: &mut [u8]) {
    let Ok(Some(header)) = ebml::read_header(info) else {
        return;
    };
    let payload_start = header.len;
    let mut duration_at = None;
    for child in ebml::children(&info[payload_start..]) {
        let Ok((child_id, _, whole)) = child else {
            return;
        };
        if child_id == id::DURATION {
            let start = whole.as_ptr() as usize - info.as_ptr() as usize;
            duration_at = Some(start..start + whole.len());
        }
    }
    if let Some(range) = duration_at {
        ebml::void_in_place(&mut info[range]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webm::ebml::{write_element, write_uint};
    use crate::webm::StreamReader;

    fn file_like_stream(first_timecode: u64, clusters: usize, audio: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut header = Vec::new();
        write_element(&mut header, id::DOC_TYPE, b"webm");
        write_element(&mut out, id::EBML, &header);
        let mut segment = Vec::new();
        let mut info = Vec::new();
        write_uint(&mut info, id::TIMESTAMP_SCALE, 1_000_000);
        write_element(&mut info, id::DURATION, &1234.0f64.to_be_bytes());
        write_element(&mut segment, id::INFO, &info);
        let mut tracks = Vec::new();
        let mut entry = Vec::new();
        write_uint(&mut entry, id::TRACK_NUMBER, 1);
        write_uint(&mut entry, id::TRACK_TYPE, 1);
        write_element(&mut entry, id::CODEC_ID, b"V_VP8");
        write_element(&mut tracks, id::TRACK_ENTRY, &entry);
        if audio {
            let mut entry = Vec::new();
            write_uint(&mut entry, id::TRACK_NUMBER, 2);
            write_uint(&mut entry, id::TRACK_TYPE, 2);
            write_element(&mut entry, id::CODEC_ID, b"A_OPUS");
            write_element(&mut tracks, id::TRACK_ENTRY, &entry);
        }
        write_element(&mut segment, id::TRACKS, &tracks);
        for c in 0..clusters {
            let mut cluster = Vec::new();
            write_uint(
                &mut cluster,
                id::TIMESTAMP,
                first_timecode + c as u64 * 1000,
            );
            if audio {
                write_element(&mut cluster, id::SIMPLE_BLOCK, &[0x82, 0, 0, 0x80, 9]);
            }
            for f in 0..30u16 {
                let rel = (f * 33).to_be_bytes();
                let flags = if f == 0 { 0x80 } else { 0 };
                write_element(
                    &mut cluster,
                    id::SIMPLE_BLOCK,
                    &[0x81, rel[0], rel[1], flags, 7],
                );
            }
            write_element(&mut segment, id::CLUSTER, &cluster);
        }
        write_element(&mut segment, id::CUES, &[0xBB, 0x80]);
        write_element(&mut out, id::SEGMENT, &segment);
        out
    }

    fn mux(muxer: &mut LiveMuxer, bytes: &[u8]) -> Vec<Output> {
        let mut reader = StreamReader::new();
        reader.push(bytes);
        let mut out = Vec::new();
        while let Some(event) = reader.next_event().unwrap() {
            muxer.push(event, &mut out);
        }
        muxer.end_source(&mut out);
        out
    }

    /// Cluster timestamps found in the viewer stream, read back with our own reader.
    fn cluster_timecodes(outputs: &[Output]) -> Vec<u64> {
        let mut reader = StreamReader::new();
        let mut timecodes = Vec::new();
        for output in outputs {
            match output {
                Output::Init(init) => reader.push(&init.bytes),
                Output::ClusterStart { bytes, .. } | Output::Block(bytes) => reader.push(bytes),
            }
            while let Some(event) = reader.next_event().unwrap() {
                if let Event::ClusterStart { timecode, .. } = event {
                    timecodes.push(timecode);
                }
            }
        }
        timecodes
    }

    #[test]
    fn init_segment_is_live_shaped() {
        let mut muxer = LiveMuxer::new();
        let out = mux(&mut muxer, &file_like_stream(0, 1, false));
        let Output::Init(init) = &out[0] else {
            panic!("first output must be the init segment");
        };
        let mut reader = StreamReader::new();
        reader.push(&init.bytes);
        let mut events = Vec::new();
        while let Some(e) = reader.next_event().unwrap() {
            events.push(e);
        }
        assert!(events.contains(&Event::SegmentStart {
            size: ebml::Size::Unknown
        }));
        let info = events.iter().find_map(|e| match e {
            Event::Info(i) => Some(i),
            _ => None,
        });
        assert_eq!(info.unwrap().duration, None, "Duration was voided");
        assert_eq!(init.info.mime, "video/webm; codecs=\"vp8\"");
    }

    #[test]
    fn loops_keep_timecodes_monotonic_and_init_is_sent_once() {
        let mut muxer = LiveMuxer::new();
        let mut all = mux(&mut muxer, &file_like_stream(0, 3, false));
        all.extend(mux(&mut muxer, &file_like_stream(0, 3, false)));
        // A restarted source with a very different start time.
        all.extend(mux(&mut muxer, &file_like_stream(500_000, 2, false)));
        let inits = all.iter().filter(|o| matches!(o, Output::Init(_))).count();
        assert_eq!(inits, 1);
        let timecodes = cluster_timecodes(&all);
        assert_eq!(timecodes.len(), 8);
        assert!(
            timecodes.windows(2).all(|w| w[1] > w[0]),
            "timecodes move forward: {timecodes:?}"
        );
        // The loop starts where the last frame ends (2000 + 29*33 = 2957, +33).
        assert_eq!(timecodes[3], 2957 + 33);
    }

    #[test]
    fn audio_first_clusters_wait_for_the_video_keyframe() {
        let mut muxer = LiveMuxer::new();
        let out = mux(&mut muxer, &file_like_stream(0, 2, true));
        let starts: Vec<(bool, usize)> = out
            .iter()
            .filter_map(|o| match o {
                Output::ClusterStart { bytes, keyframe } => Some((*keyframe, bytes.len())),
                _ => None,
            })
            .collect();
        assert_eq!(starts.len(), 2);
        assert!(starts.iter().all(|(key, _)| *key));
        // Cluster header (4 + 8) + Timestamp + the held audio block (2 + 5).
        assert!(starts.iter().all(|(_, len)| *len > 12 + 7));
    }
}
