//! The annotation pipeline: decode → annotate → encode → live WebM writer → our reader → hub.
//!
//! It runs on its own OS thread because every stage is CPU-bound and synchronous (FFmpeg,
//! OpenCV); async tasks feed it through a bounded channel, so a source that outruns it is
//! slowed by backpressure instead of queueing without bound. Face detection runs on a second
//! thread beside it (see [`crate::annotate`]).
//!
//! Overload policy (documented in the README): every video frame is decoded, because later
//! frames reference earlier ones, but a frame that reaches the encoder more than `max_lag`
//! after it arrived is dropped (not annotated, not encoded) and counted in `frames_dropped`.
//! That sheds load in whole frames and lets the path catch up to the live edge instead of
//! falling ever further behind. However late frames are, one is still encoded at least
//! every `MAX_ENCODE_GAP` (200 ms), so viewers see a slower picture, never a frozen one. The next encoded frame after a drop is still valid VP8:
//! the encoder, not the decoder, decides references.
//!
//! The output is one continuous stream for as long as the server runs: sources (the demo,
//! presenters, stdin) come and go, but the encoder, the output size and the timeline stay, so
//! viewers never reload. A picture of another size is scaled to the running output size.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::annotate::{self, Annotator};
use crate::broadcast::Hub;
use crate::decode::{Converter, VideoDecoder};
use crate::encode::Vp8Encoder;
use crate::hls::HlsMirror;
use crate::webm::writer::{AudioTrack, LiveWriter, OutputTracks};
use crate::webm::{Event, StreamReader, TrackKind};

/// Messages a source sends into the pipeline.
#[derive(Debug)]
pub enum Message {
    Start {
        source: u64,
        name: String,
        presenter: bool,
    },
    Event {
        source: u64,
        event: Event,
        arrived: Instant,
    },
    End {
        source: u64,
        reason: String,
    },
}

/// What the pipeline produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Detect faces, draw boxes, encode VP8 live WebM for the hub (and feed the HLS mirror).
    Annotate,
    /// Only decode and feed the HLS mirror (`--passthrough`: viewers get the source's WebM).
    MirrorOnly,
}

/// Pipeline settings from the command line.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub mode: Mode,
    pub bitrate: usize,
    pub keyframe_interval: Duration,
    /// Frames later than this at the encoder are dropped (see the module docs).
    pub max_lag: Duration,
    /// Events queued between the sources and the pipeline thread.
    pub queue: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            mode: Mode::Annotate,
            bitrate: 1_000_000,
            keyframe_interval: Duration::from_secs(1),
            max_lag: Duration::from_millis(300),
            queue: 256,
        }
    }
}

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Annotate(#[from] annotate::AnnotateError),
}

/// Figures for `/api/status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PipelineStats {
    /// The source being processed now (`demo:…`, `presenter:ws`, `stdin`, …).
    pub input: Option<String>,
    pub presenter_connected: bool,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub input_codec: Option<String>,
    pub decode_ms: f64,
    pub detect_ms: f64,
    pub encode_ms: f64,
    pub fps_in: f64,
    pub fps_out: f64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub frames_dropped: u64,
    pub decode_errors: u64,
    pub faces_last: usize,
    pub faces_total: u64,
    /// From a frame's arrival at the server to its bytes entering the broadcast, ms.
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
}

/// The handle sources and status use. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    tx: mpsc::Sender<Message>,
    stats: Arc<Mutex<PipelineStats>>,
}

impl Pipeline {
    /// Starts the pipeline thread, writing into `hub` (in annotate mode) and offering every
    /// picture to the HLS `mirror`, if there is one.
    pub fn start(
        hub: Hub,
        config: PipelineConfig,
        mirror: Option<Arc<HlsMirror>>,
    ) -> Result<Self, PipelineError> {
        let annotator = match config.mode {
            Mode::Annotate => Some(Annotator::start()?),
            Mode::MirrorOnly => None,
        };
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let stats = Arc::new(Mutex::new(PipelineStats::default()));
        let worker_stats = stats.clone();
        std::thread::Builder::new()
            .name("pipeline".into())
            .spawn(move || {
                if config.mode == Mode::Annotate {
                    hub.source_started("pipeline");
                }
                let mut worker = Worker::new(hub, config, annotator, mirror, worker_stats);
                worker.run(rx);
            })
            .expect("spawning the pipeline thread");
        Ok(Pipeline { tx, stats })
    }

    /// Sends a message, waiting while the queue is full (backpressure on the source).
    pub async fn send(&self, message: Message) {
        // An error means the pipeline thread is gone; the server is shutting down.
        let _ = self.tx.send(message).await;
    }

    /// A snapshot of the pipeline's figures.
    pub fn stats(&self) -> PipelineStats {
        self.stats.lock().expect("stats lock").clone()
    }
}

/// The source being processed.
struct Source {
    id: u64,
    scale_ns: u64,
    video_track: Option<u64>,
    audio_track: Option<u64>,
    audio: Option<AudioTrack>,
    decoder: Option<VideoDecoder>,
    /// Added to source milliseconds to place them on the output timeline.
    offset_ms: Option<i64>,
}

/// The running output: encoder and writer, kept across sources.
struct Output {
    encoder: Vp8Encoder,
    writer: LiveWriter,
}

/// Per-second rate of an event.
#[derive(Default)]
struct Rate {
    window_start: Option<Instant>,
    count: u32,
    per_second: f64,
}

impl Rate {
    fn tick(&mut self) {
        let now = Instant::now();
        let start = *self.window_start.get_or_insert(now);
        self.count += 1;
        let elapsed = now - start;
        if elapsed >= Duration::from_secs(1) {
            self.per_second = self.count as f64 / elapsed.as_secs_f64();
            self.window_start = Some(now);
            self.count = 0;
        }
    }
}

struct Worker {
    hub: Hub,
    config: PipelineConfig,
    annotator: Option<Annotator>,
    mirror: Option<Arc<HlsMirror>>,
    reader: StreamReader,
    source: Option<Source>,
    output: Option<Output>,
    converter: Converter,
    last_out_ms: Option<i64>,
    /// The mirror's picture size in mirror-only mode (fixed by the first picture).
    mirror_size: Option<(u32, u32)>,
    /// When the last frame went to the encoder (for the overload policy).
    last_encode: Option<Instant>,
    frame_gap_ms: i64,
    decoded: Vec<ffmpeg_next::util::frame::Video>,
    latencies: VecDeque<f64>,
    rate_in: Rate,
    rate_out: Rate,
    stats: Arc<Mutex<PipelineStats>>,
    local: PipelineStats,
}

impl Worker {
    fn new(
        hub: Hub,
        config: PipelineConfig,
        annotator: Option<Annotator>,
        mirror: Option<Arc<HlsMirror>>,
        stats: Arc<Mutex<PipelineStats>>,
    ) -> Self {
        Worker {
            hub,
            config,
            annotator,
            mirror,
            reader: StreamReader::new(),
            source: None,
            output: None,
            converter: Converter::default(),
            last_out_ms: None,
            mirror_size: None,
            last_encode: None,
            frame_gap_ms: 33,
            decoded: Vec::new(),
            latencies: VecDeque::with_capacity(LATENCY_SAMPLES),
            rate_in: Rate::default(),
            rate_out: Rate::default(),
            stats,
            local: PipelineStats::default(),
        }
    }

    fn run(&mut self, mut rx: mpsc::Receiver<Message>) {
        while let Some(message) = rx.blocking_recv() {
            match message {
                Message::Start {
                    source,
                    name,
                    presenter,
                } => {
                    tracing::info!(source = %name, "pipeline input started");
                    self.source = Some(Source {
                        id: source,
                        scale_ns: 1_000_000,
                        video_track: None,
                        audio_track: None,
                        audio: None,
                        decoder: None,
                        offset_ms: None,
                    });
                    self.local.input = Some(name);
                    self.local.presenter_connected = presenter;
                }
                Message::Event {
                    source,
                    event,
                    arrived,
                } => {
                    if self.source.as_ref().map(|s| s.id) == Some(source) {
                        self.event(event, arrived);
                    }
                }
                Message::End { source, reason } => {
                    if self.source.as_ref().map(|s| s.id) == Some(source) {
                        tracing::info!(reason, "pipeline input ended");
                        self.source = None;
                        self.local.input = None;
                        self.local.presenter_connected = false;
                    }
                }
            }
            self.publish_stats();
        }
    }

    fn event(&mut self, event: Event, arrived: Instant) {
        let Some(source) = self.source.as_mut() else {
            return;
        };
        match event {
            // A looped file starts over at timestamp 0: place it after what was sent.
            Event::Header { .. } => source.offset_ms = None,
            Event::Info(info) => source.scale_ns = info.timestamp_scale,
            Event::Tracks(tracks) => {
                source.video_track = tracks.video().map(|t| t.number);
                source.audio_track = tracks
                    .tracks
                    .iter()
                    .find(|t| t.kind == TrackKind::Audio && t.codec_id == "A_OPUS")
                    .map(|t| t.number);
                source.audio = tracks
                    .tracks
                    .iter()
                    .find(|t| Some(t.number) == source.audio_track)
                    .map(|t| AudioTrack {
                        codec_private: t.codec_private.clone(),
                        sample_rate: t.sample_rate.unwrap_or(48_000.0),
                        channels: t.channels.unwrap_or(2),
                    });
                source.decoder = match tracks.video().map(VideoDecoder::new) {
                    Some(Ok(decoder)) => Some(decoder),
                    Some(Err(error)) => {
                        tracing::error!(%error, "cannot decode this source's video");
                        None
                    }
                    None => None,
                };
                self.local.input_codec = tracks.video().map(|t| t.codec_id.clone());
                self.update_audio_track();
            }
            Event::Block(block) => {
                let ms = (block.timecode as i128 * source.scale_ns as i128 / 1_000_000) as i64;
                let offset = *source.offset_ms.get_or_insert_with(|| {
                    // A new source continues the output timeline one frame after the last.
                    let start = self.last_out_ms.map_or(0, |last| last + self.frame_gap_ms);
                    start - ms
                });
                let out_ms = ms + offset;
                if Some(block.track) == source.video_track {
                    self.video(&block.frame(), out_ms, arrived);
                } else if Some(block.track) == source.audio_track {
                    let bytes = self
                        .output
                        .as_mut()
                        .map(|output| output.writer.audio(out_ms, block.frame()));
                    if let Some(bytes) = bytes {
                        self.emit(&bytes);
                    }
                }
            }
            _ => {}
        }
    }

    /// Starts a new writer (and init segment) if the audio track appeared or went away.
    fn update_audio_track(&mut self) {
        let audio = self.source.as_ref().and_then(|s| s.audio.clone());
        let Some(output) = self.output.as_mut() else {
            return;
        };
        if output.writer.tracks().audio != audio {
            let mut tracks = output.writer.tracks().clone();
            tracks.audio = audio;
            output.writer = LiveWriter::new(tracks);
            let header = output.writer.header();
            self.emit(&header);
        }
    }

    fn video(&mut self, data: &[u8], out_ms: i64, arrived: Instant) {
        let Some(source) = self.source.as_mut() else {
            return;
        };
        let Some(decoder) = source.decoder.as_mut() else {
            return;
        };
        let source_id = source.id;
        let started = Instant::now();
        let mut decoded = std::mem::take(&mut self.decoded);
        if let Err(error) = decoder.decode(data, out_ms, &mut decoded) {
            self.local.decode_errors += 1;
            tracing::debug!(%error, "frame did not decode");
        }
        self.local.decode_ms = annotate::smooth(
            self.local.decode_ms,
            started.elapsed().as_secs_f64() * 1000.0,
        );
        for frame in decoded.drain(..) {
            let pts = frame.pts().unwrap_or(out_ms);
            self.frame(&frame, pts, arrived, source_id);
        }
        self.decoded = decoded;
    }

    fn frame(
        &mut self,
        frame: &ffmpeg_next::util::frame::Video,
        pts: i64,
        arrived: Instant,
        source_id: u64,
    ) {
        self.local.frames_in += 1;
        self.rate_in.tick();
        let late = arrived.elapsed() > self.config.max_lag;
        let starving = self
            .last_encode
            .is_none_or(|at| at.elapsed() >= MAX_ENCODE_GAP);
        if late && !starving {
            self.local.frames_dropped += 1;
            return;
        }
        self.last_encode = Some(Instant::now());
        if self.config.mode == Mode::MirrorOnly {
            self.mirror_only(frame, pts, arrived);
            return;
        }
        if self.output.is_none() && !self.open_output(frame.width(), frame.height()) {
            return;
        }
        let output = self.output.as_mut().expect("output is open");
        let (width, height) = output.encoder.size();
        let mut picture = match self.converter.convert(frame, width, height) {
            Ok(picture) => picture,
            Err(error) => {
                self.local.decode_errors += 1;
                tracing::warn!(%error, "could not convert a decoded picture");
                return;
            }
        };
        if let Some(annotator) = &self.annotator {
            annotator.offer(picture.data(0), picture.stride(0), width, height, source_id);
            let faces = annotator.current_faces(source_id);
            annotate::draw_faces(&mut picture, &faces);
        }

        // Timestamps into the encoder must rise strictly.
        let pts = self.last_out_ms.map_or(pts, |last| pts.max(last + 1));
        if let Some(last) = self.last_out_ms {
            let gap = pts - last;
            if (1..1000).contains(&gap) {
                self.frame_gap_ms = gap;
            }
        }
        self.last_out_ms = Some(pts);
        // The HLS mirror gets the same annotated picture (it copies; it never blocks us).
        if let Some(mirror) = &self.mirror {
            mirror.offer(&picture, pts);
        }
        let started = Instant::now();
        let encoded = match output.encoder.encode(&mut picture, pts) {
            Ok(encoded) => encoded,
            Err(error) => {
                tracing::error!(%error, "VP8 encode failed");
                return;
            }
        };
        self.local.encode_ms = annotate::smooth(
            self.local.encode_ms,
            started.elapsed().as_secs_f64() * 1000.0,
        );
        let written: Vec<_> = encoded
            .iter()
            .map(|packet| {
                output
                    .writer
                    .video(packet.pts_ms, packet.keyframe, &packet.data)
            })
            .collect();
        for bytes in written {
            self.emit(&bytes);
            self.local.frames_out += 1;
            self.rate_out.tick();
        }
        self.record_latency(arrived);
    }

    /// `--passthrough`: viewers get the source's own WebM; the mirror still needs pictures.
    fn mirror_only(&mut self, frame: &ffmpeg_next::util::frame::Video, pts: i64, arrived: Instant) {
        let Some(mirror) = self.mirror.clone() else {
            return;
        };
        // The first picture fixes the mirror's size, as the encoder's does in annotate mode.
        let (width, height) = *self
            .mirror_size
            .get_or_insert((frame.width() & !1, frame.height() & !1));
        match self.converter.convert(frame, width, height) {
            Ok(picture) => {
                let pts = self.last_out_ms.map_or(pts, |last| pts.max(last + 1));
                self.last_out_ms = Some(pts);
                mirror.offer(&picture, pts);
                self.local.frames_out += 1;
                self.rate_out.tick();
                self.record_latency(arrived);
            }
            Err(error) => {
                self.local.decode_errors += 1;
                tracing::warn!(%error, "could not convert a decoded picture");
            }
        }
    }

    fn record_latency(&mut self, arrived: Instant) {
        if self.latencies.len() == LATENCY_SAMPLES {
            self.latencies.pop_front();
        }
        self.latencies
            .push_back(arrived.elapsed().as_secs_f64() * 1000.0);
    }

    /// Opens the encoder and writer at the first picture's size (kept for the server's life).
    fn open_output(&mut self, width: u32, height: u32) -> bool {
        // VP8 and YUV420P want even dimensions.
        let (width, height) = (width & !1, height & !1);
        match Vp8Encoder::new(
            width,
            height,
            self.config.bitrate,
            self.config.keyframe_interval,
        ) {
            Ok(encoder) => {
                let audio = self.source.as_ref().and_then(|s| s.audio.clone());
                let writer = LiveWriter::new(OutputTracks {
                    width,
                    height,
                    audio,
                });
                let header = writer.header();
                self.output = Some(Output { encoder, writer });
                self.emit(&header);
                self.local.width = Some(width);
                self.local.height = Some(height);
                tracing::info!(width, height, "output opened");
                true
            }
            Err(error) => {
                tracing::error!(%error, "cannot open the VP8 encoder");
                false
            }
        }
    }

    /// Our own writer's bytes go through our own reader into the hub, exactly as a WebM
    /// source's bytes would: one path for every stream viewers see.
    fn emit(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.reader.push(bytes);
        loop {
            match self.reader.next_event() {
                Ok(Some(event)) => self.hub.push(event),
                Ok(None) => break,
                Err(error) => {
                    // Our own writer produced something our reader refuses: a bug; start over.
                    tracing::error!(%error, "internal WebM error; resetting the reader");
                    self.reader = StreamReader::new();
                    break;
                }
            }
        }
    }

    fn publish_stats(&mut self) {
        if let Some(annotator) = &self.annotator {
            let detect = annotator.stats();
            self.local.detect_ms = detect.detect_ms;
            self.local.faces_last = detect.faces_last;
            self.local.faces_total = detect.faces_total;
        }
        self.local.fps_in = self.rate_in.per_second;
        self.local.fps_out = self.rate_out.per_second;
        if !self.latencies.is_empty() {
            let mut sorted: Vec<f64> = self.latencies.iter().copied().collect();
            sorted.sort_by(f64::total_cmp);
            let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
            self.local.latency_ms_p50 = at(0.5);
            self.local.latency_ms_p99 = at(0.99);
        }
        *self.stats.lock().expect("stats lock") = self.local.clone();
    }
}

/// Under overload, a frame is encoded at least this often however late it is.
const MAX_ENCODE_GAP: Duration = Duration::from_millis(200);

/// Latency samples kept for the p50/p99 shown in status.
const LATENCY_SAMPLES: usize = 300;
