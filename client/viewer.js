// lenscast viewer: plays the live WebM stream from /ws/view through Media Source Extensions,
// or the server's HLS mirror where MSE cannot take WebM (or with /?hls).
// The messages on /ws/view are described in constants.js.

import {
  BACKOFF_MAX_MS,
  BACKOFF_MIN_MS,
  BASELINE_WEBM_MIME,
  CATCH_UP_BEHIND,
  CATCH_UP_RATE,
  CAUGHT_UP_BEHIND,
  CLOCK_BITS,
  CLOCK_CELL,
  CLOCK_COLUMNS,
  CLOCK_MAX_MS,
  CLOCK_READ_MS,
  CLOCK_SAMPLES_KEPT,
  JUMP_BEHIND,
  JUMP_TARGET,
  KEEP_PLAYED,
  MAX_QUEUED_BYTES,
  MESSAGE,
  QUOTA_RETRIES,
  QUOTA_RETRY_MS,
  STATUS_PATH,
  STATUS_POLL_MS,
  TICK_MS,
  TRIM_EVERY_MS,
  VIEW_PATH,
} from './constants.js';
import { playHls } from './hls-player.js';

// iOS Safari has only ManagedMediaSource; everything else has MediaSource.
const MediaSourceImpl = window.MediaSource || window.ManagedMediaSource;

const video = document.getElementById('video');
const stage = document.getElementById('stage');
const statusLine = document.getElementById('status');
const playOverlay = document.getElementById('play-overlay');
const message = document.getElementById('message');

/** What the viewer is doing, for the status line, tests and the console. */
const lenscast = {
  engine: 'mse', // mse | hls (then `hls` holds the HLS player's own state)
  state: 'connecting', // connecting | waiting | playing | reconnecting | unsupported (HLS adds its own)
  mime: null,
  audioOnly: false,
  behindLive: null, // seconds between the playhead and the end of what we have
  reconnects: 0,
  appendedBytes: 0,
  viewers: null,
  source: null, // the server's source state from /api/status
};

/** One MediaSource + SourceBuffer for one mime type. Replaced when the mime type changes. */
class Player {
  constructor(mime, onFatal) {
    this.mime = mime;
    this.onFatal = onFatal;
    this.queue = []; // { init: bool, bytes: Uint8Array }, waiting for the SourceBuffer
    this.queuedBytes = 0;
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
    URL.revokeObjectURL(video.src);
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

  /** Queues bytes for the SourceBuffer. Returns false if the queue is over its budget. */
  append(bytes, init) {
    this.queue.push({ init, bytes: new Uint8Array(bytes) });
    this.queuedBytes += bytes.byteLength;
    this.pump();
    return this.queuedBytes <= MAX_QUEUED_BYTES;
  }

  /** Asks for played media to be removed, so the SourceBuffer never fills up. */
  trim(keepSeconds) {
    // After a media error the MediaSource closes, and reading `buffered` would throw.
    if (this.mediaSource.readyState !== 'open' || !this.sourceBuffer || this.removeRange) return false;
    const buffered = this.sourceBuffer.buffered;
    if (!buffered.length) return false;
    const start = buffered.start(0);
    const end = video.currentTime - keepSeconds;
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
      sb.appendBuffer(op.bytes);
    } catch (err) {
      this.queue.unshift(op);
      this.onAppendError(err);
      return;
    }
    this.queuedBytes -= op.bytes.byteLength;
    this.quotaRetries = 0;
    lenscast.appendedBytes += op.bytes.byteLength;
  }

  /** The next operation, with consecutive media chunks merged: one append costs less than many. */
  takeNext() {
    const first = this.queue.shift();
    if (!first || first.init || !this.queue.length || this.queue[0].init) return first;
    let end = 0;
    while (end < this.queue.length && !this.queue[end].init) end++;
    const parts = [first, ...this.queue.splice(0, end)];
    const bytes = new Uint8Array(parts.reduce((n, part) => n + part.bytes.byteLength, 0));
    let offset = 0;
    for (const part of parts) {
      bytes.set(part.bytes, offset);
      offset += part.bytes.byteLength;
    }
    return { init: false, bytes };
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

  close() {
    this.closed = true;
    this.queue = [];
    video.removeAttribute('src');
    video.load();
  }
}

let socket = null;
let player = null;
let expectInit = false; // the next binary message is an init segment
let backoffMs = BACKOFF_MIN_MS;
let lastTime = 0;
let autoplayRefused = false;

function connect() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(`${scheme}//${location.host}${VIEW_PATH}`);
  ws.binaryType = 'arraybuffer';
  // Events from a socket we already gave up on must not touch the new one.
  ws.onopen = () => socket === ws && setState('waiting');
  ws.onmessage = (event) => {
    if (socket !== ws) return;
    if (typeof event.data === 'string') onText(event.data);
    else onBinary(event.data);
  };
  // An error is always followed by close, so close alone handles both.
  ws.onclose = () => socket === ws && reconnect('connection closed');
  socket = ws;
  setState('connecting');
}

function onText(text) {
  let msg;
  try {
    msg = JSON.parse(text);
  } catch {
    return;
  }
  if (msg.type === MESSAGE.INIT) onInit(msg);
  // Other message types are for newer pages; ignoring them keeps old pages working.
}

function onInit({ mime, width }) {
  lenscast.mime = mime;
  lenscast.audioOnly = width == null || mime.startsWith('audio/');
  stage.classList.toggle('audio-only', lenscast.audioOnly);
  if (!MediaSourceImpl.isTypeSupported(mime)) {
    // Without a player, media is dropped until an init segment we can play.
    player?.close();
    player = null;
    setState('unsupported');
    showMessage(`This browser cannot play ${mime} (Media Source Extensions). Try Chrome or Firefox.`);
    return;
  }
  showMessage(null);
  // Same mime: MSE takes a new init segment in the same SourceBuffer (e.g. a resolution change).
  // A new mime usually means other tracks (video gone, say), which changeType() cannot do, so
  // start a new MediaSource.
  if (!player || player.mime !== mime) {
    player?.close();
    player = new Player(mime, (why) => reconnect(why));
  }
  expectInit = true;
}

function onBinary(data) {
  if (!player) return;
  const init = expectInit;
  expectInit = false;
  if (!player.append(data, init)) {
    reconnect('too far behind');
    return;
  }
  if (!init) backoffMs = BACKOFF_MIN_MS; // media is flowing: the connection is good again
}

/** Drops the connection and the player, then connects again after a growing delay. */
function reconnect(why) {
  console.info(`lenscast: reconnecting (${why})`);
  const ws = socket;
  socket = null;
  ws?.close();
  player?.close();
  player = null;
  expectInit = false;
  lenscast.reconnects++;
  lenscast.behindLive = null;
  setState('reconnecting');
  setTimeout(connect, backoffMs);
  backoffMs = Math.min(backoffMs * 2, BACKOFF_MAX_MS);
}

/** Runs a few times a second: keeps playback going and near the live edge. */
function tick() {
  const buffered = video.buffered;
  if (!player || !buffered.length) return;
  // Not moving although nobody paused or seeked: waiting for data, or stuck before a gap.
  const stuck = !video.paused && !video.seeking && video.currentTime === lastTime;
  skipGap(buffered, stuck);
  followLiveEdge(buffered);
  if (video.paused && !autoplayRefused) tryPlay();
  lastTime = video.currentTime;
  if (socket?.readyState === WebSocket.OPEN) setState(stuck || video.paused ? 'waiting' : 'playing');
}

/** Chrome does not play across a gap in the buffer: a viewer who joins mid-stream has nothing
 *  before its first Cluster, and a source restart or a skip to the next keyframe leaves a hole.
 *  Chrome even stops a few frames before the hole, so a stall with media ahead means: jump. */
function skipGap(buffered, stuck) {
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

function followLiveEdge(buffered) {
  const end = buffered.end(buffered.length - 1);
  if (end - video.currentTime > JUMP_BEHIND) {
    console.info(`lenscast: ${(end - video.currentTime).toFixed(1)} s behind, jumping to live`);
    video.currentTime = end - JUMP_TARGET;
    video.playbackRate = 1;
  }
  const behind = end - video.currentTime;
  lenscast.behindLive = Math.max(0, behind);
  if (behind > CATCH_UP_BEHIND) video.playbackRate = CATCH_UP_RATE;
  else if (behind < CAUGHT_UP_BEHIND) video.playbackRate = 1;
}

function tryPlay() {
  video.play().catch((err) => {
    // Autoplay refused: only a click may start playback now, so stop asking until then.
    if (err.name === 'NotAllowedError') {
      autoplayRefused = true;
      playOverlay.hidden = false;
    }
  });
}

function onPlayClick() {
  // The click is a user gesture, so sound is allowed too.
  video.muted = false;
  video.play().then(() => {
    autoplayRefused = false;
    playOverlay.hidden = true;
  }, () => {});
}

async function pollStatus() {
  let status = null;
  try {
    const response = await fetch(STATUS_PATH, { cache: 'no-store' });
    if (response.ok) status = await response.json();
  } catch {
    // The server is away; the socket's reconnect loop deals with that.
  }
  // Unknown rather than stale while the server does not answer.
  lenscast.viewers = status?.viewers ?? null;
  lenscast.source = status?.source?.state ?? null;
  renderStatus();
}

function setState(state) {
  lenscast.state = state;
  renderStatus();
}

function renderStatus() {
  const parts = [lenscast.state];
  if (lenscast.engine === 'hls') parts.push(`HLS (${lenscast.hls.engine ?? '…'})`);
  if (lenscast.source && lenscast.source !== 'live') parts.push(`source ${lenscast.source}`);
  // The server counts the WebM stream's viewers only, which this page is not one of over HLS.
  if (lenscast.viewers != null && lenscast.engine !== 'hls') {
    parts.push(`${lenscast.viewers} viewer${lenscast.viewers === 1 ? '' : 's'}`);
  }
  if (lenscast.behindLive != null) parts.push(`${lenscast.behindLive.toFixed(1)} s behind live`);
  if (lenscast.audioOnly) parts.push('audio only');
  statusLine.textContent = parts.join(' · ');
}

function showMessage(text) {
  message.hidden = !text;
  message.textContent = text ?? '';
}

/** Removes played media now and then; without it, a long session hits QuotaExceededError. */
function trimPlayed() {
  player?.trim(KEEP_PLAYED);
}

/** Why this page should play the HLS mirror instead of the WebM stream; null for WebM. */
function hlsReason() {
  if (new URLSearchParams(location.search).has('hls')) return 'asked for with ?hls';
  if (!MediaSourceImpl) return 'no Media Source Extensions';
  if (!MediaSourceImpl.isTypeSupported(BASELINE_WEBM_MIME)) return 'no WebM in Media Source Extensions';
  return null;
}

/** Plays the HLS mirror in this page, mirroring its state into `lenscast` and the status line. */
function startHls(why) {
  console.info(`lenscast: playing HLS (${why})`);
  lenscast.engine = 'hls';
  lenscast.hls = playHls(video, (hls) => {
    lenscast.state = hls.state;
    lenscast.behindLive = hls.behindLive;
    playOverlay.hidden = !hls.autoplayRefused;
    showMessage(hls.state === 'unsupported' ? hls.error : null);
    renderStatus();
  });
}

function startViewer() {
  window.lenscast = lenscast;
  playOverlay.addEventListener('click', onPlayClick);
  const why = hlsReason();
  if (why) {
    startHls(why);
  } else {
    // Chrome says it is waiting for data when it reaches a gap: jump at once, not a tick later.
    video.addEventListener('waiting', () => player && !video.seeking && skipGap(video.buffered, true));
    // A decode error leaves the element dead; a fresh MediaSource from a keyframe recovers.
    video.addEventListener('error', () => player && reconnect(`media error ${video.error?.code}`));
    connect();
    setInterval(tick, TICK_MS);
    setInterval(trimPlayed, TRIM_EVERY_MS);
  }
  setInterval(pollStatus, STATUS_POLL_MS);
  pollStatus();
  if (new URLSearchParams(location.search).get('clock') === '1') startClockReader();
}

// Glass-to-glass latency, opt-in with ?clock=1. The presenter page with ?clock=1 stamps every
// frame with the low 32 bits of Date.now() as black and white cells in the bottom-left corner
// (the layout is described in constants.js). Reading the stamp off the picture on screen gives
// the age of what the viewer sees: camera, recorder, upload, server, MSE and playback together.
// Only meaningful when presenter and viewer share a clock (the same machine, as in the tests).

/** Decodes the strip from its pixels (RGBA, CLOCK_COLUMNS cells wide); null if unreadable. */
function readClock(pixels, width) {
  const bits = [];
  for (let i = 0; i < 2 * CLOCK_BITS; i++) {
    // The mean luma of the cell's central 8 x 8 pixels, away from edges that compression blurs.
    const left = (i % CLOCK_COLUMNS) * CLOCK_CELL + CLOCK_CELL / 4;
    const top = Math.floor(i / CLOCK_COLUMNS) * CLOCK_CELL + CLOCK_CELL / 4;
    let sum = 0;
    for (let y = top; y < top + CLOCK_CELL / 2; y++) {
      for (let x = left; x < left + CLOCK_CELL / 2; x++) {
        const at = (y * width + x) * 4;
        sum += 0.299 * pixels[at] + 0.587 * pixels[at + 1] + 0.114 * pixels[at + 2];
      }
    }
    bits.push(sum / (CLOCK_CELL * CLOCK_CELL / 4) > 128 ? 1 : 0);
  }
  let stamp = 0;
  for (let i = 0; i < CLOCK_BITS; i++) {
    // The second half repeats the bits inverted: a cell that agrees with its twin is a misread.
    if (bits[i] === bits[i + CLOCK_BITS]) return null;
    stamp = stamp * 2 + bits[i];
  }
  return stamp;
}

function startClockReader() {
  const samples = [];
  lenscast.glassToGlassMs = samples;
  const canvas = document.createElement('canvas');
  canvas.width = CLOCK_COLUMNS * CLOCK_CELL;
  canvas.height = ((2 * CLOCK_BITS) / CLOCK_COLUMNS) * CLOCK_CELL;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  setInterval(() => {
    // A paused or stalled picture is old for a reason the clock cannot see: no sample.
    if (video.paused || video.readyState < HTMLMediaElement.HAVE_CURRENT_DATA) return;
    const top = video.videoHeight - canvas.height;
    if (top < 0 || video.videoWidth < canvas.width) return;
    ctx.drawImage(video, 0, top, canvas.width, canvas.height, 0, 0, canvas.width, canvas.height);
    const stamp = readClock(ctx.getImageData(0, 0, canvas.width, canvas.height).data, canvas.width);
    if (stamp === null) return;
    const ageMs = (Date.now() % 2 ** 32 - stamp + 2 ** 32) % 2 ** 32;
    if (ageMs > CLOCK_MAX_MS) return;
    samples.push(ageMs);
    if (samples.length > CLOCK_SAMPLES_KEPT) samples.shift();
  }, CLOCK_READ_MS);
}

startViewer();
