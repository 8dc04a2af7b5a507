//! The run directory: segments, parts and the playlist on disk, each written atomically, and
//! old ones deleted, so the files a server reads are always whole and their number is bounded.
//!
//! Order of a publish: the part's or segment's bytes go to `<name>.tmp`, renamed to `<name>`;
//! only then is the playlist that names it written to `live.m3u8.tmp` and renamed over
//! `live.m3u8`, and only then is the new [`Progress`] sent to the HTTP side (which holds
//! blocking playlist reloads and preload-hinted part requests until it moves). A rename within
//! one directory is atomic, so a reader sees the old file or the new one, never a partial one,
//! and never a playlist naming a file that is not there.
//!
//! Deletion follows RFC 8216 §6.2.2: a segment that left the playlist stays available for its
//! own duration plus the duration of the playlist it was last listed in, because a player
//! may have fetched that playlist just before the window slid and still asks for it. Time
//! here is media time (the end of the newest segment), so a stalled source deletes nothing and
//! a running one keeps at most about `2 × window + 1` segments on disk. A segment's parts are
//! deleted with it (they stop being listed sooner, but a player that saw them may still ask).
//!
//! The directory is removed when the mirror is dropped. A process that was killed cannot do
//! that, so [`sweep_stale`] removes, at the next start, run directories in the same parent
//! whose process no longer exists.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::playlist::{Part, Playlist, Segment};
use super::segmenter::{FinishedPart, FinishedSegment};
use super::{part_name, segment_name, HlsError, Progress, PLAYLIST_NAME};

/// A segment gone from the playlist, kept (with its parts) until `delete_at_ms` (media time).
#[derive(Debug)]
struct Retired {
    uri: String,
    parts: Vec<String>,
    delete_at_ms: i64,
}

/// The directory made for this run and the playlist written into it.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    playlist: Playlist,
    retired: VecDeque<Retired>,
    next_sequence: u64,
    /// Part files on disk (listed, or kept with their segment).
    parts_on_disk: usize,
    /// A part of the open segment failed to be written: later ones are not listed either,
    /// so the listed parts stay a gapless prefix of the segment.
    open_broken: bool,
    /// What the newest playlist on disk contains; the HTTP side waits on it.
    progress: watch::Sender<Progress>,
}

/// The run directory name prefix; the rest is `<pid>-<16 hex digits>`.
const PREFIX: &str = "lenscast-hls-";

/// The process ID in a run directory's name, if the name is exactly one of ours.
fn owner_pid(name: &str) -> Option<u32> {
    let (pid, random) = name.strip_prefix(PREFIX)?.split_once('-')?;
    let ours = !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && random.len() == 16
        && random.bytes().all(|b| b.is_ascii_hexdigit());
    ours.then(|| pid.parse().ok()).flatten()
}

/// Removes run directories in `parent` left by processes that no longer exist (killed before
/// they could clean up), so restarts after crashes do not pile up files. Linux only: liveness
/// is read from `/proc`, and without it nothing is touched. Only real directories named
/// exactly like ours are considered; a reused PID only means one is kept a little longer.
/// (Processes in another PID namespace look dead from here: containers that share one
/// parent directory should each get their own `parent_dir`.)
pub fn sweep_stale(parent: &Path) {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(owner_pid) else {
            continue;
        };
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || pid == std::process::id() || proc.join(pid.to_string()).exists() {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "removed a stale HLS directory"),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot remove a stale HLS directory")
            }
        }
    }
}

impl RunDir {
    /// Creates a fresh directory `<parent>/lenscast-hls-<pid>-<random>`. It must not exist
    /// yet: we never write into, or later delete, a directory someone else made.
    pub fn create(parent: &Path, playlist: Playlist) -> Result<Self, HlsError> {
        let mut attempts = 0;
        loop {
            let path = parent.join(format!(
                "{PREFIX}{}-{:016x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    return Ok(RunDir {
                        path,
                        playlist,
                        retired: VecDeque::new(),
                        next_sequence: 0,
                        parts_on_disk: 0,
                        open_broken: false,
                        progress: watch::Sender::new(Progress::default()),
                    })
                }
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && attempts < 8 => {
                    attempts += 1
                }
                Err(error) => return Err(HlsError::CreateDir { path, error }),
            }
        }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The playlist as last published.
    pub fn playlist(&self) -> &Playlist {
        &self.playlist
    }

    /// Segment files on disk: the listed ones and the retired ones not yet deleted.
    pub fn segments_on_disk(&self) -> usize {
        self.playlist.segments.len() + self.retired.len()
    }

    /// Part files on disk: those of the open segment, of listed and of retired segments.
    pub fn parts_on_disk(&self) -> usize {
        self.parts_on_disk
    }

    /// Follows what the published playlist contains (sent after each playlist write; closed
    /// when the directory is removed).
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Writes a part of the open segment, then the playlist naming it. An independent part
    /// opens the segment (dated `program_date_time`); parts of a segment that was never
    /// completed are deleted then.
    pub fn publish_part(
        &mut self,
        part: FinishedPart,
        program_date_time: SystemTime,
    ) -> Result<(), HlsError> {
        if part.independent {
            self.open_broken = false;
        }
        let index = if part.independent {
            0
        } else {
            self.playlist.open_parts()
        };
        let uri = part_name(self.next_sequence, index as u64);
        if self.open_broken || (!part.independent && index == 0) {
            // Not listable: its segment's earlier parts are missing.
            return Ok(());
        }
        if let Err(error) = self.write_atomically(&uri, &part.bytes) {
            self.open_broken = true;
            self.playlist.preload_hint = None;
            return Err(error);
        }
        self.parts_on_disk += 1;
        let dropped = self.playlist.push_part(
            Part {
                duration: part.duration,
                uri,
                independent: part.independent,
            },
            program_date_time,
        );
        for part in dropped {
            // Parts of a segment that never completed; the next segment reuses their names.
            self.delete(&part.uri);
            self.parts_on_disk -= 1;
        }
        self.playlist.preload_hint = Some(part_name(
            self.next_sequence,
            self.playlist.open_parts() as u64,
        ));
        self.write_playlist()
    }

    /// Writes the segment, then the playlist naming it, then deletes what has expired.
    /// Sequence numbers are given here, in publish order, so a segment that failed to be
    /// written leaves no gap in them (players number segments by position).
    pub fn publish(
        &mut self,
        segment: FinishedSegment,
        program_date_time: SystemTime,
    ) -> Result<(), HlsError> {
        let sequence = self.next_sequence;
        let uri = segment_name(sequence);
        self.write_atomically(&uri, &segment.bytes)?;
        self.next_sequence += 1;
        let removed = self.playlist.push(Segment {
            sequence,
            duration: segment.duration,
            uri,
            program_date_time,
            parts: Vec::new(),
        });
        self.open_broken = false;
        if self.playlist.part_target.is_some() {
            self.playlist.preload_hint = Some(part_name(self.next_sequence, 0));
        }
        let now_ms = segment.start_ms + segment.duration.as_millis() as i64;
        if let Some(removed) = removed {
            let keep = retention(removed.duration, self.playlist.duration());
            self.retired.push_back(Retired {
                uri: removed.uri,
                parts: removed.parts.into_iter().map(|p| p.uri).collect(),
                delete_at_ms: now_ms + keep.as_millis() as i64,
            });
        }
        let written = self.write_playlist();
        while let Some(oldest) = self.retired.front() {
            if oldest.delete_at_ms > now_ms {
                break;
            }
            let oldest = self.retired.pop_front().expect("just looked at it");
            self.delete(&oldest.uri);
            for part in &oldest.parts {
                self.delete(part);
            }
            self.parts_on_disk -= oldest.parts.len();
        }
        written
    }

    /// Writes the playlist, then tells the waiting requests what it now contains.
    fn write_playlist(&self) -> Result<(), HlsError> {
        self.write_atomically(PLAYLIST_NAME, self.playlist.render().as_bytes())?;
        self.progress.send_replace(Progress {
            msn: self.next_sequence,
            parts: self.playlist.open_parts() as u64,
        });
        Ok(())
    }

    fn delete(&self, name: &str) {
        let path = self.path.join(name);
        if let Err(error) = std::fs::remove_file(&path) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), %error, "cannot delete an old HLS file");
            }
        }
    }

    /// Writes `name` whole: to `name.tmp` first, then renamed (no fsync: the files only need
    /// to survive as long as this process, not a power cut).
    fn write_atomically(&self, name: &str, bytes: &[u8]) -> Result<(), HlsError> {
        let final_path = self.path.join(name);
        let temporary = self.path.join(format!("{name}.tmp"));
        let result = std::fs::write(&temporary, bytes)
            .and_then(|()| std::fs::rename(&temporary, &final_path));
        result.map_err(|error| {
            let _ = std::fs::remove_file(&temporary);
            HlsError::Write {
                path: final_path,
                error,
            }
        })
    }

    /// Deletes the directory and everything in it.
    pub fn remove(self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove the HLS directory");
        }
    }
}

/// How long a segment that has just left the playlist must stay: its own duration plus the
/// playlist's (RFC 8216 §6.2.2).
fn retention(removed: Duration, playlist: Duration) -> Duration {
    removed + playlist
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(start_ms: i64) -> FinishedSegment {
        FinishedSegment {
            start_ms,
            duration: Duration::from_secs(1),
            bytes: vec![0x47; 188],
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn segments_are_kept_for_their_duration_plus_the_playlists_then_deleted() {
        let parent = tempfile::tempdir().unwrap();
        let mut dir =
            RunDir::create(parent.path(), Playlist::new(Duration::from_secs(1), 3)).unwrap();
        assert_eq!(
            retention(Duration::from_secs(1), Duration::from_secs(3)).as_secs(),
            4
        );
        for n in 0..20 {
            dir.publish(finished(n * 1000), SystemTime::now()).unwrap();
            // Listed: min(n + 1, 3). Retired: removed at most 4 s ago.
            assert!(
                dir.segments_on_disk() <= 3 + 4,
                "{n}: {}",
                dir.segments_on_disk()
            );
            assert_eq!(files(dir.path()).len(), dir.segments_on_disk() + 1);
        }
        // Published 0..=19, media time is now 20 s; listed 17, 18, 19. Segment k left the
        // playlist at k + 4 s and may be deleted at k + 8 s: 13..=16 are still kept.
        let mut expected: Vec<String> = (13..20).map(segment_name).collect();
        expected.push(PLAYLIST_NAME.to_string());
        expected.sort();
        assert_eq!(files(dir.path()), expected);
        let path = dir.path().to_path_buf();
        dir.remove();
        assert!(!path.exists());
    }

    fn part(start_ms: i64, independent: bool) -> FinishedPart {
        FinishedPart {
            start_ms,
            duration: Duration::from_millis(200),
            independent,
            bytes: vec![0x47; 188],
        }
    }

    #[test]
    fn parts_are_published_before_their_segment_and_deleted_with_it() {
        let parent = tempfile::tempdir().unwrap();
        let playlist = Playlist::low_latency(Duration::from_secs(1), 3, Duration::from_millis(334));
        let mut dir = RunDir::create(parent.path(), playlist).unwrap();
        let mut progress = dir.subscribe();
        assert_eq!(*progress.borrow_and_update(), Progress::default());
        for n in 0..20 {
            for index in 0..5 {
                dir.publish_part(part(n * 1000 + index * 200, index == 0), SystemTime::now())
                    .unwrap();
                // Each part is on disk and listed before anyone is told.
                assert!(progress.has_changed().unwrap());
                let now = *progress.borrow_and_update();
                assert_eq!(
                    now,
                    Progress {
                        msn: n as u64,
                        parts: index as u64 + 1
                    }
                );
                let name = part_name(n as u64, index as u64);
                assert!(dir.path().join(&name).is_file(), "{name}");
                let text = std::fs::read_to_string(dir.path().join(PLAYLIST_NAME)).unwrap();
                assert!(text.contains(&format!("URI=\"{name}\"")), "{text}");
                let hint = part_name(n as u64, index as u64 + 1);
                assert!(
                    text.ends_with(&format!("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{hint}\"\n")),
                    "{text}"
                );
            }
            dir.publish(finished(n * 1000), SystemTime::now()).unwrap();
            let now = *progress.borrow_and_update();
            assert_eq!(
                now,
                Progress {
                    msn: n as u64 + 1,
                    parts: 0
                }
            );
            // Parts go with their segment: five per segment on disk, never more.
            assert_eq!(dir.parts_on_disk(), 5 * dir.segments_on_disk());
            assert_eq!(files(dir.path()).len(), 6 * dir.segments_on_disk() + 1);
        }
        // As for plain segments: 13..=19 are kept, and their parts with them.
        let mut expected: Vec<String> = (13..20)
            .flat_map(|n| {
                let mut names: Vec<String> = (0..5).map(|i| part_name(n, i)).collect();
                names.push(segment_name(n));
                names
            })
            .collect();
        expected.push(PLAYLIST_NAME.to_string());
        expected.sort();
        assert_eq!(files(dir.path()), expected);
        let text = std::fs::read_to_string(dir.path().join(PLAYLIST_NAME)).unwrap();
        assert!(text.ends_with("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-20.0.ts\"\n"));
        // Removing the directory closes the progress: waiting requests give up.
        dir.remove();
        assert!(progress.has_changed().is_err());
    }

    #[test]
    fn the_parts_of_a_segment_that_never_completed_are_replaced() {
        let parent = tempfile::tempdir().unwrap();
        let playlist = Playlist::low_latency(Duration::from_secs(1), 3, Duration::from_millis(334));
        let mut dir = RunDir::create(parent.path(), playlist).unwrap();
        // A dependent part before any independent one is not listed (nor written).
        dir.publish_part(part(0, false), SystemTime::now()).unwrap();
        assert_eq!(dir.parts_on_disk(), 0);
        dir.publish_part(part(0, true), SystemTime::now()).unwrap();
        dir.publish_part(part(200, false), SystemTime::now())
            .unwrap();
        // The segment's muxer failed: no segment, and the next keyframe opens a new one.
        dir.publish_part(part(1000, true), SystemTime::now())
            .unwrap();
        assert_eq!(dir.parts_on_disk(), 1);
        assert!(!dir.path().join(part_name(0, 1)).exists());
        assert_eq!(dir.playlist().open_parts(), 1);
    }

    #[test]
    fn only_directories_of_dead_processes_are_swept() {
        let parent = tempfile::tempdir().unwrap();
        let make = |name: &str| {
            let path = parent.path().join(name);
            std::fs::create_dir(&path).unwrap();
            std::fs::write(path.join("seg-0.ts"), "x").unwrap();
        };
        // PIDs above Linux's pid_max (2^22) never exist.
        make("lenscast-hls-999999999-00000000000000ab");
        let alive = format!("lenscast-hls-{}-00000000000000cd", std::process::id());
        make(&alive);
        make("lenscast-hls-1-00000000000000ef");
        make("lenscast-hls-999999999-short");
        make("other-999999999-00000000000000ab");
        std::fs::write(
            parent
                .path()
                .join("lenscast-hls-999999998-0000000000000012"),
            "",
        )
        .unwrap();
        sweep_stale(parent.path());
        let mut expected = vec![
            alive,
            "lenscast-hls-1-00000000000000ef".to_string(),
            "lenscast-hls-999999998-0000000000000012".to_string(),
            "lenscast-hls-999999999-short".to_string(),
            "other-999999999-00000000000000ab".to_string(),
        ];
        expected.sort();
        assert_eq!(files(parent.path()), expected);
    }

    #[test]
    fn a_fresh_directory_is_made_for_each_run() {
        let parent = tempfile::tempdir().unwrap();
        let playlist = Playlist::new(Duration::from_secs(1), 3);
        let a = RunDir::create(parent.path(), playlist.clone()).unwrap();
        let b = RunDir::create(parent.path(), playlist.clone()).unwrap();
        assert_ne!(a.path(), b.path());
        let missing = parent.path().join("missing");
        assert!(matches!(
            RunDir::create(&missing, playlist),
            Err(HlsError::CreateDir { .. })
        ));
    }
}
