// The presenter's WebM writer (client/webm-writer.js) without a browser: the EBML size rules at
// their edges and when Clusters start. What it writes from real encoders is read back by ffprobe,
// mkvinfo and ffmpeg in codec-recorder.test.mjs.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ClusterWriter, opusHead, sizeVint, streamHeader, TRACK } from '../../client/webm-writer.js';

const hex = (bytes) => Buffer.from(bytes).toString('hex');

test('webm writer: sizes take the fewest bytes, never the all-ones value that means unknown', () => {
  // RFC 8794 §4: a length-n vint holds 7n bits; all ones is reserved.
  assert.equal(hex(sizeVint(0)), '80');
  assert.equal(hex(sizeVint(126)), 'fe');
  assert.equal(hex(sizeVint(127)), '407f');
  assert.equal(hex(sizeVint(16382)), '7ffe');
  assert.equal(hex(sizeVint(16383)), '203fff');
  assert.equal(hex(sizeVint(2 ** 21 - 2)), '3ffffe');
  assert.equal(sizeVint(2 ** 28).length, 5);
  // Every size reads back as itself.
  for (const size of [1, 100, 127, 128, 300, 65535, 1 << 20, 12345678]) {
    const bytes = sizeVint(size);
    const length = Math.clz32(bytes[0]) - 23;
    assert.equal(bytes.length, length, `length marker of ${size}`);
    let value = bytes[0] & (0xff >> length);
    for (const byte of bytes.subarray(1)) value = value * 256 + byte;
    assert.equal(value, size);
  }
});

/** The Cluster time (if the bytes open one) and the block's track, offset and keyframe flag. */
function parseBlock(bytes) {
  let at = 0;
  let cluster = null;
  if (hex(bytes.subarray(0, 4)) === '1f43b675') {
    assert.equal(hex(bytes.subarray(4, 12)), '01ffffffffffffff', 'a live Cluster has unknown size');
    assert.equal(bytes[12], 0xe7, 'the Cluster opens with its Timestamp');
    const length = bytes[13] & 0x7f;
    cluster = 0;
    for (const byte of bytes.subarray(14, 14 + length)) cluster = cluster * 256 + byte;
    at = 14 + length;
  }
  assert.equal(bytes[at], 0xa3, 'a SimpleBlock');
  const sizeLength = Math.clz32(bytes[at + 1]) - 23;
  const body = bytes.subarray(at + 1 + sizeLength);
  const view = new DataView(body.buffer, body.byteOffset);
  return { cluster, track: body[0] & 0x7f, offset: view.getInt16(1), key: (body[3] & 0x80) !== 0, payload: body.subarray(4) };
}

test('webm writer: a video keyframe or a time out of the 16-bit range opens a Cluster; audio stays in it', () => {
  const writer = new ClusterWriter();
  const payload = Uint8Array.of(1, 2, 3);
  const write = (track, ms, key) => parseBlock(writer.block(track, ms, key, payload));

  assert.deepEqual(write(TRACK.AUDIO, 0, true), { cluster: 0, track: 2, offset: 0, key: true, payload });
  // The first picture: a keyframe, so a Cluster of its own at its time.
  assert.equal(write(TRACK.VIDEO, 19, true).cluster, 19);
  // Audio encoded after it but captured before it stays, a little behind the Cluster's time.
  assert.deepEqual(write(TRACK.AUDIO, 10, true), { cluster: null, track: 2, offset: -9, key: true, payload });
  assert.deepEqual(write(TRACK.VIDEO, 52, false), { cluster: null, track: 1, offset: 33, key: false, payload });
  assert.equal(write(TRACK.VIDEO, 1019, true).cluster, 1019);
  // An audio-only stretch longer than the offset can say opens a Cluster too.
  assert.equal(write(TRACK.AUDIO, 1019 + 0x7fff, true).cluster, null);
  assert.equal(write(TRACK.AUDIO, 1019 + 0x8000, true).cluster, 1019 + 0x8000);
});

test('webm writer: the header declares both tracks, with the encoder\'s OpusHead or a standard one', () => {
  const given = opusHead(2, 48000);
  given[10] = 0x40; // a pre-skip of its own (0x0140 = 320 samples)
  given[11] = 0x01;
  const header = streamHeader({ video: { width: 640, height: 480 }, audio: { channels: 2, sampleRate: 48000, opusHead: given } }, 'test');
  const text = Buffer.from(header).toString('latin1');
  assert.ok(text.includes('V_VP8') && text.includes('A_OPUS') && text.includes('webm'));
  assert.ok(Buffer.from(header).includes(Buffer.from(given)), 'the encoder\'s OpusHead is the CodecPrivate');
  // CodecDelay (0x56aa) is the pre-skip in ns: 320 samples at 48 kHz = 6 666 667 ns.
  const delayAt = Buffer.from(header).indexOf(Buffer.from([0x56, 0xaa]));
  const delay = Buffer.from(header).readUIntBE(delayAt + 3, header[delayAt + 2] & 0x7f);
  assert.equal(delay, Math.round((320 * 1e9) / 48000));

  const standard = opusHead(1, 48000);
  assert.equal(Buffer.from(standard).toString('latin1', 0, 8), 'OpusHead');
  assert.equal(standard[9], 1, 'one channel');
  assert.equal(Buffer.from(standard).readUInt16LE(10), 312, 'libopus\'s pre-skip');
  assert.equal(Buffer.from(standard).readUInt32LE(12), 48000);

  const videoOnly = Buffer.from(streamHeader({ video: { width: 320, height: 240 }, audio: null }, 'test'));
  assert.ok(!videoOnly.toString('latin1').includes('A_OPUS'));
  assert.throws(() => streamHeader({ video: null, audio: null }, 'test'), /needs a track/);
});

test('webm writer: each track\'s times go forward, even when two frames round to one millisecond', () => {
  const writer = new ClusterWriter();
  const payload = Uint8Array.of(7);
  let clusterMs = null;
  // The time a player reads for the block: its Cluster's plus its offset.
  const at = (track, ms, key = false) => {
    const block = parseBlock(writer.block(track, ms, key, payload));
    if (block.cluster !== null) clusterMs = block.cluster;
    return clusterMs + block.offset;
  };
  assert.equal(at(TRACK.VIDEO, 100, true), 100);
  assert.equal(at(TRACK.VIDEO, 100), 101, 'the same millisecond again moves 1 ms on');
  assert.equal(at(TRACK.VIDEO, 99), 102, 'a time going back is written after the last');
  assert.equal(at(TRACK.VIDEO, 133), 133, 'then times are kept as they are');
  // Each track on its own: audio may be behind video, and is not moved for it.
  assert.equal(at(TRACK.AUDIO, 90), 90);
  assert.equal(at(TRACK.AUDIO, 90), 91);
});
