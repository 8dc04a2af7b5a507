//! WebM: our EBML stream reader (bytes in, events out), the live writer that turns encoded
//! frames into viewer-stream chunks, and the remuxer that turns a passthrough source's reader
//! events into the same chunks. Both produce [`Output`]s; the hub only fans them out.

pub mod codecs;
pub mod ebml;
pub mod reader;
pub mod remux;
pub mod writer;

pub use reader::{Block, Event, Info, StreamReader, Track, TrackKind, Tracks};
pub use remux::{InitSegment, LiveMuxer, Output, StreamInfo};

/// Why a WebM byte stream was refused. Every variant ends only the connection that sent it.
#[derive(Debug, thiserror::Error)]
pub enum WebmError {
    #[error("invalid EBML element ID starting with byte 0x{0:02X}")]
    InvalidId(u8),
    #[error("invalid EBML size (a VINT cannot start with 0x00)")]
    InvalidSize,
    #[error("not a WebM stream: it must start with an EBML header")]
    NotWebm,
    #[error("unsupported DocType {0:?} (expected webm or matroska)")]
    UnsupportedDocType(String),
    #[error("element 0x{id:X} is {size} bytes, over the {max}-byte limit")]
    ElementTooLarge { id: u32, size: u64, max: usize },
    #[error("element 0x{0:X} has an unknown size, which is only allowed for Segment and Cluster")]
    UnknownSizeNotAllowed(u32),
    #[error("element 0x{0:X} runs past the end of its parent")]
    ChildOverrun(u32),
    #[error("element 0x{0:X} is not allowed here")]
    Misplaced(u32),
    #[error("Tracks declares more than {0} tracks")]
    TooManyTracks(usize),
    #[error("a Cluster arrived before Tracks (or Tracks never came)")]
    TracksMissing,
    #[error("a block arrived before its Cluster's Timestamp")]
    BlockBeforeTimestamp,
    #[error("truncated element inside a master element")]
    Truncated,
    #[error("malformed element: {0}")]
    BadPayload(&'static str),
    #[error(transparent)]
    Clock(#[from] crate::clock::ClockError),
}

/// A tiny live-style WebM for tests and fuzz seeds: one VP8 track, one unknown-size Cluster
/// at 0 with `blocks` blocks `step_ms` apart (the first a keyframe), 10-byte dummy frames.
#[doc(hidden)]
pub fn test_stream(blocks: usize, step_ms: i64) -> Vec<u8> {
    use ebml::{write_element, write_id, write_uint, UNKNOWN_SIZE};
    let mut out = Vec::new();
    let mut header = Vec::new();
    write_element(&mut header, ebml::id::DOC_TYPE, b"webm");
    write_element(&mut out, ebml::id::EBML, &header);
    write_id(&mut out, ebml::id::SEGMENT);
    out.extend_from_slice(&UNKNOWN_SIZE);
    let mut info = Vec::new();
    write_uint(&mut info, ebml::id::TIMESTAMP_SCALE, 1_000_000);
    write_element(&mut out, ebml::id::INFO, &info);
    let mut entry = Vec::new();
    write_uint(&mut entry, ebml::id::TRACK_NUMBER, 1);
    write_uint(&mut entry, ebml::id::TRACK_TYPE, 1);
    write_element(&mut entry, ebml::id::CODEC_ID, b"V_VP8");
    let mut tracks = Vec::new();
    write_element(&mut tracks, ebml::id::TRACK_ENTRY, &entry);
    write_element(&mut out, ebml::id::TRACKS, &tracks);
    write_id(&mut out, ebml::id::CLUSTER);
    out.extend_from_slice(&UNKNOWN_SIZE);
    write_uint(&mut out, ebml::id::TIMESTAMP, 0);
    for i in 0..blocks {
        let relative = (i as i64 * step_ms) as i16;
        let mut block = vec![0x81];
        block.extend_from_slice(&relative.to_be_bytes());
        block.push(if i == 0 { 0x80 } else { 0 });
        block.extend_from_slice(&[0xAB; 10]);
        write_element(&mut out, ebml::id::SIMPLE_BLOCK, &block);
    }
    out
}
