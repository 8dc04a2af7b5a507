// How far behind live the MSE player is, and the policy that keeps it close: play a little faster
// while it has more in hand than it needs, jump when it falls far behind. The live edge is the
// end of what the SourceBuffer holds: the server sends media as soon as it has it, so nothing
// newer exists yet.
//
// How much it needs in hand depends on how unevenly media arrives (the presenter's recorder
// hands over a chunk every TIMESLICE_MS; a busy presenter, network or server add jitter), so
// the clock measures it instead of guessing. For each append it notes how late the new media
// came: the wall-clock time less the media time it starts at (its earliest block's, read off the
// stream: client/block-times.js). Before that media came, the player had in hand what lay
// between the playhead and that time, so an arrival's lateness says how little it had left
// then, whichever track the media is of. The latest arrival over the last SLACK_WINDOW_MS sets
// the slack: what the player would have had in hand when that arrival came, had it been as far
// behind then as it is now. The player keeps that at LIVE_SLACK (Chrome's renderer underflows
// with 30-90 ms still in hand, so that plus a margin): above it, playing 10% faster spends the
// rest; below it, playing 10% slower makes room before a stall does.
//
// The slack depends on the delay now and on arrivals, never on what the player did: a stall
// (Chrome rebuffers for 200 ms to over a second) or a jump changes the delay, not the arrivals,
// so what the rebuffer added beyond the worst arrival is caught up at once, and a late arrival
// is allowed for as long as it is in the window, whether it caused a stall or not. When
// arrivals are late for a while the slack keeps the room for them; when they are calm again the
// room goes with the window, so nothing ratchets up over hours of viewing. The first
// JOIN_SETTLE_MS after playback starts are the exception: what arrives then tells of the join (a
// backlog, a page decoding its way to the edge), and room made for it would last the window.

import {
  BUILD_UP_RATE,
  CATCH_UP_RATE,
  FAST_CATCH_UP_ABOVE,
  FAST_CATCH_UP_RATE,
  JOIN_SETTLE_MS,
  JUMP_BEHIND,
  JUMP_TARGET,
  START_BEHIND,
  LIVE_SLACK,
  LIVE_SLACK_HYSTERESIS,
  SLACK_FIRST_MS,
  SLACK_WINDOW_MS,
} from './constants.js';

/** Measures and steers one video element's distance from the live edge. */
export class LatencyClock {
  /** A clock for `video`, which has measured nothing yet. */
  constructor(video) {
    this.video = video;
    /** Seconds between the playhead and the end of what is buffered; null when unknown. */
    this.behindLive = null;
    /** Media arrivals, oldest first: `at` (wall clock) and `late`, that less the media time
     *  the arrival starts at, both in seconds; over the last SLACK_WINDOW_MS. */
    this.arrivals = [];
    this.playing = false; // false until playback starts on this stream
    /** When playback started on this stream (performance.now(), seconds); null before. */
    this.startedAt = null;
    this.joinForgotten = false; // true once the join's arrivals are dropped (forgetJoin)
    /** The least to keep in hand (seconds) at the latest arrival in the window. */
    this.target = LIVE_SLACK;
    this.stalls = 0;
    video.addEventListener('waiting', () => this.stalled());
  }

  /** The player ran dry while playing: counted for the figures (the arrivals set the slack). */
  stalled() {
    if (!this.playing || this.video.seeking || !this.video.buffered.length) return;
    this.stalls++;
    const buffered = this.video.buffered;
    const inHand = buffered.end(buffered.length - 1) - this.video.currentTime;
    console.info(`lenscast: ran dry with ${Math.round(inHand * 1000)} ms in hand, rebuffering`);
  }

  /** Media starting at `start` (media time, seconds) is about to be appended. */
  note(start) {
    const now = performance.now() / 1000;
    this.arrivals.push({ at: now, late: now - start });
    while (this.arrivals[0].at < now - SLACK_WINDOW_MS / 1000) this.arrivals.shift();
    this.forgetJoin(now);
  }

  /**
   * Drops the join's arrivals (JOIN_SETTLE_MS after playback starts), once, when SLACK_FIRST_MS
   * of later ones are in: from then on the arrivals say how late this stream's media comes.
   */
  forgetJoin(now) {
    if (this.startedAt === null || this.joinForgotten) return;
    const settled = this.startedAt + JOIN_SETTLE_MS / 1000;
    if (now < settled + SLACK_FIRST_MS / 1000) return;
    this.arrivals = this.arrivals.filter((arrival) => arrival.at >= settled);
    this.joinForgotten = true;
  }

  /**
   * What the player would have had in hand at the latest arrival in the window, had it been
   * as far behind then as now (`end`: the buffered end), in seconds; null before
   * SLACK_FIRST_MS of arrivals. Media not yet arrived counts as arriving now, so a gap in
   * arrivals lowers the slack while it lasts.
   */
  slackAt(end) {
    const now = performance.now() / 1000;
    this.forgetJoin(now);
    if (!this.arrivals.length || this.arrivals[0].at > now - SLACK_FIRST_MS / 1000) return null;
    let latest = now - end;
    for (const arrival of this.arrivals) latest = Math.max(latest, arrival.late);
    return now - this.video.currentTime - latest;
  }

  /** How unevenly the arrivals came (the latest less the earliest), in seconds. */
  get jitter() {
    const late = this.arrivals.map((a) => a.late);
    if (late.length < 2) return null;
    return Math.max(...late) - Math.min(...late);
  }

  /** Measures `buffered` (non-empty) against the playhead, then jumps or changes speed. */
  follow(buffered) {
    const video = this.video;
    const end = buffered.end(buffered.length - 1);
    // A viewer joins at the last keyframe, up to a keyframe interval behind: rather than
    // catching up for seconds, it starts near the edge (the browser decodes its way there).
    const starting = !this.playing && !video.paused && !video.seeking;
    if (starting) {
      this.playing = true;
      this.startedAt = performance.now() / 1000;
      this.joinForgotten = false;
      // What came before is the join's backlog, old media sent at once: it reads as late, but
      // says nothing of how late live media comes.
      this.arrivals = [];
    }
    const limit = starting ? START_BEHIND : JUMP_BEHIND;
    if (end - video.currentTime > limit) {
      console.info(`lenscast: ${(end - video.currentTime).toFixed(1)} s behind, jumping to live`);
      video.currentTime = end - JUMP_TARGET;
      video.playbackRate = 1;
    }
    const behind = end - video.currentTime;
    this.behindLive = Math.max(0, behind);
    if (video.paused || video.seeking) return;
    const slack = this.slackAt(end);
    if (slack === null) return;
    // Two thresholds each way, so the rate does not flip back and forth around one.
    const target = this.target;
    const rate = video.playbackRate;
    // Far too much in hand (after a stall, data arrives all at once): catch up faster.
    if (slack > target + FAST_CATCH_UP_ABOVE) video.playbackRate = FAST_CATCH_UP_RATE;
    else if (slack > target + LIVE_SLACK_HYSTERESIS) video.playbackRate = CATCH_UP_RATE;
    else if (slack < target - LIVE_SLACK_HYSTERESIS) video.playbackRate = BUILD_UP_RATE;
    else if (rate > 1 ? slack <= target : rate < 1 && slack >= target) video.playbackRate = 1;
  }

  /** Forgets the figure: what is buffered now belongs to a stream that is gone. */
  reset() {
    this.behindLive = null;
    this.arrivals = [];
    this.playing = false;
    this.startedAt = null;
    this.joinForgotten = false;
  }
}
