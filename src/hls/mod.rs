//! HLS mirror: the same annotated pictures as the WebM stream, encoded a second time to
//! H.264 and cut into HLS segments, for players that only speak HLS (Safari, hls.js, VLC,
//! a CDN in front).
//!
//! Data flow: [`HlsMirror::offer`] copies a picture into a small bounded queue (never waiting:
//! when the queue is full the picture is dropped and counted), and [`HlsMirror::offer_audio`]
//! the source's Opus packets → the mirror's own thread turns the Opus into AAC
//! ([`crate::media::audio`]) and runs the [`segmenter`] (libx264, one IDR per segment, audio
//! and pictures interleaved, each segment muxed into memory and cut into parts of about
//! 200 ms) → [`run_dir`] writes each part and segment and then the [`playlist`] atomically
//! into a directory made for this run, deletes old files, and sends the new [`Progress`] →
//! `http::hls` serves the files from there, holding blocking playlist reloads and
//! preload-hinted part requests until the progress they wait for arrives.
//!
//! Low-Latency HLS (RFC 8216bis): the playlist lists the parts of its last few segments and
//! of the segment being written, hints the next part, and the server blocks reloads, so a
//! player can play about a second behind the picture instead of several segments. Whole
//! segments are written and listed as before, so players without LL-HLS (ffmpeg, older
//! players) play the same playlist unchanged. [`HlsConfig::part`] `None` turns parts off.
//!
//! Segments and parts are MPEG-TS, not fragmented MP4: every HLS player (Safari, hls.js,
//! Android's ExoPlayer, VLC, ffmpeg) plays TS, each TS segment carries its own PAT/PMT and
//! SPS/PPS so it needs no init segment (one file kind less to write, serve and keep
//! consistent), FFmpeg's mpegts muxer repeats PAT/PMT every 100 ms (its default `pat_period`)
//! so every part carries them too, and the playlist can stay at version 3. fMP4 would save a
//! few percent of TS packet overhead, which does not matter at our bitrates.
//!
//! Audio: a source with an Opus track gives the mirror an AAC stream from then on, for its
//! whole life (players cannot add a track mid-stream, and they stop at a hole in one), so a
//! later source without audio gets silence. Until a source with audio comes, the mirror is
//! video only, as it always was.
//!
//! Nothing grows with time: the queue is bounded, a segment's bytes live in memory only until
//! written, the playlist holds `window` segments, and the directory keeps about
//! `2 × window + 1` segment files and their parts (see [`run_dir`] for the deletion rule). The
//! directory is removed when the mirror is dropped, and one left by a killed process at the
//! next start.

pub mod playlist;
pub mod run_dir;
pub mod segmenter;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use ffmpeg::util::frame::Video as VideoFrame;
use ffmpeg_next as ffmpeg;
use tokio::sync::watch;

use bytes::Bytes;

use crate::clock::MediaTime;
use crate::media::audio::{samples_from_nanos, AacEncoder, AudioError};
use crate::media::decode::DecodeError;
use playlist::Playlist;
use run_dir::RunDir;
use segmenter::{Finished, Segmenter, SegmenterConfig};

/// The playlist's file name (and URL path segment).
pub const PLAYLIST_NAME: &str = "live.m3u8";

/// Pictures waiting for the encoder; more are dropped. A few frames absorb jitter, and a
/// short queue keeps the mirror near the live edge when it cannot keep up.
const QUEUE: usize = 8;
/// Everything waiting for the thread: the pictures plus the audio packets between them (Opus
/// sends 50 a second, so a picture queue's worth of time holds about 16).
const QUEUE_ALL: usize = 64;

/// How far below the frame path the mirror's encoder runs (nice steps; see crate::priority):
/// less than face detection, since a starved mirror drops pictures from its stream.
const HLS_NICE: i32 = 5;

/// The file name of segment `sequence`.
pub fn segment_name(sequence: u64) -> String {
    format!("seg-{sequence}.ts")
}

/// The file name of part `index` (from 0) of segment `sequence`.
pub fn part_name(sequence: u64, index: u64) -> String {
    format!("part-{sequence}.{index}.ts")
}

/// What a name in the run directory is, if it is one we serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `live.m3u8`.
    Playlist,
    /// `seg-<n>.ts`.
    Segment,
    /// `part-<msn>.<index>.ts`, part `index` of segment `msn`.
    Part { msn: u64, index: u64 },
}

/// Classifies a requested file name: exactly `live.m3u8`, `seg-<digits>.ts` or
/// `part-<digits>.<digits>.ts`, nothing else (so no `..`, no slashes, no percent escapes, no
/// `.tmp` files can ever be named).
pub fn file_kind(name: &str) -> Option<FileKind> {
    if name == PLAYLIST_NAME {
        return Some(FileKind::Playlist);
    }
    if let Some(digits) = name
        .strip_prefix("seg-")
        .and_then(|n| n.strip_suffix(".ts"))
    {
        // Twenty digits hold any u64; longer names cannot be ours.
        let ours =
            !digits.is_empty() && digits.len() <= 20 && digits.bytes().all(|b| b.is_ascii_digit());
        return ours.then_some(FileKind::Segment);
    }
    let (msn, index) = name
        .strip_prefix("part-")?
        .strip_suffix(".ts")?
        .split_once('.')?;
    // Written as we write them, without leading zeros: a request for a part may wait for it
    // (see http::hls), and it must wait for a name that can appear.
    Some(FileKind::Part {
        msn: canonical_number(msn, 20)?,
        index: canonical_number(index, 6)?,
    })
}

/// A decimal number of at most `max_digits` ASCII digits, without a leading zero.
fn canonical_number(digits: &str, max_digits: usize) -> Option<u64> {
    let ours = !digits.is_empty()
        && digits.len() <= max_digits
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    ours.then(|| digits.parse().ok()).flatten()
}

/// What the published playlist contains, for requests that wait for more (blocking playlist
/// reload, RFC 8216bis §6.2.5.2, and preload-hinted parts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// The media sequence number of the segment being written: every segment before it is
    /// complete (published, or skipped after an error).
    pub msn: u64,
    /// How many parts of segment `msn` are listed.
    pub parts: u64,
}

/// Why the HLS mirror failed.
#[derive(Debug, thiserror::Error)]
pub enum HlsError {
    #[error("FFmpeg has no H.264 encoder (libx264)")]
    NoEncoder,
    #[error("libx264 produced a packet without a timestamp")]
    NoTimestamp,
    #[error("cannot create the HLS directory {path}: {error}")]
    CreateDir {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("cannot write {path}: {error}")]
    Write {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("cannot start the HLS thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("picture conversion: {0}")]
    Convert(#[from] DecodeError),
    #[error("audio: {0}")]
    Audio(#[from] AudioError),
    #[error("FFmpeg: {0}")]
    Ffmpeg(#[from] ffmpeg::Error),
}

/// HLS settings from the command line.
#[derive(Debug, Clone)]
pub struct HlsConfig {
    /// Nominal segment length (segments are cut on the first picture at or past it).
    pub segment: Duration,
    /// Segments listed in the playlist.
    pub window: usize,
    /// Target bits per second for H.264.
    pub bitrate: usize,
    /// Where the run directory is created; `None` means the system temporary directory.
    pub parent_dir: Option<PathBuf>,
    /// libx264 preset: `ultrafast` (~1.9 ms/frame at 640x480 here; the default) or
    /// `veryfast` (~4.5 ms, better pictures at the same bitrate). The mirror is the fallback
    /// and runs beside the frame path on every live source: on a small machine the CPU it
    /// takes is latency for the WebM viewers (the latency bench measured it).
    pub preset: String,
    /// Nominal Low-Latency HLS part length (parts are cut on the first picture at or past
    /// it); `None` writes plain HLS, whole segments only.
    pub part: Option<Duration>,
}

impl Default for HlsConfig {
    fn default() -> Self {
        HlsConfig {
            segment: Duration::from_secs(1),
            window: 6,
            bitrate: 1_000_000,
            parent_dir: None,
            preset: "ultrafast".to_string(),
            part: Some(DEFAULT_PART),
        }
    }
}

/// The nominal part length: five parts per 1 s segment.
pub const DEFAULT_PART: Duration = Duration::from_millis(200);

/// The slowest frame rate whose parts still fit the declared PART-TARGET: a part ends on the
/// first picture at or past its nominal length, so it can be up to one frame interval longer.
/// 7.5 fps (133 ms between pictures) covers webcams in poor light; a slower source makes
/// longer parts than declared, which players tolerate (they only pace reloads by it).
const SLOWEST_FPS_FOR_PARTS: f64 = 7.5;

/// EXT-X-PART-INF's PART-TARGET for parts of nominally `part`: `part` plus one frame interval
/// at the slowest frame rate, rounded up to the millisecond (0.334 s for 200 ms).
pub fn part_target(part: Duration) -> Duration {
    let longest = part.as_secs_f64() + 1.0 / SLOWEST_FPS_FOR_PARTS;
    Duration::from_millis((longest * 1000.0).ceil() as u64)
}

/// Figures for `/api/status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HlsStatus {
    /// Segments listed in the playlist now.
    pub segments: usize,
    /// The newest segment's media sequence number.
    pub latest_sequence: Option<u64>,
    /// Segment files in the directory (listed plus recently removed from the playlist).
    pub segments_on_disk: usize,
    /// Moving average of encoding (and muxing) one picture, ms.
    pub encode_ms: f64,
    /// Pictures encoded since the start.
    pub frames_encoded: u64,
    /// Pictures not encoded: the queue was full, or they were out of order.
    pub frames_dropped: u64,
    /// Part files in the directory (of the open, listed and recently removed segments).
    pub parts_on_disk: usize,
    /// The nominal segment length.
    pub segment_duration_s: f64,
    /// The nominal part length; `None` without Low-Latency HLS parts.
    pub part_duration_s: Option<f64>,
    /// The playlist's PART-TARGET (the longest a part should be).
    pub part_target_s: Option<f64>,
    /// The playlist's EXT-X-TARGETDURATION.
    pub target_duration_s: u64,
    /// Whether the segments carry audio (AAC from the source's Opus).
    pub audio: bool,
    /// AAC packets written, and Opus packets not taken (the queue was full).
    pub audio_packets: u64,
    pub audio_dropped: u64,
    /// The H.264 picture size, once the first picture has arrived.
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// The run directory: kept for the log and tests, never shown in `/api/status` (a
    /// server path is nothing a viewer needs to know).
    #[serde(skip)]
    pub dir: PathBuf,
    /// The latest error, if any (encoding goes on with the next picture or segment).
    pub error: Option<String>,
}

/// State the mirror's thread and its handle share.
struct Shared {
    /// A std `Mutex`: held only to copy figures in or out, never across encoding.
    status: Mutex<HlsStatus>,
    /// Counted by `offer` on the caller's thread, without taking the lock.
    dropped: AtomicU64,
    audio_dropped: AtomicU64,
    /// Pictures in the queue now (the queue also holds audio; pictures have their own limit).
    pictures_queued: std::sync::atomic::AtomicUsize,
    /// Set by `Drop`, so the thread skips what is still queued instead of encoding it.
    stopping: AtomicBool,
}

/// What waits for the mirror's thread.
enum Offer {
    /// A picture, with its time on the output timeline and when it was offered.
    Picture {
        picture: VideoFrame,
        time: MediaTime,
        at: SystemTime,
    },
    /// The source now playing has this Opus track (its CodecPrivate, possibly empty), or none.
    AudioSource(Option<Bytes>),
    /// One Opus packet of that track.
    Audio {
        data: Bytes,
        time: MediaTime,
        at: SystemTime,
    },
}

/// The running mirror: an encoder thread and the directory it writes. [`HlsMirror::stop`]
/// or dropping it stops the thread and removes the directory.
pub struct HlsMirror {
    /// `None` once stopped. A std `Mutex` held only for a `try_send` or to take the sender:
    /// it is what lets `stop` work through a shared reference.
    queue: Mutex<Option<SyncSender<Offer>>>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
    /// Follows the published playlist; the sender lives with the run directory.
    progress: watch::Receiver<Progress>,
    /// The playlist's PART-TARGET, when parts are on.
    part_target: Option<Duration>,
}

impl HlsMirror {
    /// Creates a fresh run directory (`<parent>/lenscast-hls-<pid>-<random>`) and starts the
    /// encoder thread. Fails at once if FFmpeg has no libx264 or the directory cannot be made.
    pub fn start(config: HlsConfig) -> Result<Self, HlsError> {
        crate::media::decode::init();
        ffmpeg::encoder::find_by_name("libx264").ok_or(HlsError::NoEncoder)?;
        let segment = config.segment.max(Duration::from_millis(100));
        // Parts shorter than 50 ms would be a playlist line per frame or two; parts as long
        // as a segment are no parts.
        let part = config
            .part
            .filter(|part| !part.is_zero())
            .map(|part| part.clamp(Duration::from_millis(50), segment));
        let part_target = part.map(part_target);
        let parent = config.parent_dir.clone().unwrap_or_else(std::env::temp_dir);
        run_dir::sweep_stale(&parent);
        let playlist = match part_target {
            Some(target) => Playlist::low_latency(segment, config.window, target),
            None => Playlist::new(segment, config.window),
        };
        let run_dir = RunDir::create(&parent, playlist)?;
        let dir = run_dir.path().to_path_buf();
        let progress = run_dir.subscribe();
        let shared = Arc::new(Shared {
            status: Mutex::new(HlsStatus {
                segment_duration_s: segment.as_secs_f64(),
                part_duration_s: part.map(|p| p.as_secs_f64()),
                part_target_s: part_target.map(|p| p.as_secs_f64()),
                target_duration_s: run_dir.playlist().target_duration,
                dir: dir.clone(),
                ..HlsStatus::default()
            }),
            dropped: AtomicU64::new(0),
            audio_dropped: AtomicU64::new(0),
            pictures_queued: Default::default(),
            stopping: AtomicBool::new(false),
        });
        let (queue, pictures) = mpsc::sync_channel(QUEUE_ALL);
        let segmenter = SegmenterConfig {
            segment,
            part,
            bitrate: config.bitrate,
            preset: config.preset.clone(),
        };
        let worker_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("hls".into())
            // The segmenter is made on the thread: FFmpeg's scaler inside it is not `Send`.
            .spawn(move || {
                // The mirror plays seconds behind anyway; the WebM viewers' frames come first.
                crate::priority::lower_this_thread(HLS_NICE, "hls");
                Worker::new(segmenter, run_dir, worker_shared).run(pictures)
            });
        let thread = match thread {
            Ok(thread) => thread,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(HlsError::Thread(error));
            }
        };
        Ok(HlsMirror {
            queue: Mutex::new(Some(queue)),
            shared,
            thread: Mutex::new(Some(thread)),
            dir,
            progress,
            part_target,
        })
    }

    /// Offers one annotated picture with its time on the output timeline (which only moves
    /// forward). Never blocks: the picture is copied into the queue, or dropped and counted
    /// if it is full.
    pub fn offer(&self, picture: &VideoFrame, time: MediaTime) {
        if picture.width() == 0 || picture.height() == 0 {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.shared.pictures_queued.load(Ordering::Relaxed) >= QUEUE {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let offer = Offer::Picture {
            picture: picture.clone(),
            time,
            at: SystemTime::now(),
        };
        self.shared.pictures_queued.fetch_add(1, Ordering::Relaxed);
        if !self.send(offer) {
            self.shared.pictures_queued.fetch_sub(1, Ordering::Relaxed);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Says which audio the source now playing has: its Opus track's CodecPrivate (the
    /// OpusHead; empty if it has none), or `None` for no audio. Call it at each source's
    /// tracks, before its packets.
    pub fn audio_source(&self, opus_head: Option<Bytes>) {
        // Never dropped for a full queue: it blocks for the moment the thread needs to take
        // one item, rather than play a source's audio with the last one's decoder.
        let queue = self.queue.lock().expect("hls queue lock");
        if let Some(queue) = queue.as_ref() {
            let _ = queue.send(Offer::AudioSource(opus_head));
        }
    }

    /// Offers one Opus packet of the source's audio, with its time on the output timeline.
    /// Never blocks: a packet that finds the queue full is dropped and counted (the mirror
    /// fills the gap with silence).
    pub fn offer_audio(&self, data: Bytes, time: MediaTime) {
        let offer = Offer::Audio {
            data,
            time,
            at: SystemTime::now(),
        };
        if !self.send(offer) {
            self.shared.audio_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues without waiting; false if full, stopped, or the thread is gone.
    fn send(&self, offer: Offer) -> bool {
        let queue = self.queue.lock().expect("hls queue lock");
        queue.as_ref().is_some_and(|q| q.try_send(offer).is_ok())
    }

    /// A snapshot of the mirror's figures.
    pub fn status(&self) -> HlsStatus {
        let mut status = self.shared.status.lock().expect("hls status lock").clone();
        status.frames_dropped += self.shared.dropped.load(Ordering::Relaxed);
        status.audio_dropped += self.shared.audio_dropped.load(Ordering::Relaxed);
        status
    }

    /// The run directory the files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Follows what the published playlist contains: changes after each playlist write, and
    /// is closed (`changed()` fails) once the mirror has stopped. One receiver per waiting
    /// request is all a wait costs.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// The playlist's PART-TARGET; `None` without parts.
    pub fn part_target(&self) -> Option<Duration> {
        self.part_target
    }

    /// The playlist's EXT-X-TARGETDURATION as it is now.
    pub fn target_duration(&self) -> Duration {
        let seconds = self
            .shared
            .status
            .lock()
            .expect("hls status lock")
            .target_duration_s;
        Duration::from_secs(seconds)
    }

    /// Stops the thread and removes the run directory; later offers are dropped. For shutdown
    /// while other owners (an `Arc` in the pipeline or the routes) may still hold the mirror:
    /// a process that exits with threads still running never runs their destructors.
    /// Idempotent; `Drop` calls it.
    pub fn stop(&self) {
        // Closing the queue ends the thread's loop; `stopping` makes it skip what is queued.
        self.shared.stopping.store(true, Ordering::Relaxed);
        self.queue.lock().expect("hls queue lock").take();
        // Held to the end, so a concurrent `stop` waits rather than racing the thread's exit.
        let mut thread = self.thread.lock().expect("hls thread lock");
        if let Some(thread) = thread.take() {
            if thread.join().is_err() {
                tracing::error!("the HLS thread panicked");
            }
        }
        // The thread has finished (or died), so nothing writes here any more. It removes the
        // directory itself on a normal exit; this covers a panic.
        if self.dir.exists() {
            if let Err(error) = std::fs::remove_dir_all(&self.dir) {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot remove the HLS directory");
            }
        }
    }
}

impl Drop for HlsMirror {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Pictures whose arrival times are remembered (a few segments' worth at 30 fps).
const MAX_ARRIVALS: usize = 512;
/// How far PROGRAM-DATE-TIME may drift from real arrival before it is re-anchored.
const MAX_DATE_DRIFT: Duration = Duration::from_millis(500);

/// The mirror's thread.
struct Worker {
    segmenter: Segmenter,
    run_dir: Option<RunDir>,
    shared: Arc<Shared>,
    /// The first picture's pts and wall-clock time: segment timestamps count from that pts,
    /// and PROGRAM-DATE-TIME is that wall-clock time plus the segment's timestamp, so dates
    /// and EXTINF durations agree exactly.
    anchor: Option<(i64, SystemTime)>,
    /// (timestamp, wall-clock arrival) of recent pictures, to keep the dates near real time.
    arrivals: std::collections::VecDeque<(i64, SystemTime)>,
    /// (start, PROGRAM-DATE-TIME) of the segment being written, dated at its first part so
    /// the open segment and, later, the whole one carry the same date.
    open_date: Option<(i64, SystemTime)>,
    last_ts: Option<i64>,
    /// Opus into AAC, from the first source with audio on (see the module docs).
    aac: Option<AacEncoder>,
    /// Whether the source now playing has audio.
    source_audio: bool,
    audio_packets: u64,
    encode_ms: f64,
    frames_encoded: u64,
    error: Option<String>,
}

impl Worker {
    fn new(segmenter: SegmenterConfig, run_dir: RunDir, shared: Arc<Shared>) -> Self {
        Worker {
            segmenter: Segmenter::new(segmenter),
            run_dir: Some(run_dir),
            shared,
            anchor: None,
            arrivals: std::collections::VecDeque::new(),
            open_date: None,
            last_ts: None,
            aac: None,
            source_audio: false,
            audio_packets: 0,
            encode_ms: 0.0,
            frames_encoded: 0,
            error: None,
        }
    }

    fn run(mut self, pictures: Receiver<Offer>) {
        while let Ok(offer) = pictures.recv() {
            if self.shared.stopping.load(Ordering::Relaxed) {
                break;
            }
            self.handle(offer);
        }
        if let Some(run_dir) = self.run_dir.take() {
            run_dir.remove();
        }
    }

    fn handle(&mut self, offer: Offer) {
        match offer {
            Offer::Picture { picture, time, at } => {
                self.shared.pictures_queued.fetch_sub(1, Ordering::Relaxed);
                self.picture(picture, time, at);
            }
            Offer::AudioSource(head) => {
                if let Err(error) = self.audio_source(head) {
                    self.report(error);
                }
            }
            Offer::Audio { data, time, at } => {
                if let Err(error) = self.audio(&data, time, at) {
                    self.report(error);
                }
            }
        }
        self.publish_finished();
        self.update_status();
    }

    /// A new source's audio: the AAC encoder starts with the first source that has audio and
    /// then stays (see the module docs).
    fn audio_source(&mut self, head: Option<Bytes>) -> Result<(), HlsError> {
        self.source_audio = head.is_some();
        if head.is_some() && self.aac.is_none() {
            let aac = AacEncoder::new()?;
            self.segmenter.enable_audio(aac.parameters());
            self.aac = Some(aac);
        }
        if let Some(aac) = self.aac.as_mut() {
            aac.source(head.as_deref())?;
        }
        self.segmenter.expect_audio(self.source_audio)
    }

    fn audio(&mut self, data: &[u8], time: MediaTime, at: SystemTime) -> Result<(), HlsError> {
        let Some(aac) = self.aac.as_mut() else {
            return Ok(());
        };
        let (anchor_ms, _) = *self.anchor.get_or_insert((time.as_millis(), at));
        let from_anchor = time.as_nanos() - anchor_ms * 1_000_000;
        if from_anchor < 0 {
            // Before the mirror's first picture or packet: nothing to go with.
            return Ok(());
        }
        aac.opus(data, samples_from_nanos(from_anchor))?;
        let packets = aac.take_packets();
        self.audio_packets += packets.len() as u64;
        self.segmenter.push_audio(packets)
    }

    /// Keeps the AAC track going with silence up to a picture at `ts_ms` while the source has
    /// no audio of its own.
    fn silence_until(&mut self, ts_ms: i64) -> Result<(), HlsError> {
        let Some(aac) = self.aac.as_mut().filter(|_| !self.source_audio) else {
            return Ok(());
        };
        aac.silence_until(samples_from_nanos(ts_ms * 1_000_000))?;
        let packets = aac.take_packets();
        self.audio_packets += packets.len() as u64;
        self.segmenter.push_audio(packets)
    }

    fn picture(&mut self, picture: VideoFrame, time: MediaTime, at: SystemTime) {
        let Some(ts) = self.timestamp(time, at) else {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.last_ts = Some(ts);
        if let Err(error) = self.silence_until(ts) {
            self.report(error);
        }
        let started = Instant::now();
        let pushed = self.segmenter.push(picture, ts);
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        match pushed {
            Ok(()) => {
                self.frames_encoded += 1;
                self.encode_ms = crate::annotate::smooth(self.encode_ms, elapsed_ms);
            }
            Err(error) => {
                self.report(error);
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.arrivals.len() == MAX_ARRIVALS {
            self.arrivals.pop_front();
        }
        self.arrivals.push_back((ts, at));
    }

    /// Writes the segments the segmenter has completed, and the playlist.
    fn publish_finished(&mut self) {
        let mut failures = Vec::new();
        for finished in self.segmenter.take_finished() {
            let published = match finished {
                Finished::Part(part) => {
                    if part.independent {
                        let date = self.program_date_time(part.start_ms);
                        self.open_date = Some((part.start_ms, date));
                    }
                    // A dependent part's date is not used (its segment has one).
                    let date = self.open_date.map_or(SystemTime::UNIX_EPOCH, |(_, d)| d);
                    self.run_dir_mut().publish_part(part, date)
                }
                Finished::Segment(segment) => {
                    let date = match self.open_date.take() {
                        Some((start, date)) if start == segment.start_ms => date,
                        _ => self.program_date_time(segment.start_ms),
                    };
                    self.run_dir_mut().publish(segment, date)
                }
            };
            if let Err(error) = published {
                failures.push(error);
            }
        }
        for error in failures {
            self.report(error);
        }
    }

    /// PROGRAM-DATE-TIME of a segment starting at `start_ms`: the anchor's wall time plus the
    /// timestamp, so dates and EXTINF durations agree exactly; but when that drifts more than
    /// `MAX_DATE_DRIFT` from when the segment's first picture really arrived (a burst from a
    /// source ahead of real time, a gap between sources), the anchor moves to the real time,
    /// so players that measure latency from these dates stay right.
    fn program_date_time(&mut self, start_ms: i64) -> SystemTime {
        let (anchor_pts, anchor_wall) = self.anchor.expect("timestamp() sets the anchor");
        let computed = anchor_wall + Duration::from_millis(start_ms.max(0) as u64);
        let arrived = self
            .arrivals
            .iter()
            .find(|(ts, _)| *ts >= start_ms)
            .map(|(_, at)| *at);
        let Some(arrived) = arrived else {
            return computed;
        };
        let drift = match computed.duration_since(arrived) {
            Ok(ahead) => ahead,
            Err(behind) => behind.duration(),
        };
        if drift <= MAX_DATE_DRIFT {
            return computed;
        }
        let wall = arrived
            .checked_sub(Duration::from_millis(start_ms.max(0) as u64))
            .unwrap_or(arrived);
        self.anchor = Some((anchor_pts, wall));
        arrived
    }

    /// The picture's timestamp on the mirror's timeline (ms since the first picture), or `None`
    /// to drop it. The output timeline only moves forward (see [`crate::clock::Timeline`]);
    /// a picture in the same millisecond as the last is dropped, because the encoder and the
    /// muxer need strictly increasing timestamps.
    fn timestamp(&mut self, time: MediaTime, at: SystemTime) -> Option<i64> {
        let pts_ms = time.as_millis();
        let (anchor_pts, _) = *self.anchor.get_or_insert((pts_ms, at));
        let ts = pts_ms - anchor_pts;
        match self.last_ts {
            Some(last) if ts <= last => None,
            _ => Some(ts),
        }
    }

    fn run_dir_mut(&mut self) -> &mut RunDir {
        self.run_dir
            .as_mut()
            .expect("the run dir lives until run() ends")
    }

    /// Logs an error once per distinct message (a missing encoder would otherwise log at the
    /// frame rate) and shows it in the status.
    fn report(&mut self, error: HlsError) {
        let message = error.to_string();
        if self.error.as_deref() != Some(message.as_str()) {
            tracing::warn!(%message, "HLS mirror");
            self.error = Some(message);
        }
    }

    fn update_status(&self) {
        let run_dir = self
            .run_dir
            .as_ref()
            .expect("the run dir lives until run() ends");
        let playlist = run_dir.playlist();
        let size = self.segmenter.size();
        let mut status = self.shared.status.lock().expect("hls status lock");
        status.segments = playlist.segments.len();
        status.latest_sequence = playlist.latest_sequence();
        status.segments_on_disk = run_dir.segments_on_disk();
        status.parts_on_disk = run_dir.parts_on_disk();
        status.target_duration_s = playlist.target_duration;
        status.encode_ms = self.encode_ms;
        status.frames_encoded = self.frames_encoded;
        status.audio = self.aac.is_some();
        status.audio_packets = self.audio_packets;
        status.width = size.map(|(w, _)| w);
        status.height = size.map(|(_, h)| h);
        status.error.clone_from(&self.error);
    }
}
