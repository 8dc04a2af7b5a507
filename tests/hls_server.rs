//! The HLS mirror as viewers and caches see it: through the real HTTP routes, judged by the
//! real ffmpeg; plus a soak of the real binary for disk and memory creep.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use lenscast::source::Input;

/// (media sequence, [(EXTINF seconds, uri)], target duration) of a live playlist.
fn parse_playlist(text: &str) -> (u64, Vec<(f64, String)>, u64) {
    let mut sequence = None;
    let mut target = None;
    let mut segments = Vec::new();
    let mut duration = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            sequence = v.parse().ok();
        } else if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
            target = v.parse().ok();
        } else if let Some(v) = line.strip_prefix("#EXTINF:") {
            duration = v.trim_end_matches(',').parse().ok();
        } else if !line.starts_with('#') && !line.is_empty() {
            segments.push((
                duration.take().expect("EXTINF before URI"),
                line.to_string(),
            ));
        }
    }
    assert!(text.starts_with("#EXTM3U\n"), "{text}");
    assert!(text.contains("#EXT-X-INDEPENDENT-SEGMENTS"), "{text}");
    assert!(text.contains("#EXT-X-PROGRAM-DATE-TIME:"), "{text}");
    assert!(
        !text.contains("#EXT-X-ENDLIST"),
        "a live playlist never ends: {text}"
    );
    (
        sequence.expect("media sequence"),
        segments,
        target.expect("target duration"),
    )
}

async fn playlist(addr: SocketAddr) -> (u64, Vec<(f64, String)>, u64) {
    let (code, head, body) = http_get(addr, "/hls/live.m3u8", Duration::from_secs(2)).await;
    assert_eq!(code, 200, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-type: application/vnd.apple.mpegurl"),
        "{head}"
    );
    assert!(
        head.contains("cache-control: no-cache") || head.contains("max-age=1"),
        "{head}"
    );
    parse_playlist(&String::from_utf8(body).unwrap())
}

/// Waits until the playlist lists at least `segments` segments.
async fn wait_for_segments(addr: SocketAddr, segments: usize) -> (u64, Vec<(f64, String)>, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, _, _) = http_get(addr, "/hls/live.m3u8", Duration::from_secs(2)).await;
        if code == 200 {
            let listed = playlist(addr).await;
            if listed.1.len() >= segments {
                return listed;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the playlist never reached {segments} segments"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_playlist_plays_in_ffmpeg_and_slides() {
    let server = start_with_hls(Some(Input::File(fixture_path("face.webm"))), 3, false).await;
    let addr = server.addr;
    let (first_sequence, segments, target) = wait_for_segments(addr, 3).await;
    assert_eq!(target, 1);
    for (duration, uri) in &segments {
        assert!((0.9..=1.1).contains(duration), "{uri}: {duration} s");
        let (code, head, body) =
            http_get(addr, &format!("/hls/{uri}"), Duration::from_secs(2)).await;
        assert_eq!(code, 200);
        let head = head.to_ascii_lowercase();
        assert!(head.contains("content-type: video/mp2t"), "{head}");
        assert!(head.contains("immutable"), "{head}");
        assert!(body.len() > 10_000, "{uri} is only {} bytes", body.len());
    }

    // The real ffmpeg CLI reads the live playlist over HTTP and decodes it without an error.
    let url = format!("http://{addr}/hls/live.m3u8");
    assert_ffmpeg_reads_cleanly(url).await;

    // The window slides: the sequence advances and the oldest segment is deleted (404).
    let first_uri = segments[0].1.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (sequence, _, _) = playlist(addr).await;
        let (code, _, _) =
            http_get(addr, &format!("/hls/{first_uri}"), Duration::from_secs(2)).await;
        if sequence > first_sequence && code == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{first_uri} was never removed (sequence {sequence})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A removed segment stays available for its duration plus the playlist's (the HLS spec's
    // rule for servers): 2 × window + 1 segments, up to 2 more until the next publish deletes
    // them, and the playlist.
    let files = published_files(server.hls.as_ref().unwrap().dir());
    assert!(files <= 2 * 3 + 4, "{files} files for a 3-segment window");

    // Not yet written, or outside the directory: 404, never another file.
    for path in [
        "/hls/seg-999999.ts",
        "/hls/../Cargo.toml",
        "/hls/..%2fCargo.toml",
        "/hls/%2e%2e%2fCargo.toml",
        "/hls/live.m3u8.tmp",
        "/hls/seg-1.ts.tmp",
        "/hls/",
    ] {
        let (code, _, _) = http_get(addr, path, Duration::from_secs(2)).await;
        assert_eq!(code, 404, "{path}");
    }
    let status = status(addr).await;
    assert!(status["hls"]["latest_sequence"].as_u64().unwrap() >= first_sequence);
    assert!(status["hls"]["encode_ms"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passthrough_source_gets_a_mirror_too() {
    let server = start_with_hls(Some(Input::File(fixture_path("vp8-opus.webm"))), 3, true).await;
    let (_, segments, _) = wait_for_segments(server.addr, 2).await;
    let (code, _, body) = http_get(
        server.addr,
        &format!("/hls/{}", segments[0].1),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(code, 200);
    let mut file = tempfile::Builder::new().suffix(".ts").tempfile().unwrap();
    std::io::Write::write_all(&mut file, &body).unwrap();
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,width",
        ])
        .args(["-of", "csv=p=0"])
        .arg(file.path())
        .output()
        .unwrap();
    let probed = String::from_utf8_lossy(&probe.stdout);
    assert_eq!(probed.lines().next(), Some("h264,320"), "{probed}");
    // Viewers of the WebM stream still get the source's own bytes (VP8 + Opus, untouched).
    let status = status(server.addr).await;
    assert_eq!(status["mode"], "passthrough");
    assert_eq!(
        status["source"]["stream"]["mime"],
        "video/webm; codecs=\"vp8,opus\""
    );
}

/// Files in the HLS directory, not counting a `.tmp` caught mid-write (renamed a moment later).
fn published_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().ends_with(".tmp"))
                .count()
        })
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Several minutes of the real binary: the HLS directory holds a bounded number of files and
/// the server's memory stops growing once warm. LENSCAST_SOAK_SECONDS overrides the length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hours_of_streaming_do_not_creep_soak() {
    let seconds: u64 = std::env::var("LENSCAST_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    let (server, url) = spawn_binary(&["serve", "--listen", "127.0.0.1:0"], Stdio::null());
    let pid = server.id();
    let server = KillOnDrop(server);
    let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    // A viewer on each path for the whole time, so every part of the server works.
    let webm_viewer = tokio::spawn(ws_collect(addr, Duration::from_secs(seconds)));
    let hls_dir = hls_dir_of(pid).await;
    assert!(
        status(addr).await["hls"].get("dir").is_none(),
        "/api/status shows a server path"
    );
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let files = published_files(&hls_dir);
        // Keep fetching the playlist like an HLS player would.
        let (code, _, _) = http_get(addr, "/hls/live.m3u8", Duration::from_secs(2)).await;
        assert_eq!(code, 200);
        samples.push((started.elapsed().as_secs(), files, rss_kib(pid)));
    }
    eprintln!("soak samples (s, files, rss KiB): {samples:?}");
    // Window 6 (the default): 2 × 6 + 1 segments by the retention rule, up to 2 more waiting
    // for the next publish to delete them, and the playlist.
    assert!(
        samples.iter().all(|(_, files, _)| *files <= 2 * 6 + 4),
        "{samples:?}"
    );
    // And no upward trend: the second half never holds more than the first half did.
    let half = samples.len() / 2;
    let first_max = samples[..half].iter().map(|s| s.1).max().unwrap();
    let second_max = samples[half..].iter().map(|s| s.1).max().unwrap();
    assert!(second_max <= first_max, "{samples:?}");
    // Memory: once warm (after the first third), the RSS may wobble but not climb.
    let warm = samples[samples.len() / 3].2;
    let last = samples.last().unwrap().2;
    assert!(
        last <= warm + warm / 10 + 8 * 1024,
        "RSS grew from {warm} KiB to {last} KiB: {samples:?}"
    );
    let received = webm_viewer.await.unwrap();
    assert!(!received.closed);
    assert_decodes_from_start("soak viewer", &received.bytes);
    drop(server);
    // SIGKILL skips cleanup; a normal stop is tested in the main binary's shutdown path.
    let _ = std::fs::remove_dir_all(&hls_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hls_directory_is_removed_when_the_server_stops() {
    let (server, url) = spawn_binary(&["serve", "--listen", "127.0.0.1:0"], Stdio::null());
    let mut server = KillOnDrop(server);
    let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let (_, segments, _) = wait_for_segments(addr, 1).await;
    let dir = hls_dir_of(server.0.id()).await;
    assert!(dir.join(&segments[0].1).is_file());
    sigterm(&server.0);
    let exited = tokio::task::spawn_blocking(move || server.0.wait().unwrap())
        .await
        .unwrap();
    assert!(exited.success(), "{exited:?}");
    assert!(!dir.exists(), "{} is still there", dir.display());
}
