//! Audio in the HLS mirror: the source's Opus reaches HLS viewers as AAC-LC in the same
//! segments, in sync with the pictures, judged by the real ffprobe and ffmpeg.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use lenscast::source::Input;

/// The segment URIs the live playlist lists now, once it lists at least `count`.
async fn listed_segments(addr: SocketAddr, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (code, _, body) = http_get(addr, "/hls/live.m3u8", Duration::from_secs(2)).await;
        if code == 200 {
            let text = String::from_utf8(body).unwrap();
            let uris: Vec<String> = text
                .lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .map(str::to_string)
                .collect();
            if uris.len() >= count {
                return uris;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the playlist never listed {count} segments"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// ffprobe's stream codecs for a URL or file.
fn codecs(input: &str) -> Vec<String> {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "stream=codec_name,profile"])
        .args(["-of", "csv=p=0", input])
        .output()
        .expect("ffprobe runs");
    let mut codecs: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        // The program section prints an empty line.
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect();
    codecs.sort();
    codecs.dedup();
    codecs
}

/// The first pts (seconds) of the video and of the audio packets in a TS file, if any.
fn first_pts(bytes: &[u8]) -> (Option<f64>, Option<f64>) {
    let file = ts_file(bytes);
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "packet=codec_type,pts_time"])
        .args(["-of", "csv=p=0"])
        .arg(file.path())
        .output()
        .expect("ffprobe runs");
    let mut video: Option<f64> = None;
    let mut audio: Option<f64> = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let mut parts = line.split(',');
        let (Some(kind), Some(Ok(pts))) = (parts.next(), parts.next().map(str::parse::<f64>))
        else {
            continue;
        };
        // Demux order is not time order (a video PES completes late): take the minimum.
        let first = match kind {
            "video" => &mut video,
            "audio" => &mut audio,
            _ => continue,
        };
        *first = Some(first.map_or(pts, |f| f.min(pts)));
    }
    (video, audio)
}

/// The audio of a TS file decoded by ffmpeg: mono f32 samples at 48 kHz.
fn decoded_audio(bytes: &[u8]) -> Vec<f32> {
    let file = ts_file(bytes);
    let output = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(file.path())
        .args(["-vn", "-ac", "1", "-ar", "48000", "-f", "f32le", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn ts_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".ts").tempfile().unwrap();
    std::io::Write::write_all(&mut file, bytes).unwrap();
    file
}

fn rms(samples: &[f32]) -> f64 {
    let sum: f64 = samples.iter().map(|s| f64::from(*s).powi(2)).sum();
    (sum / samples.len().max(1) as f64).sqrt()
}

/// Checks the newest segments of a mirror whose source sends a sine: h264 and AAC-LC, each
/// segment's first audio within 40 ms of its first picture, and the audio is not silence.
async fn assert_segments_carry_the_sine(addr: SocketAddr, label: &str) {
    let uris = listed_segments(addr, 3).await;
    let url = format!("http://{addr}/hls/live.m3u8");
    let streams = codecs(&url);
    assert!(
        streams.iter().any(|s| s.starts_with("h264")),
        "{label}: {streams:?}"
    );
    assert!(
        streams.contains(&"aac,LC".to_string()),
        "{label}: {streams:?}"
    );

    for uri in uris.iter().rev().take(3) {
        let (code, _, bytes) = http_get(addr, &format!("/hls/{uri}"), Duration::from_secs(2)).await;
        assert_eq!(code, 200, "{label}: {uri}");
        let (video, audio) = first_pts(&bytes);
        let (video, audio) = (
            video.unwrap_or_else(|| panic!("{label}: {uri} has no video")),
            audio.unwrap_or_else(|| panic!("{label}: {uri} has no audio")),
        );
        let apart_ms = (audio - video).abs() * 1000.0;
        assert!(
            apart_ms <= 40.0,
            "{label}: {uri}: first audio at {audio:.3} s, first picture at {video:.3} s"
        );
        let samples = decoded_audio(&bytes);
        // At least most of a 1 s segment, and the 440 Hz sine is there (not silence).
        assert!(
            samples.len() > 30_000,
            "{label}: {uri}: {} samples",
            samples.len()
        );
        let level = rms(&samples);
        assert!(level > 0.05, "{label}: {uri}: audio RMS {level}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_from_the_source_reaches_hls_as_aac_in_sync() {
    let input = Input::File(fixture_path("face-opus.webm"));
    let server = start_with_hls(Some(input), 6, false).await;
    assert_segments_carry_the_sine(server.addr, "annotated").await;
    let hls = status(server.addr).await["hls"].clone();
    assert_eq!(hls["audio"], true, "{hls}");
    assert!(hls["audio_packets"].as_u64().unwrap() > 100, "{hls}");
    server.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_sources_with_audio_get_it_too() {
    let input = Input::File(fixture_path("face-opus.webm"));
    let server = start_with_hls(Some(input), 6, true).await;
    assert_segments_carry_the_sine(server.addr, "passthrough").await;
    server.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_without_audio_stays_video_only() {
    let input = Input::File(fixture_path("face.webm"));
    let server = start_with_hls(Some(input), 6, false).await;
    let uris = listed_segments(server.addr, 2).await;
    let streams = codecs(&format!("http://{}/hls/live.m3u8", server.addr));
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert!(streams[0].starts_with("h264"), "{streams:?}");
    let (code, _, bytes) = http_get(
        server.addr,
        &format!("/hls/{}", uris.last().unwrap()),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(first_pts(&bytes).1, None, "no audio packets");
    assert_eq!(status(server.addr).await["hls"]["audio"], false);
    server.shut_down().await;
}

/// The Opus track of a real file: its OpusHead and (time in ms, packet) pairs.
fn opus_of(name: &str) -> (bytes::Bytes, Vec<(i64, bytes::Bytes)>) {
    use lenscast::webm::{Event, StreamReader, TrackKind};
    let mut reader = StreamReader::new();
    reader.push(&std::fs::read(fixture_path(name)).unwrap());
    let mut head = None;
    let mut track = None;
    let mut packets = Vec::new();
    while let Some(event) = reader.next_event().unwrap() {
        match event {
            Event::Tracks(tracks) => {
                let opus = tracks
                    .tracks
                    .iter()
                    .find(|t| t.kind == TrackKind::Audio)
                    .unwrap();
                head = opus.codec_private.clone();
                track = Some(opus.number);
            }
            Event::Block(block) if Some(block.track) == track => {
                packets.push((block.time.as_millis(), block.frame()));
            }
            _ => {}
        }
    }
    (head.expect("an OpusHead"), packets)
}

/// A small grey picture with a bar that moves, so every frame differs.
fn picture(index: i64) -> ffmpeg_next::util::frame::Video {
    let mut frame =
        ffmpeg_next::util::frame::Video::new(ffmpeg_next::format::Pixel::YUV420P, 96, 64);
    for plane in 0..3 {
        let stride = frame.stride(plane);
        let rows = if plane == 0 { 64 } else { 32 };
        let data = frame.data_mut(plane);
        for y in 0..rows {
            for x in 0..stride {
                let bar = plane == 0 && (x as i64 + index * 2) % 48 < 8;
                data[y * stride + x] = if bar { 220 } else { 128 };
            }
        }
    }
    frame
}

/// A source with audio, then one without, then one with again (as when a presenter with a
/// microphone hands over to the demo and back): every segment keeps its AAC track, the
/// packets follow each other without a hole (an MSE player stops at a hole in its audio), and
/// the time without a source's audio is silence.
#[test]
fn the_aac_track_goes_on_through_a_source_without_audio() {
    use lenscast::clock::MediaTime;
    use lenscast::hls::{HlsConfig, HlsMirror};

    let parent = tempfile::tempdir().unwrap();
    let mirror = HlsMirror::start(HlsConfig {
        window: 20,
        parent_dir: Some(parent.path().to_path_buf()),
        ..HlsConfig::default()
    })
    .unwrap();
    let (head, opus) = opus_of("opus.webm");
    let start_ms = 5_000;
    let mut offered = 0u64;
    // Pictures every 33 ms from `from_ms` to `to_ms` (timeline ms), with the Opus packets of
    // the file played from `audio_from_ms` (if any) in time order between them.
    let mut play = |from_ms: i64, to_ms: i64, audio_from_ms: Option<i64>| {
        let mut audio = audio_from_ms
            .map(|at| {
                opus.iter()
                    .map(|(t, data)| (at + t, data.clone()))
                    .filter(|(t, _)| (from_ms..to_ms).contains(t))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .peekable();
        let mut t = from_ms;
        while t < to_ms {
            while let Some((at, data)) = audio.next_if(|(at, _)| *at <= t) {
                mirror.offer_audio(data, MediaTime::from_millis(start_ms + at));
            }
            mirror.offer(&picture(t / 33), MediaTime::from_millis(start_ms + t));
            offered += 1;
            let deadline = Instant::now() + Duration::from_secs(10);
            while {
                let s = mirror.status();
                s.frames_encoded + s.frames_dropped < offered
            } {
                assert!(Instant::now() < deadline, "the mirror stopped encoding");
                std::thread::sleep(Duration::from_millis(1));
            }
            t += 33;
        }
    };
    mirror.audio_source(Some(head.clone()));
    play(0, 2_000, Some(0));
    mirror.audio_source(None);
    play(2_000, 4_000, None);
    mirror.audio_source(Some(head.clone()));
    play(4_000, 7_000, Some(4_000));

    let status = mirror.status();
    assert!(status.audio, "{status:?}");
    assert_eq!(status.audio_dropped, 0, "{status:?}");
    let playlist = std::fs::read_to_string(mirror.dir().join("live.m3u8")).unwrap();
    let mut stream = Vec::new();
    let mut segments = 0;
    for uri in playlist.lines().filter(|l| !l.starts_with('#')) {
        let bytes = std::fs::read(mirror.dir().join(uri)).unwrap();
        assert!(first_pts(&bytes).1.is_some(), "{uri} has no audio");
        stream.extend_from_slice(&bytes);
        segments += 1;
    }
    assert!(segments >= 5, "{playlist}");

    // Packet after packet, 1024 samples (21.333 ms) apart, across every source change.
    let file = ts_file(&stream);
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "a"])
        .args(["-show_entries", "packet=pts_time", "-of", "csv=p=0"])
        .arg(file.path())
        .output()
        .unwrap();
    let times: Vec<f64> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.trim_end_matches(',').parse().ok())
        .collect();
    assert!(times.len() > 250, "{} audio packets", times.len());
    for pair in times.windows(2) {
        let gap_ms = (pair[1] - pair[0]) * 1000.0;
        assert!(
            (gap_ms - 21.333).abs() < 0.1,
            "a {gap_ms:.3} ms step at {:.3} s",
            pair[0]
        );
    }

    // The sine, then silence, then the sine (with 300 ms of slack at each change).
    // Seconds from the first audio packet (the mirror's time 0, give or take the encoder's
    // priming frame).
    let samples = decoded_audio(&stream);
    let span = |from: f64, to: f64| {
        let range = (from * 48_000.0) as usize..(to * 48_000.0) as usize;
        assert!(range.end <= samples.len(), "only {} samples", samples.len());
        rms(&samples[range])
    };
    assert!(span(0.3, 1.7) > 0.05, "first source");
    assert!(span(2.3, 3.7) < 0.005, "no source audio");
    assert!(span(4.3, 5.7) > 0.05, "second source");
}
