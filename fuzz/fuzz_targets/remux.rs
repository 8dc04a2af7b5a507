//! The remuxer on whatever the reader makes of arbitrary bytes: it must never panic, and what
//! it writes for viewers must always be WebM our reader accepts from its first byte.
#![no_main]

use lenscast_webm::webm::{LiveMuxer, StreamReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = StreamReader::with_max_element(64 * 1024);
    reader.push(data);
    let mut muxer = LiveMuxer::new();
    let mut out = Vec::new();
    while let Ok(Some(event)) = reader.next_event() {
        muxer.push(event, &mut out);
    }
    muxer.end_source(&mut out);
    let mut viewer = StreamReader::new();
    for output in &out {
        viewer.push(output.bytes());
        while let Some(_event) = viewer
            .next_event()
            .expect("the remuxer's output is valid WebM")
        {}
    }
});
