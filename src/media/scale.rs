//! Scale: a decoded picture of any format and size into a YUV420P picture of the output size,
//! with its aspect ratio kept.
//!
//! The output size is fixed for the server's life by the first picture (see the pipeline):
//! a picture of another shape is scaled to fit inside it and centred on black bars
//! (letterbox or pillarbox), never stretched. We letterbox rather than switch the output to
//! each presenter's size because a fixed size keeps every viewer's decoder, MSE SourceBuffer
//! and the HLS mirror's encoder running across source switches: a resolution change would
//! need a new init segment for every viewer (a visible stall in MSE players) and an
//! EXT-X-DISCONTINUITY that HLS players handle unevenly. Face detection then runs on this
//! very picture, so the boxes are drawn exactly where the faces are.

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg::util::frame::Video as VideoFrame;
use ffmpeg_next as ffmpeg;

use super::decode::DecodeError;

/// Black in limited-range YUV (what libvpx and libx264 assume): Y = 16, U = V = 128.
const BLACK: [u8; 3] = [16, 128, 128];

/// Where a picture lands inside the output: an even-aligned rectangle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// The largest rectangle of the picture's display aspect ratio that fits `out_width` x
/// `out_height`, centred. `sample_aspect` is the pixel shape (num, den); (0, _) means square.
pub fn fit(
    width: u32,
    height: u32,
    sample_aspect: (i32, i32),
    out_width: u32,
    out_height: u32,
) -> Placement {
    let (num, den) = match sample_aspect {
        (n, d) if n > 0 && d > 0 => (n as u64, d as u64),
        _ => (1, 1),
    };
    // Display width : height = width * num : height * den, compared in integers.
    let (display_w, display_h) = (width.max(1) as u64 * num, height.max(1) as u64 * den);
    let (ow, oh) = (out_width as u64, out_height as u64);
    let (w, h) = if display_w * oh >= display_h * ow {
        // Wider than the output: full width, bars above and below.
        (ow, (ow * display_h + display_w / 2) / display_w)
    } else {
        // Taller: full height, bars left and right.
        ((oh * display_w + display_h / 2) / display_h, oh)
    };
    // YUV420P chroma covers 2x2 pixels: keep sizes and offsets even.
    let even = |v: u64, max: u64| ((v.min(max) & !1).max(2)) as u32;
    let (w, h) = (even(w, ow), even(h, oh));
    Placement {
        x: ((out_width - w) / 2) & !1,
        y: ((out_height - h) / 2) & !1,
        width: w,
        height: h,
    }
}

/// What a swscale context converts: (input format, width, height) to a YUV420P size.
type ScaleKey = (Pixel, u32, u32, u32, u32);

/// Turns decoded pictures into output pictures; keeps its swscale context between frames.
#[derive(Default)]
pub struct Scaler {
    /// The context and what it was built for.
    context: Option<(scaling::Context, ScaleKey)>,
}

impl Scaler {
    /// A new YUV420P picture of `out_width` x `out_height` holding `frame`, aspect kept.
    pub fn picture(
        &mut self,
        frame: &VideoFrame,
        out_width: u32,
        out_height: u32,
    ) -> Result<VideoFrame, DecodeError> {
        let aspect = frame.aspect_ratio();
        let place = fit(
            frame.width(),
            frame.height(),
            (aspect.numerator(), aspect.denominator()),
            out_width,
            out_height,
        );
        let full = place.width == out_width && place.height == out_height;
        let mut fitted = VideoFrame::new(Pixel::YUV420P, place.width, place.height);
        self.scaler(frame, place.width, place.height)?
            .run(frame, &mut fitted)?;
        if full {
            return Ok(fitted);
        }
        let mut out = VideoFrame::new(Pixel::YUV420P, out_width, out_height);
        for (plane, black) in BLACK.into_iter().enumerate() {
            // swscale wrote `fitted`; copying it into the black frame costs ~0.1 ms at
            // 640x480, cheaper than keeping a second swscale path that writes at an offset.
            let shift = if plane == 0 { 0 } else { 1 };
            let (x, y) = ((place.x >> shift) as usize, (place.y >> shift) as usize);
            let (w, h) = (
                (place.width >> shift) as usize,
                (place.height >> shift) as usize,
            );
            let src_stride = fitted.stride(plane);
            let dst_stride = out.stride(plane);
            let src = fitted.data(plane);
            let dst = out.data_mut(plane);
            dst.fill(black);
            for row in 0..h {
                let from = &src[row * src_stride..row * src_stride + w];
                let at = (y + row) * dst_stride + x;
                dst[at..at + w].copy_from_slice(from);
            }
        }
        Ok(out)
    }

    fn scaler(
        &mut self,
        frame: &VideoFrame,
        width: u32,
        height: u32,
    ) -> Result<&mut scaling::Context, DecodeError> {
        let key = (frame.format(), frame.width(), frame.height(), width, height);
        let stale = !matches!(&self.context, Some((_, k)) if *k == key);
        if stale {
            let context = scaling::Context::get(
                key.0,
                key.1,
                key.2,
                Pixel::YUV420P,
                width,
                height,
                scaling::Flags::BILINEAR,
            )?;
            self.context = Some((context, key));
        }
        Ok(&mut self.context.as_mut().expect("built above").0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_by_nine_is_letterboxed_into_four_by_three() {
        let place = fit(640, 360, (1, 1), 640, 480);
        assert_eq!(
            place,
            Placement {
                x: 0,
                y: 60,
                width: 640,
                height: 360
            }
        );
        let place = fit(1280, 720, (0, 1), 640, 480);
        assert_eq!((place.width, place.height, place.y), (640, 360, 60));
    }

    #[test]
    fn four_by_three_is_pillarboxed_into_sixteen_by_nine() {
        let place = fit(640, 480, (1, 1), 1280, 720);
        assert_eq!(
            place,
            Placement {
                x: 160,
                y: 0,
                width: 960,
                height: 720
            }
        );
    }

    #[test]
    fn non_square_pixels_are_shown_at_their_display_shape() {
        // 720x576 PAL with 16:11 pixels displays at about 4:3 * 1.09 = 1047x576.
        let place = fit(720, 576, (16, 11), 640, 480);
        assert_eq!(place.width, 640);
        assert!((place.height as i32 - 352).abs() <= 2, "{place:?}");
    }

    #[test]
    fn the_picture_lands_centred_on_black() {
        super::super::decode::init();
        let mut frame = VideoFrame::new(Pixel::YUV420P, 64, 36);
        for plane in 0..3 {
            frame.data_mut(plane).fill(200);
        }
        let out = Scaler::default().picture(&frame, 64, 48).unwrap();
        let y = |row: usize, col: usize| out.data(0)[row * out.stride(0) + col];
        assert_eq!(y(0, 32), 16, "bar above");
        assert_eq!(y(47, 32), 16, "bar below");
        assert_eq!(y(24, 0), 200, "picture spans the full width");
        assert_eq!(y(6, 32), 200, "picture starts at row 6");
        assert_eq!(y(5, 32), 16);
    }
}
