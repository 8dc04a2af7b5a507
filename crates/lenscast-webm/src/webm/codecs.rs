//! Matroska codec IDs to the RFC 6381 codec strings that MSE's `isTypeSupported` understands.

use super::reader::{Track, TrackKind, Tracks};

/// The codec string for one track, e.g. `vp8`, `opus`, `avc1.42E01F`.
pub fn codec_string(track: &Track) -> String {
    match track.codec_id.as_str() {
        "V_VP8" => "vp8".into(),
        "V_VP9" => "vp9".into(),
        // Main profile, level 4.0, 8-bit: what browsers accept for typical live AV1.
        "V_AV1" => "av01.0.08M.08".into(),
        "V_MPEG4/ISO/AVC" => avc_codec_string(track),
        "A_OPUS" => "opus".into(),
        "A_VORBIS" => "vorbis".into(),
        other => other.to_ascii_lowercase(),
    }
}

/// `avc1.PPCCLL` from the avcC record (profile, constraints, level), or Baseline 3.1.
fn avc_codec_string(track: &Track) -> String {
    match track.codec_private.as_deref() {
        Some([1, profile, constraints, level, ..]) => {
            format!("avc1.{profile:02X}{constraints:02X}{level:02X}")
        }
        _ => "avc1.42E01F".into(),
    }
}

/// The MIME type with codecs for a whole stream: `video/webm; codecs="vp8,opus"`, or
/// `audio/webm; codecs="opus"` when there is no video track.
pub fn mime_type(tracks: &Tracks) -> String {
    let codecs: Vec<String> = tracks
        .tracks
        .iter()
        .filter(|t| t.kind != TrackKind::Other)
        .map(codec_string)
        .collect();
    let media = if tracks.video().is_some() {
        "video"
    } else {
        "audio"
    };
    format!("{media}/webm; codecs=\"{}\"", codecs.join(","))
}
