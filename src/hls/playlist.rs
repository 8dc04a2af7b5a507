//! The live media playlist as a plain value: a sliding window of segments and a `render` that
//! turns it into m3u8 text. No files, no clock: the caller supplies every time, so the tests
//! compare whole golden strings.
//!
//! With a part target set, the playlist is Low-Latency HLS (RFC 8216bis): it also lists the
//! partial segments ("parts") of its newest segments and of the segment still being written,
//! announces the next part with EXT-X-PRELOAD-HINT, and says the server blocks reloads
//! (EXT-X-SERVER-CONTROL). Players that do not know these tags skip them (RFC 8216 §4: unknown
//! tags are ignored) and play the whole segments, so one playlist serves both kinds.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A partial segment (RFC 8216bis §4.4.4.9) as the playlist names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Its playing time (first picture to the next part's first picture).
    pub duration: Duration,
    /// Where players fetch it, relative to the playlist.
    pub uri: String,
    /// Starts with a keyframe, so a player can begin playing here (INDEPENDENT=YES).
    pub independent: bool,
}

/// The segment being written: the parts published so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSegment {
    /// The wall-clock time of its first picture.
    pub program_date_time: SystemTime,
    /// Oldest first; the first one is independent.
    pub parts: Vec<Part>,
}

/// One media segment as the playlist names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Its media sequence number (one more than the segment before it).
    pub sequence: u64,
    /// Its playing time (first picture to the next segment's first picture).
    pub duration: Duration,
    /// Where players fetch it, relative to the playlist.
    pub uri: String,
    /// The wall-clock time of its first picture.
    pub program_date_time: SystemTime,
    /// Its parts, oldest first; empty without low latency.
    pub parts: Vec<Part>,
}

/// A live media playlist: the newest `window` segments, never ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Playlist {
    /// Whole seconds, never below any listed segment's rounded duration, and never lowered
    /// (RFC 8216 §6.2.1: a server must not change it; raising it for an overlong segment is
    /// the least wrong thing left).
    pub target_duration: u64,
    /// The sequence number of the first listed segment.
    pub media_sequence: u64,
    /// Oldest first.
    pub segments: VecDeque<Segment>,
    /// How many segments are listed at most.
    pub window: usize,
    /// EXT-X-PART-INF's PART-TARGET, the longest a part may be; `None` is plain HLS.
    pub part_target: Option<Duration>,
    /// The segment being written, once its first part is published.
    pub open: Option<OpenSegment>,
    /// The URI the next part will have (EXT-X-PRELOAD-HINT), when it is known.
    pub preload_hint: Option<String>,
}

impl Playlist {
    /// An empty playlist for segments of nominally `segment` each.
    pub fn new(segment: Duration, window: usize) -> Self {
        Playlist {
            target_duration: rounded_seconds(segment).max(1),
            media_sequence: 0,
            segments: VecDeque::new(),
            window: window.max(1),
            part_target: None,
            open: None,
            preload_hint: None,
        }
    }

    /// An empty Low-Latency playlist whose parts last at most `part_target`.
    pub fn low_latency(segment: Duration, window: usize, part_target: Duration) -> Self {
        Playlist {
            part_target: Some(part_target),
            ..Playlist::new(segment, window)
        }
    }

    /// Appends a part of the segment being written. An independent part opens a new segment
    /// (dated `program_date_time`) and returns the parts of an unfinished one it replaces
    /// (its segment was never completed), so the caller can delete them. A dependent part
    /// with no segment open is not listed: a segment's listed parts must start at its start.
    pub fn push_part(&mut self, part: Part, program_date_time: SystemTime) -> Vec<Part> {
        let mut dropped = Vec::new();
        if part.independent {
            if let Some(open) = self.open.take() {
                dropped = open.parts;
            }
            self.open = Some(OpenSegment {
                program_date_time,
                parts: vec![part],
            });
        } else if let Some(open) = self.open.as_mut() {
            open.parts.push(part);
        } else {
            dropped.push(part);
        }
        dropped
    }

    /// The parts of the segment being written that are listed.
    pub fn open_parts(&self) -> usize {
        self.open.as_ref().map_or(0, |open| open.parts.len())
    }

    /// Appends the newest segment, which takes over the open segment's parts; when the window
    /// is full the oldest leaves (and is returned, so the caller can delete it later) and the
    /// media sequence advances.
    pub fn push(&mut self, mut segment: Segment) -> Option<Segment> {
        if let Some(open) = self.open.take() {
            if segment.parts.is_empty() {
                segment.parts = open.parts;
            }
        }
        self.target_duration = self.target_duration.max(rounded_seconds(segment.duration));
        if self.segments.is_empty() {
            self.media_sequence = segment.sequence;
        }
        self.segments.push_back(segment);
        if self.segments.len() <= self.window {
            return None;
        }
        let removed = self.segments.pop_front();
        self.media_sequence = self
            .segments
            .front()
            .map_or(self.media_sequence, |s| s.sequence);
        removed
    }

    /// The sequence number of the newest segment.
    pub fn latest_sequence(&self) -> Option<u64> {
        self.segments.back().map(|s| s.sequence)
    }

    /// The summed duration of the listed segments.
    pub fn duration(&self) -> Duration {
        self.segments.iter().map(|s| s.duration).sum()
    }

    /// The m3u8 text. Version 3 is enough: it allows decimal EXTINF durations, and
    /// PROGRAM-DATE-TIME and INDEPENDENT-SEGMENTS need no version; RFC 8216bis ties no version
    /// to the Low-Latency tags (only to EXT-X-SKIP and the like, which we do not use) and TS
    /// parts need no EXT-X-MAP. No EXT-X-ENDLIST: it is live.
    pub fn render(&self) -> String {
        let mut out = format!(
            "#EXTM3U\n\
             #EXT-X-VERSION:3\n\
             #EXT-X-TARGETDURATION:{}\n",
            self.target_duration
        );
        if let Some(part_target) = self.part_target {
            // RFC 8216bis (EXT-X-SERVER-CONTROL): PART-HOLD-BACK at least twice PART-TARGET,
            // three times recommended; a player stays that far behind the newest part.
            out.push_str(&format!(
                "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={}\n\
                 #EXT-X-PART-INF:PART-TARGET={}\n",
                seconds_3(part_target * 3),
                seconds_3(part_target)
            ));
        }
        out.push_str(&format!(
            "#EXT-X-MEDIA-SEQUENCE:{}\n\
             #EXT-X-INDEPENDENT-SEGMENTS\n",
            self.media_sequence
        ));
        // RFC 8216bis (EXT-X-PART, §4.4.4.9): parts more than three target durations from the
        // end of the playlist should be removed. Walking back from the end, a segment's parts are listed
        // while less than that lies after it.
        let horizon = Duration::from_secs(3 * self.target_duration);
        let mut after = self
            .open
            .iter()
            .flat_map(|open| &open.parts)
            .map(|p| p.duration)
            .sum::<Duration>();
        let mut listed_parts = vec![false; self.segments.len()];
        for (listed, segment) in listed_parts.iter_mut().zip(&self.segments).rev() {
            *listed = after < horizon;
            after += segment.duration;
        }
        for (segment, list_parts) in self.segments.iter().zip(listed_parts) {
            out.push_str(&format!(
                "#EXT-X-PROGRAM-DATE-TIME:{}\n",
                format_date_time(segment.program_date_time)
            ));
            if list_parts && self.part_target.is_some() {
                render_parts(&mut out, &segment.parts);
            }
            out.push_str(&format!(
                "#EXTINF:{},\n{}\n",
                seconds_3(segment.duration),
                segment.uri
            ));
        }
        if self.part_target.is_some() {
            if let Some(open) = &self.open {
                // The date applies to the next segment's first picture: the open one's.
                out.push_str(&format!(
                    "#EXT-X-PROGRAM-DATE-TIME:{}\n",
                    format_date_time(open.program_date_time)
                ));
                render_parts(&mut out, &open.parts);
            }
            if let Some(hint) = &self.preload_hint {
                out.push_str(&format!("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{hint}\"\n"));
            }
        }
        out
    }
}

fn render_parts(out: &mut String, parts: &[Part]) {
    for part in parts {
        out.push_str(&format!(
            "#EXT-X-PART:DURATION={},URI=\"{}\"{}\n",
            seconds_3(part.duration),
            part.uri,
            if part.independent {
                ",INDEPENDENT=YES"
            } else {
                ""
            }
        ));
    }
}

/// Seconds with three decimals, e.g. `1.033`, from whole milliseconds.
fn seconds_3(duration: Duration) -> String {
    let ms = millis_rounded(duration);
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// Whole milliseconds, rounded: durations print with three decimals, from integers, so no
/// float formatting can print 0.9999.
fn millis_rounded(duration: Duration) -> u128 {
    (duration.as_nanos() + 500_000) / 1_000_000
}

/// Seconds rounded to the nearest integer, the rule RFC 8216 §4.3.3.1 sets between EXTINF and
/// the target duration. (Not the ceiling: 30 fps segments cut on frames last 1.000–1.033 s,
/// and a ceiling would announce 2 s and make players poll half as often as they should.)
fn rounded_seconds(duration: Duration) -> u64 {
    ((millis_rounded(duration) + 500) / 1000) as u64
}

/// RFC 3339 in UTC with milliseconds, e.g. `2024-02-29T13:05:09.042Z`. Times before 1970 are
/// printed as the epoch (the system clock would have to be badly wrong).
pub fn format_date_time(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let days = (seconds / 86_400) as i64;
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since_epoch.subsec_millis()
    )
}

/// (year, month, day) of the proleptic Gregorian calendar for days since 1970-01-01: Howard
/// Hinnant's `civil_from_days`, counting in 400-year eras that start on 1 March so the leap
/// day falls at the end of each year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_millis(millis)
    }

    /// Segment `sequence`, `ms` long, starting at 2023-11-14T22:13:20Z plus `start_ms`.
    fn segment(sequence: u64, ms: u64, start_ms: u64) -> Segment {
        Segment {
            sequence,
            duration: Duration::from_millis(ms),
            uri: format!("seg-{sequence}.ts"),
            program_date_time: at(1_700_000_000, start_ms),
            parts: Vec::new(),
        }
    }

    #[test]
    fn dates_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(format_date_time(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_date_time(at(1_700_000_000, 7)),
            "2023-11-14T22:13:20.007Z"
        );
        // Leap days: 2000 is a leap year (divisible by 400), 1900 would not be, 2024 is.
        assert_eq!(
            format_date_time(at(951_782_400, 0)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            format_date_time(at(951_868_799, 999)),
            "2000-02-29T23:59:59.999Z"
        );
        assert_eq!(
            format_date_time(at(1_709_164_800, 42)),
            "2024-02-29T00:00:00.042Z"
        );
        assert_eq!(
            format_date_time(at(1_709_251_200, 0)),
            "2024-03-01T00:00:00.000Z"
        );
        assert_eq!(
            format_date_time(at(1_735_689_599, 500)),
            "2024-12-31T23:59:59.500Z"
        );
        assert_eq!(
            format_date_time(at(4_107_542_400, 0)),
            "2100-03-01T00:00:00.000Z"
        );
        assert_eq!(
            format_date_time(at(253_402_300_799, 0)),
            "9999-12-31T23:59:59.000Z"
        );
        // Sub-millisecond parts are truncated, never rounded up into the next second.
        let almost = at(1_700_000_000, 999) + Duration::from_micros(999);
        assert_eq!(format_date_time(almost), "2023-11-14T22:13:20.999Z");
    }

    #[test]
    fn days_to_civil_round_trips_every_day_of_four_centuries() {
        // Walk day by day from 1970 and check the calendar advances one day at a time.
        let (mut year, mut month, mut day) = (1970, 1, 1);
        for days in 0..146_097 {
            assert_eq!(civil_from_days(days), (year, month, day), "day {days}");
            let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
            let month_length = match month {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            day += 1;
            if day > month_length {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
        }
    }

    #[test]
    fn an_empty_playlist_has_only_the_header() {
        let playlist = Playlist::new(Duration::from_secs(1), 6);
        assert_eq!(
            playlist.render(),
            "#EXTM3U\n\
             #EXT-X-VERSION:3\n\
             #EXT-X-TARGETDURATION:1\n\
             #EXT-X-MEDIA-SEQUENCE:0\n\
             #EXT-X-INDEPENDENT-SEGMENTS\n"
        );
    }

    #[test]
    fn the_first_segment() {
        let mut playlist = Playlist::new(Duration::from_secs(1), 3);
        assert_eq!(playlist.push(segment(0, 1000, 0)), None);
        assert_eq!(
            playlist.render(),
            "#EXTM3U\n\
             #EXT-X-VERSION:3\n\
             #EXT-X-TARGETDURATION:1\n\
             #EXT-X-MEDIA-SEQUENCE:0\n\
             #EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.000Z\n\
             #EXTINF:1.000,\n\
             seg-0.ts\n"
        );
        assert_eq!(playlist.latest_sequence(), Some(0));
    }

    #[test]
    fn the_window_slides_and_the_media_sequence_follows() {
        let mut playlist = Playlist::new(Duration::from_secs(1), 3);
        let mut removed = Vec::new();
        let mut start = 0;
        for (sequence, ms) in [(0, 1000), (1, 1033), (2, 967), (3, 1000), (4, 1033)] {
            removed.extend(playlist.push(segment(sequence, ms, start)));
            start += ms;
        }
        assert_eq!(
            removed.iter().map(|s| s.sequence).collect::<Vec<_>>(),
            [0, 1]
        );
        assert_eq!(
            playlist.render(),
            "#EXTM3U\n\
             #EXT-X-VERSION:3\n\
             #EXT-X-TARGETDURATION:1\n\
             #EXT-X-MEDIA-SEQUENCE:2\n\
             #EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:22.033Z\n\
             #EXTINF:0.967,\n\
             seg-2.ts\n\
             #EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:23.000Z\n\
             #EXTINF:1.000,\n\
             seg-3.ts\n\
             #EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:24.000Z\n\
             #EXTINF:1.033,\n\
             seg-4.ts\n"
        );
        assert_eq!(playlist.duration(), Duration::from_millis(3000));
    }

    #[test]
    fn a_playlist_that_starts_later_starts_its_media_sequence_there() {
        let mut playlist = Playlist::new(Duration::from_secs(2), 2);
        playlist.push(segment(41, 2000, 0));
        assert_eq!(
            playlist.render(),
            "#EXTM3U\n\
             #EXT-X-VERSION:3\n\
             #EXT-X-TARGETDURATION:2\n\
             #EXT-X-MEDIA-SEQUENCE:41\n\
             #EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.000Z\n\
             #EXTINF:2.000,\n\
             seg-41.ts\n"
        );
    }

    #[test]
    fn target_duration_rounds_to_nearest_and_never_drops() {
        let mut playlist = Playlist::new(Duration::from_secs(1), 2);
        // 1.499 s rounds to 1: no change.
        playlist.push(segment(0, 1499, 0));
        assert_eq!(playlist.target_duration, 1);
        // 2.5 s rounds to 3 (a stall made a long segment).
        playlist.push(segment(1, 2500, 1499));
        playlist.push(segment(2, 1000, 3999));
        playlist.push(segment(3, 1000, 4999));
        // The long segment has left the window; the target stays.
        assert_eq!(
            playlist.render(),
            "#EXTM3U\n\
             #EXT-X-VERSION:3\n\
             #EXT-X-TARGETDURATION:3\n\
             #EXT-X-MEDIA-SEQUENCE:2\n\
             #EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:23.999Z\n\
             #EXTINF:1.000,\n\
             seg-2.ts\n\
             #EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:24.999Z\n\
             #EXTINF:1.000,\n\
             seg-3.ts\n"
        );
        // A short nominal segment still announces at least 1 s.
        assert_eq!(
            Playlist::new(Duration::from_millis(400), 3).target_duration,
            1
        );
        assert_eq!(
            Playlist::new(Duration::from_millis(2500), 3).target_duration,
            3
        );
    }

    #[test]
    fn durations_print_three_decimals_rounded_to_the_millisecond() {
        let mut playlist = Playlist::new(Duration::from_secs(1), 1);
        playlist.push(Segment {
            duration: Duration::from_micros(999_600),
            ..segment(0, 0, 0)
        });
        assert!(playlist.render().contains("\n#EXTINF:1.000,\n"));
        playlist.push(Segment {
            duration: Duration::from_micros(40_400),
            ..segment(1, 0, 0)
        });
        assert!(playlist.render().contains("\n#EXTINF:0.040,\n"));
    }

    fn part(uri: &str, ms: u64, independent: bool) -> Part {
        Part {
            duration: Duration::from_millis(ms),
            uri: uri.to_string(),
            independent,
        }
    }

    /// Publishes segment `sequence` as the mirror does: five 200 ms parts, then the segment.
    fn push_with_parts(playlist: &mut Playlist, sequence: u64, start_ms: u64) {
        for index in 0..5 {
            let uri = format!("part-{sequence}.{index}.ts");
            let dropped =
                playlist.push_part(part(&uri, 200, index == 0), at(1_700_000_000, start_ms));
            assert_eq!(dropped, []);
        }
        playlist.push(segment(sequence, 1000, start_ms));
    }

    #[test]
    fn low_latency_tags_parts_and_the_preload_hint() {
        let mut playlist =
            Playlist::low_latency(Duration::from_secs(1), 6, Duration::from_millis(334));
        assert_eq!(
            playlist.render(),
            "#EXTM3U\n\
             #EXT-X-VERSION:3\n\
             #EXT-X-TARGETDURATION:1\n\
             #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.002\n\
             #EXT-X-PART-INF:PART-TARGET=0.334\n\
             #EXT-X-MEDIA-SEQUENCE:0\n\
             #EXT-X-INDEPENDENT-SEGMENTS\n"
        );
        push_with_parts(&mut playlist, 0, 0);
        playlist.push_part(part("part-1.0.ts", 233, true), at(1_700_000_001, 0));
        playlist.push_part(part("part-1.1.ts", 200, false), at(1_700_000_001, 0));
        playlist.preload_hint = Some("part-1.2.ts".to_string());
        assert_eq!(playlist.open_parts(), 2);
        assert_eq!(
            playlist.render(),
            "#EXTM3U\n\
             #EXT-X-VERSION:3\n\
             #EXT-X-TARGETDURATION:1\n\
             #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.002\n\
             #EXT-X-PART-INF:PART-TARGET=0.334\n\
             #EXT-X-MEDIA-SEQUENCE:0\n\
             #EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.000Z\n\
             #EXT-X-PART:DURATION=0.200,URI=\"part-0.0.ts\",INDEPENDENT=YES\n\
             #EXT-X-PART:DURATION=0.200,URI=\"part-0.1.ts\"\n\
             #EXT-X-PART:DURATION=0.200,URI=\"part-0.2.ts\"\n\
             #EXT-X-PART:DURATION=0.200,URI=\"part-0.3.ts\"\n\
             #EXT-X-PART:DURATION=0.200,URI=\"part-0.4.ts\"\n\
             #EXTINF:1.000,\n\
             seg-0.ts\n\
             #EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:21.000Z\n\
             #EXT-X-PART:DURATION=0.233,URI=\"part-1.0.ts\",INDEPENDENT=YES\n\
             #EXT-X-PART:DURATION=0.200,URI=\"part-1.1.ts\"\n\
             #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-1.2.ts\"\n"
        );
    }

    #[test]
    fn parts_are_listed_only_for_the_last_three_target_durations() {
        let mut playlist =
            Playlist::low_latency(Duration::from_secs(1), 6, Duration::from_millis(334));
        for sequence in 0..5 {
            push_with_parts(&mut playlist, sequence, sequence * 1000);
        }
        playlist.push_part(part("part-5.0.ts", 200, true), at(1_700_000_005, 0));
        playlist.preload_hint = Some("part-5.1.ts".to_string());
        let text = playlist.render();
        // 0.2 s of segment 5 and segments 4, 3 and 2 (3.2 s) come after segment 1: its parts
        // and segment 0's are gone; 2's are still listed (2.2 s after it).
        for gone in ["part-0.", "part-1."] {
            assert!(!text.contains(gone), "{gone}: {text}");
        }
        for listed in ["part-2.0.ts", "part-3.4.ts", "part-4.2.ts", "part-5.0.ts"] {
            assert!(
                text.contains(&format!("URI=\"{listed}\"")),
                "{listed}: {text}"
            );
        }
        let tail = text.split("seg-0.ts\n").nth(1).unwrap();
        assert!(
            tail.starts_with(
                "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:21.000Z\n\
                 #EXTINF:1.000,\n\
                 seg-1.ts\n\
                 #EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:22.000Z\n\
                 #EXT-X-PART:DURATION=0.200,URI=\"part-2.0.ts\",INDEPENDENT=YES\n"
            ),
            "{text}"
        );
        assert!(text.ends_with(
            "seg-4.ts\n\
             #EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:25.000Z\n\
             #EXT-X-PART:DURATION=0.200,URI=\"part-5.0.ts\",INDEPENDENT=YES\n\
             #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-5.1.ts\"\n"
        ));
        // The whole segments are all still there for players without parts.
        for sequence in 0..5 {
            assert!(text.contains(&format!("\nseg-{sequence}.ts\n")), "{text}");
        }
    }

    #[test]
    fn an_unfinished_segments_parts_are_handed_back_when_the_next_segment_opens() {
        let mut playlist =
            Playlist::low_latency(Duration::from_secs(1), 3, Duration::from_millis(334));
        // A dependent part with no segment open cannot be listed.
        let orphan = part("part-0.3.ts", 200, false);
        assert_eq!(playlist.push_part(orphan.clone(), at(0, 0)), [orphan]);
        assert_eq!(playlist.open_parts(), 0);
        playlist.push_part(part("part-0.0.ts", 200, true), at(0, 0));
        playlist.push_part(part("part-0.1.ts", 200, false), at(0, 0));
        // Segment 0 never completed (its muxer failed); the next keyframe opens a new one.
        let dropped = playlist.push_part(part("part-0.0.ts", 200, true), at(1, 0));
        assert_eq!(dropped.len(), 2);
        assert_eq!(playlist.open_parts(), 1);
    }

    #[test]
    fn without_a_part_target_parts_and_hints_are_not_rendered() {
        // The same publishing as a low-latency mirror, but plain HLS: exactly today's text.
        let mut playlist = Playlist::new(Duration::from_secs(1), 2);
        push_with_parts(&mut playlist, 0, 0);
        push_with_parts(&mut playlist, 1, 1000);
        playlist.push_part(part("part-2.0.ts", 200, true), at(1_700_000_002, 0));
        playlist.preload_hint = Some("part-2.1.ts".to_string());
        assert_eq!(
            playlist.render(),
            "#EXTM3U\n\
             #EXT-X-VERSION:3\n\
             #EXT-X-TARGETDURATION:1\n\
             #EXT-X-MEDIA-SEQUENCE:0\n\
             #EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.000Z\n\
             #EXTINF:1.000,\n\
             seg-0.ts\n\
             #EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:21.000Z\n\
             #EXTINF:1.000,\n\
             seg-1.ts\n"
        );
    }
}
