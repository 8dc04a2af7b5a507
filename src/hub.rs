//! The hub: caches what a new viewer needs to start, and fans the live stream out to all viewers.
//!
//! It takes finished viewer-stream chunks ([`Output`]s from the pipeline's writer or the
//! passthrough remuxer) and knows nothing of WebM beyond what each chunk says it is.
//!
//! One `Hub` handle (cheap to clone) is shared by the stage that writes and the HTTP handlers
//! that read. Writers hold a std `Mutex` only for synchronous work (updating the caches and
//! the ring), never across an await. Because the join cache and the ring are updated under
//! that same lock, a viewer that snapshots the cache and takes its place in the ring under the
//! lock gets every byte exactly once: no gap, no duplicate.
//!
//! The live tail is a ring of recent chunks bounded in chunks, in bytes and in age ([`Limits`]),
//! so what the hub holds for viewers is bounded however large the chunks are and however
//! long a viewer stalls. (tokio's broadcast channel is bounded only in messages, and a
//! stalled receiver pins every one of them: that is why the hub keeps its own ring.) Each
//! viewer keeps a cursor into the ring and, when woken, takes every chunk that is ready in one
//! lock. A viewer whose cursor fell off the ring has lost chunks; it skips ahead to the next
//! Cluster that starts with a keyframe and never resumes mid-Cluster.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::audience::Audience;
use crate::clock::MediaTime;
use crate::latency::{Stamp, WallTime};
use crate::webm::{InitSegment, Output, StreamInfo};

/// Chunks the ring holds; at ~80 chunks/s (30 fps video + Opus) about 12 s.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 1024;
/// Bytes the ring holds, and separately the join cache: 16 MiB is 12 s of a 10 Mbit/s stream.
pub const DEFAULT_BUFFER_BYTES: usize = 16 * 1024 * 1024;
/// How long the ring keeps a chunk: a viewer this far behind is of no use live, and one whose
/// socket took nothing for this long is dropped anyway (`--viewer-timeout`'s default).
pub const DEFAULT_BUFFER_AGE: Duration = Duration::from_secs(10);
/// A viewer takes at most this much from the ring per wake-up, so a viewer whose socket is
/// stuck pins little beyond what the ring itself holds.
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// How much the hub keeps for viewers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Chunks in the ring before the oldest is dropped (and slow viewers lag).
    pub chunks: usize,
    /// Bytes in the ring before the oldest chunk is dropped; also the most the join cache
    /// holds (past it, joining viewers wait for the next keyframe Cluster).
    pub bytes: usize,
    /// How long a chunk stays in the ring after it was published. Without it, a low-bitrate
    /// stream keeps the whole chunk budget resident: 1024 chunks of a 0.5 Mbit/s video-only
    /// stream are 34 s, 2.2 MB, that no viewer within the write timeout can still need.
    pub age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            chunks: DEFAULT_CHANNEL_CAPACITY,
            bytes: DEFAULT_BUFFER_BYTES,
            age: DEFAULT_BUFFER_AGE,
        }
    }
}

/// How often a viewer that keeps up is written to. Every write costs a system call and the
/// kernel's TCP work per viewer, whatever its size (measured: about 7 µs per write on loopback,
/// most of it in the kernel), so with many viewers writing every frame at once is what the
/// fan-out's CPU goes on; waiting a little between writes lets each carry several frames, for
/// a little latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// Latency first while the audience is small, CPU first when it is large: see
    /// [`AUTO_BATCHING`].
    Auto,
    /// At most one write per this long per viewer (zero: every frame at once).
    Every(std::time::Duration),
}

/// [`Batching::Auto`]'s pause between writes, by audience: from this many viewers, this long.
/// Below the first step every frame goes out at once. Fan-out CPU follows writes per second,
/// not bytes (see [`Batching`]): at 1,000 viewers of a 0.54 Mbit/s 30 fps stream, 100 ms
/// costs about 3.0 CPU-s per delivered GB, 200 ms 2.0 and 250 ms 1.0-1.7, against 2.5-4.1
/// for Icecast fed by ffmpeg in the same runs (`make bench`, a shared 2-core box). The price
/// is latency: half the pause on average, paid only by crowds, where a server's CPU decides
/// how many can watch at all.
pub const AUTO_BATCHING: [(u64, std::time::Duration); 3] = [
    (200, std::time::Duration::from_millis(50)),
    (500, std::time::Duration::from_millis(100)),
    (1000, std::time::Duration::from_millis(250)),
];

/// Errors of the broadcast stage.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("the hub was shut down")]
    Closed,
}

/// What a chunk of the viewer stream is, so a resyncing viewer knows where it may start.
#[derive(Debug, Clone, PartialEq)]
pub enum ChunkKind {
    /// An initialization segment (viewers must get it before any media that follows).
    Init(Arc<InitSegment>),
    /// A Cluster start; `keyframe` means a decoder can start here. `init` is the init segment
    /// the Cluster belongs to, so a viewer resuming here can be sent it first if it missed it.
    ClusterStart {
        keyframe: bool,
        init: Arc<InitSegment>,
    },
    /// A block inside the current Cluster.
    Block,
}

/// One piece of the viewer stream: its bytes and what it is.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub kind: ChunkKind,
    pub bytes: Bytes,
    /// On Cluster starts: when the Cluster's media was captured, for the viewers' latency
    /// readout (see [`crate::latency`]). Shared: every viewer sends the same message.
    pub stamp: Option<Arc<Stamp>>,
}

impl Chunk {
    /// True where a viewer that lost data may start again.
    pub fn is_join_point(&self) -> bool {
        matches!(
            self.kind,
            ChunkKind::Init(_) | ChunkKind::ClusterStart { keyframe: true, .. }
        )
    }

    fn init(init: Arc<InitSegment>) -> Self {
        Chunk {
            bytes: init.bytes.clone(),
            kind: ChunkKind::Init(init),
            stamp: None,
        }
    }

    /// `current_init` is the init segment in force when the output was produced; media
    /// before any init segment has nothing to belong to and is dropped.
    fn from_output(output: Output, current_init: Option<&Arc<InitSegment>>) -> Option<Self> {
        Some(match output {
            Output::Init(init) => Chunk::init(init),
            Output::ClusterStart { bytes, keyframe } => Chunk {
                kind: ChunkKind::ClusterStart {
                    keyframe,
                    init: current_init.cloned()?,
                },
                bytes,
                stamp: None,
            },
            Output::Block(bytes) => {
                current_init?;
                Chunk {
                    kind: ChunkKind::Block,
                    bytes,
                    stamp: None,
                }
            }
        })
    }
}

/// Counters shown in `/api/status` and used by tests and benchmarks.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HubStatus {
    pub uptime_s: f64,
    /// What the current init segment describes, once there is one.
    pub stream: Option<StreamInfo>,
    pub viewers: u64,
    pub viewers_total: u64,
    pub bytes_sent: u64,
    pub clusters_sent: u64,
    pub lag_resyncs: u64,
    pub slow_viewers_dropped: u64,
    pub bytes_in: u64,
    pub join_cache_bytes: usize,
    /// Bytes held in the ring for viewers that are behind.
    pub buffered_bytes: usize,
    /// The newest media time published, on the stream's own timeline (what its blocks say),
    /// ms. An edge compares it with the newest it received to know how far behind it is.
    pub media_end_ms: Option<f64>,
}

#[derive(Debug, Default)]
struct Counters {
    viewers: AtomicU64,
    viewers_total: AtomicU64,
    bytes_sent: AtomicU64,
    clusters_sent: AtomicU64,
    lag_resyncs: AtomicU64,
    slow_viewers_dropped: AtomicU64,
    bytes_in: AtomicU64,
}

/// A join cache that has not grown for this long belongs to a source that stopped (ended, or
/// paused because nobody watched): a viewer joining now waits for fresh media instead of
/// replaying a stale second.
const STALE_JOIN_CACHE: std::time::Duration = std::time::Duration::from_secs(3);

/// Everything since the latest keyframe Cluster start, for viewers who join now.
#[derive(Debug, Default)]
struct JoinCache {
    chunks: Vec<Chunk>,
    bytes: usize,
    /// False after overflowing: nothing is cached until the next keyframe Cluster.
    valid: bool,
    /// When the last chunk was published.
    last_push: Option<Instant>,
}

impl JoinCache {
    /// What a viewer joining now should get, if anything.
    fn fresh(&self) -> Option<&[Chunk]> {
        let recent = self
            .last_push
            .is_some_and(|at| at.elapsed() < STALE_JOIN_CACHE);
        (self.valid && recent && !self.chunks.is_empty()).then_some(&self.chunks[..])
    }

    fn push(&mut self, chunk: &Chunk, max_bytes: usize) {
        self.last_push = Some(Instant::now());
        match chunk.kind {
            ChunkKind::Init(_) => self.clear(false),
            ChunkKind::ClusterStart { keyframe: true, .. } => self.clear(true),
            _ => {}
        }
        if !self.valid || matches!(chunk.kind, ChunkKind::Init(_)) {
            return;
        }
        if self.bytes + chunk.bytes.len() > max_bytes {
            self.clear(false);
            return;
        }
        self.bytes += chunk.bytes.len();
        self.chunks.push(chunk.clone());
    }

    fn clear(&mut self, valid: bool) {
        self.chunks.clear();
        self.bytes = 0;
        self.valid = valid;
    }
}

/// The live tail: the most recent chunks, numbered, within [`Limits`].
#[derive(Debug, Default)]
struct Ring {
    chunks: VecDeque<Chunk>,
    /// When each of `chunks` was published (a deque of its own: viewers read `chunks` alone).
    published: VecDeque<Instant>,
    /// The number of `chunks[0]`; chunks are numbered in publishing order from 0.
    first: u64,
    bytes: usize,
}

impl Ring {
    /// The number the next published chunk gets.
    fn end(&self) -> u64 {
        self.first + self.chunks.len() as u64
    }

    /// Appends `chunk`, published `now`, dropping the oldest chunks past the limits (the newest
    /// always stays).
    fn push(&mut self, chunk: Chunk, now: Instant, limits: Limits) {
        self.bytes += chunk.bytes.len();
        self.chunks.push_back(chunk);
        self.published.push_back(now);
        while self.chunks.len() > 1
            && (self.chunks.len() > limits.chunks
                || self.bytes > limits.bytes
                || now.saturating_duration_since(self.published[0]) > limits.age)
        {
            let dropped = self.chunks.pop_front().expect("more than one chunk");
            self.published.pop_front();
            self.bytes -= dropped.bytes.len();
            self.first += 1;
        }
    }
}

#[derive(Debug)]
struct State {
    /// The init segment in force: what a joining viewer gets first.
    init: Option<Arc<InitSegment>>,
    join: JoinCache,
    ring: Ring,
    /// The newest media time published (see [`HubStatus::media_end_ms`]).
    media_end: Option<MediaTime>,
    /// The latest capture time known: a media time and when it was captured (wall clock).
    capture: Option<(MediaTime, WallTime)>,
}

/// What viewers wait on: where the ring ends, and whether the hub is closed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Head {
    end: u64,
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    limits: Limits,
    /// Wakes viewers: updated after every publish and on close.
    head: watch::Sender<Head>,
    counters: Counters,
    started: Instant,
    audience: Audience,
    batching: Batching,
}

/// The shared handle; see the module docs.
#[derive(Debug, Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl Hub {
    /// A hub that keeps at most `limits` for viewers that fall behind, batching automatically.
    pub fn new(limits: Limits) -> Self {
        Self::with_batching(limits, Batching::Auto)
    }

    /// A hub that keeps at most `limits` and paces writes to viewers by `batching`.
    pub fn with_batching(limits: Limits, batching: Batching) -> Self {
        let limits = Limits {
            chunks: limits.chunks.max(1),
            bytes: limits.bytes.max(1),
            age: limits.age,
        };
        Hub {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    init: None,
                    join: JoinCache::default(),
                    ring: Ring::default(),
                    media_end: None,
                    capture: None,
                }),
                limits,
                head: watch::channel(Head::default()).0,
                counters: Counters::default(),
                started: Instant::now(),
                audience: Audience::new(),
                batching,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only caches behind; keep serving.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends finished chunks to every viewer (and into the join cache), in order.
    pub fn publish(&self, outputs: impl IntoIterator<Item = Output>) {
        self.publish_media(outputs, None, None);
    }

    /// As [`Hub::publish`], for media: `newest` is the latest media time in `outputs` (on
    /// the stream's timeline), and `capture` when a media time was captured (wall clock).
    ///
    /// The latest capture time goes as a [`Stamp`] on each keyframe Cluster start, and only
    /// there: one stamp per keyframe is all a viewer's readout needs (media and capture time
    /// advance together), while a Cluster started anywhere else would cost every viewer a text
    /// message to send and parse. The hub keeps it rather than the caller because the writer
    /// may hold a keyframe back (for audio from before it), to be let out by a later call.
    pub fn publish_media(
        &self,
        outputs: impl IntoIterator<Item = Output>,
        newest: Option<MediaTime>,
        capture: Option<(MediaTime, WallTime)>,
    ) {
        let limits = self.shared.limits;
        let now = Instant::now();
        let mut state = self.lock();
        let before = state.ring.end();
        state.media_end = state.media_end.max(newest);
        if capture.is_some() {
            state.capture = capture;
        }
        for output in outputs {
            let Some(mut chunk) = Chunk::from_output(output, state.init.as_ref()) else {
                continue;
            };
            if matches!(chunk.kind, ChunkKind::ClusterStart { keyframe: true, .. }) {
                // Made as it goes out: its `sent_ms` is the broadcast time.
                chunk.stamp = state
                    .capture
                    .map(|(media, capture)| Arc::new(Stamp::new(media, capture)));
            }
            if let ChunkKind::Init(init) = &chunk.kind {
                if state
                    .init
                    .as_ref()
                    .is_some_and(|now| now.bytes == init.bytes)
                {
                    // The same init again (a source restarted with the same settings): viewers
                    // already have it, and one more EBML header mid-stream would only make
                    // MSE start over and file-based readers stop.
                    continue;
                }
                tracing::info!(mime = %init.info.mime, width = ?init.info.width, height = ?init.info.height, "new init segment");
                state.init = Some(init.clone());
            }
            state.join.push(&chunk, limits.bytes);
            state.ring.push(chunk, now, limits);
        }
        let end = state.ring.end();
        drop(state);
        if end != before {
            // Viewers that are waiting wake up and take everything new in one go.
            self.shared.head.send_modify(|head| head.end = end);
        }
    }

    /// Ends every viewer's stream (server shutdown): each `Viewer::next` returns `Closed`.
    pub fn close(&self) {
        self.shared.head.send_modify(|head| head.closed = true);
    }

    /// Counts bytes that arrived from the source (for status).
    pub fn count_input(&self, bytes: usize) {
        self.shared
            .counters
            .bytes_in
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A new viewer: it receives the init segment and the cached Cluster-so-far, then the live
    /// tail. Counted in `viewers` until dropped.
    pub fn subscribe(&self) -> Viewer {
        let state = self.lock();
        let cursor = state.ring.end();
        let mut backlog = VecDeque::new();
        let mut skipping = true;
        if let Some(init) = &state.init {
            backlog.push_back(Chunk::init(init.clone()));
            if let Some(cached) = state.join.fresh() {
                backlog.extend(cached.iter().cloned());
                skipping = false;
            }
        }
        drop(state);
        let counters = &self.shared.counters;
        counters.viewers.fetch_add(1, Ordering::Relaxed);
        counters.viewers_total.fetch_add(1, Ordering::Relaxed);
        self.shared.audience.joined();
        Viewer {
            hub: self.clone(),
            head: self.shared.head.subscribe(),
            backlog,
            cursor,
            skipping,
            sent_init: None,
        }
    }

    /// Records bytes delivered to a viewer's socket.
    pub fn count_sent(&self, chunk: &Chunk) {
        let counters = &self.shared.counters;
        counters
            .bytes_sent
            .fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
        if matches!(chunk.kind, ChunkKind::ClusterStart { .. }) {
            counters.clusters_sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a viewer disconnected because its socket stayed blocked too long.
    pub fn count_slow_drop(&self) {
        self.shared
            .counters
            .slow_viewers_dropped
            .fetch_add(1, Ordering::Relaxed);
    }

    /// How long a viewer that has just written should wait before its next write, if at all
    /// (see [`Batching`]).
    pub fn pause_between_writes(&self) -> Option<std::time::Duration> {
        let interval = match self.shared.batching {
            Batching::Every(interval) => interval,
            Batching::Auto => {
                let viewers = self.shared.counters.viewers.load(Ordering::Relaxed);
                AUTO_BATCHING
                    .iter()
                    .rev()
                    .find(|(from, _)| viewers >= *from)
                    .map(|(_, interval)| *interval)?
            }
        };
        (!interval.is_zero()).then_some(interval)
    }

    /// Who is watching: this hub's viewers, and HLS requests noted by the routes.
    pub fn audience(&self) -> &Audience {
        &self.shared.audience
    }

    /// The current stream's description, if a source has sent its Tracks.
    pub fn stream_info(&self) -> Option<StreamInfo> {
        self.lock().init.as_ref().map(|init| init.info.clone())
    }

    /// A snapshot for `/api/status`.
    pub fn status(&self) -> HubStatus {
        let (stream, join_cache_bytes, buffered_bytes, media_end) = {
            let state = self.lock();
            (
                state.init.as_ref().map(|i| i.info.clone()),
                state.join.bytes,
                state.ring.bytes,
                state.media_end,
            )
        };
        let c = &self.shared.counters;
        HubStatus {
            uptime_s: self.shared.started.elapsed().as_secs_f64(),
            stream,
            viewers: c.viewers.load(Ordering::Relaxed),
            viewers_total: c.viewers_total.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            clusters_sent: c.clusters_sent.load(Ordering::Relaxed),
            lag_resyncs: c.lag_resyncs.load(Ordering::Relaxed),
            slow_viewers_dropped: c.slow_viewers_dropped.load(Ordering::Relaxed),
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            join_cache_bytes,
            buffered_bytes,
            media_end_ms: media_end.map(|t| t.as_nanos() as f64 / 1e6),
        }
    }
}

/// One viewer's position in the stream. Cancel-safe: `next` can sit in `select!`.
#[derive(Debug)]
pub struct Viewer {
    hub: Hub,
    head: watch::Receiver<Head>,
    /// Chunks taken from the ring (or the join cache) and not yet returned.
    backlog: VecDeque<Chunk>,
    /// The number of the next ring chunk this viewer reads.
    cursor: u64,
    /// True until the viewer reaches a join point (after joining with no cache, or after lag).
    skipping: bool,
    /// The init segment this viewer was last sent.
    sent_init: Option<Arc<InitSegment>>,
}

impl Viewer {
    /// The next chunk to send, or `Err(Closed)` when the hub is gone.
    pub async fn next(&mut self) -> Result<Chunk, HubError> {
        loop {
            // Marking the head seen before reading the ring means a publish that lands after
            // the read still wakes `changed` below: nothing is missed.
            self.head.borrow_and_update();
            if let Some(ready) = self.ready() {
                return ready;
            }
            // Cancel-safe: nothing is taken until the next loop.
            if self.head.changed().await.is_err() {
                return Err(HubError::Closed);
            }
        }
    }

    /// Waits for the next chunk, then appends it and every chunk that is ready after it to
    /// `batch`, so a viewer writes a whole wake-up's worth at once. Cancel-safe.
    pub async fn next_batch(&mut self, batch: &mut Vec<Chunk>) -> Result<(), HubError> {
        batch.push(self.next().await?);
        while let Some(Ok(chunk)) = self.ready() {
            batch.push(chunk);
        }
        Ok(())
    }

    /// The next chunk if one is ready now, without waiting.
    pub fn try_next(&mut self) -> Option<Result<Chunk, HubError>> {
        self.ready()
    }

    /// The next chunk if one is ready now (`None` means wait for the head to move).
    fn ready(&mut self) -> Option<Result<Chunk, HubError>> {
        if self.head.borrow().closed {
            return Some(Err(HubError::Closed));
        }
        if self.backlog.is_empty() {
            self.take_ready();
        }
        let chunk = self.backlog.pop_front()?;
        match &chunk.kind {
            ChunkKind::Init(init) => self.sent_init = Some(init.clone()),
            ChunkKind::ClusterStart { init, .. } => {
                let missed = !matches!(&self.sent_init, Some(sent) if Arc::ptr_eq(sent, init));
                if missed {
                    // The viewer lagged past the init this Cluster belongs to: send it first.
                    self.sent_init = Some(init.clone());
                    let init = Chunk::init(init.clone());
                    self.backlog.push_front(chunk);
                    return Some(Ok(init));
                }
            }
            ChunkKind::Block => {}
        }
        Some(Ok(chunk))
    }

    /// Moves what is ready in the ring into the backlog, in one lock, up to a batch's worth;
    /// skips to a join point if this viewer lost chunks.
    fn take_ready(&mut self) {
        let state = self.hub.lock();
        let ring = &state.ring;
        if self.cursor < ring.first {
            let missed = ring.first - self.cursor;
            self.cursor = ring.first;
            self.skipping = true;
            self.hub
                .shared
                .counters
                .lag_resyncs
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                missed,
                "viewer lagged; skipping to the next keyframe cluster"
            );
        }
        let mut taken = 0;
        let start = (self.cursor - ring.first) as usize;
        for chunk in ring.chunks.range(start..) {
            if taken >= MAX_BATCH_BYTES {
                break;
            }
            self.cursor += 1;
            if self.skipping {
                if !chunk.is_join_point() {
                    continue;
                }
                // An init segment alone is not enough to start: keep waiting for a
                // keyframe Cluster, but the viewer needs the init first.
                self.skipping = matches!(chunk.kind, ChunkKind::Init(_));
            }
            taken += chunk.bytes.len();
            self.backlog.push_back(chunk.clone());
        }
    }

    /// The hub this viewer reads from.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.hub
            .shared
            .counters
            .viewers
            .fetch_sub(1, Ordering::Relaxed);
        self.hub.shared.audience.left();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::time::Duration;

    fn init() -> Output {
        Output::Init(Arc::new(InitSegment {
            bytes: Bytes::from_static(b"init"),
            info: StreamInfo {
                mime: "video/webm; codecs=\"vp8\"".into(),
                codecs: vec!["V_VP8".into()],
                width: Some(320),
                height: Some(240),
                has_video: true,
                has_audio: false,
            },
        }))
    }

    /// A Cluster start of `len` bytes, each byte `tag` (so tests can tell chunks apart).
    fn cluster(tag: u8, len: usize, keyframe: bool) -> Output {
        Output::ClusterStart {
            bytes: Bytes::from(vec![tag; len]),
            keyframe,
        }
    }

    fn ready(viewer: &mut Viewer) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        while let Some(Ok(chunk)) = tokio::task::unconstrained(viewer.next()).now_or_never() {
            chunks.push(chunk);
        }
        chunks
    }

    #[tokio::test]
    async fn the_ring_holds_at_most_its_byte_budget_and_a_stalled_viewer_resyncs() {
        let hub = Hub::new(Limits {
            chunks: 1000,
            bytes: 1000,
            ..Limits::default()
        });
        hub.publish([init()]);
        let mut stalled = hub.subscribe();
        let mut reading = hub.subscribe();
        assert_eq!(ready(&mut reading).len(), 1, "the init segment");
        for tag in 0..50u8 {
            // Every fifth Cluster starts with a keyframe.
            hub.publish([cluster(tag, 300, tag % 5 == 0)]);
            let got = ready(&mut reading);
            assert_eq!(got.len(), 1, "a reading viewer never lags");
            assert_eq!(got[0].bytes[0], tag);
            assert!(hub.status().buffered_bytes <= 1000, "{:?}", hub.status());
        }
        // The stalled viewer could keep only the last three Clusters: it lost chunks, so it
        // starts again at the next keyframe Cluster, after the init segment.
        let got = ready(&mut stalled);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(matches!(got[0].kind, ChunkKind::Init(_)));
        assert_eq!(hub.status().lag_resyncs, 1);
        hub.publish([cluster(50, 300, false), cluster(51, 300, true)]);
        let got = ready(&mut stalled);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].bytes[0], 51, "resumed at the keyframe Cluster");
    }

    #[test]
    fn the_status_says_the_newest_media_time_published() {
        let hub = Hub::default();
        hub.publish([init()]);
        assert_eq!(hub.status().media_end_ms, None, "no media yet");
        let ms = MediaTime::from_millis;
        hub.publish_media([cluster(1, 10, true)], Some(ms(2000)), None);
        // Audio and video are published apart and may come a little out of order.
        hub.publish_media([cluster(2, 10, false)], Some(ms(1980)), None);
        assert_eq!(hub.status().media_end_ms, Some(2000.0));
        hub.publish_media([cluster(3, 10, false)], Some(ms(2033)), None);
        assert_eq!(hub.status().media_end_ms, Some(2033.0));
    }

    #[tokio::test]
    async fn capture_stamps_ride_on_keyframe_clusters_only() {
        let hub = Hub::default();
        hub.publish([init()]);
        let mut viewer = hub.subscribe();
        let ms = MediaTime::from_millis;
        let captured = |at| Some((ms(at), WallTime::now()));
        hub.publish_media([cluster(1, 10, true)], Some(ms(1000)), captured(1000));
        // A Cluster between keyframes (a block that came out of order) gets no stamp.
        hub.publish_media([cluster(2, 10, false)], Some(ms(1033)), captured(1033));
        // A keyframe the writer held back, let out by the audio after it: stamped with the
        // latest capture time known.
        hub.publish_media([], Some(ms(2000)), captured(2000));
        hub.publish_media([cluster(3, 10, true)], Some(ms(2010)), None);
        let stamped: Vec<(u8, Option<MediaTime>)> = ready(&mut viewer)
            .iter()
            .filter(|chunk| matches!(chunk.kind, ChunkKind::ClusterStart { .. }))
            .map(|chunk| (chunk.bytes[0], chunk.stamp.as_ref().map(|s| s.media)))
            .collect();
        assert_eq!(
            stamped,
            [(1, Some(ms(1000))), (2, None), (3, Some(ms(2000)))]
        );
    }

    #[test]
    fn the_ring_drops_chunks_older_than_its_age_limit() {
        let limits = Limits {
            age: Duration::from_secs(10),
            ..Limits::default()
        };
        let start = Instant::now();
        let mut ring = Ring::default();
        let Output::Init(init) = init() else {
            unreachable!("init() is an init segment")
        };
        let chunk = |tag| Chunk::from_output(cluster(tag, 10, true), Some(&init)).expect("a chunk");
        // A chunk a second for 30 s: the ring keeps the last 10 s and the one published now.
        for second in 0..30u8 {
            let chunk = chunk(second);
            ring.push(chunk, start + Duration::from_secs(second.into()), limits);
        }
        assert_eq!(ring.end(), 30, "every chunk was numbered");
        assert_eq!(
            ring.first, 19,
            "chunks 19..=29: published at most 10 s before the last"
        );
        assert_eq!(ring.chunks.len(), ring.published.len());
        assert_eq!(ring.bytes, 11 * 10);
        assert_eq!(ring.chunks[0].bytes[0], 19);
        // A long pause in publishing: the newest chunk still stays.
        ring.push(chunk(99), start + Duration::from_secs(3600), limits);
        assert_eq!((ring.first, ring.chunks.len()), (30, 1));
    }

    #[tokio::test]
    async fn the_newest_chunk_stays_even_if_it_alone_is_over_budget() {
        let hub = Hub::new(Limits {
            chunks: 1000,
            bytes: 100,
            ..Limits::default()
        });
        hub.publish([init()]);
        let mut viewer = hub.subscribe();
        hub.publish([cluster(1, 5000, true)]);
        let got = ready(&mut viewer);
        assert_eq!(got.len(), 2, "init and the big Cluster");
        assert_eq!(got[1].bytes.len(), 5000);
        // The join cache refuses it, so a viewer joining now waits for the next keyframe.
        assert_eq!(hub.status().join_cache_bytes, 0);
        let mut late = hub.subscribe();
        assert_eq!(ready(&mut late).len(), 1, "only the init segment");
        hub.publish([cluster(2, 50, true)]);
        assert_eq!(ready(&mut late)[0].bytes[0], 2);
    }

    #[tokio::test]
    async fn a_viewer_takes_a_bounded_batch_per_wake_up() {
        let hub = Hub::new(Limits {
            chunks: 1000,
            bytes: usize::MAX,
            ..Limits::default()
        });
        hub.publish([init()]);
        let mut viewer = hub.subscribe();
        ready(&mut viewer);
        hub.publish((0..8).map(|tag| cluster(tag, MAX_BATCH_BYTES / 2, tag == 0)));
        let first = tokio::task::unconstrained(viewer.next()).now_or_never();
        assert!(matches!(first, Some(Ok(_))));
        assert!(
            viewer.backlog.len() < 4,
            "{} chunks taken at once",
            viewer.backlog.len() + 1
        );
        assert_eq!(ready(&mut viewer).len(), 7, "the rest arrive, in order");
    }

    #[tokio::test]
    async fn batching_pauses_between_writes_only_when_asked_or_crowded() {
        let every = |ms| {
            Hub::with_batching(
                Limits::default(),
                Batching::Every(Duration::from_millis(ms)),
            )
        };
        assert_eq!(every(0).pause_between_writes(), None);
        assert_eq!(
            every(40).pause_between_writes(),
            Some(Duration::from_millis(40))
        );
        let auto = Hub::default();
        let mut viewers: Vec<Viewer> = Vec::new();
        let mut expected = None;
        for (from, pause) in AUTO_BATCHING {
            viewers.extend((viewers.len() as u64 + 1..from).map(|_| auto.subscribe()));
            assert_eq!(
                auto.pause_between_writes(),
                expected,
                "{} viewers: the step below {from}",
                viewers.len()
            );
            viewers.push(auto.subscribe());
            assert_eq!(auto.pause_between_writes(), Some(pause), "{from} viewers");
            expected = Some(pause);
        }
        assert!(
            AUTO_BATCHING
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1),
            "steps grow with the audience"
        );
        viewers.clear();
        assert_eq!(
            auto.pause_between_writes(),
            None,
            "a small audience gets every frame at once"
        );
    }

    #[tokio::test]
    async fn close_ends_every_viewer() {
        let hub = Hub::default();
        let mut viewer = hub.subscribe();
        let waiting = tokio::spawn(async move { viewer.next().await.map(|_| ()) });
        tokio::task::yield_now().await;
        hub.close();
        assert!(matches!(waiting.await.unwrap(), Err(HubError::Closed)));
    }
}
