//! The HLS mirror with real FFmpeg: pictures in, a live playlist and MPEG-TS segments out,
//! judged by ffprobe and ffmpeg; the files stay bounded and vanish with the mirror.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ffmpeg_next::format::Pixel;
use ffmpeg_next::util::frame::Video as VideoFrame;
use lenscast::clock::MediaTime;
use lenscast::hls::{HlsConfig, HlsMirror, HlsStatus};
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};

const FPS: i64 = 30;

/// A YUV420P test picture: a diagonal gradient that scrolls, and a bright square that moves,
/// so every frame differs and the encoder has real work.
fn picture(width: u32, height: u32, index: i64) -> VideoFrame {
    let mut frame = VideoFrame::new(Pixel::YUV420P, width, height);
    let shift = (index * 4) as usize;
    let stride = frame.stride(0);
    let square = (index as usize * 3) % (width as usize).saturating_sub(32).max(1);
    let luma = frame.data_mut(0);
    for y in 0..height as usize {
        for x in 0..width as usize {
            let inside = (square..square + 32).contains(&x) && (40..72).contains(&y);
            luma[y * stride + x] = if inside {
                235
            } else {
                ((x + y + shift) % 220 + 16) as u8
            };
        }
    }
    for plane in 1..3 {
        let stride = frame.stride(plane);
        let data = frame.data_mut(plane);
        for y in 0..(height as usize).div_ceil(2) {
            for x in 0..(width as usize).div_ceil(2) {
                data[y * stride + x] = if plane == 1 { 128 } else { (x % 64 + 96) as u8 };
            }
        }
    }
    frame
}

/// The output timestamp of frame `index`, starting well away from 0 like a real pipeline.
fn pts(index: i64) -> MediaTime {
    MediaTime::from_millis(5_000 + index * 1000 / FPS)
}

fn wait_for(mirror: &HlsMirror, what: &str, done: impl Fn(&HlsStatus) -> bool) -> HlsStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = mirror.status();
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Offers frames `0..count` one at a time, each after the previous was encoded, so none is
/// dropped (offer itself never waits).
fn offer_paced(mirror: &HlsMirror, width: u32, height: u32, count: i64, mut each: impl FnMut(i64)) {
    for index in 0..count {
        mirror.offer(&picture(width, height, index), pts(index));
        wait_for(mirror, "the frame to be encoded", |s| {
            s.frames_encoded + s.frames_dropped > index as u64
        });
        each(index);
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
        String::from_utf8_lossy(&output.stderr).trim().to_string(),
    )
}

fn probe(path: &Path, entries: &str) -> String {
    let path = path.to_str().unwrap();
    let (ok, stdout, stderr) = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            entries,
            "-of",
            "csv=p=0",
            path,
        ],
    );
    assert!(ok, "ffprobe {path}: {stderr}");
    stdout
}

#[test]
fn a_live_playlist_of_whole_keyframe_segments() {
    let parent = tempfile::tempdir().unwrap();
    let mirror = HlsMirror::start(HlsConfig {
        segment: Duration::from_secs(1),
        window: 3,
        parent_dir: Some(parent.path().to_path_buf()),
        // Plain HLS: the playlist exactly as before Low-Latency parts (those are tested in
        // the next test and in tests/hls_server.rs).
        part: None,
        ..HlsConfig::default()
    })
    .expect("the mirror starts");
    let dir = mirror.dir().to_path_buf();
    assert!(dir.starts_with(parent.path()) && dir.is_dir());

    // Ten seconds and two frames: the keyframe at 10 s closes the tenth segment when it is
    // written, which is when the frame after it gives it its duration.
    let frames = 10 * FPS + 2;
    let started = Instant::now();
    let mut averages = Vec::new();
    offer_paced(&mirror, 640, 480, frames, |_| {
        averages.push(mirror.status().encode_ms)
    });
    let elapsed = started.elapsed();
    let status = wait_for(&mirror, "segment 9", |s| s.latest_sequence == Some(9));
    eprintln!(
        "640x480: encode_ms {:.2} over the run ({:.2} at the end), wall {:.2} ms/frame with waits; {status:?}",
        averages.iter().sum::<f64>() / averages.len() as f64,
        status.encode_ms,
        elapsed.as_secs_f64() * 1000.0 / frames as f64
    );
    assert_eq!(status.frames_encoded, frames as u64);
    assert_eq!(status.frames_dropped, 0);
    assert_eq!(status.segments, 3);
    assert_eq!((status.width, status.height), (Some(640), Some(480)));
    assert!(status.encode_ms > 0.0);
    assert_eq!(status.error, None);

    // The playlist, whole.
    let playlist = std::fs::read_to_string(dir.join("live.m3u8")).unwrap();
    let lines: Vec<&str> = playlist.lines().collect();
    assert_eq!(
        lines[..5],
        [
            "#EXTM3U",
            "#EXT-X-VERSION:3",
            "#EXT-X-TARGETDURATION:1",
            "#EXT-X-MEDIA-SEQUENCE:7",
            "#EXT-X-INDEPENDENT-SEGMENTS",
        ],
        "{playlist}"
    );
    assert!(!playlist.contains("#EXT-X-ENDLIST"));
    let entries: Vec<&[&str]> = lines[5..].chunks(3).collect();
    assert_eq!(entries.len(), 3, "{playlist}");
    let mut starts = Vec::new();
    for (entry, sequence) in entries.iter().zip(7..) {
        assert!(
            entry[0].starts_with("#EXT-X-PROGRAM-DATE-TIME:20"),
            "{playlist}"
        );
        assert!(
            entry[0].ends_with('Z') && entry[0].len() == 49,
            "{}",
            entry[0]
        );
        let extinf: f64 = entry[1]
            .strip_prefix("#EXTINF:")
            .and_then(|d| d.strip_suffix(','))
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("EXTINF line: {}", entry[1]));
        assert!((extinf - 1.0).abs() <= 0.1, "{extinf}");
        assert_eq!(entry[2], format!("seg-{sequence}.ts"));

        // Each listed segment is a whole, decodable H.264 TS file starting on a keyframe.
        let path = dir.join(entry[2]);
        // ffprobe lists the stream once under the program and once on its own.
        let codecs = probe(&path, "stream=codec_name");
        let codecs: Vec<&str> = codecs.lines().filter(|l| !l.is_empty()).collect();
        assert!(
            !codecs.is_empty() && codecs.iter().all(|&c| c == "h264"),
            "{codecs:?}"
        );
        let (ok, _, stderr) = run(
            "ffmpeg",
            &[
                "-v",
                "error",
                "-i",
                path.to_str().unwrap(),
                "-f",
                "null",
                "-",
            ],
        );
        assert!(ok && stderr.is_empty(), "{}: {stderr}", entry[2]);
        let (ok, first_packet, stderr) = run(
            "ffprobe",
            &[
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-read_intervals",
                "%+#1",
                "-show_entries",
                "packet=flags",
                "-of",
                "csv=p=0",
                path.to_str().unwrap(),
            ],
        );
        assert!(ok, "{stderr}");
        assert!(
            first_packet.starts_with('K'),
            "{}: {first_packet}",
            entry[2]
        );
        let format = probe(&path, "format=start_time,duration");
        let (start, duration) = format.split_once(',').unwrap();
        let duration: f64 = duration.parse().unwrap();
        assert!((duration - 1.0).abs() <= 0.1, "{}: {duration}", entry[2]);
        starts.push(start.parse::<f64>().unwrap());
    }
    // One timeline across segments: each starts where the one before ended.
    for pair in starts.windows(2) {
        assert!((pair[1] - pair[0] - 1.0).abs() <= 0.05, "{starts:?}");
    }

    // FFmpeg's own HLS reader plays the playlist through its segments (the first 2.5 s, so
    // it needs no reload of this live playlist) without a complaint.
    let (ok, _, stderr) = run(
        "timeout",
        &[
            "20",
            "ffmpeg",
            "-v",
            "error",
            "-i",
            dir.join("live.m3u8").to_str().unwrap(),
            "-t",
            "2.5",
            "-f",
            "null",
            "-",
        ],
    );
    assert!(
        ok && stderr.is_empty(),
        "ffmpeg reading live.m3u8: {stderr}"
    );

    // Old segments are gone; the rest stay bounded (listed + retired + the playlist).
    let files = files_in(&dir);
    assert!(files.len() <= 2 * 3 + 1 + 1, "{files:?}");
    for gone in ["seg-0.ts", "seg-1.ts", "seg-2.ts"] {
        assert!(!files.contains(&gone.to_string()), "{files:?}");
    }
    assert!(files.iter().all(|f| !f.ends_with(".tmp")), "{files:?}");

    // Served from the directory: right types, 404 for traversal, deleted and future segments.
    let response = |name: &str| lenscast::http::hls::response(&dir, name);
    let live = response("live.m3u8");
    assert_eq!(live.status(), 200);
    assert_eq!(
        live.headers()[CONTENT_TYPE],
        "application/vnd.apple.mpegurl"
    );
    assert_eq!(live.headers()[CACHE_CONTROL], "no-cache");
    let segment = response("seg-9.ts");
    assert_eq!(segment.status(), 200);
    assert_eq!(segment.headers()[CONTENT_TYPE], "video/mp2t");
    assert!(segment.headers()[CACHE_CONTROL]
        .to_str()
        .unwrap()
        .contains("immutable"));
    let outside = parent.path().join("outside.ts");
    std::fs::write(&outside, "secret").unwrap();
    for name in [
        "seg-0.ts",
        "seg-10.ts",
        "../outside.ts",
        "..%2foutside.ts",
        "%2e%2e%2foutside.ts",
        "seg-9.ts/../live.m3u8",
        "live.m3u8.tmp",
    ] {
        assert_eq!(response(name).status(), 404, "{name}");
    }

    drop(mirror);
    assert!(
        !dir.exists(),
        "the run directory is removed with the mirror"
    );
    assert!(outside.exists());
}

#[test]
fn files_stay_bounded_over_a_minute_of_video() {
    let parent = tempfile::tempdir().unwrap();
    let mirror = HlsMirror::start(HlsConfig {
        segment: Duration::from_secs(1),
        window: 3,
        parent_dir: Some(parent.path().to_path_buf()),
        ..HlsConfig::default()
    })
    .unwrap();
    let dir = mirror.dir().to_path_buf();
    // (segment files, part files) each second.
    let mut counts = Vec::new();
    offer_paced(&mirror, 160, 120, 60 * FPS + 2, |index| {
        if index % FPS == 0 {
            let files = files_in(&dir);
            let segments = files.iter().filter(|f| f.starts_with("seg-")).count();
            let parts = files.iter().filter(|f| f.starts_with("part-")).count();
            let others = files.len() - segments - parts;
            assert!(others <= 1 && (others == 0 || files.contains(&"live.m3u8".to_string())));
            counts.push((segments, parts));
        }
    });
    let status = wait_for(&mirror, "segment 59", |s| s.latest_sequence == Some(59));
    eprintln!("160x120: {status:?}; (segments, parts) per second: {counts:?}");
    // At most 3 listed + 4 retired segments, from the 8th second on, and their 5 parts each,
    // plus 4 of the segment still open (its 5th part is cut with it, by the next frame).
    assert!(
        counts.iter().all(|&(s, p)| s <= 7 && p <= 5 * 7 + 4),
        "{counts:?}"
    );
    assert!(counts[10..].iter().all(|&c| c == (7, 39)), "{counts:?}");
    assert_eq!(status.segments_on_disk, 7);
    assert_eq!(status.parts_on_disk, 35);
    let playlist = std::fs::read_to_string(dir.join("live.m3u8")).unwrap();
    assert!(
        playlist.contains("#EXT-X-MEDIA-SEQUENCE:57\n"),
        "{playlist}"
    );
    // Parts are listed for the last three target durations only.
    assert!(!playlist.contains("part-56."), "{playlist}");
    assert!(
        playlist.contains("\"part-57.0.ts\",INDEPENDENT=YES"),
        "{playlist}"
    );
    assert!(playlist.contains("\"part-59.4.ts\""), "{playlist}");
    drop(mirror);
    assert!(!dir.exists());
    assert_eq!(files_in(parent.path()), Vec::<String>::new());
}

#[test]
fn offering_never_waits_and_counts_what_it_drops() {
    let parent = tempfile::tempdir().unwrap();
    let mirror = HlsMirror::start(HlsConfig {
        parent_dir: Some(parent.path().to_path_buf()),
        ..HlsConfig::default()
    })
    .unwrap();
    let pictures: Vec<VideoFrame> = (0..8).map(|i| picture(640, 480, i)).collect();
    let started = Instant::now();
    for index in 0..200 {
        mirror.offer(&pictures[index as usize % 8], pts(index));
    }
    let offering = started.elapsed();
    // 200 × 640x480 at ~5 ms each would take a second if offer waited for the encoder.
    assert!(offering < Duration::from_millis(300), "{offering:?}");
    let status = wait_for(&mirror, "every picture to be accounted for", |s| {
        s.frames_encoded + s.frames_dropped == 200
    });
    assert!(status.frames_dropped > 0, "{status:?}");
    assert!(status.frames_encoded >= 8, "{status:?}");
    let dir = mirror.dir().to_path_buf();
    // Stopped through a shared reference (as at shutdown, with the pipeline still holding an
    // `Arc`): the directory goes at once, and later offers are only counted.
    let mirror = std::sync::Arc::new(mirror);
    let elsewhere = mirror.clone();
    mirror.stop();
    assert!(!dir.exists());
    elsewhere.offer(&pictures[0], pts(1000));
    assert_eq!(elsewhere.status().frames_dropped, status.frames_dropped + 1);
    drop((mirror, elsewhere));
}

#[test]
fn the_first_size_stays_and_odd_sides_are_made_even() {
    let parent = tempfile::tempdir().unwrap();
    let mirror = HlsMirror::start(HlsConfig {
        parent_dir: Some(parent.path().to_path_buf()),
        ..HlsConfig::default()
    })
    .unwrap();
    for index in 0..2 * FPS + 2 {
        // A different size halfway: scaled to the first one's.
        let (width, height) = if index < FPS { (161, 121) } else { (320, 240) };
        mirror.offer(&picture(width, height, index), pts(index));
        wait_for(&mirror, "the frame to be encoded", |s| {
            s.frames_encoded + s.frames_dropped > index as u64
        });
    }
    let status = wait_for(&mirror, "two segments", |s| s.latest_sequence == Some(1));
    assert_eq!((status.width, status.height), (Some(160), Some(120)));
    assert_eq!((status.frames_dropped, status.error), (0, None));
    let size = probe(&mirror.dir().join("seg-1.ts"), "stream=width,height");
    assert!(
        size.lines().all(|l| l.is_empty() || l == "160,120"),
        "{size}"
    );
}

#[test]
fn the_mirror_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<HlsMirror>();
}

#[test]
fn a_missing_parent_directory_is_an_error() {
    let parent = tempfile::tempdir().unwrap();
    let missing = parent.path().join("not-there");
    let result = HlsMirror::start(HlsConfig {
        parent_dir: Some(missing.clone()),
        ..HlsConfig::default()
    });
    assert!(result.is_err());
    assert!(!missing.exists());
}

/// Seconds since midnight UTC of an RFC 3339 `…THH:MM:SS.mmmZ` date.
fn seconds_of_day(date: &str) -> f64 {
    let time = date.split('T').nth(1).unwrap().trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
}

#[test]
fn dates_stay_near_real_time_when_pictures_come_in_a_burst() {
    let parent = tempfile::tempdir().unwrap();
    let mirror = HlsMirror::start(HlsConfig {
        window: 6,
        parent_dir: Some(parent.path().to_path_buf()),
        ..HlsConfig::default()
    })
    .unwrap();
    // 5 s of media offered as fast as the encoder takes it: far less than 5 s of wall time.
    offer_paced(&mirror, 160, 120, 5 * FPS + 1, |_| {});
    wait_for(&mirror, "four segments", |s| s.segments >= 4);
    let playlist = std::fs::read_to_string(mirror.dir().join("live.m3u8")).unwrap();
    let newest = playlist
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:"))
        .unwrap()
        .to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        % 86_400.0;
    let ahead = seconds_of_day(&newest) - now;
    // Without re-anchoring, the newest segment would be dated ~3 s in the future.
    assert!(
        ahead < 1.0,
        "newest segment dated {ahead:.2} s ahead of now: {playlist}"
    );
}
