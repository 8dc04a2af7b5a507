// A live WebM writer for the presenter's WebCodecs recorder (codec-recorder.js): the stream
// header once, then each encoded frame as a SimpleBlock the moment it exists, in unknown-size
// Clusters, as the server's reader takes any live WebM (MediaRecorder's, ffmpeg's, gst's).
//
// Written here rather than taken from npm (webm-muxer, mediabunny) for two reasons, both about
// a live upload: those muxers hold each chunk until the other track has caught up with it, to
// interleave by timestamp, which is the very hold that costs MediaRecorder 60 ms (it waits for
// the next Opus packet); and in streaming mode webm-muxer still keeps a Cue for every Cluster in
// memory, which grows for as long as the broadcast runs. The server allows a track to step back
// a little behind the other (MAX_STEP_BACK), so blocks go out in the order they were encoded.
// What it writes is checked with ffprobe and mkvinfo in tests/browser/presenter.test.mjs.

/** Element IDs (Matroska / WebM), with their marker bits, as they are written. */
const ID = Object.freeze({
  EBML: 0x1a45dfa3,
  EBML_VERSION: 0x4286,
  EBML_READ_VERSION: 0x42f7,
  EBML_MAX_ID_LENGTH: 0x42f2,
  EBML_MAX_SIZE_LENGTH: 0x42f3,
  DOC_TYPE: 0x4282,
  DOC_TYPE_VERSION: 0x4287,
  DOC_TYPE_READ_VERSION: 0x4285,
  SEGMENT: 0x18538067,
  INFO: 0x1549a966,
  TIMESTAMP_SCALE: 0x2ad7b1,
  MUXING_APP: 0x4d80,
  WRITING_APP: 0x5741,
  TRACKS: 0x1654ae6b,
  TRACK_ENTRY: 0xae,
  TRACK_NUMBER: 0xd7,
  TRACK_UID: 0x73c5,
  TRACK_TYPE: 0x83,
  CODEC_ID: 0x86,
  CODEC_PRIVATE: 0x63a2,
  CODEC_DELAY: 0x56aa,
  SEEK_PRE_ROLL: 0x56bb,
  VIDEO: 0xe0,
  PIXEL_WIDTH: 0xb0,
  PIXEL_HEIGHT: 0xba,
  AUDIO: 0xe1,
  SAMPLING_FREQUENCY: 0xb5,
  CHANNELS: 0x9f,
  CLUSTER: 0x1f43b675,
  TIMESTAMP: 0xe7,
  SIMPLE_BLOCK: 0xa3,
});

/** The size field of an element whose end is not known yet (Segment and Clusters, live). */
const UNKNOWN_SIZE = Uint8Array.of(0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff);
/** Block times are in ms: the TimestampScale every live WebM uses. */
const TIMESTAMP_SCALE_NS = 1_000_000;
/** A block's time is a signed 16-bit offset from its Cluster's. */
const BLOCK_OFFSET_MIN = -0x8000;
const BLOCK_OFFSET_MAX = 0x7fff;
/** Opus's codec delay and the pre-roll after a seek, as the Matroska codec mapping gives them. */
const OPUS_SEEK_PRE_ROLL_NS = 80_000_000;
/** libopus's lookahead at 48 kHz, in samples: the OpusHead pre-skip when the encoder gives no
 *  OpusHead of its own. */
const OPUS_DEFAULT_PRE_SKIP = 312;

/** The track numbers this writer gives: video first, as MediaRecorder does. */
export const TRACK = Object.freeze({ VIDEO: 1, AUDIO: 2 });

const textEncoder = new TextEncoder();

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, part) => n + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** An element ID's bytes: the ID as written, without leading zero bytes. */
function idBytes(id) {
  const bytes = [];
  for (let rest = id; rest > 0; rest = Math.floor(rest / 256)) bytes.unshift(rest % 256);
  return Uint8Array.from(bytes);
}

/** A size as an EBML variable-length integer, in the fewest bytes (the all-ones value of each
 *  length means "unknown", so it is never used for a real size). */
export function sizeVint(size) {
  let length = 1;
  while (size >= 2 ** (7 * length) - 1) length++;
  if (length > 8) throw new RangeError(`element of ${size} bytes is too large for EBML`);
  const bytes = new Uint8Array(length);
  let rest = size;
  for (let i = length - 1; i >= 0; i--) {
    bytes[i] = rest % 256;
    rest = Math.floor(rest / 256);
  }
  bytes[0] |= 0x80 >> (length - 1);
  return bytes;
}

function element(id, payload) {
  return concat([idBytes(id), sizeVint(payload.length), payload]);
}

function master(id, children) {
  return element(id, concat(children));
}

function uint(id, value) {
  const bytes = [];
  for (let rest = value; rest > 0; rest = Math.floor(rest / 256)) bytes.unshift(rest % 256);
  return element(id, Uint8Array.from(bytes.length ? bytes : [0]));
}

function float(id, value) {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setFloat64(0, value);
  return element(id, bytes);
}

function string(id, value) {
  return element(id, textEncoder.encode(value));
}

/** An OpusHead (RFC 7845 §5.1) for an encoder that gives none: mono or stereo, family 0. */
export function opusHead(channels, sampleRate) {
  const head = new Uint8Array(19);
  head.set(textEncoder.encode('OpusHead'));
  const view = new DataView(head.buffer);
  view.setUint8(8, 1); // version
  view.setUint8(9, channels);
  view.setUint16(10, OPUS_DEFAULT_PRE_SKIP, true);
  view.setUint32(12, sampleRate, true);
  return head; // output gain 0, channel mapping family 0
}

/** The pre-skip an OpusHead declares, in samples at 48 kHz. */
function opusPreSkip(head) {
  return new DataView(head.buffer, head.byteOffset, head.byteLength).getUint16(10, true);
}

/**
 * The start of a live WebM stream: the EBML header, an unknown-size Segment, Info and Tracks.
 * `video` is `{ width, height }`; `audio` is `{ channels, sampleRate, opusHead }`; either may
 * be null, not both.
 */
export function streamHeader({ video, audio }, writingApp) {
  // A TrackEntry; the track's number is its UID too (one stream, two tracks at most).
  const entry = (number, type, codecId, rest) =>
    master(ID.TRACK_ENTRY, [
      uint(ID.TRACK_NUMBER, number),
      uint(ID.TRACK_UID, number),
      uint(ID.TRACK_TYPE, type),
      string(ID.CODEC_ID, codecId),
      ...rest,
    ]);
  const tracks = [];
  if (video) {
    tracks.push(
      entry(TRACK.VIDEO, 1, 'V_VP8', [
        master(ID.VIDEO, [uint(ID.PIXEL_WIDTH, video.width), uint(ID.PIXEL_HEIGHT, video.height)]),
      ]),
    );
  }
  if (audio) {
    const head = audio.opusHead ?? opusHead(audio.channels, audio.sampleRate);
    tracks.push(
      entry(TRACK.AUDIO, 2, 'A_OPUS', [
        element(ID.CODEC_PRIVATE, head),
        uint(ID.CODEC_DELAY, Math.round((opusPreSkip(head) * 1e9) / 48_000)),
        uint(ID.SEEK_PRE_ROLL, OPUS_SEEK_PRE_ROLL_NS),
        master(ID.AUDIO, [float(ID.SAMPLING_FREQUENCY, audio.sampleRate), uint(ID.CHANNELS, audio.channels)]),
      ]),
    );
  }
  if (!tracks.length) throw new Error('a WebM stream needs a track');
  return concat([
    master(ID.EBML, [
      uint(ID.EBML_VERSION, 1),
      uint(ID.EBML_READ_VERSION, 1),
      uint(ID.EBML_MAX_ID_LENGTH, 4),
      uint(ID.EBML_MAX_SIZE_LENGTH, 8),
      string(ID.DOC_TYPE, 'webm'),
      uint(ID.DOC_TYPE_VERSION, 4),
      uint(ID.DOC_TYPE_READ_VERSION, 2),
    ]),
    idBytes(ID.SEGMENT),
    UNKNOWN_SIZE,
    master(ID.INFO, [
      uint(ID.TIMESTAMP_SCALE, TIMESTAMP_SCALE_NS),
      string(ID.MUXING_APP, 'lenscast'),
      string(ID.WRITING_APP, writingApp),
    ]),
    master(ID.TRACKS, tracks),
  ]);
}

/**
 * Writes blocks into unknown-size Clusters. A video keyframe starts a new Cluster, so each
 * Cluster can be decoded on its own, as players and the server's cache expect; so does a block
 * too far from its Cluster's time for the 16-bit offset (an audio-only stream, a long stall).
 */
export class ClusterWriter {
  constructor() {
    this.clusterMs = null;
    this.lastMs = new Map(); // track number -> the time of its last block
  }

  /** The bytes for one frame of `track` at `ms` (integer ms of media time). A time at or before
   *  the track's last is written 1 ms after it: two frames less than a millisecond apart (or
   *  rounded into one) would be one frame to a player, and a time going back is an error. */
  block(track, ms, keyframe, payload) {
    const last = this.lastMs.get(track);
    if (last !== undefined && ms <= last) ms = last + 1;
    this.lastMs.set(track, ms);
    const parts = [];
    let offset = this.clusterMs === null ? null : ms - this.clusterMs;
    const startCluster =
      offset === null ||
      (track === TRACK.VIDEO && keyframe) ||
      offset < BLOCK_OFFSET_MIN ||
      offset > BLOCK_OFFSET_MAX;
    if (startCluster) {
      this.clusterMs = ms;
      offset = 0;
      parts.push(idBytes(ID.CLUSTER), UNKNOWN_SIZE, uint(ID.TIMESTAMP, ms));
    }
    const head = new Uint8Array(4);
    head[0] = 0x80 | track; // the track number as a one-byte vint
    new DataView(head.buffer).setInt16(1, offset);
    head[3] = keyframe ? 0x80 : 0;
    const body = concat([head, payload]);
    parts.push(idBytes(ID.SIMPLE_BLOCK), sizeVint(body.length), body);
    return concat(parts);
  }
}
