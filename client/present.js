// lenscast presenter: camera preview, and MediaRecorder's WebM uploaded over /ws/publish.
//
// The server parses the upload as one continuous WebM byte stream, so chunks go out as they
// come, in order, wherever the recorder happened to cut them. Every second the server answers
// with a text message {"type":"stats","received_bytes":N,"pipeline":{fps_in, faces_last, ...}}.
// When it turns the stream away it closes the socket with a code (1003 unsupported data,
// 1008 policy) and a reason, which the page shows.
//
// With ?clock=1 the page records a canvas instead of the camera: each frame is the camera image
// with Date.now() drawn as black and white cells in the bottom-left corner, which the viewer page
// (also with ?clock=1) reads back to measure glass-to-glass latency.

const TIMESLICE_MS = 100; // how often the recorder hands over a chunk: bounds the upload's delay
// Viewers join at keyframes and the server follows the presenter's, so this bounds a join.
const KEYFRAME_INTERVAL_MS = 1000;
const VIDEO_BITS_PER_SECOND = 1_500_000;
const MAX_BUFFERED_BYTES = 8 * 1024 * 1024; // more than this waiting to be sent: the link is too slow
const STOP_FLUSH_MS = 1000; // how long Stop waits for the recorder's last chunk
const CLOCK_FPS = 30;

// First supported wins. The server decodes VP8 fastest; opus variants only with a microphone.
const MIME_PREFERENCE = [
  'video/webm;codecs=vp8,opus',
  'video/webm;codecs=vp8',
  'video/webm;codecs=vp9,opus',
  'video/webm;codecs=vp9',
  'video/webm;codecs=h264,opus',
  'video/webm;codecs=h264',
  'video/webm',
];

// The timestamp strip: 16 x 4 cells of 16 x 16 px at the bottom-left, away from the face boxes.
// Rows 0-1 hold the low 32 bits of Date.now(), most significant first; rows 2-3 the same bits
// inverted, so a reader can tell a clean frame from one that compression smeared. Cells are
// whole 16 x 16 macroblocks in pure black or white, which survives two VP8 encodes.
// viewer.js (readClock) decodes this layout: keep the two in step.
const CLOCK_CELL = 16;
const CLOCK_COLUMNS = 16;
const CLOCK_BITS = 32;

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
  if (clockMode) startClock();
  startButton.disabled = false;
}

/** Clock mode: redraws the camera image and the timestamp strip onto a canvas, frame by frame. */
function startClock() {
  clockCanvas = document.createElement('canvas');
  const ctx = clockCanvas.getContext('2d');
  const draw = () => {
    if (preview.videoWidth) {
      if (clockCanvas.width !== preview.videoWidth) clockCanvas.width = preview.videoWidth;
      if (clockCanvas.height !== preview.videoHeight) clockCanvas.height = preview.videoHeight;
      ctx.drawImage(preview, 0, 0);
      drawClock(ctx, clockCanvas.height, Date.now() % 2 ** 32);
    }
  };
  // A timer rather than requestAnimationFrame, which stops entirely while the tab is hidden.
  setInterval(draw, 1000 / CLOCK_FPS);
}

/** Draws `stamp` (32 bits) as the strip of cells at the bottom-left of a `height` px frame. */
function drawClock(ctx, height, stamp) {
  const rows = (2 * CLOCK_BITS) / CLOCK_COLUMNS;
  const top = height - rows * CLOCK_CELL;
  for (let i = 0; i < 2 * CLOCK_BITS; i++) {
    const bit = (stamp >>> (CLOCK_BITS - 1 - (i % CLOCK_BITS))) & 1;
    const white = i < CLOCK_BITS ? bit : 1 - bit;
    ctx.fillStyle = white ? '#fff' : '#000';
    const x = (i % CLOCK_COLUMNS) * CLOCK_CELL;
    const y = top + Math.floor(i / CLOCK_COLUMNS) * CLOCK_CELL;
    ctx.fillRect(x, y, CLOCK_CELL, CLOCK_CELL);
  }
}

/** The stream to record: the camera, or in clock mode the stamped canvas plus the microphone. */
function recordedStream() {
  if (!clockMode) return camera;
  const canvasStream = clockCanvas.captureStream(CLOCK_FPS);
  return new MediaStream([...canvasStream.getVideoTracks(), ...camera.getAudioTracks()]);
}

function chooseMime(hasAudio) {
  if (!window.MediaRecorder) return null;
  const usable = MIME_PREFERENCE.filter((mime) => hasAudio || !mime.includes('opus'));
  return usable.find((mime) => MediaRecorder.isTypeSupported(mime)) ?? '';
}

function publishUrl(scheme) {
  const url = new URL('/ws/publish', location.href);
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
      if (session.stopping) session.ws.close(1000, 'presenter stopped');
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
  if (ws.bufferedAmount > MAX_BUFFERED_BYTES) {
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
    setTimeout(() => session.ws.close(1000, 'presenter stopped'), STOP_FLUSH_MS);
  } else {
    session.ws.close(1000, 'presenter stopped');
  }
}

/** Ends a session on our side with a state and a reason for the user. */
function fail(session, state, reason) {
  if (broadcast !== session || session.failure) return;
  session.failure = { state, reason };
  session.stopping = true;
  stopRecorder(session);
  session.ws.close(1000, reason.slice(0, 120));
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
  } else if (event.code === 1000 || event.code === 1001) {
    reason = event.reason || 'the server ended the broadcast';
  } else if (event.code === 1006) {
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
    if ([401, 403, 409].includes(response.status)) {
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
  if (msg.type !== 'stats') return;
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
