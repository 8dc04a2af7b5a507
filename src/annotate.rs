//! Annotate: find faces with OpenCV's Haar cascade and draw a box around each.
//!
//! Detection is the slowest stage (20–40 ms a frame on one core, PLATFORM.md), slower than a
//! 30 fps frame budget, so it never runs on the frame path. The frame path hands the newest
//! luma plane to a detection thread through a one-slot mailbox (an unread older frame is
//! simply replaced) and draws the most recent boxes on every frame. Video therefore never
//! waits for detection; boxes lag the face by at most one detection plus its pace.
//!
//! The pace (`--detect-fps`, 5 by default) keeps the detector from taking a whole core back
//! to back: on a small machine the frame path, both encoders and (in the tests) the browser
//! need it, and every ms they wait is latency the viewer sees.
//!
//! Detection runs on a 2x downscaled gray image: the Y plane *is* the gray image, so no colour
//! conversion is needed, and half size costs ~1/2 the time for faces this large.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use opencv::core::{Mat, Rect, Size, Vector};
use opencv::objdetect::CascadeClassifier;
use opencv::prelude::*;

/// OpenCV's frontal-face cascade, embedded at build time from Debian's opencv-data package
/// (installed by `make`), so the binary needs no path at run time.
const FRONTAL_FACE_CASCADE: &str =
    include_str!("/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml");

/// How far below the frame path detection runs (nice steps; see crate::priority).
const DETECT_NICE: i32 = 10;

/// Boxes older than this are not drawn (the face may have moved on, or the source changed).
const MAX_BOX_AGE: Duration = Duration::from_millis(1000);

/// Why the detector could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum AnnotateError {
    #[error("OpenCV: {0}")]
    OpenCv(#[from] opencv::Error),
    #[error("the embedded face cascade did not load")]
    CascadeEmpty,
    #[error("the gray image is {len} bytes, not {width}x{height}")]
    BadImage { len: usize, width: u32, height: u32 },
}

/// A face box in output-picture pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FaceBox {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// The Haar face detector.
pub struct FaceDetector {
    classifier: CascadeClassifier,
    small: Mat,
    equalized: Mat,
}

impl FaceDetector {
    /// Loads the embedded cascade.
    pub fn new() -> Result<Self, AnnotateError> {
        let storage = opencv::core::FileStorage::new(
            FRONTAL_FACE_CASCADE,
            opencv::core::FileStorage_READ | opencv::core::FileStorage_MEMORY,
            "",
        )?;
        let mut classifier = CascadeClassifier::default()?;
        let loaded = classifier.read(&storage.get_first_top_level_node()?)?;
        if !loaded || classifier.empty()? {
            return Err(AnnotateError::CascadeEmpty);
        }
        Ok(FaceDetector {
            classifier,
            small: Mat::default(),
            equalized: Mat::default(),
        })
    }

    /// Faces in a `width`x`height` gray image (tightly packed rows), in its own pixels.
    pub fn detect(
        &mut self,
        gray: &[u8],
        width: u32,
        height: u32,
    ) -> Result<Vec<FaceBox>, AnnotateError> {
        if gray.len() != (width * height) as usize {
            return Err(AnnotateError::BadImage {
                len: gray.len(),
                width,
                height,
            });
        }
        let image = Mat::new_rows_cols_with_data(height as i32, width as i32, gray)?;
        let half = Size::new((width / 2) as i32, (height / 2) as i32);
        opencv::imgproc::resize(
            &image,
            &mut self.small,
            half,
            0.0,
            0.0,
            opencv::imgproc::INTER_AREA,
        )?;
        opencv::imgproc::equalize_hist(&self.small, &mut self.equalized)?;
        let mut found = Vector::<Rect>::new();
        self.classifier.detect_multi_scale(
            &self.equalized,
            &mut found,
            1.15,
            4,
            0,
            Size::new(24, 24),
            Size::new(0, 0),
        )?;
        Ok(found
            .iter()
            .map(|r| FaceBox {
                x: (r.x * 2) as u32,
                y: (r.y * 2) as u32,
                width: (r.width * 2) as u32,
                height: (r.height * 2) as u32,
            })
            .collect())
    }
}

/// The latest detection result.
#[derive(Debug, Clone, Default)]
pub struct Detection {
    pub faces: Vec<FaceBox>,
    pub at: Option<Instant>,
    /// The source epoch of the picture (see [`Annotator::new_source`]).
    pub epoch: u64,
}

/// Figures the status page shows about detection.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DetectStats {
    pub detect_ms: f64,
    pub detections: u64,
    pub faces_last: usize,
    pub faces_total: u64,
    /// Frames the frame path offered while the detector was still busy (not an error: the
    /// newest frame replaces them).
    pub frames_not_detected: u64,
    pub errors: u64,
}

struct Mailbox {
    /// The newest gray picture, its size, and its source epoch.
    frame: Option<(Vec<u8>, u32, u32, u64)>,
    closed: bool,
}

struct Shared {
    /// Bumped at each new source, so boxes never cross from one source to the next.
    epoch: std::sync::atomic::AtomicU64,
    mailbox: Mutex<Mailbox>,
    ready: Condvar,
    latest: Mutex<Detection>,
    stats: Mutex<DetectStats>,
}

/// The detection thread and its mailbox. Dropping it stops the thread.
pub struct Annotator {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Annotator {
    /// Starts the detection thread (OpenCV limited to one thread, leaving the other core
    /// to the frame path). It detects on the newest picture at most once per `interval`
    /// (`None`: back to back, as fast as detection runs). Each detection's time also goes to
    /// `detect_time` (the `/metrics` histogram).
    pub fn start(
        interval: Option<Duration>,
        detect_time: metrics::Histogram,
    ) -> Result<Self, AnnotateError> {
        let mut detector = FaceDetector::new()?;
        let _ = opencv::core::set_num_threads(1);
        let shared = Arc::new(Shared {
            epoch: std::sync::atomic::AtomicU64::new(0),
            mailbox: Mutex::new(Mailbox {
                frame: None,
                closed: false,
            }),
            ready: Condvar::new(),
            latest: Mutex::new(Detection::default()),
            stats: Mutex::new(DetectStats::default()),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("face-detect".into())
            .spawn(move || detect_loop(&worker, &mut detector, interval, &detect_time))
            .expect("spawning the detection thread");
        Ok(Annotator {
            shared,
            thread: Some(thread),
        })
    }

    /// A new source begins: boxes found on earlier pictures are no longer drawn.
    pub fn new_source(&self) {
        self.shared
            .epoch
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn epoch(&self) -> u64 {
        self.shared.epoch.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Offers the Y plane of the newest picture to the detector (copied, tightly packed).
    pub fn offer(&self, y_plane: &[u8], stride: usize, width: u32, height: u32) {
        let source = self.epoch();
        let mut gray = Vec::with_capacity((width * height) as usize);
        for row in y_plane.chunks(stride).take(height as usize) {
            gray.extend_from_slice(&row[..width as usize]);
        }
        let mut mailbox = self.shared.mailbox.lock().expect("mailbox lock");
        if mailbox
            .frame
            .replace((gray, width, height, source))
            .is_some()
        {
            self.shared
                .stats
                .lock()
                .expect("stats lock")
                .frames_not_detected += 1;
        }
        self.shared.ready.notify_one();
    }

    /// The boxes to draw on the current source's picture now (empty if none are recent).
    pub fn current_faces(&self) -> Vec<FaceBox> {
        let epoch = self.epoch();
        let latest = self.shared.latest.lock().expect("latest lock");
        let fresh = latest.at.is_some_and(|at| at.elapsed() < MAX_BOX_AGE);
        if fresh && latest.epoch == epoch {
            latest.faces.clone()
        } else {
            Vec::new()
        }
    }

    /// A copy of the detection figures.
    pub fn stats(&self) -> DetectStats {
        self.shared.stats.lock().expect("stats lock").clone()
    }
}

impl Drop for Annotator {
    fn drop(&mut self) {
        self.shared.mailbox.lock().expect("mailbox lock").closed = true;
        self.shared.ready.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn detect_loop(
    shared: &Shared,
    detector: &mut FaceDetector,
    interval: Option<Duration>,
    detect_time: &metrics::Histogram,
) {
    // Boxes may lag a little; frames may not (see crate::priority).
    crate::priority::lower_this_thread(DETECT_NICE, "face-detect");
    let mut next = Instant::now();
    loop {
        let (gray, width, height, epoch) = {
            let mut mailbox = shared.mailbox.lock().expect("mailbox lock");
            loop {
                if mailbox.closed {
                    return;
                }
                let wait = next.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    // Not yet: pictures offered meanwhile replace each other in the mailbox.
                    mailbox = shared
                        .ready
                        .wait_timeout(mailbox, wait)
                        .expect("mailbox lock")
                        .0;
                    continue;
                }
                if let Some(frame) = mailbox.frame.take() {
                    break frame;
                }
                mailbox = shared.ready.wait(mailbox).expect("mailbox lock");
            }
        };
        let started = Instant::now();
        next = started + interval.unwrap_or_default();
        let result = detector.detect(&gray, width, height);
        let took = started.elapsed();
        detect_time.record(took.as_secs_f64());
        let ms = took.as_secs_f64() * 1000.0;
        let mut stats = shared.stats.lock().expect("stats lock");
        match result {
            Ok(faces) => {
                stats.detect_ms = smooth(stats.detect_ms, ms);
                stats.detections += 1;
                stats.faces_last = faces.len();
                stats.faces_total += faces.len() as u64;
                drop(stats);
                *shared.latest.lock().expect("latest lock") = Detection {
                    faces,
                    at: Some(Instant::now()),
                    epoch,
                };
            }
            Err(error) => {
                stats.errors += 1;
                tracing::warn!(%error, "face detection failed on one frame");
            }
        }
    }
}

/// Exponentially weighted moving average, so status figures are steady but current.
pub fn smooth(average: f64, sample: f64) -> f64 {
    if average == 0.0 {
        sample
    } else {
        average * 0.9 + sample * 0.1
    }
}

/// Box colour in YUV (a bright green) and line width in pixels.
const BOX_YUV: (u8, u8, u8) = (182, 40, 30);
const LINE: u32 = 4;

/// Draws `faces` as rectangles on a YUV420P picture.
///
/// Drawn directly on the Y, U and V planes rather than with `opencv::imgproc::rectangle` on a
/// BGR image: the encoder takes YUV, and a BGR round trip would cost two full-frame colour
/// conversions (~3 ms at 640x480) on the frame path for four lines.
pub fn draw_faces(picture: &mut ffmpeg_next::util::frame::Video, faces: &[FaceBox]) {
    let (width, height) = (picture.width(), picture.height());
    for face in faces {
        let x0 = face.x.min(width.saturating_sub(1));
        let y0 = face.y.min(height.saturating_sub(1));
        let x1 = (face.x + face.width).min(width);
        let y1 = (face.y + face.height).min(height);
        if x1 <= x0 + 2 * LINE || y1 <= y0 + 2 * LINE {
            continue;
        }
        let luma = (x0, y0, x1, y1);
        let chroma = (x0 / 2, y0 / 2, x1 / 2, y1 / 2);
        let planes = [
            (luma, LINE, BOX_YUV.0),
            (chroma, LINE / 2, BOX_YUV.1),
            (chroma, LINE / 2, BOX_YUV.2),
        ];
        for (index, (rect, line, value)) in planes.into_iter().enumerate() {
            let stride = picture.stride(index);
            fill_frame(picture.data_mut(index), stride, rect, line, value);
        }
    }
}

/// Paints the border (of `line` pixels) of the rectangle `(x0, y0)-(x1, y1)` in one plane.
fn fill_frame(plane: &mut [u8], stride: usize, rect: (u32, u32, u32, u32), line: u32, value: u8) {
    let (x0, y0, x1, y1) = rect;
    for row in y0..y1 {
        let start = row as usize * stride;
        let Some(row_pixels) = plane.get_mut(start + x0 as usize..start + x1 as usize) else {
            continue;
        };
        let edge_row = row < y0 + line || row >= y1.saturating_sub(line);
        if edge_row {
            row_pixels.fill(value);
        } else {
            let w = row_pixels.len();
            let l = (line as usize).min(w);
            row_pixels[..l].fill(value);
            row_pixels[w - l..].fill(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_astronaut_and_not_a_blank_image() {
        let decoded = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/face.webm"))
            .args(["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"])
            .output()
            .expect("ffmpeg runs");
        assert_eq!(decoded.stdout.len(), 640 * 480);
        let mut detector = FaceDetector::new().unwrap();
        let faces = detector.detect(&decoded.stdout, 640, 480).unwrap();
        assert_eq!(faces.len(), 1, "{faces:?}");
        assert!(faces[0].width > 100, "{faces:?}");
        let blank = vec![128u8; 640 * 480];
        assert!(detector.detect(&blank, 640, 480).unwrap().is_empty());
    }

    #[test]
    fn boxes_are_drawn_on_all_three_planes() {
        use ffmpeg_next::format::Pixel;
        let mut picture = ffmpeg_next::util::frame::Video::new(Pixel::YUV420P, 64, 48);
        for plane in 0..3 {
            picture
                .data_mut(plane)
                .fill(if plane == 0 { 0 } else { 128 });
        }
        let face = FaceBox {
            x: 8,
            y: 8,
            width: 32,
            height: 24,
        };
        draw_faces(&mut picture, &[face]);
        let (ys, us) = (picture.stride(0), picture.stride(1));
        assert_eq!(picture.data(0)[8 * ys + 8], BOX_YUV.0, "top-left corner");
        assert_eq!(picture.data(0)[20 * ys + 20], 0, "inside stays untouched");
        assert_eq!(picture.data(0)[0], 0, "outside stays untouched");
        assert_eq!(picture.data(1)[4 * us + 4], BOX_YUV.1);
        assert_eq!(picture.data(2)[4 * picture.stride(2) + 4], BOX_YUV.2);
    }
}
