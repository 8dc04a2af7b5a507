// lenscast presenter: camera preview, and MediaRecorder's WebM uploaded over /ws/publish.
// What goes over the socket each way, and the close codes, are described in constants.js.
//
// With ?clock=1 the page records a canvas instead of the camera: each frame is the camera image
// with Date.now() drawn as black and white cells in the bottom-left corner, which the viewer page
// (also with ?clock=1) reads back to measure glass-to-glass latency.

import { stampedCanvas } from './clock-stamp.js';
import {
  CLOCK_FPS,
  CLOSE,
  CLOSE_REASON_MAX,
  KEYFRAME_INTERVAL_MS,
  MAX_UNSENT_BYTES,
  MESSAGE,
  PUBLISH_PATH,
  PUBLISH_REFUSALS,
  RECORDER_MIMES,
  STOP_FLUSH_MS,
  TIMESLICE_MS,
  VIDEO_BITS_PER_SECOND,
} from './constants.js';

const params = new URLSearchParams(location.search);
const token = params.get('token') ?? '';
const clockMode = params.get('clock') === '1';

const preview = document.getElementById('preview');
const controls = document.getElementById('controls');
const startButton = document.getElementById('start');
const stopButton = document.getElementById('stop');
const takeoverBox = document.getElementById('takeover');
const stateLine = document.getElementById('state');
const message = document.getElementById('message');
const figures = {
  bytesSent: document.getElementById('bytes-sent'),
  mime: document.getElementById('mime'),
  fps: document.getElementById('fps'),
  faces: document.getElementById('faces'),
  latency: document.getElementById('latency'),
  dropped: document.getElementById('dropped'),
};

/** What the presenter is doing, for the page, tests and the console. */
const presenter = {
  state: 'idle', // idle | connecting | live | stopping | refused | disconnected
  reason: null, // why refused or disconnected
  bytesSent: 0,
  lastStats: null, // the server's last stats message
  mime: null, // what the recorder really records
};
window.lenscastPresenter = presenter;

let camera = null; // the getUserMedia stream, kept for the whole page
let clockCanvas = null; // in clock mode, what gets recorded
let broadcast = null; // the current { ws, recorder, ... }, or null when idle

async function openCamera() {
  const video = { width: 640, height: 480 };
  try {
    camera = await navigator.mediaDevices.getUserMedia({ video, audio: true });
  } catch {
    // No microphone, or it was refused: video alone is still worth sending.
    try {
      camera = await navigator.mediaDevices.getUserMedia({ video });
    } catch (err) {
      showMessage(`No camera: ${err.name} ${err.message}`);
      return;
    }
  }
  preview.srcObject = camera;
  if (clockMode) clockCanvas = stampedCanvas(preview);
  startButton.disabled = false;
}

/** The stream to record: the camera, or in clock mode the stamped canvas plus the microphone. */
function recordedStream() {
  if (!clockMode) return camera;
  const canvasStream = clockCanvas.captureStream(CLOCK_FPS);
  return new MediaStream([...canvasStream.getVideoTracks(), ...camera.getAudioTracks()]);
}

function chooseMime(hasAudio) {
  if (!window.MediaRecorder) return null;
  const usable = RECORDER_MIMES.filter((mime) => hasAudio || !mime.includes('opus'));
  return usable.find((mime) => MediaRecorder.isTypeSupported(mime)) ?? '';
}

function publishUrl(scheme) {
  const url = new URL(PUBLISH_PATH, location.href);
  url.protocol = scheme;
  url.searchParams.set('token', token);
  if (takeoverBox.checked) url.searchParams.set('takeover', '1');
  return url.href;
}

/** Opens the socket first; recording starts once the server has accepted it. */
function start() {
  if (broadcast) return;
  const ws = new WebSocket(publishUrl(location.protocol === 'https:' ? 'wss:' : 'ws:'));
  const session = { ws, recorder: null, tracks: [], opened: false, stopping: false, failure: null };
  broadcast = session;
  Object.assign(presenter, { bytesSent: 0, lastStats: null, reason: null });
  setState('connecting');
  // Events from a session we already left must not touch the next one.
  ws.onopen = () => {
    if (broadcast !== session) return;
    session.opened = true;
    startRecording(session);
  };
  ws.onmessage = (event) => broadcast === session && typeof event.data === 'string' && onText(event.data);
  // An error is always followed by close, so close alone handles both.
  ws.onclose = (event) => broadcast === session && onClose(session, event);
}

function startRecording(session) {
  const stream = recordedStream();
  session.tracks = clockMode ? stream.getVideoTracks() : [];
  const mime = chooseMime(stream.getAudioTracks().length > 0);
  if (mime === null) {
    fail(session, 'refused', 'this browser has no MediaRecorder');
    return;
  }
  // A video-only mime type cannot take the microphone's track as well.
  const tracks = /opus/.test(mime) || !/codecs=/.test(mime) ? stream.getTracks() : stream.getVideoTracks();
  let recorder;
  try {
    recorder = new MediaRecorder(new MediaStream(tracks), {
      mimeType: mime,
      videoBitsPerSecond: VIDEO_BITS_PER_SECOND,
      videoKeyFrameIntervalDuration: KEYFRAME_INTERVAL_MS,
    });
    recorder.ondataavailable = (event) => send(session, event.data);
    recorder.onerror = (event) => fail(session, 'disconnected', `recorder error: ${event.error?.message}`);
    // After Stop the last chunk has been handed over by now; otherwise the camera went away.
    recorder.onstop = () => {
      if (session.stopping) session.ws.close(CLOSE.NORMAL, 'presenter stopped');
      else fail(session, 'disconnected', 'the recorder stopped (camera gone?)');
    };
    recorder.start(TIMESLICE_MS);
  } catch (err) {
    fail(session, 'refused', `cannot record ${mime || 'WebM'}: ${err.message}`);
    return;
  }
  session.recorder = recorder;
  presenter.mime = recorder.mimeType || mime;
  setState('live');
}

function send(session, blob) {
  const { ws } = session;
  if (!blob.size || ws.readyState !== WebSocket.OPEN) return;
  // Unsent data only grows on a link slower than the recording: better to stop than to lag.
  if (ws.bufferedAmount > MAX_UNSENT_BYTES) {
    const waiting = (ws.bufferedAmount / 1024 / 1024).toFixed(1);
    fail(session, 'disconnected', `upload too slow (${waiting} MB not yet sent)`);
    return;
  }
  ws.send(blob);
  presenter.bytesSent += blob.size;
  render();
}

/** Stop: the recorder hands over its last chunk, then the socket closes normally. */
function stop() {
  const session = broadcast;
  if (!session || session.stopping) return;
  session.stopping = true;
  setState('stopping');
  if (session.recorder?.state === 'recording') {
    session.recorder.stop();
    // Should the recorder never say it stopped, close anyway.
    setTimeout(() => session.ws.close(CLOSE.NORMAL, 'presenter stopped'), STOP_FLUSH_MS);
  } else {
    session.ws.close(CLOSE.NORMAL, 'presenter stopped');
  }
}

/** Ends a session on our side with a state and a reason for the user. */
function fail(session, state, reason) {
  if (broadcast !== session || session.failure) return;
  session.failure = { state, reason };
  session.stopping = true;
  stopRecorder(session);
  session.ws.close(CLOSE.NORMAL, reason.slice(0, CLOSE_REASON_MAX));
  // Show it at once; the close event, when it comes, keeps what was shown.
  presenter.reason = reason;
  setState(state);
}

function stopRecorder(session) {
  const { recorder } = session;
  if (recorder && recorder.state !== 'inactive') {
    recorder.onstop = null;
    recorder.ondataavailable = null;
    recorder.stop();
  }
  for (const track of session.tracks) track.stop();
}

async function onClose(session, event) {
  stopRecorder(session);
  let state = 'disconnected';
  let reason = null;
  if (session.failure) {
    ({ state, reason } = session.failure);
  } else if (session.stopping) {
    state = 'idle';
  } else if (!session.opened) {
    // A refusal before the upgrade reaches the page only as a failed connection: ask again
    // over plain HTTP to learn the status code and the server's reason.
    state = 'refused';
    reason = await whyRefused();
  } else if (event.code === CLOSE.NORMAL || event.code === CLOSE.GOING_AWAY) {
    reason = event.reason || 'the server ended the broadcast';
  } else if (event.code === CLOSE.ABNORMAL) {
    reason = 'connection lost';
  } else {
    state = 'refused';
    reason = `${event.reason || 'no reason given'} (close code ${event.code})`;
  }
  broadcast = null;
  presenter.reason = reason;
  setState(state);
}

async function whyRefused() {
  try {
    const response = await fetch(publishUrl(location.protocol), { cache: 'no-store' });
    // Only these statuses come from the publish rules; anything else is about the plain GET.
    if (PUBLISH_REFUSALS.includes(response.status)) {
      return `${response.status} ${(await response.text()).trim()}`;
    }
    return 'refused or unreachable';
  } catch {
    return 'refused or unreachable (no answer from the server)';
  }
}

function onText(text) {
  let msg;
  try {
    msg = JSON.parse(text);
  } catch {
    return;
  }
  // Other message types are for newer pages; ignoring them keeps old pages working.
  if (msg.type !== MESSAGE.STATS) return;
  presenter.lastStats = msg;
  render();
}

function setState(state) {
  presenter.state = state;
  const busy = broadcast !== null;
  startButton.disabled = busy || !camera;
  stopButton.disabled = !busy || broadcast.stopping;
  takeoverBox.disabled = busy;
  render();
}

function render() {
  const { state, reason, bytesSent, lastStats, mime } = presenter;
  stateLine.textContent = reason ? `${state}: ${reason}` : state;
  stateLine.dataset.state = state;
  figures.bytesSent.textContent = formatBytes(bytesSent);
  figures.mime.textContent = mime ?? '–';
  const p = lastStats?.pipeline;
  // Without a pipeline (a --passthrough server) there is nothing more to show.
  figures.fps.textContent = p ? `${p.fps_in.toFixed(1)} / ${p.fps_out.toFixed(1)}` : '–';
  figures.faces.textContent = p ? `${p.faces_last} / ${p.faces_total}` : '–';
  figures.latency.textContent = p ? `${Math.round(p.latency_ms_p50)} ms` : '–';
  figures.dropped.textContent = p ? String(p.frames_dropped) : '–';
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function showMessage(text) {
  message.hidden = !text;
  message.textContent = text ?? '';
}

controls.addEventListener('submit', (event) => {
  event.preventDefault();
  start();
});
stopButton.addEventListener('click', stop);

if (!token) showMessage('No publish token: open the presenter URL the server printed (…/present?token=…).');
if (!navigator.mediaDevices?.getUserMedia) {
  showMessage('This browser cannot use a camera here (it needs https or localhost).');
} else {
  openCamera();
}
render();
