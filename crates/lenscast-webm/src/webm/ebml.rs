//! EBML primitives: variable-length integers, element headers, and the few element IDs we act on.
//!
//! Everything here works on borrowed `&[u8]` and never allocates. "Not enough bytes yet" is
//! `Ok(None)`, an ordinary outcome for a stream that arrives in pieces; only bytes that can never
//! become valid are an error.

use super::WebmError;

/// Element IDs (with their marker bits, as written on the wire) that the reader and writer use.
pub mod id {
    pub const EBML: u32 = 0x1A45_DFA3;
    pub const DOC_TYPE: u32 = 0x4282;
    pub const SEGMENT: u32 = 0x1853_8067;
    pub const SEEK_HEAD: u32 = 0x114D_9B74;
    pub const INFO: u32 = 0x1549_A966;
    pub const TIMESTAMP_SCALE: u32 = 0x2AD7B1;
    pub const DURATION: u32 = 0x4489;
    pub const MUXING_APP: u32 = 0x4D80;
    pub const WRITING_APP: u32 = 0x5741;
    pub const TRACKS: u32 = 0x1654_AE6B;
    pub const TRACK_ENTRY: u32 = 0xAE;
    pub const TRACK_NUMBER: u32 = 0xD7;
    pub const TRACK_UID: u32 = 0x73C5;
    pub const TRACK_TYPE: u32 = 0x83;
    pub const CODEC_ID: u32 = 0x86;
    pub const CODEC_PRIVATE: u32 = 0x63A2;
    pub const DEFAULT_DURATION: u32 = 0x23E383;
    pub const VIDEO: u32 = 0xE0;
    pub const PIXEL_WIDTH: u32 = 0xB0;
    pub const PIXEL_HEIGHT: u32 = 0xBA;
    pub const AUDIO: u32 = 0xE1;
    pub const SAMPLING_FREQUENCY: u32 = 0xB5;
    pub const CHANNELS: u32 = 0x9F;
    pub const CLUSTER: u32 = 0x1F43_B675;
    pub const TIMESTAMP: u32 = 0xE7;
    pub const SIMPLE_BLOCK: u32 = 0xA3;
    pub const BLOCK_GROUP: u32 = 0xA0;
    pub const BLOCK: u32 = 0xA1;
    pub const REFERENCE_BLOCK: u32 = 0xFB;
    pub const BLOCK_DURATION: u32 = 0x9B;
    pub const CUES: u32 = 0x1C53_BB6B;
    pub const CHAPTERS: u32 = 0x1043_A770;
    pub const TAGS: u32 = 0x1254_C367;
    pub const ATTACHMENTS: u32 = 0x1941_A469;
    pub const VOID: u32 = 0xEC;
    pub const CRC32: u32 = 0xBF;
}

/// The size field of an element: a byte count, or "unknown" (all value bits set), which live
/// muxers use for Segment and Cluster because they cannot know the size while writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Known(u64),
    Unknown,
}

/// An element's ID and size, and how many bytes the two took on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u32,
    pub size: Size,
    pub len: usize,
}

/// The 8-byte unknown-size marker we write for live Segment and Cluster elements.
pub const UNKNOWN_SIZE: [u8; 8] = [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];

/// Length in bytes of a VINT given its first byte (1..=8), or None for 0x00, which no valid
/// EBML VINT starts with.
fn vint_len(first: u8) -> Option<usize> {
    (first != 0).then(|| first.leading_zeros() as usize + 1)
}

/// Reads an element ID (marker bits kept, at most 4 bytes as Matroska allows).
pub fn read_id(buf: &[u8]) -> Result<Option<(u32, usize)>, WebmError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let len = match vint_len(first) {
        Some(len @ 1..=4) => len,
        _ => return Err(WebmError::InvalidId(first)),
    };
    if buf.len() < len {
        return Ok(None);
    }
    let id = buf[..len]
        .iter()
        .fold(0u32, |acc, &b| (acc << 8) | b as u32);
    Ok(Some((id, len)))
}

/// Reads a data-size VINT (marker bit removed); all-ones means unknown size.
pub fn read_size(buf: &[u8]) -> Result<Option<(Size, usize)>, WebmError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let len = vint_len(first).ok_or(WebmError::InvalidSize)?;
    if buf.len() < len {
        return Ok(None);
    }
    let mask = if len == 8 { 0 } else { 0xFFu8 >> len };
    let mut value = (first & mask) as u64;
    for &b in &buf[1..len] {
        value = (value << 8) | b as u64;
    }
    let all_ones = (1u64 << (7 * len)) - 1;
    let size = if value == all_ones {
        Size::Unknown
    } else {
        Size::Known(value)
    };
    Ok(Some((size, len)))
}

/// Reads an element header (ID then size). `Ok(None)` until both have fully arrived.
pub fn read_header(buf: &[u8]) -> Result<Option<Header>, WebmError> {
    let Some((id, id_len)) = read_id(buf)? else {
        return Ok(None);
    };
    let Some((size, size_len)) = read_size(&buf[id_len..])? else {
        return Ok(None);
    };
    Ok(Some(Header {
        id,
        size,
        len: id_len + size_len,
    }))
}

/// Reads a plain (marker-stripped) VINT as used for track numbers inside Block headers.
pub fn read_vint(buf: &[u8]) -> Result<Option<(u64, usize)>, WebmError> {
    Ok(read_size(buf)?.map(|(size, len)| match size {
        Size::Known(v) => (v, len),
        // An all-ones track number is reserved; report it as the largest value so it matches no track.
        Size::Unknown => (u64::MAX, len),
    }))
}

/// Big-endian unsigned integer element payload (0 to 8 bytes).
pub fn read_uint(payload: &[u8]) -> Result<u64, WebmError> {
    if payload.len() > 8 {
        return Err(WebmError::BadPayload(
            "unsigned integer longer than 8 bytes",
        ));
    }
    Ok(payload.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64))
}

/// Float element payload (0, 4 or 8 bytes).
pub fn read_float(payload: &[u8]) -> Result<f64, WebmError> {
    match payload.len() {
        0 => Ok(0.0),
        4 => Ok(f32::from_be_bytes(payload.try_into().expect("length checked")) as f64),
        8 => Ok(f64::from_be_bytes(
            payload.try_into().expect("length checked"),
        )),
        _ => Err(WebmError::BadPayload("float must be 0, 4 or 8 bytes")),
    }
}

/// String element payload, with trailing NULs trimmed (GStreamer writes `"V_VP8\0"`).
pub fn read_string(payload: &[u8]) -> String {
    let end = payload.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

/// Iterates over the children of a fully buffered master element's payload.
/// Yields `(id, payload, whole_child)`; a truncated or unknown-size child is an error.
pub fn children(payload: &[u8]) -> Children<'_> {
    Children { rest: payload }
}

/// Iterator returned by [`children`].
pub struct Children<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Children<'a> {
    type Item = Result<(u32, &'a [u8], &'a [u8]), WebmError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let result = match read_header(self.rest) {
            Ok(Some(Header {
                id,
                size: Size::Known(size),
                len,
            })) => match usize::try_from(size)
                .ok()
                .and_then(|s| s.checked_add(len))
                .filter(|&end| end <= self.rest.len())
            {
                Some(end) => {
                    let whole = &self.rest[..end];
                    self.rest = &self.rest[end..];
                    Ok((id, &whole[len..], whole))
                }
                None => Err(WebmError::ChildOverrun(id)),
            },
            Ok(Some(Header { id, .. })) => Err(WebmError::UnknownSizeNotAllowed(id)),
            Ok(None) => Err(WebmError::Truncated),
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.rest = &[];
        }
        Some(result)
    }
}

/// Appends an element ID as written on the wire.
pub fn write_id(out: &mut Vec<u8>, id: u32) {
    let bytes = id.to_be_bytes();
    let skip = (id.leading_zeros() / 8) as usize;
    out.extend_from_slice(&bytes[skip.min(3)..]);
}

/// Appends a data size VINT using the shortest encoding (never the all-ones pattern).
pub fn write_size(out: &mut Vec<u8>, size: u64) {
    let len = (1..=8usize)
        .find(|&len| size < (1u64 << (7 * len)) - 1)
        .expect("sizes are below 2^56 - 1");
    write_size_exact(out, size, len);
}

/// Appends a data size VINT in exactly `len` bytes (so a replacement can keep an element's length).
pub fn write_size_exact(out: &mut Vec<u8>, size: u64, len: usize) {
    debug_assert!((1..=8).contains(&len) && size < (1u64 << (7 * len)) - 1);
    let marked = size | (1u64 << (7 * len));
    out.extend_from_slice(&marked.to_be_bytes()[8 - len..]);
}

/// Appends an unsigned integer element in the fewest bytes (at least one).
pub fn write_uint(out: &mut Vec<u8>, id: u32, value: u64) {
    let len = (8 - (value.leading_zeros() / 8) as usize).max(1);
    write_id(out, id);
    write_size(out, len as u64);
    out.extend_from_slice(&value.to_be_bytes()[8 - len..]);
}

/// Appends a signed integer element in the fewest bytes (two's complement, at least one).
pub fn write_int(out: &mut Vec<u8>, id: u32, value: i64) {
    // The sign bit of the first byte kept must be the value's sign.
    let redundant = if value < 0 {
        value.leading_ones()
    } else {
        value.leading_zeros()
    };
    let len = (8 - (redundant.saturating_sub(1) / 8) as usize).max(1);
    write_id(out, id);
    write_size(out, len as u64);
    out.extend_from_slice(&value.to_be_bytes()[8 - len..]);
}

/// Appends an element with the given payload.
pub fn write_element(out: &mut Vec<u8>, id: u32, payload: &[u8]) {
    write_id(out, id);
    write_size(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// Overwrites `element` (a whole element, header included) with a Void element of the same
/// length, so the bytes around it keep their offsets and sizes.
pub fn void_in_place(element: &mut [u8]) {
    let total = element.len();
    debug_assert!(total >= 2, "a Void element needs at least 2 bytes");
    // Void ID (1 byte) + a size VINT that makes the whole thing exactly `total` bytes long.
    let size_len = (1..=8usize)
        .find(|&l| ((total - 1).saturating_sub(l) as u64) < (1u64 << (7 * l)) - 1)
        .expect("any length fits in an 8-byte size");
    let payload = total - 1 - size_len;
    let mut header = Vec::with_capacity(9);
    header.push(id::VOID as u8);
    write_size_exact(&mut header, payload as u64, size_len);
    element[..header.len()].copy_from_slice(&header);
    element[header.len()..].fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_integers_are_written_in_the_fewest_bytes() {
        let written = |value| {
            let mut out = Vec::new();
            write_int(&mut out, id::REFERENCE_BLOCK, value);
            out
        };
        assert_eq!(written(0), [0xFB, 0x81, 0x00]);
        assert_eq!(written(-1), [0xFB, 0x81, 0xFF]);
        assert_eq!(written(-33), [0xFB, 0x81, 0xDF]);
        assert_eq!(written(127), [0xFB, 0x81, 0x7F]);
        assert_eq!(written(128), [0xFB, 0x82, 0x00, 0x80]);
        assert_eq!(written(-128), [0xFB, 0x81, 0x80]);
        assert_eq!(written(-129), [0xFB, 0x82, 0xFF, 0x7F]);
        assert_eq!(written(i64::MIN).len(), 10);
    }

    #[test]
    fn ids_keep_their_marker_bits() {
        assert_eq!(
            read_id(&[0x1A, 0x45, 0xDF, 0xA3]).unwrap(),
            Some((id::EBML, 4))
        );
        assert_eq!(read_id(&[0xA3]).unwrap(), Some((id::SIMPLE_BLOCK, 1)));
        assert_eq!(read_id(&[0x1A, 0x45]).unwrap(), None);
        assert!(matches!(read_id(&[0x00]), Err(WebmError::InvalidId(0x00))));
        // A 5-byte ID is valid EBML but not allowed by Matroska (IDs are at most 4 bytes).
        assert!(read_id(&[0x08, 1, 2, 3, 4]).is_err());
    }

    #[test]
    fn sizes_decode_and_detect_unknown() {
        assert_eq!(read_size(&[0x81]).unwrap(), Some((Size::Known(1), 1)));
        assert_eq!(read_size(&[0x40, 0x02]).unwrap(), Some((Size::Known(2), 2)));
        assert_eq!(read_size(&[0xFF]).unwrap(), Some((Size::Unknown, 1)));
        assert_eq!(read_size(&UNKNOWN_SIZE).unwrap(), Some((Size::Unknown, 8)));
        assert_eq!(read_size(&[0x01, 0xFF]).unwrap(), None);
        assert!(matches!(read_size(&[0x00]), Err(WebmError::InvalidSize)));
    }

    #[test]
    fn writes_round_trip() {
        for value in [
            0u64,
            1,
            126,
            127,
            128,
            16_382,
            16_383,
            1 << 20,
            (1 << 56) - 2,
        ] {
            let mut out = Vec::new();
            write_size(&mut out, value);
            assert_eq!(
                read_size(&out).unwrap(),
                Some((Size::Known(value), out.len()))
            );
        }
        for id_value in [id::EBML, id::TIMESTAMP_SCALE, id::DURATION, id::VOID] {
            let mut out = Vec::new();
            write_id(&mut out, id_value);
            assert_eq!(read_id(&out).unwrap(), Some((id_value, out.len())));
        }
        let mut out = Vec::new();
        write_uint(&mut out, id::TIMESTAMP, 300_000);
        let header = read_header(&out).unwrap().unwrap();
        assert_eq!(header.id, id::TIMESTAMP);
        assert_eq!(read_uint(&out[header.len..]).unwrap(), 300_000);
    }

    #[test]
    fn void_in_place_keeps_length() {
        for total in 2..40usize {
            let mut element = vec![0xAAu8; total];
            void_in_place(&mut element);
            let header = read_header(&element).unwrap().unwrap();
            assert_eq!(header.id, id::VOID);
            assert_eq!(header.size, Size::Known((total - header.len) as u64));
        }
    }

    #[test]
    fn strings_trim_trailing_nul() {
        assert_eq!(read_string(b"V_VP8\0"), "V_VP8");
        assert_eq!(read_string(b"A_OPUS"), "A_OPUS");
    }

    #[test]
    fn children_reject_overrun() {
        // A child claiming 5 bytes with only 2 present.
        let payload = [0xD7, 0x85, 0x01, 0x02];
        assert!(matches!(
            children(&payload).next(),
            Some(Err(WebmError::ChildOverrun(0xD7)))
        ));
    }
}
