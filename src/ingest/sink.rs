//! Where sources deliver their events: straight to the hub (`--passthrough`) or into the
//! annotation pipeline. One source is active at a time; the newest `begin` wins, and events
//! from a source that was superseded are refused, so two sources never interleave.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::broadcast::Hub;
use crate::pipeline::{Message, Pipeline};
use crate::webm::Event;

/// Where events go.
#[derive(Clone)]
pub enum Target {
    /// Passthrough: the source's own WebM goes to viewers.
    Hub(Hub),
    /// Decode, annotate, re-encode.
    Pipeline(Pipeline),
}

struct Inner {
    target: Target,
    /// In passthrough mode, a decode-only pipeline that feeds the HLS mirror.
    mirror: Option<Pipeline>,
    active: Mutex<Option<u64>>,
    next_id: AtomicU64,
    presenter_live: watch::Sender<bool>,
}

/// The cheap, cloneable handle every source holds.
#[derive(Clone)]
pub struct Sink {
    inner: Arc<Inner>,
}

/// The source was superseded by a newer one and must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superseded;

impl Sink {
    /// A sink delivering to `target`.
    pub fn new(target: Target) -> Self {
        Self::with_mirror(target, None)
    }

    /// A sink delivering to `target` and also to `mirror` (a mirror-only pipeline, used with
    /// `Target::Hub` so passthrough sources still get an HLS mirror).
    pub fn with_mirror(target: Target, mirror: Option<Pipeline>) -> Self {
        Sink {
            inner: Arc::new(Inner {
                target,
                mirror,
                active: Mutex::new(None),
                next_id: AtomicU64::new(1),
                presenter_live: watch::channel(false).0,
            }),
        }
    }

    /// True when events go through the annotation pipeline.
    pub fn annotates(&self) -> bool {
        matches!(self.inner.target, Target::Pipeline(_))
    }

    /// The pipeline: the annotating one, or in passthrough mode the mirror's, if any.
    pub fn pipeline(&self) -> Option<&Pipeline> {
        match &self.inner.target {
            Target::Pipeline(pipeline) => Some(pipeline),
            Target::Hub(_) => self.inner.mirror.as_ref(),
        }
    }

    /// Makes a new source the active one and returns its id.
    pub async fn begin(&self, name: &str, presenter: bool) -> u64 {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        *self.inner.active.lock().expect("active lock") = Some(id);
        if presenter {
            self.inner.presenter_live.send_replace(true);
        }
        if let Some(mirror) = &self.inner.mirror {
            mirror
                .send(Message::Start {
                    source: id,
                    name: name.to_string(),
                    presenter,
                })
                .await;
        }
        match &self.inner.target {
            Target::Hub(hub) => hub.source_started(name),
            Target::Pipeline(pipeline) => {
                pipeline
                    .send(Message::Start {
                        source: id,
                        name: name.to_string(),
                        presenter,
                    })
                    .await
            }
        }
        id
    }

    fn is_active(&self, id: u64) -> bool {
        *self.inner.active.lock().expect("active lock") == Some(id)
    }

    /// Delivers one event from source `id`.
    pub async fn event(&self, id: u64, event: Event) -> Result<(), Superseded> {
        if !self.is_active(id) {
            return Err(Superseded);
        }
        if let Some(mirror) = &self.inner.mirror {
            // Blocks are `Bytes`: the clone shares them.
            mirror
                .send(Message::Event {
                    source: id,
                    event: event.clone(),
                    arrived: Instant::now(),
                })
                .await;
        }
        match &self.inner.target {
            Target::Hub(hub) => hub.push(event),
            Target::Pipeline(pipeline) => {
                pipeline
                    .send(Message::Event {
                        source: id,
                        event,
                        arrived: Instant::now(),
                    })
                    .await
            }
        }
        Ok(())
    }

    /// Counts bytes received from a source (for status).
    pub fn count_input(&self, bytes: usize) {
        if let Target::Hub(hub) = &self.inner.target {
            hub.count_input(bytes);
        }
    }

    /// Source `id` stopped. A presenter's end lets the demo resume, unless another presenter
    /// has already taken over (then `id` is no longer the active source).
    pub async fn end(&self, id: u64, reason: &str, presenter: bool) {
        let was_active = {
            let mut active = self.inner.active.lock().expect("active lock");
            let was = *active == Some(id);
            if was {
                *active = None;
            }
            was
        };
        if !was_active {
            return;
        }
        if presenter {
            self.inner.presenter_live.send_replace(false);
        }
        if let Some(mirror) = &self.inner.mirror {
            mirror
                .send(Message::End {
                    source: id,
                    reason: reason.to_string(),
                })
                .await;
        }
        match &self.inner.target {
            Target::Hub(hub) => hub.source_ended(reason),
            Target::Pipeline(pipeline) => {
                pipeline
                    .send(Message::End {
                        source: id,
                        reason: reason.to_string(),
                    })
                    .await
            }
        }
    }

    /// Watches whether a presenter is live (the demo pauses while one is).
    pub fn presenter_live(&self) -> watch::Receiver<bool> {
        self.inner.presenter_live.subscribe()
    }
}

/// Waits until `watch` holds `value`. The guard `wait_for` returns is dropped at once, so
/// the future stays `Send` when used inside `select!`.
pub async fn wait_until(watch: &mut watch::Receiver<bool>, value: bool) {
    let _ = watch.wait_for(|v| *v == value).await;
}
