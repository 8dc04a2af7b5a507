// lenscast's MSE player: the live WebM stream from /ws/view (messages described in constants.js)
// played in a <video> through Media Source Extensions. It knows the element it plays into and
// nothing else of the page, which learns what it does from `state` and `onChange`.

import {
  BACKOFF_MAX_MS,
  BACKOFF_MIN_MS,
  BASELINE_WEBM_MIME,
  GLASS_REPORT_EVERY_MS,
  KEEP_PLAYED,
  MAX_QUEUED_BYTES,
  MESSAGE,
  parseMessage,
  QUOTA_RETRIES,
  QUOTA_RETRY_MS,
  TICK_MS,
  TRIM_EVERY_MS,
  VIEW_PATH,
} from './constants.js';
import { BlockTimes } from './block-times.js';
import { GlassReadout } from './glass-readout.js';
import { LatencyClock } from './latency-clock.js';
import { ServerClock } from './server-clock.js';

// iOS Safari has only ManagedMediaSource; everything else has MediaSource.
const MediaSourceImpl = window.MediaSource || window.ManagedMediaSource;

/** Why this browser cannot play the WebM stream through MSE; null if it can. */
export function whyNoMse() {
  if (!MediaSourceImpl) return 'no Media Source Extensions';
  if (!MediaSourceImpl.isTypeSupported(BASELINE_WEBM_MIME)) return 'no WebM in Media Source Extensions';
  return null;
}

/** Chrome does not play across a gap in the buffer: a viewer who joins mid-stream has nothing
 *  before its first Cluster, and a source restart or a skip to the next keyframe leaves a hole.
 *  Chrome even stops a few frames before the hole, so a stall with media ahead means: jump.
 *  (Exported for the latency bench's floor page, which plays by the same rule.) */
export function skipGap(video, buffered, stuck) {
  const t = video.currentTime;
  let inside = false;
  for (let i = 0; i < buffered.length; i++) {
    if (buffered.start(i) <= t && t < buffered.end(i)) inside = true;
    if (buffered.start(i) > t) {
      if (!inside || stuck) {
        console.info(`lenscast: skipping a gap, ${t.toFixed(2)} -> ${buffered.start(i).toFixed(2)} s`);
        video.currentTime = buffered.start(i);
      }
      return;
    }
  }
}

/** One MediaSource + SourceBuffer for one mime type. Replaced when the mime type changes. */
class SourceBufferQueue {
  /** Attaches a new MediaSource to `video`; `onFatal(why)` when it cannot go on,
   *  `onAppended(byteCount)` after every append, `beforeMedia(mediaSeconds)` just before
   *  media is appended (when the player has least in hand), with the media time the append
   *  starts at (its earliest block's). */
  constructor(video, mime, { onFatal, onAppended, beforeMedia }) {
    this.video = video;
    this.mime = mime;
    this.onFatal = onFatal;
    this.onAppended = onAppended;
    this.beforeMedia = beforeMedia;
    // Waiting for the SourceBuffer: { init: bool, bytes: Uint8Array, start: seconds or null }.
    this.pending = [];
    this.pendingBytes = 0;
    this.removeRange = null; // [start, end] to remove before the next append
    this.quotaRetries = 0;
    this.sourceBuffer = null;
    this.closed = false;
    this.mediaSource = new MediaSourceImpl();
    this.mediaSource.addEventListener('sourceopen', () => this.open(), { once: true });
    video.disableRemotePlayback = true; // required by ManagedMediaSource, harmless elsewhere
    video.src = URL.createObjectURL(this.mediaSource);
  }

  open() {
    if (this.closed) return;
    URL.revokeObjectURL(this.video.src);
    try {
      this.sourceBuffer = this.mediaSource.addSourceBuffer(this.mime);
    } catch (err) {
      this.onFatal(`cannot play ${this.mime}: ${err.message}`);
      return;
    }
    // The server's timestamps only move forward, so they can be used as they are.
    this.sourceBuffer.mode = 'segments';
    this.sourceBuffer.addEventListener('updateend', () => this.pump());
    this.pump();
  }

  /** Queues bytes for the SourceBuffer, whose earliest block is at `start` seconds (null if it
   *  has none). Returns false if the queue is over its budget. */
  append(bytes, init, start) {
    this.pending.push({ init, bytes: new Uint8Array(bytes), start });
    this.pendingBytes += bytes.byteLength;
    this.pump();
    return this.pendingBytes <= MAX_QUEUED_BYTES;
  }

  /** Asks for played media to be removed, so the SourceBuffer never fills up. */
  trim(keepSeconds) {
    // After a media error the MediaSource closes, and reading `buffered` would throw.
    if (this.mediaSource.readyState !== 'open' || !this.sourceBuffer || this.removeRange) return false;
    const buffered = this.sourceBuffer.buffered;
    if (!buffered.length) return false;
    const start = buffered.start(0);
    const end = this.video.currentTime - keepSeconds;
    if (end <= start + 0.5) return false;
    this.removeRange = [start, end];
    this.pump();
    return true;
  }

  /** Feeds the SourceBuffer one operation at a time: it accepts nothing while updating. */
  pump() {
    const sb = this.sourceBuffer;
    if (this.closed || !sb || sb.updating) return;
    if (this.removeRange) {
      const [start, end] = this.removeRange;
      this.removeRange = null;
      sb.remove(start, end);
      return;
    }
    const op = this.takeNext();
    if (!op) return;
    try {
      // A new init segment starts a new stream: forget any half-parsed Cluster first.
      if (op.init) sb.abort();
      // Not `sb.buffered`: Chromium's grows dearer with the session's age (see block-times.js).
      else if (op.start !== null) this.beforeMedia(op.start);
      sb.appendBuffer(op.bytes);
    } catch (err) {
      this.pending.unshift(op);
      this.onAppendError(err);
      return;
    }
    this.pendingBytes -= op.bytes.byteLength;
    this.quotaRetries = 0;
    this.onAppended(op.bytes.byteLength);
  }

  /** The next operation, with consecutive media chunks merged: one append costs less than many. */
  takeNext() {
    const first = this.pending.shift();
    if (!first || first.init || !this.pending.length || this.pending[0].init) return first;
    let end = 0;
    while (end < this.pending.length && !this.pending[end].init) end++;
    const parts = [first, ...this.pending.splice(0, end)];
    const starts = parts.map((part) => part.start).filter((start) => start !== null);
    const bytes = new Uint8Array(parts.reduce((n, part) => n + part.bytes.byteLength, 0));
    let offset = 0;
    for (const part of parts) {
      bytes.set(part.bytes, offset);
      offset += part.bytes.byteLength;
    }
    return { init: false, bytes, start: starts.length ? Math.min(...starts) : null };
  }

  onAppendError(err) {
    if (err.name !== 'QuotaExceededError' || this.quotaRetries++ >= QUOTA_RETRIES) {
      this.onFatal(`append failed: ${err.name} ${err.message}`);
      return;
    }
    // The browser's buffer is full despite trimming. Free all but a second of what has been
    // played, or if there is nothing to free, let playback use some up; then retry the same bytes.
    if (!this.trim(1)) setTimeout(() => this.pump(), QUOTA_RETRY_MS);
  }

  /** Detaches from the video element; nothing queued is appended after this. */
  close() {
    this.closed = true;
    this.pending = [];
    this.video.removeAttribute('src');
    this.video.load();
  }
}

/**
 * Plays the live WebM stream in `video`, reconnecting with backoff whenever it fails. `state`
 * holds what it is doing, and `onChange(state)` runs whenever that may have changed (a few times
 * a second while playing):
 *   state: connecting | waiting | playing | reconnecting | unsupported
 *   mime, audioOnly: the stream's, from its last init message
 *   unsupportedMime: the stream's mime type while MSE cannot play it, else null
 *   behindLive: seconds between the playhead and the live edge (see LatencyClock), or null
 *   glassToGlassMs: the latency readout (see GlassReadout), or null
 *   deliveryMs: from the server's broadcast to this page's socket (the latest stamp's), or null
 *   slackTargetMs: what the player keeps in hand at least when media arrives (see LatencyClock)
 *   jitterMs: how unevenly media arrived lately (the latest arrival less the earliest), or null
 *   stalls: how often the player ran dry while playing
 *   reconnects, appendedBytes, autoplayRefused
 */
export class MsePlayer {
  /** A player for `video`; nothing happens until `start()`. */
  constructor(video, onChange = () => {}) {
    this.video = video;
    this.onChange = onChange;
    const readout = new GlassReadout(video, null);
    this.state = {
      state: 'connecting',
      mime: null,
      audioOnly: false,
      unsupportedMime: null,
      behindLive: null,
      // Worked out when read, from the picture on screen (see GlassReadout).
      get glassToGlassMs() {
        return readout.glassToGlassMs;
      },
      deliveryMs: null,
      reconnects: 0,
      appendedBytes: 0,
      autoplayRefused: false,
    };
    this.clock = new LatencyClock(video);
    this.serverClock = null; // one per connection: a new server may have another clock
    this.readout = readout;
    this.readout.onChange = () => {
      this.state.deliveryMs = readout.deliveryMs;
      this.changed();
    };
    this.socket = null;
    this.queue = null; // the SourceBufferQueue, while the stream is one MSE can play
    this.expectInit = false; // the next binary message is an init segment
    this.blockTimes = null; // one per connection: the stream's timescale and open Cluster
    this.backoffMs = BACKOFF_MIN_MS;
    this.lastTime = 0;
  }

  /** Connects, and keeps playback going and near the live edge from now on. */
  start() {
    const video = this.video;
    // Chrome says it is waiting for data when it reaches a gap: jump at once, not a tick later.
    video.addEventListener('waiting', () => this.queue && !video.seeking && this.skipGap(video.buffered, true));
    // A decode error leaves the element dead; a fresh MediaSource from a keyframe recovers.
    // Chromium's message names the cause (e.g. a block out of time order), for the console.
    video.addEventListener('error', () => {
      if (this.queue) this.reconnect(`media error ${video.error?.code} ${video.error?.message ?? ''}`.trim());
    });
    this.connect();
    this.readout.start();
    setInterval(() => this.reportLatency(), GLASS_REPORT_EVERY_MS);
    setInterval(() => this.tick(), TICK_MS);
    setInterval(() => this.trimPlayed(), TRIM_EVERY_MS);
  }

  /** Autoplay was refused and a user gesture has since started playback: try again on stalls. */
  autoplayAllowed() {
    this.state.autoplayRefused = false;
  }

  connect() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    // ?stamps=1: the capture stamps the latency readout needs (see constants.js).
    const ws = new WebSocket(`${scheme}//${location.host}${VIEW_PATH}?stamps=1`);
    ws.binaryType = 'arraybuffer';
    const serverClock = new ServerClock((text) => ws.readyState === WebSocket.OPEN && ws.send(text));
    this.serverClock = serverClock;
    this.readout.clock = serverClock;
    // Events from a socket we already gave up on must not touch the new one.
    ws.onopen = () => {
      if (this.socket !== ws) return;
      serverClock.start();
      this.setState('waiting');
    };
    ws.onmessage = (event) => {
      if (this.socket !== ws) return;
      if (typeof event.data === 'string') this.onText(event.data);
      else this.onBinary(event.data);
    };
    // An error is always followed by close, so close alone handles both.
    ws.onclose = () => this.socket === ws && this.reconnect('connection closed');
    this.socket = ws;
    this.blockTimes = new BlockTimes();
    this.setState('connecting');
  }

  onText(text) {
    const msg = parseMessage(text);
    if (msg?.type === MESSAGE.INIT) this.onInit(msg);
    else if (msg?.type === MESSAGE.PONG) this.serverClock?.onPong(msg);
    else if (msg?.type === MESSAGE.STAMP) this.readout.onStamp(msg);
    // Other message types are for newer pages; ignoring them keeps old pages working.
  }

  onInit({ mime, width }) {
    const state = this.state;
    state.mime = mime;
    state.audioOnly = width == null || mime.startsWith('audio/');
    if (!MediaSourceImpl.isTypeSupported(mime)) {
      // Without a queue, media is dropped until an init segment we can play.
      this.queue?.close();
      this.queue = null;
      state.unsupportedMime = mime;
      this.setState('unsupported');
      return;
    }
    state.unsupportedMime = null;
    // Same mime: MSE takes a new init segment in the same SourceBuffer (e.g. a resolution change).
    // A new mime usually means other tracks (video gone, say), which changeType() cannot do, so
    // start a new MediaSource.
    if (!this.queue || this.queue.mime !== mime) {
      this.queue?.close();
      this.queue = new SourceBufferQueue(this.video, mime, {
        onFatal: (why) => this.reconnect(why),
        onAppended: (byteCount) => (state.appendedBytes += byteCount),
        beforeMedia: (start) => !this.video.paused && !this.video.seeking && this.clock.note(start),
      });
    }
    this.expectInit = true;
    this.changed();
  }

  onBinary(data) {
    if (!this.queue) return;
    const init = this.expectInit;
    this.expectInit = false;
    if (!this.queue.append(data, init, this.blockTimes.earliest(data))) {
      this.reconnect('too far behind');
      return;
    }
    if (!init) this.backoffMs = BACKOFF_MIN_MS; // media is flowing: the connection is good again
  }

  /** Drops the connection and the MediaSource, then connects again after a growing delay. */
  reconnect(why) {
    console.info(`lenscast: reconnecting (${why})`);
    const ws = this.socket;
    this.socket = null;
    ws?.close();
    this.serverClock?.stop();
    this.serverClock = null;
    this.readout.reset();
    this.queue?.close();
    this.queue = null;
    this.expectInit = false;
    this.state.reconnects++;
    this.clock.reset();
    this.state.behindLive = null;
    this.setState('reconnecting');
    setTimeout(() => this.connect(), this.backoffMs);
    this.backoffMs = Math.min(this.backoffMs * 2, BACKOFF_MAX_MS);
  }

  /** Tells the server what this page sees, for the presenter's figure. */
  reportLatency() {
    const ms = this.readout.smoothedMs;
    if (ms === null || this.socket?.readyState !== WebSocket.OPEN) return;
    this.socket.send(JSON.stringify({ type: MESSAGE.LATENCY, ms: Math.max(0, ms) }));
  }

  /** Runs a few times a second: keeps playback going and near the live edge. */
  tick() {
    const video = this.video;
    const buffered = video.buffered;
    if (!this.queue || !buffered.length) return;
    // Not moving although nobody paused or seeked: waiting for data, or stuck before a gap.
    const stuck = !video.paused && !video.seeking && video.currentTime === this.lastTime;
    this.skipGap(buffered, stuck);
    this.clock.follow(buffered);
    this.state.behindLive = this.clock.behindLive;
    this.state.slackTargetMs = Math.round(this.clock.target * 1000);
    this.state.stalls = this.clock.stalls;
    const jitter = this.clock.jitter;
    this.state.jitterMs = jitter === null ? null : Math.round(jitter * 1000);
    if (video.paused && !this.state.autoplayRefused) this.tryPlay();
    this.lastTime = video.currentTime;
    if (this.socket?.readyState === WebSocket.OPEN) {
      this.state.state = stuck || video.paused ? 'waiting' : 'playing';
    }
    this.changed();
  }

  skipGap(buffered, stuck) {
    skipGap(this.video, buffered, stuck);
  }

  tryPlay() {
    this.video.play().catch((err) => {
      // Autoplay refused: only a user gesture may start playback now, so stop asking until then.
      if (err.name === 'NotAllowedError') {
        this.state.autoplayRefused = true;
        this.changed();
      }
    });
  }

  /** Removes played media now and then; without it, a long session hits QuotaExceededError. */
  trimPlayed() {
    this.queue?.trim(KEEP_PLAYED);
  }

  setState(state) {
    this.state.state = state;
    this.changed();
  }

  changed() {
    this.onChange(this.state);
  }
}
