//! Ingest: where WebM bytes come from. A file looped and paced in real time (the demo, or
//! `--input FILE`), a live byte stream on stdin, or a presenter's upload (see `http::publish`).
//! Every source runs its bytes through our [`StreamReader`] in a [`Feeder`] and hands the
//! events to the [`Sink`]; a malformed source ends with a typed error and never takes the
//! server down.

mod pace;
mod sink;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::decode::{self, DecodeError};
use crate::webm::{Event, StreamReader, WebmError};

pub use pace::Pacer;
pub use sink::{wait_until, Sink, Superseded, Target};

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
    #[error("{source_name} runs {ahead_s:.1} s ahead of real time; publish at real time (e.g. ffmpeg -re)")]
    TooFast { source_name: String, ahead_s: f64 },
    #[error("{0} holds no media blocks, so there is nothing to loop")]
    Empty(String),
    #[error("another source took over from {0}")]
    Superseded(String),
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
    scale_ns: u64,
    origin: Option<(Instant, i128)>,
}

impl RealtimeGuard {
    /// Checks one event; returns how far ahead of real time the source is, if too far.
    fn check(&mut self, event: &Event) -> Option<f64> {
        match event {
            Event::Header { .. } => self.origin = None,
            Event::Info(info) => self.scale_ns = info.timestamp_scale,
            Event::Block(block) => {
                let scale = if self.scale_ns == 0 {
                    1_000_000
                } else {
                    self.scale_ns
                };
                let media_ns = block.timecode as i128 * scale as i128;
                let (start, base) = *self.origin.get_or_insert((Instant::now(), media_ns));
                let ahead_ns = (media_ns - base) - start.elapsed().as_nanos() as i128;
                if ahead_ns > MAX_AHEAD_OF_REAL_TIME.as_nanos() as i128 {
                    return Some(ahead_ns as f64 / 1e9);
                }
            }
            _ => {}
        }
        None
    }
}

/// Turns one source's bytes into events for the sink: parse, check, pace, deliver.
pub struct Feeder {
    name: String,
    sink: Sink,
    id: u64,
    reader: StreamReader,
    pacer: Option<Pacer>,
    guard: Option<RealtimeGuard>,
    blocks: u64,
}

impl Feeder {
    /// A feeder for source `id` (from [`Sink::begin`]). `pacer` releases blocks in real time
    /// (files); `guard` refuses a live source that runs ahead of real time (uploads).
    pub fn new(name: &str, sink: Sink, id: u64, pacer: Option<Pacer>, guard: bool) -> Self {
        Feeder {
            name: name.to_string(),
            sink,
            id,
            reader: StreamReader::new(),
            pacer,
            guard: guard.then(RealtimeGuard::default),
            blocks: 0,
        }
    }

    /// Blocks delivered so far.
    pub fn blocks(&self) -> u64 {
        self.blocks
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
        self.sink.count_input(data.len());
        self.reader.push(data);
        loop {
            let event = self
                .reader
                .next_event()
                .map_err(|error| IngestError::Webm {
                    source_name: self.name.clone(),
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
            self.sink
                .event(self.id, event)
                .await
                .map_err(|Superseded| IngestError::Superseded(self.name.clone()))?;
        }
    }

    fn check(&mut self, event: &Event) -> Result<(), IngestError> {
        if let Event::Tracks(tracks) = event {
            if self.sink.annotates() {
                let video = tracks
                    .video()
                    .ok_or_else(|| IngestError::NoVideo(self.name.clone()))?;
                decode::check_supported(video).map_err(|error| IngestError::Codec {
                    source_name: self.name.clone(),
                    error,
                })?;
            }
        }
        if let Some(ahead_s) = self.guard.as_mut().and_then(|g| g.check(event)) {
            return Err(IngestError::TooFast {
                source_name: self.name.clone(),
                ahead_s,
            });
        }
        Ok(())
    }
}

/// Runs `input` into the sink. A looped file runs until cancelled, pausing while a presenter
/// is live; stdin runs until it ends, after which viewers stay and wait for the next source.
pub async fn run(input: Input, sink: Sink) -> Result<(), IngestError> {
    let name = input.name();
    match &input {
        Input::Stdin => {
            let id = sink.begin(&name, false).await;
            let mut feeder = Feeder::new(&name, sink.clone(), id, None, false);
            let result = read_all(&name, tokio::io::stdin(), &mut feeder).await;
            finish(&sink, id, &result).await;
            result
        }
        Input::File(path) => {
            loop_while_no_presenter(&name, &sink, || async {
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
            loop_while_no_presenter(&name, &sink, || async {
                Ok(std::io::Cursor::new(bytes.clone()))
            })
            .await
        }
    }
}

async fn finish(sink: &Sink, id: u64, result: &Result<(), IngestError>) {
    match result {
        Ok(()) => sink.end(id, "end of stream", false).await,
        Err(error) => {
            tracing::error!(%error, "source failed");
            sink.end(id, &error.to_string(), false).await;
        }
    }
}

/// Loops a file source, standing aside whenever a presenter is live.
async fn loop_while_no_presenter<R, F, Fut>(
    name: &str,
    sink: &Sink,
    open: F,
) -> Result<(), IngestError>
where
    R: AsyncRead + Unpin,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<R, IngestError>>,
{
    let mut presenter_live = sink.presenter_live();
    loop {
        // `wait_for` returns at once if no presenter is live.
        wait_until(&mut presenter_live, false).await;
        let id = sink.begin(name, false).await;
        let mut feeder = Feeder::new(name, sink.clone(), id, Some(Pacer::new()), false);
        let result = tokio::select! {
            result = loop_source(name, &mut feeder, &open) => result,
            _ = wait_until(&mut presenter_live, true) => Err(IngestError::Superseded(name.into())),
        };
        // A looped source ends only by error. Being superseded (the presenter's `begin` can
        // reach us before the flag does) is a pause, not an end.
        if let Err(IngestError::Superseded(_)) = result {
            tracing::info!(source = name, "a presenter is live; pausing");
            continue;
        }
        finish(sink, id, &result).await;
        return result;
    }
}

/// Plays a source again and again, on one continuous real-time clock.
async fn loop_source<R, F, Fut>(
    name: &str,
    feeder: &mut Feeder,
    open: &F,
) -> Result<(), IngestError>
where
    R: AsyncRead + Unpin,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<R, IngestError>>,
{
    loop {
        let reader = open().await?;
        let before = feeder.blocks();
        read_all(name, reader, feeder).await?;
        if feeder.blocks() == before {
            return Err(IngestError::Empty(name.to_string()));
        }
        tracing::debug!(source = name, "looping");
        feeder.next_loop();
        // Yield so a tight loop over a tiny file cannot starve the runtime.
        tokio::task::yield_now().await;
    }
}

/// Reads one byte stream to its end through `feeder`.
pub async fn read_all<R>(name: &str, mut input: R, feeder: &mut Feeder) -> Result<(), IngestError>
where
    R: AsyncRead + Unpin,
{
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = input
            .read(&mut buf)
            .await
            .map_err(|error| IngestError::Io {
                source_name: name.to_string(),
                error,
            })?;
        if n == 0 {
            return Ok(());
        }
        feeder.feed(&buf[..n]).await?;
    }
}
