//! The hub: caches what a new viewer needs to start, and fans the live stream out to all viewers.
//!
//! It takes finished viewer-stream chunks ([`Output`]s from the pipeline's writer or the
//! passthrough remuxer) and knows nothing of WebM beyond what each chunk says it is.
//!
//! One `Hub` handle (cheap to clone) is shared by the stage that writes and the HTTP handlers
//! that read. Writers hold a std `Mutex` only for synchronous work (updating the caches,
//! `broadcast::Sender::send`), never across an await. Because the join cache is
//! updated and the chunk is sent under that same lock, a viewer that snapshots the cache and
//! subscribes under the lock gets every byte exactly once: no gap, no duplicate.
//!
//! A viewer that falls behind the broadcast channel (`RecvError::Lagged`) has lost chunks; it
//! skips ahead to the next Cluster that starts with a keyframe and never resumes mid-Cluster.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{broadcast, watch};

use crate::webm::{InitSegment, Output, StreamInfo};

/// Chunks the broadcast channel holds; at ~80 chunks/s (30 fps video + Opus) about 12 s.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 1024;
/// The join cache stops growing past this; viewers then wait for the next keyframe Cluster.
pub const MAX_JOIN_CACHE_BYTES: usize = 32 * 1024 * 1024;

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
            },
            Output::Block(bytes) => {
                current_init?;
                Chunk {
                    kind: ChunkKind::Block,
                    bytes,
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

/// Everything since the latest keyframe Cluster start, for viewers who join now.
#[derive(Debug, Default)]
struct JoinCache {
    chunks: Vec<Chunk>,
    bytes: usize,
    /// False after overflowing: nothing is cached until the next keyframe Cluster.
    valid: bool,
}

impl JoinCache {
    fn push(&mut self, chunk: &Chunk) {
        match chunk.kind {
            ChunkKind::Init(_) => self.clear(false),
            ChunkKind::ClusterStart { keyframe: true, .. } => self.clear(true),
            _ => {}
        }
        if !self.valid || matches!(chunk.kind, ChunkKind::Init(_)) {
            return;
        }
        if self.bytes + chunk.bytes.len() > MAX_JOIN_CACHE_BYTES {
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

#[derive(Debug)]
struct State {
    /// The init segment in force: what a joining viewer gets first.
    init: Option<Arc<InitSegment>>,
    join: JoinCache,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    tx: broadcast::Sender<Chunk>,
    /// True once the server shuts down: every viewer's `next` then ends with `Closed`.
    closed: watch::Sender<bool>,
    counters: Counters,
    started: Instant,
}

/// The shared handle; see the module docs.
#[derive(Debug, Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new(DEFAULT_CHANNEL_CAPACITY)
    }
}

impl Hub {
    /// A hub whose broadcast channel holds `capacity` chunks before slow viewers lag.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Hub {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    init: None,
                    join: JoinCache::default(),
                }),
                tx,
                closed: watch::channel(false).0,
                counters: Counters::default(),
                started: Instant::now(),
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
        let mut state = self.lock();
        for output in outputs {
            let Some(chunk) = Chunk::from_output(output, state.init.as_ref()) else {
                continue;
            };
            if let ChunkKind::Init(init) = &chunk.kind {
                tracing::info!(mime = %init.info.mime, width = ?init.info.width, height = ?init.info.height, "new init segment");
                state.init = Some(init.clone());
            }
            state.join.push(&chunk);
            // An error only means no viewer is subscribed right now.
            let _ = self.shared.tx.send(chunk);
        }
    }

    /// Ends every viewer's stream (server shutdown): each `Viewer::next` returns `Closed`.
    pub fn close(&self) {
        self.shared.closed.send_replace(true);
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
        let rx = self.shared.tx.subscribe();
        let mut backlog = VecDeque::new();
        let mut skipping = true;
        if let Some(init) = &state.init {
            backlog.push_back(Chunk::init(init.clone()));
            if state.join.valid && !state.join.chunks.is_empty() {
                backlog.extend(state.join.chunks.iter().cloned());
                skipping = false;
            }
        }
        drop(state);
        let counters = &self.shared.counters;
        counters.viewers.fetch_add(1, Ordering::Relaxed);
        counters.viewers_total.fetch_add(1, Ordering::Relaxed);
        Viewer {
            hub: self.clone(),
            closed: self.shared.closed.subscribe(),
            backlog,
            rx,
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

    /// The current stream's description, if a source has sent its Tracks.
    pub fn stream_info(&self) -> Option<StreamInfo> {
        self.lock().init.as_ref().map(|init| init.info.clone())
    }

    /// A snapshot for `/api/status`.
    pub fn status(&self) -> HubStatus {
        let (stream, join_cache_bytes) = {
            let state = self.lock();
            (
                state.init.as_ref().map(|i| i.info.clone()),
                state.join.bytes,
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
        }
    }
}

/// One viewer's position in the stream. Cancel-safe: `next` can sit in `select!`.
#[derive(Debug)]
pub struct Viewer {
    hub: Hub,
    closed: watch::Receiver<bool>,
    backlog: VecDeque<Chunk>,
    rx: broadcast::Receiver<Chunk>,
    /// True until the viewer reaches a join point (after joining with no cache, or after lag).
    skipping: bool,
    /// The init segment this viewer was last sent.
    sent_init: Option<Arc<InitSegment>>,
}

impl Viewer {
    /// The next chunk to send, or `Err(Closed)` when the hub is gone.
    pub async fn next(&mut self) -> Result<Chunk, HubError> {
        let chunk = self.next_in_stream().await?;
        match &chunk.kind {
            ChunkKind::Init(init) => self.sent_init = Some(init.clone()),
            ChunkKind::ClusterStart { init, .. } => {
                let missed = !matches!(&self.sent_init, Some(sent) if Arc::ptr_eq(sent, init));
                if missed {
                    // The viewer lagged past the init this Cluster belongs to: send it first.
                    self.sent_init = Some(init.clone());
                    let init = Chunk::init(init.clone());
                    self.backlog.push_front(chunk);
                    return Ok(init);
                }
            }
            ChunkKind::Block => {}
        }
        Ok(chunk)
    }

    async fn next_in_stream(&mut self) -> Result<Chunk, HubError> {
        if *self.closed.borrow() {
            return Err(HubError::Closed);
        }
        if let Some(chunk) = self.backlog.pop_front() {
            return Ok(chunk);
        }
        loop {
            // Both futures are cancel-safe, so `next` stays cancel-safe too.
            let received = tokio::select! {
                received = self.rx.recv() => received,
                _ = self.closed.wait_for(|closed| *closed) => return Err(HubError::Closed),
            };
            match received {
                Ok(chunk) => {
                    if self.skipping {
                        if !chunk.is_join_point() {
                            continue;
                        }
                        // An init segment alone is not enough to start: keep waiting for a
                        // keyframe Cluster, but the viewer needs the init first.
                        self.skipping = matches!(chunk.kind, ChunkKind::Init(_));
                    }
                    return Ok(chunk);
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
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
                Err(broadcast::error::RecvError::Closed) => return Err(HubError::Closed),
            }
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
    }
}
