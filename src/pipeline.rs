//! The annotation pipeline: source events → decode → scale → annotate → encode → live WebM
//! writer → hub chunks (and the same pictures to the HLS mirror).
//!
//! It runs on its own OS thread because every stage is CPU-bound and synchronous (FFmpeg,
//! OpenCV); the [`Slot`](crate::source::Slot) feeds it through a bounded channel, so a source
//! that outruns it is slowed by backpressure instead of queueing without bound. Face detection
//! runs on a second thread beside it (see [`crate::annotate`]).
//!
//! Overload policy (documented in the README): every video frame is decoded, because later
//! frames reference earlier ones, but a frame that reaches the encoder more than `max_lag`
//! after it arrived is dropped (not annotated, not encoded) and counted in `frames_dropped`.
//! That sheds load in whole frames and lets the path catch up to the live edge instead of
//! falling ever further behind. However late frames are, one is still encoded at least
//! every `MAX_ENCODE_GAP` (200 ms), so viewers see a slower picture, never a frozen one. The
//! next encoded frame after a drop is still valid VP8: the encoder, not the decoder, decides
//! references.
//!
//! The output is one continuous stream for as long as the server runs: sources come and go,
//! but the encoder, the output size and the [`Timeline`] stay, so viewers never reload. A
//! picture of another shape is letterboxed into the output size (see [`crate::media::scale`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ffmpeg_next::util::frame::Video as VideoFrame;
use tokio::sync::mpsc;

use crate::annotate::{self, Annotator};
use crate::clock::{MediaTime, Timeline};
use crate::hls::HlsMirror;
use crate::hub::Hub;
use crate::latency::WallTime;
use crate::media::decode::VideoDecoder;
use crate::media::encode::Vp8Encoder;
use crate::media::scale::Scaler;
use crate::media::Resolution;
use crate::metrics::StageTimes;
use crate::webm::writer::{AudioTrack, LiveWriter, OutputTracks, AUDIO_TRACK, VIDEO_TRACK};
use crate::webm::{Event, TrackKind, Tracks};

/// Under overload, a frame is encoded at least this often however late it is.
const MAX_ENCODE_GAP: Duration = Duration::from_millis(200);

/// Face detection's default pace (`--detect-fps 5`): boxes move five times a second, and the
/// detector takes about a fifth of a core instead of a whole one. On a 2-core machine with the
/// presenter's and a viewer's browser beside the server, that took glass-to-glass p50 from
/// +584..+915 ms over the browser's floor to +185..+377 (`make bench-latency`, same hour).
pub const DEFAULT_DETECT_INTERVAL: Duration = Duration::from_nanos(1_000_000_000 / 5);

/// Latency samples kept for the p50/p99 shown in status.
const LATENCY_SAMPLES: usize = 300;

/// Messages the slot sends, in order: `Start`, events, `End` of one source, then the next.
#[derive(Debug, Clone)]
pub enum Message {
    Start {
        name: String,
        presenter: bool,
    },
    Event {
        event: Event,
        arrived: Instant,
    },
    /// The presenter's word on when media time 0 of its source was captured (server clock).
    CaptureOrigin(WallTime),
    End {
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
    /// Face detection runs at most once per this (on the newest picture; boxes are drawn on
    /// every frame); `None`: back to back, a whole core.
    pub detect_interval: Option<Duration>,
    /// Events queued between the sources and the pipeline thread.
    pub queue: usize,
    /// The largest picture decoded (the decoder refuses bigger ones before allocating).
    pub max_resolution: Resolution,
    /// Where each stage's time per frame goes (`/metrics`); by default nowhere.
    pub stages: StageTimes,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            mode: Mode::Annotate,
            bitrate: 1_000_000,
            keyframe_interval: Duration::from_secs(1),
            max_lag: Duration::from_millis(300),
            detect_interval: Some(DEFAULT_DETECT_INTERVAL),
            queue: 256,
            max_resolution: Resolution::DEFAULT,
            stages: StageTimes::default(),
        }
    }
}

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Annotate(#[from] annotate::AnnotateError),
    #[error("cannot start the pipeline thread: {0}")]
    Thread(#[source] std::io::Error),
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
    /// The current source's picture size, before letterboxing into the output.
    pub input_width: Option<u32>,
    pub input_height: Option<u32>,
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
    /// From a frame's capture to its arrival at the server (the presenter's recorder and
    /// upload), ms; only for presenters whose page says when it captured. The p99 shows the
    /// presenter's hiccups, which players must keep room for.
    pub capture_to_arrival_ms_p50: Option<f64>,
    pub capture_to_arrival_ms_p99: Option<f64>,
}

/// The handle the slot and status use. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    tx: mpsc::Sender<Message>,
    stats: Arc<Mutex<PipelineStats>>,
    /// The thread, taken by [`Pipeline::stop`].
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
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
            Mode::Annotate => Some(Annotator::start(
                config.detect_interval,
                config.stages.detect.clone(),
            )?),
            Mode::MirrorOnly => None,
        };
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let stats = Arc::new(Mutex::new(PipelineStats::default()));
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let recorder = Recorder::new(stats.clone());
        let stop = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("pipeline".into())
            // Built on the thread: FFmpeg's contexts are not `Send`.
            .spawn(move || {
                let worker = Worker {
                    hub,
                    config,
                    annotator,
                    mirror,
                    source: None,
                    timeline: Timeline::new(),
                    scaler: Scaler::default(),
                    output: None,
                    last_encode: None,
                    stats: recorder,
                };
                worker.run(rx, &stop)
            })
            .map_err(PipelineError::Thread)?;
        Ok(Pipeline {
            tx,
            stats,
            thread: Arc::new(Mutex::new(Some(thread))),
            stopping,
        })
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

    /// Stops the thread after the frame it is on (shutdown) and waits for it. Idempotent.
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // Wake the thread if it is waiting for a message; a full queue wakes it anyway.
        let _ = self.tx.try_send(Message::End {
            reason: "the server is shutting down".into(),
        });
        let thread = self.thread.lock().expect("thread lock").take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("the pipeline thread panicked");
            }
        }
    }
}

/// A frame's times: its place on the output timeline, when it reached the server, and when it
/// was captured (server clock).
#[derive(Clone, Copy)]
struct When {
    time: MediaTime,
    arrived: Instant,
    capture: WallTime,
}

impl When {
    /// The same packet's times for a picture the decoder gave at `time` (a decoder that
    /// reorders gives pictures of other times than the packet it was fed).
    fn at(self, time: MediaTime) -> When {
        When {
            time,
            capture: self.capture.offset(time - self.time),
            ..self
        }
    }
}

/// What the pipeline knows of the source it is processing.
struct Input {
    /// When the source's media time 0 was captured (server clock), if it said.
    capture_origin: Option<WallTime>,
    video_track: Option<u64>,
    audio_track: Option<u64>,
    audio: Option<AudioTrack>,
    decoder: Option<VideoDecoder>,
}

impl Input {
    fn new() -> Self {
        Input {
            capture_origin: None,
            video_track: None,
            audio_track: None,
            audio: None,
            decoder: None,
        }
    }

    /// Takes the source's Tracks: opens its video decoder, finds the Opus track we pass on.
    fn tracks(&mut self, tracks: &Tracks, max: Resolution) {
        self.video_track = tracks.video().map(|t| t.number);
        let opus = tracks
            .tracks
            .iter()
            .find(|t| t.kind == TrackKind::Audio && t.codec_id == "A_OPUS");
        self.audio_track = opus.map(|t| t.number);
        self.audio = opus.map(|t| AudioTrack {
            codec_private: t.codec_private.clone(),
            sample_rate: t.sample_rate.unwrap_or(48_000.0),
            channels: t.channels.unwrap_or(2),
        });
        self.decoder = match tracks.video().map(|t| VideoDecoder::new(t, max.pixels())) {
            Some(Ok(decoder)) => Some(decoder),
            Some(Err(error)) => {
                tracing::error!(%error, "cannot decode this source's video");
                None
            }
            None => None,
        };
    }
}

/// The running VP8 output: encoder and writer, kept across sources.
struct Encoding {
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

/// The latest `LATENCY_SAMPLES` figures of one kind, for percentiles.
#[derive(Default)]
struct Samples(VecDeque<f64>);

impl Samples {
    fn push(&mut self, value: f64) {
        if self.0.len() == LATENCY_SAMPLES {
            self.0.pop_front();
        }
        self.0.push_back(value);
    }

    /// The `q` quantiles (0..=1) of what is kept, in order; None when empty.
    fn quantiles<const N: usize>(&self, q: [f64; N]) -> Option<[f64; N]> {
        if self.0.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = self.0.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        Some(q.map(|q| sorted[((sorted.len() - 1) as f64 * q).round() as usize]))
    }
}

/// The pipeline's figures as it works, published to the shared snapshot after each message.
struct Recorder {
    shared: Arc<Mutex<PipelineStats>>,
    local: PipelineStats,
    latencies: Samples,
    uploads: Samples,
    rate_in: Rate,
    rate_out: Rate,
}

impl Recorder {
    fn new(shared: Arc<Mutex<PipelineStats>>) -> Self {
        Recorder {
            shared,
            local: PipelineStats::default(),
            latencies: Samples::default(),
            uploads: Samples::default(),
            rate_in: Rate::default(),
            rate_out: Rate::default(),
        }
    }

    fn frame_in(&mut self) {
        self.local.frames_in += 1;
        self.rate_in.tick();
    }

    fn frame_out(&mut self, arrived: Instant) {
        self.local.frames_out += 1;
        self.rate_out.tick();
        self.latencies
            .push(arrived.elapsed().as_secs_f64() * 1000.0);
    }

    fn publish(&mut self, annotator: Option<&Annotator>) {
        if let Some(annotator) = annotator {
            let detect = annotator.stats();
            self.local.detect_ms = detect.detect_ms;
            self.local.faces_last = detect.faces_last;
            self.local.faces_total = detect.faces_total;
        }
        self.local.fps_in = self.rate_in.per_second;
        self.local.fps_out = self.rate_out.per_second;
        if let Some([p50, p99]) = self.latencies.quantiles([0.5, 0.99]) {
            self.local.latency_ms_p50 = p50;
            self.local.latency_ms_p99 = p99;
        }
        let uploads = self.uploads.quantiles([0.5, 0.99]);
        self.local.capture_to_arrival_ms_p50 = uploads.map(|[p50, _]| p50);
        self.local.capture_to_arrival_ms_p99 = uploads.map(|[_, p99]| p99);
        *self.shared.lock().expect("stats lock") = self.local.clone();
    }
}

struct Worker {
    hub: Hub,
    config: PipelineConfig,
    annotator: Option<Annotator>,
    mirror: Option<Arc<HlsMirror>>,
    /// The source being processed, between its `Start` and `End`.
    source: Option<Input>,
    /// Source times to output times, continuous across sources.
    timeline: Timeline,
    scaler: Scaler,
    /// The output, opened at the first picture's size (annotate mode: VP8; mirror-only: the
    /// size alone).
    output: Option<(u32, u32, Option<Encoding>)>,
    /// When the last frame went to the encoder (for the overload policy).
    last_encode: Option<Instant>,
    stats: Recorder,
}

impl Worker {
    fn run(mut self, mut rx: mpsc::Receiver<Message>, stopping: &std::sync::atomic::AtomicBool) {
        while let Some(message) = rx.blocking_recv() {
            if stopping.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            match message {
                Message::Start { name, presenter } => {
                    tracing::info!(source = %name, "pipeline input started");
                    self.source = Some(Input::new());
                    self.timeline.restart();
                    if let Some(annotator) = &self.annotator {
                        // Boxes found on the last source's pictures must not land on these.
                        annotator.new_source();
                    }
                    self.stats.local.input = Some(name);
                    self.stats.local.presenter_connected = presenter;
                    // The last presenter's upload figures say nothing about this source.
                    self.stats.uploads = Samples::default();
                }
                Message::Event { event, arrived } => self.event(event, arrived),
                Message::CaptureOrigin(origin) => {
                    if let Some(source) = self.source.as_mut() {
                        source.capture_origin = Some(origin);
                    }
                }
                Message::End { reason } => {
                    if self.source.take().is_some() {
                        tracing::info!(reason, "pipeline input ended");
                    }
                    // Frames that waited for this source's audio will get none.
                    self.flush_writer();
                    self.stats.local.input = None;
                    self.stats.local.presenter_connected = false;
                }
            }
            self.stats.publish(self.annotator.as_ref());
        }
        tracing::debug!("pipeline thread stopped");
    }

    fn event(&mut self, event: Event, arrived: Instant) {
        let Some(source) = self.source.as_mut() else {
            return;
        };
        match event {
            // A new stream in the same source (a looped file) starts its timestamps over.
            Event::Header { .. } => self.timeline.restart(),
            Event::Tracks(tracks) => {
                source.tracks(&tracks, self.config.max_resolution);
                self.stats.local.input_codec = tracks.video().map(|t| t.codec_id.clone());
                self.update_audio_track();
            }
            Event::Block(block) => {
                if Some(block.track) == source.video_track {
                    let capture = match source.capture_origin {
                        Some(origin) => {
                            let capture = origin.offset(block.time);
                            self.stats
                                .uploads
                                .push(WallTime::at(arrived).millis_since(capture));
                            capture
                        }
                        // The demo, a file, a tool: its frames' age starts at the server.
                        None => WallTime::at(arrived),
                    };
                    let time = self.timeline.place(VIDEO_TRACK, block.time);
                    let when = When {
                        time,
                        arrived,
                        capture,
                    };
                    self.video(&block.frame(), when);
                } else if Some(block.track) == source.audio_track {
                    let time = self.timeline.place(AUDIO_TRACK, block.time);
                    if let Some(mirror) = &self.mirror {
                        mirror.offer_audio(block.frame(), time);
                    }
                    // The source's blocks come in time order: unless the decoder holds
                    // pictures back, every video frame before this block is written by now.
                    let video_pending = source.decoder.as_ref().is_some_and(|d| d.holds_pictures());
                    if let Some((_, _, Some(encoding))) = self.output.as_mut() {
                        let mut out = Vec::new();
                        encoding
                            .writer
                            .audio(time, block.frame(), video_pending, &mut out);
                        self.hub.publish_media(out, Some(time), None);
                    }
                }
            }
            _ => {}
        }
    }

    /// Tells the HLS mirror the source's audio, and starts a new writer (and init segment) if
    /// the audio track appeared or went away.
    fn update_audio_track(&mut self) {
        let audio = self.source.as_ref().and_then(|s| s.audio.clone());
        if let Some(mirror) = &self.mirror {
            mirror.audio_source(
                audio
                    .as_ref()
                    .map(|a| a.codec_private.clone().unwrap_or_default()),
            );
        }
        let changed =
            matches!(&self.output, Some((_, _, Some(e))) if e.writer.tracks().audio != audio);
        if !changed {
            return;
        }
        // What the old writer holds goes out under the old init segment.
        self.flush_writer();
        if let Some((_, _, Some(encoding))) = self.output.as_mut() {
            let mut tracks = encoding.writer.tracks().clone();
            tracks.audio = audio;
            encoding.writer = LiveWriter::new(tracks);
            self.hub.publish([encoding.writer.init()]);
        }
    }

    /// Writes out what the writer holds back (video waiting for audio, or audio for video).
    fn flush_writer(&mut self) {
        if let Some((_, _, Some(encoding))) = self.output.as_mut() {
            let mut out = Vec::new();
            encoding.writer.flush(&mut out);
            self.hub.publish(out);
        }
    }

    fn video(&mut self, data: &[u8], when: When) {
        let Some(decoder) = self.source.as_mut().and_then(|s| s.decoder.as_mut()) else {
            return;
        };
        let started = Instant::now();
        let mut decoded = Vec::new();
        if let Err(error) = decoder.decode(data, when.time, &mut decoded) {
            self.stats.local.decode_errors += 1;
            tracing::debug!(%error, "frame did not decode");
        }
        let took = started.elapsed();
        self.config.stages.decode.record(took.as_secs_f64());
        self.stats.local.decode_ms =
            annotate::smooth(self.stats.local.decode_ms, took.as_secs_f64() * 1000.0);
        for frame in decoded {
            let time = frame.pts().map_or(when.time, MediaTime::from_nanos);
            self.frame(&frame, when.at(time));
        }
    }

    fn frame(&mut self, frame: &VideoFrame, when: When) {
        let When { time, arrived, .. } = when;
        if !self
            .config
            .max_resolution
            .admits(frame.width(), frame.height())
        {
            // The decoder's max_pixels stops most of these; this catches the rest (a side
            // over the limit within the pixel budget).
            self.stats.local.decode_errors += 1;
            tracing::debug!(
                width = frame.width(),
                height = frame.height(),
                "picture over --max-resolution dropped"
            );
            return;
        }
        self.stats.frame_in();
        self.stats.local.input_width = Some(frame.width());
        self.stats.local.input_height = Some(frame.height());
        let late = arrived.elapsed() > self.config.max_lag;
        let starving = self
            .last_encode
            .is_none_or(|at| at.elapsed() >= MAX_ENCODE_GAP);
        if late && !starving {
            self.stats.local.frames_dropped += 1;
            return;
        }
        self.last_encode = Some(Instant::now());
        if self.output.is_none() && !self.open_output(frame.width(), frame.height()) {
            return;
        }
        let (width, height, _) = self.output.as_ref().expect("output is open");
        let (width, height) = (*width, *height);
        let mut picture = match self.scaler.picture(frame, width, height) {
            Ok(picture) => picture,
            Err(error) => {
                self.stats.local.decode_errors += 1;
                tracing::warn!(%error, "could not convert a decoded picture");
                return;
            }
        };
        if let Some(annotator) = &self.annotator {
            // Detection sees exactly the picture the boxes are drawn on.
            annotator.offer(picture.data(0), picture.stride(0), width, height);
            annotate::draw_faces(&mut picture, &annotator.current_faces());
        }
        // The HLS mirror gets the same annotated picture (it copies; it never blocks us).
        if let Some(mirror) = &self.mirror {
            mirror.offer(&picture, time);
        }
        let Some((_, _, Some(encoding))) = self.output.as_mut() else {
            self.stats.frame_out(arrived);
            return;
        };
        let started = Instant::now();
        let mut out = Vec::new();
        let writer = &mut encoding.writer;
        let mut first_at = None;
        let mut last_at = None;
        // After a gap a player would drop frames up to the next keyframe: start one here.
        let restart = writer.needs_keyframe(time);
        if restart {
            tracing::debug!(at = ?time, "a gap in the frames: this one is made a keyframe");
        }
        let encoded =
            encoding
                .encoder
                .encode(&mut picture, time, restart, |at, keyframe, bytes| {
                    first_at.get_or_insert(at);
                    last_at = Some(at);
                    writer.video(at, keyframe, bytes, &mut out);
                });
        if let Err(error) = encoded {
            tracing::error!(%error, "VP8 encode failed");
            return;
        }
        let took = started.elapsed();
        self.config.stages.encode.record(took.as_secs_f64());
        self.stats.local.encode_ms =
            annotate::smooth(self.stats.local.encode_ms, took.as_secs_f64() * 1000.0);
        // When this media was captured, for the viewers' readout: the hub stamps the next
        // keyframe Cluster start with it (this frame's, or a later call's when the writer
        // holds the frame for audio).
        let stamp = first_at.map(|at| (at, when.at(at).capture));
        self.hub.publish_media(out, last_at, stamp);
        self.config
            .stages
            .arrival_to_broadcast
            .record(arrived.elapsed().as_secs_f64());
        self.stats.frame_out(arrived);
    }

    /// Fixes the output size at the first picture's (kept for the server's life) and, in
    /// annotate mode, opens the encoder and writer.
    fn open_output(&mut self, width: u32, height: u32) -> bool {
        // VP8, H.264 and YUV420P want even dimensions.
        let (width, height) = ((width & !1).max(2), (height & !1).max(2));
        let encoding = match self.config.mode {
            Mode::MirrorOnly => None,
            Mode::Annotate => match Vp8Encoder::new(
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
                    self.hub.publish([writer.init()]);
                    Some(Encoding { encoder, writer })
                }
                Err(error) => {
                    tracing::error!(%error, "cannot open the VP8 encoder");
                    return false;
                }
            },
        };
        self.output = Some((width, height, encoding));
        self.stats.local.width = Some(width);
        self.stats.local.height = Some(height);
        tracing::info!(width, height, "output opened");
        true
    }
}
