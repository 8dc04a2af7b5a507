//! Decode: compressed video frames from the upload into pictures, with ffmpeg-next.
//!
//! No format context is involved: our own reader has already split the WebM into frames, so
//! each frame goes straight to a decoder found by codec ID (PLATFORM.md: this works on FFmpeg
//! 5.1). Decoders may output any pixel format (VP9 can be 4:4:4 or 12-bit); [`super::scale`]
//! turns each picture into our own YUV420P copy, so later stages never draw on the decoder's
//! frame, which can be a reference buffer for frames still to come.

use ffmpeg::codec::Id;
use ffmpeg::util::frame::Video as VideoFrame;
use ffmpeg_next as ffmpeg;

use crate::clock::MediaTime;
use crate::webm::Track;

/// Why a video track cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("video codec {0} is not supported (send VP8, VP9 or H.264)")]
    Unsupported(String),
    #[error("FFmpeg has no decoder for {0}")]
    NoDecoder(String),
    #[error("FFmpeg: {0}")]
    Ffmpeg(#[from] ffmpeg::Error),
}

/// Matroska codec IDs we decode, and FFmpeg's ID for each.
fn codec_for(codec_id: &str) -> Option<Id> {
    match codec_id {
        "V_VP8" => Some(Id::VP8),
        "V_VP9" => Some(Id::VP9),
        "V_MPEG4/ISO/AVC" => Some(Id::H264),
        _ => None,
    }
}

/// Checks a track before any frame arrives, so an upload is refused with a clear reason.
pub fn check_supported(track: &Track) -> Result<(), DecodeError> {
    codec_for(&track.codec_id)
        .map(|_| ())
        .ok_or_else(|| DecodeError::Unsupported(track.codec_id.clone()))
}

/// Initialises FFmpeg once and quiets its own logging (ours says what matters).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ffmpeg::init();
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);
    });
}

/// A video decoder for one track.
pub struct VideoDecoder {
    decoder: ffmpeg::decoder::Video,
    codec: String,
    /// Packets taken in and pictures given out so far (see [`VideoDecoder::holds_pictures`]).
    packets: u64,
    pictures: u64,
}

impl VideoDecoder {
    /// Opens a decoder for `track` (VP8, VP9 or H.264) that refuses pictures of more than
    /// `max_pixels` before allocating them.
    pub fn new(track: &Track, max_pixels: u64) -> Result<Self, DecodeError> {
        init();
        let id = codec_for(&track.codec_id)
            .ok_or_else(|| DecodeError::Unsupported(track.codec_id.clone()))?;
        let codec = ffmpeg::decoder::find(id)
            .ok_or_else(|| DecodeError::NoDecoder(track.codec_id.clone()))?;
        let mut context = ffmpeg::codec::Context::new_with_codec(codec);
        // Frame threading holds frames back (one per thread) before output: latency we do not
        // want on a live path. Slice threading does not delay.
        context.set_threading(ffmpeg::codec::threading::Config {
            kind: ffmpeg::codec::threading::Type::Slice,
            count: 2,
            ..Default::default()
        });
        if let Some(private) = track.codec_private.as_deref() {
            set_extradata(&mut context, private);
        }
        // SAFETY: a plain integer field of the context we own, set before it is opened.
        // ffmpeg-next has no setter; without it a keyframe that claims 16000x16000 makes
        // FFmpeg allocate ~1 GB for one picture.
        unsafe {
            (*context.as_mut_ptr()).max_pixels = max_pixels.min(i64::MAX as u64) as i64;
        }
        let decoder = context.decoder().video()?;
        Ok(VideoDecoder {
            decoder,
            codec: track.codec_id.clone(),
            packets: 0,
            pictures: 0,
        })
    }

    /// Whether a packet taken in has not come out as a picture yet: the decoder is holding
    /// pictures back to put them in display order (H.264 with B-frames), so pictures from
    /// before the newest packet's time may still come. VP8 gives each picture out at once. A
    /// packet that never makes a picture (a damaged one) leaves this true, which only costs
    /// the audio a wait (see `LiveWriter::audio`).
    pub fn holds_pictures(&self) -> bool {
        self.packets > self.pictures
    }

    /// The Matroska codec ID being decoded.
    pub fn codec(&self) -> &str {
        &self.codec
    }

    /// Decodes one frame's bytes at `time`; pictures that come out are appended to `out`,
    /// each with its time (nanoseconds) as pts.
    pub fn decode(
        &mut self,
        data: &[u8],
        time: MediaTime,
        out: &mut Vec<VideoFrame>,
    ) -> Result<(), DecodeError> {
        // The one copy on the way in: FFmpeg wants its own padded buffer.
        let mut packet = ffmpeg::Packet::copy(data);
        packet.set_pts(Some(time.as_nanos()));
        packet.set_dts(Some(time.as_nanos()));
        self.decoder.send_packet(&packet)?;
        self.packets += 1;
        loop {
            let mut frame = VideoFrame::empty();
            match self.decoder.receive_frame(&mut frame) {
                Ok(()) => {
                    self.pictures += 1;
                    out.push(frame);
                }
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::util::error::EAGAIN => {
                    return Ok(())
                }
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Gives the decoder the track's CodecPrivate (e.g. the avcC record of H.264 from ffmpeg or
/// mkvmerge). ffmpeg-next has no safe setter for extradata, hence the small unsafe block.
pub(crate) fn set_extradata(context: &mut ffmpeg::codec::Context, data: &[u8]) {
    // SAFETY: we allocate with av_mallocz (which FFmpeg frees with the context), including the
    // zeroed padding FFmpeg requires after extradata, and set the matching size.
    unsafe {
        let padding = ffmpeg::ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize;
        let buffer = ffmpeg::ffi::av_mallocz(data.len() + padding) as *mut u8;
        if buffer.is_null() {
            return;
        }
        std::ptr::copy_nonoverlapping(data.as_ptr(), buffer, data.len());
        let raw = context.as_mut_ptr();
        (*raw).extradata = buffer;
        (*raw).extradata_size = data.len() as i32;
    }
}
