//! Media: compressed frames to pictures and back, with FFmpeg (ffmpeg-next).
//!
//! - [`audio`]: the source's Opus into AAC-LC for the HLS mirror.
//! - [`decode`]: VP8, VP9 and H.264 frames from the source into pictures.
//! - [`scale`]: any decoded picture into a YUV420P picture of the output size, its aspect
//!   ratio kept (letterboxed or pillarboxed).
//! - [`encode`]: pictures to VP8 with libvpx in realtime mode.

pub mod audio;
pub mod decode;
pub mod encode;
pub mod scale;

/// A picture size limit (`--max-resolution`): a picture fits if it has no more pixels than
/// `width` x `height` and no side longer than the longer of the two, so a portrait camera
/// fits a landscape limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    pub width: u32,
    pub height: u32,
}

impl Resolution {
    /// 1920x1080: what webcams and screen captures send at most in practice.
    pub const DEFAULT: Resolution = Resolution {
        width: 1920,
        height: 1080,
    };

    /// The most pixels a picture may have.
    pub fn pixels(self) -> u64 {
        self.width as u64 * self.height as u64
    }

    /// True if a `width` x `height` picture fits the limit.
    pub fn admits(self, width: u32, height: u32) -> bool {
        let side = self.width.max(self.height);
        width as u64 * height as u64 <= self.pixels() && width <= side && height <= side
    }
}

impl Default for Resolution {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl std::fmt::Display for Resolution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl std::str::FromStr for Resolution {
    type Err = String;

    /// `1920x1080`, each side 16..=8192.
    fn from_str(text: &str) -> Result<Self, String> {
        let (w, h) = text
            .split_once(['x', 'X'])
            .ok_or_else(|| format!("{text:?} is not a size like 1920x1080"))?;
        let side = |v: &str| -> Result<u32, String> {
            let n: u32 = v
                .trim()
                .parse()
                .map_err(|_| format!("{text:?} is not a size like 1920x1080"))?;
            if (16..=8192).contains(&n) {
                Ok(n)
            } else {
                Err(format!("{text}: each side must be 16..8192"))
            }
        };
        Ok(Resolution {
            width: side(w)?,
            height: side(h)?,
        })
    }
}

/// The size a VP8 keyframe declares (RFC 6386, 9.1), if `frame` is one. Read before decoding,
/// so a keyframe that claims a huge picture is refused before the decoder allocates it.
pub fn vp8_keyframe_size(frame: &[u8]) -> Option<(u32, u32)> {
    // A 3-byte frame tag whose lowest bit is 0 for keyframes, then the start code 9d 01 2a.
    let keyframe = frame.first()? & 1 == 0;
    if !keyframe || frame.get(3..6)? != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let width = u16::from_le_bytes([frame[6], *frame.get(7)?]) & 0x3fff;
    let height = u16::from_le_bytes([*frame.get(8)?, *frame.get(9)?]) & 0x3fff;
    Some((width as u32, height as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_pixels_and_allow_portrait() {
        let max = Resolution::DEFAULT;
        assert!(max.admits(1920, 1080));
        assert!(max.admits(1080, 1920));
        assert!(max.admits(640, 480));
        assert!(!max.admits(1921, 1080));
        assert!(!max.admits(16000, 16000));
        assert!(!max.admits(4000, 100));
        assert_eq!("1280x720".parse::<Resolution>().unwrap().pixels(), 921_600);
        assert!("1280".parse::<Resolution>().is_err());
        assert!("0x0".parse::<Resolution>().is_err());
    }

    #[test]
    fn a_vp8_keyframe_header_gives_its_size() {
        // Frame tag (keyframe), start code, 640 x 480 with no scaling bits.
        let mut frame = vec![0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a];
        frame.extend_from_slice(&640u16.to_le_bytes());
        frame.extend_from_slice(&480u16.to_le_bytes());
        assert_eq!(vp8_keyframe_size(&frame), Some((640, 480)));
        frame[0] |= 1; // an interframe
        assert_eq!(vp8_keyframe_size(&frame), None);
        assert_eq!(vp8_keyframe_size(&[0x50]), None);
    }
}
