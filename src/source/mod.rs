//! Sources: where WebM bytes come from. A file looped and paced in real time (the demo, or
//! `--input FILE`), a live byte stream on stdin, or a presenter's upload (see `http::publish`).
//! Each claims the [`Slot`], runs its bytes through our [`StreamReader`] in a [`Feeder`] that
//! checks them (codec, timestamps, pace) and delivers the events through its guard. A
//! malformed source ends with a typed error and never takes the server down.

mod pace;
pub mod slot;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::audience::Audience;
use crate::clock::{ClockError, MediaTime, SourceClock};
use crate::media::decode::{self, DecodeError};
use crate::media::Resolution;
use crate::webm::{Event, StreamReader, WebmError};

pub use pace::Pacer;
pub use slot::{ClaimError, EndReason, Slot, SourceGuard, SourceKind, Target};

/// How much a source reads per call; also bounds what the reader buffers beyond one element.
const READ_CHUNK: usize = 64 * 1024;
/// How far a live upload may run ahead of real time before it is refused. MediaRecorder and
/// network buffering can deliver a second or two in a burst; far more means the sender is
/// not pacing itself (e.g. ffmpeg without `-re`).
pub const MAX_AHEAD_OF_REAL_TIME: Duration = Duration::from_secs(5);

/// Why a source stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("reading {source_name}: {error}")]
    Io {
        source_name: String,
        #[source]
        error: std::io::Error,
    },
    #[error("{source_name} is not valid live WebM: {error}")]
    Webm {
        source_name: String,
        #[source]
        error: WebmError,
    },
    #[error("{source_name}: {error}")]
    Codec {
        source_name: String,
        #[source]
        error: DecodeError,
    },
    #[error("{0} has no video track; only --passthrough broadcasts audio-only streams")]
    NoVideo(String),
    #[error(
        "{source_name} sends faster than real time: {why}; publish at real time (e.g. ffmpeg -re)"
    )]
    TooFast { source_name: String, why: String },
    #[error("{source_name}: {error}")]
    Clock {
        source_name: String,
        #[source]
        error: ClockError,
    },
    #[error("{0} holds no media blocks, so there is nothing to loop")]
    Empty(String),
    #[error("{0} was cut off inside an element (the stream ends mid-element)")]
    Truncated(String),
    #[error("{source_name} sends {width}x{height} pictures, over --max-resolution {max}")]
    TooLarge {
        source_name: String,
        width: u32,
        height: u32,
        max: Resolution,
    },
    #[error("{source_name} stopped: {reason}")]
    Ended {
        source_name: String,
        reason: EndReason,
    },
}

/// Where the broadcast's bytes come from.
#[derive(Debug, Clone)]
pub enum Input {
    /// A WebM file, looped forever and paced by its own timestamps.
    File(PathBuf),
    /// A WebM file held in memory (the built-in demo), looped and paced like a file.
    Memory { name: String, bytes: Bytes },
    /// A live WebM byte stream on standard input, forwarded as fast as it arrives.
    Stdin,
}

impl Input {
    /// The built-in demo: a face video from `fixtures/`, looped.
    pub fn demo() -> Self {
        Input::Memory {
            name: "demo:face.webm".into(),
            bytes: Bytes::from_static(crate::DEMO_WEBM),
        }
    }

    /// A name for logs and `/api/status`.
    pub fn name(&self) -> String {
        match self {
            // Only the file's name: this shows in `/api/status`, which anyone may read.
            Input::File(path) => format!(
                "file:{}",
                path.file_name().map_or_else(
                    || path.display().to_string(),
                    |name| name.to_string_lossy().into_owned()
                )
            ),
            Input::Memory { name, .. } => name.clone(),
            Input::Stdin => "stdin".to_string(),
        }
    }
}

/// Blocks a live upload may send per second on average (30 fps video + 50/s Opus is 80; a
/// 60 fps camera with Opus is 110). All-zero or backward timestamps do not advance media
/// time, so this is what bounds a flood of them.
pub const MAX_BLOCKS_PER_SECOND: u64 = 150;
/// Bytes a live upload may send per second on average (40 Mbit/s, far above a webcam's).
pub const MAX_BYTES_PER_SECOND: u64 = 5_000_000;

/// Refuses a live upload that sends media faster than real time: one budget for the whole
/// upload, across concatenated streams, in media time, in blocks and in bytes, each with
/// [`MAX_AHEAD_OF_REAL_TIME`] of slack for network bursts.
#[derive(Debug, Default)]
pub struct RealtimeGuard {
    /// When the upload's first byte arrived.
    start: Option<Instant>,
    /// Media time covered by the streams before the current one.
    earlier_streams: MediaTime,
    /// First and latest block time of the current stream.
    stream: Option<(MediaTime, MediaTime)>,
    blocks: u64,
    bytes: u64,
}

impl RealtimeGuard {
    fn elapsed(&mut self) -> Duration {
        self.start.get_or_insert_with(Instant::now).elapsed()
    }

    /// The most of something allowed by now at `per_second`, slack included.
    fn allowance(&mut self, per_second: u64) -> u64 {
        let seconds = (self.elapsed() + MAX_AHEAD_OF_REAL_TIME).as_secs_f64();
        (seconds * per_second as f64) as u64
    }

    /// Counts received bytes; the reason if they come too fast.
    fn bytes(&mut self, n: usize) -> Option<String> {
        self.bytes += n as u64;
        if self.bytes <= self.allowance(MAX_BYTES_PER_SECOND) {
            return None;
        }
        let elapsed = self.elapsed().as_secs_f64();
        Some(format!(
            "{} MB in {elapsed:.1} s (at most {} MB/s)",
            self.bytes / 1_000_000,
            MAX_BYTES_PER_SECOND / 1_000_000
        ))
    }

    /// Checks one event; the reason if the upload runs ahead of real time.
    fn check(&mut self, event: &Event) -> Option<String> {
        match event {
            Event::Header { .. } => {
                // A new stream: what the last one covered still counts.
                if let Some((first, latest)) = self.stream.take() {
                    self.earlier_streams = self.earlier_streams + (latest - first);
                }
            }
            Event::Block(block) => {
                self.blocks += 1;
                if self.blocks > self.allowance(MAX_BLOCKS_PER_SECOND) {
                    let elapsed = self.elapsed().as_secs_f64();
                    return Some(format!(
                        "{} blocks in {elapsed:.1} s (at most {MAX_BLOCKS_PER_SECOND} a second)",
                        self.blocks
                    ));
                }
                let (first, latest) = self.stream.get_or_insert((block.time, block.time));
                *latest = (*latest).max(block.time);
                let media = self.earlier_streams + (*latest - *first);
                let ahead = media - MediaTime::from_duration(self.elapsed());
                if ahead > MediaTime::from_duration(MAX_AHEAD_OF_REAL_TIME) {
                    return Some(format!("{ahead} ahead of real time"));
                }
            }
            _ => {}
        }
        None
    }
}

/// Turns one source's bytes into events for the slot: parse, check, pace, deliver.
pub struct Feeder {
    guard: SourceGuard,
    /// Whether the next stage annotates (then there must be video, in a codec we decode).
    annotates: bool,
    /// The largest picture allowed, when the next stage decodes video.
    max_resolution: Option<Resolution>,
    /// The current stream's video track and whether it is VP8 (whose keyframes we size-check
    /// before they reach the decoder).
    video: Option<(u64, bool)>,
    reader: StreamReader,
    clock: SourceClock,
    pacer: Option<Pacer>,
    realtime: Option<RealtimeGuard>,
    blocks: u64,
}

impl Feeder {
    /// A feeder for the source holding `guard`. `pacer` releases blocks in real time (files);
    /// `realtime` refuses a live source that runs ahead of real time (uploads).
    pub fn new(guard: SourceGuard, pacer: Option<Pacer>, realtime: bool) -> Self {
        let slot = guard.slot();
        let annotates = slot.annotates();
        let max_resolution = slot.decodes().then(|| slot.max_resolution());
        Feeder {
            guard,
            annotates,
            max_resolution,
            video: None,
            reader: StreamReader::new(),
            clock: SourceClock::new(),
            pacer,
            realtime: realtime.then(RealtimeGuard::default),
            blocks: 0,
        }
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        self.guard.name()
    }

    /// Blocks delivered so far.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The newest block time of the current stream, on the source's own timeline.
    pub fn latest_media(&self) -> Option<MediaTime> {
        self.clock.latest()
    }

    /// Checks that the bytes so far end on an element boundary: call when the input ends.
    pub fn finish(&self) -> Result<(), IngestError> {
        if self.reader.mid_element() {
            return Err(IngestError::Truncated(self.name().to_string()));
        }
        Ok(())
    }

    /// Completes when another source takes the slot, with why.
    pub async fn superseded(&mut self) -> EndReason {
        self.guard.superseded().await
    }

    /// Ends the source with `reason`.
    /// Passes the presenter's capture origin on (see [`SourceGuard::capture_origin`]).
    pub async fn capture_origin(&self, origin: crate::latency::WallTime) {
        self.guard.capture_origin(origin).await;
    }

    pub async fn end(self, reason: &str) {
        self.guard.end(reason).await;
    }

    /// Starts a new pass over a looped file: a fresh reader, the pacer's clock continuing.
    pub fn next_loop(&mut self) {
        self.reader = StreamReader::new();
        if let Some(pacer) = self.pacer.as_mut() {
            pacer.next_loop();
        }
    }

    /// Feeds received bytes; every complete event is checked and delivered.
    pub async fn feed(&mut self, data: &[u8]) -> Result<(), IngestError> {
        if let Some(why) = self.realtime.as_mut().and_then(|g| g.bytes(data.len())) {
            return Err(IngestError::TooFast {
                source_name: self.name().to_string(),
                why,
            });
        }
        self.reader.push(data);
        loop {
            let event = self
                .reader
                .next_event()
                .map_err(|error| IngestError::Webm {
                    source_name: self.name().to_string(),
                    error,
                })?;
            let Some(event) = event else {
                return Ok(());
            };
            self.check(&event)?;
            if let Some(pacer) = self.pacer.as_mut() {
                pacer.wait_for(&event).await;
            }
            if matches!(event, Event::Block(_)) {
                self.blocks += 1;
            }
            self.guard
                .deliver(event)
                .await
                .map_err(|reason| IngestError::Ended {
                    source_name: self.name().to_string(),
                    reason,
                })?;
        }
    }

    fn check(&mut self, event: &Event) -> Result<(), IngestError> {
        let name = || self.guard.name().to_string();
        let clock_error = |error| IngestError::Clock {
            source_name: name(),
            error,
        };
        let too_large = |width: u32, height: u32, max: Resolution| IngestError::TooLarge {
            source_name: name(),
            width,
            height,
            max,
        };
        match event {
            Event::Header { .. } => self.clock.restart(),
            Event::Tracks(tracks) => {
                let video = tracks.video();
                self.video = video.map(|v| (v.number, v.codec_id == "V_VP8"));
                if self.annotates {
                    let video = video.ok_or_else(|| IngestError::NoVideo(name()))?;
                    decode::check_supported(video).map_err(|error| IngestError::Codec {
                        source_name: name(),
                        error,
                    })?;
                }
                if let (Some(max), Some(video)) = (self.max_resolution, video) {
                    if let (Some(w), Some(h)) = (video.width, video.height) {
                        if !max.admits(w, h) {
                            return Err(too_large(w, h, max));
                        }
                    }
                }
            }
            // A Cluster's own timestamp is checked too: an empty Cluster far ahead would
            // otherwise reach viewers as a gap their players stall at.
            Event::ClusterStart { time, .. } => self.clock.check(*time).map_err(clock_error)?,
            Event::Block(block) => {
                self.clock.check(block.time).map_err(clock_error)?;
                if let (Some(max), Some((track, true))) = (self.max_resolution, self.video) {
                    if block.track == track && block.keyframe {
                        if let Some((w, h)) = crate::media::vp8_keyframe_size(&block.frame()) {
                            if !max.admits(w, h) {
                                return Err(too_large(w, h, max));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        if let Some(why) = self.realtime.as_mut().and_then(|g| g.check(event)) {
            return Err(IngestError::TooFast {
                source_name: name(),
                why,
            });
        }
        Ok(())
    }
}

/// Runs `input` through the slot. A looped file runs until the server shuts down, pausing
/// while a presenter is live and, given an `audience`, while nobody watches; stdin runs until
/// it ends (a live stream is never paused), after which viewers stay and wait for the next
/// source.
pub async fn run(input: Input, slot: Slot, audience: Option<Audience>) -> Result<(), IngestError> {
    let name = input.name();
    match &input {
        Input::Stdin => {
            let Ok(guard) = slot.claim(&name, SourceKind::Input, false).await else {
                return Ok(());
            };
            let mut feeder = Feeder::new(guard, None, false);
            let result = read_all(tokio::io::stdin(), &mut feeder).await;
            finish(feeder, &result).await;
            result
        }
        Input::File(path) => {
            loop_while_no_presenter(&name, &slot, audience.as_ref(), || async {
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|error| IngestError::Io {
                        source_name: name.clone(),
                        error,
                    })?;
                Ok(tokio::io::BufReader::new(file))
            })
            .await
        }
        Input::Memory { bytes, .. } => {
            loop_while_no_presenter(&name, &slot, audience.as_ref(), || async {
                Ok(std::io::Cursor::new(bytes.clone()))
            })
            .await
        }
    }
}

async fn finish(feeder: Feeder, result: &Result<(), IngestError>) {
    match result {
        Ok(()) => feeder.end("end of stream").await,
        Err(IngestError::Ended { .. }) => {}
        Err(error) => {
            tracing::error!(%error, "source failed");
            feeder.end(&error.to_string()).await;
        }
    }
}

/// What ends a looped input for now, short of an error.
enum Pause {
    /// It lost the slot (a presenter, or shutdown).
    Lost(EndReason),
    /// Nobody has watched for a while.
    Unwatched,
}

/// The reason `/api/status` shows while a looped input waits for an audience.
pub const PAUSED_UNWATCHED: &str = "paused: nobody is watching";

/// Loops a file source, standing aside whenever a presenter is live or (given an
/// `audience`) nobody watches.
async fn loop_while_no_presenter<R, F, Fut>(
    name: &str,
    slot: &Slot,
    audience: Option<&Audience>,
    open: F,
) -> Result<(), IngestError>
where
    R: AsyncRead + Unpin,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<R, IngestError>>,
{
    loop {
        if slot.wait_for_no_presenter().await.is_err() {
            return Ok(());
        }
        if let Some(audience) = audience.filter(|audience| !audience.watched()) {
            tokio::select! {
                () = audience.until_watched() => {}
                () = slot.closed() => return Ok(()),
            }
            tracing::info!(source = name, "resuming the input: someone is watching");
            // A presenter may have come meanwhile: look again.
            continue;
        }
        let guard = match slot.claim(name, SourceKind::Input, false).await {
            Ok(guard) => guard,
            // A presenter got in between: wait for it again.
            Err(ClaimError::Busy) => continue,
            Err(ClaimError::Closed) => return Ok(()),
        };
        // A fresh pacer: after a pause the file's clock starts again at now.
        let mut feeder = Feeder::new(guard, Some(Pacer::new()), false);
        let unwatched = async {
            match audience {
                Some(audience) => audience.until_unwatched().await,
                None => std::future::pending().await,
            }
        };
        // Cancelling the feed mid-way is safe: the slot delivers under one async lock.
        let result = tokio::select! {
            result = loop_source(&mut feeder, &open) => match result {
                Err(IngestError::Ended { reason, .. }) => Err(Pause::Lost(reason)),
                result => Ok(result),
            },
            () = unwatched => Err(Pause::Unwatched),
        };
        match result {
            // A looped source ends only by error; losing the slot is a pause.
            Err(Pause::Lost(reason)) => {
                tracing::info!(source = name, %reason, "pausing the input");
                if reason == EndReason::ShuttingDown {
                    return Ok(());
                }
            }
            Err(Pause::Unwatched) => {
                tracing::info!(source = name, "pausing the input: nobody is watching");
                feeder.end(PAUSED_UNWATCHED).await;
            }
            Ok(result) => {
                finish(feeder, &result).await;
                return result;
            }
        }
    }
}

/// Plays a source again and again, on one continuous real-time clock.
async fn loop_source<R, F, Fut>(feeder: &mut Feeder, open: &F) -> Result<(), IngestError>
where
    R: AsyncRead + Unpin,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<R, IngestError>>,
{
    loop {
        let reader = open().await?;
        let before = feeder.blocks();
        read_all(reader, feeder).await?;
        if feeder.blocks() == before {
            return Err(IngestError::Empty(feeder.name().to_string()));
        }
        tracing::debug!(source = feeder.name(), "looping");
        feeder.next_loop();
        // Yield so a tight loop over a tiny file cannot starve the runtime.
        tokio::task::yield_now().await;
    }
}

/// Reads one byte stream to its end through `feeder`.
pub async fn read_all<R>(mut input: R, feeder: &mut Feeder) -> Result<(), IngestError>
where
    R: AsyncRead + Unpin,
{
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = input
            .read(&mut buf)
            .await
            .map_err(|error| IngestError::Io {
                source_name: feeder.name().to_string(),
                error,
            })?;
        if n == 0 {
            return feeder.finish();
        }
        feeder.feed(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events of `streams` concatenated copies of a 1 s, 15-block stream.
    fn events(streams: usize, step_ms: i64) -> Vec<Event> {
        let mut bytes = Vec::new();
        for _ in 0..streams {
            bytes.extend_from_slice(&crate::webm::test_stream(15, step_ms));
        }
        let mut reader = StreamReader::new();
        reader.push(&bytes);
        let mut events = Vec::new();
        while let Some(event) = reader.next_event().unwrap() {
            events.push(event);
        }
        events
    }

    #[test]
    fn the_realtime_budget_spans_concatenated_streams() {
        let mut guard = RealtimeGuard::default();
        let refused = events(40, 67).iter().find_map(|e| guard.check(e));
        assert!(
            refused
                .as_deref()
                .is_some_and(|why| why.contains("ahead of real time")),
            "{refused:?}"
        );
    }

    #[test]
    fn blocks_that_do_not_advance_time_still_count() {
        let mut guard = RealtimeGuard::default();
        let refused = events(120, 0).iter().find_map(|e| guard.check(e));
        assert!(
            refused
                .as_deref()
                .is_some_and(|why| why.contains("blocks in")),
            "{refused:?}"
        );
    }
}
