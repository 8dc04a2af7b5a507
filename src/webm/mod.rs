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
