//! Glass-to-glass latency: the clock the pages share with the server, the capture stamps the
//! viewer stream carries, and what viewers report back.
//!
//! Presenter, server and viewers may be three machines whose clocks disagree by seconds, so
//! every figure is put on the server's wall clock:
//!
//! - Each page estimates its clock's offset from the server's NTP-style, over the WebSocket
//!   it already has: it sends `{"type":"ping","t":<page ms>}`, the server answers at once with
//!   `{"type":"pong","t":…,"server_ms":<server ms>}`, and the page keeps the answer with the
//!   shortest round trip (offset = server_ms − (sent + received) / 2).
//! - The presenter tells the server when media time 0 of its recording was captured, on the
//!   server's clock: `{"type":"capture","origin_ms":…}`. A frame at source time `t` was then
//!   captured at `origin + t`. Sources that send no origin (the demo, a file, ffmpeg) are
//!   stamped with when their frames reached the server, so their readout is server-to-screen.
//! - Each keyframe Cluster the pipeline writes carries a [`Stamp`]: the capture time of one
//!   output media time. Viewers get it as a text message `{"type":"stamp",...}` before the
//!   Cluster; media time and capture time advance together, so one stamp per Cluster maps
//!   every frame in it. The stamp also says when the server sent it, so the page can tell
//!   its connection's delay from its player's.
//! - A viewer page knows when it presents a frame and which media time that frame has, so it
//!   computes its own latency and reports it (`{"type":"latency","ms":…}`); the server shows
//!   the viewers' median to the presenter and in `/api/status`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::clock::MediaTime;

/// A viewer's report counts for this long; a viewer that stops reporting drops out.
const REPORT_FRESH: Duration = Duration::from_secs(5);
/// Capture origins further than this from the server's clock are refused: no real clock is a
/// day off, and such a figure would only poison the readout.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(24 * 3600);
/// Latency reports above this are refused as nonsense (a minute behind is no longer live).
const MAX_REPORTED: Duration = Duration::from_secs(60);

/// Errors in a page's clock messages.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LatencyError {
    #[error("not a clock message: {0}")]
    Parse(String),
    #[error("a capture origin {0:.0} ms away from the server's clock")]
    OriginOutOfRange(f64),
    #[error("a latency report of {0} ms")]
    ReportOutOfRange(f64),
}

/// A point on the server's wall clock, in milliseconds since the Unix epoch: the unit the
/// pages' `Date.now()` uses, so the figures on both sides compare directly.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct WallTime(f64);

impl WallTime {
    /// Now, on the server's clock.
    pub fn now() -> Self {
        Self::of(SystemTime::now())
    }

    /// When `instant` was, on the server's clock.
    pub fn at(instant: Instant) -> Self {
        let ago = instant.elapsed();
        Self::of(SystemTime::now() - ago)
    }

    fn of(time: SystemTime) -> Self {
        WallTime(
            time.duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64()
                * 1000.0,
        )
    }

    /// From a page's milliseconds (already on the server's clock).
    pub fn from_millis(ms: f64) -> Self {
        WallTime(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> f64 {
        self.0
    }

    /// `self` moved by a media-time span (which may be negative).
    pub fn offset(self, by: MediaTime) -> Self {
        WallTime(self.0 + by.as_nanos() as f64 / 1e6)
    }

    /// `self - earlier`, in milliseconds.
    pub fn millis_since(self, earlier: WallTime) -> f64 {
        self.0 - earlier.0
    }
}

/// When one output media time was captured: carried by the keyframe Clusters the viewers get.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamp {
    pub media: MediaTime,
    pub capture: WallTime,
    /// The text message viewers get, made once here rather than once per viewer.
    pub message: Bytes,
}

impl Stamp {
    /// A stamp made as its Cluster goes out (so `sent_ms` is the broadcast time).
    pub fn new(media: MediaTime, capture: WallTime) -> Self {
        let message = serde_json::json!({
            "type": "stamp",
            "media_ms": media.as_nanos() as f64 / 1e6,
            "capture_ms": capture.as_millis(),
            "sent_ms": WallTime::now().as_millis(),
        })
        .to_string();
        Stamp {
            media,
            capture,
            message: Bytes::from(message),
        }
    }
}

/// A clock message from a page.
#[derive(Debug, PartialEq, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PageMessage {
    /// Asks for the server's time; `t` (the page's clock, ms) comes back unchanged.
    Ping { t: f64 },
    /// The presenter: media time 0 of its recording was captured at `origin_ms` (server clock).
    Capture { origin_ms: f64 },
    /// A viewer: its current glass-to-glass estimate, ms.
    Latency { ms: f64 },
}

impl PageMessage {
    /// Parses a text message from a page.
    pub fn parse(text: &[u8]) -> Result<Self, LatencyError> {
        let message: PageMessage =
            serde_json::from_slice(text).map_err(|e| LatencyError::Parse(e.to_string()))?;
        match message {
            PageMessage::Capture { origin_ms } => {
                let skew = origin_ms - WallTime::now().as_millis();
                if !skew.is_finite() || skew.abs() > MAX_CLOCK_SKEW.as_secs_f64() * 1000.0 {
                    return Err(LatencyError::OriginOutOfRange(skew));
                }
            }
            PageMessage::Latency { ms } => {
                if !ms.is_finite() || ms < 0.0 || ms > MAX_REPORTED.as_secs_f64() * 1000.0 {
                    return Err(LatencyError::ReportOutOfRange(ms));
                }
            }
            PageMessage::Ping { t } if !t.is_finite() => {
                return Err(LatencyError::Parse("a ping without a time".into()));
            }
            PageMessage::Ping { .. } => {}
        }
        Ok(message)
    }
}

/// The answer to a page's ping: its own time back, and the server's now.
pub fn pong(t: f64) -> String {
    serde_json::json!({ "type": "pong", "t": t, "server_ms": WallTime::now().as_millis() })
        .to_string()
}

/// The viewers' latest latency reports.
#[derive(Default)]
pub struct Reports {
    latest: Mutex<HashMap<u64, (f64, Instant)>>,
}

/// The viewers' figures, for `/api/status` and the presenter page.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ViewerLatency {
    /// The median of the viewers' glass-to-glass estimates, ms.
    pub glass_to_glass_ms_p50: Option<f64>,
    /// How many viewers reported in the last few seconds.
    pub viewers_reporting: usize,
}

impl Reports {
    /// Viewer `id` now sees `ms` of latency.
    pub fn report(&self, id: u64, ms: f64) {
        self.lock().insert(id, (ms, Instant::now()));
    }

    /// Viewer `id` left.
    pub fn forget(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// The median of the fresh reports; stale ones are dropped on the way.
    pub fn summary(&self) -> ViewerLatency {
        let mut latest = self.lock();
        latest.retain(|_, (_, at)| at.elapsed() < REPORT_FRESH);
        let mut values: Vec<f64> = latest.values().map(|(ms, _)| *ms).collect();
        drop(latest);
        values.sort_by(f64::total_cmp);
        ViewerLatency {
            glass_to_glass_ms_p50: median(&values),
            viewers_reporting: values.len(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (f64, Instant)>> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The median of sorted `values` (the mean of the middle two for an even count).
fn median(values: &[f64]) -> Option<f64> {
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_messages_parse_and_nonsense_is_refused() {
        assert_eq!(
            PageMessage::parse(br#"{"type":"ping","t":12.5}"#),
            Ok(PageMessage::Ping { t: 12.5 })
        );
        assert_eq!(
            PageMessage::parse(br#"{"type":"latency","ms":250}"#),
            Ok(PageMessage::Latency { ms: 250.0 })
        );
        // Whole ms, as pages send (Date.now()): serde_json may read a long fraction's last
        // digit approximately.
        let now = WallTime::now().as_millis().round();
        assert_eq!(
            PageMessage::parse(format!(r#"{{"type":"capture","origin_ms":{now}}}"#).as_bytes()),
            Ok(PageMessage::Capture { origin_ms: now })
        );
        assert!(matches!(
            PageMessage::parse(br#"{"type":"capture","origin_ms":5}"#),
            Err(LatencyError::OriginOutOfRange(_))
        ));
        assert!(matches!(
            PageMessage::parse(br#"{"type":"latency","ms":-3}"#),
            Err(LatencyError::ReportOutOfRange(_))
        ));
        assert!(matches!(
            PageMessage::parse(br#"{"type":"shout"}"#),
            Err(LatencyError::Parse(_))
        ));
        assert!(matches!(
            PageMessage::parse(b"\xff"),
            Err(LatencyError::Parse(_))
        ));
    }

    #[test]
    fn the_pong_carries_the_page_time_back_and_the_server_time() {
        let before = WallTime::now().as_millis();
        let pong: serde_json::Value = serde_json::from_str(&pong(42.0)).unwrap();
        assert_eq!(pong["type"], "pong");
        assert_eq!(pong["t"], 42.0);
        let server = pong["server_ms"].as_f64().unwrap();
        assert!(server >= before && server <= WallTime::now().as_millis());
    }

    #[test]
    fn a_stamp_moves_with_media_time() {
        let capture = WallTime::from_millis(1_000_000.0);
        let stamp = Stamp::new(MediaTime::from_millis(2500), capture);
        let json: serde_json::Value = serde_json::from_slice(&stamp.message).unwrap();
        assert_eq!(json["media_ms"], 2500.0);
        assert_eq!(json["capture_ms"], 1_000_000.0);
        assert_eq!(
            capture
                .offset(MediaTime::from_millis(-40))
                .millis_since(capture),
            -40.0
        );
    }

    #[test]
    fn reports_give_the_median_of_viewers_still_reporting() {
        let reports = Reports::default();
        assert_eq!(reports.summary().glass_to_glass_ms_p50, None);
        reports.report(1, 300.0);
        reports.report(2, 500.0);
        reports.report(3, 400.0);
        assert_eq!(
            reports.summary(),
            ViewerLatency {
                glass_to_glass_ms_p50: Some(400.0),
                viewers_reporting: 3
            }
        );
        reports.forget(3);
        assert_eq!(reports.summary().glass_to_glass_ms_p50, Some(400.0));
        // A newer report replaces the viewer's last.
        reports.report(1, 100.0);
        assert_eq!(reports.summary().glass_to_glass_ms_p50, Some(300.0));
    }
}
