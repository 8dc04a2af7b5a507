//! Our live WebM writer: each encoded frame becomes bytes the moment it exists.
//!
//! libavformat's WebM muxer writes every Cluster with a known size, so it holds a whole Cluster
//! (about one keyframe interval, ~1 s) before emitting anything (see PLATFORM.md). A live
//! stream cannot wait that long, so we write the EBML ourselves: a Segment and Clusters of
//! unknown size, a new Cluster at each video keyframe, one SimpleBlock per frame.
//!
//! Audio blocks wait in a short queue until video has caught up with them, so blocks leave
//! in timestamp order (the video path is a few ms behind the audio path because of encoding).

use std::collections::VecDeque;

use bytes::Bytes;

use super::ebml::{self, id, UNKNOWN_SIZE};

/// Track numbers in our output.
pub const VIDEO_TRACK: u64 = 1;
pub const AUDIO_TRACK: u64 = 2;

/// Audio older than this (relative to the newest audio) is written even if video lags, so a
/// stalled video path never holds audio back for long.
const MAX_AUDIO_HOLD_MS: i64 = 500;

/// The audio track we pass through: Opus as it came from the upload.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioTrack {
    pub codec_private: Option<Bytes>,
    pub sample_rate: f64,
    pub channels: u32,
}

/// What the output stream carries.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTracks {
    pub width: u32,
    pub height: u32,
    pub audio: Option<AudioTrack>,
}

/// Writes one live WebM stream. Timestamps are milliseconds.
#[derive(Debug)]
pub struct LiveWriter {
    tracks: OutputTracks,
    /// Timestamp of the open Cluster, if one is open.
    cluster: Option<i64>,
    pending_audio: VecDeque<(i64, Bytes)>,
    last_video: Option<i64>,
}

impl LiveWriter {
    /// A writer for `tracks`; call [`header`](Self::header) first.
    pub fn new(tracks: OutputTracks) -> Self {
        LiveWriter {
            tracks,
            cluster: None,
            pending_audio: VecDeque::new(),
            last_video: None,
        }
    }

    /// The tracks this writer was made for.
    pub fn tracks(&self) -> &OutputTracks {
        &self.tracks
    }

    /// EBML header, unknown-size Segment, Info and Tracks.
    pub fn header(&self) -> Bytes {
        let mut out = Vec::with_capacity(256);
        let mut header = Vec::new();
        ebml::write_uint(&mut header, 0x4286, 1); // EBMLVersion
        ebml::write_uint(&mut header, 0x42F7, 1); // EBMLReadVersion
        ebml::write_uint(&mut header, 0x42F2, 4); // EBMLMaxIDLength
        ebml::write_uint(&mut header, 0x42F3, 8); // EBMLMaxSizeLength
        ebml::write_element(&mut header, id::DOC_TYPE, b"webm");
        ebml::write_uint(&mut header, 0x4287, 4); // DocTypeVersion
        ebml::write_uint(&mut header, 0x4285, 2); // DocTypeReadVersion
        ebml::write_element(&mut out, id::EBML, &header);

        ebml::write_id(&mut out, id::SEGMENT);
        out.extend_from_slice(&UNKNOWN_SIZE);

        let mut info = Vec::new();
        ebml::write_uint(&mut info, id::TIMESTAMP_SCALE, 1_000_000);
        ebml::write_element(&mut info, id::MUXING_APP, b"lenscast");
        ebml::write_element(&mut info, id::WRITING_APP, b"lenscast");
        ebml::write_element(&mut out, id::INFO, &info);

        let mut tracks = Vec::new();
        let mut video = Vec::new();
        ebml::write_uint(&mut video, id::TRACK_NUMBER, VIDEO_TRACK);
        ebml::write_uint(&mut video, id::TRACK_UID, VIDEO_TRACK);
        ebml::write_uint(&mut video, id::TRACK_TYPE, 1);
        ebml::write_element(&mut video, id::CODEC_ID, b"V_VP8");
        let mut dims = Vec::new();
        ebml::write_uint(&mut dims, id::PIXEL_WIDTH, self.tracks.width as u64);
        ebml::write_uint(&mut dims, id::PIXEL_HEIGHT, self.tracks.height as u64);
        ebml::write_element(&mut video, id::VIDEO, &dims);
        ebml::write_element(&mut tracks, id::TRACK_ENTRY, &video);
        if let Some(audio) = &self.tracks.audio {
            let mut entry = Vec::new();
            ebml::write_uint(&mut entry, id::TRACK_NUMBER, AUDIO_TRACK);
            ebml::write_uint(&mut entry, id::TRACK_UID, AUDIO_TRACK);
            ebml::write_uint(&mut entry, id::TRACK_TYPE, 2);
            ebml::write_element(&mut entry, id::CODEC_ID, b"A_OPUS");
            if let Some(private) = &audio.codec_private {
                ebml::write_element(&mut entry, id::CODEC_PRIVATE, private);
            }
            let mut settings = Vec::new();
            ebml::write_element(
                &mut settings,
                id::SAMPLING_FREQUENCY,
                &audio.sample_rate.to_be_bytes(),
            );
            ebml::write_uint(&mut settings, id::CHANNELS, audio.channels as u64);
            ebml::write_element(&mut entry, id::AUDIO, &settings);
            ebml::write_element(&mut tracks, id::TRACK_ENTRY, &entry);
        }
        ebml::write_element(&mut out, id::TRACKS, &tracks);
        Bytes::from(out)
    }

    /// Writes one encoded video frame (and any audio it has caught up with).
    pub fn video(&mut self, pts_ms: i64, keyframe: bool, frame: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(frame.len() + 64);
        let pts_ms = self.last_video.map_or(pts_ms, |last| pts_ms.max(last + 1));
        self.last_video = Some(pts_ms);
        self.flush_audio(&mut out, |ts| ts <= pts_ms);
        let needs_cluster = keyframe || !self.fits_cluster(pts_ms);
        if needs_cluster {
            self.open_cluster(&mut out, pts_ms);
        }
        if self.cluster.is_some() {
            self.block(&mut out, VIDEO_TRACK, pts_ms, keyframe, frame);
        }
        Bytes::from(out)
    }

    /// Queues one audio frame; returns what can be written now.
    pub fn audio(&mut self, pts_ms: i64, frame: Bytes) -> Bytes {
        if self.tracks.audio.is_none() {
            return Bytes::new();
        }
        self.pending_audio.push_back((pts_ms, frame));
        let mut out = Vec::new();
        let video = self.last_video;
        let newest = pts_ms;
        self.flush_audio(&mut out, |ts| {
            video.is_some_and(|v| ts <= v) || newest - ts > MAX_AUDIO_HOLD_MS
        });
        Bytes::from(out)
    }

    fn flush_audio(&mut self, out: &mut Vec<u8>, ready: impl Fn(i64) -> bool) {
        while let Some((ts, _)) = self.pending_audio.front() {
            let ts = *ts;
            if !ready(ts) {
                break;
            }
            let (_, frame) = self.pending_audio.pop_front().expect("front exists");
            // Audio before the first video keyframe has no Cluster to go in; drop it.
            if self.cluster.is_none() {
                continue;
            }
            if !self.fits_cluster(ts) {
                self.open_cluster(out, ts);
            }
            self.block(out, AUDIO_TRACK, ts, true, &frame);
        }
    }

    /// True if `ts` can be written relative to the open Cluster (a signed 16-bit offset).
    fn fits_cluster(&self, ts: i64) -> bool {
        self.cluster
            .is_some_and(|c| (i16::MIN as i64..=i16::MAX as i64).contains(&(ts - c)))
    }

    fn open_cluster(&mut self, out: &mut Vec<u8>, ts: i64) {
        ebml::write_id(out, id::CLUSTER);
        out.extend_from_slice(&UNKNOWN_SIZE);
        ebml::write_uint(out, id::TIMESTAMP, ts.max(0) as u64);
        self.cluster = Some(ts.max(0));
    }

    fn block(&self, out: &mut Vec<u8>, track: u64, ts: i64, keyframe: bool, frame: &[u8]) {
        let cluster = self.cluster.expect("a Cluster is open");
        let relative = (ts - cluster) as i16;
        ebml::write_id(out, id::SIMPLE_BLOCK);
        ebml::write_size(out, frame.len() as u64 + 4);
        out.push(0x80 | track as u8); // track number as a 1-byte VINT
        out.extend_from_slice(&relative.to_be_bytes());
        out.push(if keyframe { 0x80 } else { 0x00 });
        out.extend_from_slice(frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webm::{Event, StreamReader};

    #[test]
    fn clusters_start_at_keyframes_and_audio_interleaves_in_order() {
        let mut writer = LiveWriter::new(OutputTracks {
            width: 64,
            height: 48,
            audio: Some(AudioTrack {
                codec_private: None,
                sample_rate: 48_000.0,
                channels: 2,
            }),
        });
        let mut stream = writer.header().to_vec();
        for i in 0..60i64 {
            // Audio runs ahead of video, as it does in the pipeline.
            stream.extend_from_slice(&writer.audio(i * 20 + 15, Bytes::from_static(b"opus")));
            if i % 2 == 0 {
                stream.extend_from_slice(&writer.video(i * 20, i % 30 == 0, b"vp8 frame"));
            }
        }
        let mut reader = StreamReader::new();
        reader.push(&stream);
        let mut clusters = Vec::new();
        let mut blocks = Vec::new();
        while let Some(event) = reader.next_event().unwrap() {
            match event {
                Event::ClusterStart { timecode } => clusters.push(timecode),
                Event::Block(b) => blocks.push((b.track, b.timecode, b.keyframe)),
                _ => {}
            }
        }
        assert_eq!(clusters, vec![0, 600]);
        assert!(blocks.windows(2).all(|w| w[1].1 >= w[0].1), "{blocks:?}");
        let video: Vec<_> = blocks.iter().filter(|b| b.0 == VIDEO_TRACK).collect();
        assert_eq!(video.len(), 30);
        assert!(video[0].2 && video[15].2 && !video[1].2);
    }
}
