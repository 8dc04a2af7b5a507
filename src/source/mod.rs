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

use crate::clock::{ClockError, MediaTime, SourceClock};
use crate::media::decode::{self, DecodeError};
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
        "{source_name} runs {ahead} ahead of real time; publish at real time (e.g. ffmpeg -re)"
    )]
    TooFast {
        source_name: String,
        ahead: MediaTime,
    },
    #[error("{source_name}: {error}")]
    Clock {
        source_name: String,
        #[source]
        error: ClockError,
    },
    #[error("{0} holds no media blocks, so there is nothing to loop")]
    Empty(String),
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
            Input::File(path) => format!("file:{}", path.display()),
            Input::Memory { name, .. } => name.clone(),
            Input::Stdin => "stdin".to_string(),
        }
    }
}

/// Refuses a live source that sends media faster than real time.
#[derive(Debug, Default)]
pub struct RealtimeGuard {
    /// Wall-clock instant and media time of the first block of the current stream.
    origin: Option<(Instant, MediaTime)>,
}

impl RealtimeGuard {
    /// Checks one event; returns how far ahead of real time the source is, if too far.
    fn check(&mut self, event: &Event) -> Option<MediaTime> {
        match event {
            Event::Header { .. } => self.origin = None,
            Event::Block(block) => {
                let (start, base) = *self.origin.get_or_insert((Instant::now(), block.time));
                let ahead = (block.time - base) - MediaTime::from_duration(start.elapsed());
                if ahead > MediaTime::from_duration(MAX_AHEAD_OF_REAL_TIME) {
                    return Some(ahead);
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
    /// Whether the next stage decodes video (then the codec must be one we decode).
    annotates: bool,
    reader: StreamReader,
    clock: SourceClock,
    pacer: Option<Pacer>,
    realtime: Option<RealtimeGuard>,
    blocks: u64,
}

impl Feeder {
    /// A feeder for the source holding `guard`. `pacer` releases blocks in real time (files);
    /// `realtime` refuses a live source that runs ahead of real time (uploads).
    pub fn new(guard: SourceGuard, annotates: bool, pacer: Option<Pacer>, realtime: bool) -> Self {
        Feeder {
            guard,
            annotates,
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

    /// Completes when another source takes the slot, with why.
    pub async fn superseded(&mut self) -> EndReason {
        self.guard.superseded().await
    }

    /// Ends the source with `reason`.
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
        match event {
            Event::Header { .. } => self.clock.restart(),
            Event::Tracks(tracks) if self.annotates => {
                let video = tracks.video().ok_or_else(|| IngestError::NoVideo(name()))?;
                decode::check_supported(video).map_err(|error| IngestError::Codec {
                    source_name: name(),
                    error,
                })?;
            }
            Event::Block(block) => {
                self.clock
                    .check(block.time)
                    .map_err(|error| IngestError::Clock {
                        source_name: name(),
                        error,
                    })?;
            }
            _ => {}
        }
        if let Some(ahead) = self.realtime.as_mut().and_then(|g| g.check(event)) {
            return Err(IngestError::TooFast {
                source_name: name(),
                ahead,
            });
        }
        Ok(())
    }
}

/// Runs `input` through the slot. A looped file runs until the server shuts down, pausing
/// while a presenter is live; stdin runs until it ends, after which viewers stay and wait
/// for the next source.
pub async fn run(input: Input, slot: Slot) -> Result<(), IngestError> {
    let name = input.name();
    match &input {
        Input::Stdin => {
            let Ok(guard) = slot.claim(&name, SourceKind::Input, false).await else {
                return Ok(());
            };
            let mut feeder = Feeder::new(guard, slot.annotates(), None, false);
            let result = read_all(tokio::io::stdin(), &mut feeder).await;
            finish(feeder, &result).await;
            result
        }
        Input::File(path) => {
            loop_while_no_presenter(&name, &slot, || async {
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
            loop_while_no_presenter(&name, &slot, || async {
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

/// Loops a file source, standing aside whenever a presenter is live.
async fn loop_while_no_presenter<R, F, Fut>(
    name: &str,
    slot: &Slot,
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
        let guard = match slot.claim(name, SourceKind::Input, false).await {
            Ok(guard) => guard,
            // A presenter got in between: wait for it again.
            Err(ClaimError::Busy) => continue,
            Err(ClaimError::Closed) => return Ok(()),
        };
        // A fresh pacer: after a pause the file's clock starts again at now.
        let mut feeder = Feeder::new(guard, slot.annotates(), Some(Pacer::new()), false);
        let result = loop_source(&mut feeder, &open).await;
        match result {
            Err(IngestError::Ended { reason, .. }) => {
                // A looped source ends only by error; losing the slot is a pause.
                tracing::info!(source = name, %reason, "pausing the input");
                if reason == EndReason::ShuttingDown {
                    return Ok(());
                }
            }
            result => {
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
            return Ok(());
        }
        feeder.feed(&buf[..n]).await?;
    }
}
