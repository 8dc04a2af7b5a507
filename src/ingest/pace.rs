//! Real-time pacing for file sources: each block is released when its timestamp comes due.

use std::time::Duration;

use tokio::time::Instant;

use crate::webm::Event;

/// Gap placed between the last block of one loop and the first of the next.
const LOOP_GAP: Duration = Duration::from_millis(33);

/// Maps media time to wall-clock time, continuously across loops of the same file.
#[derive(Debug)]
pub struct Pacer {
    scale_ns: u64,
    /// Wall-clock instant and media time (ns) of the first block of the current loop.
    origin: Option<(Instant, i128)>,
    /// When the latest block was due.
    last_due: Option<Instant>,
    blocks: u64,
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new()
    }
}

impl Pacer {
    /// A pacer whose clock starts at the first block it sees.
    pub fn new() -> Self {
        Pacer {
            scale_ns: 1_000_000,
            origin: None,
            last_due: None,
            blocks: 0,
        }
    }

    /// Blocks paced so far (all loops).
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The file starts over: its timestamps restart, the wall clock does not.
    pub fn next_loop(&mut self) {
        self.origin = None;
    }

    /// Sleeps until `event` is due. Only blocks wait; Info updates the timestamp scale.
    pub async fn wait_for(&mut self, event: &Event) {
        match event {
            Event::Info(info) => self.scale_ns = info.timestamp_scale,
            Event::Block(block) => {
                let media_ns = block.timecode as i128 * self.scale_ns as i128;
                let (start, base) = *self.origin.get_or_insert_with(|| {
                    let start = self
                        .last_due
                        .map_or_else(Instant::now, |due| due + LOOP_GAP);
                    (start, media_ns)
                });
                // Blocks slightly out of order (audio vs. video) are released at once.
                let ahead = u64::try_from(media_ns - base).unwrap_or(0);
                let due = start + Duration::from_nanos(ahead);
                self.last_due = Some(self.last_due.map_or(due, |last| last.max(due)));
                self.blocks += 1;
                tokio::time::sleep_until(due).await;
            }
            _ => {}
        }
    }
}
