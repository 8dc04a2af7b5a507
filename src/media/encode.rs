//! Encode: annotated pictures to VP8 with libvpx in realtime mode (ffmpeg-next).
//!
//! Settings from PLATFORM.md: `deadline=realtime`, `cpu-used=8`, `lag-in-frames=0` (libvpx
//! must not hold frames back to look ahead), time base 1/1000 so pts are milliseconds.
//! Keyframes are forced every `keyframe_interval` by marking the picture as an I frame, so
//! new viewers never wait longer than that for a join point, and where the caller asks (after
//! a gap that players read as a discontinuity, see the WebM writer).

use std::time::Duration;

use ffmpeg::util::frame::Video as VideoFrame;
use ffmpeg_next as ffmpeg;

use crate::clock::MediaTime;

/// Why encoding failed.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("FFmpeg has no VP8 encoder (libvpx)")]
    NoEncoder,
    #[error("FFmpeg: {0}")]
    Ffmpeg(#[from] ffmpeg::Error),
}

/// A realtime VP8 encoder for one output size.
pub struct Vp8Encoder {
    encoder: ffmpeg::encoder::Video,
    keyframe_interval: MediaTime,
    last_keyframe: Option<MediaTime>,
    /// The last pts given to libvpx (ms), which refuses any that does not rise.
    last_pts: Option<i64>,
    width: u32,
    height: u32,
}

impl Vp8Encoder {
    /// Opens libvpx for `width`x`height` YUV420P at `bitrate` bits/s.
    pub fn new(
        width: u32,
        height: u32,
        bitrate: usize,
        keyframe_interval: Duration,
    ) -> Result<Self, EncodeError> {
        super::decode::init();
        let codec = ffmpeg::encoder::find_by_name("libvpx")
            .or_else(|| ffmpeg::encoder::find(ffmpeg::codec::Id::VP8))
            .ok_or(EncodeError::NoEncoder)?;
        let mut encoder = ffmpeg::codec::Context::new_with_codec(codec)
            .encoder()
            .video()?;
        encoder.set_width(width);
        encoder.set_height(height);
        encoder.set_format(ffmpeg::format::Pixel::YUV420P);
        encoder.set_time_base((1, 1000));
        encoder.set_bit_rate(bitrate);
        // We force keyframes ourselves; libvpx's own maximum is only a backstop.
        encoder.set_gop(600);
        let mut options = ffmpeg::Dictionary::new();
        options.set("deadline", "realtime");
        options.set("cpu-used", "8");
        options.set("lag-in-frames", "0");
        options.set("auto-alt-ref", "0");
        options.set("error-resilient", "1");
        let encoder = encoder.open_as_with(codec, options)?;
        Ok(Vp8Encoder {
            encoder,
            keyframe_interval: MediaTime::from_duration(keyframe_interval),
            last_keyframe: None,
            last_pts: None,
            width,
            height,
        })
    }

    /// The picture size this encoder takes.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Encodes one picture at `time` and hands what libvpx produced (with `lag-in-frames=0`,
    /// normally exactly this frame) to `out` as (time, keyframe, bytes), straight from
    /// FFmpeg's packet without a copy. `keyframe` forces a keyframe (one is also made every
    /// keyframe interval).
    pub fn encode(
        &mut self,
        picture: &mut VideoFrame,
        time: MediaTime,
        keyframe: bool,
        mut out: impl FnMut(MediaTime, bool, &[u8]),
    ) -> Result<(), EncodeError> {
        let pts = time.as_millis();
        let pts = self.last_pts.map_or(pts, |last| pts.max(last + 1));
        self.last_pts = Some(pts);
        let time = MediaTime::from_millis(pts);
        let due = keyframe
            || self
                .last_keyframe
                .is_none_or(|last| time - last >= self.keyframe_interval);
        picture.set_kind(if due {
            ffmpeg::picture::Type::I
        } else {
            ffmpeg::picture::Type::None
        });
        picture.set_pts(Some(pts));
        self.encoder.send_frame(picture)?;
        let mut packet = ffmpeg::Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            let at = packet.pts().map_or(time, MediaTime::from_millis);
            let keyframe = packet.is_key();
            if keyframe {
                self.last_keyframe = Some(at);
            }
            out(at, keyframe, packet.data().unwrap_or_default());
        }
        Ok(())
    }
}
