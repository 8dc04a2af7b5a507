// How far behind live the MSE player is, and the policy that keeps it close: play a little faster
// when it falls behind, jump when it falls far behind. The live edge is the end of what the
// SourceBuffer holds: the server sends media as soon as it has it, so nothing newer exists yet.

import { CATCH_UP_BEHIND, CATCH_UP_RATE, CAUGHT_UP_BEHIND, JUMP_BEHIND, JUMP_TARGET } from './constants.js';

/** Measures and steers one video element's distance from the live edge. */
export class LatencyClock {
  /** A clock for `video`, which has measured nothing yet. */
  constructor(video) {
    this.video = video;
    /** Seconds between the playhead and the end of what is buffered; null when unknown. */
    this.behindLive = null;
  }

  /** Measures `buffered` (non-empty) against the playhead, then jumps or changes speed. */
  follow(buffered) {
    const video = this.video;
    const end = buffered.end(buffered.length - 1);
    if (end - video.currentTime > JUMP_BEHIND) {
      console.info(`lenscast: ${(end - video.currentTime).toFixed(1)} s behind, jumping to live`);
      video.currentTime = end - JUMP_TARGET;
      video.playbackRate = 1;
    }
    const behind = end - video.currentTime;
    this.behindLive = Math.max(0, behind);
    // Two thresholds, so the rate does not flip back and forth around one.
    if (behind > CATCH_UP_BEHIND) video.playbackRate = CATCH_UP_RATE;
    else if (behind < CAUGHT_UP_BEHIND) video.playbackRate = 1;
  }

  /** Forgets the figure: what is buffered now belongs to a stream that is gone. */
  reset() {
    this.behindLive = null;
  }
}
