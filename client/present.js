// lenscast presenter page: the camera preview, Start and Stop, and what the publisher
// (publisher.js: WebM from WebCodecs or MediaRecorder, uploaded over /ws/publish) and the
// server report.
// With ?clock=1 it records the camera image with a timestamp drawn on every frame, which the
// viewer page reads back to measure glass-to-glass latency (clock-stamp.js).

import { stampedCanvas } from './clock-stamp.js';
import { CLOCK_FPS } from './constants.js';
import { Publisher, RECORDERS } from './publisher.js';

const params = new URLSearchParams(location.search);
const token = params.get('token') ?? '';
const clockMode = params.get('clock') === '1';
// ?recorder=mediarecorder records as browsers without WebCodecs do (for comparison and tests).
const recorderChoice = RECORDERS.includes(params.get('recorder')) ? params.get('recorder') : 'auto';

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
  glass: document.getElementById('glass'),
};

const publisher = new Publisher(token, render, { recorder: recorderChoice });
/** What the presenter is doing, for the page, tests and the console. */
window.lenscastPresenter = publisher.state;

let camera = null; // the getUserMedia stream, kept for the whole page
let clockCanvas = null; // in clock mode, what gets recorded

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
  render();
}

/** What to record: the camera, or in clock mode the stamped canvas plus the microphone. */
function recordedStream() {
  if (!clockMode) return { stream: camera, ownTracks: [] };
  const canvasStream = clockCanvas.captureStream(CLOCK_FPS);
  const stream = new MediaStream([...canvasStream.getVideoTracks(), ...camera.getAudioTracks()]);
  // The canvas capture is made for each broadcast; the camera stays for the next one.
  return { stream, ownTracks: stream.getVideoTracks() };
}

function render() {
  startButton.disabled = publisher.busy || !camera;
  stopButton.disabled = !publisher.busy || publisher.stopping;
  takeoverBox.disabled = publisher.busy;
  const { state, reason, bytesSent, lastStats, mime, recorder } = publisher.state;
  stateLine.textContent = reason ? `${state}: ${reason}` : state;
  stateLine.dataset.state = state;
  figures.bytesSent.textContent = formatBytes(bytesSent);
  figures.mime.textContent = mime ? `${mime} (${RECORDER_NAMES[recorder]})` : '–';
  const p = lastStats?.pipeline;
  // Without a pipeline (a --passthrough server) there is nothing more to show.
  figures.fps.textContent = p ? `${p.fps_in.toFixed(1)} / ${p.fps_out.toFixed(1)}` : '–';
  figures.faces.textContent = p ? `${p.faces_last} / ${p.faces_total}` : '–';
  figures.latency.textContent = p ? `${Math.round(p.latency_ms_p50)} ms` : '–';
  figures.dropped.textContent = p ? String(p.frames_dropped) : '–';
  // What viewers see: the median of their own readouts (camera to their screens).
  const seen = lastStats?.viewers;
  figures.glass.textContent =
    seen?.glass_to_glass_ms_p50 != null
      ? `${Math.round(seen.glass_to_glass_ms_p50)} ms (${seen.viewers_reporting} viewer${seen.viewers_reporting === 1 ? '' : 's'})`
      : '–';
}

const RECORDER_NAMES = { webcodecs: 'WebCodecs', mediarecorder: 'MediaRecorder' };

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
  publisher.start({ takeover: takeoverBox.checked, record: recordedStream });
});
stopButton.addEventListener('click', () => publisher.stop());

if (!token) showMessage('No publish token: open the presenter URL the server printed (…/present?token=…).');
if (!navigator.mediaDevices?.getUserMedia) {
  showMessage('This browser cannot use a camera here (it needs https or localhost).');
} else {
  openCamera();
}
render();
