// lenscast viewer page: plays the live WebM stream from /ws/view with the MSE player, or the
// server's HLS mirror where MSE cannot take WebM (or with /?hls), and shows what it is doing in
// the status line, the message and the play overlay.

import {
  CLOCK_BITS,
  CLOCK_CELL,
  CLOCK_COLUMNS,
  CLOCK_MAX_MS,
  CLOCK_READ_MS,
  CLOCK_SAMPLES_KEPT,
  STATUS_PATH,
  STATUS_POLL_MS,
} from './constants.js';
import { playHls } from './hls-player.js';
import { MsePlayer, whyNoMse } from './mse-player.js';

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

let msePlayer = null;

/** Plays the WebM stream in this page, mirroring its state into `lenscast` and the page. */
function startMse() {
  msePlayer = new MsePlayer(video, (mse) => {
    lenscast.state = mse.state;
    lenscast.mime = mse.mime;
    lenscast.audioOnly = mse.audioOnly;
    lenscast.behindLive = mse.behindLive;
    lenscast.reconnects = mse.reconnects;
    lenscast.appendedBytes = mse.appendedBytes;
    stage.classList.toggle('audio-only', mse.audioOnly);
    playOverlay.hidden = !mse.autoplayRefused;
    const unsupported = mse.unsupportedMime;
    showMessage(unsupported ? `This browser cannot play ${unsupported} (Media Source Extensions). Try Chrome or Firefox.` : null);
    renderStatus();
  });
  msePlayer.start();
}

function onPlayClick() {
  // The click is a user gesture, so sound is allowed too.
  video.muted = false;
  video.play().then(() => {
    msePlayer?.autoplayAllowed();
    playOverlay.hidden = true;
  }, () => {});
}

async function pollStatus() {
  let status = null;
  try {
    const response = await fetch(STATUS_PATH, { cache: 'no-store' });
    if (response.ok) status = await response.json();
  } catch {
    // The server is away; the player's reconnect loop deals with that.
  }
  // Unknown rather than stale while the server does not answer.
  lenscast.viewers = status?.viewers ?? null;
  lenscast.source = status?.source?.state ?? null;
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

/** Why this page should play the HLS mirror instead of the WebM stream; null for WebM. */
function hlsReason() {
  if (new URLSearchParams(location.search).has('hls')) return 'asked for with ?hls';
  return whyNoMse();
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
  if (why) startHls(why);
  else startMse();
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
