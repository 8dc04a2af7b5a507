// The browser's floor for glass-to-glass latency (tests/browser/latency-bench.mjs): what the
// presenter and viewer pages do with a stamped picture (?clock=1 on both), in one page and with
// nothing in between. Camera -> stamped canvas (+ the microphone, if any) -> MediaRecorder with
// the presenter's settings -> every chunk straight into an MSE SourceBuffer -> a <video> kept near the live edge by the
// viewer's LatencyClock -> the stamps read back off the <video> as the viewer page reads them.
// lenscast adds the upload, the server and the viewer's socket to this and can take nothing
// away. The real client modules are imported so that the floor cannot drift from the product.

import { readStamps, stampedCanvas } from '../../client/clock-stamp.js';
import {
  CLOCK_FPS,
  KEYFRAME_INTERVAL_MS,
  RECORDER_MIMES,
  TICK_MS,
  TIMESLICE_MS,
  VIDEO_BITS_PER_SECOND,
} from '../../client/constants.js';
import { BlockTimes } from '../../client/block-times.js';
import { LatencyClock } from '../../client/latency-clock.js';
import { skipGap as skipMseGap } from '../../client/mse-player.js';

/** How long the camera may take to show its first frame. */
const CAMERA_TIMEOUT_MS = 10000;

const camera = document.getElementById('camera');
const video = document.getElementById('video');
const statusLine = document.getElementById('status');
/** The viewer's live-edge policy, for `video`. */
const clock = new LatencyClock(video);

/** What the page is doing, for the bench. `stampAgesMs` and `behindLive` are as on the viewer
 *  page (`window.lenscast`), so the bench reads both pages the same way. */
const floor = {
  state: 'starting', // starting | recording | playing | waiting | failed
  error: null,
  mime: null,
  recordedBytes: 0,
  behindLive: null,
  /** As on the viewer page: how unevenly media arrived lately (ms), and stalls so far. */
  jitterMs: null,
  stalls: 0,
  stampAgesMs: [],
};
window.floor = floor;

function setState(state) {
  floor.state = state;
  statusLine.textContent = floor.error ? `${state}: ${floor.error}` : state;
}

function fail(why) {
  if (floor.state === 'failed') return;
  console.error(`floor: ${why}`);
  floor.error = why;
  setState('failed');
}

/** Resolves once `ready()` holds, polling; rejects after `timeoutMs`. */
function until(ready, timeoutMs, what) {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const poll = setInterval(() => {
      if (ready()) {
        clearInterval(poll);
        resolve();
      } else if (performance.now() - started > timeoutMs) {
        clearInterval(poll);
        reject(new Error(`no ${what} within ${timeoutMs} ms`));
      }
    }, 20);
  });
}

/** The presenter's recorder mime type (publisher.js's rule): its first choice that this browser
 *  records, with opus only when there is a microphone. The floor takes no browser default, which
 *  MSE might not know: it needs a mime type for the SourceBuffer. */
function chooseMime(hasAudio) {
  const usable = RECORDER_MIMES.filter((mime) => /codecs=/.test(mime) && (hasAudio || !mime.includes('opus')));
  const mime = usable.find((m) => MediaRecorder.isTypeSupported(m) && MediaSource.isTypeSupported(m));
  if (!mime) throw new Error('no recorder mime type that MSE plays');
  return mime;
}

/** A SourceBuffer for `mime`, attached to `video`. */
function openSourceBuffer(mime) {
  const mediaSource = new MediaSource();
  video.src = URL.createObjectURL(mediaSource);
  return new Promise((resolve, reject) => {
    mediaSource.addEventListener(
      'sourceopen',
      () => {
        URL.revokeObjectURL(video.src);
        try {
          const sourceBuffer = mediaSource.addSourceBuffer(mime);
          // As the viewer does: the recorder's timestamps only move forward.
          sourceBuffer.mode = 'segments';
          resolve(sourceBuffer);
        } catch (err) {
          reject(err);
        }
      },
      { once: true },
    );
  });
}

/** Records `stream` as the presenter does and appends every chunk as soon as it is handed over.
 *  (Nothing played is ever removed: a bench window is far below the SourceBuffer's quota.) */
function record(stream, mime, sourceBuffer) {
  const recorder = new MediaRecorder(stream, {
    mimeType: mime,
    videoBitsPerSecond: VIDEO_BITS_PER_SECOND,
    videoKeyFrameIntervalDuration: KEYFRAME_INTERVAL_MS,
  });
  const pending = []; // { bytes, start: the earliest block's media time, or null }
  const blockTimes = new BlockTimes();
  const pump = () => {
    if (sourceBuffer.updating || !pending.length) return;
    try {
      // As the viewer's player does: the clock notes the media time the chunk starts at just
      // before it is appended, when the player has least in hand.
      const { bytes, start } = pending.shift();
      if (start !== null && !video.paused && !video.seeking) clock.note(start);
      sourceBuffer.appendBuffer(bytes);
    } catch (err) {
      fail(`append failed: ${err.name} ${err.message}`);
    }
  };
  sourceBuffer.addEventListener('updateend', pump);
  // Reading a Blob is asynchronous: start each read at once, but queue the bytes in order.
  let inOrder = Promise.resolve();
  recorder.ondataavailable = ({ data }) => {
    if (!data.size) return;
    const read = data.arrayBuffer();
    inOrder = inOrder
      .then(() => read)
      .then((bytes) => {
        floor.recordedBytes += bytes.byteLength;
        pending.push({ bytes, start: blockTimes.earliest(bytes) });
        pump();
      });
  };
  recorder.onerror = (event) => fail(`recorder error: ${event.error?.message}`);
  recorder.start(TIMESLICE_MS);
  floor.mime = recorder.mimeType || mime;
}

/** The player's gap rule (mse-player.js), on this page's video. */
const skipGap = (stuck) => skipMseGap(video, video.buffered, stuck);

/** Keeps `video` playing near the live edge with the viewer's own policy, on the viewer's tick. */
function followLiveEdge() {
  let lastTime = 0;
  video.addEventListener('waiting', () => !video.seeking && skipGap(true));
  video.addEventListener('error', () => fail(`media error ${video.error?.code} ${video.error?.message ?? ''}`));
  setInterval(() => {
    if (floor.state === 'failed' || !video.buffered.length) return;
    const stuck = !video.paused && !video.seeking && video.currentTime === lastTime;
    skipGap(stuck);
    clock.follow(video.buffered);
    floor.behindLive = clock.behindLive;
    floor.jitterMs = clock.jitter === null ? null : Math.round(clock.jitter * 1000);
    floor.stalls = clock.stalls;
    if (video.paused) video.play().catch(() => {}); // muted, so autoplay is allowed
    lastTime = video.currentTime;
    setState(stuck || video.paused ? 'waiting' : 'playing');
  }, TICK_MS);
}

/** The camera and, if there is one, the microphone, asked for as the presenter page does. */
async function openCamera() {
  const video = { width: 640, height: 480 };
  try {
    return await navigator.mediaDevices.getUserMedia({ video, audio: true });
  } catch {
    return navigator.mediaDevices.getUserMedia({ video });
  }
}

async function start() {
  const devices = await openCamera();
  camera.srcObject = devices;
  const canvas = stampedCanvas(camera);
  // Record once the canvas has the camera's size (it is resized as it first draws a frame), so
  // the recording does not start with the blank canvas's 300 x 150.
  await until(() => camera.videoWidth > 0 && canvas.width === camera.videoWidth, CAMERA_TIMEOUT_MS, 'camera frame');
  // What the presenter records in clock mode: the stamped canvas and the microphone. The sound
  // matters: MSE plays audio and video later than video alone.
  const audio = devices.getAudioTracks();
  const mime = chooseMime(audio.length > 0);
  const sourceBuffer = await openSourceBuffer(mime);
  record(new MediaStream([...canvas.captureStream(CLOCK_FPS).getVideoTracks(), ...audio]), mime, sourceBuffer);
  setState('recording');
  followLiveEdge();
  floor.stampAgesMs = readStamps(video);
}

start().catch((err) => fail(`${err.name}: ${err.message}`));
