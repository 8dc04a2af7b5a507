//! Audio: the source's Opus into AAC-LC, for the HLS mirror (HLS players and Safari do not
//! take Opus in MPEG-TS; AAC is what every one of them plays).
//!
//! Opus packets → FFmpeg's Opus decoder → the resampler (any channel count and layout into
//! stereo float planes at 48 kHz) → a small queue of samples → 1024-sample frames → FFmpeg's
//! native AAC encoder (`aac`: always built, unlike libfdk) → AAC packets timed in samples.
//!
//! The AAC track is continuous, because the players need it to be: an MSE player (hls.js)
//! stops at a hole in its audio buffer even when the video goes on. So a short gap between
//! packets (a lost or late one, the switch from one source to the next) is filled with
//! silence, and the mirror fills silence in step with the pictures while a source without
//! audio plays ([`AacEncoder::silence_until`]). Only a gap of over [`MAX_FILL`] (the stream
//! stood still) starts the samples over at the new time, as the pictures do.
//!
//! Times are sample counts at 48 kHz from the start of the mirror's timeline, the encoder's
//! own time base; the muxer converts them exactly to MPEG-TS's 90 kHz clock.

use std::collections::VecDeque;

use ffmpeg::format::sample::{Sample, Type as SampleType};
use ffmpeg::util::frame::Audio as AudioFrame;
use ffmpeg::{codec, ChannelLayout, Packet, Rational};
use ffmpeg_next as ffmpeg;

/// Opus always decodes at 48 kHz, and AAC-LC takes it as it is: no rate conversion.
pub const SAMPLE_RATE: u32 = 48_000;
/// The encoder's (and its packets') time base: one sample.
pub const TIME_BASE: Rational = Rational(1, SAMPLE_RATE as i32);
/// AAC-LC's frame: the encoder takes exactly this many samples per frame.
const AAC_FRAME: usize = 1024;
/// Stereo always, whatever the source sends: the TS stream's parameters stay the same for the
/// mirror's life (a player cannot follow a channel count that changes mid-stream), and AAC
/// codes a mono source's identical channels at almost no cost.
const CHANNELS: usize = 2;
/// 128 kbit/s: transparent for speech and music in stereo AAC-LC.
const BITRATE: usize = 128_000;
/// Packets up to this far from where the last one ended are taken as contiguous (Opus frames
/// are 2.5–60 ms; timestamps in WebM are whole milliseconds).
const JITTER: i64 = SAMPLE_RATE as i64 / 100;
/// The longest gap filled with silence (1 s); past it the samples start over at the new time.
pub const MAX_FILL: i64 = SAMPLE_RATE as i64;

/// Why audio could not be transcoded.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("FFmpeg has no {0} codec")]
    NoCodec(&'static str),
    #[error("FFmpeg: {0}")]
    Ffmpeg(#[from] ffmpeg::Error),
}

/// One AAC packet, timed in samples ([`TIME_BASE`]).
pub struct AacPacket {
    pub packet: Packet,
    pub pts: i64,
}

/// Opus in, AAC out. One for the mirror's life; [`AacEncoder::source`] switches the decoder
/// when a new source (with its own Opus header) starts.
pub struct AacEncoder {
    encoder: ffmpeg::encoder::Audio,
    parameters: codec::Parameters,
    decoder: Option<OpusDecoder>,
    /// Samples waiting for a whole AAC frame, one queue per channel.
    queued: [VecDeque<f32>; CHANNELS],
    /// The time of the first queued sample (or where the next one goes when none are queued);
    /// `None` before the first sample.
    queued_at: Option<i64>,
    packets: Vec<AacPacket>,
}

/// The decoder of one source's Opus track, and its resampler into our format.
struct OpusDecoder {
    decoder: ffmpeg::decoder::Audio,
    /// Made at the first decoded frame, when its layout is known.
    resampler: Option<ffmpeg::software::resampling::Context>,
}

impl AacEncoder {
    /// Opens FFmpeg's AAC-LC encoder for 48 kHz stereo.
    pub fn new() -> Result<Self, AudioError> {
        super::decode::init();
        let codec = ffmpeg::encoder::find(codec::Id::AAC).ok_or(AudioError::NoCodec("AAC"))?;
        let mut encoder = codec::Context::new_with_codec(codec).encoder().audio()?;
        encoder.set_rate(SAMPLE_RATE as i32);
        encoder.set_format(Sample::F32(SampleType::Planar));
        encoder.set_channel_layout(ChannelLayout::STEREO);
        encoder.set_bit_rate(BITRATE);
        encoder.set_time_base(TIME_BASE);
        // No GLOBAL_HEADER: the encoder sets its AudioSpecificConfig as extradata anyway, and
        // FFmpeg's MPEG-TS muxer wraps each raw packet in ADTS from it.
        let encoder = encoder.open_as(codec)?;
        let parameters = codec::Parameters::from(&encoder);
        Ok(AacEncoder {
            encoder,
            parameters,
            decoder: None,
            queued: Default::default(),
            queued_at: None,
            packets: Vec::new(),
        })
    }

    /// What the muxer declares the AAC stream with.
    pub fn parameters(&self) -> &codec::Parameters {
        &self.parameters
    }

    /// A new source's Opus track (its CodecPrivate, the OpusHead), or `None` for a source
    /// without audio. The samples go on where they were: the next packet or
    /// [`AacEncoder::silence_until`] continues the same track.
    pub fn source(&mut self, opus_head: Option<&[u8]>) -> Result<(), AudioError> {
        self.decoder = None;
        let Some(head) = opus_head else {
            return Ok(());
        };
        let codec = ffmpeg::decoder::find(codec::Id::OPUS).ok_or(AudioError::NoCodec("Opus"))?;
        let mut context = codec::Context::new_with_codec(codec);
        super::decode::set_extradata(&mut context, head);
        self.decoder = Some(OpusDecoder {
            decoder: context.decoder().audio()?,
            resampler: None,
        });
        Ok(())
    }

    /// Decodes one Opus packet that starts at sample `at` and queues its samples; AAC packets
    /// that this completes are kept for [`AacEncoder::take_packets`]. A packet that fails to
    /// decode is left out (the gap it leaves is filled by the next one).
    pub fn opus(&mut self, data: &[u8], at: i64) -> Result<(), AudioError> {
        let Some(opus) = self.decoder.as_mut() else {
            return Ok(());
        };
        opus.decoder.send_packet(&Packet::copy(data))?;
        let mut at = at;
        let mut decoded_frames = Vec::new();
        loop {
            let mut decoded = AudioFrame::empty();
            match opus.decoder.receive_frame(&mut decoded) {
                Ok(()) => {}
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::util::error::EAGAIN => {
                    break
                }
                Err(ffmpeg::Error::Eof) => break,
                Err(e) => return Err(e.into()),
            }
            let samples = decoded.samples();
            let resampler = match &mut opus.resampler {
                Some(resampler) => resampler,
                None => opus
                    .resampler
                    .insert(ffmpeg::software::resampling::Context::get(
                        decoded.format(),
                        layout_of(&decoded),
                        decoded.rate(),
                        Sample::F32(SampleType::Planar),
                        ChannelLayout::STEREO,
                        SAMPLE_RATE,
                    )?),
            };
            let mut converted = AudioFrame::empty();
            resampler.run(&decoded, &mut converted)?;
            decoded_frames.push((at, converted));
            at += samples as i64;
        }
        for (at, frame) in decoded_frames {
            let planes: [&[f32]; CHANNELS] = [
                &frame.plane::<f32>(0)[..frame.samples()],
                &frame.plane::<f32>(1)[..frame.samples()],
            ];
            self.queue(at, planes)?;
        }
        Ok(())
    }

    /// Fills the track with silence up to sample `until` (a source without audio is playing,
    /// and the players need the track to go on). Nothing happens before the first sample.
    pub fn silence_until(&mut self, until: i64) -> Result<(), AudioError> {
        let Some(end) = self.queued_end() else {
            return Ok(());
        };
        if until > end {
            self.silence(until - end)?;
        }
        Ok(())
    }

    /// Where the queued samples end (where the next sample goes), once there has been one.
    pub fn queued_end(&self) -> Option<i64> {
        self.queued_at.map(|at| at + self.queued[0].len() as i64)
    }

    /// AAC packets made since the last call, oldest first, each stamped with its time.
    pub fn take_packets(&mut self) -> Vec<AacPacket> {
        std::mem::take(&mut self.packets)
    }

    /// Queues samples that start at `at`, keeping the track continuous (see the module docs).
    fn queue(&mut self, at: i64, planes: [&[f32]; CHANNELS]) -> Result<(), AudioError> {
        let mut skip = 0;
        match self.queued_end() {
            None => self.queued_at = Some(at),
            Some(end) if at > end + MAX_FILL => {
                // The stream stood still: encode what is queued (padded to a frame) and start
                // over at the new time.
                self.pad_to_frame()?;
                self.queued_at = Some(at);
            }
            Some(end) if at > end + JITTER => self.silence(at - end)?,
            // Overlapping what is queued already (a timestamp that went back): the part
            // already covered is left out, so time only moves forward.
            Some(end) if at < end - JITTER => skip = (end - at) as usize,
            Some(_) => {}
        }
        let skip = skip.min(planes[0].len());
        for (queue, plane) in self.queued.iter_mut().zip(planes) {
            queue.extend(&plane[skip..]);
        }
        self.encode_whole_frames()
    }

    fn silence(&mut self, samples: i64) -> Result<(), AudioError> {
        for queue in &mut self.queued {
            queue.extend(std::iter::repeat_n(0.0, samples as usize));
        }
        self.encode_whole_frames()
    }

    /// Pads what is queued with silence to a whole frame and encodes it.
    fn pad_to_frame(&mut self) -> Result<(), AudioError> {
        let partial = self.queued[0].len() % AAC_FRAME;
        if partial > 0 {
            self.silence((AAC_FRAME - partial) as i64)?;
        }
        Ok(())
    }

    fn encode_whole_frames(&mut self) -> Result<(), AudioError> {
        while self.queued[0].len() >= AAC_FRAME {
            let at = self.queued_at.expect("samples are queued");
            let mut frame = AudioFrame::new(
                Sample::F32(SampleType::Planar),
                AAC_FRAME,
                ChannelLayout::STEREO,
            );
            frame.set_rate(SAMPLE_RATE);
            for (channel, queue) in self.queued.iter_mut().enumerate() {
                for (out, sample) in frame.plane_mut::<f32>(channel)[..AAC_FRAME]
                    .iter_mut()
                    .zip(queue.drain(..AAC_FRAME))
                {
                    *out = sample;
                }
            }
            frame.set_pts(Some(at));
            self.queued_at = Some(at + AAC_FRAME as i64);
            self.encoder.send_frame(&frame)?;
            self.receive()?;
        }
        Ok(())
    }

    fn receive(&mut self) -> Result<(), AudioError> {
        loop {
            let mut packet = Packet::empty();
            match self.encoder.receive_packet(&mut packet) {
                Ok(()) => {
                    // The encoder stamps every packet (its first one 1024 samples early: the
                    // priming the decoder drops).
                    let pts = packet.pts().unwrap_or(0);
                    self.packets.push(AacPacket { packet, pts });
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

/// A decoded frame's channel layout; decoders may leave it unspecified (then the usual layout
/// for its number of channels).
fn layout_of(frame: &AudioFrame) -> ChannelLayout {
    let layout = frame.channel_layout();
    if layout.is_empty() {
        ChannelLayout::default(frame.channels() as i32)
    } else {
        layout
    }
}

/// Converts a media time in nanoseconds to samples at 48 kHz.
pub fn samples_from_nanos(nanos: i64) -> i64 {
    (nanos as i128 * SAMPLE_RATE as i128 / 1_000_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opus packets of a 440 Hz sine, made by FFmpeg's own Opus encoder (libopus), with their
    /// OpusHead: real packets, as a source sends them.
    fn sine_opus(seconds: f64) -> (Vec<u8>, Vec<(Vec<u8>, i64)>) {
        crate::media::decode::init();
        let codec = ffmpeg::encoder::find_by_name("libopus").expect("libopus");
        let mut encoder = codec::Context::new_with_codec(codec)
            .encoder()
            .audio()
            .unwrap();
        encoder.set_rate(48_000);
        encoder.set_format(Sample::I16(SampleType::Packed));
        encoder.set_channel_layout(ChannelLayout::MONO);
        encoder.set_bit_rate(48_000);
        encoder.set_time_base(TIME_BASE);
        let mut encoder = encoder.open_as(codec).unwrap();
        let head = codec::Parameters::from(&encoder);
        // SAFETY: reading the extradata FFmpeg set on the parameters we own.
        let head = unsafe {
            let raw = head.as_ptr();
            std::slice::from_raw_parts((*raw).extradata, (*raw).extradata_size as usize).to_vec()
        };
        let mut packets = Vec::new();
        let total = (seconds * 48_000.0) as usize;
        let mut at = 0;
        while at < total {
            let mut frame =
                AudioFrame::new(Sample::I16(SampleType::Packed), 960, ChannelLayout::MONO);
            frame.set_rate(48_000);
            for (i, out) in frame.plane_mut::<i16>(0)[..960].iter_mut().enumerate() {
                let t = (at + i) as f64 / 48_000.0;
                *out = ((t * 440.0 * std::f64::consts::TAU).sin() * 12_000.0) as i16;
            }
            frame.set_pts(Some(at as i64));
            encoder.send_frame(&frame).unwrap();
            let mut packet = Packet::empty();
            while encoder.receive_packet(&mut packet).is_ok() {
                packets.push((packet.data().unwrap().to_vec(), packet.pts().unwrap()));
            }
            at += 960;
        }
        (head, packets)
    }

    fn decode_aac(encoder: &AacEncoder, packets: &[AacPacket]) -> Vec<f32> {
        let codec = ffmpeg::decoder::find(codec::Id::AAC).unwrap();
        let mut context = codec::Context::new_with_codec(codec);
        // SAFETY: the encoder's extradata, copied into the decoder's own allocation.
        let config = unsafe {
            let raw = encoder.parameters().as_ptr();
            std::slice::from_raw_parts((*raw).extradata, (*raw).extradata_size as usize).to_vec()
        };
        crate::media::decode::set_extradata(&mut context, &config);
        let mut decoder = context.decoder().audio().unwrap();
        let mut samples = Vec::new();
        for p in packets {
            decoder.send_packet(&p.packet).unwrap();
            let mut frame = AudioFrame::empty();
            while decoder.receive_frame(&mut frame).is_ok() {
                samples.extend_from_slice(&frame.plane::<f32>(0)[..frame.samples()]);
            }
        }
        samples
    }

    fn rms(samples: &[f32]) -> f64 {
        (samples.iter().map(|s| (*s as f64).powi(2)).sum::<f64>() / samples.len().max(1) as f64)
            .sqrt()
    }

    #[test]
    fn opus_sine_becomes_continuous_aac_that_decodes_to_the_sine() {
        let (head, opus) = sine_opus(2.0);
        let mut aac = AacEncoder::new().unwrap();
        aac.source(Some(&head)).unwrap();
        for (data, pts) in &opus {
            aac.opus(data, *pts).unwrap();
        }
        let packets = aac.take_packets();
        // About 2 s of 1024-sample frames (the encoder holds a frame or two back).
        assert!(
            packets.len() >= 88 && packets.len() <= 94,
            "{}",
            packets.len()
        );
        // Continuous: each packet 1024 samples after the one before.
        for pair in packets.windows(2) {
            assert_eq!(pair[1].pts - pair[0].pts, 1024);
        }
        let samples = decode_aac(&aac, &packets);
        // The middle second is the sine: amplitude 12000/32768, RMS 0.26, and the resampler
        // puts mono into each stereo channel 3 dB down (its centre mix level), so about 0.18.
        let middle = &samples[24_000..72_000];
        let level = rms(middle);
        assert!((0.15..0.22).contains(&level), "RMS {level}");
        // A 440 Hz sine crosses zero 880 times a second.
        let crossings = middle
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        assert!(
            (860..=900).contains(&crossings),
            "{crossings} zero crossings"
        );
    }

    #[test]
    fn gaps_are_filled_with_silence_and_long_ones_start_over() {
        let (head, opus) = sine_opus(1.0);
        let mut aac = AacEncoder::new().unwrap();
        aac.source(Some(&head)).unwrap();
        // The first half second, then a 300 ms hole, then the rest.
        let hole = 300 * 48;
        for (data, pts) in &opus {
            let at = if *pts < 24_000 { *pts } else { pts + hole };
            aac.opus(data, at).unwrap();
        }
        let packets = aac.take_packets();
        for pair in packets.windows(2) {
            assert_eq!(pair[1].pts - pair[0].pts, 1024, "the hole was filled");
        }
        let samples = decode_aac(&aac, &packets);
        // Silence where the hole was, sine around it.
        let hole_start = 24_000 + 1024; // the decoder's output includes the priming frame
        assert!(rms(&samples[hole_start + 2_000..hole_start + hole as usize - 2_000]) < 0.01);
        assert!(rms(&samples[10_000..20_000]) > 0.15);

        // A source without audio: silence in step with the pictures.
        let end = aac.queued_end().unwrap();
        aac.source(None).unwrap();
        aac.silence_until(end + 48_000).unwrap();
        let silent = aac.take_packets();
        assert!(silent.len() >= 45, "{}", silent.len());
        assert_eq!(silent[0].pts - packets.last().unwrap().pts, 1024);

        // Over a second of nothing: the track starts over at the new time.
        aac.source(Some(&head)).unwrap();
        let later = aac.queued_end().unwrap() + 10 * 48_000;
        for (data, pts) in opus.iter().take(50) {
            aac.opus(data, later + pts).unwrap();
        }
        let resumed = aac.take_packets();
        let jump = resumed
            .windows(2)
            .find(|pair| pair[1].pts - pair[0].pts != 1024)
            .expect("a jump");
        assert!(jump[1].pts - jump[0].pts > 9 * 48_000);
    }
}
