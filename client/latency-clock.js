// How far behind live the MSE player is, and the policy that keeps it close: play a little faster
// while it has more in hand than it needs, jump when it falls far behind. The live edge is the
// end of what the SourceBuffer holds: the server sends media as soon as it has it, so nothing
// newer exists yet.
//
// How much it needs in hand depends on how unevenly media arrives (the presenter's recorder
// hands over a chunk every 100 ms; networks and the server add jitter), so the clock measures
// it instead of guessing: the slack is the least the player had in hand over the last few
// seconds, sampled just before each append (the moment it is lowest) and on every tick. Slack
// above the target is latency for nothing, and playing 10% faster spends it.
//
// The target starts at LIVE_SLACK, which is enough for most streams (see constants.js for how
// it was measured). A player that runs dry (a stall) needs more: with audio, Chrome's renderer
// underflows well before the buffer is empty and then rebuffers for half a second, so each stall
// raises the target by LIVE_SLACK_STEP, and every SLACK_CALM_MS without one lowers it by
// LIVE_SLACK_DECAY again: the player finds the least its stream and browser need, and follows it
// when that changes.

import {
  CATCH_UP_RATE,
  FAST_CATCH_UP_ABOVE,
  FAST_CATCH_UP_RATE,
  JUMP_BEHIND,
  JUMP_TARGET,
  START_BEHIND,
  LIVE_SLACK,
  LIVE_SLACK_DECAY,
  LIVE_SLACK_HYSTERESIS,
  LIVE_SLACK_MAX,
  LIVE_SLACK_STEP,
  SLACK_CALM_MS,
  SLACK_WINDOW_MS,
} from './constants.js';

/** Measures and steers one video element's distance from the live edge. */
export class LatencyClock {
  /** A clock for `video`, which has measured nothing yet. */
  constructor(video) {
    this.video = video;
    /** Seconds between the playhead and the end of what is buffered; null when unknown. */
    this.behindLive = null;
    this.samples = []; // { at: performance.now() ms, behind: seconds }, oldest first
    this.playing = false; // false until playback starts on this stream
    /** The least to keep in hand (seconds), raised by stalls, lowered by calm. */
    this.target = LIVE_SLACK;
    this.calmSince = performance.now();
    this.stalls = 0;
    video.addEventListener('waiting', () => this.stalled());
  }

  /** The player ran dry while playing: keep more in hand from now on. */
  stalled() {
    if (!this.playing || this.video.seeking || !this.video.buffered.length) return;
    this.stalls++;
    this.target = Math.min(LIVE_SLACK_MAX, this.target + LIVE_SLACK_STEP);
    this.calmSince = performance.now();
  }

  /** Notes how much the player has in hand (seconds); the least over SLACK_WINDOW_MS is the slack. */
  note(behind) {
    const now = performance.now();
    this.samples.push({ at: now, behind });
    while (this.samples[0].at < now - SLACK_WINDOW_MS) this.samples.shift();
  }

  /** The least the player had in hand lately, in seconds; null before a full window. */
  get slack() {
    if (!this.samples.length || this.samples[0].at > performance.now() - SLACK_WINDOW_MS / 2) return null;
    return Math.min(...this.samples.map((s) => s.behind));
  }

  /** Measures `buffered` (non-empty) against the playhead, then jumps or changes speed. */
  follow(buffered) {
    const video = this.video;
    const end = buffered.end(buffered.length - 1);
    // A viewer joins at the last keyframe, up to a keyframe interval behind: rather than
    // catching up for seconds, it starts near the edge (the browser decodes its way there).
    const starting = !this.playing && !video.paused && !video.seeking;
    if (starting) this.playing = true;
    const limit = starting ? START_BEHIND : JUMP_BEHIND;
    if (end - video.currentTime > limit) {
      console.info(`lenscast: ${(end - video.currentTime).toFixed(1)} s behind, jumping to live`);
      video.currentTime = end - JUMP_TARGET;
      video.playbackRate = 1;
      this.samples = [];
    }
    const behind = end - video.currentTime;
    this.behindLive = Math.max(0, behind);
    if (video.paused || video.seeking) return;
    this.note(behind);
    if (performance.now() - this.calmSince > SLACK_CALM_MS && this.target > LIVE_SLACK) {
      this.target = Math.max(LIVE_SLACK, this.target - LIVE_SLACK_DECAY);
      this.calmSince = performance.now();
    }
    const slack = this.slack;
    if (slack === null) return;
    // Two thresholds, so the rate does not flip back and forth around one.
    // Far too much in hand (after a stall, data arrives all at once): catch up faster.
    if (slack > this.target + FAST_CATCH_UP_ABOVE) video.playbackRate = FAST_CATCH_UP_RATE;
    else if (slack > this.target + LIVE_SLACK_HYSTERESIS) video.playbackRate = CATCH_UP_RATE;
    else if (slack <= this.target) video.playbackRate = 1;
  }

  /** Forgets the figure: what is buffered now belongs to a stream that is gone. */
  reset() {
    this.behindLive = null;
    this.samples = [];
    this.playing = false;
  }
}
