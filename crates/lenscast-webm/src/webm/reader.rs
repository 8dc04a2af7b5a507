//! The incremental EBML stream reader: WebM bytes in (split anywhere), events out.
//!
//! Works like mini-redis's frame parser: [`StreamReader::push`] appends bytes, and
//! [`StreamReader::next_event`] checks whether the next element has fully arrived, parses it,
//! and only then advances. `Ok(None)` means "need more bytes" and is not an error.
//!
//! The reader descends into Segment and Cluster (known or unknown size) and buffers only the
//! elements it must hand out whole: the EBML header, Info, Tracks, Cluster Timestamp,
//! SimpleBlock and BlockGroup, each at most `max_element` bytes. Everything else (SeekHead, Cues,
//! Tags, Void, ...) is skipped as it streams past, so memory stays bounded by one element plus
//! one pushed chunk, whatever the input.
//!
//! We wrote this instead of using webm-iterable's `TagDecoder` because that decoder copies every
//! payload into a new allocation per tag and re-serializes on output; the hot path here forwards
//! the original block bytes to many viewers as zero-copy `Bytes` slices. webm-iterable is used
//! in the tests to cross-check what this reader reports.

use bytes::{Buf, Bytes, BytesMut};

use super::ebml::{self, id, Header, Size};
use super::WebmError;
use crate::clock::{ClockError, MediaTime, TimestampScale};

/// Largest element the reader will buffer whole (blocks, Info, Tracks) unless told otherwise.
pub const DEFAULT_MAX_ELEMENT: usize = 16 * 1024 * 1024;
/// Largest element the reader will skip unread (Cues, Tags, Void, ...). Real files keep these
/// to a few MiB even for hours of media; a declared terabyte is an attack, not metadata.
pub const MAX_SKIPPED_ELEMENT: u64 = 256 * 1024 * 1024;
/// Most tracks a stream may declare: a webcam sends two, a rich file a handful.
pub const MAX_TRACKS: usize = 16;
/// Longest CodecID we accept (real ones are like `V_MPEG4/ISO/AVC`).
pub const MAX_CODEC_ID: usize = 64;
/// Largest CodecPrivate we accept (an avcC record or OpusHead is tens of bytes; 64 KiB leaves
/// room for rich H.264 parameter sets).
pub const MAX_CODEC_PRIVATE: usize = 64 * 1024;

/// What kind of media a track carries (Matroska TrackType).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    Video,
    Audio,
    Other,
}

/// One entry of the Tracks element.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub number: u64,
    pub kind: TrackKind,
    /// Matroska codec ID such as `V_VP8`, `V_VP9`, `V_MPEG4/ISO/AVC`, `A_OPUS` (NULs trimmed).
    pub codec_id: String,
    /// Codec initialisation data (e.g. the avcC record for H.264, OpusHead for Opus).
    pub codec_private: Option<Bytes>,
    /// Frame duration in nanoseconds, when the muxer wrote one.
    pub default_duration_ns: Option<u64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub sample_rate: Option<f64>,
    pub channels: Option<u32>,
}

/// The Info element, parsed, with its original bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    /// Nanoseconds per timestamp tick (1 ms by default), checked to lie in 1 µs..=1 s.
    pub timestamp_scale: TimestampScale,
    pub duration: Option<f64>,
    /// The whole element as received.
    pub bytes: Bytes,
}

/// The Tracks element, parsed, with its original bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracks {
    pub tracks: Vec<Track>,
    /// The whole element as received.
    pub bytes: Bytes,
}

impl Tracks {
    /// The first video track, if any.
    pub fn video(&self) -> Option<&Track> {
        self.tracks.iter().find(|t| t.kind == TrackKind::Video)
    }

    /// The first audio track, if any.
    pub fn audio(&self) -> Option<&Track> {
        self.tracks.iter().find(|t| t.kind == TrackKind::Audio)
    }
}

/// One SimpleBlock or BlockGroup with what the rest of the pipeline needs to know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub track: u64,
    /// Timestamp relative to the enclosing Cluster's, in timestamp ticks.
    pub relative_timecode: i16,
    /// Cluster timestamp plus the relative timestamp, in ticks.
    pub timecode: i64,
    /// `timecode` in the stream's TimestampScale: the block's time on its source's clock.
    pub time: MediaTime,
    pub keyframe: bool,
    /// A BlockGroup's BlockDuration, in timestamp ticks (a SimpleBlock has none).
    pub duration: Option<u64>,
    /// The whole SimpleBlock or BlockGroup element as received (header included).
    pub bytes: Bytes,
    /// Where the frame data starts inside the Block payload (after track, timecode, flags).
    frame_start: usize,
    frame_end: usize,
}

impl Block {
    /// The coded frame(s) carried by the block (laced frames come back concatenated).
    pub fn frame(&self) -> Bytes {
        self.bytes.slice(self.frame_start..self.frame_end)
    }
}

/// What the reader found, in stream order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An EBML header: a new WebM stream begins (also when one is concatenated after another).
    Header {
        doc_type: String,
        bytes: Bytes,
    },
    /// The Segment element opened.
    SegmentStart {
        size: Size,
    },
    Info(Info),
    Tracks(Tracks),
    /// A Cluster opened and its Timestamp element arrived.
    ClusterStart {
        timecode: u64,
        /// `timecode` in the stream's TimestampScale.
        time: MediaTime,
    },
    Block(Block),
    /// The Cluster ended (its known size was consumed, or the next level-1 element began).
    ClusterEnd,
}

/// What an open master element is; the reader descends only into these two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Master {
    Segment,
    Cluster,
}

#[derive(Debug, Clone, Copy)]
struct Open {
    master: Master,
    /// Absolute stream offset where the element ends, when its size is known.
    end: Option<u64>,
}

/// The outcome of handling one element whose header has arrived.
enum Step {
    Event(Event),
    /// The element is not complete yet.
    NeedMore,
    /// The element was consumed and produced no event.
    Continue,
}

/// Incremental, synchronous WebM reader. See the module docs.
#[derive(Debug)]
pub struct StreamReader {
    buf: BytesMut,
    /// Absolute stream offset of `buf[0]`.
    offset: u64,
    /// Bytes of an element being skipped that have not arrived yet.
    skipping: u64,
    stack: Vec<Open>,
    seen_header: bool,
    seen_tracks: bool,
    /// Offset where the current stream's EBML header began, to bound the wait for Tracks.
    stream_start: u64,
    cluster_timecode: Option<u64>,
    /// The current stream's TimestampScale (from its Info).
    scale: TimestampScale,
    /// Track numbers the current stream's Tracks declared; blocks of others are dropped.
    declared: Vec<u64>,
    /// Blocks dropped because their track was never declared.
    undeclared_blocks: u64,
    max_element: usize,
}

impl Default for StreamReader {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamReader {
    /// A reader with the default element size cap (16 MiB).
    pub fn new() -> Self {
        Self::with_max_element(DEFAULT_MAX_ELEMENT)
    }

    /// A reader that refuses to buffer any element larger than `max_element` bytes.
    pub fn with_max_element(max_element: usize) -> Self {
        StreamReader {
            buf: BytesMut::new(),
            offset: 0,
            skipping: 0,
            stack: Vec::new(),
            seen_header: false,
            seen_tracks: false,
            stream_start: 0,
            cluster_timecode: None,
            scale: TimestampScale::default(),
            declared: Vec::new(),
            undeclared_blocks: 0,
            max_element,
        }
    }

    /// Appends received bytes. Call [`next_event`](Self::next_event) until it returns `Ok(None)`.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet consumed (at most one element plus the last pushed chunk).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Total bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.offset
    }

    /// True if the bytes so far end inside an element (or a header): a stream that stops here
    /// was cut off.
    pub fn mid_element(&self) -> bool {
        self.skipping > 0 || !self.buf.is_empty()
    }

    /// Blocks dropped so far because their track number was never declared in Tracks.
    pub fn undeclared_blocks(&self) -> u64 {
        self.undeclared_blocks
    }

    /// True between a Cluster's start and its end.
    pub fn in_cluster(&self) -> bool {
        self.top() == Some(Master::Cluster)
    }

    /// The next event, `Ok(None)` if more bytes are needed. After an error the reader is spent:
    /// the stream cannot be resynchronised reliably, so the caller should drop the connection.
    pub fn next_event(&mut self) -> Result<Option<Event>, WebmError> {
        loop {
            if !self.skip_pending() {
                return Ok(None);
            }
            if let Some(event) = self.close_finished() {
                return Ok(Some(event));
            }
            let Some(header) = ebml::read_header(&self.buf)? else {
                return Ok(None);
            };
            if let Some(event) = self.close_for(header.id) {
                return Ok(Some(event));
            }
            self.check_fits_parent(&header)?;
            match self.element(header)? {
                Step::Event(event) => return Ok(Some(event)),
                Step::NeedMore => return Ok(None),
                // Consumed without an event (skipped, or a Cluster opened): on to the next.
                Step::Continue => {}
            }
        }
    }

    fn top(&self) -> Option<Master> {
        self.stack.last().map(|open| open.master)
    }

    /// Discards bytes of an element being skipped; false while more of it is still to come.
    fn skip_pending(&mut self) -> bool {
        if self.skipping > 0 {
            let n = self.skipping.min(self.buf.len() as u64);
            self.buf.advance(n as usize);
            self.offset += n;
            self.skipping -= n;
        }
        self.skipping == 0
    }

    /// Pops masters whose known size has been fully consumed.
    fn close_finished(&mut self) -> Option<Event> {
        while let Some(open) = self.stack.last().copied() {
            match open.end {
                Some(end) if self.offset >= end => {
                    if let Some(event) = self.pop() {
                        return Some(event);
                    }
                }
                _ => break,
            }
        }
        None
    }

    /// Closes an unknown-size Cluster (or everything, for a new EBML header) when `id` cannot be
    /// one of its children. A known-size Cluster is left to `close_finished`.
    fn close_for(&mut self, next: u32) -> Option<Event> {
        if next == id::EBML {
            while !self.stack.is_empty() {
                if let Some(event) = self.pop() {
                    return Some(event);
                }
            }
            return None;
        }
        let open = self.stack.last().copied()?;
        let ends_cluster = open.master == Master::Cluster && open.end.is_none() && is_level1(next);
        if ends_cluster {
            return self.pop();
        }
        None
    }

    fn pop(&mut self) -> Option<Event> {
        let open = self.stack.pop()?;
        if open.master == Master::Cluster {
            self.cluster_timecode = None;
            return Some(Event::ClusterEnd);
        }
        None
    }

    fn check_fits_parent(&self, header: &Header) -> Result<(), WebmError> {
        let Some(parent_end) = self.stack.last().and_then(|open| open.end) else {
            return Ok(());
        };
        let end = match header.size {
            Size::Known(size) => self
                .offset
                .saturating_add(header.len as u64)
                .saturating_add(size),
            Size::Unknown => return Ok(()),
        };
        if end > parent_end {
            return Err(WebmError::ChildOverrun(header.id));
        }
        Ok(())
    }

    /// Handles one element whose header has arrived.
    fn element(&mut self, header: Header) -> Result<Step, WebmError> {
        match (self.top(), header.id) {
            (_, id::EBML) => {
                let Some(bytes) = self.take_whole(&header)? else {
                    return Ok(Step::NeedMore);
                };
                let doc_type = parse_doc_type(&bytes[header.len..])?;
                self.seen_header = true;
                self.seen_tracks = false;
                self.scale = TimestampScale::default();
                self.stream_start = self.offset - bytes.len() as u64;
                Ok(Step::Event(Event::Header { doc_type, bytes }))
            }
            (_, _) if !self.seen_header => Err(WebmError::NotWebm),
            (None, id::SEGMENT) => {
                self.open(Master::Segment, &header);
                Ok(Step::Event(Event::SegmentStart { size: header.size }))
            }
            (Some(Master::Segment), id::INFO) => {
                let Some(bytes) = self.take_whole(&header)? else {
                    return Ok(Step::NeedMore);
                };
                let info = parse_info(bytes, header.len)?;
                self.scale = info.timestamp_scale;
                Ok(Step::Event(Event::Info(info)))
            }
            (Some(Master::Segment), id::TRACKS) => {
                let Some(bytes) = self.take_whole(&header)? else {
                    return Ok(Step::NeedMore);
                };
                let tracks = parse_tracks(bytes, header.len)?;
                self.declared = tracks.tracks.iter().map(|t| t.number).collect();
                self.seen_tracks = true;
                Ok(Step::Event(Event::Tracks(tracks)))
            }
            (Some(Master::Segment), id::CLUSTER) => {
                if !self.seen_tracks {
                    return Err(WebmError::TracksMissing);
                }
                self.open(Master::Cluster, &header);
                Ok(Step::Continue)
            }
            (Some(Master::Cluster), id::TIMESTAMP) => {
                let Some(bytes) = self.take_whole(&header)? else {
                    return Ok(Step::NeedMore);
                };
                let timecode = ebml::read_uint(&bytes[header.len..])?;
                let time = i64::try_from(timecode)
                    .ok()
                    .and_then(|ticks| MediaTime::from_ticks(ticks, self.scale))
                    .ok_or(WebmError::Clock(ClockError::OutOfRange))?;
                self.cluster_timecode = Some(timecode);
                Ok(Step::Event(Event::ClusterStart { timecode, time }))
            }
            (Some(Master::Cluster), id::SIMPLE_BLOCK | id::BLOCK_GROUP) => {
                let Some(cluster_timecode) = self.cluster_timecode else {
                    return Err(WebmError::BlockBeforeTimestamp);
                };
                let Some(bytes) = self.take_whole(&header)? else {
                    return Ok(Step::NeedMore);
                };
                let block = parse_block(bytes, &header, cluster_timecode, self.scale)?;
                if !self.declared.contains(&block.track) {
                    // Nothing downstream could use it; dropping it here keeps per-track work
                    // (and state) bounded by the declared tracks.
                    self.undeclared_blocks += 1;
                    return Ok(Step::Continue);
                }
                Ok(Step::Event(Event::Block(block)))
            }
            (Some(Master::Cluster), other) if is_level1(other) || other == id::SEGMENT => {
                // Only reachable for a known-size Cluster: an unknown-size one was closed already.
                Err(WebmError::Misplaced(other))
            }
            (None, other) if other != id::VOID => Err(WebmError::Misplaced(other)),
            _ => {
                if !self.seen_tracks && self.offset - self.stream_start > self.max_element as u64 {
                    // A stream may not make us wait forever for its Tracks.
                    return Err(WebmError::TracksMissing);
                }
                self.skip(&header)?;
                Ok(Step::Continue)
            }
        }
    }

    fn open(&mut self, master: Master, header: &Header) {
        let start = self.offset + header.len as u64;
        let end = match header.size {
            Size::Known(size) => Some(start.saturating_add(size)),
            Size::Unknown => None,
        };
        self.buf.advance(header.len);
        self.offset = start;
        if master == Master::Cluster {
            self.cluster_timecode = None;
        }
        self.stack.push(Open { master, end });
    }

    /// Splits off the whole element once it has arrived (`Ok(None)` until then).
    fn take_whole(&mut self, header: &Header) -> Result<Option<Bytes>, WebmError> {
        let Size::Known(size) = header.size else {
            return Err(WebmError::UnknownSizeNotAllowed(header.id));
        };
        if size > self.max_element as u64 {
            return Err(WebmError::ElementTooLarge {
                id: header.id,
                size,
                max: self.max_element,
            });
        }
        let total = header.len + size as usize;
        if self.buf.len() < total {
            // Reserve once so a large block does not reallocate on every small chunk.
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        self.offset += total as u64;
        Ok(Some(self.buf.split_to(total).freeze()))
    }

    fn skip(&mut self, header: &Header) -> Result<(), WebmError> {
        let Size::Known(size) = header.size else {
            return Err(WebmError::UnknownSizeNotAllowed(header.id));
        };
        if size > MAX_SKIPPED_ELEMENT {
            return Err(WebmError::ElementTooLarge {
                id: header.id,
                size,
                max: MAX_SKIPPED_ELEMENT as usize,
            });
        }
        self.buf.advance(header.len);
        self.offset += header.len as u64;
        self.skipping = size;
        self.skip_pending();
        Ok(())
    }
}

/// Level-1 elements (children of Segment). Seeing one ends an unknown-size Cluster.
fn is_level1(element: u32) -> bool {
    matches!(
        element,
        id::SEEK_HEAD
            | id::INFO
            | id::TRACKS
            | id::CLUSTER
            | id::CUES
            | id::CHAPTERS
            | id::TAGS
            | id::ATTACHMENTS
    )
}

fn parse_doc_type(payload: &[u8]) -> Result<String, WebmError> {
    let mut doc_type = None;
    for child in ebml::children(payload) {
        let (child_id, value, _) = child?;
        if child_id == id::DOC_TYPE {
            doc_type = Some(ebml::read_string(value));
        }
    }
    match doc_type {
        Some(doc) if doc == "webm" || doc == "matroska" => Ok(doc),
        Some(doc) => Err(WebmError::UnsupportedDocType(doc)),
        // DocType defaults to "matroska" when absent.
        None => Ok("matroska".to_string()),
    }
}

fn parse_info(bytes: Bytes, header_len: usize) -> Result<Info, WebmError> {
    let mut timestamp_scale = 1_000_000;
    let mut duration = None;
    for child in ebml::children(&bytes[header_len..]) {
        let (child_id, value, _) = child?;
        match child_id {
            id::TIMESTAMP_SCALE => timestamp_scale = ebml::read_uint(value)?,
            id::DURATION => duration = Some(ebml::read_float(value)?),
            _ => {}
        }
    }
    if timestamp_scale == 0 {
        return Err(WebmError::BadPayload("TimestampScale is 0"));
    }
    Ok(Info {
        timestamp_scale: TimestampScale::new(timestamp_scale)?,
        duration,
        bytes,
    })
}

fn parse_tracks(bytes: Bytes, header_len: usize) -> Result<Tracks, WebmError> {
    let mut tracks = Vec::new();
    for child in ebml::children(&bytes[header_len..]) {
        let (child_id, value, _) = child?;
        if child_id == id::TRACK_ENTRY {
            if tracks.len() == MAX_TRACKS {
                return Err(WebmError::TooManyTracks(MAX_TRACKS));
            }
            tracks.push(parse_track_entry(&bytes, value)?);
        }
    }
    if tracks.is_empty() {
        return Err(WebmError::BadPayload("Tracks has no TrackEntry"));
    }
    Ok(Tracks { tracks, bytes })
}

fn parse_track_entry(whole: &Bytes, entry: &[u8]) -> Result<Track, WebmError> {
    let mut track = Track {
        number: 0,
        kind: TrackKind::Other,
        codec_id: String::new(),
        codec_private: None,
        default_duration_ns: None,
        width: None,
        height: None,
        sample_rate: None,
        channels: None,
    };
    for child in ebml::children(entry) {
        let (child_id, value, _) = child?;
        match child_id {
            id::TRACK_NUMBER => track.number = ebml::read_uint(value)?,
            id::TRACK_TYPE => {
                track.kind = match ebml::read_uint(value)? {
                    1 => TrackKind::Video,
                    2 => TrackKind::Audio,
                    _ => TrackKind::Other,
                }
            }
            id::CODEC_ID if value.len() > MAX_CODEC_ID => {
                return Err(WebmError::BadPayload("CodecID longer than 64 bytes"))
            }
            id::CODEC_ID => track.codec_id = ebml::read_string(value),
            id::CODEC_PRIVATE if value.len() > MAX_CODEC_PRIVATE => {
                return Err(WebmError::BadPayload("CodecPrivate larger than 64 KiB"))
            }
            id::CODEC_PRIVATE => track.codec_private = Some(whole.slice_ref(value)),
            id::DEFAULT_DURATION => track.default_duration_ns = Some(ebml::read_uint(value)?),
            id::VIDEO => {
                for video_child in ebml::children(value) {
                    let (video_id, video_value, _) = video_child?;
                    match video_id {
                        id::PIXEL_WIDTH => track.width = Some(small_uint(video_value)?),
                        id::PIXEL_HEIGHT => track.height = Some(small_uint(video_value)?),
                        _ => {}
                    }
                }
            }
            id::AUDIO => {
                for audio_child in ebml::children(value) {
                    let (audio_id, audio_value, _) = audio_child?;
                    match audio_id {
                        id::SAMPLING_FREQUENCY => {
                            track.sample_rate = Some(ebml::read_float(audio_value)?)
                        }
                        id::CHANNELS => track.channels = Some(small_uint(audio_value)?),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if track.number == 0 {
        return Err(WebmError::BadPayload("TrackEntry without TrackNumber"));
    }
    if track.codec_id.is_empty() {
        return Err(WebmError::BadPayload("TrackEntry without CodecID"));
    }
    Ok(track)
}

fn small_uint(payload: &[u8]) -> Result<u32, WebmError> {
    u32::try_from(ebml::read_uint(payload)?)
        .map_err(|_| WebmError::BadPayload("value does not fit in 32 bits"))
}

fn parse_block(
    bytes: Bytes,
    header: &Header,
    cluster_timecode: u64,
    scale: TimestampScale,
) -> Result<Block, WebmError> {
    let payload = &bytes[header.len..];
    // For a BlockGroup, the frame lives in its Block child; no ReferenceBlock means keyframe.
    let mut duration = None;
    let (block_payload, keyframe_from_group) = if header.id == id::BLOCK_GROUP {
        let mut block = None;
        let mut has_reference = false;
        for child in ebml::children(payload) {
            let (child_id, value, _) = child?;
            match child_id {
                id::BLOCK => block = Some(value),
                id::REFERENCE_BLOCK => has_reference = true,
                id::BLOCK_DURATION => duration = Some(ebml::read_uint(value)?),
                _ => {}
            }
        }
        let block = block.ok_or(WebmError::BadPayload("BlockGroup without Block"))?;
        (block, Some(!has_reference))
    } else {
        (payload, None)
    };
    let (track, track_len) = ebml::read_vint(block_payload)?.ok_or(WebmError::BadPayload(
        "block too short for its track number",
    ))?;
    let rest = &block_payload[track_len..];
    if rest.len() < 3 {
        return Err(WebmError::BadPayload("block too short for its header"));
    }
    let relative_timecode = i16::from_be_bytes([rest[0], rest[1]]);
    let flags = rest[2];
    let keyframe = keyframe_from_group.unwrap_or(flags & 0x80 != 0);
    let frame_start = (block_payload.as_ptr() as usize - bytes.as_ptr() as usize) + track_len + 3;
    let frame_end = block_payload.as_ptr() as usize - bytes.as_ptr() as usize + block_payload.len();
    // Checked: a hostile Cluster Timestamp near 2^64 must not wrap into a plausible time.
    let timecode = i64::try_from(cluster_timecode)
        .ok()
        .and_then(|cluster| cluster.checked_add(relative_timecode as i64))
        .ok_or(WebmError::Clock(ClockError::OutOfRange))?;
    let time =
        MediaTime::from_ticks(timecode, scale).ok_or(WebmError::Clock(ClockError::OutOfRange))?;
    Ok(Block {
        track,
        relative_timecode,
        timecode,
        time,
        keyframe,
        duration,
        bytes,
        frame_start,
        frame_end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webm::ebml::{write_element, write_id, write_uint, UNKNOWN_SIZE};

    /// The EBML header and the start of an unknown-size Segment: how every live stream opens.
    fn segment_opening() -> Vec<u8> {
        let mut out = Vec::new();
        let mut header = Vec::new();
        write_element(&mut header, id::DOC_TYPE, b"webm");
        write_element(&mut out, id::EBML, &header);
        write_id(&mut out, id::SEGMENT);
        out.extend_from_slice(&UNKNOWN_SIZE);
        out
    }

    /// A tiny live-style stream: header, unknown-size Segment, Info, Tracks, unknown-size Cluster.
    fn live_stream(blocks: usize) -> Vec<u8> {
        let mut out = segment_opening();
        let mut info = Vec::new();
        write_uint(&mut info, id::TIMESTAMP_SCALE, 1_000_000);
        write_element(&mut out, id::INFO, &info);
        let mut entry = Vec::new();
        write_uint(&mut entry, id::TRACK_NUMBER, 1);
        write_uint(&mut entry, id::TRACK_TYPE, 1);
        write_element(&mut entry, id::CODEC_ID, b"V_VP8");
        let mut video = Vec::new();
        write_uint(&mut video, id::PIXEL_WIDTH, 320);
        write_uint(&mut video, id::PIXEL_HEIGHT, 240);
        write_element(&mut entry, id::VIDEO, &video);
        let mut tracks = Vec::new();
        write_element(&mut tracks, id::TRACK_ENTRY, &entry);
        write_element(&mut out, id::TRACKS, &tracks);
        write_id(&mut out, id::CLUSTER);
        out.extend_from_slice(&UNKNOWN_SIZE);
        write_uint(&mut out, id::TIMESTAMP, 1000);
        for i in 0..blocks {
            let mut block = vec![0x81, 0, (i * 33) as u8, if i == 0 { 0x80 } else { 0 }];
            block.extend_from_slice(&[0xAB; 10]);
            write_element(&mut out, id::SIMPLE_BLOCK, &block);
        }
        out
    }

    fn drain(reader: &mut StreamReader) -> Result<Vec<Event>, WebmError> {
        let mut events = Vec::new();
        while let Some(event) = reader.next_event()? {
            events.push(event);
        }
        Ok(events)
    }

    #[test]
    fn reads_a_live_stream() {
        let mut reader = StreamReader::new();
        reader.push(&live_stream(3));
        let events = drain(&mut reader).unwrap();
        assert!(matches!(&events[0], Event::Header { doc_type, .. } if doc_type == "webm"));
        assert_eq!(
            events[1],
            Event::SegmentStart {
                size: Size::Unknown
            }
        );
        let Event::Tracks(tracks) = &events[3] else {
            panic!("expected Tracks, got {:?}", events[3]);
        };
        let video = tracks.video().unwrap();
        assert_eq!((video.width, video.height), (Some(320), Some(240)));
        assert!(matches!(
            events[4],
            Event::ClusterStart { timecode: 1000, .. }
        ));
        let blocks: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::Block(b) => Some((b.timecode, b.keyframe, b.frame().len())),
                _ => None,
            })
            .collect();
        assert_eq!(
            blocks,
            vec![(1000, true, 10), (1033, false, 10), (1066, false, 10)]
        );
        // The unknown-size cluster is still open: its end is not known yet.
        assert!(reader.in_cluster());
    }

    #[test]
    fn byte_at_a_time_gives_the_same_events() {
        let stream = live_stream(5);
        let mut whole = StreamReader::new();
        whole.push(&stream);
        let expected = drain(&mut whole).unwrap();
        let mut reader = StreamReader::new();
        let mut events = Vec::new();
        for byte in &stream {
            reader.push(std::slice::from_ref(byte));
            events.extend(drain(&mut reader).unwrap());
        }
        assert_eq!(events, expected);
    }

    #[test]
    fn garbage_is_not_webm() {
        let mut reader = StreamReader::new();
        reader.push(b"GET / HTTP/1.1\r\n");
        assert!(matches!(reader.next_event(), Err(WebmError::NotWebm)));
    }

    #[test]
    fn zero_byte_is_an_invalid_id() {
        let mut reader = StreamReader::new();
        reader.push(&[0x00, 0x00, 0x00]);
        assert!(matches!(reader.next_event(), Err(WebmError::InvalidId(0))));
    }

    #[test]
    fn oversized_block_is_refused_before_buffering() {
        let mut stream = live_stream(0);
        write_id(&mut stream, id::SIMPLE_BLOCK);
        crate::webm::ebml::write_size(&mut stream, 1 << 30);
        let mut reader = StreamReader::with_max_element(1 << 20);
        reader.push(&stream);
        let result = drain(&mut reader);
        assert!(matches!(
            result,
            Err(WebmError::ElementTooLarge {
                id: id::SIMPLE_BLOCK,
                ..
            })
        ));
        assert!(
            reader.buffered() < 64,
            "nothing of the huge block was buffered"
        );
    }

    #[test]
    fn unknown_size_block_is_refused() {
        let mut stream = live_stream(0);
        write_id(&mut stream, id::SIMPLE_BLOCK);
        stream.push(0xFF);
        let mut reader = StreamReader::new();
        reader.push(&stream);
        assert!(matches!(
            drain(&mut reader),
            Err(WebmError::UnknownSizeNotAllowed(id::SIMPLE_BLOCK))
        ));
    }

    #[test]
    fn cluster_without_tracks_is_refused() {
        let mut out = segment_opening();
        write_id(&mut out, id::CLUSTER);
        out.extend_from_slice(&UNKNOWN_SIZE);
        let mut reader = StreamReader::new();
        reader.push(&out);
        assert!(matches!(drain(&mut reader), Err(WebmError::TracksMissing)));
    }

    #[test]
    fn endless_voids_without_tracks_are_refused() {
        let out = segment_opening();
        let mut reader = StreamReader::with_max_element(4096);
        reader.push(&out);
        drain(&mut reader).unwrap();
        let mut void = Vec::new();
        write_element(&mut void, id::VOID, &[0u8; 1000]);
        let mut result = Ok(vec![]);
        for _ in 0..10 {
            reader.push(&void);
            result = drain(&mut reader);
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(WebmError::TracksMissing)));
    }

    #[test]
    fn blocks_of_undeclared_tracks_are_dropped_and_counted() {
        let mut stream = live_stream(2);
        // 1,000 blocks, each on a track number that Tracks never declared.
        for track in 2..1002u64 {
            let mut block = Vec::new();
            ebml::write_size(&mut block, track);
            block.extend_from_slice(&[0, 0, 0x80, 0xAB]);
            write_element(&mut stream, id::SIMPLE_BLOCK, &block);
        }
        let mut reader = StreamReader::new();
        reader.push(&stream);
        let blocks = drain(&mut reader)
            .unwrap()
            .into_iter()
            .filter(|e| matches!(e, Event::Block(_)))
            .count();
        assert_eq!(blocks, 2, "only the declared track's blocks come out");
        assert_eq!(reader.undeclared_blocks(), 1000);
        assert!(!reader.mid_element());
    }

    #[test]
    fn too_many_tracks_and_huge_skips_are_refused() {
        let mut tracks = Vec::new();
        for number in 1..=17u64 {
            let mut entry = Vec::new();
            write_uint(&mut entry, id::TRACK_NUMBER, number);
            write_uint(&mut entry, id::TRACK_TYPE, 2);
            write_element(&mut entry, id::CODEC_ID, b"A_OPUS");
            write_element(&mut tracks, id::TRACK_ENTRY, &entry);
        }
        let mut stream = Vec::new();
        write_element(&mut stream, id::EBML, &[]);
        write_id(&mut stream, id::SEGMENT);
        stream.extend_from_slice(&UNKNOWN_SIZE);
        write_element(&mut stream, id::TRACKS, &tracks);
        let mut reader = StreamReader::new();
        reader.push(&stream);
        let result = drain(&mut reader);
        assert!(
            matches!(result, Err(WebmError::TooManyTracks(16))),
            "{result:?}"
        );

        // A Void that declares 1 TiB is refused, not skipped for ever.
        let mut stream = live_stream(1);
        stream.extend_from_slice(&[0xEC, 0x01, 0x00, 0x01, 0, 0, 0, 0, 0]);
        let mut reader = StreamReader::new();
        reader.push(&stream);
        assert!(matches!(
            drain(&mut reader),
            Err(WebmError::ElementTooLarge { id: 0xEC, .. })
        ));
    }

    #[test]
    fn a_stream_cut_inside_an_element_is_seen() {
        let stream = live_stream(3);
        let mut reader = StreamReader::new();
        reader.push(&stream[..stream.len() - 4]);
        drain(&mut reader).unwrap();
        assert!(reader.mid_element());
    }

    #[test]
    fn concatenated_streams_restart_cleanly() {
        let mut stream = live_stream(2);
        stream.extend_from_slice(&live_stream(2));
        let mut reader = StreamReader::new();
        reader.push(&stream);
        let events = drain(&mut reader).unwrap();
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| match e {
                Event::Header { .. } => "header",
                Event::SegmentStart { .. } => "segment",
                Event::Info(_) => "info",
                Event::Tracks(_) => "tracks",
                Event::ClusterStart { .. } => "cluster",
                Event::Block(_) => "block",
                Event::ClusterEnd => "end",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "header", "segment", "info", "tracks", "cluster", "block", "block", "end",
                "header", "segment", "info", "tracks", "cluster", "block", "block"
            ]
        );
    }
}
