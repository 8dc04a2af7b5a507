// The presenter's low-latency recorder: the camera's frames and the microphone's samples go
// through WebCodecs (VP8 in realtime mode, Opus in short frames) and out as live WebM
// (webm-writer.js), each frame the moment it is encoded. It stands in for MediaRecorder where
// the browser has WebCodecs and MediaStreamTrackProcessor, with the part of its surface the
// publisher uses (start, stop, state, mimeType, ondataavailable, onerror, onstop).
//
// Why: Chrome's MediaRecorder writes Opus in 60 ms packets and holds every video frame until
// the next audio packet is out, so a presenter with a microphone uploads each frame ~60 ms late
// (capture to server p50 84-111 ms with audio, 37-46 ms without, measured in the latency bench).
// Here nothing waits for the other track.

import { ClusterWriter, streamHeader, TRACK } from './webm-writer.js';

/** Opus frame length: 20 ms, the usual real-time choice; MediaRecorder's 60 ms packets are
 *  what this recorder exists to avoid, and 10 ms frames would double the blocks per second for
 *  5 ms less. */
const OPUS_FRAME_US = 20_000;
/** The Opus bitrate: clear speech and fair music in mono or stereo. */
const AUDIO_BITS_PER_SECOND = 96_000;
/** More frames than this waiting in the video encoder and new ones are dropped: a presenter
 *  whose machine cannot keep up sends fewer frames rather than older ones. */
const MAX_QUEUED_FRAMES = 2;
/** A better capture origin is passed on when it is at least this much earlier than the last. */
const ORIGIN_STEP_MS = 1;
/** The mime type the stream is, for the page and the tests. */
const MIME = { av: 'video/webm;codecs=vp8,opus', video: 'video/webm;codecs=vp8' };

/** True if this browser can record `stream` with WebCodecs: the classes, a VP8 encoder at the
 *  camera's size and, with a microphone, an Opus one. */
export async function codecRecorderSupports(stream) {
  if (!window.VideoEncoder || !window.MediaStreamTrackProcessor) return false;
  const video = stream.getVideoTracks()[0];
  if (!video) return false;
  const { width = 640, height = 480 } = video.getSettings();
  try {
    const vp8 = await VideoEncoder.isConfigSupported(videoConfig(width, height, 1_000_000));
    if (!vp8.supported) return false;
    const audio = stream.getAudioTracks()[0];
    if (!audio) return true;
    if (!window.AudioEncoder) return false;
    const { sampleRate = 48_000, channelCount = 1 } = audio.getSettings();
    const opus = await AudioEncoder.isConfigSupported(audioConfig(sampleRate, channelCount));
    return opus.supported;
  } catch {
    return false;
  }
}

function videoConfig(width, height, bitrate) {
  return { codec: 'vp8', width, height, bitrate, latencyMode: 'realtime' };
}

function audioConfig(sampleRate, numberOfChannels) {
  return {
    codec: 'opus',
    sampleRate,
    numberOfChannels,
    bitrate: AUDIO_BITS_PER_SECOND,
    opus: { frameDuration: OPUS_FRAME_US },
  };
}

/**
 * Records the first video track and the first audio track (if any) of `stream`.
 * `onorigin(dateMs)` gives, once the first frame is in, when media time 0 was captured on the
 * page's Date.now() clock (the capture origin the latency readout needs), and again each time
 * a frame shows it was earlier.
 */
export class CodecRecorder {
  constructor(stream, { videoBitsPerSecond, keyFrameIntervalMs }) {
    this.videoTrack = stream.getVideoTracks()[0];
    this.audioTrack = stream.getAudioTracks()[0] ?? null;
    this.videoBitsPerSecond = videoBitsPerSecond;
    this.keyFrameIntervalUs = keyFrameIntervalMs * 1000;
    this.mimeType = this.audioTrack ? MIME.av : MIME.video;
    this.state = 'inactive';
    this.ondataavailable = null;
    this.onerror = null;
    this.onstop = null;
    this.onorigin = null;
    this.framesRead = 0; // pictures read from the camera
    this.framesDropped = 0; // ...of which not encoded: the encoder was behind

    this.readers = [];
    this.video = null; // { encoder, width, height, lastKeyUs }
    this.audio = null; // { encoder, channels, sampleRate, opusHead }
    // Media time: each track's timestamps run on their own clock (a camera's on the system's
    // monotonic clock, a canvas capture's from its start, the microphone's on the page's), so
    // each track is placed by its first frame: read at performance.now(), which is also media
    // time 0 for the first track to deliver. Later frames keep their own spacing.
    this.startUs = null;
    this.offsetUs = new Map(); // track number -> add to a timestamp to get media time
    // The earliest (read time - media time) of any picture, on performance.now(): media time 0
    // plus the shortest capture-to-read delay seen. The first frame alone would make it late by
    // its own delay, which at start can be tens of ms, and every capture time with it.
    this.originPerfMs = null;
    this.originSentPerfMs = null;
    this.writer = new ClusterWriter();
    this.headerSent = false;
    this.pending = []; // [track, chunk] encoded before the header could be written
    this.stopping = null; // the promise of a stop in progress
  }

  start() {
    if (this.state !== 'inactive') return;
    this.state = 'recording';
    this.video = {
      encoder: new VideoEncoder({
        output: (chunk) => this.write(TRACK.VIDEO, chunk),
        error: (err) => this.fail(err),
      }),
      width: 0,
      height: 0,
      lastKeyUs: null,
    };
    this.pump(this.videoTrack, TRACK.VIDEO, (frame) => this.encodeVideo(frame));
    if (this.audioTrack) {
      this.audio = {
        encoder: new AudioEncoder({
          output: (chunk, meta) => this.writeAudio(chunk, meta),
          error: (err) => this.fail(err),
        }),
        channels: 0,
        sampleRate: 0,
        opusHead: null,
      };
      this.pump(this.audioTrack, TRACK.AUDIO, (data) => this.encodeAudio(data));
    }
  }

  /** Stops reading, encodes what the encoders hold, hands it over, then calls onstop. */
  stop() {
    if (this.state !== 'recording') return;
    this.state = 'inactive';
    this.stopping = this.finish().then(() => this.onstop?.());
  }

  /** Ends the recording at once: nothing more is handed over, onstop is not called. */
  abort() {
    this.state = 'inactive';
    this.ondataavailable = null;
    this.onstop = null;
    this.cancelReaders();
    for (const { encoder } of [this.video, this.audio].filter(Boolean)) {
      if (encoder.state !== 'closed') encoder.close();
    }
  }

  async finish() {
    this.cancelReaders();
    for (const { encoder } of [this.video, this.audio].filter(Boolean)) {
      // A flush fails only on an encoder that errored or was never configured: nothing to keep.
      if (encoder.state === 'configured') await encoder.flush().catch(() => {});
      if (encoder.state !== 'closed') encoder.close();
    }
  }

  cancelReaders() {
    for (const reader of this.readers) reader.cancel().catch(() => {});
    this.readers = [];
  }

  /** Reads `track`'s frames into `encode` until the track ends or the recording stops. */
  async pump(track, number, encode) {
    const reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
    this.readers.push(reader);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        if (this.state !== 'recording') {
          value.close();
          break;
        }
        this.place(number, value.timestamp);
        if (number === TRACK.VIDEO) this.refineOrigin(value.timestamp);
        encode(value);
      }
    } catch (err) {
      this.fail(err);
      return;
    }
    // The track ended by itself (the camera was unplugged, the permission revoked): the
    // recording ends as MediaRecorder's does, with onstop while still recording.
    if (this.state === 'recording') this.stop();
  }

  /** Fixes how `track`'s timestamps map to media time, at its first frame. */
  place(track, timestampUs) {
    if (this.offsetUs.has(track)) return;
    const nowUs = Math.round(performance.now() * 1000);
    if (this.startUs === null) this.startUs = nowUs;
    this.offsetUs.set(track, nowUs - this.startUs - timestampUs);
  }

  /** Takes a picture just read into the capture origin estimate; passes it on when earlier. */
  refineOrigin(timestampUs) {
    const nowMs = performance.now();
    const originMs = nowMs - this.mediaUs(TRACK.VIDEO, timestampUs) / 1000;
    if (this.originPerfMs !== null && originMs >= this.originPerfMs) return;
    this.originPerfMs = originMs;
    if (this.originSentPerfMs !== null && this.originSentPerfMs - originMs < ORIGIN_STEP_MS) return;
    this.originSentPerfMs = originMs;
    // On Date.now(): the clock the publisher's clock sync maps to the server's.
    this.onorigin?.(Date.now() - (nowMs - originMs));
  }

  mediaUs(track, timestampUs) {
    return Math.max(0, timestampUs + this.offsetUs.get(track));
  }

  encodeVideo(frame) {
    const { video } = this;
    this.framesRead++;
    try {
      if (frame.displayWidth !== video.width || frame.displayHeight !== video.height) {
        // The first frame, or the camera changed size: the next frame is a keyframe of the
        // new size, which the server's decoder follows.
        video.width = frame.displayWidth;
        video.height = frame.displayHeight;
        video.encoder.configure(videoConfig(video.width, video.height, this.videoBitsPerSecond));
        video.lastKeyUs = null;
      } else if (video.encoder.encodeQueueSize > MAX_QUEUED_FRAMES) {
        this.framesDropped++;
        return;
      }
      const atUs = this.mediaUs(TRACK.VIDEO, frame.timestamp);
      const keyFrame = video.lastKeyUs === null || atUs - video.lastKeyUs >= this.keyFrameIntervalUs;
      if (keyFrame) video.lastKeyUs = atUs;
      video.encoder.encode(frame, { keyFrame });
    } catch (err) {
      this.fail(err);
    } finally {
      frame.close();
    }
  }

  encodeAudio(data) {
    const { audio } = this;
    try {
      if (!audio.channels) {
        audio.channels = data.numberOfChannels;
        audio.sampleRate = data.sampleRate;
        audio.encoder.configure(audioConfig(data.sampleRate, data.numberOfChannels));
      }
      // The stream's audio track keeps the parameters it was declared with.
      if (data.numberOfChannels === audio.channels && data.sampleRate === audio.sampleRate) {
        audio.encoder.encode(data);
      }
    } catch (err) {
      this.fail(err);
    } finally {
      data.close();
    }
  }

  writeAudio(chunk, meta) {
    const description = meta?.decoderConfig?.description;
    if (description && !this.audio.opusHead) {
      this.audio.opusHead = new Uint8Array(
        ArrayBuffer.isView(description) ? description.buffer : description,
      ).slice();
    }
    this.write(TRACK.AUDIO, chunk);
  }

  /** Hands `chunk` over as WebM, after the header, which waits for what it describes: the
   *  picture size and the OpusHead the audio encoder gives with its first packet. */
  write(track, chunk) {
    if (!this.headerSent) {
      this.pending.push([track, chunk]);
      const audioReady = !this.audio || this.pending.some(([t]) => t === TRACK.AUDIO);
      const videoReady = this.pending.some(([t]) => t === TRACK.VIDEO);
      if (!audioReady || !videoReady) return;
      this.headerSent = true;
      const { video, audio } = this;
      const header = streamHeader(
        {
          video: { width: video.width, height: video.height },
          audio: audio && {
            channels: audio.channels,
            sampleRate: audio.sampleRate,
            opusHead: audio.opusHead,
          },
        },
        'lenscast presenter (WebCodecs)',
      );
      const blocks = this.pending.map(([t, c]) => this.blockBytes(t, c));
      this.pending = [];
      this.deliver([header, ...blocks]);
      return;
    }
    this.deliver([this.blockBytes(track, chunk)]);
  }

  blockBytes(track, chunk) {
    const payload = new Uint8Array(chunk.byteLength);
    chunk.copyTo(payload);
    const ms = Math.round(this.mediaUs(track, chunk.timestamp) / 1000);
    return this.writer.block(track, ms, chunk.type === 'key', payload);
  }

  deliver(parts) {
    for (const data of parts) this.ondataavailable?.({ data });
  }

  fail(err) {
    if (this.state !== 'recording') return;
    this.abort();
    this.onerror?.({ error: err });
  }
}
