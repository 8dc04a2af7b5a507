// lenscast viewer page: plays the live WebM stream from /ws/view with the MSE player, or the
// server's HLS mirror where MSE cannot take WebM (or with /?hls), and shows what it is doing in
// the status line, the message and the play overlay.

import { readStamps } from './clock-stamp.js';
import { STATUS_PATH, STATUS_POLL_MS } from './constants.js';
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
  // The latency readout, camera (or server, for the demo) to this screen: the player's, worked
  // out when read so that it is as fresh as the picture on screen.
  get glassToGlassMs() {
    return (this.engine === 'hls' ? this.hls : msePlayer?.state)?.glassToGlassMs ?? null;
  },
  deliveryMs: null, // of that, from the server's broadcast to this page's socket
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
    lenscast.deliveryMs = mse.deliveryMs;
    lenscast.slackTargetMs = mse.slackTargetMs;
    lenscast.stalls = mse.stalls;
    lenscast.jitterMs = mse.jitterMs;
    lenscast.reconnects = mse.reconnects;
    lenscast.appendedBytes = mse.appendedBytes;
    stage.classList.toggle('audio-only', mse.audioOnly);
    playOverlay.hidden = !mse.autoplayRefused;
    const mime = mse.unsupportedMime;
    showMessage(mime && `This browser cannot play ${mime} (Media Source Extensions). Try Chrome or Firefox.`);
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
  if (lenscast.glassToGlassMs != null) parts.push(`${lenscast.glassToGlassMs} ms glass to glass`);
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
  // Glass-to-glass latency, with the presenter page's ?clock=1 (see clock-stamp.js).
  if (new URLSearchParams(location.search).get('clock') === '1') lenscast.stampAgesMs = readStamps(video);
}

startViewer();
