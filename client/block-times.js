// The media times of the blocks in the live WebM stream, read off the bytes as they come, so the
// player can tell how late each append's media arrived (client/latency-clock.js) without asking
// the SourceBuffer where its buffered media ends before every append. Chromium's `buffered`
// grows dearer the longer a session runs (about 11 µs a read after one minute, 27 µs after five
// and 40 µs or more after fifteen, in headless Chromium 156), and the player appends some fifty
// times a second, three reads each: it was the part of the page's work that grew.
//
// Written here rather than taken from npm: it reads four element IDs out of a few header bytes
// and skips every payload; the EBML libraries on npm parse whole documents, need Node's Buffer,
// and would be the page's largest code. It reads a byte stream cut anywhere (the floor page of
// tests/browser/latency-bench.mjs feeds it MediaRecorder's chunks); a block counts in the chunk
// that holds its header, which for the server's messages, whole elements each (an init segment,
// a Cluster's start with its Timecode, blocks: src/http/view.rs), is the one that completes it.

const EBML = 0x1a45dfa3;
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
/** A block's header as far as its time: a track number (at most 8 bytes) and 2 bytes. */
const BLOCK_HEADER_MAX = 10;
/** What `readVint` returns for a byte no EBML number starts with. */
const INVALID = { invalid: true };

/**
 * An EBML variable-length integer at `pos`: `{ value, length }`, with the length marker kept
 * for IDs (`keepMarker`) and dropped for sizes (`value` null for "unknown size"); null when the
 * bytes end first, INVALID when no EBML number starts there.
 */
function readVint(bytes, pos, keepMarker) {
  if (pos >= bytes.length) return null;
  const first = bytes[pos];
  const length = Math.clz32(first) - 23; // leading zeros within the byte, plus one
  if (length > 8) return INVALID;
  if (pos + length > bytes.length) return null;
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

/** Follows one live WebM stream, chunk by chunk. */
export class BlockTimes {
  constructor() {
    this.scaleNs = DEFAULT_TIMECODE_SCALE_NS;
    this.clusterTimecode = null; // the open Cluster's, in timescale units; null outside one
    this.skip = 0; // bytes of an element's payload still to come, not read
    this.carry = new Uint8Array(0); // the start of an element the last chunk cut short
    // True after what cannot be followed (not EBML, or a leaf of unknown size): nothing is read
    // until a chunk starts a new stream with an EBML header.
    this.lost = false;
  }

  /** The media time (seconds) of the earliest block in `data`, or null if it holds none. */
  earliest(data) {
    let earliest = null;
    for (const { seconds } of this.blocks(data)) if (earliest === null || seconds < earliest) earliest = seconds;
    return earliest;
  }

  /**
   * The blocks whose headers are in `data` (the stream's next bytes, an ArrayBuffer or
   * Uint8Array), in stream order: `{ track, seconds }` (track number, media time).
   */
  blocks(data) {
    let bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
    const blocks = [];
    if (this.lost) {
      if (readVint(bytes, 0, true)?.value !== EBML) return blocks;
      this.lost = false;
      this.skip = 0;
      this.carry = new Uint8Array(0);
    }
    let pos = Math.min(this.skip, bytes.length);
    this.skip -= pos;
    if (this.carry.length) {
      const joined = new Uint8Array(this.carry.length + bytes.length);
      joined.set(this.carry);
      joined.set(bytes, this.carry.length);
      bytes = joined;
      this.carry = new Uint8Array(0);
    }
    while (pos < bytes.length) {
      const id = readVint(bytes, pos, true);
      const size = id && id !== INVALID ? readVint(bytes, pos + id.length, false) : id;
      if (id === INVALID || size === INVALID) break;
      if (!size) {
        this.carry = bytes.slice(pos); // the header goes on in the next chunk
        return blocks;
      }
      const start = pos + id.length + size.length;
      if (MASTERS.has(id.value)) {
        if (id.value === SEGMENT) this.scaleNs = DEFAULT_TIMECODE_SCALE_NS;
        if (id.value === SEGMENT || id.value === CLUSTER) this.clusterTimecode = null;
        pos = start; // its children follow, whether its size is known or not
        continue;
      }
      if (size.value === null) break; // a leaf of unknown size: there is no telling where it ends
      const end = start + size.value;
      const isBlock = id.value === SIMPLE_BLOCK || id.value === BLOCK;
      // What is read of an element must be in hand: a value, or a block's track and time.
      const read = id.value === TIMECODE_SCALE || id.value === TIMECODE ? end : isBlock ? start + BLOCK_HEADER_MAX : start;
      if (Math.min(read, end) > bytes.length) {
        this.carry = bytes.slice(pos);
        return blocks;
      }
      if (id.value === TIMECODE_SCALE && size.value <= 8) this.scaleNs = readUint(bytes, start, size.value);
      else if (id.value === TIMECODE && size.value <= 8) this.clusterTimecode = readUint(bytes, start, size.value);
      else if (isBlock && this.clusterTimecode !== null) {
        const track = readVint(bytes, start, false);
        if (track && track !== INVALID && track.length + 2 <= size.value) {
          const at = start + track.length;
          const relative = ((bytes[at] << 24) >> 16) | bytes[at + 1]; // signed 16 bits
          const seconds = ((this.clusterTimecode + relative) * this.scaleNs) / 1e9;
          blocks.push({ track: track.value, seconds });
        }
      }
      if (end > bytes.length) {
        this.skip = end - bytes.length; // the payload goes on in the next chunk
        return blocks;
      }
      pos = end;
    }
    if (pos < bytes.length) this.lost = true;
    return blocks;
  }
}
