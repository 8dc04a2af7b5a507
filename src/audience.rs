//! Who is watching: viewers connected to the hub and recent HLS requests. A looped input
//! (the demo, `--input FILE`) runs only while someone is, so an idle server burns no CPU
//! decoding, detecting and encoding for nobody.
//!
//! One cheap handle; the hub counts viewers in and out, the HLS route notes requests, and the
//! input loop waits on it. A notification goes out only when the answer to "is anyone
//! watching?" can change from no to yes (a viewer joins, an HLS request after a quiet spell)
//! or when the last viewer leaves, never per HLS request of a busy mirror.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How long after the last viewer leaves (or the last HLS request) the input keeps running.
/// HLS players fetch the playlist about once a segment, so a few seconds covers them.
pub const IDLE_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
struct State {
    viewers: u64,
    /// When the audience was last seen: the last viewer leaving, an HLS request, or the start.
    last_seen: Instant,
}

impl State {
    fn watched(&self, now: Instant) -> bool {
        self.viewers > 0 || now < self.last_seen + IDLE_AFTER
    }
}

/// The shared handle; see the module docs.
#[derive(Debug, Clone)]
pub struct Audience {
    state: Arc<watch::Sender<State>>,
}

impl Default for Audience {
    fn default() -> Self {
        Self::new()
    }
}

impl Audience {
    /// An audience just seen: an input starts at once and pauses if nobody comes.
    pub fn new() -> Self {
        let (state, _) = watch::channel(State {
            viewers: 0,
            last_seen: Instant::now(),
        });
        Audience {
            state: Arc::new(state),
        }
    }

    /// A viewer connected.
    pub fn joined(&self) {
        self.state.send_modify(|state| state.viewers += 1);
    }

    /// A viewer left.
    pub fn left(&self) {
        self.state.send_modify(|state| {
            state.viewers = state.viewers.saturating_sub(1);
            if state.viewers == 0 {
                state.last_seen = Instant::now();
            }
        });
    }

    /// An HLS client asked for the playlist or a segment.
    pub fn hls_request(&self) {
        let now = Instant::now();
        self.state.send_if_modified(|state| {
            let was_watched = state.watched(now);
            state.last_seen = now;
            // Only a change from nobody to somebody needs to wake the input.
            !was_watched
        });
    }

    /// True if someone is watching now.
    pub fn watched(&self) -> bool {
        self.state.borrow().watched(Instant::now())
    }

    /// Returns once someone is watching.
    pub async fn until_watched(&self) {
        let mut state = self.state.subscribe();
        // The sender lives as long as `self`, so this never fails.
        let _ = state.wait_for(|state| state.watched(Instant::now())).await;
    }

    /// Returns once nobody has watched for [`IDLE_AFTER`].
    pub async fn until_unwatched(&self) {
        let mut state = self.state.subscribe();
        loop {
            let now = *state.borrow_and_update();
            if now.viewers > 0 {
                let _ = state.changed().await;
                continue;
            }
            let deadline = now.last_seen + IDLE_AFTER;
            if Instant::now() >= deadline {
                return;
            }
            // An HLS request moves `last_seen` without notifying: the deadline is simply
            // looked at again when it passes.
            tokio::select! {
                _ = state.changed() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test(start_paused = true)]
    async fn an_audience_comes_and_goes() {
        let audience = Audience::new();
        assert!(audience.watched(), "just started");
        tokio::time::advance(IDLE_AFTER).await;
        assert!(!audience.watched());
        assert!(audience.until_unwatched().now_or_never().is_some());

        let waiting = tokio::spawn({
            let audience = audience.clone();
            async move { audience.until_watched().await }
        });
        tokio::task::yield_now().await;
        audience.joined();
        waiting.await.unwrap();
        assert!(audience.until_unwatched().now_or_never().is_none());

        // The last viewer leaves: still watched for IDLE_AFTER, and an HLS request in
        // between extends that.
        audience.left();
        tokio::time::advance(IDLE_AFTER / 2).await;
        audience.hls_request();
        tokio::time::advance(IDLE_AFTER / 2 + Duration::from_millis(100)).await;
        assert!(audience.watched());
        let started = Instant::now();
        audience.until_unwatched().await;
        assert!(started.elapsed() >= IDLE_AFTER / 2 - Duration::from_millis(200));
        assert!(!audience.watched());
    }
}
