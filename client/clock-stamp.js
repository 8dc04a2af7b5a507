// Glass-to-glass latency, opt-in with ?clock=1 on both pages. The presenter page records a canvas
// on which every frame carries the wall clock (ms since midnight UTC) as black and white cells in
// the bottom-left corner (the layout is described in constants.js). The viewer page reads the stamp
// off the picture on screen, which gives the age of what the viewer sees: camera, recorder,
// upload, server, MSE and playback together. Only meaningful when presenter and viewer share a
// clock (the same machine, as in the tests). Drawing and reading live here together so that the
// two halves cannot disagree about the layout.

import {
  CLOCK_BITS,
  CLOCK_CELL,
  CLOCK_COLUMNS,
  CLOCK_FPS,
  CLOCK_MAX_MS,
  CLOCK_READ_MS,
  CLOCK_SAMPLES_KEPT,
} from './constants.js';

const STRIP_WIDTH = CLOCK_COLUMNS * CLOCK_CELL;
const STRIP_HEIGHT = ((2 * CLOCK_BITS) / CLOCK_COLUMNS) * CLOCK_CELL;

const DAY_MS = 86_400_000;
const WALL_CLOCK = new Intl.DateTimeFormat('en-GB', {
  timeZone: 'UTC',
  hourCycle: 'h23',
  hour: 'numeric',
  minute: 'numeric',
  second: 'numeric',
  fractionalSecondDigits: 3,
});
const PART_MS = { hour: 3_600_000, minute: 60_000, second: 1000, fractionalSecond: 1 };

/** Now, as a stamp: the wall clock in ms since midnight UTC. Both pages must read the one clock
 *  the machine has, whatever a page does to its own:
 *  - not Date.now(): the skewed-clock tests shift it (and `new Date()`) on each page, since it is
 *    the clock lenscast's own latency readout uses, and this strip is the truth the readout is
 *    checked against;
 *  - not performance.timeOrigin + performance.now(): Chromium derives it from the monotonic
 *    clock and one reading of the wall clock per process, so while the system clock is being
 *    slewed (a freshly booted VM's NTP) pages opened seconds apart disagree; CI measured 70 ms.
 *  Intl.DateTimeFormat's format with no date reads the engine's own clock (ECMA-402 calls the
 *  intrinsic %Date.now%, not the page's property): the real wall clock, in every process. */
function now() {
  let ms = 0;
  for (const { type, value } of WALL_CLOCK.formatToParts()) {
    if (type in PART_MS) ms += PART_MS[type] * Number(value);
  }
  return ms;
}

/** How old `stamp` is now, in ms (across midnight too). */
function ageOf(stamp) {
  return (now() - stamp + DAY_MS) % DAY_MS;
}

/** Draws `stamp` (CLOCK_BITS bits) as the strip of cells at the bottom-left of a `height` px
 *  frame. */
function drawStamp(ctx, height, stamp) {
  const top = height - STRIP_HEIGHT;
  for (let i = 0; i < 2 * CLOCK_BITS; i++) {
    const bit = (stamp >>> (CLOCK_BITS - 1 - (i % CLOCK_BITS))) & 1;
    const white = i < CLOCK_BITS ? bit : 1 - bit;
    ctx.fillStyle = white ? '#fff' : '#000';
    const x = (i % CLOCK_COLUMNS) * CLOCK_CELL;
    const y = top + Math.floor(i / CLOCK_COLUMNS) * CLOCK_CELL;
    ctx.fillRect(x, y, CLOCK_CELL, CLOCK_CELL);
  }
}

/** Decodes the strip from its pixels (RGBA, STRIP_WIDTH wide); null if unreadable. */
function readStamp(pixels) {
  const bits = [];
  for (let i = 0; i < 2 * CLOCK_BITS; i++) {
    // The mean luma of the cell's central 8 x 8 pixels, away from edges that compression blurs.
    const left = (i % CLOCK_COLUMNS) * CLOCK_CELL + CLOCK_CELL / 4;
    const top = Math.floor(i / CLOCK_COLUMNS) * CLOCK_CELL + CLOCK_CELL / 4;
    let sum = 0;
    for (let y = top; y < top + CLOCK_CELL / 2; y++) {
      for (let x = left; x < left + CLOCK_CELL / 2; x++) {
        const at = (y * STRIP_WIDTH + x) * 4;
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

/** Presenter: a canvas that copies `video` frame by frame (CLOCK_FPS) with the stamp drawn on. */
export function stampedCanvas(video) {
  const canvas = document.createElement('canvas');
  // Opaque, as a camera's picture is: a canvas with alpha is recorded as VP8 with an alpha
  // plane, a second encode in the presenter page and a second decode in the player's.
  const ctx = canvas.getContext('2d', { alpha: false });
  const draw = () => {
    if (video.videoWidth) {
      if (canvas.width !== video.videoWidth) canvas.width = video.videoWidth;
      if (canvas.height !== video.videoHeight) canvas.height = video.videoHeight;
      ctx.drawImage(video, 0, 0);
      drawStamp(ctx, canvas.height, now());
    }
  };
  // A timer rather than requestAnimationFrame, which stops entirely while the tab is hidden.
  setInterval(draw, 1000 / CLOCK_FPS);
  return canvas;
}

/** Viewer: reads the stamp off `video` every CLOCK_READ_MS and returns the array it keeps the
 *  latest ages (ms) in, oldest first. */
export function readStamps(video) {
  const samples = [];
  const canvas = document.createElement('canvas');
  canvas.width = STRIP_WIDTH;
  canvas.height = STRIP_HEIGHT;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  setInterval(() => {
    // A paused or stalled picture is old for a reason the clock cannot see: no sample.
    if (video.paused || video.readyState < HTMLMediaElement.HAVE_CURRENT_DATA) return;
    const top = video.videoHeight - STRIP_HEIGHT;
    if (top < 0 || video.videoWidth < STRIP_WIDTH) return;
    ctx.drawImage(video, 0, top, STRIP_WIDTH, STRIP_HEIGHT, 0, 0, STRIP_WIDTH, STRIP_HEIGHT);
    const stamp = readStamp(ctx.getImageData(0, 0, STRIP_WIDTH, STRIP_HEIGHT).data);
    if (stamp === null) return;
    const ageMs = ageOf(stamp);
    if (ageMs > CLOCK_MAX_MS) return;
    samples.push(ageMs);
    if (samples.length > CLOCK_SAMPLES_KEPT) samples.shift();
  }, CLOCK_READ_MS);
  return samples;
}
