//! The source slot: the one owner of "which source is live".
//!
//! Every source (the looped demo or `--input` file, stdin, a presenter over WebSocket or PUT)
//! claims the slot and gets a [`SourceGuard`]. Only the guard that holds the slot can deliver
//! events; a newer claim supersedes it, and the guard's [`SourceGuard::superseded`] future
//! says why. Dropping a guard ends its source. The rules:
//! - an input (demo, file, stdin) yields to any presenter, and cannot claim while one is live:
//!   the demo's pause and resume follow from that alone;
//! - a presenter claiming while another is live is refused ([`ClaimError::Busy`]) unless it
//!   asks to take over, which ends the other with a reason;
//! - after [`Slot::close`] (shutdown) every guard is ended and no claim succeeds.
//!
//! Delivery to the next stage (the pipeline, or the remuxer in passthrough mode) happens under
//! one async lock, and a claim takes the same lock, so the next stage always sees
//! `Start`, events, `End` of one source before the `Start` of the next: it never needs to ask
//! which source an event came from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::watch;

use crate::hub::Hub;
use crate::latency::WallTime;
use crate::media::Resolution;
use crate::pipeline::{Message, Pipeline};
use crate::webm::{Event, LiveMuxer};

/// What kind of source claims the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// The demo, `--input FILE` or stdin: yields to presenters.
    Input,
    /// A presenter's upload.
    Presenter,
}

/// Why a source lost the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EndReason {
    #[error("another presenter took over")]
    TakenOver,
    #[error("a presenter is live")]
    PresenterLive,
    #[error("another source took over")]
    Superseded,
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// Why a claim was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("a presenter is already live; add takeover=1 to the URL to replace them")]
    Busy,
    #[error("the server is shutting down")]
    Closed,
}

/// Whether a source is live, as `/api/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceState {
    /// No source has started yet.
    Idle,
    Live,
    /// The last source ended; viewers stay connected and wait for the next one.
    Ended,
}

/// The source as shown in `/api/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceStatus {
    pub state: SourceState,
    /// e.g. `demo:face.webm`, `stdin`, `presenter:ws`.
    pub name: Option<String>,
    /// Why the last source ended, if it did.
    pub ended_reason: Option<String>,
    pub presenter: bool,
}

/// Where delivered events go.
pub enum Target {
    /// `--passthrough`: the source's own WebM, remuxed onto the output timeline, to the hub.
    Remux {
        /// Boxed: the muxer's state is large beside the pipeline's handle.
        muxer: Box<Mutex<LiveMuxer>>,
        hub: Hub,
    },
    /// Decode, annotate, re-encode.
    Pipeline(Pipeline),
}

impl Target {
    /// Passthrough into `hub`.
    pub fn remux(hub: Hub) -> Self {
        Target::Remux {
            muxer: Box::new(Mutex::new(LiveMuxer::new())),
            hub,
        }
    }
}

/// Who is on the slot, for sources that wait for it.
#[derive(Debug, Clone, Copy, Default)]
struct Occupancy {
    presenter: bool,
    closed: bool,
}

struct Holder {
    id: u64,
    kind: SourceKind,
    /// Told why when the holder loses the slot.
    end: watch::Sender<Option<EndReason>>,
}

struct State {
    holder: Option<Holder>,
    closed: bool,
    status: SourceStatus,
}

struct Shared {
    target: Target,
    /// In passthrough mode, a decode-only pipeline that feeds the HLS mirror.
    mirror: Option<Pipeline>,
    /// Held while delivering to the next stage; see the module docs. A tokio mutex because
    /// delivery awaits the pipeline's bounded queue (backpressure on the source).
    delivery: tokio::sync::Mutex<()>,
    /// A std mutex: only held for a few assignments, never across an await.
    state: Mutex<State>,
    occupancy: watch::Sender<Occupancy>,
    next_id: AtomicU64,
    /// The largest picture a source may send when we decode (`--max-resolution`).
    max_resolution: Resolution,
}

/// The cheap, cloneable handle to the slot.
#[derive(Clone)]
pub struct Slot {
    shared: Arc<Shared>,
}

impl Slot {
    /// A slot delivering to `target`, and to `mirror` too if given (passthrough with HLS).
    pub fn new(target: Target, mirror: Option<Pipeline>, max_resolution: Resolution) -> Self {
        Slot {
            shared: Arc::new(Shared {
                target,
                mirror,
                delivery: tokio::sync::Mutex::new(()),
                state: Mutex::new(State {
                    holder: None,
                    closed: false,
                    status: SourceStatus {
                        state: SourceState::Idle,
                        name: None,
                        ended_reason: None,
                        presenter: false,
                    },
                }),
                occupancy: watch::channel(Occupancy::default()).0,
                next_id: AtomicU64::new(1),
                max_resolution,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only plain fields behind; keep serving.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// True when sources go through the annotation pipeline.
    pub fn annotates(&self) -> bool {
        matches!(self.shared.target, Target::Pipeline(_))
    }

    /// True when sources' video is decoded (annotating, or feeding the HLS mirror).
    pub fn decodes(&self) -> bool {
        self.pipeline().is_some()
    }

    /// The largest picture a source may send when we decode it.
    pub fn max_resolution(&self) -> Resolution {
        self.shared.max_resolution
    }

    /// The pipeline: the annotating one, or in passthrough mode the mirror's, if any.
    pub fn pipeline(&self) -> Option<&Pipeline> {
        match &self.shared.target {
            Target::Pipeline(pipeline) => Some(pipeline),
            Target::Remux { .. } => self.shared.mirror.as_ref(),
        }
    }

    /// The source as `/api/status` shows it.
    pub fn status(&self) -> SourceStatus {
        self.state().status.clone()
    }

    /// Whether a claim of `kind` would succeed now (to refuse before a WebSocket upgrade).
    pub fn check(&self, kind: SourceKind, takeover: bool) -> Result<(), ClaimError> {
        let state = self.state();
        Self::admit(&state, kind, takeover).map(|_| ())
    }

    /// The reason the current holder loses the slot to a claim of `kind`, or why the claim
    /// is refused.
    fn admit(
        state: &State,
        kind: SourceKind,
        takeover: bool,
    ) -> Result<Option<EndReason>, ClaimError> {
        if state.closed {
            return Err(ClaimError::Closed);
        }
        let Some(holder) = &state.holder else {
            return Ok(None);
        };
        match (holder.kind, kind) {
            (SourceKind::Presenter, SourceKind::Input) => Err(ClaimError::Busy),
            (SourceKind::Presenter, SourceKind::Presenter) if !takeover => Err(ClaimError::Busy),
            (SourceKind::Presenter, SourceKind::Presenter) => Ok(Some(EndReason::TakenOver)),
            (SourceKind::Input, SourceKind::Presenter) => Ok(Some(EndReason::PresenterLive)),
            (SourceKind::Input, SourceKind::Input) => Ok(Some(EndReason::Superseded)),
        }
    }

    /// Claims the slot for a source called `name`. See the module docs for the rules.
    pub async fn claim(
        &self,
        name: &str,
        kind: SourceKind,
        takeover: bool,
    ) -> Result<SourceGuard, ClaimError> {
        let _delivery = self.shared.delivery.lock().await;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (end, ended) = watch::channel(None);
        let superseded = {
            let mut state = self.state();
            let reason = Self::admit(&state, kind, takeover)?;
            if let (Some(old), Some(reason)) = (state.holder.take(), reason) {
                old.end.send_replace(Some(reason));
            }
            state.holder = Some(Holder { id, kind, end });
            state.status = SourceStatus {
                state: SourceState::Live,
                name: Some(name.to_string()),
                ended_reason: None,
                presenter: kind == SourceKind::Presenter,
            };
            reason
        };
        self.shared.occupancy.send_modify(|o| {
            o.presenter = kind == SourceKind::Presenter;
        });
        if let Some(reason) = superseded {
            tracing::info!(source = name, %reason, "source takes over the slot");
            self.send_end(&reason.to_string()).await;
        }
        tracing::info!(
            source = name,
            presenter = kind == SourceKind::Presenter,
            "source started"
        );
        self.send(Message::Start {
            name: name.to_string(),
            presenter: kind == SourceKind::Presenter,
        })
        .await;
        Ok(SourceGuard {
            slot: self.clone(),
            id,
            name: name.to_string(),
            kind,
            ended,
            done: false,
        })
    }

    /// Waits until no presenter holds the slot; `Err` once the slot is closed.
    pub async fn wait_for_no_presenter(&self) -> Result<(), ClaimError> {
        let mut occupancy = self.shared.occupancy.subscribe();
        let result = occupancy
            .wait_for(|o| o.closed || !o.presenter)
            .await
            .map(|o| o.closed);
        match result {
            Ok(false) => Ok(()),
            _ => Err(ClaimError::Closed),
        }
    }

    /// Returns once the slot is closed (shutdown).
    pub async fn closed(&self) {
        let mut occupancy = self.shared.occupancy.subscribe();
        let _ = occupancy.wait_for(|o| o.closed).await;
    }

    /// Shutdown: ends the holder and refuses every later claim.
    pub fn close(&self) {
        let holder = {
            let mut state = self.state();
            state.closed = true;
            state.holder.take()
        };
        if let Some(holder) = holder {
            holder.end.send_replace(Some(EndReason::ShuttingDown));
        }
        self.shared.occupancy.send_modify(|o| o.closed = true);
    }

    /// Sends one message to the next stage: the pipeline, or the passthrough remuxer (for
    /// which a source's start and end both close what the last source left open); and to the
    /// HLS mirror's pipeline, if there is one.
    async fn send(&self, message: Message) {
        if let Some(mirror) = &self.shared.mirror {
            // Blocks are `Bytes`: the clone shares them.
            mirror.send(message.clone()).await;
        }
        match &self.shared.target {
            Target::Pipeline(pipeline) => pipeline.send(message).await,
            Target::Remux { muxer, hub } => {
                let mut out = Vec::new();
                let newest = {
                    let mut muxer = muxer.lock().unwrap_or_else(|p| p.into_inner());
                    match message {
                        Message::Event { event, .. } => muxer.push(event, &mut out),
                        Message::Start { .. } | Message::End { .. } => muxer.end_source(&mut out),
                        // Passthrough stamps nothing: the readout needs the pipeline's clock.
                        Message::CaptureOrigin(_) => {}
                    }
                    muxer.latest()
                };
                hub.publish_media(out, newest, None);
            }
        }
    }

    async fn send_end(&self, reason: &str) {
        self.send(Message::End {
            reason: reason.to_string(),
        })
        .await;
    }
}

/// A source's hold on the slot. Dropping it ends the source (as "source went away").
pub struct SourceGuard {
    slot: Slot,
    id: u64,
    name: String,
    kind: SourceKind,
    ended: watch::Receiver<Option<EndReason>>,
    done: bool,
}

impl SourceGuard {
    /// The slot this guard holds (or held).
    pub fn slot(&self) -> &Slot {
        &self.slot
    }

    /// The source's name (`presenter:ws`, `stdin`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Why this source lost the slot, if it has.
    pub fn lost(&self) -> Option<EndReason> {
        *self.ended.borrow()
    }

    /// Completes when another source takes the slot (or the server shuts down), with why.
    pub async fn superseded(&mut self) -> EndReason {
        match self.ended.wait_for(|reason| reason.is_some()).await {
            Ok(reason) => reason.unwrap_or(EndReason::Superseded),
            // The sender lives in the slot's state until replaced, and is told first.
            Err(_) => EndReason::Superseded,
        }
    }

    /// Delivers one event to the next stage, unless this source has lost the slot.
    pub async fn deliver(&self, event: Event) -> Result<(), EndReason> {
        let _delivery = self.slot.shared.delivery.lock().await;
        if let Some(reason) = self.lost() {
            return Err(reason);
        }
        self.slot
            .send(Message::Event {
                event,
                arrived: Instant::now(),
            })
            .await;
        Ok(())
    }

    /// The presenter's word on when its media time 0 was captured (server clock), for the
    /// viewers' latency readout; ignored once this source has lost the slot.
    pub async fn capture_origin(&self, origin: WallTime) {
        let _delivery = self.slot.shared.delivery.lock().await;
        if self.lost().is_none() {
            self.slot.send(Message::CaptureOrigin(origin)).await;
        }
    }

    /// Ends the source with `reason` (shown in `/api/status` and the log).
    pub async fn end(mut self, reason: &str) {
        self.done = true;
        end(&self.slot, self.id, self.kind, &self.name, reason).await;
    }
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Drop cannot await: finish on the runtime. hyper drops a request's handler when its
        // connection fails mid-body, and the slot must still be freed then.
        let (slot, id, kind, name) = (self.slot.clone(), self.id, self.kind, self.name.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { end(&slot, id, kind, &name, "source went away").await });
        }
    }
}

async fn end(slot: &Slot, id: u64, kind: SourceKind, name: &str, reason: &str) {
    let _delivery = slot.shared.delivery.lock().await;
    {
        let mut state = slot.state();
        if state.holder.as_ref().map(|h| h.id) != Some(id) {
            // Already superseded: whoever took over has ended us in the next stage.
            return;
        }
        state.holder = None;
        state.status.state = SourceState::Ended;
        state.status.ended_reason = Some(reason.to_string());
        state.status.presenter = false;
    }
    if kind == SourceKind::Presenter {
        slot.shared.occupancy.send_modify(|o| o.presenter = false);
    }
    tracing::info!(source = name, reason, "source ended");
    slot.send_end(reason).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn slot() -> Slot {
        Slot::new(Target::remux(Hub::default()), None, Resolution::DEFAULT)
    }

    #[tokio::test]
    async fn a_presenter_supersedes_the_input_and_the_input_waits_for_it() {
        let slot = slot();
        let mut demo = slot.claim("demo", SourceKind::Input, false).await.unwrap();
        assert!(slot.wait_for_no_presenter().now_or_never().is_some());
        let presenter = slot
            .claim("presenter", SourceKind::Presenter, false)
            .await
            .unwrap();
        assert_eq!(demo.superseded().await, EndReason::PresenterLive);
        assert_eq!(
            demo.deliver(Event::ClusterEnd).await,
            Err(EndReason::PresenterLive)
        );
        assert!(matches!(
            slot.claim("demo", SourceKind::Input, false).await,
            Err(ClaimError::Busy)
        ));
        let mut waiting = Box::pin(slot.wait_for_no_presenter());
        assert!(
            (&mut waiting).now_or_never().is_none(),
            "a presenter is live"
        );
        presenter.end("presenter stopped").await;
        assert_eq!(waiting.await, Ok(()));
        let status = slot.status();
        assert_eq!(status.state, SourceState::Ended);
        assert_eq!(status.ended_reason.as_deref(), Some("presenter stopped"));
        // The superseded input ending late changes nothing.
        demo.end("late").await;
        assert_eq!(
            slot.status().ended_reason.as_deref(),
            Some("presenter stopped")
        );
    }

    #[tokio::test]
    async fn one_presenter_at_a_time_unless_taking_over() {
        let slot = slot();
        let mut first = slot.claim("a", SourceKind::Presenter, false).await.unwrap();
        assert_eq!(
            slot.check(SourceKind::Presenter, false),
            Err(ClaimError::Busy)
        );
        assert!(slot.check(SourceKind::Presenter, true).is_ok());
        let second = slot.claim("b", SourceKind::Presenter, true).await.unwrap();
        assert_eq!(first.superseded().await, EndReason::TakenOver);
        assert_eq!(slot.status().name.as_deref(), Some("b"));
        drop(first);
        // Dropping the guard that still holds the slot ends its source.
        drop(second);
        for _ in 0..100 {
            if slot.status().state == SourceState::Ended {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(slot.status().state, SourceState::Ended);
        assert!(slot.check(SourceKind::Presenter, false).is_ok());
    }

    #[tokio::test]
    async fn closing_ends_the_holder_and_refuses_new_claims() {
        let slot = slot();
        let mut holder = slot.claim("a", SourceKind::Presenter, false).await.unwrap();
        slot.close();
        assert_eq!(holder.superseded().await, EndReason::ShuttingDown);
        assert!(matches!(
            slot.claim("b", SourceKind::Presenter, true).await,
            Err(ClaimError::Closed)
        ));
        assert_eq!(slot.wait_for_no_presenter().await, Err(ClaimError::Closed));
    }
}
