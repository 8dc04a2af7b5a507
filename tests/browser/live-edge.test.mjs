// The viewer's live-edge policy (client/latency-clock.js) against a model of a live stream and
// of Chrome's player, in simulated time: what the policy does after late media, over minutes,
// without the noise of a real browser on a busy machine (tests/browser/latency-bench.mjs
// measures the real thing).
//
// The model: the presenter's recorder hands over 100 ms of media every 100 ms, and each chunk
// reaches the page a base delay after its capture plus whatever lateness a scenario adds
// (chunks stay in order). The player, as Chrome's does, underflows with 50 ms still in hand and
// then rebuffers until it has 200 ms; it fires `waiting` when it underflows.

import assert from 'node:assert/strict';
import test from 'node:test';

import { LIVE_SLACK, LIVE_SLACK_HYSTERESIS, SLACK_WINDOW_MS, TICK_MS } from '../../client/constants.js';
import { LatencyClock } from '../../client/latency-clock.js';

/** Simulated wall clock (ms), read by the clock through `performance.now()`. */
let nowMs = 0;
Object.defineProperty(globalThis, 'performance', { value: { now: () => nowMs }, configurable: true });
// The clock tells the console of each stall and jump; an hour of them is noise here.
console.info = () => {};

const STEP_MS = 10;
const CHUNK_S = 0.1;
/** From capture to the page for a chunk on time (recorder, upload, server, delivery). */
const BASE_DELAY_S = 0.15;
const UNDERFLOW_S = 0.05;
const REBUFFER_TO_S = 0.2;

/** A `<video>` with one buffered range, and the playback model above. */
class ModelVideo extends EventTarget {
  constructor() {
    super();
    this.currentTime = 0;
    this.playbackRate = 1;
    this.paused = false;
    this.seeking = false;
    this.end = 0; // buffered end, seconds of media
    this.rebuffering = true; // until the first media is in hand
  }

  get buffered() {
    const end = this.end;
    return { length: end > 0 ? 1 : 0, start: () => 0, end: () => end };
  }

  /** Plays `dt` seconds of wall time. */
  advance(dt) {
    const inHand = this.end - this.currentTime;
    if (this.rebuffering) {
      if (inHand >= REBUFFER_TO_S) this.rebuffering = false;
      return;
    }
    this.currentTime += dt * this.playbackRate;
    if (this.end - this.currentTime < UNDERFLOW_S) {
      this.rebuffering = true;
      this.dispatchEvent(new Event('waiting'));
    }
  }
}

/**
 * Runs `seconds` of a stream whose chunk `k` (media [k/10, (k+1)/10) s) is `lateness(k)`
 * seconds later than on time. Returns, per 10 ms step: `at` (s), `delay` (wall clock less the
 * media time on screen, s: glass to glass less the base delay's capture part), and the stalls.
 */
function simulate(seconds, lateness = () => 0) {
  nowMs = 0;
  const video = new ModelVideo();
  const clock = new LatencyClock(video);
  const trace = [];
  let next = 0; // the next chunk to arrive
  let arrivesAt = 0; // when it does (s)
  const schedule = () => {
    arrivesAt = Math.max(arrivesAt, (next + 1) * CHUNK_S + BASE_DELAY_S + lateness(next));
  };
  schedule();
  for (let step = 0; step * STEP_MS < seconds * 1000; step++) {
    nowMs = step * STEP_MS;
    const at = nowMs / 1000;
    while (arrivesAt <= at) {
      // As the player does: note the media time of what is about to be appended.
      if (video.end > 0 && !video.paused && !video.seeking) clock.note(next * CHUNK_S);
      video.end = (next + 1) * CHUNK_S;
      next++;
      schedule();
    }
    if (nowMs % TICK_MS === 0 && video.end > 0) clock.follow(video.buffered);
    video.advance(STEP_MS / 1000);
    trace.push({ at, delay: at - video.currentTime, inHand: video.end - video.currentTime, stalls: clock.stalls });
  }
  return trace;
}

/** The median of `key` over the trace's steps from `from` to `to` seconds. */
function median(trace, from, to, key = 'delay') {
  const values = trace
    .filter((s) => s.at >= from && s.at < to)
    .map((s) => s[key])
    .sort((a, b) => a - b);
  return values[Math.floor(values.length / 2)];
}

/** Deterministic noise in [0, 1) (a linear congruential generator), so runs repeat exactly. */
function noise(seed) {
  let state = seed;
  return () => {
    state = (state * 1103515245 + 12345) % 2 ** 31;
    return state / 2 ** 31;
  };
}

test('live edge: a steady stream is played with the target in hand, without stalls', () => {
  const jitter = noise(1);
  const late = Array.from({ length: 1000 }, () => 0.03 * jitter());
  const trace = simulate(60, (k) => late[k]);
  assert.equal(trace.at(-1).stalls, 0);
  // Just before each arrival the player holds the least: over the last 20 s, that least is
  // the target, give or take the hysteresis and the 30 ms of jitter.
  const lowest = Math.min(...trace.filter((s) => s.at >= 40).map((s) => s.inHand));
  assert.ok(lowest >= LIVE_SLACK - 0.02, `least in hand ${lowest.toFixed(3)} s`);
  assert.ok(lowest <= LIVE_SLACK + LIVE_SLACK_HYSTERESIS + 0.04, `least in hand ${lowest.toFixed(3)} s`);
});

test('live edge: room made for late media lasts the window, then is given back', () => {
  // At 30 s the stream stops for 0.4 s, then what was held back arrives at once.
  const trace = simulate(90, (k) => (k >= 300 && k < 304 ? 0.4 - (k - 300) * CHUNK_S : 0));
  const steady = median(trace, 20, 30);
  const window = SLACK_WINDOW_MS / 1000;
  // Late media arrived: the player keeps room for it while it is in the window...
  const during = median(trace, 35, 30 + window - 2);
  assert.ok(during >= steady + 0.3, `delay ${during.toFixed(3)} s in the window, ${steady.toFixed(3)} s before`);
  // ...and is back where it was once the window has passed: nothing ratchets up. (The player
  // rests anywhere within the hysteresis of its target, and a tick at 10% off may overshoot.)
  const after = median(trace, 30 + window + 10, 90);
  const band = 2 * LIVE_SLACK_HYSTERESIS + 0.03;
  assert.ok(Math.abs(after - steady) <= band, `delay ${after.toFixed(3)} s after, ${steady.toFixed(3)} s before`);
});

test('live edge: late media every few seconds stalls the player once, not every time', () => {
  // Every 5 s, a chunk comes 250 ms late (and the next ones queue behind it).
  const trace = simulate(120, (k) => (k % 50 === 49 ? 0.25 : 0));
  const stalls = trace.at(-1).stalls;
  assert.ok(stalls <= 1, `${stalls} stalls in 2 minutes`);
  // The room it keeps is what the late media needs, not more: the least in hand stays near
  // the target.
  const lowest = Math.min(...trace.filter((s) => s.at >= 60).map((s) => s.inHand));
  assert.ok(lowest >= LIVE_SLACK - 0.02 && lowest <= LIVE_SLACK + LIVE_SLACK_HYSTERESIS + 0.02, `least ${lowest}`);
});

test('live edge: an hour of random late media does not drift', () => {
  // One chunk in 50 is up to 300 ms late, at random. Which minute has the latest chunks is
  // chance, so the first ten minutes are set against the last ten.
  const random = noise(7);
  const late = Array.from({ length: 36100 }, () => (random() < 0.02 ? 0.3 * random() : 0));
  const trace = simulate(3600, (k) => late[k]);
  const first = median(trace, 60, 660);
  const last = median(trace, 3000, 3600);
  assert.ok(Math.abs(last - first) <= 0.03, `delay p50 ${first.toFixed(3)} s at first, ${last.toFixed(3)} s at last`);
  const stalls = trace.at(-1).stalls;
  assert.ok(stalls <= 30, `${stalls} stalls in an hour`);
});

test("live edge: a join's backlog is not taken for late media", () => {
  // The viewer joins at a keyframe a second old: that second arrives at once, then live media.
  const trace = simulate(40, (k) => (k < 10 ? 1 - k * CHUNK_S : 0));
  const steady = median(trace, 30, 40);
  const soon = median(trace, 8, 12);
  assert.ok(soon <= steady + 2 * LIVE_SLACK_HYSTERESIS + 0.03, `delay ${soon.toFixed(3)} s at 10 s, ${steady.toFixed(3)} s at 35 s`);
});

test("live edge: late media in the join's first seconds does not hold the player back all window", () => {
  // The backlog arrives at once at 1.25 s, and playback starts. Then, as on a machine the join
  // kept busy, live media comes later and later, up to 200 ms at 2 s, and is back on time a
  // second later. Room for that would hold the viewer 200 ms behind for the whole window.
  const settling = (k) => Math.max(0, 0.2 - Math.abs(k - 18) * 0.025);
  const trace = simulate(40, (k) => (k < 10 ? 1 - k * CHUNK_S : settling(k)));
  assert.ok(settling(18) === 0.2 && settling(10) === 0 && settling(26) === 0);
  const steady = median(trace, 30, 40);
  const soon = median(trace, 8, 12);
  const band = 2 * LIVE_SLACK_HYSTERESIS + 0.03;
  assert.ok(soon <= steady + band, `delay ${soon.toFixed(3)} s at 10 s, ${steady.toFixed(3)} s at 35 s`);
  // Nor does giving the room back stall the player (the join itself may: nothing was in hand).
  const joined = trace.find((s) => s.at >= 5).stalls;
  assert.equal(trace.at(-1).stalls, joined, 'stalls after the join');
});
