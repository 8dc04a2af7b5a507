//! Media time: one type for every timestamp, one set of sanity rules for what a source may
//! send, and one output timeline that stays continuous and forward-only across sources.
//!
//! - [`MediaTime`] is a signed nanosecond count. The WebM reader makes it from ticks and the
//!   TimestampScale with checked arithmetic, so every later stage works in one unit and never
//!   multiplies raw integers again.
//! - [`SourceClock`] belongs to one source. It ends that source (with a reason) when its
//!   blocks jump far back or far ahead, so nothing a hostile or broken source sends can reach
//!   the output timeline of the sources after it.
//! - [`Timeline`] belongs to whatever writes the output (the pipeline, or the passthrough
//!   remuxer; the pacer keeps one for wall-clock time). Each new source is placed exactly
//!   where the output's tracks end, so viewers' players see neither a gap nor an overlap.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// Frame spacing assumed until a track shows its own (one frame at 30 fps).
pub const DEFAULT_FRAME_GAP: MediaTime = MediaTime(33_333_333);

/// A step back larger than this within one source ends it. Audio is interleaved a little
/// ahead of video and B-frames reorder by a few frames, so small steps back are normal.
pub const MAX_STEP_BACK: MediaTime = MediaTime(1_000_000_000);

/// A jump forward larger than this within one source ends it: players stall at such a gap,
/// and a real camera or file never makes one.
pub const MAX_JUMP_AHEAD: MediaTime = MediaTime(10_000_000_000);

/// Gaps between consecutive frames of a track longer than this are not taken as its frame
/// spacing (a pause, not a frame rate).
const MAX_FRAME_GAP: MediaTime = MediaTime(1_000_000_000);

/// A point on (or span of) a media timeline, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MediaTime(i64);

impl MediaTime {
    /// Zero.
    pub const ZERO: MediaTime = MediaTime(0);

    /// `nanos` nanoseconds.
    pub const fn from_nanos(nanos: i64) -> Self {
        MediaTime(nanos)
    }

    /// `millis` milliseconds (saturating at the ends of the range).
    pub const fn from_millis(millis: i64) -> Self {
        MediaTime(millis.saturating_mul(1_000_000))
    }

    /// `ticks` in units of `scale`, or `None` if that does not fit in 292 years either way.
    pub fn from_ticks(ticks: i64, scale: TimestampScale) -> Option<Self> {
        ticks.checked_mul(scale.0 as i64).map(MediaTime)
    }

    /// A non-negative std `Duration` as media time (saturating).
    pub fn from_duration(duration: Duration) -> Self {
        MediaTime(i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX))
    }

    /// Nanoseconds.
    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    /// Whole milliseconds, rounded down.
    pub const fn as_millis(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    /// Whole ticks of `scale`, rounded down.
    pub fn as_ticks(self, scale: TimestampScale) -> i64 {
        self.0.div_euclid(scale.0 as i64)
    }

    /// Seconds, for logs and status.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }

    /// As a std `Duration`; negative times become zero.
    pub fn to_duration(self) -> Duration {
        Duration::from_nanos(self.0.max(0) as u64)
    }
}

impl Add for MediaTime {
    type Output = MediaTime;
    /// Saturating: the range is ±292 years, far past anything a checked source can reach.
    fn add(self, other: MediaTime) -> MediaTime {
        MediaTime(self.0.saturating_add(other.0))
    }
}

impl Sub for MediaTime {
    type Output = MediaTime;
    fn sub(self, other: MediaTime) -> MediaTime {
        MediaTime(self.0.saturating_sub(other.0))
    }
}

impl fmt::Display for MediaTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3} s", self.as_secs_f64())
    }
}

/// Nanoseconds per timestamp tick (Matroska's TimestampScale), within the sane range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimestampScale(u64);

impl TimestampScale {
    /// The WebM default and what every encoder writes: 1 ms.
    pub const MILLISECOND: TimestampScale = TimestampScale(1_000_000);
    /// The finest scale we accept (1 µs): finer ones only serve to overflow timestamps.
    pub const MIN: u64 = 1_000;
    /// The coarsest scale we accept (1 s): coarser ones cannot time video frames at all.
    pub const MAX: u64 = 1_000_000_000;

    /// A scale of `nanos` ns per tick, if it lies within 1 µs..=1 s.
    pub fn new(nanos: u64) -> Result<Self, ClockError> {
        if (Self::MIN..=Self::MAX).contains(&nanos) {
            Ok(TimestampScale(nanos))
        } else {
            Err(ClockError::Scale(nanos))
        }
    }

    /// Nanoseconds per tick.
    pub fn nanos(self) -> u64 {
        self.0
    }
}

impl Default for TimestampScale {
    fn default() -> Self {
        Self::MILLISECOND
    }
}

/// Why a source's timestamps were refused. Each ends only that source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    #[error("TimestampScale {0} ns is outside 1 µs..1 s")]
    Scale(u64),
    #[error("a timestamp does not fit the media clock (more than 292 years from zero)")]
    OutOfRange,
    #[error("timestamps jumped back {back} (more than {max} allowed)", max = MAX_STEP_BACK)]
    StepBack { back: MediaTime },
    #[error("timestamps jumped ahead {ahead} (more than {max} allowed)", max = MAX_JUMP_AHEAD)]
    JumpAhead { ahead: MediaTime },
}

/// The sanity rules for one source's block times. See the module docs.
#[derive(Debug, Default)]
pub struct SourceClock {
    /// The latest block time of the current stream, once it has one.
    latest: Option<MediaTime>,
}

impl SourceClock {
    /// A clock that accepts any first timestamp.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new stream starts within the same source (a looped file, concatenated streams):
    /// its timestamps may start anywhere again.
    pub fn restart(&mut self) {
        self.latest = None;
    }

    /// The latest block time of the current stream, once it has one.
    pub fn latest(&self) -> Option<MediaTime> {
        self.latest
    }

    /// Checks one block time against the ones before it.
    pub fn check(&mut self, time: MediaTime) -> Result<(), ClockError> {
        if let Some(latest) = self.latest {
            if time < latest && latest - time > MAX_STEP_BACK {
                return Err(ClockError::StepBack {
                    back: latest - time,
                });
            }
            if time > latest && time - latest > MAX_JUMP_AHEAD {
                return Err(ClockError::JumpAhead {
                    ahead: time - latest,
                });
            }
        }
        self.latest = Some(self.latest.map_or(time, |latest| latest.max(time)));
        Ok(())
    }
}

/// Where one output track ends: its latest time and the spacing of its frames.
#[derive(Debug, Clone, Copy)]
struct TrackEnd {
    track: u64,
    latest: MediaTime,
    spacing: MediaTime,
}

/// The output timeline: source times in, output times out. See the module docs.
#[derive(Debug, Default)]
pub struct Timeline {
    tracks: Vec<TrackEnd>,
    /// Added to source times of the current stream; `None` until its first block.
    offset: Option<MediaTime>,
}

/// Output tracks tracked at most; more would only be a hostile source's doing, and the
/// timeline needs only where the output ends.
const MAX_TRACKS: usize = 8;

impl Timeline {
    /// An empty timeline: the first block is placed at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new source or stream begins: its first block goes where the output ends.
    pub fn restart(&mut self) {
        self.offset = None;
    }

    /// Where the next source's first block goes: after every track's last frame.
    pub fn end(&self) -> MediaTime {
        self.tracks
            .iter()
            .map(|t| t.latest + t.spacing)
            .max()
            .unwrap_or(MediaTime::ZERO)
    }

    /// The latest time placed on the timeline, if any.
    pub fn latest(&self) -> Option<MediaTime> {
        self.tracks.iter().map(|t| t.latest).max()
    }

    /// The output time of source time `time`, without recording it as a frame. The first
    /// time of a stream anchors it at the output's end, rounded up to a multiple of
    /// `quantum` (the output's tick) so that times in whole ticks stay whole ticks.
    pub fn map(&mut self, time: MediaTime, quantum: MediaTime) -> MediaTime {
        let offset = match self.offset {
            Some(offset) => offset,
            None => {
                let q = quantum.as_nanos().max(1);
                let end = self.end().as_nanos();
                let start = MediaTime::from_nanos(end.div_euclid(q) * q)
                    + MediaTime::from_nanos(if end.rem_euclid(q) == 0 { 0 } else { q });
                let offset = start - time;
                self.offset = Some(offset);
                offset
            }
        };
        time + offset
    }

    /// Places a frame of `track` at source time `time` and returns its output time.
    pub fn place(&mut self, track: u64, time: MediaTime) -> MediaTime {
        let out = self.map(time, MediaTime::from_nanos(1));
        match self.tracks.iter_mut().find(|t| t.track == track) {
            Some(end) => {
                let delta = out - end.latest;
                if delta > MediaTime::ZERO && delta < MAX_FRAME_GAP {
                    end.spacing = delta;
                }
                end.latest = end.latest.max(out);
            }
            None => {
                if self.tracks.len() == MAX_TRACKS {
                    // Fold the oldest-ending track into what remains, keeping the end.
                    let end = self.end();
                    self.tracks.clear();
                    self.tracks.push(TrackEnd {
                        track: u64::MAX,
                        latest: end,
                        spacing: MediaTime::ZERO,
                    });
                }
                self.tracks.push(TrackEnd {
                    track,
                    latest: out,
                    spacing: DEFAULT_FRAME_GAP,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: i64) -> MediaTime {
        MediaTime::from_millis(v)
    }

    #[test]
    fn ticks_convert_with_checked_arithmetic() {
        let scale = TimestampScale::new(1_000_000).unwrap();
        assert_eq!(MediaTime::from_ticks(40, scale), Some(ms(40)));
        assert_eq!(MediaTime::from_ticks(-(1 << 62), scale), None);
        assert_eq!(ms(1234).as_ticks(scale), 1234);
        assert!(TimestampScale::new(1).is_err());
        assert!(TimestampScale::new(10_000_000_000).is_err());
        assert!(TimestampScale::new(1_000).is_ok());
    }

    #[test]
    fn a_source_clock_refuses_jumps_but_not_interleaving() {
        let mut clock = SourceClock::new();
        clock.check(ms(1_000)).unwrap();
        clock.check(ms(1_033)).unwrap();
        clock.check(ms(1_020)).unwrap(); // audio slightly behind video
        assert!(matches!(
            clock.check(ms(-5_000)),
            Err(ClockError::StepBack { .. })
        ));
        assert!(matches!(
            clock.check(ms(1_033 + 36_000_000)),
            Err(ClockError::JumpAhead { .. })
        ));
        clock.restart();
        clock.check(ms(0)).unwrap();
    }

    #[test]
    fn sources_follow_each_other_without_gap_or_overlap() {
        let mut timeline = Timeline::new();
        for i in 0..10 {
            timeline.place(1, ms(5_000 + i * 40));
        }
        assert_eq!(timeline.latest(), Some(ms(360)));
        assert_eq!(timeline.end(), ms(400));
        timeline.restart();
        // The next source starts anywhere; it continues one frame after the last.
        assert_eq!(timeline.place(1, ms(-77)), ms(400));
        assert_eq!(timeline.place(1, ms(-44)), ms(433));
    }
}
