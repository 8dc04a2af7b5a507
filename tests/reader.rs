//! The EBML stream reader on real files made by ffmpeg, gst-launch and Chrome's MediaRecorder:
//! fed whole, byte by byte, in random chunks and in the chunks MediaRecorder really sent, it
//! must report the same events, and they must agree with webm-iterable's decoder.

use bytes::BytesMut;
use ebml_iterable::TagDecoder;
use lenscast::webm::{Event, StreamReader, TrackKind};
use proptest::prelude::*;
use webm_iterable::matroska_spec::{Block as WiBlock, Master, MatroskaSpec, SimpleBlock};

/// Fixtures the reader must handle, with what each must contain.
const FIXTURES: &[(&str, &[&str])] = &[
    ("vp8.webm", &["V_VP8"]),
    ("vp9.webm", &["V_VP9"]),
    ("vp8-opus.webm", &["V_VP8", "A_OPUS"]),
    ("vp9-opus.webm", &["V_VP9", "A_OPUS"]),
    ("opus.webm", &["A_OPUS"]),
    ("gst-vp8-opus.webm", &["V_VP8", "A_OPUS"]),
    ("gst-opus.webm", &["A_OPUS"]),
    ("mediarecorder-vp8-opus.webm", &["A_OPUS", "V_VP8"]),
    ("face.webm", &["V_VP8"]),
];

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What we compare across chunkings and against webm-iterable: cluster timestamps and, for
/// every block, (track, absolute timestamp, keyframe, size of the whole element).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Cluster(u64),
    Block {
        track: u64,
        timecode: i64,
        keyframe: bool,
    },
}

fn read_in_chunks(bytes: &[u8], sizes: &mut dyn Iterator<Item = usize>) -> Vec<Event> {
    let mut reader = StreamReader::new();
    let mut events = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        reader.push(&rest[..n]);
        rest = &rest[n..];
        while let Some(event) = reader.next_event().expect("fixture parses") {
            events.push(event);
        }
        // Bounded buffering: never more than one element plus the chunk just pushed.
        assert!(reader.buffered() <= n + 2 * 1024 * 1024);
    }
    events
}

fn seen(events: &[Event]) -> Vec<Seen> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ClusterStart { timecode, .. } => Some(Seen::Cluster(*timecode)),
            Event::Block(b) => Some(Seen::Block {
                track: b.track,
                timecode: b.timecode,
                keyframe: b.keyframe,
            }),
            _ => None,
        })
        .collect()
}

/// The same facts, as webm-iterable's push decoder sees them.
fn seen_by_webm_iterable(bytes: &[u8]) -> (Vec<Seen>, Vec<String>) {
    let mut decoder = TagDecoder::<MatroskaSpec>::new(&[MatroskaSpec::BlockGroup(Master::Start)]);
    let mut input = BytesMut::from(bytes);
    let mut out = Vec::new();
    let mut codecs = Vec::new();
    let mut cluster = 0u64;
    loop {
        let tag = match decoder.decode(&mut input).expect("webm-iterable parses") {
            Some(tag) => tag,
            None => match decoder
                .decode_eof(&mut input)
                .expect("webm-iterable parses")
            {
                Some(tag) => tag,
                None => break,
            },
        };
        match &tag.tag {
            MatroskaSpec::CodecID(codec) => codecs.push(codec.trim_end_matches('\0').to_string()),
            MatroskaSpec::Timestamp(t) => {
                cluster = *t;
                out.push(Seen::Cluster(*t));
            }
            MatroskaSpec::SimpleBlock(_) => {
                let block = SimpleBlock::try_from(&tag.tag).expect("valid SimpleBlock");
                out.push(Seen::Block {
                    track: block.track,
                    timecode: cluster as i64 + block.timestamp as i64,
                    keyframe: block.keyframe,
                });
            }
            MatroskaSpec::BlockGroup(Master::Full(children)) => {
                let block = children
                    .iter()
                    .find(|c| matches!(c, MatroskaSpec::Block(_)))
                    .expect("BlockGroup has a Block");
                let block = WiBlock::try_from(block).expect("valid Block");
                let referenced = children
                    .iter()
                    .any(|c| matches!(c, MatroskaSpec::ReferenceBlock(_)));
                out.push(Seen::Block {
                    track: block.track,
                    timecode: cluster as i64 + block.timestamp as i64,
                    keyframe: !referenced,
                });
            }
            _ => {}
        }
    }
    (out, codecs)
}

#[test]
fn fixtures_parse_whole_and_agree_with_webm_iterable() {
    for (name, codecs) in FIXTURES {
        let bytes = fixture(name);
        let events = read_in_chunks(&bytes, &mut std::iter::empty());
        let ours = seen(&events);
        let tracks = events
            .iter()
            .find_map(|e| match e {
                Event::Tracks(t) => Some(t.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{name}: no Tracks"));
        let our_codecs: Vec<&str> = tracks.tracks.iter().map(|t| t.codec_id.as_str()).collect();
        assert_eq!(&our_codecs, codecs, "{name}: codecs");
        if let Some(video) = tracks.video() {
            assert!(
                video.width.unwrap() > 0 && video.height.unwrap() > 0,
                "{name}"
            );
        }
        let blocks = ours
            .iter()
            .filter(|s| matches!(s, Seen::Block { .. }))
            .count();
        assert!(blocks > 20, "{name}: only {blocks} blocks");
        let (theirs, their_codecs) = seen_by_webm_iterable(&bytes);
        assert_eq!(
            ours, theirs,
            "{name}: our events differ from webm-iterable's"
        );
        assert_eq!(our_codecs, their_codecs, "{name}: codec ids differ");
        // Every video stream must start with a keyframe, or no viewer could start at the top.
        if let Some(video) = tracks.video() {
            let first = events.iter().find_map(|e| match e {
                Event::Block(b) if b.track == video.number => Some(b.keyframe),
                _ => None,
            });
            assert_eq!(first, Some(true), "{name}: first video block is a keyframe");
        }
    }
}

#[test]
fn byte_at_a_time_matches_whole() {
    for (name, _) in FIXTURES {
        let bytes = fixture(name);
        let whole = read_in_chunks(&bytes, &mut std::iter::empty());
        let single = read_in_chunks(&bytes, &mut std::iter::repeat(1));
        assert_eq!(whole, single, "{name}");
    }
}

#[test]
fn mediarecorder_chunks_as_recorded() {
    // The exact chunk sizes Chrome's MediaRecorder delivered (the first can be 1 byte).
    let bytes = fixture("mediarecorder-vp8-opus.webm");
    let sizes: Vec<usize> =
        serde_json::from_slice(&fixture("mediarecorder-vp8-opus.chunks.json")).unwrap();
    assert_eq!(sizes.iter().sum::<usize>(), bytes.len());
    let recorded = read_in_chunks(&bytes, &mut sizes.into_iter());
    let whole = read_in_chunks(&bytes, &mut std::iter::empty());
    assert_eq!(recorded, whole);
    let tracks = whole
        .iter()
        .find_map(|e| match e {
            Event::Tracks(t) => Some(t.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(tracks.video().map(|t| t.kind), Some(TrackKind::Video));
    assert!(whole.iter().any(|e| matches!(
        e,
        Event::SegmentStart {
            size: lenscast::webm::ebml::Size::Unknown
        }
    )));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_chunks_match_whole(
        fixture_index in 0..FIXTURES.len(),
        sizes in proptest::collection::vec(1usize..5000, 1..64),
    ) {
        let (name, _) = FIXTURES[fixture_index];
        let bytes = fixture(name);
        let whole = read_in_chunks(&bytes, &mut std::iter::empty());
        let chunked = read_in_chunks(&bytes, &mut sizes.into_iter().cycle());
        prop_assert_eq!(whole, chunked);
    }
}

/// Hostile inputs built from a real file: each must give a typed error, never a panic, and
/// never make the reader buffer without bound.
#[test]
fn hostile_inputs_are_refused_cleanly() {
    let good = fixture("vp8.webm");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\x00\x00\x00garbage".to_vec()),
        (
            "http request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("truncated header then zero", {
            let mut v = good[..40].to_vec();
            v.extend_from_slice(&[0u8; 64]);
            v
        }),
        ("huge element", {
            // EBML header of the real file, then a SimpleBlock-sized Tracks claiming 1 GiB.
            let mut reader = StreamReader::new();
            reader.push(&good);
            let mut header_len = 0;
            while let Some(e) = reader.next_event().unwrap() {
                if let Event::Header { bytes, .. } = e {
                    header_len = bytes.len();
                    break;
                }
            }
            let mut v = good[..header_len].to_vec();
            v.extend_from_slice(&[
                0x18, 0x53, 0x80, 0x67, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            ]);
            v.extend_from_slice(&[0x16, 0x54, 0xAE, 0x6B, 0x08, 0x40, 0, 0, 0, 0, 0, 0]);
            v.extend_from_slice(&[0u8; 4096]);
            v
        }),
    ];
    for (name, bytes) in cases {
        let mut reader = StreamReader::new();
        let mut result = Ok(None);
        for chunk in bytes.chunks(7) {
            reader.push(chunk);
            result = loop {
                match reader.next_event() {
                    Ok(Some(_)) => continue,
                    other => break other,
                }
            };
            if result.is_err() {
                break;
            }
        }
        assert!(result.is_err(), "{name}: must be refused, got {result:?}");
        assert!(
            reader.buffered() < 8192,
            "{name}: buffered {}",
            reader.buffered()
        );
    }
}
