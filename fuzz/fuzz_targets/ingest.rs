//! The whole ingest path as one source sees it, bytes in and viewer chunks out: reader →
//! timestamp checks (SourceClock) → remuxer on the output timeline. A source is ended at its
//! first error, as the server does. Never a panic; the output always parses; and the output
//! timeline never jumps further than the checks allow.
#![no_main]

use lenscast_webm::clock::{MediaTime, SourceClock, MAX_JUMP_AHEAD};
use lenscast_webm::webm::{Event, LiveMuxer, StreamReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = StreamReader::with_max_element(64 * 1024);
    let mut clock = SourceClock::new();
    let mut muxer = LiveMuxer::new();
    let mut out = Vec::new();
    // Two passes over the same bytes: a source, then the next one on the same timeline.
    for _ in 0..2 {
        reader.push(data);
        loop {
            let event = match reader.next_event() {
                Ok(Some(event)) => event,
                Ok(None) | Err(_) => break,
            };
            match &event {
                Event::Header { .. } => clock.restart(),
                Event::ClusterStart { time, .. } if clock.check(*time).is_err() => break,
                Event::Block(block) if clock.check(block.time).is_err() => break,
                _ => {}
            }
            muxer.push(event, &mut out);
        }
        muxer.end_source(&mut out);
        reader = StreamReader::with_max_element(64 * 1024);
        clock = SourceClock::new();
    }
    let mut viewer = StreamReader::new();
    let mut last: Option<MediaTime> = None;
    for output in &out {
        viewer.push(output.bytes());
        while let Some(event) = viewer.next_event().expect("viewer chunks are valid WebM") {
            if let Event::ClusterStart { time, .. } = event {
                if let Some(last) = last {
                    assert!(
                        time - last <= MAX_JUMP_AHEAD + MAX_JUMP_AHEAD,
                        "the output jumped from {last} to {time}"
                    );
                }
                last = Some(time);
            }
        }
    }
});
