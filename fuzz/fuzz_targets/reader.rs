//! The EBML reader on arbitrary bytes, fed whole and in chunks whose sizes the input picks:
//! it must never panic, never buffer more than one element plus one chunk, and give the same
//! events however the bytes are split (it is byte-exact).
#![no_main]

use lenscast_webm::webm::reader::StreamReader;
use libfuzzer_sys::fuzz_target;

/// The largest element the reader buffers here (small, so the bound is exercised).
const MAX_ELEMENT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    // First byte: the chunk size (1..=256) for the split feed; the rest is the stream.
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let chunk = split as usize + 1;

    let mut whole = StreamReader::with_max_element(MAX_ELEMENT);
    whole.push(stream);
    let mut expected = Vec::new();
    let mut whole_failed = false;
    loop {
        match whole.next_event() {
            Ok(Some(event)) => expected.push(event),
            Ok(None) => break,
            Err(_) => {
                whole_failed = true;
                break;
            }
        }
    }

    let mut split_reader = StreamReader::with_max_element(MAX_ELEMENT);
    let mut got = Vec::new();
    let mut split_failed = false;
    'feed: for piece in stream.chunks(chunk) {
        split_reader.push(piece);
        loop {
            match split_reader.next_event() {
                Ok(Some(event)) => got.push(event),
                Ok(None) => break,
                Err(_) => {
                    split_failed = true;
                    break 'feed;
                }
            }
        }
        assert!(
            split_reader.buffered() <= MAX_ELEMENT + 16 + chunk,
            "the reader holds {} bytes",
            split_reader.buffered()
        );
    }
    assert_eq!(whole_failed, split_failed, "an error depends on the split");
    assert_eq!(expected, got, "the events depend on the split");
});
