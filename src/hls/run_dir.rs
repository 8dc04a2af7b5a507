//! The run directory: segments and the playlist on disk, each written atomically, and old
//! segments deleted, so the files a server reads are always whole and their number is bounded.
//!
//! Order of a publish: the segment's bytes go to `seg-<n>.ts.tmp`, renamed to `seg-<n>.ts`;
//! only then is the playlist that names it written to `live.m3u8.tmp` and renamed over
//! `live.m3u8`. A rename within one directory is atomic, so a reader sees the old file or the
//! new one, never a partial one, and never a playlist naming a segment that is not there.
//!
//! Deletion follows RFC 8216 §6.2.2: a segment that left the playlist stays available for its
//! own duration plus the duration of the playlist it was last listed in, because a player
//! may have fetched that playlist just before the window slid and still asks for it. Time
//! here is media time (the end of the newest segment), so a stalled source deletes nothing and
//! a running one keeps at most about `2 × window + 1` segments on disk.
//!
//! The directory is removed when the mirror is dropped. A process that was killed cannot do
//! that, so [`sweep_stale`] removes, at the next start, run directories in the same parent
//! whose process no longer exists.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::playlist::{Playlist, Segment};
use super::segmenter::FinishedSegment;
use super::{segment_name, HlsError, PLAYLIST_NAME};

/// A segment gone from the playlist, kept until `delete_at_ms` (media time).
#[derive(Debug)]
struct Retired {
    uri: String,
    delete_at_ms: i64,
}

/// The directory made for this run and the playlist written into it.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    playlist: Playlist,
    retired: VecDeque<Retired>,
    next_sequence: u64,
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
        });
        let now_ms = segment.start_ms + segment.duration.as_millis() as i64;
        if let Some(removed) = removed {
            let keep = retention(removed.duration, self.playlist.duration());
            self.retired.push_back(Retired {
                uri: removed.uri,
                delete_at_ms: now_ms + keep.as_millis() as i64,
            });
        }
        let written = self.write_atomically(PLAYLIST_NAME, self.playlist.render().as_bytes());
        while let Some(oldest) = self.retired.front() {
            if oldest.delete_at_ms > now_ms {
                break;
            }
            let path = self.path.join(&oldest.uri);
            if let Err(error) = std::fs::remove_file(&path) {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), %error, "cannot delete an old HLS segment");
                }
            }
            self.retired.pop_front();
        }
        written
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
