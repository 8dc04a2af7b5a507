//! `GET /hls/<name>`: the HLS mirror's playlist, segments and parts, read from its run
//! directory.
//!
//! Only the exact names the mirror writes are served ([`crate::hls::file_kind`]), so no request
//! can reach another file: `..`, slashes, percent escapes and half-written `.tmp` files are all
//! 404 before the file system is touched. Files are read whole; the mirror renames each one
//! into place complete, so a reader gets all of a file or (not yet written, already deleted)
//! a 404, never part of one.
//!
//! Low-Latency HLS (RFC 8216bis §6.2.5.2, blocking playlist reload): `live.m3u8?_HLS_msn=M`
//! is held until the playlist contains segment M or a later one, and
//! `?_HLS_msn=M&_HLS_part=N` until it contains part N of segment M or anything later; then
//! the whole playlist is sent. A request for the preload-hinted part, not yet written, is
//! held until it is. Waits are bounded (3 × target duration for a playlist, then 503;
//! 3 × part target for a part, then 404) and cost one `watch` receiver each: nothing is locked
//! while waiting, and a request whose client goes away is simply dropped with its future.
//! Without the query the playlist is answered at once, as for any plain HLS player.
//!
//! Caching: the playlist changes with every part, so it is `no-cache` (a CDN revalidates it
//! each time); a segment or part never changes once its name exists, so it is `immutable` for
//! a year and a CDN or nginx in front can serve it to every viewer after the first. A blocking
//! reload's answer is `public` for one target duration: any playlist that lists the part it
//! asked for is a right answer to that URL, so a cache can give one origin answer to every
//! player waiting for that part (by the next segment they have all moved on). So is the 404
//! for a hinted part that its segment ended without: it will never exist.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::http::{Response, StatusCode};

use crate::hls::{file_kind, FileKind, HlsMirror, Progress};

/// Why a playlist request is refused with 400 Bad Request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HlsRequestError {
    #[error("{0} must be a decimal number")]
    NotANumber(&'static str),
    #[error("{0} is given twice")]
    Duplicate(&'static str),
    #[error("_HLS_part needs _HLS_msn")]
    PartWithoutMsn,
    #[error("_HLS_msn={requested} is more than two segments past the last one ({last})")]
    MsnTooFarAhead { requested: u64, last: i128 },
    #[error("_HLS_part={requested} of segment {msn} is more than {limit} parts past the last one")]
    PartTooFarAhead {
        msn: u64,
        requested: u64,
        limit: u64,
    },
}

/// A blocking playlist reload's delivery directives (RFC 8216bis §6.2.5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reload {
    /// `_HLS_msn`: the segment the playlist must contain.
    pub msn: u64,
    /// `_HLS_part`: the part of that segment it must contain.
    pub part: Option<u64>,
}

impl Reload {
    /// Reads `_HLS_msn` and `_HLS_part` from a raw query string; `None` when neither is there.
    /// Other parameters (a player's cache buster) are left alone; these two must be plain
    /// decimal numbers, each at most once.
    pub fn parse(query: &str) -> Result<Option<Reload>, HlsRequestError> {
        let mut msn = None;
        let mut part = None;
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (name, slot) = match key {
                "_HLS_msn" => ("_HLS_msn", &mut msn),
                "_HLS_part" => ("_HLS_part", &mut part),
                _ => continue,
            };
            if slot.is_some() {
                return Err(HlsRequestError::Duplicate(name));
            }
            let number = (!value.is_empty()
                && value.len() <= 20
                && value.bytes().all(|b| b.is_ascii_digit()))
            .then(|| value.parse().ok())
            .flatten();
            *slot = Some(number.ok_or(HlsRequestError::NotANumber(name))?);
        }
        match (msn, part) {
            (None, None) => Ok(None),
            // §6.2.5.2: "_HLS_part ... requires an _HLS_msn parameter".
            (None, Some(_)) => Err(HlsRequestError::PartWithoutMsn),
            (Some(msn), part) => Ok(Some(Reload { msn, part })),
        }
    }

    /// Whether a playlist at `progress` answers this request: it contains segment `msn` (or
    /// a later one), or with `_HLS_part`, part `part` of segment `msn` or anything later. A
    /// completed segment `msn` counts for any of its part numbers: its last part was the last.
    pub fn satisfied_by(&self, progress: Progress) -> bool {
        match self.part {
            None => progress.msn > self.msn,
            Some(part) => {
                progress.msn > self.msn || (progress.msn == self.msn && progress.parts > part)
            }
        }
    }

    /// Refuses at once what cannot arrive soon (§6.2.5.2): `_HLS_msn` more than two past the
    /// last segment's sequence number, or `_HLS_part` further past the last listed part than
    /// the Advance Part Limit (`advance_parts`).
    pub fn check(&self, progress: Progress, advance_parts: u64) -> Result<(), HlsRequestError> {
        // The last complete segment is `progress.msn - 1` (-1 before the first).
        let last = i128::from(progress.msn) - 1;
        if i128::from(self.msn) > last + 2 {
            return Err(HlsRequestError::MsnTooFarAhead {
                requested: self.msn,
                last,
            });
        }
        let Some(part) = self.part else {
            return Ok(());
        };
        // How many parts past the newest listed one the request is (at least).
        let ahead = if self.msn == progress.msn {
            (part + 1).saturating_sub(progress.parts)
        } else if self.msn > progress.msn {
            part + 1
        } else {
            0
        };
        if ahead > advance_parts {
            return Err(HlsRequestError::PartTooFarAhead {
                msn: self.msn,
                requested: part,
                limit: advance_parts,
            });
        }
        Ok(())
    }
}

/// The Advance Part Limit of §6.2.5.2: three divided by the part target when that is below a
/// second, else three (rounded up: a player one part early is not refused).
pub fn advance_part_limit(part_target: Option<Duration>) -> u64 {
    match part_target {
        Some(target) if target < Duration::from_secs(1) && !target.is_zero() => {
            (3.0 / target.as_secs_f64()).ceil() as u64
        }
        _ => 3,
    }
}

/// The response for `name` with the raw query string `query` (empty when there is none): a
/// blocking playlist reload or a request for the hinted part waits here first (bounded).
pub async fn respond(mirror: &HlsMirror, name: &str, query: &str) -> warp::reply::Response {
    match file_kind(name) {
        Some(FileKind::Playlist) => match Reload::parse(query) {
            Ok(None) => {}
            Ok(Some(reload)) => {
                if let Err(refusal) = wait_for_playlist(mirror, reload).await {
                    return refusal;
                }
                let answer = response(mirror.dir(), name);
                if answer.status() != StatusCode::OK {
                    return answer;
                }
                return shared_for(answer, mirror.target_duration());
            }
            Err(error) => return bad_request(&error),
        },
        Some(FileKind::Part { msn, index }) => {
            let path = mirror.dir().join(name);
            if !path.is_file() {
                wait_for_part(mirror, msn, index).await;
                // Its segment has ended and it is not there: it will never be (a hint names
                // the next part before the mirror knows the segment ends there). Unlike "not
                // yet", that 404 is final, and a cache may give it to every player that
                // followed the same hint instead of asking the origin for each.
                let ended = mirror.progress().borrow().msn > msn;
                if ended && !path.is_file() {
                    return shared_for(not_found(), mirror.target_duration());
                }
            }
        }
        Some(FileKind::Segment) | None => {}
    }
    response(mirror.dir(), name)
}

/// Holds a blocking reload until the playlist satisfies it: `Err` with the response to send
/// instead (400 at once for what is too far ahead, 503 after 3 × the target duration, or when
/// the mirror stops meanwhile).
async fn wait_for_playlist(
    mirror: &HlsMirror,
    reload: Reload,
) -> Result<(), warp::reply::Response> {
    let mut progress = mirror.progress();
    let now = *progress.borrow_and_update();
    if let Err(error) = reload.check(now, advance_part_limit(mirror.part_target())) {
        return Err(bad_request(&error));
    }
    // §6.2.5.2 suggests three target durations before giving up with 503.
    let limit = mirror.target_duration() * 3;
    let waited = tokio::time::timeout(limit, async {
        // The guard `wait_for` returns is dropped at once: nothing is held across an await.
        progress
            .wait_for(|p| reload.satisfied_by(*p))
            .await
            .map(|_| ())
    })
    .await;
    match waited {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_closed)) => Err(unavailable("the HLS mirror has stopped\n")),
        Err(_elapsed) => Err(unavailable(
            "the requested segment or part did not appear in time\n",
        )),
    }
}

/// Waits (at most 3 × the part target) for part `index` of segment `msn` when it is the one
/// the playlist hints (RFC 8216bis: a preload hint's resource is requested before it exists,
/// and the server answers when it does). Returns when it is written, when the segment ended
/// without it, or on time-out; any other missing part is answered (404) at once.
async fn wait_for_part(mirror: &HlsMirror, msn: u64, index: u64) {
    let Some(part_target) = mirror.part_target() else {
        return;
    };
    let mut progress = mirror.progress();
    let hinted = Progress { msn, parts: index };
    if *progress.borrow_and_update() != hinted {
        return;
    }
    // Written, or its segment ended without it: the same test as a reload for that part.
    let reload = Reload {
        msn,
        part: Some(index),
    };
    let _ = tokio::time::timeout(part_target * 3, async {
        progress
            .wait_for(|p| reload.satisfied_by(*p))
            .await
            .map(|_| ())
    })
    .await;
}

/// The response for `name` in the HLS directory `dir`, at once: the file with its type and
/// caching, or 404.
pub fn response(dir: &Path, name: &str) -> warp::reply::Response {
    let Some(kind) = file_kind(name) else {
        return not_found();
    };
    // A blocking read on the async runtime, deliberately: files are small (a segment is about
    // bitrate × 1 s), were just written and sit in the page cache, so the read takes
    // microseconds, less than handing it to a blocking thread would.
    let bytes = match std::fs::read(dir.join(name)) {
        Ok(bytes) => bytes,
        Err(_) => return not_found(),
    };
    let (content_type, cache_control) = match kind {
        FileKind::Playlist => ("application/vnd.apple.mpegurl", "no-cache"),
        FileKind::Segment | FileKind::Part { .. } => {
            ("video/mp2t", "public, max-age=31536000, immutable")
        }
    };
    let response = Response::builder()
        .header(CONTENT_TYPE, content_type)
        .header(CACHE_CONTROL, cache_control)
        .body(Bytes::from(bytes))
        .expect("static headers are valid");
    warp::Reply::into_response(response)
}

/// Marks an answer that stays right as cacheable by anyone for `max_age` (at least a second,
/// the smallest `max-age`).
fn shared_for(mut response: warp::reply::Response, max_age: Duration) -> warp::reply::Response {
    let value = format!("public, max-age={}", max_age.as_secs().max(1));
    response
        .headers_mut()
        .insert(CACHE_CONTROL, value.parse().expect("a valid header value"));
    response
}

fn not_found() -> warp::reply::Response {
    // A CDN must not remember that a segment was missing: it may be written a moment later.
    plain(StatusCode::NOT_FOUND, "not found".to_string())
}

fn bad_request(error: &HlsRequestError) -> warp::reply::Response {
    plain(StatusCode::BAD_REQUEST, format!("{error}\n"))
}

fn unavailable(reason: &'static str) -> warp::reply::Response {
    plain(StatusCode::SERVICE_UNAVAILABLE, reason.to_string())
}

/// A short text answer that no cache keeps.
fn plain(status: StatusCode, text: String) -> warp::reply::Response {
    let response = Response::builder()
        .status(status)
        .header(CACHE_CONTROL, "no-store")
        .body(Bytes::from(text))
        .expect("static headers are valid");
    warp::Reply::into_response(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(dir: &Path, name: &str) -> u16 {
        response(dir, name).status().as_u16()
    }

    #[test]
    fn only_the_mirrors_own_names_are_served() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("live.m3u8"), "#EXTM3U\n").unwrap();
        std::fs::write(dir.join("seg-7.ts"), [0x47; 188]).unwrap();
        std::fs::write(dir.join("part-7.3.ts"), [0x47; 188]).unwrap();
        std::fs::write(dir.join("seg-8.ts.tmp"), [0x47; 10]).unwrap();
        std::fs::write(dir.join("part-8.0.ts.tmp"), [0x47; 10]).unwrap();
        std::fs::write(root.path().join("secret.ts"), "no").unwrap();
        std::fs::write(root.path().join("seg-1.ts"), "outside").unwrap();

        assert_eq!(status(&dir, "live.m3u8"), 200);
        assert_eq!(status(&dir, "seg-7.ts"), 200);
        assert_eq!(status(&dir, "part-7.3.ts"), 200);
        for name in [
            "part-8.0.ts.tmp",
            "part-8.0.ts",
            "part-7.03.ts",
            "part-07.3.ts",
            "part-7.3.TS",
            "part-7..3.ts",
            "part-7.3.4.ts",
            "part-7.ts",
            "part-.3.ts",
            "part-7..ts",
            "part-7.+3.ts",
            "part-7.-3.ts",
            "part--7.3.ts",
            "part-7.٣.ts",
            "part-7.1234567.ts",
            "part-123456789012345678901.0.ts",
            "part-99999999999999999999.0.ts",
            "../part-7.3.ts",
            "part-7.3.ts/",
            "part-7%2e3.ts",
            "seg-8.ts.tmp",
            "seg-8.ts",
            "../secret.ts",
            "..%2fsecret.ts",
            "%2e%2e/seg-1.ts",
            "../seg-1.ts",
            "run/seg-7.ts",
            "/etc/passwd",
            "seg-.ts",
            "seg-7.ts/",
            "seg--7.ts",
            "seg-+7.ts",
            "seg-7.TS",
            "seg-٣.ts",
            "seg-123456789012345678901.ts",
            "live.m3u8.tmp",
            "LIVE.m3u8",
            "",
            ".",
            "..",
        ] {
            assert_eq!(status(&dir, name), 404, "{name:?}");
        }
    }

    #[test]
    fn part_names_are_parsed_strictly() {
        assert_eq!(
            file_kind("part-0.0.ts"),
            Some(FileKind::Part { msn: 0, index: 0 })
        );
        assert_eq!(
            file_kind("part-18446744073709551615.999999.ts"),
            Some(FileKind::Part {
                msn: u64::MAX,
                index: 999_999
            })
        );
        assert_eq!(file_kind("part-00.0.ts"), None);
        assert_eq!(file_kind("part-1.00.ts"), None);
    }

    #[test]
    fn reload_directives_are_parsed_strictly() {
        let reload = |msn, part| Ok(Some(Reload { msn, part }));
        assert_eq!(Reload::parse(""), Ok(None));
        assert_eq!(Reload::parse("t=123&x"), Ok(None));
        assert_eq!(Reload::parse("_HLS_msn=7"), reload(7, None));
        assert_eq!(Reload::parse("_HLS_msn=7&_HLS_part=2"), reload(7, Some(2)));
        assert_eq!(
            Reload::parse("_HLS_part=2&_HLS_msn=7&t=1"),
            reload(7, Some(2))
        );
        assert_eq!(
            Reload::parse("_HLS_part=2"),
            Err(HlsRequestError::PartWithoutMsn)
        );
        for bad in [
            "_HLS_msn=",
            "_HLS_msn",
            "_HLS_msn=-1",
            "_HLS_msn=+1",
            "_HLS_msn=1.0",
            "_HLS_msn=0x10",
            "_HLS_msn=1%20",
            "_HLS_msn= 1",
            "_HLS_msn=18446744073709551616",
            "_HLS_msn=٣",
        ] {
            assert_eq!(
                Reload::parse(bad),
                Err(HlsRequestError::NotANumber("_HLS_msn")),
                "{bad}"
            );
        }
        assert_eq!(
            Reload::parse("_HLS_msn=1&_HLS_part=x"),
            Err(HlsRequestError::NotANumber("_HLS_part"))
        );
        assert_eq!(
            Reload::parse("_HLS_msn=1&_HLS_msn=1"),
            Err(HlsRequestError::Duplicate("_HLS_msn"))
        );
        assert_eq!(
            Reload::parse("_HLS_msn=1&_HLS_part=0&_HLS_part=1"),
            Err(HlsRequestError::Duplicate("_HLS_part"))
        );
    }

    #[test]
    fn what_a_reload_waits_for_and_what_is_too_far_ahead() {
        let at = |msn, parts| Progress { msn, parts };
        let msn = |msn| Reload { msn, part: None };
        let part = |msn, part| Reload {
            msn,
            part: Some(part),
        };
        // Segment 5 is being written with 2 parts listed; segments up to 4 are complete.
        let now = at(5, 2);
        assert!(msn(4).satisfied_by(now));
        assert!(!msn(5).satisfied_by(now));
        assert!(part(5, 1).satisfied_by(now));
        assert!(!part(5, 2).satisfied_by(now));
        assert!(part(5, 2).satisfied_by(at(5, 3)));
        // Segment 5 ended after its 3rd part: a 4th will never come, the next segment did.
        assert!(part(5, 3).satisfied_by(at(6, 0)));
        assert!(!part(6, 0).satisfied_by(at(6, 0)));

        let limit = advance_part_limit(Some(Duration::from_millis(334)));
        assert_eq!(limit, 9);
        assert_eq!(advance_part_limit(None), 3);
        assert_eq!(advance_part_limit(Some(Duration::from_secs(2))), 3);
        // The last segment is 4: up to 6 may be asked for, not 7.
        assert_eq!(msn(6).check(now, limit), Ok(()));
        assert_eq!(
            msn(7).check(now, limit),
            Err(HlsRequestError::MsnTooFarAhead {
                requested: 7,
                last: 4
            })
        );
        assert_eq!(msn(1).check(at(0, 0), limit), Ok(()));
        assert!(msn(2).check(at(0, 0), limit).is_err());
        // Parts: the newest is 5.1; 5.10 is 9 past it, 5.11 is 10.
        assert_eq!(part(5, 10).check(now, limit), Ok(()));
        assert!(part(5, 11).check(now, limit).is_err());
        assert_eq!(part(6, 8).check(now, limit), Ok(()));
        assert!(part(6, 9).check(now, limit).is_err());
        assert_eq!(part(3, 1000).check(now, limit), Ok(()));
    }

    #[test]
    fn types_and_caching() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("live.m3u8"), "#EXTM3U\n").unwrap();
        std::fs::write(dir.path().join("seg-0.ts"), [0x47; 188]).unwrap();
        let playlist = response(dir.path(), "live.m3u8");
        assert_eq!(
            playlist.headers()[CONTENT_TYPE],
            "application/vnd.apple.mpegurl"
        );
        assert_eq!(playlist.headers()[CACHE_CONTROL], "no-cache");
        let segment = response(dir.path(), "seg-0.ts");
        assert_eq!(segment.headers()[CONTENT_TYPE], "video/mp2t");
        assert_eq!(
            segment.headers()[CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
        let reload = shared_for(playlist, Duration::from_secs(2));
        assert_eq!(reload.headers()[CACHE_CONTROL], "public, max-age=2");
        let missing = response(dir.path(), "seg-1.ts");
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(missing.headers()[CACHE_CONTROL], "no-store");
        std::fs::write(dir.path().join("part-0.1.ts"), [0x47; 188]).unwrap();
        let part = response(dir.path(), "part-0.1.ts");
        assert_eq!(part.headers()[CONTENT_TYPE], "video/mp2t");
        assert_eq!(
            part.headers()[CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
    }
}
