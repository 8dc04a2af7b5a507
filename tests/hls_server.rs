//! The HLS mirror as viewers and caches see it: through the real HTTP routes, judged by the
//! real ffmpeg; Low-Latency HLS's blocking reloads and hinted parts as hls.js and Safari use
//! them; a download that stops reading is dropped after `--viewer-timeout`; plus a soak of the
//! real binary for disk and memory creep.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use lenscast::hls::HlsConfig;
use lenscast::http::HttpConfig;
use lenscast::server::ServerConfig;
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
    // them; their parts go with them.
    let (segments_on_disk, parts_on_disk) = published_files(server.hls.as_ref().unwrap().dir());
    assert!(
        segments_on_disk <= 2 * 3 + 3,
        "{segments_on_disk} segments for a 3-segment window"
    );
    assert!(
        parts_on_disk <= PARTS_PER_SEGMENT * (segments_on_disk + 1),
        "{parts_on_disk} parts for {segments_on_disk} segments"
    );

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

/// (segment files, part files) in the HLS directory, not counting a `.tmp` caught mid-write
/// (renamed a moment later).
fn published_files(dir: &std::path::Path) -> (usize, usize) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|name| !name.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default();
    let count = |prefix: &str| names.iter().filter(|n| n.starts_with(prefix)).count();
    (count("seg-"), count("part-"))
}

/// Parts in a 1 s segment (200 ms nominal; a few more at odd frame rates, never 2 × as many).
const PARTS_PER_SEGMENT: usize = 6;

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
    // A source with audio, so the mirror's AAC path and its LL-HLS parts run the whole time.
    let input = fixture_path("face-opus.webm");
    let (server, url) = spawn_binary(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--input",
            input.to_str().unwrap(),
        ],
        Stdio::null(),
    );
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
        let (segments, parts) = published_files(&hls_dir);
        assert!(
            parts <= PARTS_PER_SEGMENT * (segments + 1),
            "{parts} parts for {segments} segments"
        );
        let files = segments;
        // Keep fetching the playlist like an HLS player would.
        let (code, _, _) = http_get(addr, "/hls/live.m3u8", Duration::from_secs(2)).await;
        assert_eq!(code, 200);
        samples.push((started.elapsed().as_secs(), files, rss_kib(pid)));
    }
    eprintln!("soak samples (s, segment files, rss KiB): {samples:?}");
    // Window 6 (the default): 2 × 6 + 1 segments by the retention rule, up to 2 more waiting
    // for the next publish to delete them (their parts were checked against them above).
    assert!(
        samples.iter().all(|(_, files, _)| *files <= 2 * 6 + 3),
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
    let hls = status(addr).await["hls"].clone();
    assert_eq!(hls["audio"], true, "{hls}");
    assert_eq!(hls["error"], serde_json::Value::Null, "{hls}");
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

/// A part as (media sequence number, index in its segment).
type PartId = (u64, u64);

/// The newest part the playlist lists and the part its preload hint names.
fn newest_part_and_hint(text: &str) -> (Option<PartId>, Option<PartId>) {
    let parse = |uri: &str| {
        let (msn, index) = uri
            .strip_prefix("part-")?
            .strip_suffix(".ts")?
            .split_once('.')?;
        Some((msn.parse().ok()?, index.parse().ok()?))
    };
    fn uri_of(line: &str) -> Option<&str> {
        line.split("URI=\"").nth(1)?.split('"').next()
    }
    let newest = text
        .lines()
        .filter(|l| l.starts_with("#EXT-X-PART:"))
        .filter_map(uri_of)
        .filter_map(parse)
        .next_back();
    let hint = text
        .lines()
        .find(|l| l.starts_with("#EXT-X-PRELOAD-HINT:TYPE=PART,"))
        .and_then(uri_of)
        .and_then(parse);
    (newest, hint)
}

/// Whether the playlist lists part `uri` (in an EXT-X-PART tag, not merely as the hint).
fn lists_part(text: &str, uri: &str) -> bool {
    let attribute = format!("URI=\"{uri}\"");
    text.lines()
        .any(|l| l.starts_with("#EXT-X-PART:") && l.contains(&attribute))
}

async fn playlist_text(addr: SocketAddr, query: &str) -> (u16, String, String, Duration) {
    let started = Instant::now();
    let (code, head, body) = http_get(
        addr,
        &format!("/hls/live.m3u8{query}"),
        Duration::from_secs(10),
    )
    .await;
    (
        code,
        head.to_ascii_lowercase(),
        String::from_utf8_lossy(&body).to_string(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_latency_hls_blocking_reloads_and_hinted_parts() {
    let config = ServerConfig {
        hls: Some(HlsConfig {
            window: 3,
            ..HlsConfig::default()
        }),
        http: HttpConfig {
            cors_origins: vec!["https://player.example".to_string()],
            ..HttpConfig::default()
        },
        ..ServerConfig::default()
    };
    let server = start_server(config, Some(Input::File(fixture_path("face.webm")))).await;
    let addr = server.addr;
    wait_for_segments(addr, 2).await;
    let (_, _, text, _) = playlist_text(addr, "").await;
    assert!(
        text.contains("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.002\n"),
        "{text}"
    );
    assert!(
        text.contains("#EXT-X-PART-INF:PART-TARGET=0.334\n"),
        "{text}"
    );
    assert!(text.contains(",INDEPENDENT=YES\n"), "{text}");

    // A blocking reload for the part after the newest: answered once the playlist lists it
    // (or the segment ended instead, which is "later" too), and within about a part's time.
    for _ in 0..6 {
        let (_, _, text, _) = playlist_text(addr, "").await;
        let ((msn, index), _) = match newest_part_and_hint(&text) {
            (Some(newest), hint) => (newest, hint),
            (None, _) => panic!("no parts listed: {text}"),
        };
        // As hls.js asks: the next part of the open segment, or the first of the next one
        // when the newest part ended a segment.
        let (msn, part) = if text.contains(&format!("\nseg-{msn}.ts\n")) {
            (msn + 1, 0)
        } else {
            (msn, index + 1)
        };
        let query = format!("?_HLS_msn={msn}&_HLS_part={part}");
        let (code, head, after, waited) = playlist_text(addr, &query).await;
        assert_eq!(code, 200, "{query}: {after}");
        // Any cache may share it (one origin answer for every player waiting for the part).
        assert!(head.contains("cache-control: public, max-age=1"), "{head}");
        let next = format!("part-{msn}.{part}.ts");
        let ended = format!("\nseg-{msn}.ts\n");
        assert!(
            lists_part(&after, &next) || (after.contains(&ended) && !text.contains(&ended)),
            "{query} answered without the part: {after}"
        );
        assert!(
            !lists_part(&text, &next),
            "the part was already listed: {text}"
        );
        assert!(waited < Duration::from_millis(1500), "{query}: {waited:?}");
    }
    // _HLS_msn alone waits for the whole segment.
    let (_, _, text, _) = playlist_text(addr, "").await;
    // The hint always names a part of the segment being written.
    let (_, Some((open_msn, _))) = newest_part_and_hint(&text) else {
        panic!("{text}");
    };
    let (code, _, after, waited) = playlist_text(addr, &format!("?_HLS_msn={open_msn}")).await;
    assert_eq!(code, 200);
    assert!(
        after.contains(&format!("\nseg-{open_msn}.ts\n")),
        "{waited:?}: {after}"
    );
    assert!(waited < Duration::from_millis(2500), "{waited:?}");

    // Nonsense and the too-far future are refused at once (RFC 8216bis 6.2.5.2).
    for (query, why) in [
        (
            format!("?_HLS_msn={}", open_msn + 10),
            "more than two segments",
        ),
        (
            format!("?_HLS_msn={}&_HLS_part=50", open_msn + 1),
            "parts past",
        ),
        ("?_HLS_part=1".to_string(), "_HLS_part needs _HLS_msn"),
        ("?_HLS_msn=abc".to_string(), "decimal number"),
        ("?_HLS_msn=-1".to_string(), "decimal number"),
        ("?_HLS_msn=1&_HLS_msn=2".to_string(), "twice"),
    ] {
        let (code, head, body, waited) = playlist_text(addr, &query).await;
        assert_eq!(code, 400, "{query}: {body}");
        assert!(body.contains(why), "{query}: {body}");
        assert!(head.contains("cache-control: no-store"), "{head}");
        assert!(waited < Duration::from_millis(300), "{query}: {waited:?}");
    }
    // An unrelated query is no directive: the playlist at once, as before.
    let (code, _, body, waited) = playlist_text(addr, "?t=12345").await;
    assert_eq!(code, 200);
    assert!(body.starts_with("#EXTM3U\n") && waited < Duration::from_millis(300));

    // The hinted part, requested before it exists, is sent once written. A hint for a 6th
    // part may end with the segment instead (404 then), so take one from inside a segment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, text, _) = playlist_text(addr, "").await;
        let (_, Some((msn, index))) = newest_part_and_hint(&text) else {
            panic!("no preload hint: {text}");
        };
        if !(1..=3).contains(&index) {
            assert!(Instant::now() < deadline, "no hint inside a segment");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let path = format!("/hls/part-{msn}.{index}.ts");
        let started = Instant::now();
        let (code, head, body) = http_get(addr, &path, Duration::from_secs(5)).await;
        let waited = started.elapsed();
        assert_eq!(code, 200, "{path} after {waited:?}");
        assert!(head.to_ascii_lowercase().contains("immutable"), "{head}");
        assert!(waited < Duration::from_millis(1000), "{path}: {waited:?}");
        assert!(
            !body.is_empty() && body.len() % 188 == 0 && body[0] == 0x47,
            "{path}: {} bytes",
            body.len()
        );
        // It is the part the playlist then lists, byte for byte the same file.
        let (_, _, after, _) = playlist_text(addr, "").await;
        assert!(
            lists_part(&after, &format!("part-{msn}.{index}.ts")),
            "{after}"
        );
        break;
    }
    // A part far from the hint is no wait: 404 at once.
    let started = Instant::now();
    let (code, _, _) = http_get(addr, "/hls/part-999999.0.ts", Duration::from_secs(5)).await;
    assert_eq!(code, 404);
    assert!(started.elapsed() < Duration::from_millis(300));

    // Blocking answers still carry CORS for the listed origin, and HEAD blocks the same way.
    let (_, _, text, _) = playlist_text(addr, "").await;
    let (Some((msn, index)), _) = newest_part_and_hint(&text) else {
        panic!("{text}");
    };
    let query = format!("/hls/live.m3u8?_HLS_msn={msn}&_HLS_part={}", index + 1);
    let origin = [("Origin", "https://player.example")];
    let (code, head, _) = http_request(addr, "GET", &query, &origin, Duration::from_secs(5)).await;
    assert_eq!(code, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("access-control-allow-origin: https://player.example"),
        "{head}"
    );
    let (code, head, body) =
        http_request(addr, "HEAD", &query, &origin, Duration::from_secs(5)).await;
    assert_eq!((code, body.len()), (200, 0), "{head}");

    // Plain HLS players read the same playlist: ffmpeg ignores the part tags and plays the
    // whole segments.
    assert_ffmpeg_reads_cleanly(format!("http://{addr}/hls/live.m3u8")).await;
    let status = status(addr).await;
    assert_eq!(status["hls"]["part_duration_s"], 0.2);
    assert!(status["hls"]["parts_on_disk"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_hls_download_is_dropped_after_the_viewer_timeout() {
    let config = ServerConfig {
        passthrough: true,
        hls: Some(HlsConfig {
            window: 3,
            ..HlsConfig::default()
        }),
        connections: lenscast::http::conn::ConnLimits {
            write_timeout: Duration::from_secs(1),
            ..Default::default()
        },
        ..ServerConfig::default()
    };
    let server = start_server(config, Some(Input::File(fixture_path("vp8-opus.webm")))).await;
    let addr = server.addr;
    let (_, segments, _) = wait_for_segments(addr, 1).await;
    let segment = format!("/hls/{}", segments[0].1);
    // The same segment asked 40 times, pipelined, on a socket that never reads: far more than
    // the kernel's buffers hold, however small the segment, so the server's writes must wait.
    let request = format!("GET {segment} HTTP/1.1\r\nHost: {addr}\r\n\r\n").repeat(40);
    let before = status(addr).await["slow_viewers_dropped"].as_u64().unwrap();
    let mut stalled = stalled_connection(addr, &request).await;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    loop {
        let dropped = status(addr).await["slow_viewers_dropped"].as_u64().unwrap();
        if dropped > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a download that reads nothing is never dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "dropped before --viewer-timeout: {waited:?}"
    );
    // The server closed it: what the kernel held drains, then the stream ends.
    let mut sink = Vec::new();
    let drained = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut stalled, &mut sink),
    )
    .await;
    assert!(drained.is_ok(), "the stalled connection is still open");
    // Everyone else is served as before.
    let (code, _, body) = http_get(addr, &segment, Duration::from_secs(2)).await;
    assert_eq!(code, 200);
    assert!(!body.is_empty());
    server.shut_down().await;
}
