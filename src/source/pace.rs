//! Real-time pacing for file sources: each block is released when its time comes due.

use tokio::time::Instant;

use crate::clock::{MediaTime, Timeline};
use crate::webm::Event;

/// Maps media time to wall-clock time, continuously across loops of the same file: the
/// loops are laid end to end on a [`Timeline`], the same rule the output follows.
#[derive(Debug, Default)]
pub struct Pacer {
    timeline: Timeline,
    /// The wall-clock instant of output time zero.
    start: Option<Instant>,
    blocks: u64,
}

impl Pacer {
    /// A pacer whose clock starts at the first block it sees.
    pub fn new() -> Self {
        Self::default()
    }

    /// Blocks paced so far (all loops).
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The file starts over: its timestamps restart, the wall clock does not.
    pub fn next_loop(&mut self) {
        self.timeline.restart();
    }

    /// Sleeps until `event` is due. Only blocks wait.
    pub async fn wait_for(&mut self, event: &Event) {
        if let Event::Block(block) = event {
            let at = self.timeline.place(block.track, block.time);
            let start = *self.start.get_or_insert_with(Instant::now);
            // Blocks slightly out of order (audio vs. video) are released at once.
            let due = start + at.max(MediaTime::ZERO).to_duration();
            self.blocks += 1;
            tokio::time::sleep_until(due).await;
        }
    }
}
