// The media times of the blocks in the live WebM stream, read off the bytes as they come, so the
// player can tell how late each append's media arrived (client/latency-clock.js) without asking
// the SourceBuffer where its buffered media ends before every append. Chromium's `buffered`
// grows dearer the longer a session runs (about 11 µs a read after one minute, 27 µs after five
// and 40 µs or more after fifteen, in headless Chromium 156), and the player appends some fifty
// times a second, three reads each: it was the part of the page's work that grew.
//
// Written here rather than taken from npm: it reads four element IDs out of a few header bytes
// per message and skips every payload; the EBML libraries on npm parse whole documents, need
// Node's Buffer, and would be the page's largest code. The server sends whole elements (an init
// segment, a Cluster's start with its Timecode, blocks: src/http/view.rs), so each message is
// read on its own; what carries over is the timescale and the open Cluster's Timecode.

const SEGMENT = 0x18538067;
const INFO = 0x1549a966;
const TIMECODE_SCALE = 0x2ad7b1;
const CLUSTER = 0x1f43b675;
const TIMECODE = 0xe7;
const BLOCK_GROUP = 0xa0;
const BLOCK = 0xa1;
const SIMPLE_BLOCK = 0xa3;
/** Elements whose children are read; everything else is skipped whole. */
const MASTERS = new Set([SEGMENT, INFO, CLUSTER, BLOCK_GROUP]);
const DEFAULT_TIMECODE_SCALE_NS = 1_000_000;

/**
 * An EBML variable-length integer at `pos`: `{ value, length }`, with the length marker kept
 * for IDs (`keepMarker`) and dropped for sizes (`value` null for "unknown size"); null when the
 * bytes end first or the first byte is not a valid start.
 */
function readVint(bytes, pos, keepMarker) {
  if (pos >= bytes.length) return null;
  const first = bytes[pos];
  const length = Math.clz32(first) - 23; // leading zeros within the byte, plus one
  if (length > 8 || pos + length > bytes.length) return null;
  let value = keepMarker ? first : first & (0xff >> length);
  let allOnes = value === 0xff >> length;
  for (let i = 1; i < length; i++) {
    value = value * 256 + bytes[pos + i];
    allOnes &&= bytes[pos + i] === 0xff;
  }
  return { value: !keepMarker && allOnes ? null : value, length };
}

/** An unsigned big-endian integer of `size` bytes (at most 8, as Number). */
function readUint(bytes, pos, size) {
  let value = 0;
  for (let i = 0; i < size; i++) value = value * 256 + bytes[pos + i];
  return value;
}

/** Follows one live WebM stream, message by message. */
export class BlockTimes {
  constructor() {
    this.scaleNs = DEFAULT_TIMECODE_SCALE_NS;
    this.clusterTimecode = null; // the open Cluster's, in timescale units; null outside one
  }

  /** The media time (seconds) of the earliest block in `data`, or null if it holds none. */
  earliest(data) {
    let earliest = null;
    for (const { seconds } of this.blocks(data)) if (earliest === null || seconds < earliest) earliest = seconds;
    return earliest;
  }

  /**
   * The blocks in `data` (an ArrayBuffer or Uint8Array of whole elements), in stream order:
   * `{ track, seconds }` (track number, media time). Reading stops at anything it cannot follow:
   * the rest of that message counts for nothing, and the player only misses a note of how late
   * it came.
   */
  blocks(data) {
    const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
    const blocks = [];
    let pos = 0;
    while (pos < bytes.length) {
      const id = readVint(bytes, pos, true);
      const size = id && readVint(bytes, pos + id.length, false);
      if (!size) break;
      const start = pos + id.length + size.length;
      if (MASTERS.has(id.value)) {
        if (id.value === SEGMENT) this.scaleNs = DEFAULT_TIMECODE_SCALE_NS;
        if (id.value === SEGMENT || id.value === CLUSTER) this.clusterTimecode = null;
        pos = start; // its children follow, whether its size is known or not
        continue;
      }
      if (size.value === null || start + size.value > bytes.length) break;
      if (id.value === TIMECODE_SCALE && size.value <= 8) this.scaleNs = readUint(bytes, start, size.value);
      else if (id.value === TIMECODE && size.value <= 8) this.clusterTimecode = readUint(bytes, start, size.value);
      else if ((id.value === SIMPLE_BLOCK || id.value === BLOCK) && this.clusterTimecode !== null) {
        const track = readVint(bytes, start, false);
        if (track && track.length + 2 <= size.value) {
          const at = start + track.length;
          const relative = ((bytes[at] << 24) >> 16) | bytes[at + 1]; // signed 16 bits
          const seconds = ((this.clusterTimecode + relative) * this.scaleNs) / 1e9;
          blocks.push({ track: track.value, seconds });
        }
      }
      pos = start + size.value;
    }
    return blocks;
  }
}
